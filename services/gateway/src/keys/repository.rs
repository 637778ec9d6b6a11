//! API keys in the store: the SQL, and nothing else (no HTTP, no cache).

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait as _, ColumnTrait as _, EntityTrait as _, QueryFilter as _, QueryOrder as _,
    Set,
};
use slough_store::{Store, entities::api_key};
use uuid::Uuid;

use super::{
    KeyError,
    model::{ApiKey, KeySettings, KeyUpdate, Scope, hash, prefix_of},
};

/// The `api_keys` table.
#[derive(Clone)]
pub struct KeyRepository {
    store: Store,
}

fn store_error(context: &'static str) -> impl FnOnce(sea_orm::DbErr) -> KeyError {
    move |source| KeyError::Store { context, source }
}

impl KeyRepository {
    pub fn new(store: Store) -> KeyRepository {
        KeyRepository { store }
    }

    /// The row whose prefix is `prefix`, if any.
    pub async fn by_prefix(&self, prefix: &str) -> Result<Option<api_key::Model>, KeyError> {
        api_key::Entity::find()
            .filter(api_key::Column::Prefix.eq(prefix))
            .one(self.store.connection())
            .await
            .map_err(store_error("cannot read API keys"))
    }

    /// Stores a key for `secret` (the caller checked `settings`).
    pub async fn insert(&self, secret: &str, settings: KeySettings) -> Result<ApiKey, KeyError> {
        let prefix = prefix_of(secret).ok_or_else(|| KeyError::Invalid {
            param: "key",
            message: "an API key starts with `sk-`".to_owned(),
        })?;
        let row = api_key::ActiveModel {
            id: Set(Uuid::new_v4()),
            name: Set(settings.name),
            prefix: Set(prefix.to_owned()),
            secret_hash: Set(hash(secret)),
            scopes: Set(scopes_column(&settings.scopes)),
            created_at: Set(Utc::now()),
            revoked_at: Set(None),
            allowed_models: Set(settings.models.as_deref().map(models_column)),
            requests_per_minute: Set(settings.requests_per_minute.map(to_i32)),
            tokens_per_minute: Set(settings.tokens_per_minute.map(to_i32)),
            token_budget: Set(settings.token_budget.map(to_i64)),
            pii_policy: Set(settings.pii.column()),
        }
        .insert(self.store.connection())
        .await
        .map_err(store_error("cannot store the API key"))?;
        Ok(ApiKey::from_row(row))
    }

    /// Every key, newest first, revoked ones included.
    pub async fn list(&self) -> Result<Vec<ApiKey>, KeyError> {
        let rows = api_key::Entity::find()
            .order_by_desc(api_key::Column::CreatedAt)
            .all(self.store.connection())
            .await
            .map_err(store_error("cannot read API keys"))?;
        Ok(rows.into_iter().map(ApiKey::from_row).collect())
    }

    /// One key's row by id.
    pub async fn row(&self, id: Uuid) -> Result<api_key::Model, KeyError> {
        api_key::Entity::find_by_id(id)
            .one(self.store.connection())
            .await
            .map_err(store_error("cannot read API keys"))?
            .ok_or(KeyError::NotFound(id))
    }

    /// Applies `update` (checked by the caller) to a key that is not revoked.
    pub async fn update(&self, id: Uuid, update: KeyUpdate) -> Result<ApiKey, KeyError> {
        let row = self.row(id).await?;
        if row.revoked_at.is_some() {
            return Err(KeyError::Invalid {
                param: "id",
                message: format!("API key {id} is revoked and cannot change"),
            });
        }
        let mut active: api_key::ActiveModel = row.into();
        if let Some(name) = update.name {
            active.name = Set(name);
        }
        if let Some(scopes) = update.scopes {
            active.scopes = Set(scopes_column(&scopes));
        }
        if let Some(models) = update.models {
            active.allowed_models = Set(models.as_deref().map(models_column));
        }
        if let Some(rpm) = update.requests_per_minute {
            active.requests_per_minute = Set(rpm.map(to_i32));
        }
        if let Some(tpm) = update.tokens_per_minute {
            active.tokens_per_minute = Set(tpm.map(to_i32));
        }
        if let Some(budget) = update.token_budget {
            active.token_budget = Set(budget.map(to_i64));
        }
        if let Some(pii) = update.pii {
            active.pii_policy = Set(pii.column());
        }
        let row = active
            .update(self.store.connection())
            .await
            .map_err(store_error("cannot update the API key"))?;
        Ok(ApiKey::from_row(row))
    }

    /// Revokes a key for good; revoking twice keeps the first time.
    pub async fn revoke(&self, id: Uuid) -> Result<ApiKey, KeyError> {
        let row = self.row(id).await?;
        if row.revoked_at.is_some() {
            return Ok(ApiKey::from_row(row));
        }
        let mut active: api_key::ActiveModel = row.into();
        active.revoked_at = Set(Some(Utc::now()));
        let row = active
            .update(self.store.connection())
            .await
            .map_err(store_error("cannot revoke the API key"))?;
        Ok(ApiKey::from_row(row))
    }
}

fn scopes_column(scopes: &[Scope]) -> String {
    let mut names: Vec<&str> = scopes.iter().map(|scope| scope.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    names.join(" ")
}

fn models_column(models: &[String]) -> String {
    models.join(" ")
}

fn to_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_stored_sorted_and_once() {
        assert_eq!(
            scopes_column(&[Scope::Inference, Scope::Admin, Scope::Inference]),
            "admin inference"
        );
    }
}

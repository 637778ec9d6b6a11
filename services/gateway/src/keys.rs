//! API keys: `sk-` + a 12-character public prefix + a 40-character secret. Only the
//! prefix (to find the row) and a SHA-256 of the whole key are stored. Authenticated
//! keys are cached for a few seconds, so a revocation by another gateway replica takes
//! effect within that time (and at once on the replica that revoked).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use rand::{Rng as _, distr::Alphanumeric};
use sea_orm::{
    ActiveModelTrait as _, ColumnTrait as _, EntityTrait as _, QueryFilter as _, QueryOrder as _,
    Set,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use slough_store::{Store, entities::api_key};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;

/// The public part: `sk-` and 12 characters.
const PREFIX_LEN: usize = 15;
const SECRET_LEN: usize = 40;
/// The shortest key `SLOUGH_ADMIN_KEY` may hold.
const MIN_KEY_LEN: usize = 32;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Manage keys and read every key's usage.
    Admin,
    /// Use models: chat, completions, embeddings, the model list.
    Inference,
}

impl Scope {
    fn as_str(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::Inference => "inference",
        }
    }
}

/// An API key as the gateway uses it (never the secret).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ApiKey {
    pub id: Uuid,
    pub name: String,
    /// The key's first characters, shown to tell keys apart.
    pub prefix: String,
    pub scopes: Vec<Scope>,
    /// The models the key may use; `null` allows all.
    pub models: Option<Vec<String>>,
    /// Requests per minute; `null` is unlimited.
    pub requests_per_minute: Option<u32>,
    /// Prompt plus completion tokens per minute; `null` is unlimited.
    pub tokens_per_minute: Option<u32>,
    /// Tokens the key may use in all; `null` is unlimited.
    pub token_budget: Option<u64>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKey {
    /// 403 unless the key has `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes.contains(&scope) {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "missing_scope",
                format!(
                    "this API key lacks the `{}` scope this route needs",
                    scope.as_str()
                ),
            ))
        }
    }

    /// 403 unless the key may use `model`.
    pub fn allow_model(&self, model: &str) -> Result<(), ApiError> {
        match &self.models {
            Some(models) if !models.iter().any(|allowed| allowed == model) => {
                Err(ApiError::forbidden(
                    "model_not_allowed",
                    format!("this API key may not use the model `{model}`"),
                )
                .with_param("model"))
            }
            _ => Ok(()),
        }
    }

    fn from_row(row: api_key::Model) -> ApiKey {
        let scopes = row
            .scopes
            .split_whitespace()
            .filter_map(|scope| match scope {
                "admin" => Some(Scope::Admin),
                "inference" => Some(Scope::Inference),
                _ => None,
            })
            .collect();
        ApiKey {
            id: row.id,
            name: row.name,
            prefix: row.prefix,
            scopes,
            models: row
                .allowed_models
                .map(|models| models.split_whitespace().map(str::to_owned).collect()),
            requests_per_minute: row.requests_per_minute.and_then(|n| u32::try_from(n).ok()),
            tokens_per_minute: row.tokens_per_minute.and_then(|n| u32::try_from(n).ok()),
            token_budget: row.token_budget.and_then(|n| u64::try_from(n).ok()),
            created_at: row.created_at,
            revoked_at: row.revoked_at,
        }
    }
}

/// What a new key is given.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeySettings {
    /// A name to tell the key apart.
    pub name: String,
    /// Default: `["inference"]`.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<Scope>,
    #[serde(default)]
    pub models: Option<Vec<String>>,
    #[serde(default)]
    pub requests_per_minute: Option<u32>,
    #[serde(default)]
    pub tokens_per_minute: Option<u32>,
    #[serde(default)]
    pub token_budget: Option<u64>,
}

fn default_scopes() -> Vec<Scope> {
    vec![Scope::Inference]
}

/// Changes to a key: a field left out stays as it is; `null` removes a limit.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyUpdate {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub scopes: Option<Vec<Scope>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<String>>)]
    pub models: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>)]
    pub requests_per_minute: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>)]
    pub tokens_per_minute: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>)]
    pub token_budget: Option<Option<u64>>,
}

/// A field that is present (even as `null`) becomes `Some`.
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// A key as created: the secret appears here and nowhere else, ever.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CreatedKey {
    /// The whole key; store it now, it cannot be shown again.
    pub secret: String,
    pub key: ApiKey,
}

/// The keys in the store, with a short-lived cache of authenticated ones.
pub struct Keys {
    store: Store,
    ttl: Duration,
    cache: Mutex<HashMap<String, Cached>>,
}

struct Cached {
    key: Arc<ApiKey>,
    hash: String,
    fetched: Instant,
}

impl Keys {
    /// Keys in `store`, trusted from the cache for `ttl`.
    pub fn new(store: Store, ttl: Duration) -> Keys {
        Keys {
            store,
            ttl,
            cache: Mutex::default(),
        }
    }

    /// The key an `Authorization` header value names, or 401.
    pub async fn authenticate(&self, header: Option<&str>) -> Result<Arc<ApiKey>, ApiError> {
        let Some(header) = header else {
            return Err(ApiError::unauthorized(
                "no API key: send `Authorization: Bearer sk-...`",
            ));
        };
        let secret = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header must read `Bearer sk-...`")
            })?;
        let invalid = || ApiError::unauthorized("invalid API key");
        let prefix = prefix_of(secret).ok_or_else(invalid)?;
        let hash = hash(secret);
        if let Some(key) = self.cached(prefix, &hash) {
            return Ok(key);
        }
        let row = api_key::Entity::find()
            .filter(api_key::Column::Prefix.eq(prefix))
            .one(self.store.connection())
            .await
            .map_err(|err| ApiError::internal("cannot read API keys", err))?
            .ok_or_else(invalid)?;
        if row.secret_hash != hash {
            return Err(invalid());
        }
        if row.revoked_at.is_some() {
            return Err(ApiError::unauthorized("this API key has been revoked"));
        }
        let key = Arc::new(ApiKey::from_row(row));
        self.lock().insert(
            prefix.to_owned(),
            Cached {
                key: key.clone(),
                hash,
                fetched: Instant::now(),
            },
        );
        Ok(key)
    }

    fn cached(&self, prefix: &str, hash: &str) -> Option<Arc<ApiKey>> {
        let cache = self.lock();
        let cached = cache.get(prefix)?;
        (cached.hash == hash && cached.fetched.elapsed() < self.ttl).then(|| cached.key.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached>> {
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Creates a key and returns its secret (once).
    pub async fn create(&self, settings: KeySettings) -> Result<CreatedKey, ApiError> {
        validate_settings(&settings)?;
        let secret = generate();
        let key = self.insert(&secret, settings).await?;
        Ok(CreatedKey { secret, key })
    }

    async fn insert(&self, secret: &str, settings: KeySettings) -> Result<ApiKey, ApiError> {
        let prefix = prefix_of(secret)
            .ok_or_else(|| ApiError::invalid("key", "an API key starts with `sk-`"))?;
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
        }
        .insert(self.store.connection())
        .await
        .map_err(|err| ApiError::internal("cannot store the API key", err))?;
        Ok(ApiKey::from_row(row))
    }

    /// Every key, newest first, revoked ones included.
    pub async fn list(&self) -> Result<Vec<ApiKey>, ApiError> {
        let rows = api_key::Entity::find()
            .order_by_desc(api_key::Column::CreatedAt)
            .all(self.store.connection())
            .await
            .map_err(|err| ApiError::internal("cannot read API keys", err))?;
        Ok(rows.into_iter().map(ApiKey::from_row).collect())
    }

    /// One key by id, or 404.
    pub async fn get(&self, id: Uuid) -> Result<ApiKey, ApiError> {
        self.row(id).await.map(ApiKey::from_row)
    }

    async fn row(&self, id: Uuid) -> Result<api_key::Model, ApiError> {
        api_key::Entity::find_by_id(id)
            .one(self.store.connection())
            .await
            .map_err(|err| ApiError::internal("cannot read API keys", err))?
            .ok_or_else(|| ApiError::not_found("key_not_found", format!("no API key {id}")))
    }

    /// Applies `update` to a key that is not revoked.
    pub async fn update(&self, id: Uuid, update: KeyUpdate) -> Result<ApiKey, ApiError> {
        if let Some(name) = &update.name {
            validate_name(name)?;
        }
        if let Some(scopes) = &update.scopes {
            validate_scopes(scopes)?;
        }
        if let Some(Some(models)) = &update.models {
            validate_models(models)?;
        }
        validate_limits(
            update.requests_per_minute.flatten(),
            update.tokens_per_minute.flatten(),
            update.token_budget.flatten(),
        )?;
        let row = self.row(id).await?;
        if row.revoked_at.is_some() {
            return Err(ApiError::invalid(
                "id",
                format!("API key {id} is revoked and cannot change"),
            ));
        }
        let prefix = row.prefix.clone();
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
        let row = active
            .update(self.store.connection())
            .await
            .map_err(|err| ApiError::internal("cannot update the API key", err))?;
        self.lock().remove(&prefix);
        Ok(ApiKey::from_row(row))
    }

    /// Revokes a key for good; revoking twice keeps the first time.
    pub async fn revoke(&self, id: Uuid) -> Result<ApiKey, ApiError> {
        let row = self.row(id).await?;
        let prefix = row.prefix.clone();
        let row = if row.revoked_at.is_some() {
            row
        } else {
            let mut active: api_key::ActiveModel = row.into();
            active.revoked_at = Set(Some(Utc::now()));
            active
                .update(self.store.connection())
                .await
                .map_err(|err| ApiError::internal("cannot revoke the API key", err))?
        };
        self.lock().remove(&prefix);
        Ok(ApiKey::from_row(row))
    }
}

/// Makes sure an admin key exists. With `SLOUGH_ADMIN_KEY` set (`from_env`), that key is
/// stored if it is not yet. Otherwise, when no usable admin key exists, one is generated,
/// written to `<data_dir>/admin-key` (mode 0600) and returned, for `slough up` to print.
pub async fn bootstrap_admin_key(
    store: &Store,
    data_dir: &Path,
    from_env: Option<&str>,
) -> Result<Option<String>, String> {
    let keys = Keys::new(store.clone(), Duration::ZERO);
    let settings = |name: &str| KeySettings {
        name: name.to_owned(),
        scopes: vec![Scope::Admin, Scope::Inference],
        ..KeySettings::default()
    };
    if let Some(secret) = from_env {
        if !secret.starts_with("sk-") || secret.len() < MIN_KEY_LEN {
            return Err(format!(
                "SLOUGH_ADMIN_KEY must start with `sk-` and be at least {MIN_KEY_LEN} characters long"
            ));
        }
        return match keys.authenticate(Some(&format!("Bearer {secret}"))).await {
            Ok(_) => Ok(None),
            Err(error) if error.status().as_u16() == 401 => {
                let prefix = prefix_of(secret).unwrap_or_default();
                let taken = api_key::Entity::find()
                    .filter(api_key::Column::Prefix.eq(prefix))
                    .one(store.connection())
                    .await
                    .map_err(|err| err.to_string())?;
                if taken.is_some() {
                    return Err(format!(
                        "SLOUGH_ADMIN_KEY starts like another (or a revoked) key ({prefix}…); choose another key"
                    ));
                }
                keys.insert(secret, settings("admin (SLOUGH_ADMIN_KEY)"))
                    .await
                    .map(|_| None)
                    .map_err(|err| err.object().message.clone())
            }
            Err(error) => Err(error.object().message.clone()),
        };
    }
    let existing = keys
        .list()
        .await
        .map_err(|err| err.object().message.clone())?;
    if existing
        .iter()
        .any(|key| key.revoked_at.is_none() && key.scopes.contains(&Scope::Admin))
    {
        return Ok(None);
    }
    let created = keys
        .create(settings("admin (generated)"))
        .await
        .map_err(|err| err.object().message.clone())?;
    let path = admin_key_path(data_dir);
    write_private(&path, &created.secret)
        .map_err(|err| format!("cannot write the admin key to {}: {err}", path.display()))?;
    tracing::info!(path = %path.display(), "generated the first admin API key");
    Ok(Some(created.secret))
}

/// `SLOUGH_ADMIN_KEY`, when set and not empty.
pub fn admin_key_from_env() -> Option<String> {
    std::env::var("SLOUGH_ADMIN_KEY")
        .ok()
        .filter(|key| !key.is_empty())
}

/// Where a generated admin key is written.
pub fn admin_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin-key")
}

fn write_private(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    writeln!(file, "{secret}")
}

fn generate() -> String {
    let mut rng = rand::rng();
    let body: String = (0..PREFIX_LEN - 3 + SECRET_LEN)
        .map(|_| char::from(rng.sample(Alphanumeric)))
        .collect();
    format!("sk-{body}")
}

fn prefix_of(secret: &str) -> Option<&str> {
    (secret.starts_with("sk-") && secret.len() >= MIN_KEY_LEN)
        .then(|| secret.get(..PREFIX_LEN))
        .flatten()
}

fn hash(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
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

fn validate_settings(settings: &KeySettings) -> Result<(), ApiError> {
    validate_name(&settings.name)?;
    validate_scopes(&settings.scopes)?;
    if let Some(models) = &settings.models {
        validate_models(models)?;
    }
    validate_limits(
        settings.requests_per_minute,
        settings.tokens_per_minute,
        settings.token_budget,
    )
}

fn validate_name(name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() || name.len() > 200 {
        return Err(ApiError::invalid(
            "name",
            "name must be 1 to 200 characters",
        ));
    }
    Ok(())
}

fn validate_scopes(scopes: &[Scope]) -> Result<(), ApiError> {
    if scopes.is_empty() {
        return Err(ApiError::invalid(
            "scopes",
            "scopes must name at least one of `admin`, `inference`",
        ));
    }
    Ok(())
}

fn validate_models(models: &[String]) -> Result<(), ApiError> {
    if let Some(bad) = models
        .iter()
        .find(|model| model.is_empty() || model.chars().any(char::is_whitespace))
    {
        return Err(ApiError::invalid(
            "models",
            format!("model id {bad:?} is empty or contains white space"),
        ));
    }
    Ok(())
}

fn validate_limits(
    rpm: Option<u32>,
    tpm: Option<u32>,
    budget: Option<u64>,
) -> Result<(), ApiError> {
    // What the store's columns hold.
    let int = i32::MAX as u64;
    let bigint = i64::MAX as u64;
    for (param, value, max) in [
        ("requests_per_minute", rpm.map(u64::from), int),
        ("tokens_per_minute", tpm.map(u64::from), int),
        ("token_budget", budget, bigint),
    ] {
        match value {
            Some(0) => {
                return Err(ApiError::invalid(
                    param,
                    format!("{param} must be at least 1 (null removes the limit)"),
                ));
            }
            Some(value) if value > max => {
                return Err(ApiError::invalid(
                    param,
                    format!("{param} must be at most {max}"),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_a_prefix_and_differ() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert_eq!(a.len(), PREFIX_LEN + SECRET_LEN);
        assert_eq!(prefix_of(&a), Some(&a[..PREFIX_LEN]));
        assert_eq!(prefix_of("sk-short"), None);
        assert_eq!(prefix_of(&a.replacen("sk-", "pk-", 1)), None);
        assert_eq!(hash(&a).len(), 64);
    }

    #[test]
    fn scopes_are_stored_sorted_and_once() {
        assert_eq!(
            scopes_column(&[Scope::Inference, Scope::Admin, Scope::Inference]),
            "admin inference"
        );
    }

    #[tokio::test]
    async fn the_first_admin_key_is_generated_once_or_taken_from_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(None, dir.path()).await.unwrap();
        let generated = bootstrap_admin_key(&store, dir.path(), None)
            .await
            .unwrap()
            .expect("a key on the first start");
        let file = std::fs::read_to_string(admin_key_path(dir.path())).unwrap();
        assert_eq!(file.trim(), generated);
        assert_eq!(
            bootstrap_admin_key(&store, dir.path(), None).await,
            Ok(None)
        );

        let keys = Keys::new(store.clone(), Duration::ZERO);
        let admin = keys
            .authenticate(Some(&format!("Bearer {generated}")))
            .await
            .unwrap();
        assert_eq!(admin.scopes, [Scope::Admin, Scope::Inference]);

        let from_env = format!("sk-{}", "e".repeat(40));
        assert_eq!(
            bootstrap_admin_key(&store, dir.path(), Some(&from_env)).await,
            Ok(None)
        );
        assert_eq!(
            bootstrap_admin_key(&store, dir.path(), Some(&from_env)).await,
            Ok(None),
            "a second start keeps it"
        );
        keys.authenticate(Some(&format!("Bearer {from_env}")))
            .await
            .unwrap();
        let short = bootstrap_admin_key(&store, dir.path(), Some("sk-short")).await;
        assert!(short.unwrap_err().contains("SLOUGH_ADMIN_KEY"));
        let clash = format!("sk-{}{}", "e".repeat(12), "f".repeat(28));
        let clash = bootstrap_admin_key(&store, dir.path(), Some(&clash)).await;
        assert!(clash.unwrap_err().contains("starts like another"));
        store.close().await;
    }
}

//! What one key made and another key may not reach. A fine-tuned model (`ft:...`, the
//! only models the training service makes) belongs to the key whose job trained it, as
//! its files and job do: admins reach every one, and another key only when its `models`
//! list names the model, which is how an admin shares one. To anyone else it is not
//! there (404 `model_not_found`, as a model that is not served), so its name is not
//! confirmed either.

use std::collections::HashMap;

use sea_orm::{ColumnTrait as _, EntityTrait as _, QueryFilter as _, QuerySelect as _};
use slough_store::entities::fine_tuning_job;

use crate::{error::ApiError, keys::ApiKey, state::AppState};

/// Whether `id` names a fine-tuned model.
fn fine_tuned(id: &str) -> bool {
    id.starts_with("ft:")
}

/// Whether `key` reaches every fine-tuned model, or `id` was given to it by name.
fn given(key: &ApiKey, id: &str) -> bool {
    key.is_admin()
        || key
            .models
            .as_ref()
            .is_some_and(|models| models.iter().any(|m| m == id))
}

/// The answer for a model `key` may not reach: the one an unknown model gets.
pub fn not_found(id: &str) -> ApiError {
    ApiError::not_found("model_not_found", format!("model `{id}` is not served"))
        .with_param("model")
}

/// Lets `key` use model `id`: its `models` list allows it, and a fine-tuned one is its
/// own or given to it.
pub async fn check_model(state: &AppState, key: &ApiKey, id: &str) -> Result<(), ApiError> {
    key.allow_model(id)?;
    if !fine_tuned(id) || given(key, id) {
        return Ok(());
    }
    let trainer = fine_tuning_job::Entity::find()
        .select_only()
        .column(fine_tuning_job::Column::Owner)
        .filter(fine_tuning_job::Column::FineTunedModel.eq(id))
        .into_tuple::<String>()
        .one(state.store.connection())
        .await
        .map_err(|err| ApiError::store("cannot look up the model's owner", &err))?;
    if trainer.as_deref() == Some(key.id.to_string().as_str()) {
        Ok(())
    } else {
        Err(not_found(id))
    }
}

/// The models among `models` (each named by `id`) that `key` may use, in their order.
pub async fn usable<T>(
    state: &AppState,
    key: &ApiKey,
    models: Vec<T>,
    id: impl Fn(&T) -> &str,
) -> Result<Vec<T>, ApiError> {
    let rows: Vec<(String, Option<String>)> = fine_tuning_job::Entity::find()
        .select_only()
        .column(fine_tuning_job::Column::Owner)
        .column(fine_tuning_job::Column::FineTunedModel)
        .filter(fine_tuning_job::Column::FineTunedModel.is_not_null())
        .into_tuple()
        .all(state.store.connection())
        .await
        .map_err(|err| ApiError::store("cannot look up the models' owners", &err))?;
    let trainers: HashMap<String, String> = rows
        .into_iter()
        .filter_map(|(owner, model)| Some((model?, owner)))
        .collect();
    let me = key.id.to_string();
    Ok(models
        .into_iter()
        .filter(|model| {
            let id = id(model);
            key.allow_model(id).is_ok()
                && (!fine_tuned(id) || given(key, id) || trainers.get(id) == Some(&me))
        })
        .collect())
}

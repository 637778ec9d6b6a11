//! Storage quotas per key: the bytes of its files (`gateway.max_file_bytes_per_key`)
//! and of the text in its collections (`gateway.max_collection_bytes_per_key`). An
//! upload that would pass one is refused before anything is stored: 413
//! `storage_quota_exceeded`, naming the setting, what the key holds and the upload's
//! size. Zero turns a quota off.

use sea_orm::{
    ColumnTrait as _, EntityTrait as _, QueryFilter as _, QuerySelect as _, QueryTrait as _,
    sea_query::Expr,
};
use slough_store::entities::{collection, collection_document, file};

use crate::{error::ApiError, keys::ApiKey, state::AppState};

/// The most a key may keep, in bytes (0: no limit).
#[derive(Debug, Clone, Copy)]
pub struct Quotas {
    pub file_bytes: u64,
    pub collection_bytes: u64,
}

/// Refuses adding a file of `adding` bytes when `key`'s files would pass their quota.
pub async fn check_files(state: &AppState, key: &ApiKey, adding: u64) -> Result<(), ApiError> {
    let most = state.quotas.file_bytes;
    if most == 0 {
        return Ok(());
    }
    let held: Option<i64> = file::Entity::find()
        .select_only()
        .column_as(Expr::cust(TOTAL_BYTES), "held")
        .filter(file::Column::Owner.eq(key.id.to_string()))
        .into_tuple()
        .one(state.store.connection())
        .await
        .map_err(|err| ApiError::store("cannot add up the key's files", &err))?;
    refuse_past(
        "file",
        "files",
        "gateway.max_file_bytes_per_key",
        held,
        adding,
        most,
    )
}

/// Refuses adding `adding` bytes of text when the text in `key`'s collections would
/// pass its quota (a replaced document counts again until the upload is stored).
pub async fn check_collections(
    state: &AppState,
    key: &ApiKey,
    adding: u64,
) -> Result<(), ApiError> {
    let most = state.quotas.collection_bytes;
    if most == 0 {
        return Ok(());
    }
    let owned = collection::Entity::find()
        .select_only()
        .column(collection::Column::Name)
        .filter(collection::Column::Owner.eq(key.id.to_string()))
        .into_query();
    let held: Option<i64> = collection_document::Entity::find()
        .select_only()
        .column_as(Expr::cust(TOTAL_BYTES), "held")
        .filter(collection_document::Column::Collection.in_subquery(owned))
        .into_tuple()
        .one(state.store.connection())
        .await
        .map_err(|err| ApiError::store("cannot add up the key's collections", &err))?;
    refuse_past(
        "documents",
        "collections",
        "gateway.max_collection_bytes_per_key",
        held,
        adding,
        most,
    )
}

/// The sum of a table's `bytes`, added up by the database (0 when it has no rows).
const TOTAL_BYTES: &str = "CAST(COALESCE(SUM(bytes), 0) AS BIGINT)";

fn refuse_past(
    param: &str,
    what: &str,
    setting: &str,
    held: Option<i64>,
    adding: u64,
    most: u64,
) -> Result<(), ApiError> {
    let held = u64::try_from(held.unwrap_or(0)).unwrap_or(0);
    if held.saturating_add(adding) <= most {
        return Ok(());
    }
    Err(ApiError::quota_reached(
        param,
        format!(
            "this key's {what} hold {held} bytes and this upload adds {adding}, past its \
             quota of {most} bytes ({setting}); delete some first"
        ),
    ))
}

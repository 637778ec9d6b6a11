//! The `usage` table, read and written: storing the rows the usage recorder batches,
//! what a key has spent in all (for its budget) and its report by model (for
//! `GET /v1/usage`). SQL only; the accounting that produces the rows is in `usage`.

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait as _, EntityTrait as _, QueryFilter as _, QueryOrder as _, QuerySelect as _,
    sea_query::Expr,
};
use serde::Serialize;
use slough_store::{Store, entities::usage};
use utoipa::ToSchema;
use uuid::Uuid;

/// Stores `rows` in one insert.
pub async fn insert(
    store: &Store,
    rows: impl IntoIterator<Item = usage::ActiveModel>,
) -> Result<(), sea_orm::DbErr> {
    usage::Entity::insert_many(rows)
        .exec(store.connection())
        .await
        .map(|_| ())
}

/// Tokens `key_id` has used in all (prompt plus completion), from the stored rows.
pub async fn spent(store: &Store, key_id: Uuid) -> Result<u64, sea_orm::DbErr> {
    let total: Option<i64> = usage::Entity::find()
        .select_only()
        .column_as(
            Expr::cust("CAST(COALESCE(SUM(prompt_tokens + completion_tokens), 0) AS BIGINT)"),
            "spent",
        )
        .filter(usage::Column::KeyId.eq(key_id))
        .into_tuple()
        .one(store.connection())
        .await?;
    Ok(u64::try_from(total.unwrap_or(0)).unwrap_or(0))
}

/// A key's usage, in all and by model.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UsageReport {
    pub key_id: Uuid,
    /// Counted from this time on (`null`: since the key was made).
    pub since: Option<DateTime<Utc>>,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// The key's budget, and what is left of it (`null` without a budget).
    pub token_budget: Option<u64>,
    pub budget_remaining: Option<u64>,
    /// By model, most tokens first.
    pub models: Vec<ModelUsage>,
}

/// One model's share of a [`UsageReport`].
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelUsage {
    pub model: String,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// Sums the usage rows of `key_id` since `since`. Rows still queued are not counted yet.
pub async fn report(
    store: &Store,
    key_id: Uuid,
    since: Option<DateTime<Utc>>,
    token_budget: Option<u64>,
) -> Result<UsageReport, sea_orm::DbErr> {
    let mut query = usage::Entity::find()
        .select_only()
        .column(usage::Column::Model)
        .column_as(Expr::cust("CAST(COUNT(*) AS BIGINT)"), "requests")
        .column_as(Expr::cust("CAST(SUM(prompt_tokens) AS BIGINT)"), "prompt")
        .column_as(
            Expr::cust("CAST(SUM(completion_tokens) AS BIGINT)"),
            "completion",
        )
        .filter(usage::Column::KeyId.eq(key_id))
        .group_by(usage::Column::Model)
        .order_by_desc(Expr::cust(
            "CAST(SUM(prompt_tokens + completion_tokens) AS BIGINT)",
        ));
    if let Some(since) = since {
        query = query.filter(usage::Column::CreatedAt.gte(since));
    }
    let rows: Vec<(String, i64, i64, i64)> = query.into_tuple().all(store.connection()).await?;
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    let models: Vec<ModelUsage> = rows
        .into_iter()
        .map(|(model, requests, prompt, completion)| ModelUsage {
            model,
            requests: count(requests),
            prompt_tokens: count(prompt),
            completion_tokens: count(completion),
        })
        .collect();
    let requests = models.iter().map(|m| m.requests).sum();
    let prompt_tokens = models.iter().map(|m| m.prompt_tokens).sum();
    let completion_tokens = models.iter().map(|m| m.completion_tokens).sum();
    let total_tokens = prompt_tokens + completion_tokens;
    // The budget counts everything ever used, whatever `since` says.
    let budget_remaining = match token_budget {
        Some(budget) if since.is_some() => Some(budget.saturating_sub(spent(store, key_id).await?)),
        Some(budget) => Some(budget.saturating_sub(total_tokens)),
        None => None,
    };
    Ok(UsageReport {
        key_id,
        since,
        requests,
        prompt_tokens,
        completion_tokens,
        total_tokens,
        token_budget,
        budget_remaining,
        models,
    })
}

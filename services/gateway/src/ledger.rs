//! The `usage` table, read and written: storing the rows the usage recorder batches,
//! what a key has spent in all (for its budget), what it used in a past minute (for a
//! replica catching up on its limits) and its report by model (for `GET /v1/usage`).
//! SQL only; the accounting that produces the rows is in `usage`.

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

/// When each request of `key_id` that finished in `[from, to)` ended, and the tokens it
/// used, oldest first.
pub async fn finished_between(
    store: &Store,
    key_id: Uuid,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<(DateTime<Utc>, u64)>, sea_orm::DbErr> {
    let rows: Vec<(DateTime<Utc>, i64, i64)> = usage::Entity::find()
        .select_only()
        .columns([
            usage::Column::CreatedAt,
            usage::Column::PromptTokens,
            usage::Column::CompletionTokens,
        ])
        .filter(usage::Column::KeyId.eq(key_id))
        .filter(usage::Column::CreatedAt.gte(from))
        .filter(usage::Column::CreatedAt.lt(to))
        .order_by_asc(usage::Column::CreatedAt)
        .into_tuple()
        .all(store.connection())
        .await?;
    Ok(rows
        .into_iter()
        .map(|(at, prompt, completion)| (at, u64::try_from(prompt + completion).unwrap_or(0)))
        .collect())
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
    /// With `interval`: the same requests over time, one bucket per interval from
    /// `since` to now (empty buckets included, oldest first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub series: Option<Vec<UsageBucket>>,
}

/// The requests of one time bucket of a [`UsageReport`]'s series.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct UsageBucket {
    /// The bucket's first instant.
    pub start: DateTime<Utc>,
    pub requests: u64,
    /// Requests answered with a 4xx or 5xx status (or left by the client).
    pub errors: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Median and 95th percentile of the latency (receipt to last byte) of the bucket's
    /// requests, in milliseconds; `null` without requests.
    pub latency_p50_ms: Option<u64>,
    pub latency_p95_ms: Option<u64>,
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
        series: None,
    })
}

/// The usage rows of `key_id` from `since` to `until`, in buckets of `step` (the
/// caller bounds how many buckets that makes).
pub async fn series(
    store: &Store,
    key_id: Uuid,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    step: chrono::TimeDelta,
) -> Result<Vec<UsageBucket>, sea_orm::DbErr> {
    let rows: Vec<(DateTime<Utc>, i64, i64, i64, i16)> = usage::Entity::find()
        .select_only()
        .column(usage::Column::CreatedAt)
        .column(usage::Column::PromptTokens)
        .column(usage::Column::CompletionTokens)
        .column(usage::Column::LatencyMs)
        .column(usage::Column::Status)
        .filter(usage::Column::KeyId.eq(key_id))
        .filter(usage::Column::CreatedAt.gte(since))
        .filter(usage::Column::CreatedAt.lte(until))
        .into_tuple()
        .all(store.connection())
        .await?;
    Ok(bucket(since, until, step, rows))
}

/// Sorts `rows` (time, prompt, completion, latency, status) into buckets of `step`
/// from `since` to `until`.
fn bucket(
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    step: chrono::TimeDelta,
    rows: Vec<(DateTime<Utc>, i64, i64, i64, i16)>,
) -> Vec<UsageBucket> {
    let step_ms = step.num_milliseconds().max(1);
    let count =
        usize::try_from((until - since).num_milliseconds().max(0) / step_ms + 1).unwrap_or(1);
    let mut latencies: Vec<Vec<u64>> = vec![Vec::new(); count];
    let mut buckets: Vec<UsageBucket> = (0..count)
        .map(|i| UsageBucket {
            start: since + step * i32::try_from(i).unwrap_or(i32::MAX),
            requests: 0,
            errors: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
            latency_p50_ms: None,
            latency_p95_ms: None,
        })
        .collect();
    let count_of = |n: i64| u64::try_from(n).unwrap_or(0);
    for (at, prompt, completion, latency, status) in rows {
        let Ok(i) = usize::try_from((at - since).num_milliseconds() / step_ms) else {
            continue;
        };
        let Some(bucket) = buckets.get_mut(i) else {
            continue;
        };
        bucket.requests += 1;
        bucket.errors += u64::from(status >= 400);
        bucket.prompt_tokens += count_of(prompt);
        bucket.completion_tokens += count_of(completion);
        latencies[i].push(count_of(latency));
    }
    for (bucket, mut latencies) in buckets.iter_mut().zip(latencies) {
        latencies.sort_unstable();
        bucket.latency_p50_ms = percentile(&latencies, 50);
        bucket.latency_p95_ms = percentile(&latencies, 95);
    }
    buckets
}

/// The nearest-rank percentile of sorted `values`.
fn percentile(values: &[u64], percent: usize) -> Option<u64> {
    let rank = (values.len() * percent).div_ceil(100).max(1);
    values.get(rank - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_the_window_count_errors_and_take_nearest_rank_percentiles() {
        let since = DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let at = |minutes: i64| since + chrono::TimeDelta::minutes(minutes);
        let rows = (1..=20)
            .map(|latency| (at(5), 10, 2, latency, if latency == 20 { 500 } else { 200 }))
            .chain([(at(130), 1, 1, 7, 499)])
            .collect();
        let buckets = bucket(since, at(150), chrono::TimeDelta::hours(1), rows);
        assert_eq!(buckets.len(), 3);
        assert_eq!(buckets[0].start, since);
        assert_eq!(buckets[1].start, at(60));
        assert_eq!(
            (
                buckets[0].requests,
                buckets[0].errors,
                buckets[0].prompt_tokens
            ),
            (20, 1, 200)
        );
        assert_eq!(buckets[0].latency_p50_ms, Some(10));
        assert_eq!(buckets[0].latency_p95_ms, Some(19));
        assert_eq!((buckets[1].requests, buckets[1].latency_p50_ms), (0, None));
        assert_eq!((buckets[2].requests, buckets[2].errors), (1, 1));
        assert_eq!(buckets[2].latency_p95_ms, Some(7));
    }
}

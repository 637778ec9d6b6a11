//! `GET /v1/usage`: what a key has used, in all and by model (admins may ask about any
//! key with `key_id`).

use actix_web::get;
use actix_web::{HttpResponse, web};
use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::{
    error::ApiError,
    http::Caller,
    keys::Scope,
    ledger::{self, UsageReport},
    state::AppState,
};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// Count from this time on: an RFC 3339 time (`2026-01-01T08:00:00Z`) or a date
    /// (`2026-01-01`, from midnight UTC); default: since the key was made.
    pub since: Option<String>,
    /// Another key's id (needs the `admin` scope).
    pub key_id: Option<Uuid>,
    /// Adds `series`: the requests from `since` (which it needs) to now in buckets of a
    /// `minute`, an `hour` or a `day`, at most 10 000 of them.
    pub interval: Option<Interval>,
}

/// The width of a usage series' buckets.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Interval {
    Minute,
    Hour,
    Day,
}

impl Interval {
    fn name(self) -> &'static str {
        match self {
            Interval::Minute => "minute",
            Interval::Hour => "hour",
            Interval::Day => "day",
        }
    }

    fn step(self) -> TimeDelta {
        match self {
            Interval::Minute => TimeDelta::minutes(1),
            Interval::Hour => TimeDelta::hours(1),
            Interval::Day => TimeDelta::days(1),
        }
    }
}

/// The most buckets a series may have.
const MAX_BUCKETS: i64 = 10_000;

/// Reads `since`: an RFC 3339 time or a plain date (midnight UTC).
pub(crate) fn parse_since(since: &str) -> Result<DateTime<Utc>, ApiError> {
    if let Ok(time) = DateTime::parse_from_rfc3339(since) {
        return Ok(time.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(since, "%Y-%m-%d")
        .ok()
        .and_then(|date| date.and_hms_opt(0, 0, 0))
        .map(|midnight| midnight.and_utc())
        .ok_or_else(|| {
            ApiError::invalid(
                "since",
                format!(
                    "since must be a date (2026-01-01) or an RFC 3339 time \
                     (2026-01-01T08:00:00Z), got {since:?}"
                ),
            )
        })
}

/// Reports a key's usage.
#[utoipa::path(
    tag = "Usage",
    params(UsageQuery),
    responses((status = 200, description = "The key's usage", body = UsageReport)),
    security(("api_key" = [])),
)]
#[get("/v1/usage")]
pub async fn report(
    state: web::Data<AppState>,
    Caller(caller): Caller,
    query: web::Query<UsageQuery>,
) -> Result<HttpResponse, ApiError> {
    // A query string that does not parse is refused by the app's `QueryConfig`.
    let query = query.into_inner();
    let since = query.since.as_deref().map(parse_since).transpose()?;
    let budget = match query.key_id {
        Some(id) if id != caller.id => {
            caller.require(Scope::Admin)?;
            state.keys.get(id).await?.token_budget
        }
        _ => caller.token_budget,
    };
    let window = match (query.interval, since) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(ApiError::invalid(
                "since",
                "interval needs since: the series starts there",
            ));
        }
        (Some(interval), Some(since)) => {
            let until = Utc::now();
            let step = interval.step();
            if (until - since).num_seconds() / step.num_seconds() >= MAX_BUCKETS {
                return Err(ApiError::invalid(
                    "interval",
                    format!(
                        "from since to now is more than {MAX_BUCKETS} buckets of a {}; \
                         choose a later since or a longer interval",
                        interval.name()
                    ),
                ));
            }
            Some((since, until, step))
        }
    };
    let id = query.key_id.unwrap_or(caller.id);
    let unavailable = |err| ApiError::store("cannot read usage", &err);
    let mut report = ledger::report(&state.store, id, since, budget)
        .await
        .map_err(unavailable)?;
    if let Some((since, until, step)) = window {
        let series = ledger::series(&state.store, id, since, until, step)
            .await
            .map_err(unavailable)?;
        report.series = Some(series);
    }
    Ok(HttpResponse::Ok().json(report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_date_or_a_time_and_names_itself_otherwise() {
        let midnight = parse_since("2026-01-01").unwrap();
        assert_eq!(midnight.to_rfc3339(), "2026-01-01T00:00:00+00:00");
        let time = parse_since("2026-01-01T08:30:00+02:00").unwrap();
        assert_eq!(time.to_rfc3339(), "2026-01-01T06:30:00+00:00");
        let error = parse_since("yesterday").unwrap_err();
        assert_eq!(error.status().as_u16(), 400);
        assert_eq!(error.object().param.as_deref(), Some("since"));
    }
}

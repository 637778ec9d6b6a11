//! `GET /v1/usage`: what a key has used, in all and by model (admins may ask about any
//! key with `key_id`).

use actix_web::{HttpResponse, web};
use chrono::{DateTime, NaiveDate, Utc};
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::{
    AppState,
    error::ApiError,
    http::Caller,
    keys::Scope,
    ledger::{self, UsageReport},
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
}

/// Reads `since`: an RFC 3339 time or a plain date (midnight UTC).
fn parse_since(since: &str) -> Result<DateTime<Utc>, ApiError> {
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
    get,
    path = "/v1/usage",
    tag = "Usage",
    params(UsageQuery),
    responses((status = 200, description = "The key's usage", body = UsageReport)),
    security(("api_key" = [])),
)]
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
    let id = query.key_id.unwrap_or(caller.id);
    let report = ledger::report(&state.store, id, since, budget)
        .await
        .map_err(|err| ApiError::store("cannot read usage", &err))?;
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

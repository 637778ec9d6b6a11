//! `GET /v1/audit`: the audit log (see [`crate::audit`]), newest first, for admins.

use actix_web::{HttpResponse, get, web};
use sea_orm::{
    ColumnTrait as _, EntityTrait as _, QueryFilter as _, QueryOrder as _, QuerySelect as _,
};
use serde::{Deserialize, Serialize};
use slough_store::entities::audit_event;
use utoipa::{IntoParams, ToSchema};

use super::usage::parse_since;
use crate::{error::ApiError, http::Caller, keys::Scope, state::AppState};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only this actor's events: a key's id.
    pub actor: Option<String>,
    /// Only this action, e.g. `DELETE /v1/collections/{name}`.
    pub action: Option<String>,
    /// Only this resource type (`keys`, `collections`, ...).
    pub resource_type: Option<String>,
    /// Only this resource (a collection's name, a key's id, ...).
    pub resource_id: Option<String>,
    /// Only `succeeded`, `refused` or `failed`.
    pub outcome: Option<String>,
    /// From this time on: an RFC 3339 time or a date.
    pub since: Option<String>,
    /// Before this time: an RFC 3339 time or a date.
    pub until: Option<String>,
    /// The page after this event (`audit-<n>`, the last of the previous page).
    pub after: Option<String>,
    /// Events per page, 1 to 100 (default 20).
    pub limit: Option<u64>,
}

/// One audit event.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEvent {
    /// `audit-<n>`, in the order recorded.
    pub id: String,
    /// When it was answered (RFC 3339, microseconds).
    pub at: String,
    /// The key's id.
    pub actor: String,
    pub actor_prefix: Option<String>,
    /// The method and route.
    pub action: String,
    pub resource_type: String,
    pub resource_id: Option<String>,
    /// The route's parameters and the names (never the values) of the body's fields.
    #[schema(value_type = Object)]
    pub summary: serde_json::Value,
    pub client_address: Option<String>,
    pub request_id: Option<String>,
    pub trace_id: Option<String>,
    /// `succeeded`, `refused` or `failed`.
    pub outcome: String,
    pub status: u16,
    /// The chain: the previous event's hash, and this one's.
    pub prev_hash: String,
    pub hash: String,
}

/// A page of audit events, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditList {
    /// Always `list`.
    pub object: String,
    pub data: Vec<AuditEvent>,
    pub has_more: bool,
}

impl From<audit_event::Model> for AuditEvent {
    fn from(row: audit_event::Model) -> AuditEvent {
        AuditEvent {
            id: format!("audit-{}", row.seq),
            at: row.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            actor: row.actor,
            actor_prefix: row.actor_prefix,
            action: row.action,
            resource_type: row.resource_type,
            resource_id: row.resource_id,
            summary: serde_json::from_str(&row.summary).unwrap_or_default(),
            client_address: row.client_address,
            request_id: row.request_id,
            trace_id: row.trace_id,
            outcome: row.outcome,
            status: u16::try_from(row.status).unwrap_or_default(),
            prev_hash: row.prev_hash,
            hash: row.hash,
        }
    }
}

/// Lists the audit log: every change made through the API and every refused admin
/// request, who made it, from where, and how it ended (`admin` scope).
#[utoipa::path(
    tag = "Audit",
    params(AuditQuery),
    responses((status = 200, description = "Audit events, newest first", body = AuditList)),
    security(("api_key" = [])),
)]
#[get("/v1/audit")]
pub async fn list(
    state: web::Data<AppState>,
    Caller(caller): Caller,
    query: web::Query<AuditQuery>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::Admin)?;
    let query = query.into_inner();
    let limit = query.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid("limit", "limit must be 1 to 100"));
    }
    let mut select = audit_event::Entity::find();
    for (column, value) in [
        (audit_event::Column::Actor, query.actor),
        (audit_event::Column::Action, query.action),
        (audit_event::Column::ResourceType, query.resource_type),
        (audit_event::Column::ResourceId, query.resource_id),
        (audit_event::Column::Outcome, query.outcome),
    ] {
        if let Some(value) = value {
            select = select.filter(column.eq(value));
        }
    }
    if let Some(since) = &query.since {
        select = select.filter(audit_event::Column::At.gte(parse_since(since)?));
    }
    if let Some(until) = &query.until {
        let until = parse_since(until).map_err(|err| err.with_param("until"))?;
        select = select.filter(audit_event::Column::At.lt(until));
    }
    if let Some(after) = &query.after {
        let seq = after
            .strip_prefix("audit-")
            .and_then(|seq| seq.parse::<i64>().ok())
            .ok_or_else(|| {
                ApiError::invalid("after", format!("`{after}` is not an audit event id"))
            })?;
        select = select.filter(audit_event::Column::Seq.lt(seq));
    }
    let mut rows = select
        .order_by_desc(audit_event::Column::Seq)
        .limit(limit + 1)
        .all(state.store.connection())
        .await
        .map_err(|err| ApiError::store("cannot read the audit log", &err))?;
    let has_more = rows.len() as u64 > limit;
    rows.truncate(limit as usize);
    Ok(HttpResponse::Ok().json(AuditList {
        object: "list".to_owned(),
        data: rows.into_iter().map(AuditEvent::from).collect(),
        has_more,
    }))
}

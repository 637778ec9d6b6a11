//! `audit_events`: who changed what, when, from where, and how it ended, one row per
//! state-changing request, in order (`seq`; the event's id is `audit-<seq>`). Each row
//! carries a hash over the previous row's hash and its own content (see
//! [`crate::audit`]), so an edited or deleted row breaks the chain.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_events")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub seq: i64,
    pub at: DateTimeUtc,
    /// The API key's id.
    pub actor: String,
    /// The key's public prefix.
    pub actor_prefix: Option<String>,
    /// The method and route, e.g. `DELETE /v1/collections/{name}`.
    pub action: String,
    /// The route's first segment after `/v1`, e.g. `collections`.
    pub resource_type: String,
    /// The route's first parameter, e.g. the collection's name.
    pub resource_id: Option<String>,
    /// A JSON summary of the change: the route's parameters and the names of the body's
    /// fields, never their values (which may hold secrets or personal data).
    pub summary: String,
    pub client_address: Option<String>,
    pub request_id: Option<String>,
    pub trace_id: Option<String>,
    /// `succeeded` (2xx), `refused` (4xx) or `failed` (5xx).
    pub outcome: String,
    /// The HTTP status answered.
    pub status: i16,
    /// The previous row's `hash` (`genesis` for the first).
    #[sea_orm(unique)]
    pub prev_hash: String,
    /// SHA-256 over `prev_hash` and this row's content, hex.
    pub hash: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

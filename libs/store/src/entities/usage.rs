//! `usage`: one row per API request the gateway answered, for accounting and budgets.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "usage")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The API key that made the request (`api_keys.id`).
    pub key_id: Uuid,
    /// The route, e.g. `chat.completions`.
    pub endpoint: String,
    /// The model asked for (empty for routes without one).
    pub model: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    /// From receiving the request to the last byte of the answer.
    pub latency_ms: i64,
    /// The HTTP status answered (499 when the client went away first).
    pub status: i16,
    pub created_at: DateTimeUtc,
    /// Findings the key's PII policy masked, by type: `{"EMAIL_ADDRESS": 2}`.
    pub pii_masked: Option<String>,
    /// The end user the request named (`safety_identifier` or `user`).
    pub end_user: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

//! `api_keys`: the gateway's API keys, stored as a hash with a short public prefix
//! that finds the row.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "api_keys")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// A name the admin chose.
    pub name: String,
    /// The public start of the key, unique, used to find the row.
    #[sea_orm(unique)]
    pub prefix: String,
    /// A hash of the whole key; the key itself is never stored.
    pub secret_hash: String,
    /// Space-separated scopes, e.g. `admin inference`.
    pub scopes: String,
    pub created_at: DateTimeUtc,
    pub revoked_at: Option<DateTimeUtc>,
    /// Space-separated model ids the key may use; `None` allows every model.
    pub allowed_models: Option<String>,
    /// Requests per minute; `None` is unlimited.
    pub requests_per_minute: Option<i32>,
    /// Prompt plus completion tokens per minute; `None` is unlimited.
    pub tokens_per_minute: Option<i32>,
    /// Total tokens the key may ever use (summed from `usage`); `None` is unlimited.
    pub token_budget: Option<i64>,
    /// What the gateway does with personal data in the key's requests: `mask` or
    /// `block`; `None` is off.
    pub pii_policy: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

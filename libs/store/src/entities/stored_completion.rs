//! `stored_completions`: chat completions made with `store: true` (OpenAI's stored
//! completions), kept for the key that made them with the feedback given on them, the
//! raw material of fine-tuning datasets.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "stored_completions")]
pub struct Model {
    /// The completion's id (`chatcmpl-...`).
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    /// The id of the API key that made it.
    pub owner: String,
    pub model: String,
    /// The request's messages as a JSON list of `{"role", "content"}`.
    pub messages: String,
    /// The first choice's text.
    pub answer: String,
    pub created_at: DateTimeUtc,
    /// 1 (bad) to 5 (good), once rated.
    pub rating: Option<i32>,
    /// A better answer, given with the feedback.
    pub correction: Option<String>,
    pub rated_at: Option<DateTimeUtc>,
    /// The end user the request named (`safety_identifier` or `user`).
    pub end_user: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

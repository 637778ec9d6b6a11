//! `files`: uploaded files (OpenAI's `file` objects). Their content lives in the bus's
//! object store under the same id; this row is what lists and checks read.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "files")]
pub struct Model {
    /// `file-...`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    /// The id of the API key that uploaded it.
    pub owner: String,
    pub filename: String,
    /// `fine-tune`.
    pub purpose: String,
    pub bytes: i64,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

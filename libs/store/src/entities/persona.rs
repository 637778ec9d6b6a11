//! `personas`: the personas operators created (the built-in ones live in the
//! personality service's code). Structured fields are JSON text, read and written only
//! by the personality service.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "personas")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub name: String,
    pub description: String,
    pub archetype: String,
    /// The trait targets as a JSON object (`{"warmth": 0.8, ...}`).
    pub traits: String,
    /// The style rules as a JSON list of strings.
    pub style_rules: String,
    /// The minijinja template of the system prompt.
    pub system_template: String,
    /// Default sampling parameters as a JSON object.
    pub sampling: String,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

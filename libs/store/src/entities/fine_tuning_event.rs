//! `fine_tuning_events`: what happened to each job, in order (`seq`); the event's id
//! is `ftevent-<seq>`.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "fine_tuning_events")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub seq: i64,
    pub job_id: String,
    /// `info`, `warn`, `error`.
    pub level: String,
    /// `message` or `metrics`.
    pub kind: String,
    pub message: String,
    /// The step's figures for `metrics` (JSON).
    pub data: Option<String>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

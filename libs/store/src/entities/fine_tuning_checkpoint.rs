//! `fine_tuning_checkpoints`: the checkpoints a job saved (their files are under the
//! training service's jobs directory).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "fine_tuning_checkpoints")]
pub struct Model {
    /// `ftckpt-...`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub job_id: String,
    pub step: i64,
    pub train_loss: f64,
    pub valid_loss: Option<f64>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

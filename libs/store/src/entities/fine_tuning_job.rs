//! `fine_tuning_jobs`: the training service's jobs. Structured fields are JSON text,
//! read and written only by the training service. `lease_owner` and `lease_expires_at`
//! say which worker runs the job until when (it renews the lease every step), so that
//! a job never runs on two workers at once.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "fine_tuning_jobs")]
pub struct Model {
    /// `ftjob-...`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    /// The id of the API key that created it.
    pub owner: String,
    pub model: String,
    pub training_file: String,
    pub validation_file: Option<String>,
    /// `validating_files`, `queued`, `running`, `succeeded`, `failed`, `cancelled`.
    pub status: String,
    /// `supervised` (LoRA on a chat model) or `classifier` (a head on an embedding
    /// model).
    pub method: String,
    /// The hyperparameters as requested (JSON), then as resolved once the job starts.
    pub hyperparameters: String,
    /// The LoRA settings (JSON).
    pub lora: String,
    pub suffix: Option<String>,
    pub seed: i64,
    pub fine_tuned_model: Option<String>,
    pub trained_tokens: Option<i64>,
    /// `{"code", "message", "param"}` (JSON) once failed.
    pub error: Option<String>,
    /// A classifier job's figures (JSON) once it succeeded.
    pub result: Option<String>,
    /// The caller's metadata (JSON object).
    pub metadata: Option<String>,
    pub created_at: DateTimeUtc,
    pub finished_at: Option<DateTimeUtc>,
    pub estimated_finish: Option<DateTimeUtc>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

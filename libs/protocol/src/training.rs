//! Messages of the training service: fine-tuning jobs shaped as OpenAI's
//! (`fine_tuning.job`, its events and checkpoints), plus our `lora` extension. The job
//! bodies are also the gateway's `/v1/fine_tuning/jobs` bodies (the `openapi` feature
//! derives their OpenAPI schemas); the requests carry the caller's key as `owner`.

use serde::{Deserialize, Serialize};

use crate::{ServiceKind, endpoint::Endpoint};

/// Creates a job (status `validating_files`; the file is checked, then queued).
pub const CREATE_JOB: Endpoint<CreateJobRequest, Job> =
    Endpoint::new(ServiceKind::Training, "create_job");
/// Jobs, newest first.
pub const LIST_JOBS: Endpoint<ListJobs, JobList> =
    Endpoint::new(ServiceKind::Training, "list_jobs");
/// One job.
pub const GET_JOB: Endpoint<JobRequest, Job> = Endpoint::new(ServiceKind::Training, "get_job");
/// Cancels a job that has not ended; a running one stops within one step.
pub const CANCEL_JOB: Endpoint<JobRequest, Job> =
    Endpoint::new(ServiceKind::Training, "cancel_job");
/// A job's events, newest first.
pub const LIST_EVENTS: Endpoint<ListJobItems, EventList> =
    Endpoint::new(ServiceKind::Training, "list_events");
/// A job's checkpoints, newest first.
pub const LIST_CHECKPOINTS: Endpoint<ListJobItems, CheckpointList> =
    Endpoint::new(ServiceKind::Training, "list_checkpoints");

/// Removes a fine-tuned model's package (base models are refused) and announces it.
pub const DELETE_MODEL: Endpoint<DeleteModel, ModelDeleted> =
    Endpoint::new(ServiceKind::Training, "delete_model");

/// Erases one key's fine-tuning: cancels its open jobs, then removes every job (its
/// events, checkpoints and files on disk) and the models they made. While a worker
/// still holds one of its jobs the answer is `conflict`: ask again shortly.
pub const ERASE_OWNER: Endpoint<EraseOwner, OwnerErased> =
    Endpoint::new(ServiceKind::Training, "erase_owner");

/// The JetStream stream that carries job ids to the workers (work-queue retention).
pub const JOB_STREAM: &str = "SLOUGH_TRAINING_JOBS";
/// The subject of that stream's messages.
pub const JOB_SUBJECT: &str = "slough.v1.jobs.training";
/// The workers' durable consumer on it.
pub const JOB_CONSUMER: &str = "training-workers";

/// Longest `suffix` (OpenAI's limit).
pub const MAX_SUFFIX: usize = 18;
/// Most items one list returns.
pub const MAX_LIMIT: u32 = 100;

/// `"auto"` (the service chooses) or a value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum Setting<T> {
    Value(T),
    Auto(Auto),
}

impl<T> Default for Setting<T> {
    fn default() -> Self {
        Setting::Auto(Auto::Auto)
    }
}

/// The literal `"auto"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Auto {
    Auto,
}

/// OpenAI's hyperparameters; in a job, the values the run uses once it started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Hyperparameters {
    /// Passes over the training file, 1 to 50 (`auto`: 3, more for tiny files).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = auto_or_integer))]
    pub n_epochs: Setting<u32>,
    /// Examples per optimizer step, 1 to 256 (`auto`: about 2 % of the file, up to 16).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = auto_or_integer))]
    pub batch_size: Setting<u32>,
    /// Scales the base learning rate (2e-4; `auto` is 5), above 0 and at most 10.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = auto_or_number))]
    pub learning_rate_multiplier: Setting<f64>,
}

/// `"auto"` or a value of `kind`, as an OpenAPI schema.
#[cfg(feature = "openapi")]
fn auto_or(
    kind: utoipa::openapi::schema::Type,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(kind))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["auto"])),
        )
        .into()
}

#[cfg(feature = "openapi")]
fn auto_or_integer() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    auto_or(utoipa::openapi::schema::Type::Integer)
}

#[cfg(feature = "openapi")]
fn auto_or_number() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    auto_or(utoipa::openapi::schema::Type::Number)
}

/// The LoRA adapters' shape (our extension).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Lora {
    /// 1 to 256 (default 8).
    #[serde(default = "default_rank")]
    pub rank: u32,
    /// The adapters' product is scaled by alpha / rank (default 16).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Dropout on the adapters' input while training, 0 to 0.9 (default 0).
    #[serde(default)]
    pub dropout: f64,
    /// Projections that get adapters, of `q_proj`, `k_proj`, `v_proj`, `o_proj`,
    /// `gate_proj`, `up_proj`, `down_proj` (default all).
    #[serde(default = "default_targets")]
    pub target_modules: Vec<String>,
}

impl Default for Lora {
    fn default() -> Self {
        Lora {
            rank: default_rank(),
            alpha: default_alpha(),
            dropout: 0.0,
            target_modules: default_targets(),
        }
    }
}

fn default_rank() -> u32 {
    8
}

fn default_alpha() -> f64 {
    16.0
}

/// Every projection of a llama layer, in order.
pub const LORA_TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

fn default_targets() -> Vec<String> {
    LORA_TARGETS.iter().map(|t| (*t).to_owned()).collect()
}

/// `POST /v1/fine_tuning/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    /// The base model (a chat model from `/v1/models`).
    pub model: String,
    /// A file id with purpose `fine-tune`.
    pub training_file: String,
    #[serde(default)]
    pub validation_file: Option<String>,
    #[serde(default)]
    pub hyperparameters: Option<Hyperparameters>,
    /// Up to 18 characters of a-z, 0-9, `-` and `_`, part of the model's name.
    #[serde(default)]
    pub suffix: Option<String>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub lora: Option<Lora>,
    /// OpenAI's `method`; only `{"type": "supervised"}` (with optional hyperparameters)
    /// is supported.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub method: Option<serde_json::Value>,
    /// Key-value pairs kept with the job.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// Not supported: must be absent or empty.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<Object>>))]
    pub integrations: Option<Vec<serde_json::Value>>,
}

/// A job to create on behalf of the key `owner`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJobRequest {
    pub owner: String,
    pub job: CreateJob,
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    ValidatingFiles,
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    /// Every status, in the order a job goes through them.
    pub const ALL: [JobStatus; 6] = [
        JobStatus::ValidatingFiles,
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    /// As stored and sent (`validating_files`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::ValidatingFiles => "validating_files",
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// Parses [`JobStatus::as_str`].
    pub fn parse(value: &str) -> Option<JobStatus> {
        JobStatus::ALL.into_iter().find(|s| s.as_str() == value)
    }

    /// Whether the job has ended.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

/// Why a job failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobError {
    /// `invalid_training_file`, `invalid_validation_file`, `model_not_found`,
    /// `training_failed`, `export_failed`.
    pub code: String,
    pub message: String,
    pub param: Option<String>,
}

/// A fine-tuning job (OpenAI's `fine_tuning.job`, plus `lora`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Job {
    /// `ftjob-...`.
    pub id: String,
    /// Always `fine_tuning.job`.
    pub object: String,
    /// Unix seconds.
    pub created_at: i64,
    pub finished_at: Option<i64>,
    pub model: String,
    /// The package the job made, once it succeeded: `ft:<model>:<suffix>:<job id>`.
    pub fine_tuned_model: Option<String>,
    pub organization_id: String,
    pub status: JobStatus,
    pub training_file: String,
    pub validation_file: Option<String>,
    pub hyperparameters: Hyperparameters,
    /// Tokens read by training so far (the examples times the epochs, once done).
    pub trained_tokens: Option<u64>,
    pub error: Option<JobError>,
    pub result_files: Vec<String>,
    pub seed: u64,
    /// Unix seconds, while running.
    pub estimated_finish: Option<i64>,
    pub user_provided_suffix: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    pub lora: Lora,
    /// How the model is trained (OpenAI's `method`; `classifier` is our extension).
    pub method: Method,
    /// A classifier job's figures, once it succeeded.
    pub result: Option<ClassifierResult>,
}

/// OpenAI's `method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Method {
    #[serde(rename = "type")]
    pub kind: MethodKind,
}

/// What a job trains.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum MethodKind {
    /// LoRA on a chat model, from chat examples (`{"messages": [...]}`).
    #[default]
    Supervised,
    /// A linear head over an embedding model's vectors, from labelled texts
    /// (`{"text": ..., "label": ...}`), for the personality service.
    Classifier,
}

impl MethodKind {
    /// As stored (`supervised`, `classifier`).
    pub fn as_str(self) -> &'static str {
        match self {
            MethodKind::Supervised => "supervised",
            MethodKind::Classifier => "classifier",
        }
    }
}

/// What a classifier job measured: accuracy on a held-out fifth of the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClassifierResult {
    pub labels: Vec<String>,
    /// The share of held-out examples labelled right.
    pub accuracy: f64,
    pub held_out: u32,
    pub train_accuracy: f64,
}

/// Jobs of `owner` (every job when `None`), newest first, after the job `after`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListJobs {
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub after: Option<String>,
    /// 1 to 100 (default 20).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// A page of jobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobList {
    /// Always `list`.
    pub object: String,
    pub data: Vec<Job>,
    pub has_more: bool,
}

/// One job, seen by `owner` (any job when `None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    pub id: String,
    #[serde(default)]
    pub owner: Option<String>,
}

/// A page of a job's events or checkpoints, newest first, after the item `after`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListJobItems {
    pub job: JobRequest,
    #[serde(default)]
    pub after: Option<String>,
    /// 1 to 100 (default 20, or 10 for checkpoints).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// How important an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum EventLevel {
    Info,
    Warn,
    Error,
}

/// Something that happened to a job (OpenAI's `fine_tuning.job.event`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobEvent {
    /// `ftevent-...`.
    pub id: String,
    /// Always `fine_tuning.job.event`.
    pub object: String,
    pub created_at: i64,
    pub level: EventLevel,
    pub message: String,
    /// `message`, or `metrics` for a training step (its figures in `data`).
    #[serde(rename = "type")]
    pub kind: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub data: Option<serde_json::Value>,
}

/// A page of events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventList {
    pub object: String,
    pub data: Vec<JobEvent>,
    pub has_more: bool,
}

/// A saved state of a job (OpenAI's `fine_tuning.job.checkpoint`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobCheckpoint {
    /// `ftckpt-...`.
    pub id: String,
    /// Always `fine_tuning.job.checkpoint`.
    pub object: String,
    pub created_at: i64,
    /// `<fine-tuned model>:ckpt-step-<n>`.
    pub fine_tuned_model_checkpoint: String,
    pub fine_tuning_job_id: String,
    pub step_number: u64,
    pub metrics: CheckpointMetrics,
}

/// The figures at a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CheckpointMetrics {
    pub step: f64,
    pub train_loss: f64,
    pub valid_loss: Option<f64>,
}

/// A page of checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CheckpointList {
    pub object: String,
    pub data: Vec<JobCheckpoint>,
    pub has_more: bool,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
}

/// What the work queue carries: a job to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct QueuedJob {
    pub id: String,
}

/// A fine-tuned model to remove, on behalf of `owner` (the key that made it; any model
/// when `None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteModel {
    pub model: String,
    #[serde(default)]
    pub owner: Option<String>,
}

/// The key whose fine-tuning is erased.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EraseOwner {
    pub owner: String,
}

/// What an erasure removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OwnerErased {
    /// The ids of the jobs removed.
    pub jobs: Vec<String>,
    /// The fine-tuned models removed.
    pub models: Vec<String>,
}

/// A removed model (OpenAI's answer to `DELETE /v1/models/{model}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelDeleted {
    pub id: String,
    /// Always `model`.
    pub object: String,
    pub deleted: bool,
}

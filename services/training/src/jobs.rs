//! Jobs, their events and checkpoints in the store, and the uploaded files' metadata
//! the jobs read. Every status change is a conditional update (`WHERE status IN ...`),
//! so a cancel and a worker's progress never overwrite each other; a worker's claim on a
//! job is a lease (owner and expiry on the job's row) renewed every step.

use chrono::{DateTime, Duration, Utc};
use sea_orm::{
    ActiveModelTrait as _, ColumnTrait as _, Condition, ConnectionTrait, EntityTrait as _,
    QueryFilter as _, QueryOrder as _, QuerySelect as _, Set, TransactionTrait as _,
    sea_query::Expr,
};
use slough_protocol::{
    ErrorBody, ErrorCode,
    training::{
        CheckpointList, CheckpointMetrics, ClassifierResult, EventLevel, EventList,
        Hyperparameters, Job, JobCheckpoint, JobError, JobEvent, JobList, JobStatus, Lora,
        MAX_LIMIT, Method, MethodKind,
    },
};
use slough_store::{
    Store,
    entities::{file, fine_tuning_checkpoint, fine_tuning_event, fine_tuning_job},
};

/// A job about to be stored, its request checked.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub owner: String,
    pub model: String,
    pub training_file: String,
    pub validation_file: Option<String>,
    pub hyperparameters: Hyperparameters,
    pub lora: Lora,
    pub suffix: Option<String>,
    pub seed: u64,
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    pub method: MethodKind,
}

/// What a claim on a job found.
#[derive(Debug)]
pub enum Claim {
    /// The job is this worker's until the lease expires.
    Claimed(Box<fine_tuning_job::Model>),
    /// Another worker holds a live lease.
    Busy,
    /// The job has ended (or never existed): nothing to run.
    Done,
}

/// The store's jobs.
#[derive(Debug, Clone)]
pub struct Jobs {
    store: Store,
}

/// Why a job could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error("fine-tuning job `{0}` does not exist")]
    NotFound(String),
    #[error(
        "fine-tuning job `{id}` has already ended ({status}); only a job that is validating, queued or running can be cancelled"
    )]
    Ended { id: String, status: String },
    /// A field breaks its rule; `param` names it.
    #[error("{message}")]
    Invalid {
        param: &'static str,
        message: String,
    },
    #[error("the training store is not available")]
    Store(#[source] sea_orm::DbErr),
}

impl JobsError {
    fn invalid(param: &'static str, message: impl Into<String>) -> JobsError {
        JobsError::Invalid {
            param,
            message: message.into(),
        }
    }
}

/// The wire answer for a job error: the one place its codes are chosen.
impl From<JobsError> for ErrorBody {
    fn from(error: JobsError) -> ErrorBody {
        let message = error.to_string();
        match error {
            JobsError::NotFound(_) => ErrorBody::new(ErrorCode::NotFound, message),
            JobsError::Ended { .. } => ErrorBody::new(ErrorCode::Conflict, message),
            JobsError::Invalid { param, message } => ErrorBody::invalid(param, message),
            JobsError::Store(err) => {
                tracing::warn!("training store: {err}");
                ErrorBody::new(ErrorCode::Unavailable, message)
            }
        }
    }
}

fn not_found(id: &str) -> JobsError {
    JobsError::NotFound(id.to_owned())
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// A new id: `<prefix>-` and 24 hex digits.
pub fn new_id(prefix: &str) -> String {
    let hex = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &hex[..24])
}

impl Jobs {
    pub fn new(store: Store) -> Jobs {
        Jobs { store }
    }

    fn db(&self) -> &sea_orm::DatabaseConnection {
        self.store.connection()
    }

    /// A file's metadata, if `owner` (any owner when `None`) may use it.
    pub async fn file(
        &self,
        id: &str,
        owner: Option<&str>,
    ) -> Result<Option<file::Model>, JobsError> {
        let row = file::Entity::find_by_id(id.to_owned())
            .one(self.db())
            .await
            .map_err(JobsError::Store)?;
        Ok(row.filter(|f| owner.is_none_or(|o| f.owner == o)))
    }

    /// Stores a job in `validating_files`.
    pub async fn insert(&self, job: NewJob) -> Result<fine_tuning_job::Model, JobsError> {
        let row = fine_tuning_job::ActiveModel {
            id: Set(new_id("ftjob")),
            owner: Set(job.owner),
            model: Set(job.model),
            training_file: Set(job.training_file),
            validation_file: Set(job.validation_file),
            status: Set(JobStatus::ValidatingFiles.as_str().to_owned()),
            method: Set(job.method.as_str().to_owned()),
            hyperparameters: Set(json(&job.hyperparameters)),
            lora: Set(json(&job.lora)),
            suffix: Set(job.suffix),
            seed: Set(job.seed as i64),
            fine_tuned_model: Set(None),
            trained_tokens: Set(None),
            error: Set(None),
            result: Set(None),
            metadata: Set(job.metadata.as_ref().map(json)),
            created_at: Set(Utc::now()),
            finished_at: Set(None),
            estimated_finish: Set(None),
            lease_owner: Set(None),
            lease_expires_at: Set(None),
        };
        row.insert(self.db()).await.map_err(JobsError::Store)
    }

    /// One job, if `owner` (any owner when `None`) may see it.
    pub async fn get(
        &self,
        id: &str,
        owner: Option<&str>,
    ) -> Result<fine_tuning_job::Model, JobsError> {
        fine_tuning_job::Entity::find_by_id(id.to_owned())
            .one(self.db())
            .await
            .map_err(JobsError::Store)?
            .filter(|job| owner.is_none_or(|o| job.owner == o))
            .ok_or_else(|| not_found(id))
    }

    /// Jobs newest first, after the job `after`.
    pub async fn list(
        &self,
        owner: Option<&str>,
        after: Option<&str>,
        limit: Option<u32>,
    ) -> Result<JobList, JobsError> {
        let limit = page_limit(limit, 20)?;
        let mut query = fine_tuning_job::Entity::find();
        if let Some(owner) = owner {
            query = query.filter(fine_tuning_job::Column::Owner.eq(owner));
        }
        if let Some(after) = after {
            let cursor = self.get(after, owner).await?;
            query = query.filter(
                Condition::any()
                    .add(fine_tuning_job::Column::CreatedAt.lt(cursor.created_at))
                    .add(
                        Condition::all()
                            .add(fine_tuning_job::Column::CreatedAt.eq(cursor.created_at))
                            .add(fine_tuning_job::Column::Id.lt(cursor.id)),
                    ),
            );
        }
        let mut rows = query
            .order_by_desc(fine_tuning_job::Column::CreatedAt)
            .order_by_desc(fine_tuning_job::Column::Id)
            .limit(limit + 1)
            .all(self.db())
            .await
            .map_err(JobsError::Store)?;
        let has_more = trim_page(&mut rows, limit);
        Ok(JobList {
            object: "list".to_owned(),
            data: rows.iter().map(to_job).collect(),
            has_more,
        })
    }

    /// Moves `id` from one of `from` to `to`; answers whether it did.
    pub async fn transition(
        &self,
        id: &str,
        from: &[JobStatus],
        to: JobStatus,
    ) -> Result<bool, JobsError> {
        transition_on(self.db(), id, from, to).await
    }

    /// Cancels a job that has not ended. The status and its event change together, so
    /// a step its worker records is either before both or not recorded.
    pub async fn cancel(&self, id: &str, owner: Option<&str>) -> Result<Job, JobsError> {
        self.get(id, owner).await?;
        let open = [
            JobStatus::ValidatingFiles,
            JobStatus::Queued,
            JobStatus::Running,
        ];
        let transaction = self.db().begin().await.map_err(JobsError::Store)?;
        if !transition_on(&transaction, id, &open, JobStatus::Cancelled).await? {
            drop(transaction);
            let now = self.get(id, owner).await?;
            return Err(JobsError::Ended {
                id: id.to_owned(),
                status: now.status,
            });
        }
        insert_event(
            &transaction,
            id,
            EventLevel::Info,
            "Job cancelled by the user",
            None,
        )
        .await?;
        transaction.commit().await.map_err(JobsError::Store)?;
        Ok(to_job(&self.get(id, owner).await?))
    }

    /// Fails a job that has not ended, with `error`; answers whether it did.
    pub async fn fail(&self, id: &str, error: &JobError) -> Result<bool, JobsError> {
        let result = fine_tuning_job::Entity::update_many()
            .col_expr(
                fine_tuning_job::Column::Status,
                Expr::value(JobStatus::Failed.as_str()),
            )
            .col_expr(fine_tuning_job::Column::Error, Expr::value(json(error)))
            .col_expr(fine_tuning_job::Column::FinishedAt, Expr::value(Utc::now()))
            .col_expr(
                fine_tuning_job::Column::EstimatedFinish,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .filter(fine_tuning_job::Column::Id.eq(id))
            .filter(fine_tuning_job::Column::Status.is_in([
                JobStatus::ValidatingFiles.as_str(),
                JobStatus::Queued.as_str(),
                JobStatus::Running.as_str(),
            ]))
            .exec(self.db())
            .await
            .map_err(JobsError::Store)?;
        if result.rows_affected == 1 {
            self.event(id, EventLevel::Error, &error.message, None)
                .await?;
        }
        Ok(result.rows_affected == 1)
    }

    /// Claims `id` for `worker` for `lease` when it is queued or running and nobody else
    /// holds a live lease; a claimed job is `running`.
    pub async fn claim(&self, id: &str, worker: &str, lease: Duration) -> Result<Claim, JobsError> {
        let now = Utc::now();
        let result = fine_tuning_job::Entity::update_many()
            .col_expr(fine_tuning_job::Column::LeaseOwner, Expr::value(worker))
            .col_expr(
                fine_tuning_job::Column::LeaseExpiresAt,
                Expr::value(now + lease),
            )
            .col_expr(
                fine_tuning_job::Column::Status,
                Expr::value(JobStatus::Running.as_str()),
            )
            .filter(fine_tuning_job::Column::Id.eq(id))
            .filter(
                fine_tuning_job::Column::Status
                    .is_in([JobStatus::Queued.as_str(), JobStatus::Running.as_str()]),
            )
            .filter(
                Condition::any()
                    .add(fine_tuning_job::Column::LeaseOwner.is_null())
                    .add(fine_tuning_job::Column::LeaseOwner.eq(worker))
                    .add(fine_tuning_job::Column::LeaseExpiresAt.lt(now)),
            )
            .exec(self.db())
            .await
            .map_err(JobsError::Store)?;
        if result.rows_affected == 1 {
            return Ok(Claim::Claimed(Box::new(self.get(id, None).await?)));
        }
        match fine_tuning_job::Entity::find_by_id(id.to_owned())
            .one(self.db())
            .await
            .map_err(JobsError::Store)?
        {
            Some(job) if !status(&job).is_final() => Ok(Claim::Busy),
            _ => Ok(Claim::Done),
        }
    }

    /// Records a step of `worker`'s running job: renews its lease for `lease`, stores
    /// the tokens trained and the estimated finish, and appends the step's event, in one
    /// transaction, so a job cancelled or taken over meanwhile records nothing. Answers
    /// whether the job is still `worker`'s.
    #[allow(clippy::too_many_arguments)]
    pub async fn record_step(
        &self,
        id: &str,
        worker: &str,
        lease: Duration,
        trained_tokens: u64,
        estimated_finish: Option<DateTime<Utc>>,
        message: &str,
        metrics: serde_json::Value,
    ) -> Result<bool, JobsError> {
        let transaction = self.db().begin().await.map_err(JobsError::Store)?;
        let result = fine_tuning_job::Entity::update_many()
            .col_expr(
                fine_tuning_job::Column::LeaseExpiresAt,
                Expr::value(Utc::now() + lease),
            )
            .col_expr(
                fine_tuning_job::Column::TrainedTokens,
                Expr::value(trained_tokens as i64),
            )
            .col_expr(
                fine_tuning_job::Column::EstimatedFinish,
                Expr::value(estimated_finish),
            )
            .filter(fine_tuning_job::Column::Id.eq(id))
            .filter(fine_tuning_job::Column::LeaseOwner.eq(worker))
            .filter(fine_tuning_job::Column::Status.eq(JobStatus::Running.as_str()))
            .exec(&transaction)
            .await
            .map_err(JobsError::Store)?;
        let ours = result.rows_affected == 1;
        if ours {
            insert_event(&transaction, id, EventLevel::Info, message, Some(metrics)).await?;
        }
        transaction.commit().await.map_err(JobsError::Store)?;
        Ok(ours)
    }

    /// Extends `worker`'s lease on a running job (through phases without steps).
    pub async fn extend_lease(
        &self,
        id: &str,
        worker: &str,
        lease: Duration,
    ) -> Result<bool, JobsError> {
        let result = fine_tuning_job::Entity::update_many()
            .col_expr(
                fine_tuning_job::Column::LeaseExpiresAt,
                Expr::value(Utc::now() + lease),
            )
            .filter(fine_tuning_job::Column::Id.eq(id))
            .filter(fine_tuning_job::Column::LeaseOwner.eq(worker))
            .exec(self.db())
            .await
            .map_err(JobsError::Store)?;
        Ok(result.rows_affected == 1)
    }

    /// Gives up `worker`'s lease, so that another worker may take the job at once.
    pub async fn release(&self, id: &str, worker: &str) -> Result<(), JobsError> {
        fine_tuning_job::Entity::update_many()
            .col_expr(
                fine_tuning_job::Column::LeaseOwner,
                Expr::value(Option::<String>::None),
            )
            .col_expr(
                fine_tuning_job::Column::LeaseExpiresAt,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .filter(fine_tuning_job::Column::Id.eq(id))
            .filter(fine_tuning_job::Column::LeaseOwner.eq(worker))
            .exec(self.db())
            .await
            .map_err(JobsError::Store)?;
        Ok(())
    }

    /// Records the run's resolved hyperparameters.
    pub async fn set_hyperparameters(
        &self,
        id: &str,
        hyperparameters: &Hyperparameters,
    ) -> Result<(), JobsError> {
        fine_tuning_job::Entity::update_many()
            .col_expr(
                fine_tuning_job::Column::Hyperparameters,
                Expr::value(json(hyperparameters)),
            )
            .filter(fine_tuning_job::Column::Id.eq(id))
            .exec(self.db())
            .await
            .map_err(JobsError::Store)?;
        Ok(())
    }

    /// Marks a running job of `worker` succeeded with its model (and a classifier's
    /// figures).
    pub async fn succeed(
        &self,
        id: &str,
        worker: &str,
        fine_tuned_model: &str,
        trained_tokens: u64,
        figures: Option<&ClassifierResult>,
    ) -> Result<bool, JobsError> {
        let result = fine_tuning_job::Entity::update_many()
            .col_expr(
                fine_tuning_job::Column::Result,
                Expr::value(figures.map(json)),
            )
            .col_expr(
                fine_tuning_job::Column::Status,
                Expr::value(JobStatus::Succeeded.as_str()),
            )
            .col_expr(
                fine_tuning_job::Column::FineTunedModel,
                Expr::value(fine_tuned_model),
            )
            .col_expr(
                fine_tuning_job::Column::TrainedTokens,
                Expr::value(trained_tokens as i64),
            )
            .col_expr(fine_tuning_job::Column::FinishedAt, Expr::value(Utc::now()))
            .col_expr(
                fine_tuning_job::Column::EstimatedFinish,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .filter(fine_tuning_job::Column::Id.eq(id))
            .filter(fine_tuning_job::Column::LeaseOwner.eq(worker))
            .filter(fine_tuning_job::Column::Status.eq(JobStatus::Running.as_str()))
            .exec(self.db())
            .await
            .map_err(JobsError::Store)?;
        Ok(result.rows_affected == 1)
    }

    /// The job that made the model `model`, if a job did.
    pub async fn made(&self, model: &str) -> Result<Option<fine_tuning_job::Model>, JobsError> {
        fine_tuning_job::Entity::find()
            .filter(fine_tuning_job::Column::FineTunedModel.eq(model))
            .one(self.db())
            .await
            .map_err(JobsError::Store)
    }

    /// Every job of `owner`, oldest first.
    pub async fn owned(&self, owner: &str) -> Result<Vec<fine_tuning_job::Model>, JobsError> {
        fine_tuning_job::Entity::find()
            .filter(fine_tuning_job::Column::Owner.eq(owner))
            .order_by_asc(fine_tuning_job::Column::CreatedAt)
            .all(self.db())
            .await
            .map_err(JobsError::Store)
    }

    /// Removes the jobs `ids` with their events and checkpoints, all or none.
    pub async fn remove(&self, ids: &[String]) -> Result<(), JobsError> {
        let transaction = self.db().begin().await.map_err(JobsError::Store)?;
        fine_tuning_event::Entity::delete_many()
            .filter(fine_tuning_event::Column::JobId.is_in(ids))
            .exec(&transaction)
            .await
            .map_err(JobsError::Store)?;
        fine_tuning_checkpoint::Entity::delete_many()
            .filter(fine_tuning_checkpoint::Column::JobId.is_in(ids))
            .exec(&transaction)
            .await
            .map_err(JobsError::Store)?;
        fine_tuning_job::Entity::delete_many()
            .filter(fine_tuning_job::Column::Id.is_in(ids))
            .exec(&transaction)
            .await
            .map_err(JobsError::Store)?;
        transaction.commit().await.map_err(JobsError::Store)
    }

    /// Jobs still in `validating_files` (to validate again after a restart).
    pub async fn validating(&self) -> Result<Vec<fine_tuning_job::Model>, JobsError> {
        fine_tuning_job::Entity::find()
            .filter(fine_tuning_job::Column::Status.eq(JobStatus::ValidatingFiles.as_str()))
            .all(self.db())
            .await
            .map_err(JobsError::Store)
    }

    /// Counts of jobs by status.
    pub async fn counts(&self) -> Result<Vec<(String, i64)>, JobsError> {
        fine_tuning_job::Entity::find()
            .select_only()
            .column(fine_tuning_job::Column::Status)
            .column_as(fine_tuning_job::Column::Id.count(), "count")
            .group_by(fine_tuning_job::Column::Status)
            .into_tuple()
            .all(self.db())
            .await
            .map_err(JobsError::Store)
    }

    /// Appends an event to a job.
    pub async fn event(
        &self,
        id: &str,
        level: EventLevel,
        message: &str,
        metrics: Option<serde_json::Value>,
    ) -> Result<(), JobsError> {
        insert_event(self.db(), id, level, message, metrics).await
    }

    /// A job's events newest first, after the event `after`.
    pub async fn events(
        &self,
        id: &str,
        owner: Option<&str>,
        after: Option<&str>,
        limit: Option<u32>,
    ) -> Result<EventList, JobsError> {
        self.get(id, owner).await?;
        let limit = page_limit(limit, 20)?;
        let mut query =
            fine_tuning_event::Entity::find().filter(fine_tuning_event::Column::JobId.eq(id));
        if let Some(after) = after {
            let seq = after
                .strip_prefix("ftevent-")
                .and_then(|s| s.parse::<i64>().ok())
                .ok_or_else(|| {
                    JobsError::invalid("after", format!("`{after}` is not an event id"))
                })?;
            query = query.filter(fine_tuning_event::Column::Seq.lt(seq));
        }
        let mut rows = query
            .order_by_desc(fine_tuning_event::Column::Seq)
            .limit(limit + 1)
            .all(self.db())
            .await
            .map_err(JobsError::Store)?;
        let has_more = trim_page(&mut rows, limit);
        Ok(EventList {
            object: "list".to_owned(),
            data: rows.iter().map(to_event).collect(),
            has_more,
        })
    }

    /// Records a checkpoint.
    pub async fn add_checkpoint(
        &self,
        id: &str,
        step: u64,
        train_loss: f64,
        valid_loss: Option<f64>,
    ) -> Result<(), JobsError> {
        let row = fine_tuning_checkpoint::ActiveModel {
            id: Set(new_id("ftckpt")),
            job_id: Set(id.to_owned()),
            step: Set(step as i64),
            train_loss: Set(train_loss),
            valid_loss: Set(valid_loss),
            created_at: Set(Utc::now()),
        };
        row.insert(self.db()).await.map_err(JobsError::Store)?;
        Ok(())
    }

    /// A job's checkpoints, newest first, after the checkpoint `after`.
    pub async fn checkpoints(
        &self,
        id: &str,
        owner: Option<&str>,
        after: Option<&str>,
        limit: Option<u32>,
    ) -> Result<CheckpointList, JobsError> {
        let job = self.get(id, owner).await?;
        let limit = page_limit(limit, 10)?;
        let mut query = fine_tuning_checkpoint::Entity::find()
            .filter(fine_tuning_checkpoint::Column::JobId.eq(id));
        if let Some(after) = after {
            let cursor = fine_tuning_checkpoint::Entity::find_by_id(after.to_owned())
                .one(self.db())
                .await
                .map_err(JobsError::Store)?
                .filter(|c| c.job_id == id)
                .ok_or_else(|| {
                    JobsError::invalid("after", format!("`{after}` is not a checkpoint of `{id}`"))
                })?;
            query = query.filter(fine_tuning_checkpoint::Column::Step.lt(cursor.step));
        }
        let mut rows = query
            .order_by_desc(fine_tuning_checkpoint::Column::Step)
            .limit(limit + 1)
            .all(self.db())
            .await
            .map_err(JobsError::Store)?;
        let has_more = trim_page(&mut rows, limit);
        let model = fine_tuned_name(&job);
        let data: Vec<JobCheckpoint> = rows
            .iter()
            .map(|c| JobCheckpoint {
                id: c.id.clone(),
                object: "fine_tuning.job.checkpoint".to_owned(),
                created_at: c.created_at.timestamp(),
                fine_tuned_model_checkpoint: format!("{model}:ckpt-step-{}", c.step),
                fine_tuning_job_id: id.to_owned(),
                step_number: c.step as u64,
                metrics: CheckpointMetrics {
                    step: c.step as f64,
                    train_loss: c.train_loss,
                    valid_loss: c.valid_loss,
                },
            })
            .collect();
        Ok(CheckpointList {
            object: "list".to_owned(),
            first_id: data.first().map(|c| c.id.clone()),
            last_id: data.last().map(|c| c.id.clone()),
            data,
            has_more,
        })
    }
}

/// Moves job `id` from one of `from` to `to` on `db` (a transaction or the store);
/// answers whether it did.
async fn transition_on(
    db: &impl ConnectionTrait,
    id: &str,
    from: &[JobStatus],
    to: JobStatus,
) -> Result<bool, JobsError> {
    let mut update = fine_tuning_job::Entity::update_many()
        .col_expr(fine_tuning_job::Column::Status, Expr::value(to.as_str()))
        .filter(fine_tuning_job::Column::Id.eq(id))
        .filter(fine_tuning_job::Column::Status.is_in(from.iter().map(|s| s.as_str())));
    if to.is_final() {
        update = update
            .col_expr(fine_tuning_job::Column::FinishedAt, Expr::value(Utc::now()))
            .col_expr(
                fine_tuning_job::Column::EstimatedFinish,
                Expr::value(Option::<DateTime<Utc>>::None),
            );
    }
    let result = update.exec(db).await.map_err(JobsError::Store)?;
    Ok(result.rows_affected == 1)
}

/// Appends an event to job `id` on `db` (a transaction or the store).
async fn insert_event(
    db: &impl ConnectionTrait,
    id: &str,
    level: EventLevel,
    message: &str,
    metrics: Option<serde_json::Value>,
) -> Result<(), JobsError> {
    let row = fine_tuning_event::ActiveModel {
        job_id: Set(id.to_owned()),
        level: Set(match level {
            EventLevel::Info => "info",
            EventLevel::Warn => "warn",
            EventLevel::Error => "error",
        }
        .to_owned()),
        kind: Set(if metrics.is_some() {
            "metrics"
        } else {
            "message"
        }
        .to_owned()),
        message: Set(message.to_owned()),
        data: Set(metrics.as_ref().map(json)),
        created_at: Set(Utc::now()),
        ..Default::default()
    };
    row.insert(db).await.map_err(JobsError::Store)?;
    Ok(())
}

/// Cuts rows fetched with one extra (`limit + 1`) to `limit`; answers whether there
/// were more.
fn trim_page<T>(rows: &mut Vec<T>, limit: u64) -> bool {
    let more = rows.len() as u64 > limit;
    rows.truncate(limit as usize);
    more
}

fn page_limit(limit: Option<u32>, default: u32) -> Result<u64, JobsError> {
    match limit.unwrap_or(default) {
        n @ 1..=MAX_LIMIT => Ok(u64::from(n)),
        n => Err(JobsError::invalid(
            "limit",
            format!("limit is {n}; it must be 1 to {MAX_LIMIT}"),
        )),
    }
}

/// A job row's status.
pub fn status(job: &fine_tuning_job::Model) -> JobStatus {
    JobStatus::parse(&job.status).unwrap_or(JobStatus::Failed)
}

/// A job row's method.
pub fn method(job: &fine_tuning_job::Model) -> MethodKind {
    match job.method.as_str() {
        "classifier" => MethodKind::Classifier,
        _ => MethodKind::Supervised,
    }
}

/// The id the job's model gets: `ft:<base>:<suffix>:<job id>` (OpenAI's shape; the
/// suffix may be empty).
pub fn fine_tuned_name(job: &fine_tuning_job::Model) -> String {
    format!(
        "ft:{}:{}:{}",
        job.model,
        job.suffix.as_deref().unwrap_or(""),
        job.id
    )
}

/// A job row as the API shows it.
pub fn to_job(row: &fine_tuning_job::Model) -> Job {
    Job {
        id: row.id.clone(),
        object: "fine_tuning.job".to_owned(),
        created_at: row.created_at.timestamp(),
        finished_at: row.finished_at.map(|t| t.timestamp()),
        model: row.model.clone(),
        fine_tuned_model: row.fine_tuned_model.clone(),
        organization_id: "org-slough".to_owned(),
        status: status(row),
        training_file: row.training_file.clone(),
        validation_file: row.validation_file.clone(),
        hyperparameters: serde_json::from_str(&row.hyperparameters).unwrap_or_default(),
        trained_tokens: row.trained_tokens.map(|t| t as u64),
        error: row
            .error
            .as_deref()
            .and_then(|e| serde_json::from_str(e).ok()),
        result_files: Vec::new(),
        seed: row.seed as u64,
        estimated_finish: row.estimated_finish.map(|t| t.timestamp()),
        user_provided_suffix: row.suffix.clone(),
        metadata: row
            .metadata
            .as_deref()
            .and_then(|m| serde_json::from_str(m).ok()),
        lora: serde_json::from_str(&row.lora).unwrap_or_default(),
        method: Method { kind: method(row) },
        result: row
            .result
            .as_deref()
            .and_then(|r| serde_json::from_str(r).ok()),
    }
}

fn to_event(row: &fine_tuning_event::Model) -> JobEvent {
    JobEvent {
        id: format!("ftevent-{}", row.seq),
        object: "fine_tuning.job.event".to_owned(),
        created_at: row.created_at.timestamp(),
        level: match row.level.as_str() {
            "warn" => EventLevel::Warn,
            "error" => EventLevel::Error,
            _ => EventLevel::Info,
        },
        message: row.message.clone(),
        kind: row.kind.clone(),
        data: row
            .data
            .as_deref()
            .and_then(|d| serde_json::from_str(d).ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn running_job(jobs: &Jobs, worker: &str) -> String {
        let job = jobs
            .insert(NewJob {
                owner: "key-a".to_owned(),
                model: "smollm2".to_owned(),
                training_file: "file-a".to_owned(),
                validation_file: None,
                hyperparameters: Hyperparameters::default(),
                lora: Lora::default(),
                suffix: None,
                seed: 1,
                metadata: None,
                method: MethodKind::Supervised,
            })
            .await
            .unwrap();
        let queued = [JobStatus::ValidatingFiles];
        assert!(
            jobs.transition(&job.id, &queued, JobStatus::Queued)
                .await
                .unwrap()
        );
        let claim = jobs.claim(&job.id, worker, Duration::seconds(30)).await;
        assert!(matches!(claim, Ok(Claim::Claimed(_))));
        job.id
    }

    async fn step(jobs: &Jobs, id: &str, worker: &str, n: u64) -> bool {
        let message = format!("Step {n}/1000: training loss=1.0");
        jobs.record_step(
            id,
            worker,
            Duration::seconds(30),
            n,
            None,
            &message,
            serde_json::json!({"step": n}),
        )
        .await
        .unwrap()
    }

    /// A cancelled job records no step after its cancellation, even when its worker is
    /// recording steps as fast as it can while the cancel comes (issue 31, item 12).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_step_is_recorded_after_a_cancellation() {
        let data = tempfile::tempdir().unwrap();
        let jobs = Jobs::new(Store::open(None, data.path()).await.unwrap());
        for round in 0..10 {
            let id = running_job(&jobs, "worker-1").await;
            let stepping = {
                let (jobs, id) = (jobs.clone(), id.clone());
                tokio::spawn(async move {
                    let mut n = 0;
                    while step(&jobs, &id, "worker-1", n).await {
                        n += 1;
                    }
                    n
                })
            };
            tokio::time::sleep(std::time::Duration::from_millis(5 * round)).await;
            jobs.cancel(&id, None).await.unwrap();
            stepping.await.unwrap();
            assert!(!step(&jobs, &id, "worker-1", 9999).await);
            let events = jobs.events(&id, None, None, Some(5)).await.unwrap();
            assert_eq!(
                events.data[0].message,
                "Job cancelled by the user",
                "round {round}: {:?}",
                events.data.iter().map(|e| &e.message).collect::<Vec<_>>()
            );
        }
    }
}

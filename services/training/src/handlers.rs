//! The NATS endpoints: decode, check, hand to [`Jobs`] (and, for a new job, to the
//! worker's validation), reply.

use std::sync::Arc;

use slough_bus::{BusError, ServiceHost};
use slough_modelkit::package::{self, ModelKind};
use slough_protocol::{
    ErrorBody, ErrorCode,
    training::{
        self, CheckpointList, CreateJob, CreateJobRequest, DeleteModel, EraseOwner, EventList,
        Hyperparameters, Job, JobList, JobRequest, LORA_TARGETS, ListJobItems, ListJobs, Lora,
        MAX_SUFFIX, MethodKind, ModelDeleted, OwnerErased, Setting,
    },
};

use crate::{
    jobs::{self, Jobs, NewJob},
    worker::Worker,
};

/// What the endpoints share.
pub struct Endpoints {
    pub jobs: Jobs,
    pub worker: Arc<Worker>,
}

/// Adds every training endpoint to `host`.
pub async fn add(host: &mut ServiceHost, state: Arc<Endpoints>) -> Result<(), BusError> {
    host.serve(&training::CREATE_JOB, state.clone(), create)
        .await?;
    host.serve(&training::LIST_JOBS, state.clone(), list)
        .await?;
    host.serve(&training::GET_JOB, state.clone(), get).await?;
    host.serve(&training::CANCEL_JOB, state.clone(), cancel)
        .await?;
    host.serve(&training::LIST_EVENTS, state.clone(), events)
        .await?;
    host.serve(&training::LIST_CHECKPOINTS, state.clone(), checkpoints)
        .await?;
    host.serve(&training::DELETE_MODEL, state.clone(), delete_model)
        .await?;
    host.serve(&training::ERASE_OWNER, state, erase_owner)
        .await?;
    Ok(())
}

async fn create(state: Arc<Endpoints>, request: CreateJobRequest) -> Result<Job, ErrorBody> {
    let new = check(&state, request).await?;
    let row = state.jobs.insert(new).await?;
    let worker = state.worker.clone();
    let id = row.id.clone();
    tokio::spawn(async move { worker.validate(&id).await });
    Ok(jobs::to_job(&row))
}

async fn list(state: Arc<Endpoints>, request: ListJobs) -> Result<JobList, ErrorBody> {
    Ok(state
        .jobs
        .list(
            request.owner.as_deref(),
            request.after.as_deref(),
            request.limit,
        )
        .await?)
}

async fn get(state: Arc<Endpoints>, request: JobRequest) -> Result<Job, ErrorBody> {
    let row = state
        .jobs
        .get(&request.id, request.owner.as_deref())
        .await?;
    Ok(jobs::to_job(&row))
}

async fn cancel(state: Arc<Endpoints>, request: JobRequest) -> Result<Job, ErrorBody> {
    Ok(state
        .jobs
        .cancel(&request.id, request.owner.as_deref())
        .await?)
}

async fn events(state: Arc<Endpoints>, request: ListJobItems) -> Result<EventList, ErrorBody> {
    Ok(state
        .jobs
        .events(
            &request.job.id,
            request.job.owner.as_deref(),
            request.after.as_deref(),
            request.limit,
        )
        .await?)
}

async fn checkpoints(
    state: Arc<Endpoints>,
    request: ListJobItems,
) -> Result<CheckpointList, ErrorBody> {
    Ok(state
        .jobs
        .checkpoints(
            &request.job.id,
            request.job.owner.as_deref(),
            request.after.as_deref(),
            request.limit,
        )
        .await?)
}

/// Removes a fine-tuned package (one with a parent) that `owner` made, and tells
/// inference to unload it.
async fn delete_model(
    state: Arc<Endpoints>,
    request: DeleteModel,
) -> Result<ModelDeleted, ErrorBody> {
    let DeleteModel { model, owner } = request;
    let not_found = || ErrorBody {
        param: Some("model".to_owned()),
        ..ErrorBody::new(
            ErrorCode::ModelNotFound,
            format!("model `{model}` does not exist"),
        )
    };
    let models = &state.worker.paths.models;
    let manifest = package::find(models, &model).map_err(|_| not_found())?;
    if manifest.parent.is_none() {
        return Err(ErrorBody::new(
            ErrorCode::Conflict,
            format!(
                "`{model}` is a base model; only fine-tuned models can be deleted through the API (operators use `slough models rm`)"
            ),
        ));
    }
    let job = state.jobs.made(&model).await?;
    if let Some(owner) = &owner
        && job.as_ref().is_none_or(|job| &job.owner != owner)
    {
        return Err(not_found());
    }
    remove_model(&state, &model).await?;
    // The merged weights the package was built from go with it.
    if let Some(job) = job {
        remove_dir(&state.worker.paths.jobs.join(&job.id).join("model"));
    }
    tracing::info!(%model, "fine-tuned model deleted");
    Ok(ModelDeleted {
        id: model,
        object: "model".to_owned(),
        deleted: true,
    })
}

/// Removes the package of model `model` and tells the inference replicas.
async fn remove_model(state: &Endpoints, model: &str) -> Result<(), ErrorBody> {
    package::remove(&state.worker.paths.models, model)
        .map_err(|err| ErrorBody::new(ErrorCode::Internal, err.to_string()))?;
    let event = slough_protocol::inference::ModelEvent {
        model: model.to_owned(),
    };
    if let Err(err) = state
        .worker
        .bus
        .emit(&slough_protocol::inference::MODEL_REMOVED, &event)
        .await
    {
        tracing::warn!("cannot announce the removal of {model}: {err}");
    }
    Ok(())
}

/// Removes `dir` and what it holds; one already gone is fine, another failure logged.
fn remove_dir(dir: &std::path::Path) {
    if let Err(err) = std::fs::remove_dir_all(dir)
        && err.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("cannot remove {}: {err}", dir.display());
    }
}

/// Erases a key's fine-tuning (see [`training::ERASE_OWNER`]): open jobs are cancelled
/// first; while a worker still holds one the answer is a conflict, and nothing is
/// removed until none does.
async fn erase_owner(state: Arc<Endpoints>, request: EraseOwner) -> Result<OwnerErased, ErrorBody> {
    let owner = request.owner;
    for job in state.jobs.owned(&owner).await? {
        if !jobs::status(&job).is_final() {
            match state.jobs.cancel(&job.id, None).await {
                Ok(_) | Err(jobs::JobsError::Ended { .. }) => {}
                Err(err) => return Err(err.into()),
            }
        }
    }
    let owned = state.jobs.owned(&owner).await?;
    let now = chrono::Utc::now();
    if let Some(held) = owned
        .iter()
        .find(|job| job.lease_owner.is_some() && job.lease_expires_at.is_some_and(|at| at > now))
    {
        return Err(ErrorBody::new(
            ErrorCode::Conflict,
            format!(
                "fine-tuning job `{}` is cancelled and still stopping; ask again shortly",
                held.id
            ),
        ));
    }
    let mut models = Vec::new();
    for job in &owned {
        if let Some(model) = &job.fine_tuned_model
            && package::find(&state.worker.paths.models, model).is_ok()
        {
            remove_model(&state, model).await?;
            models.push(model.clone());
        }
        remove_dir(&state.worker.paths.jobs.join(&job.id));
    }
    let ids: Vec<String> = owned.into_iter().map(|job| job.id).collect();
    state.jobs.remove(&ids).await?;
    tracing::info!(
        jobs = ids.len(),
        models = models.len(),
        "a key's fine-tuning erased"
    );
    Ok(OwnerErased { jobs: ids, models })
}

/// Checks every field of a new job, naming the first one at fault.
async fn check(state: &Endpoints, request: CreateJobRequest) -> Result<NewJob, ErrorBody> {
    let CreateJobRequest { owner, job } = request;
    let CreateJob {
        model,
        training_file,
        validation_file,
        hyperparameters,
        suffix,
        seed,
        lora,
        method,
        metadata,
        integrations,
    } = job;

    let kind = match &method {
        None => MethodKind::Supervised,
        Some(method) => method_kind(method)?,
    };
    match package::find(&state.worker.paths.models, &model) {
        Ok(manifest) => match (kind, manifest.kind) {
            (MethodKind::Supervised, ModelKind::Chat) if manifest.architecture == "llama" => {}
            (MethodKind::Classifier, ModelKind::Embedding) => {}
            (MethodKind::Supervised, found) => {
                return Err(ErrorBody::invalid(
                    "model",
                    format!(
                        "`{model}` is {}; only llama chat models can be fine-tuned (a classifier job, `method.type` `classifier`, trains a head on an embedding model)",
                        kind_name(found)
                    ),
                ));
            }
            (MethodKind::Classifier, found) => {
                return Err(ErrorBody::invalid(
                    "model",
                    format!(
                        "`{model}` is {}; a classifier job needs an embedding model",
                        kind_name(found)
                    ),
                ));
            }
        },
        Err(package::PackageError::InvalidId(_)) => {
            return Err(ErrorBody::invalid(
                "model",
                format!("`{model}` is not a model id; name a model from /v1/models"),
            ));
        }
        Err(_) => {
            return Err(ErrorBody {
                param: Some("model".to_owned()),
                ..ErrorBody::new(
                    ErrorCode::ModelNotFound,
                    format!("model `{model}` does not exist"),
                )
            });
        }
    }
    for (param, file) in [
        ("training_file", Some(&training_file)),
        ("validation_file", validation_file.as_ref()),
    ] {
        let Some(file) = file else { continue };
        match state.jobs.file(file, Some(&owner)).await? {
            Some(found) if found.purpose == "fine-tune" => {}
            Some(found) => {
                return Err(ErrorBody::invalid(
                    param,
                    format!(
                        "file `{file}` has purpose `{}`; fine-tuning needs `fine-tune`",
                        found.purpose
                    ),
                ));
            }
            None => {
                return Err(ErrorBody::invalid(
                    param,
                    format!("file `{file}` does not exist"),
                ));
            }
        }
    }
    let hyperparameters = match (hyperparameters, method) {
        (hyperparameters, None) => hyperparameters.unwrap_or_default(),
        (hyperparameters, Some(method)) => {
            let from_method = method_hyperparameters(&method, kind)?;
            match (hyperparameters, from_method) {
                (Some(_), Some(_)) => {
                    return Err(ErrorBody::invalid(
                        "hyperparameters",
                        "give hyperparameters either at the top level or in the method, not both",
                    ));
                }
                (a, b) => a.or(b).unwrap_or_default(),
            }
        }
    };
    check_hyperparameters(&hyperparameters)?;
    if let Some(suffix) = &suffix {
        let valid = !suffix.is_empty()
            && suffix.len() <= MAX_SUFFIX
            && suffix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !valid {
            return Err(ErrorBody::invalid(
                "suffix",
                format!(
                    "suffix `{suffix}` must be 1 to {MAX_SUFFIX} characters of a-z, 0-9, `-` and `_`"
                ),
            ));
        }
    }
    if kind == MethodKind::Classifier && lora.is_some() {
        return Err(ErrorBody::invalid(
            "lora",
            "lora applies to supervised jobs, not to classifiers",
        ));
    }
    let lora = lora.unwrap_or_default();
    check_lora(&lora)?;
    if integrations.as_ref().is_some_and(|i| !i.is_empty()) {
        return Err(ErrorBody::invalid(
            "integrations",
            "integrations are not supported",
        ));
    }
    if metadata.as_ref().is_some_and(|m| m.len() > 16) {
        return Err(ErrorBody::invalid(
            "metadata",
            "metadata holds at most 16 keys",
        ));
    }
    Ok(NewJob {
        owner,
        model,
        training_file,
        validation_file,
        hyperparameters,
        lora,
        suffix,
        seed: seed.unwrap_or_else(|| u64::from(rand::random::<u32>())),
        metadata,
        method: kind,
    })
}

fn kind_name(kind: ModelKind) -> &'static str {
    match kind {
        ModelKind::Chat => "a chat model",
        ModelKind::Embedding => "an embedding model",
        ModelKind::Classifier => "a classifier",
    }
}

/// The kind of job OpenAI's `method` asks for (`{"type": "supervised"}`, or our
/// `{"type": "classifier"}`).
fn method_kind(method: &serde_json::Value) -> Result<MethodKind, ErrorBody> {
    let kind = method.get("type").and_then(|t| t.as_str());
    match kind {
        Some("supervised") => Ok(MethodKind::Supervised),
        Some("classifier") => Ok(MethodKind::Classifier),
        _ => Err(ErrorBody::invalid(
            "method.type",
            format!(
                "method type {} is not supported; use `supervised` or `classifier`",
                kind.map_or("(missing)".to_owned(), |k| format!("`{k}`"))
            ),
        )),
    }
}

/// The hyperparameters inside the method (`{"type": "supervised", "supervised":
/// {"hyperparameters": {...}}}`), when it gives any.
fn method_hyperparameters(
    method: &serde_json::Value,
    kind: MethodKind,
) -> Result<Option<Hyperparameters>, ErrorBody> {
    let pointer = format!("/{}/hyperparameters", kind.as_str());
    match method.pointer(&pointer) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(value) => serde_json::from_value(value.clone())
            .map(Some)
            .map_err(|err| {
                ErrorBody::invalid(
                    format!("method.{}.hyperparameters", kind.as_str()),
                    err.to_string(),
                )
            }),
    }
}

fn check_hyperparameters(h: &Hyperparameters) -> Result<(), ErrorBody> {
    if let Setting::Value(n) = h.n_epochs
        && !(1..=50).contains(&n)
    {
        return Err(ErrorBody::invalid(
            "hyperparameters.n_epochs",
            format!("n_epochs is {n}; it must be 1 to 50 or \"auto\""),
        ));
    }
    if let Setting::Value(n) = h.batch_size
        && !(1..=256).contains(&n)
    {
        return Err(ErrorBody::invalid(
            "hyperparameters.batch_size",
            format!("batch_size is {n}; it must be 1 to 256 or \"auto\""),
        ));
    }
    if let Setting::Value(m) = h.learning_rate_multiplier
        && !(m > 0.0 && m <= 10.0)
    {
        return Err(ErrorBody::invalid(
            "hyperparameters.learning_rate_multiplier",
            format!(
                "learning_rate_multiplier is {m}; it must be above 0 and at most 10, or \"auto\""
            ),
        ));
    }
    Ok(())
}

fn check_lora(lora: &Lora) -> Result<(), ErrorBody> {
    if !(1..=256).contains(&lora.rank) {
        return Err(ErrorBody::invalid(
            "lora.rank",
            format!("rank is {}; it must be 1 to 256", lora.rank),
        ));
    }
    if !(lora.alpha > 0.0 && lora.alpha <= 1024.0) {
        return Err(ErrorBody::invalid(
            "lora.alpha",
            format!(
                "alpha is {}; it must be above 0 and at most 1024",
                lora.alpha
            ),
        ));
    }
    if !(0.0..=0.9).contains(&lora.dropout) {
        return Err(ErrorBody::invalid(
            "lora.dropout",
            format!("dropout is {}; it must be 0 to 0.9", lora.dropout),
        ));
    }
    if lora.target_modules.is_empty() {
        return Err(ErrorBody::invalid(
            "lora.target_modules",
            "target_modules must name at least one projection",
        ));
    }
    for (i, target) in lora.target_modules.iter().enumerate() {
        if !LORA_TARGETS.contains(&target.as_str()) {
            return Err(ErrorBody::invalid(
                format!("lora.target_modules[{i}]"),
                format!("`{target}` is not one of {}", LORA_TARGETS.join(", ")),
            ));
        }
        if lora.target_modules[..i].contains(target) {
            return Err(ErrorBody::invalid(
                format!("lora.target_modules[{i}]"),
                format!("`{target}` is named twice"),
            ));
        }
    }
    Ok(())
}

//! Validating a job's files (status `validating_files`): the examples parse and fit,
//! then the job is queued, or it fails naming the problem.

use super::*;

/// Why a job is refused for its size: the tokens it would train on, and the setting.
fn too_many_tokens(tokens: u64, epochs: u64, most: u64) -> String {
    format!(
        "the job would train on at least {} tokens ({epochs} epochs over {tokens} tokens), \
         over the {most} this service takes (training.max_job_tokens); lower n_epochs or use \
         a smaller file",
        tokens.saturating_mul(epochs)
    )
}

impl Worker {
    /// What validating a job's files found, as its event says it.
    pub(super) async fn check_files(
        &self,
        job: &fine_tuning_job::Model,
    ) -> Result<String, JobError> {
        if jobs::method(job) == MethodKind::Classifier {
            let labelled = self.labelled(job).await?;
            return Ok(format!(
                "Files validated: {} labelled examples, labels {}",
                labelled.texts.len(),
                labelled.labels.join(", ")
            ));
        }
        let base = self.base(&job.model)?;
        let requested: Hyperparameters =
            serde_json::from_str(&job.hyperparameters).unwrap_or_default();
        let most = self.settings.max_job_tokens;
        // The fewest passes the job can make, to stop counting as soon as it is too big.
        let fewest = lora::epochs(&requested, usize::MAX);
        let counted = {
            let base = Arc::clone(&base);
            self.over_file(&job.training_file, "training_file", move |text| {
                let (mut examples, mut tokens) = (0usize, 0u64);
                data::for_each_example(text, &base.renderer(), |line, example| {
                    examples += 1;
                    tokens += example.tokens.len() as u64;
                    if tokens.saturating_mul(fewest) > most {
                        return Err(data::at(line, too_many_tokens(tokens, fewest, most)));
                    }
                    Ok(())
                })?;
                let epochs = lora::epochs(&requested, examples);
                if tokens.saturating_mul(epochs) > most {
                    return Err(data::at(0, too_many_tokens(tokens, epochs, most)));
                }
                Ok((examples, tokens))
            })
            .await?
        };
        let (examples, tokens) = counted;
        let mut message =
            format!("Files validated: {examples} training examples ({tokens} tokens)");
        if let Some(file) = &job.validation_file {
            let base = Arc::clone(&base);
            let valid = self
                .over_file(file, "validation_file", move |text| {
                    let mut examples = 0usize;
                    data::for_each_example(text, &base.renderer(), |_, _| {
                        examples += 1;
                        Ok(())
                    })?;
                    Ok(examples)
                })
                .await?;
            message.push_str(&format!(", {valid} validation examples"));
        }
        Ok(message)
    }

    /// Checks a `validating_files` job's files; queues it or fails it naming the problem.
    /// While its files cannot be read (the file store unavailable), it tries again, from
    /// half a second apart to 30 s, for up to 10 minutes; after that the job waits in
    /// `validating_files` for the service's next start.
    pub async fn validate(&self, id: &str) {
        let mut delay = Duration::from_millis(500);
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            match self.try_validate(id).await {
                Ok(None) => return,
                Ok(Some(reason)) if Instant::now() < deadline => {
                    tracing::warn!(job = id, retry_in = ?delay, "cannot read the job's files now: {reason}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
                Ok(Some(reason)) => {
                    tracing::error!(
                        job = id,
                        "the job's files could not be read for 10 minutes; it is validated again when the service restarts: {reason}"
                    );
                    return;
                }
                Err(err) => {
                    tracing::warn!(job = id, "cannot validate the job now: {err}");
                    return;
                }
            }
        }
    }

    /// Validates the job once; `Some(reason)` when its files cannot be read now.
    async fn try_validate(&self, id: &str) -> Result<Option<String>, ErrorBody> {
        let job = self.jobs.get(id, None).await?;
        if jobs::status(&job) != JobStatus::ValidatingFiles {
            return Ok(None);
        }
        match self.check_files(&job).await {
            Err(error) if can_wait(&error) => return Ok(Some(error.message)),
            Err(error) => {
                self.jobs.fail(id, &error).await?;
            }
            Ok(message) => {
                let moved = self
                    .jobs
                    .transition(id, &[JobStatus::ValidatingFiles], JobStatus::Queued)
                    .await?;
                if moved {
                    self.jobs
                        .event(id, EventLevel::Info, &message, None)
                        .await?;
                    self.queue.publish(id).await.map_err(|err| err.to_body())?;
                    self.jobs
                        .event(id, EventLevel::Info, "Job queued", None)
                        .await?;
                }
            }
        }
        Ok(None)
    }
}

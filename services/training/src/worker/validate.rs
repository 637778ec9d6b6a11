//! Validating a job's files (status `validating_files`): the examples parse and fit,
//! then the job is queued, or it fails naming the problem.

use super::*;

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
        let train = self
            .examples(&base, &job.training_file, "training_file")
            .await?;
        let tokens: usize = train.iter().map(|e| e.tokens.len()).sum();
        let mut message = format!(
            "Files validated: {} training examples ({tokens} tokens)",
            train.len()
        );
        if let Some(file) = &job.validation_file {
            let valid = self.examples(&base, file, "validation_file").await?.len();
            message.push_str(&format!(", {valid} validation examples"));
        }
        Ok(message)
    }

    /// Checks a `validating_files` job's files; queues it or fails it naming the problem.
    pub async fn validate(&self, id: &str) {
        if let Err(err) = self.try_validate(id).await {
            tracing::warn!(job = id, "cannot validate the job now: {err}");
        }
    }

    async fn try_validate(&self, id: &str) -> Result<(), ErrorBody> {
        let job = self.jobs.get(id, None).await?;
        if jobs::status(&job) != JobStatus::ValidatingFiles {
            return Ok(());
        }
        match self.check_files(&job).await {
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
        Ok(())
    }
}

//! Pulling jobs off the JetStream queue, `concurrency` at once: each is claimed with a
//! lease (renewed while it runs), run, and acked only in a final state; an interrupted
//! one is handed back at once.

use super::*;

impl Worker {
    /// Pulls and runs jobs, `concurrency` at once, until `shutdown`.
    pub async fn serve(self: Arc<Self>, concurrency: usize, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(concurrency));
        let mut running = tokio::task::JoinSet::new();
        loop {
            let permit = tokio::select! {
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                () = shutdown.cancelled() => break,
            };
            let next = tokio::select! {
                next = self.queue.next(Duration::from_secs(5)) => next,
                () = shutdown.cancelled() => break,
            };
            match next {
                Ok(Some(delivery)) => {
                    let worker = self.clone();
                    let stop = shutdown.clone();
                    running.spawn(async move {
                        worker.handle(delivery, stop).await;
                        drop(permit);
                    });
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!("job queue: {err}");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = shutdown.cancelled() => break,
                    }
                }
            }
            while running.try_join_next().is_some() {}
        }
        // Running jobs see the shutdown at their next step, checkpoint and hand back.
        while running.join_next().await.is_some() {}
    }

    async fn handle(self: Arc<Self>, delivery: Delivery, stop: CancellationToken) {
        let id = delivery.job.id.clone();
        let lease = chrono::Duration::from_std(self.settings.lease).unwrap_or_default();
        let job = match self.jobs.claim(&id, &self.id, lease).await {
            Ok(Claim::Claimed(job)) => *job,
            Ok(Claim::Done) => return delivery.done().await,
            Ok(Claim::Busy) => return delivery.retry_after(self.settings.lease).await,
            Err(err) => {
                tracing::warn!(job = %id, "cannot claim the job: {err}");
                return delivery.retry_after(Duration::from_secs(5)).await;
            }
        };
        tracing::info!(job = %id, model = %job.model, "training");
        let delivery = Arc::new(delivery);
        // Keeps the lease and JetStream's ack deadline alive through long phases
        // (loading, validation, export); steps renew the lease themselves too.
        let heartbeat = {
            let worker = self.clone();
            let delivery = delivery.clone();
            let id = id.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(worker.settings.lease / 3);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    delivery.working().await;
                    let _ = worker.jobs.extend_lease(&id, &worker.id, lease).await;
                }
            })
        };
        let outcome = match jobs::method(&job) {
            MethodKind::Supervised => self.run(&job, &delivery, &stop).await,
            MethodKind::Classifier => self.run_classifier(&job).await,
        };
        heartbeat.abort();
        // How long a job handed back waits before it is delivered again.
        let mut retry_in = Duration::ZERO;
        let status = match outcome {
            Outcome::Succeeded {
                model,
                tokens,
                figures,
            } => {
                match self
                    .jobs
                    .succeed(&id, &self.id, &model, tokens, figures.as_ref())
                    .await
                {
                    Ok(true) => {
                        // Inference serves chat models; classifiers are personality's.
                        let event = inference::ModelEvent {
                            model: model.clone(),
                        };
                        let served = figures.is_none();
                        if served
                            && let Err(err) = self.bus.emit(&inference::MODEL_ADDED, &event).await
                        {
                            tracing::warn!(job = %id, "cannot announce {model}: {err}");
                        }
                        let _ = self
                            .jobs
                            .event(
                                &id,
                                EventLevel::Info,
                                &format!("New fine-tuned model created: {model}"),
                                None,
                            )
                            .await;
                        let _ = self
                            .jobs
                            .event(
                                &id,
                                EventLevel::Info,
                                "The job has successfully completed",
                                None,
                            )
                            .await;
                        Some("succeeded")
                    }
                    // Cancelled while exporting: the package stays unannounced.
                    _ => Some("cancelled"),
                }
            }
            Outcome::Failed(error) if can_wait(&error) => {
                tracing::warn!(job = %id, "cannot read the job's files now; it goes back to the queue for 5 s: {}", error.message);
                retry_in = Duration::from_secs(5);
                None
            }
            Outcome::Failed(error) => {
                tracing::warn!(job = %id, "failed: {}", error.message);
                let _ = self.jobs.fail(&id, &error).await;
                Some("failed")
            }
            Outcome::Stopped => Some("cancelled"),
            Outcome::Interrupted => None,
        };
        match status {
            Some(status) => {
                self.metrics.finished(&job.model, status);
                delivery.done().await;
            }
            None => {
                self.metrics.finished(&job.model, "interrupted");
                let _ = self.jobs.release(&id, &self.id).await;
                delivery.retry_after(retry_in).await;
            }
        }
    }
}

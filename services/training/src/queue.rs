//! The durable job queue: a JetStream stream with work-queue retention carries job ids
//! to the workers through one durable pull consumer they share. A message is acked only
//! when its job reached a final state; while a job trains its worker sends in-progress
//! acks, so JetStream redelivers it only when the worker died (after `ack_wait`).

use std::time::Duration;

use async_nats::jetstream::{
    self, AckKind,
    consumer::{AckPolicy, PullConsumer, pull},
    stream::{self, RetentionPolicy, StorageType},
};
use futures::StreamExt as _;
use slough_bus::{Bus, BusError};
use slough_protocol::training::{JOB_CONSUMER, JOB_STREAM, JOB_SUBJECT, QueuedJob};

fn nats(context: &str, err: impl std::fmt::Display) -> BusError {
    BusError::Nats(format!("{context}: {err}"))
}

/// The queue, as publisher and consumer.
#[derive(Clone)]
pub struct Queue {
    js: jetstream::Context,
    consumer: PullConsumer,
}

impl Queue {
    /// Creates the stream and the consumer when they are missing; `ack_wait` is how long
    /// a delivered job may go without an ack before it is redelivered.
    pub async fn open(bus: &Bus, ack_wait: Duration) -> Result<Queue, BusError> {
        let js = jetstream::new(bus.client().clone());
        let stream = js
            .get_or_create_stream(stream::Config {
                name: JOB_STREAM.to_owned(),
                subjects: vec![JOB_SUBJECT.to_owned()],
                retention: RetentionPolicy::WorkQueue,
                storage: StorageType::File,
                description: Some("SloughGPT fine-tuning jobs to run".to_owned()),
                num_replicas: bus.jetstream_replicas(),
                ..Default::default()
            })
            .await
            .map_err(|err| nats("cannot create the job stream", err))?;
        let consumer = stream
            .get_or_create_consumer(
                JOB_CONSUMER,
                pull::Config {
                    durable_name: Some(JOB_CONSUMER.to_owned()),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait,
                    ..Default::default()
                },
            )
            .await
            .map_err(|err| nats("cannot create the job consumer", err))?;
        bus.keep_copies(&js, JOB_STREAM).await?;
        Ok(Queue { js, consumer })
    }

    /// Puts a job on the queue (stored by JetStream when this returns).
    pub async fn publish(&self, id: &str) -> Result<(), BusError> {
        let payload = serde_json::to_vec(&QueuedJob { id: id.to_owned() })
            .map_err(|err| nats("cannot encode a queued job", err))?;
        self.js
            .publish(JOB_SUBJECT, payload.into())
            .await
            .map_err(|err| nats("cannot queue the job", err))?
            .await
            .map_err(|err| nats("JetStream did not store the queued job", err))?;
        Ok(())
    }

    /// The next job, waiting up to `wait`; `None` when none came.
    pub async fn next(&self, wait: Duration) -> Result<Option<Delivery>, BusError> {
        let mut batch = self
            .consumer
            .fetch()
            .max_messages(1)
            .expires(wait)
            .messages()
            .await
            .map_err(|err| nats("cannot fetch a job", err))?;
        match batch.next().await {
            None => Ok(None),
            Some(Err(err)) => Err(nats("cannot fetch a job", err)),
            Some(Ok(message)) => {
                let job: QueuedJob = serde_json::from_slice(&message.payload)
                    .map_err(|err| nats("a queued job does not decode", err))?;
                Ok(Some(Delivery { job, message }))
            }
        }
    }
}

/// A job delivered to this worker, to be acked when it ended.
pub struct Delivery {
    pub job: QueuedJob,
    message: jetstream::Message,
}

impl Delivery {
    /// The job reached a final state: JetStream forgets it.
    pub async fn done(&self) {
        if let Err(err) = self.message.ack().await {
            tracing::warn!(job = %self.job.id, "cannot ack the job: {err}");
        }
    }

    /// Still working on it: JetStream waits another `ack_wait`.
    pub async fn working(&self) {
        if let Err(err) = self.message.ack_with(AckKind::Progress).await {
            tracing::warn!(job = %self.job.id, "cannot extend the job's ack deadline: {err}");
        }
    }

    /// Not handled here: deliver it again after `delay`.
    pub async fn retry_after(&self, delay: Duration) {
        if let Err(err) = self.message.ack_with(AckKind::Nak(Some(delay))).await {
            tracing::warn!(job = %self.job.id, "cannot hand the job back: {err}");
        }
    }
}

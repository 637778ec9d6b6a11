//! Streamed replies (see `slough_protocol::stream`): the producer's [`StreamStart`] and
//! [`StreamSender`], the consumer's [`StreamReceiver`].

use std::{
    marker::PhantomData,
    sync::Arc,
    time::{Duration, Instant},
};

use async_nats::{Client, Subscriber};
use futures::StreamExt as _;
use serde::{Serialize, de::DeserializeOwned};
use slough_protocol::{
    ErrorBody, StreamEndpoint,
    stream::{CancelRequest, StreamAck, StreamEvent, StreamFrame, StreamRequest},
    subjects,
};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::{Bus, BusError, client::encode, reply::respond, silence_limit};

/// State of one stream on the producer's side, shared by the handler's sender, the
/// heartbeat task and the host.
pub(crate) struct StreamShared {
    client: Client,
    inbox: String,
    pub(crate) request_id: String,
    heartbeat: Duration,
    frames: tokio::sync::Mutex<FrameState>,
    /// Fired when the caller cancels.
    pub(crate) cancel: CancellationToken,
    /// Fired when the stream is over, stopping the heartbeat.
    closed: CancellationToken,
}

struct FrameState {
    next_seq: u64,
    last_sent: Instant,
    finished: bool,
}

impl StreamShared {
    pub(crate) fn new(
        client: Client,
        inbox: String,
        request_id: String,
        heartbeat: Duration,
    ) -> StreamShared {
        StreamShared {
            client,
            inbox,
            request_id,
            heartbeat,
            frames: tokio::sync::Mutex::new(FrameState {
                next_seq: 0,
                last_sent: Instant::now(),
                finished: false,
            }),
            cancel: CancellationToken::new(),
            closed: CancellationToken::new(),
        }
    }

    /// Publishes one frame; frames are numbered and sent in order under one lock.
    async fn send<C: Serialize, E: Serialize>(
        &self,
        event: StreamEvent<C, E>,
        last: bool,
    ) -> Result<(), BusError> {
        let mut state = self.frames.lock().await;
        if state.finished {
            return Err(BusError::StreamClosed {
                request_id: self.request_id.clone(),
            });
        }
        let frame = StreamFrame {
            request_id: self.request_id.clone(),
            seq: state.next_seq,
            event,
        };
        let payload = encode(&self.inbox, &frame)?;
        self.client
            .publish(self.inbox.clone(), payload.into())
            .await
            .map_err(BusError::nats)?;
        state.next_seq += 1;
        state.last_sent = Instant::now();
        state.finished = last;
        Ok(())
    }

    pub(crate) async fn send_error(&self, error: ErrorBody) -> Result<(), BusError> {
        self.send::<(), ()>(StreamEvent::Error(error), true).await
    }

    pub(crate) async fn is_finished(&self) -> bool {
        self.frames.lock().await.finished
    }

    pub(crate) fn close(&self) {
        self.closed.cancel();
    }

    /// Sends a heartbeat whenever a whole interval passed without a frame.
    fn spawn_heartbeat(self: &Arc<Self>) {
        let shared = self.clone();
        tokio::spawn(async move {
            loop {
                let idle_for = shared.frames.lock().await.last_sent.elapsed();
                let wait = shared.heartbeat.saturating_sub(idle_for);
                tokio::select! {
                    () = shared.closed.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
                let due = shared.frames.lock().await.last_sent.elapsed() >= shared.heartbeat;
                if due
                    && shared
                        .send::<(), ()>(StreamEvent::Heartbeat, false)
                        .await
                        .is_err()
                {
                    return;
                }
            }
        });
    }
}

/// A stream request that the handler has not yet accepted or refused.
pub struct StreamStart<C, E> {
    shared: Arc<StreamShared>,
    request: Arc<tokio::sync::Mutex<Option<async_nats::service::Request>>>,
    instance_id: String,
    types: PhantomData<fn(C, E)>,
}

impl<C: Serialize, E: Serialize> StreamStart<C, E> {
    pub(crate) fn new(
        shared: Arc<StreamShared>,
        request: Arc<tokio::sync::Mutex<Option<async_nats::service::Request>>>,
        instance_id: String,
    ) -> StreamStart<C, E> {
        StreamStart {
            shared,
            request,
            instance_id,
            types: PhantomData,
        }
    }

    /// The caller's request id.
    pub fn request_id(&self) -> &str {
        &self.shared.request_id
    }

    /// Acknowledges the request; from now on the caller waits for frames.
    pub async fn accept(self) -> Result<StreamSender<C, E>, BusError> {
        let request = self.request.lock().await.take();
        let Some(request) = request else {
            return Err(BusError::StreamClosed {
                request_id: self.shared.request_id.clone(),
            });
        };
        let ack = StreamAck {
            request_id: self.shared.request_id.clone(),
            instance_id: self.instance_id,
            heartbeat_ms: u64::try_from(self.shared.heartbeat.as_millis()).unwrap_or(u64::MAX),
        };
        respond(
            &request,
            encode(&request.message.subject, &ack).map_err(|err| err.to_body()),
        )
        .await;
        self.shared.frames.lock().await.last_sent = Instant::now();
        self.shared.spawn_heartbeat();
        Ok(StreamSender {
            shared: self.shared,
            types: PhantomData,
        })
    }
}

/// The producer's side of an accepted stream.
pub struct StreamSender<C, E> {
    shared: Arc<StreamShared>,
    types: PhantomData<fn(C, E)>,
}

impl<C: Serialize, E: Serialize> StreamSender<C, E> {
    /// Sends a piece of the answer.
    pub async fn chunk(&self, chunk: C) -> Result<(), BusError> {
        self.shared
            .send::<C, E>(StreamEvent::Chunk(chunk), false)
            .await
    }

    /// Sends the final frame of a successful stream.
    pub async fn end(&self, summary: E) -> Result<(), BusError> {
        self.shared
            .send::<C, E>(StreamEvent::End(summary), true)
            .await
    }

    /// Sends the final frame of a failed stream.
    pub async fn fail(&self, error: ErrorBody) -> Result<(), BusError> {
        self.shared.send_error(error).await
    }

    /// Resolves when the caller cancels the stream.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.shared.cancel.cancelled()
    }

    /// True once the caller has cancelled the stream.
    pub fn is_cancelled(&self) -> bool {
        self.shared.cancel.is_cancelled()
    }

    /// The caller's request id.
    pub fn request_id(&self) -> &str {
        &self.shared.request_id
    }
}

/// What a consumer receives from a stream.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem<C, E> {
    /// A piece of the answer.
    Chunk(C),
    /// The final frame of a successful stream.
    End(E),
}

/// The consumer's side of a stream. Dropping it before the final frame cancels the
/// stream at its producer.
pub struct StreamReceiver<C, E> {
    bus: Bus,
    subscriber: Subscriber,
    cancel_subject: String,
    ack: StreamAck,
    next_seq: u64,
    done: bool,
    types: PhantomData<fn() -> (C, E)>,
}

impl<C: DeserializeOwned, E: DeserializeOwned> StreamReceiver<C, E> {
    /// The producer's acknowledgement (its instance id and heartbeat interval).
    pub fn ack(&self) -> &StreamAck {
        &self.ack
    }

    /// The next chunk or the final summary; `None` after the stream ended. An error frame
    /// becomes [`BusError::Service`]; a producer silent for three heartbeats becomes
    /// [`BusError::ProducerLost`]; a missing frame becomes [`BusError::StreamGap`].
    pub async fn next(&mut self) -> Option<Result<StreamItem<C, E>, BusError>> {
        if self.done {
            return None;
        }
        let silence = silence_limit(Duration::from_millis(self.ack.heartbeat_ms));
        loop {
            let message = match tokio::time::timeout(silence, self.subscriber.next()).await {
                Ok(Some(message)) => message,
                Ok(None) => {
                    return self
                        .finish(Err(BusError::Nats("stream subscription closed".to_owned())));
                }
                Err(_) => {
                    let request_id = self.ack.request_id.clone();
                    return self.finish(Err(BusError::ProducerLost {
                        request_id,
                        silent_for: silence,
                    }));
                }
            };
            let frame: StreamFrame<C, E> = match serde_json::from_slice(&message.payload) {
                Ok(frame) => frame,
                Err(err) => {
                    let subject = message.subject.to_string();
                    return self.finish(Err(BusError::Codec {
                        subject,
                        reason: err.to_string(),
                    }));
                }
            };
            if frame.seq != self.next_seq {
                let request_id = self.ack.request_id.clone();
                return self.finish(Err(BusError::StreamGap {
                    request_id,
                    expected: self.next_seq,
                    got: frame.seq,
                }));
            }
            self.next_seq += 1;
            match frame.event {
                StreamEvent::Heartbeat => continue,
                StreamEvent::Chunk(chunk) => return Some(Ok(StreamItem::Chunk(chunk))),
                StreamEvent::End(summary) => return self.finish(Ok(StreamItem::End(summary))),
                StreamEvent::Error(error) => return self.finish(Err(BusError::Service(error))),
            }
        }
    }

    /// Cancels the stream at its producer and stops listening.
    pub async fn cancel(mut self) -> Result<(), BusError> {
        self.done = true;
        let cancel = CancelRequest {
            request_id: self.ack.request_id.clone(),
        };
        self.bus.publish(&self.cancel_subject, &cancel).await
    }

    fn finish(
        &mut self,
        item: Result<StreamItem<C, E>, BusError>,
    ) -> Option<Result<StreamItem<C, E>, BusError>> {
        self.done = true;
        Some(item)
    }
}

impl<C, E> Drop for StreamReceiver<C, E> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // The consumer went away mid-stream: tell the producer so it frees the slot.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let bus = self.bus.clone();
        let subject = self.cancel_subject.clone();
        let cancel = CancelRequest {
            request_id: self.ack.request_id.clone(),
        };
        runtime.spawn(async move {
            if let Err(err) = bus.publish(&subject, &cancel).await {
                tracing::warn!(error = %err, "could not cancel an abandoned stream");
            }
        });
    }
}

impl Bus {
    /// Opens a stream on `endpoint`, answered by whichever replica the queue group
    /// picks: subscribes to a fresh inbox, sends the request naming it, and waits for
    /// the acknowledgement (or error reply).
    pub async fn open<Req, C, E>(
        &self,
        endpoint: &StreamEndpoint<Req, C, E>,
        request: &Req,
    ) -> Result<StreamReceiver<C, E>, BusError>
    where
        Req: Serialize,
        C: DeserializeOwned,
        E: DeserializeOwned,
    {
        self.open_at(endpoint, &endpoint.subject(), request).await
    }

    /// Opens a stream on `endpoint` at one replica, `instance_id`; nobody answering
    /// there (the replica is gone) is [`BusError::NoResponders`] at once.
    pub async fn open_on<Req, C, E>(
        &self,
        endpoint: &StreamEndpoint<Req, C, E>,
        instance_id: &str,
        request: &Req,
    ) -> Result<StreamReceiver<C, E>, BusError>
    where
        Req: Serialize,
        C: DeserializeOwned,
        E: DeserializeOwned,
    {
        let subject = endpoint.instance_subject(instance_id);
        self.open_at(endpoint, &subject, request).await
    }

    async fn open_at<Req, C, E>(
        &self,
        endpoint: &StreamEndpoint<Req, C, E>,
        subject: &str,
        request: &Req,
    ) -> Result<StreamReceiver<C, E>, BusError>
    where
        Req: Serialize,
        C: DeserializeOwned,
        E: DeserializeOwned,
    {
        let inbox = self.client().new_inbox();
        let subscriber = self
            .client()
            .subscribe(inbox.clone())
            .await
            .map_err(BusError::nats)?;
        let envelope = StreamRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            inbox,
            request,
        };
        let ack: StreamAck = self
            .request(subject, &envelope, self.options().request_timeout)
            .await?;
        Ok(StreamReceiver {
            bus: self.clone(),
            subscriber,
            cancel_subject: subjects::cancel(endpoint.service()),
            ack,
            next_seq: 0,
            done: false,
            types: PhantomData,
        })
    }
}

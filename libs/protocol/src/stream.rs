//! Streamed replies. The request names an inbox; the service replies with a
//! [`StreamAck`] (or an error), then publishes numbered [`StreamFrame`]s to the inbox:
//! chunks, heartbeats while nothing is ready, and one final `end` or `error` frame.
//! A caller that hears nothing for a few heartbeat intervals treats the producer as dead.

use serde::{Deserialize, Serialize};

use crate::ErrorBody;

/// A request whose answer is streamed to `inbox`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StreamRequest<T> {
    /// Unique per request; used to cancel it.
    pub request_id: String,
    /// Where the frames go.
    pub inbox: String,
    /// The request itself.
    pub request: T,
}

/// The first reply to a [`StreamRequest`]: the producer accepted it and will stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StreamAck {
    /// The request being answered.
    pub request_id: String,
    /// The instance that owns the stream.
    pub instance_id: String,
    /// The producer sends at least one frame this often.
    pub heartbeat_ms: u64,
}

/// One frame on a stream's inbox. `seq` counts from 0 with no gaps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StreamFrame<C, E> {
    /// The request being answered.
    pub request_id: String,
    /// Position of this frame in the stream.
    pub seq: u64,
    /// What the frame carries.
    pub event: StreamEvent<C, E>,
}

/// What a [`StreamFrame`] carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum StreamEvent<C, E> {
    /// A piece of the answer.
    Chunk(C),
    /// Nothing ready yet; the producer is alive.
    Heartbeat,
    /// The last frame of a successful stream, with its summary (e.g. usage).
    End(E),
    /// The last frame of a failed stream.
    Error(ErrorBody),
}

/// Cancels a stream by request id. Published on `slough.v1.<service>.cancel` to every
/// replica; the one that owns the stream stops it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CancelRequest {
    /// The request to cancel.
    pub request_id: String,
}

//! The bus's error type, with the protocol error code each variant stands for.

use std::time::Duration;

use slough_protocol::{ErrorBody, ErrorCode};

/// What can go wrong on the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// No connection could be made before the connect timeout.
    #[error("cannot connect to NATS at {url} within {after:?}: {reason}")]
    Connect {
        url: String,
        after: Duration,
        reason: String,
    },
    /// Nobody listens on the subject: no replica of the service is running.
    #[error("no service answers on {subject}")]
    NoResponders { subject: String },
    /// A replica listens but did not answer in time.
    #[error("no reply on {subject} within {after:?}")]
    Timeout { subject: String, after: Duration },
    /// The service answered with an error.
    #[error("{0}")]
    Service(ErrorBody),
    /// A message could not be encoded or decoded.
    #[error("bad message on {subject}: {reason}")]
    Codec { subject: String, reason: String },
    /// Publishing, subscribing or registering failed at the NATS level.
    #[error("nats: {0}")]
    Nats(String),
    /// A stream's producer fell silent for longer than the heartbeat allows.
    #[error("stream {request_id} lost its producer: nothing heard for {silent_for:?}")]
    ProducerLost {
        request_id: String,
        silent_for: Duration,
    },
    /// A stream frame arrived out of order (a frame was lost).
    #[error("stream {request_id} skipped frames: expected {expected}, got {got}")]
    StreamGap {
        request_id: String,
        expected: u64,
        got: u64,
    },
    /// A message is larger than the NATS server carries (its `max_payload`).
    #[error(
        "a message of {size} bytes for {subject} is over the bus's limit of {limit} bytes (NATS max_payload)"
    )]
    PayloadTooLarge {
        subject: String,
        size: usize,
        limit: usize,
    },
    /// The caller's deadline passed before the request was handled.
    #[error(
        "the request on {subject} arrived {late_by:?} after its caller's deadline; it was not run"
    )]
    DeadlinePassed { subject: String, late_by: Duration },
    /// The stream was already finished or cancelled.
    #[error("stream {request_id} is closed")]
    StreamClosed { request_id: String },
}

impl BusError {
    /// The protocol error code this error stands for.
    pub fn code(&self) -> ErrorCode {
        match self {
            BusError::Service(body) => body.code,
            // A lost frame is the bus failing in transit (NATS reconnecting), not a bug:
            // the caller may try again.
            BusError::NoResponders { .. }
            | BusError::Connect { .. }
            | BusError::StreamGap { .. } => ErrorCode::Unavailable,
            BusError::Timeout { .. }
            | BusError::ProducerLost { .. }
            | BusError::DeadlinePassed { .. } => ErrorCode::Timeout,
            BusError::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            BusError::Codec { .. } => ErrorCode::InvalidRequest,
            BusError::StreamClosed { .. } => ErrorCode::Cancelled,
            BusError::Nats(_) => ErrorCode::Internal,
        }
    }

    /// This error as a message body, e.g. to put in an error frame.
    pub fn to_body(&self) -> ErrorBody {
        match self {
            BusError::Service(body) => body.clone(),
            other => ErrorBody::new(other.code(), other.to_string()),
        }
    }

    pub(crate) fn nats(err: impl std::fmt::Display) -> BusError {
        BusError::Nats(err.to_string())
    }
}

//! The SloughGPT bus on NATS: connecting with backoff, hosting a service on the NATS
//! micro-service API (`$SRV.*`, queue group = service name), typed request/reply whose
//! failures carry a protocol [`ErrorCode`](slough_protocol::ErrorCode), streamed replies
//! (ack, numbered frames, heartbeats, cancellation), W3C trace context in headers, and
//! JetStream's buckets: uploaded files' content and rates shared by replicas.
//!
//! Must not depend on any service crate, on the store or on HTTP.

mod client;
mod error;
mod event;
pub mod files;
mod host;
pub mod rates;
mod reply;
mod stream;
mod trace;

use std::time::Duration;

pub use client::{Bus, connect, wait_for_cluster};
pub use error::BusError;
pub use event::EventStream;
pub use files::FileStore;
pub use host::{Concurrency, Registration, ServiceHost};
pub use rates::Rates;
pub use stream::{StreamItem, StreamReceiver, StreamSender, StreamStart};

/// Header carrying the stable [`ErrorCode`](slough_protocol::ErrorCode) of an error reply,
/// next to the NATS service API's `Nats-Service-Error` (message) and
/// `Nats-Service-Error-Code` (numeric) headers.
pub const ERROR_CODE_HEADER: &str = "Slough-Error-Code";
/// Header carrying a retry hint in milliseconds on `overloaded` error replies.
pub const RETRY_AFTER_HEADER: &str = "Slough-Retry-After-Ms";
/// Header naming the request field at fault on `invalid_request` error replies.
pub const PARAM_HEADER: &str = "Slough-Error-Param";
/// Header carrying a request's deadline, in milliseconds since the Unix epoch: the
/// caller stops waiting then, so a handler that gets the request later does not run it
/// (e.g. requests that sat in a client's buffer while NATS was down). Hosts compare it
/// with their own clock; keep clocks in sync (NTP) in a distributed layout.
pub const DEADLINE_HEADER: &str = "Slough-Deadline-Ms";

/// Timing of the bus.
#[derive(Debug, Clone, Copy)]
pub struct BusOptions {
    /// How long to keep retrying the first connection.
    pub connect_timeout: Duration,
    /// How long a request waits for its reply (also a stream's acknowledgement).
    pub request_timeout: Duration,
    /// How often a stream producer sends a frame when it has nothing else to send. A
    /// consumer that hears nothing for [`BusOptions::silence_limit`] gives up.
    pub heartbeat: Duration,
    /// How many copies JetStream keeps of the streams this client creates; 0: one per
    /// server of the cluster it sees, at most three (see [`Bus::jetstream_replicas`]).
    pub jetstream_replicas: usize,
}

impl Default for BusOptions {
    fn default() -> Self {
        BusOptions {
            connect_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            heartbeat: Duration::from_secs(1),
            jetstream_replicas: 0,
        }
    }
}

/// How long a consumer waits without any frame before it declares the producer dead:
/// three heartbeat intervals, so one late heartbeat is not fatal.
pub fn silence_limit(heartbeat: Duration) -> Duration {
    heartbeat * 3
}

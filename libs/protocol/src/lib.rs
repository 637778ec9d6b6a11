//! The SloughGPT wire protocol: every message type that crosses NATS, every subject
//! name, every error code. Services never format a subject or define a wire struct
//! themselves; they use this crate.
//!
//! Must not depend on any other SloughGPT crate, on NATS, or on a runtime: it is plain
//! data plus serde and schemars, so that `schemas/*.json` can be generated from it.

pub mod bounds;
pub mod endpoint;
pub mod error;
pub mod health;
pub mod inference;
pub mod keys;
pub mod names;
pub mod personality;
pub mod rag;
pub mod schemas;
pub mod status;
pub mod stream;
pub mod subjects;
pub mod training;

pub use endpoint::{Endpoint, Event, StreamEndpoint};
pub use error::{ErrorBody, ErrorCode};
pub use subjects::ServiceKind;

//! The JSON Schemas of every wire message, generated from the types in this crate.
//! `schemas/*.json` at the repository root are these, written by the `schemas` test
//! with `SLOUGH_UPDATE_SCHEMAS=1`; the same test fails when they differ.

use schemars::{Schema, schema_for};

use crate::{
    ErrorBody,
    health::{HealthReport, HealthRequest},
    status::{StatusReport, StatusRequest},
    stream::{CancelRequest, StreamAck, StreamFrame},
};

/// Every message schema, by file name (without `.json`).
pub fn all() -> Vec<(&'static str, Schema)> {
    vec![
        ("error_body", schema_for!(ErrorBody)),
        ("health_request", schema_for!(HealthRequest)),
        ("health_report", schema_for!(HealthReport)),
        ("status_request", schema_for!(StatusRequest)),
        ("status_report", schema_for!(StatusReport)),
        ("stream_ack", schema_for!(StreamAck)),
        (
            "stream_frame",
            schema_for!(StreamFrame<serde_json::Value, serde_json::Value>),
        ),
        ("cancel_request", schema_for!(CancelRequest)),
    ]
}

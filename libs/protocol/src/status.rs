//! The platform status as monitoring sees it: every instance discovered through `$SRV`
//! and what JetStream stores, served on `slough.v1.monitoring.status` and as
//! `GET /v1/status`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// `slough.v1.monitoring.status`: the platform status as monitoring sees it.
pub const STATUS: crate::endpoint::Endpoint<StatusRequest, StatusReport> =
    crate::endpoint::Endpoint::new(crate::ServiceKind::Monitoring, "status");

use crate::ServiceKind;

/// Asks monitoring for the current status. Carries nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusRequest {}

/// Every instance monitoring currently knows, sorted by service then id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatusReport {
    /// When monitoring last swept the bus.
    pub swept_at: Option<DateTime<Utc>>,
    /// The instances seen in recent sweeps.
    pub instances: Vec<InstanceStatus>,
    /// JetStream's streams (the training queue, the file bucket, the shared rates), as of
    /// the last sweep.
    #[serde(default)]
    pub streams: Vec<StreamStatus>,
}

/// One JetStream stream and how many copies of it the NATS servers keep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StreamStatus {
    pub name: String,
    /// What it holds, as its description says.
    pub description: Option<String>,
    /// The copies it is configured to keep (one per server, up to three).
    pub replicas: u32,
    /// The copies that are up to date now (fewer than `replicas` while a server is down
    /// or catching up).
    pub current: u32,
    pub messages: u64,
    pub bytes: u64,
}

/// One running instance of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InstanceStatus {
    /// The instance's NATS service id.
    pub id: String,
    /// The service it runs.
    pub service: ServiceKind,
    /// Its version.
    pub version: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Seconds since it started.
    pub uptime_seconds: u64,
    /// Its admin base URL (`/metrics`, `/livez`, `/readyz`), when it advertised one.
    pub admin_url: Option<String>,
    /// Its Prometheus metrics URL, when it advertised an admin URL.
    pub metrics_url: Option<String>,
    /// True when it answered discovery and its readiness check passed.
    pub healthy: bool,
    /// Why it is not healthy, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Its endpoints with request and error counts since it started.
    pub endpoints: Vec<EndpointStatus>,
}

/// Counters of one endpoint of one instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EndpointStatus {
    /// Endpoint name, e.g. `health`.
    pub name: String,
    /// The subject it listens on.
    pub subject: String,
    /// Requests handled.
    pub requests: u64,
    /// Requests answered with an error.
    pub errors: u64,
    /// Mean processing time in milliseconds.
    pub average_processing_ms: f64,
    /// The last error, as `code:message`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

//! Readiness of one service instance, answered on `slough.v1.<service>.health` and
//! served as `/readyz` on its admin port.

use serde::{Deserialize, Serialize};

use crate::{ServiceKind, endpoint::Endpoint};

/// `slough.v1.<service>.health`: every service answers it with its readiness.
pub const fn endpoint(service: ServiceKind) -> Endpoint<HealthRequest, HealthReport> {
    Endpoint::new(service, "health")
}

/// Asks any replica of a service for its readiness. Carries nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthRequest {}

/// One instance's readiness: ready when every check passes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HealthReport {
    /// The instance's id (its NATS service id).
    pub instance_id: String,
    /// Which service it is.
    pub service: ServiceKind,
    /// The instance's version (its crate version).
    pub version: String,
    /// True when every check passed.
    pub ready: bool,
    /// Each dependency checked, in a stable order.
    pub checks: Vec<HealthCheck>,
}

/// The result of checking one dependency (NATS, store, JetStream, a model, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HealthCheck {
    /// What was checked, e.g. `nats` or `store`.
    pub name: String,
    /// Whether it answered.
    pub ok: bool,
    /// Why it failed, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

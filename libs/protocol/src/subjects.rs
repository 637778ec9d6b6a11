//! Subject names. `slough.v1.<service>.<endpoint>` for requests, `slough.v1.events.<topic>`
//! for events. Nothing else in the workspace formats a subject string; endpoints and
//! events are declared with their types in [`crate::endpoint`]'s descriptors.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The root every SloughGPT subject starts with, including the protocol version.
pub const ROOT: &str = "slough.v1";

/// The six services of the platform. Their names are also their NATS service names and
/// queue groups.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ServiceKind {
    Gateway,
    Inference,
    Rag,
    Personality,
    Training,
    Monitoring,
}

impl ServiceKind {
    /// Every service, in start-up order (monitoring first, gateway last).
    pub const ALL: [ServiceKind; 6] = [
        ServiceKind::Monitoring,
        ServiceKind::Inference,
        ServiceKind::Rag,
        ServiceKind::Personality,
        ServiceKind::Training,
        ServiceKind::Gateway,
    ];

    /// The service's name on the bus, in metric names and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ServiceKind::Gateway => "gateway",
            ServiceKind::Inference => "inference",
            ServiceKind::Rag => "rag",
            ServiceKind::Personality => "personality",
            ServiceKind::Training => "training",
            ServiceKind::Monitoring => "monitoring",
        }
    }

    /// Parses a service name as written by [`ServiceKind::name`].
    pub fn from_name(name: &str) -> Option<ServiceKind> {
        ServiceKind::ALL
            .into_iter()
            .find(|kind| kind.name() == name)
    }
}

impl fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `slough.v1.<service>.<endpoint>`: a request/reply endpoint of a service.
pub fn endpoint(service: ServiceKind, endpoint: &str) -> String {
    format!("{ROOT}.{service}.{endpoint}")
}

/// `<subject>.<instance_id>`: an endpoint's subject on which only one instance answers.
pub fn instance(subject: &str, instance_id: &str) -> String {
    format!("{subject}.{instance_id}")
}

/// `slough.v1.<service>.cancel`: fan-out (no queue group) cancellation of a stream by
/// request id; whichever replica owns the stream stops it.
pub fn cancel(service: ServiceKind) -> String {
    endpoint(service, "cancel")
}

/// `slough.v1.events.<topic>`: platform events, e.g. `models.added`.
pub fn event(topic: &str) -> String {
    format!("{ROOT}.events.{topic}")
}

/// The NATS micro-service discovery subject for a verb (`PING`, `INFO`, `STATS`), for
/// every service at once.
pub fn discovery(verb: DiscoveryVerb) -> String {
    format!("$SRV.{}", verb.as_str())
}

/// The verbs of the NATS micro-service discovery protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscoveryVerb {
    Ping,
    Info,
    Stats,
}

impl DiscoveryVerb {
    fn as_str(self) -> &'static str {
        match self {
            DiscoveryVerb::Ping => "PING",
            DiscoveryVerb::Info => "INFO",
            DiscoveryVerb::Stats => "STATS",
        }
    }
}

/// JetStream's account-information request: answered only when JetStream is enabled.
pub const JETSTREAM_ACCOUNT_INFO: &str = "$JS.API.INFO";

/// JetStream's request for its streams' configurations and states (up to 256 a page).
pub const JETSTREAM_STREAM_LIST: &str = "$JS.API.STREAM.LIST";

/// Metadata key under which an instance advertises its admin HTTP base URL in `$SRV.INFO`.
pub const META_ADMIN_URL: &str = "admin_url";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_follow_the_scheme() {
        assert_eq!(endpoint(ServiceKind::Rag, "health"), "slough.v1.rag.health");
        assert_eq!(cancel(ServiceKind::Inference), "slough.v1.inference.cancel");
        assert_eq!(event("models.added"), "slough.v1.events.models.added");
        assert_eq!(discovery(DiscoveryVerb::Info), "$SRV.INFO");
    }

    #[test]
    fn names_round_trip() {
        for kind in ServiceKind::ALL {
            assert_eq!(ServiceKind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(ServiceKind::from_name("nope"), None);
    }
}

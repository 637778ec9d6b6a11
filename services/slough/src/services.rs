//! The table of the services this binary runs: one entry per service, naming its
//! version, where its admin server's address is in the settings, and how to run it with
//! its section of the settings. Adding a service is a crate that follows the template
//! (see the README), a field in [`Settings`], and one entry here.

use std::{future::Future, net::SocketAddr, pin::Pin};

use slough_protocol::ServiceKind;
use slough_service::{ServiceContext, ServiceError};
use tokio_util::sync::CancellationToken;

use crate::Settings;

/// A service's `run`, started.
pub type Running = Pin<Box<dyn Future<Output = Result<(), ServiceError>> + Send>>;

/// What the binary knows about one service.
pub struct ServiceSpec {
    pub kind: ServiceKind,
    /// The crate version it registers with.
    pub version: &'static str,
    /// Where its admin server listens.
    pub admin_listen: fn(&Settings) -> SocketAddr,
    /// The names of the servers it binds besides the admin one (announced through
    /// [`slough_service::Listening`]).
    pub servers: &'static [&'static str],
    /// Runs it until the token is cancelled.
    pub run: fn(ServiceContext, &Settings, CancellationToken) -> Running,
}

/// Every service, in start order (monitoring first, so it sees the others arrive; the
/// gateway last, so its first requests find the services behind it).
pub const SERVICES: [ServiceSpec; 6] = [
    ServiceSpec {
        kind: ServiceKind::Monitoring,
        version: slough_monitoring::VERSION,
        admin_listen: |settings| settings.monitoring.admin_listen,
        servers: &["status"],
        run: |ctx, settings, stop| {
            Box::pin(slough_monitoring::run(
                ctx,
                settings.monitoring.clone(),
                stop,
            ))
        },
    },
    ServiceSpec {
        kind: ServiceKind::Inference,
        version: slough_inference::VERSION,
        admin_listen: |settings| settings.inference.admin_listen,
        servers: &[],
        run: |ctx, settings, stop| {
            Box::pin(slough_inference::run(ctx, settings.inference.clone(), stop))
        },
    },
    ServiceSpec {
        kind: ServiceKind::Rag,
        version: slough_rag::VERSION,
        admin_listen: |settings| settings.rag.admin_listen,
        servers: &[],
        run: |ctx, settings, stop| Box::pin(slough_rag::run(ctx, settings.rag.clone(), stop)),
    },
    ServiceSpec {
        kind: ServiceKind::Personality,
        version: slough_personality::VERSION,
        admin_listen: |settings| settings.personality.admin_listen,
        servers: &[],
        run: |ctx, settings, stop| {
            Box::pin(slough_personality::run(
                ctx,
                settings.personality.clone(),
                stop,
            ))
        },
    },
    ServiceSpec {
        kind: ServiceKind::Training,
        version: slough_training::VERSION,
        admin_listen: |settings| settings.training.admin_listen,
        servers: &[],
        run: |ctx, settings, stop| {
            Box::pin(slough_training::run(ctx, settings.training.clone(), stop))
        },
    },
    ServiceSpec {
        kind: ServiceKind::Gateway,
        version: slough_gateway::VERSION,
        admin_listen: |settings| settings.gateway.admin_listen,
        servers: &["api"],
        run: |ctx, settings, stop| {
            Box::pin(slough_gateway::run(ctx, settings.gateway.clone(), stop))
        },
    },
];

/// The entry of `kind`; an error naming it when the table lacks it (a service added to
/// `ServiceKind` but not here).
pub fn spec(kind: ServiceKind) -> Result<&'static ServiceSpec, ServiceError> {
    SERVICES
        .iter()
        .find(|spec| spec.kind == kind)
        .ok_or_else(|| ServiceError::Config(format!("the slough binary has no service {kind}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_has_one_entry_in_start_order() {
        let kinds: Vec<ServiceKind> = SERVICES.iter().map(|spec| spec.kind).collect();
        assert_eq!(kinds, ServiceKind::ALL);
        for kind in ServiceKind::ALL {
            assert_eq!(spec(kind).unwrap().kind, kind);
        }
    }
}

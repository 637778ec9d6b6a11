//! Running services in this process: each gets its own [`ServiceContext`] (bus
//! connection, registry, admin server) and its own shutdown token, so one can be stopped
//! while the others go on (tests do that), and all stop together on Ctrl-C.

use std::time::Duration;

use slough_protocol::ServiceKind;
use slough_service::{Listening, ServiceContext, ServiceError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{Settings, services};

/// One service running in this process.
pub struct ServiceHandle {
    kind: ServiceKind,
    servers: &'static [&'static str],
    admin_url: String,
    listening: Listening,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ServiceError>>,
}

impl ServiceHandle {
    /// Starts `kind` against the NATS server at `nats_url`. Returns once its admin
    /// server listens and its bus connection is up; registration follows in its task.
    /// `failed` is cancelled if the service stops with an error on its own.
    pub async fn start(
        kind: ServiceKind,
        settings: &Settings,
        nats_url: &str,
        failed: CancellationToken,
    ) -> Result<ServiceHandle, ServiceError> {
        let spec = services::spec(kind)?;
        let ctx = ServiceContext::start(
            kind,
            spec.version,
            &settings.common,
            nats_url,
            (spec.admin_listen)(settings),
        )
        .await?;
        let admin_url = ctx.admin_url().to_owned();
        let listening = ctx.listening();
        let shutdown = CancellationToken::new();
        let run = (spec.run)(ctx, settings, shutdown.clone());
        let task = tokio::spawn(async move {
            let result = run.await;
            if let Err(err) = &result {
                tracing::error!(service = %kind, error = %err, "service stopped");
                failed.cancel();
            }
            result
        });
        Ok(ServiceHandle {
            kind,
            servers: spec.servers,
            admin_url,
            listening,
            shutdown,
            task,
        })
    }

    /// Which service this is.
    pub fn kind(&self) -> ServiceKind {
        self.kind
    }

    /// The names of the servers it binds besides the admin one.
    pub fn servers(&self) -> &'static [&'static str] {
        self.servers
    }

    /// Its admin server's base URL.
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// The address its server `name` bound (the gateway's `api`, monitoring's
    /// `status`), once it listens; `None` if it stopped first.
    pub async fn address(&self, name: &str) -> Option<std::net::SocketAddr> {
        self.listening.wait(name).await
    }

    /// Asks it to stop and waits (up to `limit`) until it has left the bus.
    pub async fn stop(self, limit: Duration) -> Result<(), ServiceError> {
        self.shutdown.cancel();
        self.join(limit).await
    }

    async fn join(self, limit: Duration) -> Result<(), ServiceError> {
        let kind = self.kind;
        match tokio::time::timeout(limit, self.task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join_error)) => Err(ServiceError::Panicked {
                service: kind.to_string(),
                reason: join_error.to_string(),
            }),
            Err(_) => Err(ServiceError::StopTimeout {
                service: kind.to_string(),
                limit,
            }),
        }
    }
}

/// Several services running in this process.
pub struct Platform {
    services: Vec<ServiceHandle>,
    failed: CancellationToken,
}

/// How long stopping waits for each service.
const STOP_LIMIT: Duration = Duration::from_secs(15);

impl Platform {
    /// Starts `kinds` in order; if one cannot start, stops those already started.
    pub async fn start(
        kinds: &[ServiceKind],
        settings: &Settings,
        nats_url: &str,
    ) -> Result<Platform, ServiceError> {
        let mut platform = Platform {
            services: Vec::new(),
            failed: CancellationToken::new(),
        };
        for &kind in kinds {
            match ServiceHandle::start(kind, settings, nats_url, platform.failed.clone()).await {
                Ok(handle) => platform.services.push(handle),
                Err(err) => {
                    platform.stop().await;
                    return Err(err);
                }
            }
        }
        Ok(platform)
    }

    /// The running services, in start order.
    pub fn services(&self) -> &[ServiceHandle] {
        &self.services
    }

    /// The gateway's API address, once it listens (None without a gateway).
    pub async fn gateway_api(&self) -> Option<std::net::SocketAddr> {
        let gateway = self
            .services
            .iter()
            .find(|service| service.kind() == ServiceKind::Gateway)?;
        gateway.address("api").await
    }

    /// Resolves when a service stops with an error on its own.
    pub async fn failed(&self) {
        self.failed.cancelled().await;
    }

    /// Stops one service (the first of its kind), leaving the others running.
    pub async fn stop_service(&mut self, kind: ServiceKind) -> Result<(), ServiceError> {
        match self.services.iter().position(|handle| handle.kind == kind) {
            Some(index) => self.services.remove(index).stop(STOP_LIMIT).await,
            None => Ok(()),
        }
    }

    /// Stops everything, the last started first, and returns the errors services
    /// stopped with.
    pub async fn stop(self) -> Vec<(ServiceKind, ServiceError)> {
        for handle in &self.services {
            handle.shutdown.cancel();
        }
        let mut errors = Vec::new();
        for handle in self.services.into_iter().rev() {
            let kind = handle.kind;
            if let Err(err) = handle.join(STOP_LIMIT).await {
                errors.push((kind, err));
            }
        }
        errors
    }
}

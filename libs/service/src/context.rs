//! [`ServiceContext`]: what one service instance starts from. It connects to the bus,
//! creates the instance's Prometheus registry, serves the admin port, and collects the
//! readiness checks that `/readyz` and the `health` endpoint report.

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, OnceLock},
};

use prometheus::Registry;
use slough_bus::{Bus, Registration, ServiceHost};
use slough_protocol::{
    ServiceKind,
    health::{self, HealthCheck, HealthReport},
    subjects,
};
use slough_store::Store;
use slough_telemetry::{AdminServer, Readiness};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{CommonConfig, ServiceError, nats_probe::NatsProbe};

/// The outcome of one readiness check: `Err` carries why the dependency is not usable.
pub type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

type Check = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

/// Everything a service's `run` function needs from the platform.
pub struct ServiceContext {
    common: CommonConfig,
    registry: Registry,
    health: Arc<Health>,
    admin: AdminServer,
    admin_url: String,
    listening: Listening,
    /// Keeps the NATS connection's gauges current while the context lives.
    _nats_probe: NatsProbe,
}

/// The addresses a service's servers bound (the gateway's `api`, monitoring's
/// `status`), announced once they listen: how whoever started the service learns a
/// port it asked the system to pick (port 0). Cheap to clone; clones share.
#[derive(Clone)]
pub struct Listening {
    addresses: Arc<watch::Sender<BTreeMap<&'static str, SocketAddr>>>,
}

impl Default for Listening {
    fn default() -> Self {
        Listening {
            addresses: Arc::new(watch::Sender::new(BTreeMap::new())),
        }
    }
}

impl Listening {
    /// Says that the server `name` listens on `addr`.
    pub fn announce(&self, name: &'static str, addr: SocketAddr) {
        self.addresses.send_modify(|addresses| {
            addresses.insert(name, addr);
        });
    }

    /// The address of server `name`, once it is announced; `None` if the service
    /// stopped without announcing it.
    pub async fn wait(&self, name: &str) -> Option<SocketAddr> {
        let mut addresses = self.addresses.subscribe();
        let announced = addresses
            .wait_for(|addresses| addresses.contains_key(name))
            .await
            .ok()?;
        announced.get(name).copied()
    }
}

/// What a readiness report is made from, shared by `/readyz` and the `health` endpoint.
struct Health {
    kind: ServiceKind,
    version: String,
    bus: Bus,
    checks: Mutex<Vec<(String, Check)>>,
    /// Known once the instance has registered.
    instance_id: OnceLock<String>,
}

impl ServiceContext {
    /// Connects to NATS at `nats_url`, creates the registry and starts the admin server
    /// on `admin_listen`, advertised as [`CommonConfig::advertise_host`] says.
    pub async fn start(
        kind: ServiceKind,
        version: &str,
        common: &CommonConfig,
        nats_url: &str,
        admin_listen: SocketAddr,
    ) -> Result<ServiceContext, ServiceError> {
        let registry = slough_telemetry::metrics::service_registry(kind.name(), version)?;
        let bus = slough_bus::connect(
            nats_url,
            &format!("slough-{kind}"),
            common.nats.bus_options(),
        )
        .await?;
        let health = Arc::new(Health {
            kind,
            version: version.to_owned(),
            bus,
            checks: Mutex::default(),
            instance_id: OnceLock::new(),
        });
        let readiness: Readiness = {
            let health = health.clone();
            Arc::new(move || {
                let health = health.clone();
                Box::pin(async move { health.report().await })
            })
        };
        let nats_probe = NatsProbe::start(kind, health.bus.clone(), &registry)
            .map_err(slough_telemetry::TelemetryError::from)?;
        let admin = AdminServer::start(admin_listen, registry.clone(), readiness)?;
        let admin_url = format!(
            "http://{}",
            advertised(admin.addr(), common.advertise_host.as_deref())
        );
        tracing::info!(service = %kind, admin = %admin_url, "admin server listening");
        Ok(ServiceContext {
            common: common.clone(),
            registry,
            health,
            admin,
            admin_url,
            listening: Listening::default(),
            _nats_probe: nats_probe,
        })
    }

    /// Which service this context belongs to.
    pub fn kind(&self) -> ServiceKind {
        self.health.kind
    }

    /// The settings every service shares.
    pub fn common(&self) -> &CommonConfig {
        &self.common
    }

    /// The bus connection.
    pub fn bus(&self) -> &Bus {
        &self.health.bus
    }

    /// The instance's metrics registry, served on `/metrics`.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The admin server's base URL as other machines reach it.
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// Where the service announces the addresses its servers bound.
    pub fn listening(&self) -> Listening {
        self.listening.clone()
    }

    /// Adds a readiness check named `name`, run on every `/readyz` and `health` request.
    pub fn add_check<F>(&self, name: &str, check: F)
    where
        F: Fn() -> CheckFuture + Send + Sync + 'static,
    {
        self.health
            .checks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push((name.to_owned(), Arc::new(check)));
    }

    /// Opens the store the configuration names (migrating it) and adds a `store`
    /// readiness check that pings it.
    pub async fn open_store(&self) -> Result<Store, ServiceError> {
        let store = Store::open(self.common.database_url.as_ref(), &self.common.data_dir).await?;
        let probe = store.clone();
        self.add_check("store", move || {
            let probe = probe.clone();
            Box::pin(async move { probe.ping().await.map_err(|err| err.to_string()) })
        });
        Ok(store)
    }

    /// Registers the instance on the bus (advertising its admin URL) with the `health`
    /// endpoint every service has. Add the service's own endpoints to the returned host.
    pub async fn register(&self, description: &str) -> Result<ServiceHost, ServiceError> {
        let registration = Registration {
            kind: self.health.kind,
            version: self.health.version.clone(),
            description: description.to_owned(),
            metadata: HashMap::from([(
                subjects::META_ADMIN_URL.to_owned(),
                self.admin_url.clone(),
            )]),
            concurrency: self.common.nats.concurrency(),
        };
        let mut host =
            ServiceHost::register(&self.health.bus, registration, &self.registry).await?;
        let _ = self.health.instance_id.set(host.id().to_owned());
        let endpoint = health::endpoint(self.health.kind);
        host.serve(&endpoint, self.health.clone(), |health, _| async move {
            Ok(health.report().await)
        })
        .await?;
        Ok(host)
    }

    /// Registers with only the `health` endpoint and serves until `shutdown`: a service
    /// whose work has not arrived yet.
    pub async fn serve_health(
        self,
        description: &str,
        shutdown: CancellationToken,
    ) -> Result<(), ServiceError> {
        let host = self.register(description).await?;
        self.serve(host, shutdown).await
    }

    /// Serves `host` until `shutdown`, drains it, then stops the admin server and closes
    /// the bus connection.
    pub async fn serve(
        self,
        host: ServiceHost,
        shutdown: CancellationToken,
    ) -> Result<(), ServiceError> {
        let served = host.run(shutdown).await;
        self.admin.stop().await;
        self.health.bus.close().await;
        Ok(served?)
    }
}

impl Health {
    /// Runs every check (NATS first) and reports them in order.
    async fn report(&self) -> HealthReport {
        let checks: Vec<(String, Check)> = self
            .checks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let connected = self.bus.is_connected();
        let mut results = vec![HealthCheck {
            name: "nats".to_owned(),
            ok: connected,
            detail: (!connected).then(|| "not connected to NATS".to_owned()),
        }];
        for (name, check) in checks {
            let outcome = check().await;
            results.push(HealthCheck {
                name,
                ok: outcome.is_ok(),
                detail: outcome.err(),
            });
        }
        HealthReport {
            instance_id: self.instance_id.get().cloned().unwrap_or_default(),
            service: self.kind,
            version: self.version.clone(),
            ready: results.iter().all(|check| check.ok),
            checks: results,
        }
    }
}

/// The `host:port` others use for `addr`: the configured host, else the bound address
/// unless it is a wildcard, else `$HOSTNAME` (containers set it), else loopback.
fn advertised(addr: SocketAddr, advertise_host: Option<&str>) -> String {
    let host = match advertise_host {
        Some(host) => host.to_owned(),
        None if !addr.ip().is_unspecified() => addr.ip().to_string(),
        None => std::env::var("HOSTNAME")
            .ok()
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "127.0.0.1".to_owned()),
    };
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{}", addr.port())
    } else {
        format!("{host}:{}", addr.port())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertises_the_bound_address_unless_told_otherwise() {
        let bound: SocketAddr = "127.0.0.1:9401".parse().unwrap();
        assert_eq!(advertised(bound, None), "127.0.0.1:9401");
        assert_eq!(advertised(bound, Some("gateway")), "gateway:9401");
        let v6: SocketAddr = "[::1]:9401".parse().unwrap();
        assert_eq!(advertised(v6, None), "[::1]:9401");
    }
}

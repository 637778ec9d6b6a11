//! The admin HTTP server every service instance runs: `/metrics` (Prometheus text),
//! `/livez` (the process answers), `/readyz` (200 when every dependency answers, 503
//! with the failing checks otherwise).

use std::{future::Future, net::SocketAddr, pin::Pin, sync::Arc};

use actix_web::{App, HttpResponse, HttpServer, web};
use prometheus::Registry;
use slough_protocol::health::HealthReport;

use crate::{
    TelemetryError,
    http::{RunningServer, bind_error},
};

/// Produces the instance's current readiness on demand.
pub type Readiness =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = HealthReport> + Send>> + Send + Sync>;

/// A running admin server.
pub struct AdminServer {
    server: RunningServer,
}

#[derive(Clone)]
struct AdminState {
    registry: Registry,
    readiness: Readiness,
}

impl AdminServer {
    /// Binds `listen` (port 0 picks a free port) and serves until [`AdminServer::stop`].
    pub fn start(
        listen: SocketAddr,
        registry: Registry,
        readiness: Readiness,
    ) -> Result<AdminServer, TelemetryError> {
        let state = AdminState {
            registry,
            readiness,
        };
        let server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(state.clone()))
                .route("/metrics", web::get().to(metrics))
                .route("/livez", web::get().to(livez))
                .route("/readyz", web::get().to(readyz))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(2)
        .bind(listen)
        .map_err(bind_error(listen))?;
        let bound = server.addrs();
        let server = RunningServer::spawn(server.run(), &bound, listen)?;
        Ok(AdminServer { server })
    }

    /// The address actually bound.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Stops accepting and waits for the server to finish.
    pub async fn stop(self) {
        self.server.stop().await;
    }
}

async fn metrics(state: web::Data<AdminState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(crate::metrics::render(&state.registry))
}

async fn livez() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

async fn readyz(state: web::Data<AdminState>) -> HttpResponse {
    let report = (state.readiness)().await;
    if report.ready {
        HttpResponse::Ok().json(report)
    } else {
        HttpResponse::ServiceUnavailable().json(report)
    }
}

//! Monitoring's HTTP side: `GET /v1/status` (the latest snapshot as JSON) and
//! `GET /v1/sd/prometheus` (Prometheus HTTP service discovery: one target group per
//! instance, pointing at its admin port's `/metrics`).

use std::{collections::BTreeMap, net::SocketAddr};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde::Serialize;
use slough_protocol::status::StatusReport;
use slough_telemetry::{RunningServer, TelemetryError, http::bind_error};
use tokio::sync::watch;

/// Binds `listen` (port 0 picks a free port) and serves the status routes until the
/// returned server is stopped.
pub fn start(
    listen: SocketAddr,
    latest: watch::Receiver<StatusReport>,
) -> Result<RunningServer, TelemetryError> {
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(latest.clone()))
            .route("/v1/status", web::get().to(status))
            .route("/v1/sd/prometheus", web::get().to(prometheus_targets))
            .default_service(web::to(not_found))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(2)
    .bind(listen)
    .map_err(bind_error(listen))?;
    let bound = server.addrs();
    RunningServer::spawn(server.run(), &bound, listen)
}

async fn status(latest: web::Data<watch::Receiver<StatusReport>>) -> HttpResponse {
    let report = latest.borrow().clone();
    HttpResponse::Ok().json(report)
}

/// One entry of Prometheus's HTTP service discovery format.
#[derive(Debug, Serialize)]
struct TargetGroup {
    targets: Vec<String>,
    labels: BTreeMap<&'static str, String>,
}

async fn prometheus_targets(latest: web::Data<watch::Receiver<StatusReport>>) -> HttpResponse {
    let groups: Vec<TargetGroup> = latest
        .borrow()
        .instances
        .iter()
        .filter_map(|instance| {
            let admin_url = instance.admin_url.as_deref()?;
            let (scheme, rest) = admin_url.split_once("://").unwrap_or(("http", admin_url));
            let (target, path) = match rest.split_once('/') {
                Some((target, path)) => {
                    (target, format!("/{}/metrics", path.trim_end_matches('/')))
                }
                None => (rest, "/metrics".to_owned()),
            };
            Some(TargetGroup {
                targets: vec![target.to_owned()],
                labels: BTreeMap::from([
                    ("__scheme__", scheme.to_owned()),
                    ("__metrics_path__", path),
                    ("service", instance.service.name().to_owned()),
                    ("instance_id", instance.id.clone()),
                    ("version", instance.version.clone()),
                ]),
            })
        })
        .collect();
    HttpResponse::Ok().json(groups)
}

async fn not_found(request: HttpRequest) -> HttpResponse {
    HttpResponse::NotFound().json(serde_json::json!({
        "error": format!("no route for {} {}; try GET /v1/status or GET /v1/sd/prometheus", request.method(), request.path())
    }))
}

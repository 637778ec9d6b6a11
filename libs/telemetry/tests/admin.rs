//! The admin server over real HTTP: `/metrics` renders the registry, `/livez` always
//! answers, `/readyz` is 200 or 503 with the failing checks as the readiness says.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use slough_protocol::{
    ServiceKind,
    health::{HealthCheck, HealthReport},
};
use slough_telemetry::{AdminServer, Readiness};

async fn status(http: &reqwest::Client, base: &str, path: &str) -> reqwest::StatusCode {
    http.get(format!("{base}/{path}"))
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn serves_metrics_liveness_and_readiness() {
    let registry = slough_telemetry::metrics::service_registry("rag", "9.9.9").unwrap();
    let store_up = Arc::new(AtomicBool::new(true));
    let readiness: Readiness = {
        let store_up = store_up.clone();
        Arc::new(move || {
            let ok = store_up.load(Ordering::SeqCst);
            Box::pin(async move {
                HealthReport {
                    instance_id: "i-1".to_owned(),
                    service: ServiceKind::Rag,
                    version: "9.9.9".to_owned(),
                    ready: ok,
                    checks: vec![HealthCheck {
                        name: "store".to_owned(),
                        ok,
                        detail: (!ok).then(|| "connection refused".to_owned()),
                    }],
                }
            })
        })
    };
    let server = AdminServer::start("127.0.0.1:0".parse().unwrap(), registry, readiness).unwrap();
    let base = format!("http://{}", server.addr());
    let http = reqwest::Client::new();

    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(
        metrics.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = metrics.text().await.unwrap();
    assert!(
        text.contains("slough_rag_build_info{version=\"9.9.9\"} 1"),
        "{text}"
    );

    assert_eq!(status(&http, &base, "livez").await, 200);
    assert_eq!(status(&http, &base, "readyz").await, 200);

    store_up.store(false, Ordering::SeqCst);
    let not_ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(not_ready.status(), 503);
    let report: HealthReport = not_ready.json().await.unwrap();
    assert_eq!(
        report.checks[0].detail.as_deref(),
        Some("connection refused")
    );
    assert_eq!(
        status(&http, &base, "livez").await,
        200,
        "liveness ignores dependencies"
    );

    server.stop().await;
    assert!(
        http.get(format!("{base}/livez")).send().await.is_err(),
        "stopped means stopped"
    );
}

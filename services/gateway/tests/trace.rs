//! Each request is a span: a caller's `traceparent` is adopted, and the trace id comes
//! back as `x-request-id` (the bus carries the same context on to inference; see the
//! bus's own trace test). Its own binary, as it installs the global subscriber.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

mod support;

use support::{Platform, gateway_config, inference_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_join_the_callers_trace() {
    // A quiet log does not cut the trace.
    let quiet = slough_telemetry::LogConfig {
        level: "error".to_owned(),
        ..slough_telemetry::LogConfig::default()
    };
    let _telemetry = slough_telemetry::init("gateway-test", &quiet).unwrap();
    let platform = Platform::start(gateway_config(), inference_config()).await;
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let response = platform
        .get("/v1/models", &platform.admin_key)
        .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], trace_id);

    // Without one, each request starts its own trace.
    let ids: Vec<String> = futures::future::join_all(
        (0..2).map(|_| platform.get("/v1/nothing", &platform.admin_key).send()),
    )
    .await
    .into_iter()
    .map(|response| {
        let response = response.unwrap();
        assert_eq!(response.status(), 404);
        response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned()
    })
    .collect();
    assert_ne!(ids[0], ids[1]);
    assert!(ids.iter().all(|id| id.len() == 32 && id != trace_id));
    platform.stop().await;
}

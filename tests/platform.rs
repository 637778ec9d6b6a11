//! All six services in one process against a real nats-server, started exactly as
//! `slough up` starts them: monitoring sees every instance, serves their metrics URLs
//! for Prometheus, drops a stopped one within 10 s; replicas share a queue group.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use slough::{Platform, platform::ServiceHandle};
use slough_protocol::{
    ServiceKind,
    health::{self, HealthRequest},
    status::StatusReport,
};
use slough_testkit::TestNats;
use support::settings;

mod support;

/// Monitoring's status URL, once it listens.
async fn status_url(platform: &Platform) -> String {
    let monitoring = platform
        .services()
        .iter()
        .find(|service| service.kind() == ServiceKind::Monitoring)
        .expect("monitoring runs");
    let addr = monitoring
        .address("status")
        .await
        .expect("monitoring announces its status address");
    format!("http://{addr}/v1/status")
}

async fn status(http: &reqwest::Client, url: &str) -> serde_json::Value {
    http.get(url)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Polls `url` until `done` holds for the report, returning it and how long it took.
async fn wait_for(
    http: &reqwest::Client,
    url: &str,
    limit: Duration,
    done: impl Fn(&StatusReport) -> bool,
) -> (StatusReport, Duration) {
    let started = Instant::now();
    loop {
        let report: StatusReport = serde_json::from_value(status(http, url).await).unwrap();
        if done(&report) {
            return (report, started.elapsed());
        }
        assert!(
            started.elapsed() < limit,
            "not reached within {limit:?}; last status: {report:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn count(report: &StatusReport, service: ServiceKind) -> usize {
    report
        .instances
        .iter()
        .filter(|instance| instance.service == service)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitoring_sees_every_service_and_forgets_a_stopped_one() {
    let nats = TestNats::start();
    let settings = settings(&nats);
    let mut platform = Platform::start(&ServiceKind::ALL, &settings, &nats.url())
        .await
        .unwrap();
    let status_url = status_url(&platform).await;
    let http = reqwest::Client::new();

    let (report, _) = wait_for(&http, &status_url, Duration::from_secs(20), |report| {
        ServiceKind::ALL
            .iter()
            .all(|&kind| count(report, kind) == 1)
            && report.instances.iter().all(|i| i.healthy)
    })
    .await;

    // The JSON on the wire matches the checked-in schema.
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../schemas/status_report.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let raw = status(&http, &status_url).await;
    assert!(validator.is_valid(&raw), "{raw:#}");

    for instance in &report.instances {
        assert_eq!(instance.version, env!("CARGO_PKG_VERSION"));
        assert!(
            instance.endpoints.iter().any(|e| e.name == "health"),
            "{instance:?}"
        );
        let metrics_url = instance
            .metrics_url
            .as_deref()
            .expect("every instance advertises its metrics");
        let text = http
            .get(metrics_url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let prefix = format!("slough_{}_build_info", instance.service);
        assert!(text.contains(&prefix), "{metrics_url} lacks {prefix}");
    }

    // The gateway serves the same report to admin keys (the console's operations page).
    let key = slough::up::bootstrap_admin_key(&settings)
        .await
        .unwrap()
        .expect("a fresh store makes an admin key");
    let api = platform.gateway_api().await.unwrap();
    let through_gateway: StatusReport = http
        .get(format!("http://{api}/v1/status"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(through_gateway.instances.len(), 6, "{through_gateway:#?}");
    let created: serde_json::Value = http
        .post(format!("http://{api}/v1/keys"))
        .bearer_auth(&key)
        .json(&serde_json::json!({"name": "user", "scopes": ["inference"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let refused = http
        .get(format!("http://{api}/v1/status"))
        .bearer_auth(created["secret"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);

    // Prometheus discovers one target per instance.
    let sd_url = status_url.replace("/v1/status", "/v1/sd/prometheus");
    let groups: Vec<serde_json::Value> = http
        .get(&sd_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(groups.len(), 6);
    let personality = report
        .instances
        .iter()
        .find(|i| i.service == ServiceKind::Personality)
        .unwrap();
    let target = personality
        .admin_url
        .as_deref()
        .unwrap()
        .trim_start_matches("http://")
        .to_owned();
    assert!(
        groups
            .iter()
            .any(|g| g["targets"][0] == target.as_str() && g["labels"]["service"] == "personality"),
        "{groups:#?}"
    );

    platform
        .stop_service(ServiceKind::Personality)
        .await
        .unwrap();
    let (report, took) = wait_for(&http, &status_url, Duration::from_secs(10), |report| {
        count(report, ServiceKind::Personality) == 0
    })
    .await;
    assert_eq!(report.instances.len(), 5);
    eprintln!("a stopped instance left the status after {took:?}");

    let errors = platform.stop().await;
    assert!(errors.is_empty(), "{errors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_requests_through_their_queue_group() {
    let nats = TestNats::start();
    let settings = settings(&nats);
    let failed = tokio_util::sync::CancellationToken::new();
    let first = ServiceHandle::start(ServiceKind::Rag, &settings, &nats.url(), failed.clone())
        .await
        .unwrap();
    let second = ServiceHandle::start(ServiceKind::Rag, &settings, &nats.url(), failed)
        .await
        .unwrap();

    let bus = slough_bus::connect(&nats.url(), "e2e", slough_bus::BusOptions::default())
        .await
        .unwrap();
    let mut answered_by: HashMap<String, usize> = HashMap::new();
    let started = Instant::now();
    while answered_by.values().sum::<usize>() < 60 {
        match bus
            .call(&health::endpoint(ServiceKind::Rag), &HealthRequest {})
            .await
        {
            Ok(report) => {
                assert!(report.ready, "{report:?}");
                *answered_by.entry(report.instance_id).or_default() += 1;
            }
            // The replicas register moments after starting.
            Err(slough_bus::BusError::NoResponders { .. })
                if started.elapsed() < Duration::from_secs(10) =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("{err}"),
        }
    }
    eprintln!("requests per replica: {answered_by:?}");
    assert_eq!(
        answered_by.len(),
        2,
        "both replicas must answer: {answered_by:?}"
    );
    assert!(
        answered_by.values().all(|&n| n >= 10),
        "load is shared: {answered_by:?}"
    );

    first.stop(Duration::from_secs(15)).await.unwrap();
    second.stop(Duration::from_secs(15)).await.unwrap();
}

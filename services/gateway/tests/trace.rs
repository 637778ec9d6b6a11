//! Each request is a span: a caller's `traceparent` is adopted, the trace id comes back
//! as `x-request-id`, and the spans of one chat request, from the gateway and from
//! inference across NATS, reach a real OTLP/HTTP receiver under that one trace id with
//! the GenAI attributes; a chat with a persona and retrieval has spans from every
//! service on its path. Its own binary, as it installs the global subscriber.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

mod support;

use std::sync::{Arc, Mutex};

use actix_web::{App, HttpServer, web};
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest, common::v1::any_value::Value as AnyValue,
    trace::v1::Span,
};
use prost::Message as _;
use serde_json::json;
use support::{CHAT, EMBED, Platform, gateway_config, inference_config};

/// Spans an OTLP/HTTP receiver got, decoded.
type Received = Arc<Mutex<Vec<Span>>>;

/// An OTLP/HTTP trace receiver on a free port: decodes every export it is sent.
fn receiver() -> (String, Received) {
    let received = Received::default();
    let store = received.clone();
    let server = HttpServer::new(move || {
        let store = store.clone();
        App::new().route(
            "/v1/traces",
            web::post().to(move |body: web::Bytes| {
                let store = store.clone();
                async move {
                    let export = ExportTraceServiceRequest::decode(body.as_ref()).unwrap();
                    let spans = export
                        .resource_spans
                        .into_iter()
                        .flat_map(|resource| resource.scope_spans)
                        .flat_map(|scope| scope.spans);
                    store.lock().unwrap().extend(spans);
                    actix_web::HttpResponse::Ok().finish()
                }
            }),
        )
    })
    .workers(1)
    // As a collector does: idle connections stay open. With actix's 5 s default, the
    // exporter's batch (every 5 s) could meet a connection just closed and be lost.
    .keep_alive(std::time::Duration::from_secs(300))
    .disable_signals()
    .bind(("127.0.0.1", 0))
    .unwrap();
    let addr = server.addrs()[0];
    tokio::spawn(server.run());
    (format!("http://{addr}"), received)
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    let value = span
        .attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .clone()?;
    match value.value? {
        AnyValue::StringValue(text) => Some(text),
        AnyValue::IntValue(n) => Some(n.to_string()),
        AnyValue::DoubleValue(x) => Some(x.to_string()),
        AnyValue::BoolValue(b) => Some(b.to_string()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_join_the_callers_trace() {
    // A quiet log does not cut the trace.
    let quiet = slough_telemetry::LogConfig {
        level: "error".to_owned(),
        ..slough_telemetry::LogConfig::default()
    };
    let (collector, received) = receiver();
    let quiet = slough_telemetry::LogConfig {
        otlp_endpoint: Some(collector),
        ..quiet
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

    // One chat request: its spans from the gateway and from inference (across NATS)
    // reach the OTLP receiver under one trace id, with the GenAI attributes.
    let response = platform
        .post(
            "/v1/chat/completions",
            &platform.admin_key,
            &json!({"model": CHAT, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let chat_trace = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let wanted = [
        "POST /v1/chat/completions",
        "bus.request",
        "bus.handle",
        "gen_ai.generate",
        "gen_ai.prefill",
    ];
    let mut names = Vec::new();
    // The batch exporter sends every 5 s; allow a few batches on a loaded machine.
    for _ in 0..300 {
        names = received
            .lock()
            .unwrap()
            .iter()
            .filter(|span| hex(&span.trace_id) == chat_trace)
            .map(|span| span.name.clone())
            .collect();
        if wanted.iter().all(|name| names.iter().any(|n| n == name)) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        wanted.iter().all(|name| names.iter().any(|n| n == name)),
        "spans of trace {chat_trace}: {names:?}"
    );
    let generate = received
        .lock()
        .unwrap()
        .iter()
        .find(|span| hex(&span.trace_id) == chat_trace && span.name == "gen_ai.generate")
        .cloned()
        .unwrap();
    assert_eq!(
        attribute(&generate, "gen_ai.request.model").as_deref(),
        Some(CHAT)
    );
    assert_eq!(
        attribute(&generate, "gen_ai.request.max_tokens").as_deref(),
        Some("4")
    );
    assert!(attribute(&generate, "gen_ai.usage.input_tokens").is_some());
    assert!(attribute(&generate, "gen_ai.usage.output_tokens").is_some());

    // A chat with a persona and retrieval crosses every service on its path: the
    // gateway, personality (compose and adherence), rag (search, which embeds the
    // question on inference) and inference; all of it under the one trace id.
    let admin = platform.admin_key.clone();
    let created = platform
        .send(
            "/v1/collections",
            &admin,
            &json!({"name": "traced", "embedding_model": EMBED}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let ingested = platform
        .send(
            "/v1/collections/traced/documents",
            &admin,
            &json!({"documents": [{"id": "fuel", "text": "Jet engines burn kerosene."}]}),
        )
        .await;
    assert_eq!(ingested.status(), 200);
    let response = platform
        .send(
            "/v1/chat/completions",
            &admin,
            &json!({"model": CHAT, "persona": "analyst", "max_tokens": 4,
                    "messages": [{"role": "user", "content": "What do jet engines burn?"}],
                    "rag": {"collection": "traced", "top_k": 1}}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let rag_trace = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let wanted = ["gateway", "inference", "personality", "rag"];
    let mut services = std::collections::BTreeSet::new();
    for _ in 0..300 {
        services = received
            .lock()
            .unwrap()
            .iter()
            .filter(|span| hex(&span.trace_id) == rag_trace)
            .filter_map(|span| match span.name.as_str() {
                "bus.handle" => attribute(span, "messaging.destination.name")
                    .and_then(|subject| subject.split('.').nth(2).map(str::to_owned)),
                name if name.starts_with("POST ") => Some("gateway".to_owned()),
                _ => None,
            })
            .collect();
        if wanted.iter().all(|service| services.contains(*service)) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        wanted.iter().all(|service| services.contains(*service)),
        "services in trace {rag_trace}: {services:?}"
    );
    platform.stop().await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

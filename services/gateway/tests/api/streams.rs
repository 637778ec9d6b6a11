//! Streams: a disconnect cancels the generation, a lost upstream ends the stream, and
//! generations spread over replicas by load.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_cancels_the_generation_and_a_lost_upstream_ends_the_stream() {
    let mut platform = Platform::start(gateway_config(), inference_config()).await;
    let key = platform.admin_key.clone();
    let long = json!({
        "model": CHAT, "prompt": "Once upon a time", "max_tokens": 400,
        "temperature": 0, "stream": true
    });

    // The client reads a few chunks and goes away.
    let response = platform.send("/v1/completions", &key, &long).await;
    let mut body = response.bytes_stream();
    for _ in 0..3 {
        body.next().await.unwrap().unwrap();
    }
    assert_eq!(
        platform
            .gateway_metric("slough_gateway_active_streams")
            .await,
        1.0
    );
    drop(body);
    let mut cancelled = 0.0;
    for _ in 0..40 {
        cancelled = platform
            .inference_metric("slough_inference_cancelled_requests_total{model=\"smollm2\"}")
            .await;
        if cancelled >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cancelled, 1.0, "inference cancelled the generation");
    assert_eq!(
        platform
            .inference_metric("slough_inference_running_sequences{model=\"smollm2\"}")
            .await,
        0.0
    );
    assert_eq!(
        platform
            .gateway_metric("slough_gateway_active_streams")
            .await,
        0.0
    );
    // The abandoned request is charged its prompt (announced with the first chunk)
    // and at least the chunks it received.
    let report = platform.usage_once(&key, 1).await;
    assert!(report["prompt_tokens"].as_u64().unwrap() > 0, "{report}");
    assert!(
        report["completion_tokens"].as_u64().unwrap() >= 3,
        "{report}"
    );

    // Inference stops mid-stream: the stream ends, never hangs. A graceful stop lets
    // the generation finish within its drain time (then `[DONE]`), or ends it with an
    // `error` event; a replica that dies (SIGKILL, services/slough/tests/cli.rs) always
    // ends its streams with the error event.
    let response = platform.send("/v1/completions", &key, &long).await;
    let mut body = response.bytes_stream();
    body.next().await.unwrap().unwrap();
    platform.stop_inference().await;
    let mut rest = String::new();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(chunk) = body.next().await {
            rest.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
    })
    .await;
    assert!(read.is_ok(), "the stream ended");
    let last = rest.trim_end().lines().last().unwrap_or_default();
    assert!(
        last == "data: [DONE]" || last.starts_with("data: {\"error\""),
        "{rest}"
    );

    // With no inference replica: 503.
    let response = platform
        .send(
            "/v1/chat/completions",
            &key,
            &json!({"model": CHAT, "messages": france()}),
        )
        .await;
    assert_eq!(response.status(), 503);
    platform.stop().await;
}

/// Two inference replicas and eight streams arriving together: each replica runs about
/// half (the queue group alone picks at random and gave 8/0 splits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generations_are_spread_over_replicas_by_load() {
    let mut platform = Platform::start(gateway_config(), inference_config()).await;
    let second = platform.add_inference_replica().await;
    let running = "slough_inference_running_sequences{model=\"smollm2\"}";
    for _ in 0..200 {
        if platform.replica_has(second, running).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Both replicas' load reports reach the gateway (they come every 500 ms at least).
    for _ in 0..200 {
        if platform
            .gateway_metric("slough_gateway_inference_replicas")
            .await
            == 2.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let key = platform.admin_key.clone();
    let story = json!({
        "model": CHAT, "prompt": "Once upon a time", "max_tokens": 40,
        "temperature": 0, "stream": true
    });
    let answered = futures::future::join_all((0..8).map(|_| async {
        let response = platform.send("/v1/completions", &key, &story).await;
        assert_eq!(response.status(), 200);
        read_events(response).await
    }))
    .await;
    assert!(answered.iter().all(|(_, done)| *done));
    let handled = "slough_inference_bus_requests_total{code=\"ok\",endpoint=\"generate\"}";
    let first = platform.inference_metric(handled).await;
    let other = platform.replica_metric(second, handled).await;
    println!("8 streams over two replicas: {first} and {other}");
    assert_eq!(first + other, 8.0);
    assert!(
        first.max(other) <= 1.5 * first.min(other),
        "split {first}/{other}"
    );

    // A fleet serving different models on different replicas: each model is listed and
    // answered, whichever replica a request would have met by chance.
    let bus = slough_bus::connect(
        &platform.nats.url(),
        "test",
        slough_service::CommonConfig::default().nats.bus_options(),
    )
    .await
    .unwrap();
    let mut reports = bus.subscribe(&inference::LOAD_REPORTS).await.unwrap();
    let mut instances = std::collections::BTreeSet::new();
    while instances.len() < 2 {
        let report = reports.next().await.unwrap().unwrap();
        instances.insert(report.instance_id);
    }
    for (instance, model) in instances.iter().zip([CHAT, EMBED]) {
        let request = inference::ModelRequest {
            model: model.to_owned(),
        };
        bus.call_on(&inference::UNLOAD, instance, &request)
            .await
            .unwrap();
    }
    // The gateway hears of the change with the next reports.
    tokio::time::sleep(Duration::from_millis(800)).await;
    for _ in 0..6 {
        let list = platform.get_json("/v1/models", &key).await;
        let mut ids: Vec<&str> = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["persona"].is_null())
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, [EMBED, CHAT], "{list}");
        let embedded = platform
            .send(
                "/v1/embeddings",
                &key,
                &json!({"model": EMBED, "input": "x"}),
            )
            .await;
        assert_eq!(embedded.status(), 200);
        let chat = platform
            .send(
                "/v1/chat/completions",
                &key,
                &json!({"model": CHAT, "messages": france(), "max_tokens": 2}),
            )
            .await;
        assert_eq!(chat.status(), 200);
    }
    bus.close().await;
    platform.stop().await;
}

//! The platform on a cluster of three NATS servers (issue 35's proof): two gateways and
//! two inference replicas share the work; one NATS server goes down under mixed load
//! and comes back; every request ends with an answer or a clean error, new requests
//! succeed, the store's usage counts every answered request, a key's requests per
//! minute hold across both gateways, and a revocation is refused by both within a
//! second.

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use tokio_util::sync::CancellationToken;

use super::*;
use crate::support::Options;

/// How one request of the load ended.
#[derive(Debug, Clone)]
struct Ended {
    started: Duration,
    /// `None`: answered; else what the client saw.
    error: Option<String>,
    /// An HTTP status or a stream's error event: the platform answered, if only to say
    /// it failed (not a broken connection).
    clean: bool,
}

/// Chats streamed through `gateway` with `key` until `stop`, each ending recorded.
fn chats(
    http: reqwest::Client,
    gateway: String,
    key: String,
    began: Instant,
    ended: Arc<Mutex<Vec<Ended>>>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let body = json!({"model": CHAT, "messages": france(), "max_tokens": 12, "stream": true});
        while !stop.is_cancelled() {
            let started = began.elapsed();
            let sent = http
                .post(format!("{gateway}/v1/chat/completions"))
                .bearer_auth(&key)
                .json(&body)
                .timeout(Duration::from_secs(60))
                .send()
                .await;
            let (error, clean) = match sent {
                Err(err) => (Some(format!("connection: {err}")), false),
                Ok(response) if response.status() != 200 => {
                    (Some(format!("status {}", response.status())), true)
                }
                Ok(response) => match response.text().await {
                    Err(err) => (Some(format!("body: {err}")), false),
                    Ok(text) if text.contains("data: [DONE]") => (None, true),
                    Ok(text) if text.contains("\"error\"") => (Some("error event".into()), true),
                    Ok(text) => (Some(format!("stream cut: {text:.200}")), false),
                },
            };
            ended.lock().unwrap().push(Ended {
                started,
                error,
                clean,
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platform_outlives_a_nats_server_of_its_cluster() {
    let options = Options {
        cluster: true,
        ..Options::default()
    };
    let mut platform = Platform::start_with(gateway_config(), inference_config(), options).await;
    let other = platform.add_gateway(gateway_config()).await;
    platform.add_inference_replica().await;
    let gateways = [platform.url.clone(), other.clone()];
    let (key, _) = platform.create_key(json!({})).await;

    // Load: two streamed chats through each gateway.
    let began = Instant::now();
    let ended = Arc::new(Mutex::new(Vec::new()));
    let stop = CancellationToken::new();
    let load: Vec<_> = (0..4)
        .map(|n| {
            chats(
                platform.http.clone(),
                gateways[n % 2].clone(),
                key.clone(),
                began,
                ended.clone(),
                stop.clone(),
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The server every service is connected to goes down for three seconds, then comes
    // back with its store.
    let killed = began.elapsed();
    tokio::task::block_in_place(|| platform.nats.cluster().stop(0));
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::block_in_place(|| platform.nats.cluster().restart(0));
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.cancel();
    for task in load {
        task.await.unwrap();
    }
    let ended = ended.lock().unwrap().clone();
    let answered = ended.iter().filter(|e| e.error.is_none()).count();
    let late: Vec<&Ended> = ended
        .iter()
        .filter(|e| e.error.is_some() && e.started > killed + Duration::from_secs(3))
        .collect();
    eprintln!(
        "{} chats, {answered} answered, failures: {:?}",
        ended.len(),
        ended
            .iter()
            .filter_map(|e| e.error.as_ref())
            .collect::<Vec<_>>()
    );
    assert!(ended.iter().all(|e| e.clean), "{ended:?}");
    assert!(
        late.is_empty(),
        "requests failed 3 s after the loss: {late:?}"
    );
    assert!(answered > 4, "{ended:?}");

    // Every answered request is in the store's usage (none beyond those sent).
    let usage = platform.usage_once(&key, ended.len() as u64).await;
    let counted = usage["requests"].as_u64().unwrap() as usize;
    assert!(
        (answered..=ended.len()).contains(&counted),
        "usage counts {counted} of {} requests, {answered} answered",
        ended.len()
    );

    // A key's requests per minute hold across both gateways, on the cluster's rates.
    let (limited, _) = platform.create_key(json!({"requests_per_minute": 4})).await;
    let embed = |gateway: &str, key: &str| {
        platform
            .http
            .post(format!("{gateway}/v1/embeddings"))
            .bearer_auth(key)
            .json(&json!({"model": EMBED, "input": "after the loss"}))
    };
    let mut passed = 0;
    for turn in 0..8 {
        let status = embed(&gateways[turn % 2], &limited)
            .send()
            .await
            .unwrap()
            .status();
        passed += usize::from(status == 200);
    }
    assert_eq!(passed, 4);

    // A revocation through one gateway is refused by both within a second.
    let (revoked, info) = platform.create_key(json!({})).await;
    for gateway in &gateways {
        assert_eq!(embed(gateway, &revoked).send().await.unwrap().status(), 200);
    }
    let id = info["id"].as_str().unwrap().to_owned();
    let admin = platform.admin_key.clone();
    assert_eq!(
        platform
            .delete(&format!("/v1/keys/{id}"), &admin)
            .await
            .status(),
        200
    );
    for gateway in &gateways {
        answered_within_a_second(|| embed(gateway, &revoked), 401).await;
    }
    platform.stop().await;
}

//! Every error answers as the table says (status, type, code, param), and large
//! requests, departed clients and a NATS outage end cleanly.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_follow_the_table() {
    let mut config = gateway_config();
    config.cors_origins = vec!["https://app.example.com".to_owned()];
    let platform = Platform::start(config, inference_config()).await;
    let admin = platform.admin_key.clone();

    // 401: no key, a malformed key, an unknown key.
    let no_key = platform
        .http
        .get(format!("{}/v1/models", platform.url))
        .send()
        .await
        .unwrap();
    assert_eq!(no_key.status(), 401);
    let error: Value = no_key.json().await.unwrap();
    assert_eq!(error["error"]["code"], "invalid_api_key");
    for bad in [
        "nonsense",
        "sk-0123456789abcdefghijklmnopqrstuvwxyz0123456789ABCDEF",
    ] {
        let response = platform.get("/v1/models", bad).send().await.unwrap();
        assert_eq!(response.status(), 401, "{bad}");
    }

    // 403: a key without the inference scope; a key limited to another model.
    let (admin_only, _) = platform.create_key(json!({"scopes": ["admin"]})).await;
    let body = json!({"model": CHAT, "messages": france()}).to_string();
    let (status, error) = chat_error(&platform, &admin_only, body.clone().into()).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (403, Some("missing_scope"))
    );
    let (embed_only, _) = platform.create_key(json!({"models": [EMBED]})).await;
    let (status, error) = chat_error(&platform, &embed_only, body.clone().into()).await;
    assert_eq!((status, error["param"].as_str()), (403, Some("model")));
    let listed: Value = platform.get_json("/v1/models", &embed_only).await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    let keys = platform.get("/v1/keys", &embed_only).send().await.unwrap();
    assert_eq!(keys.status(), 403);

    // 400: each names the problem; the field as `param` where one is at fault.
    let cases: Vec<(reqwest::Body, Option<&str>)> = vec![
        ("{\"model\": ".into(), None),
        ("[]".into(), Some("body")),
        (b"{\"model\": \"\xff\"}".to_vec().into(), None),
        (
            json!({"messages": france()}).to_string().into(),
            Some("model"),
        ),
        (
            json!({"model": CHAT, "messages": []}).to_string().into(),
            Some("messages"),
        ),
        (
            json!({"model": CHAT, "messages": france(), "max_tokens": "ten"})
                .to_string()
                .into(),
            Some("max_tokens"),
        ),
        (
            "{\"model\": \"smollm2\", \"messages\": [], \"max_tokens\": 1e400}".into(),
            None,
        ),
        (
            json!({"model": CHAT, "messages": france(), "max_tokens": 99_999_999_999u64})
                .to_string()
                .into(),
            Some("max_tokens"),
        ),
        (
            json!({"model": CHAT, "messages": france(), "temperature": 7})
                .to_string()
                .into(),
            Some("temperature"),
        ),
        (
            json!({"model": CHAT, "messages": [{"role": "robot", "content": "hi"}]})
                .to_string()
                .into(),
            Some("messages[0].role"),
        ),
        (
            json!({"model": CHAT, "messages": france(), "tools": []})
                .to_string()
                .into(),
            Some("tools"),
        ),
        (
            json!({"model": CHAT, "messages": france(), "n": 0})
                .to_string()
                .into(),
            Some("n"),
        ),
        (
            json!({"model": CHAT, "messages": france(), "stop": ["a", "b", "c", "d", "e"]})
                .to_string()
                .into(),
            Some("stop"),
        ),
    ];
    for (i, (body, param)) in cases.into_iter().enumerate() {
        let (status, error) = chat_error(&platform, &admin, body).await;
        assert_eq!(status, 400, "case {i}: {error}");
        assert!(!error["message"].as_str().unwrap().is_empty());
        if let Some(param) = param {
            assert_eq!(error["param"], param, "case {i}: {error}");
        }
    }

    // Every generation field out of its range is refused by the gateway with its name,
    // from the protocol's one table, before anything reaches inference (the gateway once
    // let repetition_penalty 0.005 through, and inference refused it without a param).
    let generate = "slough_inference_bus_requests_total{code=\"ok\",endpoint=\"generate\"}";
    let refused =
        "slough_inference_bus_requests_total{code=\"invalid_request\",endpoint=\"generate\"}";
    let (ok_before, refused_before) = (
        platform.inference_metric(generate).await,
        platform.inference_metric(refused).await,
    );
    let out_of_range = [
        ("temperature", json!(2.5)),
        ("top_p", json!(0)),
        ("min_p", json!(1.5)),
        ("repetition_penalty", json!(0.005)),
        ("presence_penalty", json!(-2.5)),
        ("frequency_penalty", json!(3)),
        ("n", json!(17)),
        ("max_tokens", json!(0)),
        ("max_completion_tokens", json!(0)),
        ("top_logprobs", json!(21)),
    ];
    for (field, value) in out_of_range {
        let mut body = json!({"model": CHAT, "messages": france(), "logprobs": true});
        body[field] = value;
        let (status, error) = chat_error(&platform, &admin, body.to_string().into()).await;
        assert_eq!(
            (status, error["param"].as_str()),
            (400, Some(field)),
            "{error}"
        );
        assert_eq!(error["code"], "invalid_value", "{error}");
        assert!(
            error["message"].as_str().unwrap().starts_with(field),
            "{error}"
        );
    }
    assert_eq!(platform.inference_metric(generate).await, ok_before);
    assert_eq!(platform.inference_metric(refused).await, refused_before);

    // 404: an unknown model, an unknown route; 405: a known route, another method.
    let (status, error) = chat_error(
        &platform,
        &admin,
        json!({"model": "gpt-4", "messages": france()})
            .to_string()
            .into(),
    )
    .await;
    assert_eq!(
        (status, error["code"].as_str()),
        (404, Some("model_not_found"))
    );
    let response = platform.get("/v1/nothing", &admin).send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"]["code"],
        "unknown_route"
    );
    let response = platform
        .get("/v1/chat/completions", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);

    // 413: over the body limit (64 KiB in these tests).
    let huge =
        json!({"model": CHAT, "messages": [{"role": "user", "content": "x".repeat(100_000)}]});
    let (status, error) = chat_error(&platform, &admin, huge.to_string().into()).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (413, Some("request_too_large"))
    );

    // 422: valid, but more than the context holds (512 tokens in these tests).
    let (status, error) = chat_error(
        &platform,
        &admin,
        json!({"model": CHAT, "messages": france(), "max_tokens": 600})
            .to_string()
            .into(),
    )
    .await;
    assert_eq!(
        (status, error["code"].as_str()),
        (422, Some("context_length_exceeded"))
    );
    let long = "word ".repeat(3000);
    let (status, _) = chat_error(
        &platform,
        &admin,
        json!({"model": CHAT, "messages": [{"role": "user", "content": long}]})
            .to_string()
            .into(),
    )
    .await;
    assert_eq!(status, 422);

    // CORS: the allowed origin gets its headers, another does not.
    let preflight = |origin: &str| {
        platform
            .http
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/v1/chat/completions", platform.url),
            )
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header(
                "Access-Control-Request-Headers",
                "authorization,content-type",
            )
            .send()
    };
    let allowed = preflight("https://app.example.com").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let refused = preflight("https://evil.example.com").await.unwrap();
    assert!(
        !refused
            .headers()
            .contains_key("access-control-allow-origin")
    );

    // Nothing here was a server error.
    for status in ["500", "503", "504"] {
        let series = format!(
            "slough_gateway_requests_total{{route=\"/v1/chat/completions\",status=\"{status}\"}}"
        );
        assert_eq!(platform.gateway_metric(&series).await, 0.0, "{series}");
    }
    platform.stop().await;
}

/// What the hardening pass found, each a request that failed before: bodies the bus
/// cannot carry, embedding batches whose reply outgrew a message, over-long embedding
/// inputs cut silently, `since` as a date, CORS hiding `x-request-id`, a plain answer
/// running on after its client left, and a NATS outage answered after the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_requests_departed_clients_and_a_nats_outage() {
    let config = slough_gateway::Config {
        max_body_bytes: 4 * 1024 * 1024,
        cors_origins: vec!["https://app.example.com".to_owned()],
        ..gateway_config()
    };
    let mut platform = Platform::start(config, inference_config()).await;
    let key = platform.admin_key.clone();

    // A 1.5 MB chat message fits the gateway's limit but not the bus's (the test's
    // nats-server keeps NATS's 1 MiB): a 413 naming the limit, before any publishing.
    let huge = "word ".repeat(300_000);
    let response = platform
        .send(
            "/v1/chat/completions",
            &key,
            &json!({"model": CHAT, "messages": [{"role": "user", "content": huge}]}),
        )
        .await;
    assert_eq!(response.status(), 413);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "payload_too_large");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limit of"),
        "{error}"
    );

    // 300 texts: their vectors would not fit one reply; batches answer them in order.
    let texts: Vec<String> = (0..300).map(|i| format!("sentence number {i}")).collect();
    let response = platform
        .send(
            "/v1/embeddings",
            &key,
            &json!({"model": EMBED, "input": texts, "encoding_format": "base64"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let many: Value = response.json().await.unwrap();
    let data = many["data"].as_array().unwrap();
    assert_eq!(data.len(), 300);
    assert!(data.iter().zip(0..).all(|(item, i)| item["index"] == i));
    let alone: Value = platform
        .post_json(
            "/v1/embeddings",
            &key,
            &json!({"model": EMBED, "input": texts[257], "encoding_format": "base64"}),
        )
        .await;
    assert_eq!(data[257]["embedding"], alone["data"][0]["embedding"]);

    // An input over the model's limit is refused by index, unless truncation is asked.
    let long = "many words here ".repeat(6_000);
    let body = json!({"model": EMBED, "input": ["short", long]});
    let response = platform.send("/v1/embeddings", &key, &body).await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["param"], "input[1]");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("256-token limit"), "{message}");
    let cut: Value = platform
        .post_json(
            "/v1/embeddings",
            &key,
            &json!({"model": EMBED, "input": ["short", long], "truncate": true}),
        )
        .await;
    assert_eq!(cut["truncated"], json!([1]));
    assert_eq!(cut["usage"]["prompt_tokens"], 256 + 3);

    // `since` takes a date; CORS lets a browser read x-request-id.
    let response = platform
        .get("/v1/usage?since=2026-01-01", &key)
        .header("Origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let exposed = response
        .headers()
        .get("access-control-expose-headers")
        .map(|value| value.to_str().unwrap().to_lowercase())
        .unwrap_or_default();
    assert!(exposed.contains("x-request-id"), "{exposed:?}");

    // A client that gives up on a plain (not streamed) answer cancels its generation.
    let cancelled_before = platform
        .inference_metric("slough_inference_cancelled_requests_total{model=\"smollm2\"}")
        .await;
    let impatient = platform
        .post(
            "/v1/completions",
            &key,
            &json!({"model": CHAT, "prompt": "Once upon a time", "max_tokens": 400, "temperature": 0}),
        )
        .timeout(Duration::from_secs(1))
        .send()
        .await;
    assert!(impatient.is_err(), "the client gave up");
    let mut cancelled = cancelled_before;
    for _ in 0..40 {
        cancelled = platform
            .inference_metric("slough_inference_cancelled_requests_total{model=\"smollm2\"}")
            .await;
        if cancelled > cancelled_before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        cancelled,
        cancelled_before + 1.0,
        "the generation was cancelled"
    );
    assert_eq!(
        platform
            .inference_metric("slough_inference_running_sequences{model=\"smollm2\"}")
            .await,
        0.0
    );

    // NATS goes away: model requests are answered at once with 503 and Retry-After.
    platform.nats.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let response = platform
        .send(
            "/v1/chat/completions",
            &key,
            &json!({"model": CHAT, "messages": france(), "max_tokens": 5}),
        )
        .await;
    assert_eq!(response.status(), 503);
    println!("503 during the outage after {:?}", started.elapsed());
    assert!(response.headers().contains_key("retry-after"));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "answered after {:?}",
        started.elapsed()
    );
    // NATS returns: service resumes within five seconds.
    platform.nats.restart();
    let back = std::time::Instant::now();
    loop {
        let response = platform
            .send(
                "/v1/chat/completions",
                &key,
                &json!({"model": CHAT, "messages": france(), "max_tokens": 5}),
            )
            .await;
        if response.status() == 200 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "still {} after {:?}",
            response.status(),
            back.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("service resumed {:?} after NATS returned", back.elapsed());
    platform.stop().await;
}

/// Slow and oversized requests (issue 31, items 5 and 11): a head or a body trickled a
/// byte at a time is cut off after `gateway.header_timeout_s` or answered 408 after
/// `gateway.body_timeout_s`, and an over-size upload to a collection is the API's JSON
/// 413 whether sent as JSON or as a form (it was `text/plain` before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_time_out_and_oversized_uploads_are_json() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let config = slough_gateway::Config {
        header_timeout_s: 1,
        body_timeout_s: 2,
        ..gateway_config()
    };
    let platform = Platform::start(config, inference_config()).await;
    let admin = platform.admin_key.clone();
    let address = platform.url.trim_start_matches("http://").to_owned();
    let created = platform
        .send(
            "/v1/collections",
            &admin,
            &json!({"name": "slow", "embedding_model": EMBED}),
        )
        .await;
    assert_eq!(created.status(), 201);

    // A body promised at 1000 bytes and sent at a byte every 200 ms: 408 after 2 s.
    let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let trickle = async {
        loop {
            // Once answered, the server may close: a write may fail, the read tells.
            let _ = socket.write_all(b" ").await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut answer = vec![0u8; 4096];
            if let Ok(Ok(read)) =
                tokio::time::timeout(Duration::from_millis(1), socket.read(&mut answer)).await
            {
                answer.truncate(read);
                break String::from_utf8_lossy(&answer).into_owned();
            }
            assert!(started.elapsed() < Duration::from_secs(10), "no answer");
        }
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), trickle)
        .await
        .expect("the trickled body was never answered");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("gateway.body_timeout_s"), "{answer}");
    let waited = started.elapsed();
    assert!(
        (Duration::from_millis(1500)..Duration::from_secs(5)).contains(&waited),
        "{waited:?}"
    );

    // A head sent a byte every 200 ms: the connection ends after about a second.
    let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
    let started = std::time::Instant::now();
    let mut closed = false;
    for byte in b"GET /v1/models HTTP/1.1\r\nHost: slowly-sent-head\r\n"
        .iter()
        .cycle()
    {
        if socket.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        let mut answer = [0u8; 512];
        if let Ok(read) =
            tokio::time::timeout(Duration::from_millis(200), socket.read(&mut answer)).await
        {
            // The server's answer (a 408) or the end of the connection.
            assert!(
                matches!(read, Ok(0) | Err(_)) || answer.starts_with(b"HTTP/1.1 408"),
                "{:?}",
                String::from_utf8_lossy(&answer)
            );
            closed = true;
            break;
        }
        if started.elapsed() > Duration::from_secs(10) {
            break;
        }
    }
    assert!(closed, "a slowly sent head held its connection for 10 s");
    assert!(started.elapsed() < Duration::from_secs(4));

    // Over the body limit (64 KiB in these tests), as JSON and as a form: JSON 413s.
    let big = "many words ".repeat(10_000);
    let as_json = platform
        .send(
            "/v1/collections/slow/documents",
            &admin,
            &json!({"documents": [{"id": "big", "text": big}]}),
        )
        .await;
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::text(big.clone()).file_name("big.txt"),
    );
    let as_form = platform
        .http
        .post(format!("{}/v1/collections/slow/documents", platform.url))
        .bearer_auth(&admin)
        .multipart(form)
        .send()
        .await
        .unwrap();
    for response in [as_json, as_form] {
        assert_eq!(response.status(), 413);
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "request_too_large", "{error}");
    }
    platform.stop().await;
}

//! The API over HTTP against a running platform: real NATS, real inference with
//! SmolLM2 and MiniLM, the gateway on SQLite.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

mod support;

use std::time::Duration;

use base64::Engine as _;
use futures::StreamExt as _;
use serde_json::{Value, json};
use slough_protocol::inference;
use support::{
    BUILTIN_PERSONAS, CHAT, EMBED, Platform, gateway_config, inference_config, read_events,
};

fn france() -> Value {
    json!([{"role": "user", "content": "What is the capital of France?"}])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completions_plain_streamed_and_with_logprobs() {
    let platform = Platform::start(gateway_config(), inference_config()).await;
    let key = platform.admin_key.clone();

    let response = platform
        .send(
            "/v1/chat/completions",
            &key,
            &json!({"model": CHAT, "messages": france(), "temperature": 0, "max_tokens": 24}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let plain: Value = response.json().await.unwrap();
    assert_eq!(plain["object"], "chat.completion");
    assert!(plain["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(plain["model"], CHAT);
    let text = plain["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.contains("Paris"), "{text}");
    assert_eq!(plain["choices"][0]["message"]["role"], "assistant");
    assert_eq!(plain["choices"][0]["finish_reason"], "stop");
    let usage = &plain["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 5);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );

    // Streamed, greedy: the same text, in OpenAI's chunk sequence.
    let response = platform
        .send(
            "/v1/chat/completions",
            &key,
            &json!({
                "model": CHAT, "messages": france(), "temperature": 0, "max_tokens": 24,
                "stream": true, "stream_options": {"include_usage": true}
            }),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let (events, done) = read_events(response).await;
    assert!(done, "the stream ends with [DONE]");
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(
        events
            .iter()
            .all(|e| e["object"] == "chat.completion.chunk")
    );
    let streamed: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, text);
    let finish = &events[events.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let last = events.last().unwrap();
    assert_eq!(last["choices"].as_array().unwrap().len(), 0);
    assert_eq!(last["usage"], *usage);

    // n, stop, seed and logprobs.
    let response = platform
        .send(
            "/v1/chat/completions",
            &key,
            &json!({
                "model": CHAT,
                "messages": [
                    {"role": "system", "content": [{"type": "text", "text": "You are terse."}]},
                    {"role": "user", "content": "Name three colours."}
                ],
                "n": 2, "seed": 7, "temperature": 0.8, "max_completion_tokens": 12,
                "logprobs": true, "top_logprobs": 2, "stop": ["\n\n"]
            }),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    for (i, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], i);
        let content = choice["logprobs"]["content"].as_array().unwrap();
        assert!(!content.is_empty());
        assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 2);
        assert!(content[0]["logprob"].as_f64().unwrap() <= 0.0);
        let spelled: Vec<u8> = content
            .iter()
            .flat_map(|t| t["bytes"].as_array().unwrap().iter())
            .map(|b| b.as_u64().unwrap() as u8)
            .collect();
        assert_eq!(
            String::from_utf8(spelled).unwrap(),
            choice["message"]["content"].as_str().unwrap()
        );
    }
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() <= 24);

    // Requests are counted by route and status.
    assert!(
        platform
            .gateway_metric(
                "slough_gateway_requests_total{route=\"/v1/chat/completions\",status=\"200\"}"
            )
            .await
            >= 3.0
    );
    assert!(
        platform
            .gateway_metric("slough_gateway_tokens_total{direction=\"completion\"}")
            .await
            > 0.0
    );

    // `store: true` keeps a completion (plain or streamed) to take feedback, and rated
    // or corrected ones become fine-tuning examples.
    let kept: Value = platform
        .post_json(
            "/v1/chat/completions",
            &key,
            &json!({"model": CHAT, "messages": france(), "temperature": 0, "max_tokens": 24, "store": true}),
        )
        .await;
    let response = platform
        .send(
            "/v1/chat/completions",
            &key,
            &json!({
                "model": CHAT, "temperature": 0, "max_tokens": 8, "stream": true, "store": true,
                "messages": [{"role": "user", "content": "Name a colour."}],
            }),
        )
        .await;
    let (events, _) = read_events(response).await;
    let streamed_id = events[0]["id"].as_str().unwrap().to_owned();
    let feedback = |id: &str| format!("/v1/chat/completions/{id}/feedback");
    let rated = platform
        .post_json(
            &feedback(kept["id"].as_str().unwrap()),
            &key,
            &json!({"rating": 5}),
        )
        .await;
    assert_eq!(rated["rating"], 5);
    let corrected = platform
        .send(
            &feedback(&streamed_id),
            &key,
            &json!({"rating": 2, "correction": "Teal."}),
        )
        .await;
    assert_eq!(corrected.status(), 200);
    let not_stored = platform
        .send(
            &feedback(plain["id"].as_str().unwrap()),
            &key,
            &json!({"rating": 4}),
        )
        .await;
    assert_eq!(not_stored.status(), 404);
    let out_of_range = platform
        .send(&feedback(&streamed_id), &key, &json!({"rating": 9}))
        .await;
    assert_eq!(out_of_range.status(), 400);
    let error: Value = out_of_range.json().await.unwrap();
    assert_eq!(error["error"]["param"], "rating");
    let store = slough_store::Store::open(None, platform.data_dir())
        .await
        .unwrap();
    let dataset = slough_gateway::stored::dataset(&store, 4).await.unwrap();
    store.close().await;
    assert_eq!(dataset.len(), 2, "{dataset:#?}");
    assert_eq!(dataset[0]["messages"][0], france()[0]);
    assert_eq!(dataset[0]["messages"][1]["content"], text);
    assert_eq!(dataset[1]["messages"][1]["content"], "Teal.");
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_embeddings_and_models() {
    let platform = Platform::start(gateway_config(), inference_config()).await;
    let key = platform.admin_key.clone();

    let response = platform
        .send(
            "/v1/completions",
            &key,
            &json!({
                "model": CHAT, "prompt": ["The sky is", "Two plus two is"],
                "max_tokens": 5, "temperature": 0, "logprobs": 1
            }),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "text_completion");
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    assert_eq!(choices[1]["index"], 1);
    assert_eq!(choices[0]["finish_reason"], "length");
    let logprobs = &choices[0]["logprobs"];
    assert_eq!(logprobs["tokens"].as_array().unwrap().len(), 5);
    assert_eq!(logprobs["text_offset"][0], 0);
    assert_eq!(body["usage"]["completion_tokens"], 10);

    // Streamed: the same greedy text as the plain answer.
    let response = platform.send("/v1/completions",
            &key,
            &json!({"model": CHAT, "prompt": "The sky is", "max_tokens": 5, "temperature": 0, "stream": true})).await;
    let (events, done) = read_events(response).await;
    assert!(done);
    let streamed: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(streamed, choices[0]["text"].as_str().unwrap());

    // Embeddings as floats and as base64 agree.
    let texts = json!(["A cat sits on the mat.", "Stock markets fell today."]);
    let floats: Value = platform
        .post_json(
            "/v1/embeddings",
            &key,
            &json!({"model": EMBED, "input": texts}),
        )
        .await;
    assert_eq!(floats["object"], "list");
    let first: Vec<f32> = serde_json::from_value(floats["data"][0]["embedding"].clone()).unwrap();
    assert_eq!(first.len(), 384);
    assert!(floats["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    let encoded: Value = platform
        .post_json("/v1/embeddings", &key, &json!({"model": EMBED, "input": texts, "encoding_format": "base64", "dimensions": 384}))
        .await;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(decoded, first);
    let embedded = "slough_inference_embedded_texts_total{model=\"minilm\"}";
    let before = platform.inference_metric(embedded).await;
    let response = platform
        .send(
            "/v1/embeddings",
            &key,
            &json!({"model": EMBED, "input": "x", "dimensions": 64}),
        )
        .await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["param"], "dimensions");
    assert!(error["error"]["message"].as_str().unwrap().contains("384"));
    assert_eq!(
        platform.inference_metric(embedded).await,
        before,
        "refused before any text was embedded"
    );

    // Models: the list, one model, an unknown one.
    let list: Value = platform.get_json("/v1/models", &key).await;
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    let mut expected = vec![EMBED.to_owned(), CHAT.to_owned()];
    expected.extend(BUILTIN_PERSONAS.map(|persona| format!("{CHAT}:{persona}")));
    assert_eq!(ids, expected);
    let model: Value = platform.get_json(&format!("/v1/models/{CHAT}"), &key).await;
    assert_eq!(model["object"], "model");
    assert_eq!(model["kind"], "chat");
    assert!(model["created"].as_i64().unwrap() > 1_700_000_000);
    let alias: Value = platform
        .get_json(&format!("/v1/models/{CHAT}:sage"), &key)
        .await;
    assert_eq!(alias["persona"], "sage");
    assert_eq!(alias["context_length"], model["context_length"]);
    for missing in ["nope", &format!("{CHAT}:nobody"), &format!("{EMBED}:sage")] {
        let response = platform
            .get(&format!("/v1/models/{missing}"), &key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{missing}");
    }
    platform.stop().await;
}

/// Sends `body` to the chat route and returns the status and the error object.
async fn chat_error(platform: &Platform, key: &str, body: reqwest::Body) -> (u16, Value) {
    let response = platform
        .http
        .post(format!("{}/v1/chat/completions", platform.url))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    (status, body["error"].clone())
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_limits_budgets_and_usage() {
    let platform = Platform::start(gateway_config(), inference_config()).await;
    let admin = platform.admin_key.clone();
    let embed = |input: &str| json!({"model": EMBED, "input": input});

    // Requests per minute: a burst of 2, then 429 with Retry-After.
    let (limited, info) = platform.create_key(json!({"requests_per_minute": 2})).await;
    assert_eq!(info["requests_per_minute"], 2);
    assert_eq!(info["scopes"], json!(["inference"]));
    for _ in 0..2 {
        let response = platform
            .send("/v1/embeddings", &limited, &embed("hello"))
            .await;
        assert_eq!(response.status(), 200);
    }
    let refused = platform
        .send("/v1/embeddings", &limited, &embed("hello"))
        .await;
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry_after), "{retry_after}");
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["code"], "requests_per_minute");

    // Tokens per minute: one request may use them up; the next is refused.
    let (tpm, _) = platform.create_key(json!({"tokens_per_minute": 5})).await;
    let first = platform
        .send(
            "/v1/embeddings",
            &tpm,
            &embed("a sentence of more than five tokens, surely"),
        )
        .await;
    assert_eq!(first.status(), 200);
    let second = platform.send("/v1/embeddings", &tpm, &embed("again")).await;
    assert_eq!(second.status(), 429);
    assert!(second.headers().contains_key("retry-after"));

    // A token budget: spent, then 429 insufficient_quota until the admin raises it.
    let (budget, info) = platform.create_key(json!({"token_budget": 20})).await;
    let id = info["id"].as_str().unwrap().to_owned();
    let chat = json!({"model": CHAT, "messages": france(), "max_tokens": 8, "temperature": 0});
    let response = platform.send("/v1/chat/completions", &budget, &chat).await;
    assert_eq!(response.status(), 200);
    let refused = platform.send("/v1/chat/completions", &budget, &chat).await;
    assert_eq!(refused.status(), 429);
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["type"], "insufficient_quota");
    let raised = platform
        .http
        .patch(format!("{}/v1/keys/{id}", platform.url))
        .bearer_auth(&admin)
        .json(&json!({"token_budget": null, "name": "unlimited now"}))
        .send()
        .await
        .unwrap();
    assert_eq!(raised.status(), 200);
    let raised: Value = raised.json().await.unwrap();
    assert_eq!(raised["token_budget"], Value::Null);
    tokio::time::sleep(Duration::from_millis(300)).await; // the key cache's lifetime
    let response = platform.send("/v1/chat/completions", &budget, &chat).await;
    assert_eq!(response.status(), 200);

    // Usage: the key's own rows, by model; written off the response path.
    let report = platform.usage_once(&budget, 2).await;
    assert_eq!(report["requests"], 2, "{report}");
    assert_eq!(report["models"][0]["model"], CHAT);
    assert!(report["total_tokens"].as_u64().unwrap() > 20);
    let other = platform
        .get(&format!("/v1/usage?key_id={id}"), &limited)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 403);
    let bad_query = platform
        .get("/v1/usage?since=yesterday", &budget)
        .send()
        .await
        .unwrap();
    assert_eq!(bad_query.status(), 400);

    // Over time: buckets from `since` to now, the two requests in the last ones; a
    // series needs `since` and refuses more than 10 000 buckets, naming the parameter.
    let since = (chrono::Utc::now() - chrono::TimeDelta::minutes(5)).format("%Y-%m-%dT%H:%M:00Z");
    let series: Value = platform
        .get_json(&format!("/v1/usage?since={since}&interval=minute"), &budget)
        .await;
    let buckets = series["series"].as_array().unwrap();
    assert!((6..=7).contains(&buckets.len()), "{series:#}");
    let counted: u64 = buckets
        .iter()
        .map(|b| b["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, 2, "{series:#}");
    assert!(
        buckets
            .iter()
            .any(|b| b["latency_p95_ms"].as_u64().is_some())
    );
    for (query, param) in [
        ("interval=hour", "since"),
        ("since=2000-01-01&interval=minute", "interval"),
        ("since=2026-01-01&interval=week", "query"),
    ] {
        let refused = platform
            .get(&format!("/v1/usage?{query}"), &budget)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 400, "{query}");
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["error"]["param"], param, "{query}: {body}");
    }

    // Listing shows no secrets; revoking takes effect at once.
    let list: Value = platform.get_json("/v1/keys", &admin).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 4);
    assert!(!list.to_string().contains(&budget));
    let revoked = platform
        .http
        .delete(format!("{}/v1/keys/{id}", platform.url))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let response = platform.send("/v1/chat/completions", &budget, &chat).await;
    assert_eq!(response.status(), 401);
    let unknown = platform
        .get("/v1/keys/00000000-0000-0000-0000-000000000000", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let invalid = platform
        .send(
            "/v1/keys",
            &admin,
            &json!({"name": "x", "scopes": ["root"]}),
        )
        .await;
    assert_eq!(invalid.status(), 400);
    platform.stop().await;
}

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

/// Opens three long streams at once; returns their statuses and the third's error code.
async fn three_streams(platform: &Platform) -> (Vec<u16>, Value) {
    let key = platform.admin_key.clone();
    let long =
        json!({"model": CHAT, "prompt": "Once upon a time", "max_tokens": 200, "stream": true});
    let mut open = Vec::new();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let response = platform.send("/v1/completions", &key, &long).await;
        statuses.push(response.status().as_u16());
        open.push(response);
    }
    let third = open.pop().unwrap();
    let retry_after = third.headers().get("retry-after").cloned();
    let error: Value = third.json().await.unwrap_or_default();
    assert!(
        retry_after.is_some() || statuses[2] != 429,
        "429 without Retry-After"
    );
    (statuses, error["error"]["code"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_limits_answer_429_with_retry_after() {
    // Inference runs one sequence and queues one: the third is refused upstream.
    let mut inference = inference_config();
    inference.max_batch = 1;
    inference.max_queue = 1;
    let platform = Platform::start(gateway_config(), inference.clone()).await;
    let (statuses, code) = three_streams(&platform).await;
    assert_eq!(
        (statuses, code.as_str()),
        (vec![200, 200, 429], Some("overloaded"))
    );
    assert_eq!(
        platform
            .gateway_metric("slough_gateway_limit_rejections_total{limit=\"upstream_overloaded\"}")
            .await,
        1.0
    );
    platform.stop().await;

    // The gateway takes two at once: the third is refused before inference.
    let mut gateway = gateway_config();
    gateway.max_in_flight = 2;
    let platform = Platform::start(gateway, inference).await;
    let (statuses, code) = three_streams(&platform).await;
    assert_eq!(
        (statuses, code.as_str()),
        (vec![200, 200, 429], Some("gateway_busy"))
    );
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_budgets_and_usage_on_postgresql() {
    let database = slough_testkit::TestPostgres::create().await;
    let platform = Platform::start_on(
        gateway_config(),
        inference_config(),
        Some(database.url().to_owned()),
    )
    .await;
    let (key, _) = platform.create_key(json!({"token_budget": 3})).await;
    let embed = json!({"model": EMBED, "input": "a budget of three tokens is soon spent"});
    let first = platform.send("/v1/embeddings", &key, &embed).await;
    assert_eq!(first.status(), 200);
    let second = platform.send("/v1/embeddings", &key, &embed).await;
    assert_eq!(second.status(), 429);
    let report = platform.usage_once(&key, 1).await;
    assert_eq!(report["requests"], 1, "{report}");
    assert_eq!(report["budget_remaining"], 0);
    assert_eq!(report["models"][0]["model"], EMBED);
    platform.stop().await;
    database.drop_database().await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personas_are_managed_applied_to_chats_and_scored() {
    let platform = Platform::start(gateway_config(), inference_config()).await;
    let admin = platform.admin_key.clone();
    let (user, _) = platform.create_key(json!({"scopes": ["inference"]})).await;

    // Any key reads; only admin keys write.
    let list: Value = platform.get_json("/v1/personas", &user).await;
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|persona| persona["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, BUILTIN_PERSONAS);
    let pirate = json!({"id": "pirate", "from": "jester", "name": "Pirate",
                        "traits": {"humour": 0.5}});
    let response = platform.send("/v1/personas", &user, &pirate).await;
    assert_eq!(response.status(), 403);
    let response = platform.send("/v1/personas", &admin, &pirate).await;
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    assert_eq!(created["traits"]["humour"], 0.5);
    assert_eq!(created["builtin"], false);

    // Refusals name their field; nothing stored changes.
    let refusals = [
        ("/v1/personas", pirate.clone(), 409, Some("id")),
        (
            "/v1/personas",
            json!({"id": "typo", "system_template": "{{ nmae }}"}),
            400,
            Some("system_template"),
        ),
        (
            "/v1/personas",
            json!({"id": "odd", "traits": {"wit": 1}}),
            400,
            Some("traits.wit"),
        ),
        (
            "/v1/personas/pirate",
            json!({"traits": {"warmth": 2}}),
            400,
            Some("traits.warmth"),
        ),
        ("/v1/personas/sage", json!({"name": "Sage 2"}), 409, None),
        (
            "/v1/personality/analyze",
            json!({"txt": "hi"}),
            400,
            Some("txt"),
        ),
    ];
    for (path, body, status, param) in refusals {
        let response = platform.send(path, &admin, &body).await;
        assert_eq!(response.status(), status, "{path} {body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["param"].as_str(), param, "{path} {error}");
    }
    let stored: Value = platform.get_json("/v1/personas/pirate", &user).await;
    assert_eq!(stored, created);
    let deleted = platform
        .http
        .delete(format!("{}/v1/personas/jester", platform.url))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 409);

    // Analyze, with any key.
    let metrics = platform
        .post_json(
            "/v1/personality/analyze",
            &user,
            &json!({"text": "The book was good."}),
        )
        .await;
    assert!((metrics["sentiment"]["compound"].as_f64().unwrap() - 0.4404).abs() < 1e-3);
    assert_eq!(metrics["words"], 4);

    // A chat as the analyst: its system prompt is in the prompt, the answer is scored.
    let plain = json!({"model": CHAT, "messages": france(), "temperature": 0, "max_tokens": 16});
    let mut with_persona = plain.clone();
    with_persona["persona"] = json!("analyst");
    let without: Value = platform
        .post_json("/v1/chat/completions", &user, &plain)
        .await;
    assert!(without["choices"][0].get("persona_adherence").is_none());
    let answered: Value = platform
        .post_json("/v1/chat/completions", &user, &with_persona)
        .await;
    assert!(
        answered["usage"]["prompt_tokens"].as_u64().unwrap()
            > without["usage"]["prompt_tokens"].as_u64().unwrap() + 20,
        "{answered} {without}"
    );
    let adherence = &answered["choices"][0]["persona_adherence"];
    assert_eq!(adherence["persona"], "analyst");
    let score = adherence["score"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&score), "{adherence}");
    assert_eq!(adherence["traits"]["formality"]["target"], 0.9);
    assert!(adherence["metrics"]["words"].as_u64().unwrap() > 0);

    // Streamed through the alias: the adherence comes after the choice finished.
    let alias = format!("{CHAT}:jester");
    let response = platform
        .send(
            "/v1/chat/completions",
            &user,
            &json!({"model": alias, "messages": france(), "max_tokens": 16, "seed": 3,
                    "stream": true}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let (events, done) = read_events(response).await;
    assert!(done);
    assert!(events.iter().all(|event| event["model"] == alias.as_str()));
    let finished = events
        .iter()
        .position(|event| !event["choices"][0]["finish_reason"].is_null())
        .unwrap();
    let scored = events
        .iter()
        .position(|event| !event["choices"][0]["persona_adherence"].is_null())
        .unwrap();
    assert!(scored > finished);
    assert_eq!(
        events[scored]["choices"][0]["persona_adherence"]["persona"],
        "jester"
    );
    assert!(
        platform
            .personality_metric("slough_personality_adherence_ratio_count{persona=\"jester\"}")
            .await
            >= 1.0
    );

    // A persona that does not exist, or two that disagree.
    let mut unknown = plain.clone();
    unknown["persona"] = json!("nobody");
    let response = platform.send("/v1/chat/completions", &user, &unknown).await;
    assert_eq!(response.status(), 404);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["param"], "persona", "{error}");
    let mut clash = with_persona.clone();
    clash["model"] = json!(format!("{CHAT}:sage"));
    let response = platform.send("/v1/chat/completions", &user, &clash).await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["param"], "persona", "{error}");

    let deleted = platform
        .http
        .delete(format!("{}/v1/personas/pirate", platform.url))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    platform.stop().await;
}

/// A small labelled corpus written for these tests: each question is a paraphrase
/// whose answer is in exactly one document.
fn aviation_corpus() -> Value {
    json!({"documents": [
        {"id": "wings", "format": "markdown", "metadata": {"topic": "airframe"},
         "text": "# Wings\n\nAn aircraft wing is an airfoil. Air flowing faster over its curved upper surface lowers the pressure there, and the difference in pressure produces lift.\n\n## Flaps\n\nFlaps on the trailing edge extend during take-off and landing to increase lift at low speed."},
        {"id": "engines", "format": "markdown", "metadata": {"topic": "propulsion"},
         "text": "# Engines\n\nA turbofan engine compresses air, burns kerosene in the combustion chamber and drives a large fan that produces most of the thrust."},
        {"id": "tower", "metadata": {"topic": "operations"},
         "text": "Air traffic controllers in the tower give pilots clearance to take off and land, and keep aircraft separated on the runways."},
        {"id": "fuel", "metadata": {"topic": "operations"},
         "text": "Before each flight the crew checks that the tanks hold enough fuel for the trip, a diversion to an alternate airport and a reserve."}
    ]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_ingest_search_and_answer_with_citations() {
    let platform = Platform::start(gateway_config(), inference_config()).await;
    let admin = platform.admin_key.clone();
    let (reader, _) = platform.create_key(json!({"scopes": ["inference"]})).await;

    // Create: refusals first, each naming its problem.
    let cases = [
        (
            json!({"name": "docs", "embedding_model": CHAT}),
            400,
            Some("embedding_model"),
        ),
        (
            json!({"name": "docs", "embedding_model": "nope"}),
            400,
            Some("embedding_model"),
        ),
        (
            json!({"name": "Docs!", "embedding_model": EMBED}),
            400,
            Some("name"),
        ),
        (
            json!({"name": "docs", "embedding_model": EMBED, "chunk_size": 64, "chunk_overlap": 64}),
            400,
            Some("chunk_overlap"),
        ),
    ];
    for (body, status, param) in cases {
        let response = platform.send("/v1/collections", &admin, &body).await;
        let got = response.status();
        let error: Value = response.json().await.unwrap();
        assert_eq!(got, status, "{body} {error}");
        assert_eq!(error["error"]["param"].as_str(), param, "{error}");
    }
    let create =
        json!({"name": "docs", "embedding_model": EMBED, "chunk_size": 32, "chunk_overlap": 4});
    assert_eq!(
        platform
            .send("/v1/collections", &reader, &create)
            .await
            .status(),
        403
    );
    let response = platform.send("/v1/collections", &admin, &create).await;
    assert_eq!(response.status(), 201);
    assert_eq!(
        platform
            .send("/v1/collections", &admin, &create)
            .await
            .status(),
        409
    );

    // Ingest: every document created, then the same again changes nothing.
    let ingested = platform
        .post_json("/v1/collections/docs/documents", &admin, &aviation_corpus())
        .await;
    let statuses: Vec<&str> = ingested["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|document| document["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["created"; 4], "{ingested}");
    let chunks = ingested["chunks"].as_u64().unwrap();
    assert!(chunks >= 5, "{ingested}");
    let again = platform
        .post_json("/v1/collections/docs/documents", &admin, &aviation_corpus())
        .await;
    assert_eq!(again["chunks"], 0, "{again}");
    let described: Value = platform.get_json("/v1/collections/docs", &reader).await;
    assert_eq!(described["documents"], 4);
    assert_eq!(described["chunks"].as_u64(), Some(chunks));
    assert_eq!(described["dimensions"], 384);

    // Paraphrased questions find their document first, in every mode.
    let questions = [
        (
            "What makes an airplane wing generate upward force?",
            "wings",
        ),
        ("Which fuel is burned inside a jet engine?", "engines"),
        ("Who authorizes planes to depart from the runway?", "tower"),
        ("How much fuel must be carried before departure?", "fuel"),
    ];
    for mode in ["dense", "hybrid"] {
        for (question, expected) in questions {
            let found = platform
                .post_json(
                    "/v1/collections/docs/search",
                    &reader,
                    &json!({"query": question, "top_k": 3, "mode": mode}),
                )
                .await;
            assert_eq!(
                found["hits"][0]["document_id"], expected,
                "{mode}: {question}: {found}"
            );
        }
    }
    let sparse = platform
        .post_json(
            "/v1/collections/docs/search",
            &reader,
            &json!({"query": "kerosene turbofan", "mode": "sparse"}),
        )
        .await;
    assert_eq!(sparse["hits"][0]["document_id"], "engines", "{sparse}");
    let hit = &sparse["hits"][0];
    let (start, end) = (hit["start"].as_u64().unwrap(), hit["end"].as_u64().unwrap());
    assert!(end > start);
    assert_eq!(hit["metadata"]["topic"], "propulsion");
    let filtered = platform
        .post_json(
            "/v1/collections/docs/search",
            &reader,
            &json!({"query": "fuel", "filter": {"topic": "propulsion"}}),
        )
        .await;
    assert!(
        filtered["hits"]
            .as_array()
            .unwrap()
            .iter()
            .all(|hit| hit["document_id"] == "engines"),
        "{filtered}"
    );

    // Search refusals.
    let refusals = [
        (
            "/v1/collections/docs/search",
            json!({"query": "x", "top_k": 0}),
            400,
            Some("top_k"),
        ),
        (
            "/v1/collections/docs/search",
            json!({"query": "x", "top_k": 101}),
            400,
            Some("top_k"),
        ),
        (
            "/v1/collections/docs/search",
            json!({"query": "x", "filter": {"topic": [1]}}),
            400,
            Some("filter"),
        ),
        (
            "/v1/collections/nope/search",
            json!({"query": "x"}),
            404,
            None,
        ),
    ];
    for (path, body, status, param) in refusals {
        let response = platform.send(path, &reader, &body).await;
        assert_eq!(response.status(), status, "{path} {body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["param"].as_str(), param, "{error}");
    }

    // A JSONL upload as a multipart form; a broken line is named.
    let jsonl =
        "{\"id\": \"radio\", \"text\": \"Pilots talk to the tower on a VHF radio frequency.\"}\n";
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::text(jsonl).file_name("more.jsonl"),
    );
    let uploaded = platform
        .http
        .post(format!("{}/v1/collections/docs/documents", platform.url))
        .bearer_auth(&admin)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(uploaded.status(), 200);
    let broken = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::text("{\"id\": \"a\", \"text\": \"x\"}\n{\"id\": \"b\"}\n")
            .file_name("broken.jsonl"),
    );
    let refused = platform
        .http
        .post(format!("{}/v1/collections/docs/documents", platform.url))
        .bearer_auth(&admin)
        .multipart(broken)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let error: Value = refused.json().await.unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("broken.jsonl, line 2"),
        "{error}"
    );

    // Replacing a document keeps one copy of it; deleting removes it from search.
    let replaced = platform
        .post_json(
            "/v1/collections/docs/documents",
            &admin,
            &json!({"documents": [{"id": "tower", "text": "The control tower is closed at night."}]}),
        )
        .await;
    assert_eq!(replaced["documents"][0]["status"], "replaced");
    let found = platform
        .post_json(
            "/v1/collections/docs/search",
            &reader,
            &json!({"query": "control tower", "top_k": 10, "mode": "sparse"}),
        )
        .await;
    let towers = found["hits"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|hit| hit["document_id"] == "tower")
        .count();
    assert_eq!(towers, 1, "{found}");
    let deleted = platform
        .http
        .delete(format!(
            "{}/v1/collections/docs/documents/radio",
            platform.url
        ))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    let found = platform
        .post_json(
            "/v1/collections/docs/search",
            &reader,
            &json!({"query": "VHF radio frequency", "top_k": 10, "mode": "sparse"}),
        )
        .await;
    assert!(
        found["hits"]
            .as_array()
            .unwrap()
            .iter()
            .all(|hit| hit["document_id"] != "radio"),
        "{found}"
    );

    // A streamed upload reports progress after each batch of 32 documents, then the
    // outcome; a document refused in the second batch ends the stream with an error
    // event that says how far it got, and the first batch stays ingested.
    let many: Vec<Value> = (0..40)
        .map(|i| json!({"id": format!("note-{i}"), "text": format!("Maintenance note {i}: check the tyres.")}))
        .collect();
    let response = platform
        .send(
            "/v1/collections/docs/documents?stream=true",
            &admin,
            &json!({"documents": many}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let (events, done) = read_events(response).await;
    assert!(done);
    let objects: Vec<&str> = events
        .iter()
        .map(|event| event["object"].as_str().unwrap())
        .collect();
    assert_eq!(
        objects,
        ["ingest.progress", "ingest.progress", "ingest.completed"]
    );
    assert_eq!(events[0]["documents_done"], 32);
    assert_eq!(events[1]["documents_done"], 40);
    assert_eq!(events[1]["documents_total"], 40);
    assert_eq!(events[2]["documents"].as_array().unwrap().len(), 40);
    let mut broken: Vec<Value> = (0..34)
        .map(|i| json!({"id": format!("extra-{i}"), "text": format!("Extra note {i}.")}))
        .collect();
    broken[33]["text"] = json!("   ");
    let response = platform
        .send(
            "/v1/collections/docs/documents?stream=true",
            &admin,
            &json!({"documents": broken}),
        )
        .await;
    let (events, done) = read_events(response).await;
    assert!(!done, "{events:?}");
    assert_eq!(events[0]["object"], "ingest.progress", "{events:?}");
    let message = events[1]["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("32 of 34 documents were ingested"),
        "{message}"
    );
    let described: Value = platform.get_json("/v1/collections/docs", &reader).await;
    assert_eq!(described["documents"], 4 + 40 + 32, "{described}");
    // An upload refused in its first batch is an HTTP error, not a stream.
    let response = platform
        .send(
            "/v1/collections/docs/documents?stream=true",
            &admin,
            &json!({"documents": [{"id": "", "text": "No id."}]}),
        )
        .await;
    assert_eq!(response.status(), 400);
    // A query parameter that does not parse is refused in the API's error shape.
    let response = platform
        .send(
            "/v1/collections/docs/documents?stream=maybe",
            &admin,
            &json!({"documents": []}),
        )
        .await;
    assert_eq!(response.status(), 400);
    let refused: Value = response.json().await.unwrap();
    assert_eq!(refused["error"]["param"], "query", "{refused}");

    // Retrieval-augmented chat: the sources are cited, in the answer and the stream.
    let question = json!([{"role": "user", "content": "Which fuel does a turbofan burn?"}]);
    let answered = platform
        .post_json(
            "/v1/chat/completions",
            &reader,
            &json!({"model": CHAT, "messages": question, "max_tokens": 24, "temperature": 0,
                    "rag": {"collection": "docs", "top_k": 2}}),
        )
        .await;
    assert_eq!(
        answered["citations"][0]["document_id"], "engines",
        "{answered}"
    );
    assert_eq!(answered["citations"][0]["number"], 1);
    assert_eq!(answered["retrieval"]["found"], 2);
    let text = answered["choices"][0]["message"]["content"]
        .as_str()
        .unwrap();
    assert!(text.to_lowercase().contains("kerosene"), "{text}");
    let response = platform
        .send(
            "/v1/chat/completions",
            &reader,
            &json!({"model": CHAT, "messages": question, "max_tokens": 8, "stream": true,
                    "rag": {"collection": "docs", "top_k": 2}}),
        )
        .await;
    let (events, done) = read_events(response).await;
    assert!(done);
    let cited = events
        .iter()
        .find(|event| event["citations"].is_array())
        .unwrap();
    assert_eq!(cited["citations"][0]["document_id"], "engines");
    // A long question leaves room for only some sources: the rest are dropped, said so.
    let long = "Tell me everything about aircraft. ".repeat(40);
    let squeezed = platform
        .post_json(
            "/v1/chat/completions",
            &reader,
            &json!({"model": CHAT, "messages": [{"role": "user", "content": long}], "max_tokens": 100,
                    "rag": {"collection": "docs", "top_k": 5}}),
        )
        .await;
    assert!(
        squeezed["retrieval"]["dropped_for_context"]
            .as_u64()
            .unwrap()
            > 0,
        "{squeezed}"
    );
    let unknown = platform
        .send(
            "/v1/chat/completions",
            &reader,
            &json!({"model": CHAT, "messages": question, "rag": {"collection": "nope"}}),
        )
        .await;
    assert_eq!(unknown.status(), 404);

    // Deleting the collection.
    let gone = platform
        .http
        .delete(format!("{}/v1/collections/docs", platform.url))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 200);
    let list: Value = platform.get_json("/v1/collections", &reader).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0);
    platform.stop().await;
}

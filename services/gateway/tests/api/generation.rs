//! Chat completions (plain, streamed, with logprobs), completions, embeddings and the
//! model list.

use super::*;

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

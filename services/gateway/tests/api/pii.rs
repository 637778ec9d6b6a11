//! Personal data: found and anonymized over HTTP, for any key.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_data_is_found_and_anonymized_for_any_key() {
    let platform = Platform::start(gateway_config(), inference_config()).await;
    let (key, _) = platform.create_key(json!({"scopes": ["rag"]})).await;
    let text = "Grüße von Jörg: jorg@example.de, +44 20 7946 0958, card 4111 1111 1111 1111, \
                not 4111 1111 1111 1112.";

    let analysis = platform
        .post_json("/v1/pii/analyze", &key, &json!({"text": text}))
        .await;
    assert_eq!(analysis["object"], "pii.analysis");
    let findings = analysis["findings"].as_array().unwrap();
    let found: Vec<(&str, &str)> = findings
        .iter()
        .map(|f| (f["type"].as_str().unwrap(), f["text"].as_str().unwrap()))
        .collect();
    assert_eq!(
        found,
        [
            ("EMAIL_ADDRESS", "jorg@example.de"),
            ("PHONE_NUMBER", "+44 20 7946 0958"),
            ("CREDIT_CARD", "4111 1111 1111 1111"),
        ]
    );
    // Offsets are characters: they slice the text as sent, umlauts and all.
    let email = &findings[0];
    let (start, end) = (
        email["start"].as_u64().unwrap(),
        email["end"].as_u64().unwrap(),
    );
    let sliced: String = text
        .chars()
        .skip(start as usize)
        .take((end - start) as usize)
        .collect();
    assert_eq!(sliced, "jorg@example.de");

    let narrowed = platform
        .post_json(
            "/v1/pii/analyze",
            &key,
            &json!({"text": text, "types": ["CREDIT_CARD"]}),
        )
        .await;
    assert_eq!(narrowed["findings"].as_array().unwrap().len(), 1);

    let anonymized = platform
        .post_json(
            "/v1/pii/anonymize",
            &key,
            &json!({"text": text, "operators": {"PHONE_NUMBER": "redact", "CREDIT_CARD": "hash"}}),
        )
        .await;
    let masked = anonymized["text"].as_str().unwrap();
    assert!(
        masked.starts_with("Grüße von Jörg: <EMAIL_ADDRESS>, , card "),
        "{masked}"
    );
    assert!(!masked.contains("4111 1111 1111 1111"), "{masked}");
    assert!(masked.contains("not 4111 1111 1111 1112."), "{masked}");
    let operators: Vec<&str> = anonymized["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["operator"].as_str().unwrap())
        .collect();
    assert_eq!(operators, ["replace", "redact", "hash"]);

    // Refusals name what is wrong.
    for (body, named) in [
        (json!({"text": text, "types": ["NAME"]}), "NAME"),
        (json!({"types": []}), "text"),
        (
            json!({"text": text, "operators": {"EMAIL_ADDRESS": "encrypt"}}),
            "encrypt",
        ),
    ] {
        let response = platform.send("/v1/pii/anonymize", &key, &body).await;
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.unwrap();
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(named), "{body}: {message}");
    }
    platform.stop().await;
}

/// A key's PII policy (issue 36, item 3): `mask` sends the model `<EMAIL_ADDRESS>`
/// where the user wrote an address (seen on the bus itself) and the usage row counts
/// what it masked, `block` refuses with 400 `pii_detected` naming the message and the
/// types, `off` (the default) sends the text as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_pii_policy_masks_or_blocks_what_reaches_the_model() {
    let database = slough_testkit::TestPostgres::create().await;
    let options = support::Options {
        database_url: Some(database.url().to_owned()),
        ..support::Options::default()
    };
    let platform = Platform::start_with(gateway_config(), inference_config(), options).await;
    let admin = platform.admin_key.clone();
    let (masking, masking_key) = platform
        .create_key(json!({"scopes": ["inference"], "pii": "mask"}))
        .await;
    let masking_id = masking_key["id"].as_str().unwrap();
    let (blocking, _) = platform
        .create_key(json!({"scopes": ["inference"], "pii": "block"}))
        .await;
    let (plain, _) = platform.create_key(json!({"scopes": ["inference"]})).await;

    // Everything published on the bus, to see what the model was sent.
    let bus = async_nats::connect(platform.nats.url()).await.unwrap();
    let mut published = bus.subscribe(">").await.unwrap();
    bus.flush().await.unwrap();
    let said = "I am jane@example.com, card 4111 1111 1111 1111. Say hi.";
    let body = json!({"model": CHAT, "max_tokens": 2, "store": true,
                      "messages": [{"role": "user", "content": said}]});
    let chat = |key: &str| platform.post("/v1/chat/completions", key, &body).send();
    // What the bus carried since the last look, as text.
    let mut carried = async || {
        let mut texts = String::new();
        while let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_millis(300), published.next()).await
        {
            texts.push_str(&String::from_utf8_lossy(&message.payload));
        }
        texts
    };

    assert_eq!(chat(&masking).await.unwrap().status(), 200);
    let sent = carried().await;
    assert!(
        sent.contains("I am <EMAIL_ADDRESS>, card <CREDIT_CARD>. Say hi."),
        "{sent}"
    );
    assert!(
        !sent.contains("jane@example.com"),
        "the address reached the bus"
    );
    let store = open_store(database.url()).await;
    let key_id: uuid::Uuid = masking_id.parse().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let masked = loop {
        use sea_orm::{ColumnTrait as _, EntityTrait as _, QueryFilter as _};
        use slough_store::entities::usage;
        let rows = usage::Entity::find()
            .filter(usage::Column::KeyId.eq(key_id))
            .all(store.connection())
            .await
            .unwrap();
        if let Some(row) = rows.first() {
            break row.pii_masked.clone();
        }
        assert!(std::time::Instant::now() < deadline, "no usage row");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        masked.as_deref(),
        Some(r#"{"EMAIL_ADDRESS":1,"CREDIT_CARD":1}"#)
    );
    store.close().await;

    let refused = chat(&blocking).await.unwrap();
    assert_eq!(refused.status(), 400);
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["code"], "pii_detected", "{error}");
    assert_eq!(error["error"]["param"], "messages[0]", "{error}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("EMAIL_ADDRESS, CREDIT_CARD"), "{message}");
    let embedded = platform
        .send(
            "/v1/embeddings",
            &blocking,
            &json!({"model": EMBED, "input": ["fine", "call +1 201-555-0123"]}),
        )
        .await;
    assert_eq!(embedded.status(), 400);
    let error: Value = embedded.json().await.unwrap();
    assert_eq!(error["error"]["param"], "input[1]", "{error}");
    assert!(
        !carried().await.contains("201-555-0123"),
        "a blocked input reached the bus"
    );

    assert_eq!(chat(&plain).await.unwrap().status(), 200);
    assert!(
        carried().await.contains("jane@example.com"),
        "off sends the text as it is"
    );

    // The policy is part of the key: shown, changed, checked.
    let shown: Value = platform
        .get_json(&format!("/v1/keys/{masking_id}"), &admin)
        .await;
    assert_eq!(shown["pii"], "mask", "{shown}");
    let patch = |body: Value| {
        platform
            .http
            .patch(format!("{}/v1/keys/{masking_id}", platform.url))
            .bearer_auth(&admin)
            .json(&body)
            .send()
    };
    let changed: Value = patch(json!({"pii": "off"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(changed["pii"], "off", "{changed}");
    let wrong = patch(json!({"pii": "encrypt"})).await.unwrap();
    assert_eq!(wrong.status(), 400);
    platform.stop().await;
    database.drop_database().await;
}

/// Stored content masked by the deployment (`gateway.mask_stored_pii`, issue 36, item
/// 3): a stored completion keeps `<EMAIL_ADDRESS>`, its answer and correction are
/// masked too, so the fine-tuning dataset made from them holds no personal data; and an
/// uploaded training file is scanned on request, by type and by line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_content_is_masked_and_files_are_scanned() {
    let database = slough_testkit::TestPostgres::create().await;
    let options = support::Options {
        database_url: Some(database.url().to_owned()),
        ..support::Options::default()
    };
    let config = slough_gateway::Config {
        mask_stored_pii: true,
        ..gateway_config()
    };
    let platform = Platform::start_with(config, inference_config(), options).await;
    let (key, _) = platform
        .create_key(json!({"scopes": ["inference", "fine-tune"]}))
        .await;

    let said = "Reply to jane@example.com about the order.";
    let chat = platform
        .post_json(
            "/v1/chat/completions",
            &key,
            &json!({"model": CHAT, "max_tokens": 4, "store": true,
                    "messages": [{"role": "user", "content": said}]}),
        )
        .await;
    let id = chat["id"].as_str().unwrap();
    let rated = platform
        .send(
            &format!("/v1/chat/completions/{id}/feedback"),
            &key,
            &json!({"rating": 1, "correction": "Call her on +1 201-555-0123 instead."}),
        )
        .await;
    assert_eq!(rated.status(), 200);
    let store = open_store(database.url()).await;
    let dataset = slough_gateway::stored::dataset(&store, 5).await.unwrap();
    let kept = serde_json::to_string(&dataset).unwrap();
    assert!(
        kept.contains("Reply to <EMAIL_ADDRESS> about the order."),
        "{kept}"
    );
    assert!(
        kept.contains("Call her on <PHONE_NUMBER> instead."),
        "{kept}"
    );
    assert!(!kept.contains("jane@example.com") && !kept.contains("201-555-0123"));
    store.close().await;

    // A training file scanned on upload: counts by type, and the lines that hold them.
    let lines = [
        json!({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Mail ops@corp.io"}]}),
        json!({"messages": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there"}]}),
        json!({"messages": [{"role": "user", "content": "Card 4111 1111 1111 1111?"}, {"role": "assistant", "content": "Not here; write to a@b.io\nor c@d.io"}]}),
    ];
    let file: String = lines.iter().map(|line| format!("{line}\n")).collect();
    let upload = |query: &'static str| {
        let form = reqwest::multipart::Form::new()
            .text("purpose", "fine-tune")
            .part(
                "file",
                reqwest::multipart::Part::text(file.clone()).file_name("chats.jsonl"),
            );
        platform
            .http
            .post(format!("{}/v1/files{query}", platform.url))
            .bearer_auth(&key)
            .multipart(form)
            .send()
    };
    let scanned: Value = upload("?pii_scan=true")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let scan = &scanned["pii_scan"];
    assert_eq!(
        scan["findings"],
        json!({"EMAIL_ADDRESS": 3, "CREDIT_CARD": 1}),
        "{scanned}"
    );
    assert_eq!(scan["lines_with_findings"], 2);
    assert_eq!(
        scan["lines"][0],
        json!({"line": 1, "findings": {"EMAIL_ADDRESS": 1}})
    );
    assert_eq!(scan["lines"][1]["line"], 3);
    let plain: Value = upload("").await.unwrap().json().await.unwrap();
    assert!(plain.get("pii_scan").is_none(), "{plain}");
    let wrong = upload("?pii_scan=maybe").await.unwrap();
    assert_eq!(wrong.status(), 400);

    platform.stop().await;
    database.drop_database().await;
}

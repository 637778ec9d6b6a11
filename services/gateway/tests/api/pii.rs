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

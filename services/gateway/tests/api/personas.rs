//! Personas: managed, applied to chats, and scored.

use super::*;

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

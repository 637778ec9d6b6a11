//! The audit log (issue 36, item 1): every route of the OpenAPI document that changes
//! state, and every admin route refused, leaves an audit event, so a new route that is
//! not audited fails here; the events name who, what and how it ended, never a secret;
//! an edited record is named by the chain's verification.

use super::*;

/// Routes that take a `POST` and change nothing.
const READS: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/personality/analyze",
    "/v1/pii/analyze",
    "/v1/pii/anonymize",
    "/v1/collections/{name}/search",
    "/v1/personas/{id}/preview",
];

/// Routes that take a `GET` and hand over personal data.
const EXPORTS: &[&str] = &["/v1/keys/{id}/export", "/v1/end_users/{user}/export"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_and_every_refused_admin_request_is_audited() {
    let database = slough_testkit::TestPostgres::create().await;
    let options = support::Options {
        database_url: Some(database.url().to_owned()),
        ..support::Options::default()
    };
    // The gateway checks the chain every second here (hourly by default).
    let config = slough_gateway::Config {
        audit_check_s: 1,
        ..gateway_config()
    };
    let platform = Platform::start_with(config, inference_config(), options).await;
    let admin = platform.admin_key.clone();
    let (user, user_key) = platform.create_key(json!({"scopes": ["inference"]})).await;
    let user_id = user_key["id"].as_str().unwrap().to_owned();

    // Every route of the document, as an inference-only key, with a placeholder for
    // each path parameter and an empty JSON object for a body.
    let document = slough_gateway::openapi::render();
    let document: Value = serde_json::from_str(&document).unwrap();
    let mut expected = Vec::new();
    let mut unexpected = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in ["get", "post", "patch", "put", "delete"] {
            if item.get(method).is_none() {
                continue;
            }
            let url = format!("{}{}", platform.url, fill(path));
            let request = platform
                .http
                .request(method.to_uppercase().parse().unwrap(), url)
                .bearer_auth(&user);
            let request = if method == "get" || method == "delete" {
                request
            } else {
                request.json(&json!({}))
            };
            let status = request.send().await.unwrap().status().as_u16();
            let action = format!("{} {path}", method.to_uppercase());
            let changes = (method != "get" && !READS.contains(&path.as_str()))
                || EXPORTS.contains(&path.as_str());
            if changes || status == 403 {
                expected.push((action, status));
            } else {
                unexpected.push(action);
            }
        }
    }
    assert!(expected.len() > 20, "{expected:?}");

    let recorded = events(&platform, &admin, &format!("actor={user_id}")).await;
    let actions: Vec<&str> = recorded
        .iter()
        .map(|event| event["action"].as_str().unwrap())
        .collect();
    let missing: Vec<_> = expected
        .iter()
        .filter(|(action, _)| !actions.contains(&action.as_str()))
        .collect();
    assert!(missing.is_empty(), "not audited: {missing:?}");
    let extra: Vec<_> = unexpected
        .iter()
        .filter(|action| actions.contains(&action.as_str()))
        .collect();
    assert!(extra.is_empty(), "reads audited: {extra:?}");
    for event in &recorded {
        assert_eq!(event["actor_prefix"], user_key["prefix"], "{event}");
        assert_eq!(event["outcome"], "refused", "{event}");
        assert!(event["request_id"].is_string(), "{event}");
        assert!(event["client_address"].is_string(), "{event}");
    }

    // The first admin key was made by the platform itself, and recorded as such.
    let first = events(&platform, &admin, "action=bootstrap%20admin%20key").await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0]["actor"], "slough");
    assert_eq!(first[0]["resource_type"], "keys");
    assert!(admin.starts_with(first[0]["summary"]["prefix"].as_str().unwrap()));

    // Without a valid key nothing is recorded: nobody writes to the store at will.
    let before = events(&platform, &admin, "").await.len();
    for _ in 0..3 {
        let anonymous = platform
            .http
            .post(format!("{}/v1/keys", platform.url))
            .json(&json!({"name": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(anonymous.status(), 401);
    }
    assert_eq!(events(&platform, &admin, "").await.len(), before);

    // An admin's change: who, what, the fields set, and never the secret.
    let (secret, made) = platform
        .create_key(json!({"name": "audited", "scopes": ["rag"]}))
        .await;
    let created = events(
        &platform,
        &admin,
        "action=POST%20/v1/keys&outcome=succeeded",
    )
    .await;
    let event = &created[0];
    assert_eq!(event["resource_type"], "keys", "{event}");
    assert_eq!(
        event["summary"]["fields"],
        json!(["name", "scopes"]),
        "{event}"
    );
    let deleted = platform
        .http
        .delete(format!(
            "{}/v1/keys/{}",
            platform.url,
            made["id"].as_str().unwrap()
        ))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    let revoked = platform
        .get_json("/v1/audit?resource_type=keys&limit=1", &admin)
        .await["data"]
        .clone();
    assert_eq!(revoked[0]["action"], "DELETE /v1/keys/{id}");
    assert_eq!(revoked[0]["resource_id"], made["id"]);
    let everything = serde_json::to_string(&events(&platform, &admin, "").await).unwrap();
    assert!(
        !everything.contains(&secret),
        "a key's secret is in the audit log"
    );

    // Paging walks back through the log without gaps.
    let first = platform.get_json("/v1/audit?limit=2", &admin).await;
    assert_eq!(first["has_more"], true);
    let after = first["data"][1]["id"].as_str().unwrap();
    let second = platform
        .get_json(&format!("/v1/audit?limit=2&after={after}"), &admin)
        .await;
    assert_eq!(second["data"][0]["hash"], first["data"][1]["prev_hash"]);
    // Only admins read it (and the refusal is itself recorded).
    let refused = platform
        .http
        .get(format!("{}/v1/audit", platform.url))
        .bearer_auth(&user)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);

    // The chain holds, until a record is edited behind the platform's back.
    assert_eq!(
        platform
            .gateway_metric("slough_gateway_audit_chain_intact")
            .await,
        1.0
    );
    let store = open_store(database.url()).await;
    assert!(
        slough_store::audit::verify(store.connection())
            .await
            .unwrap()
            .is_ok()
    );
    use sea_orm::ConnectionTrait as _;
    store
        .connection()
        .execute_unprepared("UPDATE audit_events SET actor = 'someone-else' WHERE seq = 3")
        .await
        .unwrap();
    assert_eq!(
        slough_store::audit::verify(store.connection())
            .await
            .unwrap(),
        Err(slough_store::audit::Broken::Edited(3))
    );
    // ...and the gateway's next check says so to Prometheus.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while platform
        .gateway_metric("slough_gateway_audit_chain_intact")
        .await
        != 0.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the break was not seen"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    store.close().await;
    platform.stop().await;
    database.drop_database().await;
}

/// `/v1/collections/{name}` with its parameters filled in.
fn fill(path: &str) -> String {
    path.split('/')
        .map(|part| if part.starts_with('{') { "x" } else { part })
        .collect::<Vec<_>>()
        .join("/")
}

/// Every audit event matching `filter`, newest first, through the pages.
async fn events(platform: &Platform, admin: &str, filter: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after = String::new();
    loop {
        let page = platform
            .get_json(&format!("/v1/audit?limit=100&{filter}{after}"), admin)
            .await;
        let data = page["data"]
            .as_array()
            .unwrap_or_else(|| panic!("{filter}: {page}"));
        all.extend(data.iter().cloned());
        if page["has_more"] != true {
            return all;
        }
        after = format!("&after={}", data.last().unwrap()["id"].as_str().unwrap());
    }
}

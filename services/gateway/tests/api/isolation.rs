//! One key never reaches another's data (issue 31, items 6 to 8): every route that
//! touches something a key made (collections, files, fine-tuning jobs, fine-tuned
//! models, stored completions) is tried by a second key, which is told it does not
//! exist, and by the owner, who reaches it; admins reach everything.

use support::Options;

use super::*;

/// One request a key may make about another key's thing.
struct Probe {
    what: &'static str,
    method: reqwest::Method,
    path: String,
    body: Option<Value>,
    /// Whether the owner's own request changes nothing (so it can be sent too).
    harmless: bool,
}

fn probe(what: &'static str, method: &str, path: String, body: Option<Value>) -> Probe {
    Probe {
        what,
        method: method.parse().unwrap(),
        path,
        harmless: method == "GET" || what.starts_with("search") || what.starts_with("chat"),
        body,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_never_reaches_another_keys_data() {
    let root = tempfile::tempdir().unwrap();
    let options = Options {
        models_dir: Some(models_with_a_tuned_model(root.path())),
        training: true,
        ..Options::default()
    };
    let platform = Platform::start_with(gateway_config(), inference_config(), options).await;
    let admin = platform.admin_key.clone();
    let all = json!({"scopes": ["inference", "rag", "fine-tune"]});
    let (a, a_key) = platform.create_key(all.clone()).await;
    let (b, _) = platform.create_key(all).await;

    // What A owns: a collection, a file, a stored completion, and the job that made
    // the fine-tuned model (written as the training service records one).
    let created = platform
        .send(
            "/v1/collections",
            &a,
            &json!({"name": "a-docs", "embedding_model": EMBED}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let ingested = platform
        .send(
            "/v1/collections/a-docs/documents",
            &a,
            &json!({"documents": [{"id": "secret", "text": "The vault code is 4711."}]}),
        )
        .await;
    assert_eq!(ingested.status(), 200);
    let file = platform.upload_file(&a, "a.jsonl", TRAINING_FILE).await;
    let answer = platform
        .post_json(
            "/v1/chat/completions",
            &a,
            &json!({"model": CHAT, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "store": true}),
        )
        .await;
    let completion = answer["id"].as_str().unwrap().to_owned();
    let store = slough_store::Store::open(None, platform.data_dir())
        .await
        .unwrap();
    finished_job(&store, a_key["id"].as_str().unwrap(), &file).await;
    store.close().await;

    let hi = json!([{"role": "user", "content": "Hi"}]);
    let probes = [
        probe(
            "describe a collection",
            "GET",
            "/v1/collections/a-docs".into(),
            None,
        ),
        probe(
            "search a collection",
            "POST",
            "/v1/collections/a-docs/search".into(),
            Some(json!({"query": "vault code"})),
        ),
        probe(
            "chat from a collection",
            "POST",
            "/v1/chat/completions".into(),
            Some(
                json!({"model": CHAT, "messages": hi, "max_tokens": 2, "rag": {"collection": "a-docs"}}),
            ),
        ),
        probe(
            "ingest into a collection",
            "POST",
            "/v1/collections/a-docs/documents".into(),
            Some(json!({"documents": [{"id": "secret", "text": "Replaced."}]})),
        ),
        probe(
            "delete a document",
            "DELETE",
            "/v1/collections/a-docs/documents/secret".into(),
            None,
        ),
        probe(
            "delete a collection",
            "DELETE",
            "/v1/collections/a-docs".into(),
            None,
        ),
        probe("describe a file", "GET", format!("/v1/files/{file}"), None),
        probe(
            "read a file",
            "GET",
            format!("/v1/files/{file}/content"),
            None,
        ),
        probe("delete a file", "DELETE", format!("/v1/files/{file}"), None),
        probe(
            "describe a job",
            "GET",
            "/v1/fine_tuning/jobs/ftjob-owned-by-a".into(),
            None,
        ),
        probe(
            "read a job's events",
            "GET",
            "/v1/fine_tuning/jobs/ftjob-owned-by-a/events".into(),
            None,
        ),
        probe(
            "read a job's checkpoints",
            "GET",
            "/v1/fine_tuning/jobs/ftjob-owned-by-a/checkpoints".into(),
            None,
        ),
        probe(
            "cancel a job",
            "POST",
            "/v1/fine_tuning/jobs/ftjob-owned-by-a/cancel".into(),
            None,
        ),
        probe(
            "describe a fine-tuned model",
            "GET",
            format!("/v1/models/{TUNED}"),
            None,
        ),
        probe(
            "chat with a fine-tuned model",
            "POST",
            "/v1/chat/completions".into(),
            Some(json!({"model": TUNED, "messages": hi, "max_tokens": 2})),
        ),
        probe(
            "chat with a fine-tuned model's persona alias",
            "POST",
            "/v1/chat/completions".into(),
            Some(json!({"model": format!("{TUNED}:sage"), "messages": hi, "max_tokens": 2})),
        ),
        probe(
            "complete with a fine-tuned model",
            "POST",
            "/v1/completions".into(),
            Some(json!({"model": TUNED, "prompt": "Hi", "max_tokens": 2})),
        ),
        probe(
            "analyze with a fine-tuned classifier",
            "POST",
            "/v1/personality/analyze".into(),
            Some(json!({"text": "Hi", "classifier": TUNED})),
        ),
        probe(
            "delete a fine-tuned model",
            "DELETE",
            format!("/v1/models/{TUNED}"),
            None,
        ),
        probe(
            "rate a stored completion",
            "POST",
            format!("/v1/chat/completions/{completion}/feedback"),
            Some(json!({"rating": 1})),
        ),
    ];
    let send = |key: &str, probe: &Probe| {
        let mut request = platform
            .http
            .request(
                probe.method.clone(),
                format!("{}{}", platform.url, probe.path),
            )
            .bearer_auth(key);
        if let Some(body) = &probe.body {
            request = request.json(body);
        }
        request.send()
    };
    let mut reached = Vec::new();
    for probe in &probes {
        let response = send(&b, probe).await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        if status != 404 {
            reached.push(format!("{}: {status} {text}", probe.what));
        }
    }
    assert!(
        reached.is_empty(),
        "another key reached A's data:\n{}",
        reached.join("\n")
    );

    // The lists leave A's things out for B, and show them to A and to admins.
    for (path, field, mine) in [
        ("/v1/collections", "name", "a-docs".to_owned()),
        ("/v1/files", "id", file.clone()),
        ("/v1/fine_tuning/jobs", "id", "ftjob-owned-by-a".to_owned()),
        ("/v1/models", "id", TUNED.to_owned()),
    ] {
        for (who, key, sees) in [
            ("B", &b, false),
            ("A", &a, true),
            ("an admin", &admin, true),
        ] {
            let list: Value = platform.get_json(path, key).await;
            let listed = list["data"]
                .as_array()
                .unwrap()
                .iter()
                .any(|item| item[field] == mine.as_str());
            assert_eq!(listed, sees, "{who} listing {path}: {list}");
        }
    }

    // The owner reaches each of them (so a 404 above was the key, not the route).
    for probe in probes.iter().filter(|probe| probe.harmless) {
        let response = send(&a, probe).await.unwrap();
        let status = response.status().as_u16();
        assert_ne!(
            status,
            404,
            "A could not {}: {}",
            probe.what,
            response.text().await.unwrap()
        );
    }
    platform.stop().await;
}

/// Storage quotas hold per key (issue 31, item 15): a key's files and its collections'
/// text stop at their quotas with a 413 naming the setting, nothing is stored past
/// them, and another key still has all of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_quotas_hold_per_key() {
    let config = slough_gateway::Config {
        max_file_bytes_per_key: 1000,
        max_collection_bytes_per_key: 300,
        ..gateway_config()
    };
    let platform = Platform::start(config, inference_config()).await;
    let scopes = json!({"scopes": ["inference", "rag", "fine-tune"]});
    let (a, _) = platform.create_key(scopes.clone()).await;
    let (b, _) = platform.create_key(scopes).await;
    let line = "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Ahoy\"}]}\n";
    let file = line.repeat(600 / line.len());
    let upload = |key: &str| {
        let form = reqwest::multipart::Form::new()
            .text("purpose", "fine-tune")
            .part(
                "file",
                reqwest::multipart::Part::text(file.clone()).file_name("f.jsonl"),
            );
        platform
            .http
            .post(format!("{}/v1/files", platform.url))
            .bearer_auth(key)
            .multipart(form)
            .send()
    };
    let ingest = |key: &str, collection: &str, id: &str| {
        let text = format!("{id}: {}", "Checked the tyres. ".repeat(12));
        platform
            .post(
                &format!("/v1/collections/{collection}/documents"),
                key,
                &json!({"documents": [{"id": id, "text": text}]}),
            )
            .send()
    };
    let refused = |response: reqwest::Response, setting: &'static str| async move {
        let status = response.status();
        let error: Value = response.json().await.unwrap();
        assert_eq!(status, 413, "{setting}: {error}");
        assert_eq!(error["error"]["code"], "storage_quota_exceeded", "{error}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(setting), "{message}");
    };

    assert_eq!(upload(&a).await.unwrap().status(), 200);
    refused(upload(&a).await.unwrap(), "gateway.max_file_bytes_per_key").await;
    let files: Value = platform.get_json("/v1/files", &a).await;
    assert_eq!(files["data"].as_array().unwrap().len(), 1, "{files}");
    assert_eq!(
        upload(&b).await.unwrap().status(),
        200,
        "B has its own quota"
    );

    for (key, name) in [(&a, "a-notes"), (&b, "b-notes")] {
        let created = platform
            .send(
                "/v1/collections",
                key,
                &json!({"name": name, "embedding_model": EMBED}),
            )
            .await;
        assert_eq!(created.status(), 201);
    }
    assert_eq!(ingest(&a, "a-notes", "one").await.unwrap().status(), 200);
    refused(
        ingest(&a, "a-notes", "two").await.unwrap(),
        "gateway.max_collection_bytes_per_key",
    )
    .await;
    let described: Value = platform.get_json("/v1/collections/a-notes", &a).await;
    assert_eq!(described["documents"], 1, "{described}");
    assert_eq!(ingest(&b, "b-notes", "one").await.unwrap().status(), 200);
    platform.stop().await;
}

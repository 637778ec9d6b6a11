//! Export and erasure (issue 36, item 4): everything a key made, and everything about
//! one end user, is exported whole and then erased, and afterwards nothing of it is
//! left in the store, the file store, the collections or the models directory, while
//! another key's data and the anonymous usage stay.

use sea_orm::{
    ColumnTrait as _, ConnectionTrait as _, EntityTrait as _, PaginatorTrait as _, QueryFilter as _,
};
use slough_store::entities::{api_key, stored_completion, usage};
use support::Options;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_and_an_end_users_data_are_exported_and_erased() {
    let root = tempfile::tempdir().unwrap();
    let models = models_with_a_tuned_model(root.path());
    let options = Options {
        models_dir: Some(models.clone()),
        training: true,
        ..Options::default()
    };
    let platform = Platform::start_with(gateway_config(), inference_config(), options).await;
    let admin = platform.admin_key.clone();
    // A is an admin's key (so it can write into another key's collection); B is not.
    let (a, a_key) = platform
        .create_key(json!({"name": "Alice", "scopes": ["inference", "rag", "fine-tune", "admin"]}))
        .await;
    let (b, _) = platform
        .create_key(json!({"scopes": ["inference", "rag", "fine-tune"]}))
        .await;
    let a_id = a_key["id"].as_str().unwrap().to_owned();

    // What A makes: a file, a stored and rated completion for end user `user-42`, a
    // plain chat for them, a collection of its own, a document in another admin's
    // collection, and the job that made a fine-tuned model.
    let file = platform.upload_file(&a, "a.jsonl", TRAINING_FILE).await;
    let chat = |key: &str, user: &str, store: bool| {
        let body = json!({
            "model": CHAT, "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 2, "store": store, "safety_identifier": user,
        });
        let key = key.to_owned();
        let platform = &platform;
        async move {
            platform
                .post_json("/v1/chat/completions", &key, &body)
                .await
        }
    };
    let kept = chat(&a, "user-42", true).await;
    let kept = kept["id"].as_str().unwrap().to_owned();
    let rated = platform
        .send(
            &format!("/v1/chat/completions/{kept}/feedback"),
            &a,
            &json!({"rating": 2, "correction": "Ahoy there."}),
        )
        .await;
    assert_eq!(rated.status(), 200);
    chat(&a, "user-42", false).await;
    for (key, name) in [(&a, "a-docs"), (&admin, "shared")] {
        let created = platform
            .send(
                "/v1/collections",
                key,
                &json!({"name": name, "embedding_model": EMBED}),
            )
            .await;
        assert_eq!(created.status(), 201);
    }
    for (key, collection, id, text) in [
        (&a, "a-docs", "secret", "The vault code is 4711."),
        (
            &a,
            "shared",
            "a-note",
            "Alice parks her bicycle by the north gate.",
        ),
        (
            &admin,
            "shared",
            "admin-note",
            "The north gate opens at seven.",
        ),
    ] {
        let ingested = platform
            .send(
                &format!("/v1/collections/{collection}/documents"),
                key,
                &json!({"documents": [{"id": id, "text": text}]}),
            )
            .await;
        assert_eq!(ingested.status(), 200);
    }
    let store = slough_store::Store::open(None, platform.data_dir())
        .await
        .unwrap();
    finished_job(&store, &a_id, &file).await;
    // B's chats for the same end user and for another one.
    let b_kept = chat(&b, "user-42", true).await;
    let b_kept = b_kept["id"].as_str().unwrap().to_owned();
    let other = chat(&b, "user-7", true).await;
    let other = other["id"].as_str().unwrap().to_owned();

    // Refusals: not an admin, an unknown key, an admin's own key, a bad end user.
    let export = format!("/v1/keys/{a_id}/export");
    let erase = |id: &str| format!("/v1/keys/{id}/data");
    let answer = platform.get(&export, &b).send().await.unwrap();
    assert_eq!(answer.status(), 403);
    let unknown = platform
        .get(
            "/v1/keys/00000000-0000-0000-0000-000000000001/export",
            &admin,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let admin_id = platform
        .get_json("/v1/keys", &admin)
        .await
        .get("data")
        .and_then(|keys| {
            keys.as_array()?
                .iter()
                .find(|key| admin.starts_with(key["prefix"].as_str().unwrap_or("-")))
                .map(|key| key["id"].as_str().unwrap_or_default().to_owned())
        })
        .unwrap();
    let own = platform.delete(&erase(&admin_id), &admin).await;
    assert_eq!(own.status(), 400);
    let error: Value = own.json().await.unwrap();
    assert_eq!(error["error"]["param"], "id", "{error}");
    let long = json!({"model": CHAT, "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 1, "safety_identifier": "x".repeat(257)});
    let refused = platform.send("/v1/chat/completions", &a, &long).await;
    assert_eq!(refused.status(), 400);
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["param"], "safety_identifier", "{error}");

    // The export holds all of it (usage rows are written just after their answers).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let exported = loop {
        let exported = platform.get_json(&export, &admin).await;
        if exported["usage"].as_array().unwrap().len() >= 2 {
            break exported;
        }
        assert!(std::time::Instant::now() < deadline, "{exported}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(exported["object"], "key.export");
    assert_eq!(exported["key"]["id"], a_id.as_str());
    let completions = exported["stored_completions"].as_array().unwrap();
    assert_eq!(completions.len(), 1, "{exported}");
    assert_eq!(completions[0]["id"], kept.as_str());
    assert_eq!(completions[0]["end_user"], "user-42");
    assert_eq!(completions[0]["messages"][0]["content"], "Hi");
    assert_eq!(completions[0]["correction"], "Ahoy there.");
    assert_eq!(exported["files"][0]["id"], file.as_str());
    assert_eq!(exported["files"][0]["content"], TRAINING_FILE);
    assert_eq!(exported["fine_tuning_jobs"][0]["id"], "ftjob-owned-by-a");
    assert_eq!(exported["fine_tuned_models"], json!([TUNED]));
    assert_eq!(exported["collections"], json!(["a-docs"]));
    let documents: Vec<(&str, &str)> = exported["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["collection"].as_str().unwrap(), d["id"].as_str().unwrap()))
        .collect();
    assert_eq!(documents, [("a-docs", "secret"), ("shared", "a-note")]);
    assert!(
        exported["usage"]
            .as_array()
            .unwrap()
            .iter()
            .all(|row| row["end_user"] == "user-42" && row["key_id"] == a_id.as_str()),
        "{exported}"
    );
    let user = platform
        .get_json("/v1/end_users/user-42/export", &admin)
        .await;
    let ids: Vec<&str> = user["stored_completions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [kept.as_str(), b_kept.as_str()], "{user}");

    let held = rows_of(store.connection(), &a_id).await;
    assert!(held.iter().all(|(_, n)| *n > 0), "{held:?}");

    // A's erasure: the key revoked and its name cleared, everything it made gone.
    let erased = platform.delete(&erase(&a_id), &admin).await;
    assert_eq!(erased.status(), 200);
    let erased: Value = erased.json().await.unwrap();
    assert_eq!(erased["stored_completions"], 1, "{erased}");
    assert_eq!(erased["files"], 1, "{erased}");
    assert_eq!(erased["fine_tuning_jobs"], 1, "{erased}");
    assert_eq!(erased["fine_tuned_models"], json!([TUNED]), "{erased}");
    assert_eq!(erased["collections"], 1, "{erased}");
    assert_eq!(erased["documents"], 1, "{erased}");
    assert!(
        erased["usage_anonymized"].as_u64().unwrap() >= 2,
        "{erased}"
    );
    let answer = platform.get("/v1/models", &a).send().await.unwrap();
    assert_eq!(answer.status(), 401);

    let db = store.connection();
    let a_uuid = uuid::Uuid::parse_str(&a_id).unwrap();
    let left = rows_of(db, &a_id).await;
    assert!(left.iter().all(|(_, n)| *n == 0), "left behind: {left:?}");
    let row = api_key::Entity::find_by_id(a_uuid)
        .one(db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.name, "(erased)");
    assert!(row.revoked_at.is_some());
    let anonymous = usage::Entity::find()
        .filter(usage::Column::KeyId.eq(uuid::Uuid::nil()))
        .count(db)
        .await
        .unwrap();
    assert!(anonymous >= 2, "{anonymous}");
    let content = platform
        .get(&format!("/v1/files/{file}/content"), &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(content.status(), 404);
    assert!(!models.join(TUNED).exists(), "the fine-tuned model is left");
    let listed = platform.get_json("/v1/models", &admin).await;
    assert!(
        !listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == TUNED),
        "{listed}"
    );
    let collections = platform.get_json("/v1/collections", &admin).await;
    let names: Vec<&str> = collections["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["shared"]);
    let found = platform
        .post_json(
            "/v1/collections/shared/search",
            &admin,
            &json!({"query": "where does Alice park her bicycle?", "top_k": 5}),
        )
        .await;
    let hits: Vec<&str> = found["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|hit| hit["document_id"].as_str().unwrap())
        .collect();
    assert_eq!(hits, ["admin-note"], "{found}");
    // Erasing again finds nothing more, and says so.
    let again: Value = platform
        .delete(&erase(&a_id), &admin)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["stored_completions"], 0, "{again}");
    assert_eq!(again["fine_tuning_jobs"], 0, "{again}");

    // The end user's erasure takes B's completion for them and leaves user-7's.
    let erased: Value = platform
        .delete("/v1/end_users/user-42/data", &admin)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(erased["stored_completions"], 1, "{erased}");
    let user = platform
        .get_json("/v1/end_users/user-42/export", &admin)
        .await;
    assert_eq!(user["stored_completions"], json!([]), "{user}");
    assert_eq!(user["usage"], json!([]), "{user}");
    let kept_ids: Vec<String> = stored_completion::Entity::find()
        .all(db)
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.id)
        .collect();
    assert_eq!(kept_ids, [other]);

    // Every export and erasure is in the audit log.
    let audit = platform
        .get_json("/v1/audit?resource_type=keys&limit=100", &admin)
        .await;
    let actions: Vec<&str> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["action"].as_str().unwrap())
        .collect();
    for action in ["GET /v1/keys/{id}/export", "DELETE /v1/keys/{id}/data"] {
        assert!(
            actions.contains(&action),
            "{action} not audited: {actions:?}"
        );
    }
    store.close().await;
    platform.stop().await;
}

/// How many rows of each table that holds a key's data are key `id`'s.
async fn rows_of(db: &sea_orm::DatabaseConnection, id: &str) -> Vec<(&'static str, i64)> {
    let uuid = uuid::Uuid::parse_str(id).unwrap();
    let mut left = Vec::new();
    for (table, column, value) in [
        ("stored_completions", "owner", id.to_owned().into()),
        ("files", "owner", id.to_owned().into()),
        ("fine_tuning_jobs", "owner", id.to_owned().into()),
        ("collections", "owner", id.to_owned().into()),
        ("collection_documents", "added_by", id.to_owned().into()),
        ("usage", "key_id", sea_orm::Value::from(uuid)),
    ] {
        let count = db
            .query_one(sea_orm::Statement::from_sql_and_values(
                db.get_database_backend(),
                format!("SELECT COUNT(*) AS n FROM {table} WHERE {column} = ?"),
                [value],
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get::<i64>("", "n")
            .unwrap();
        left.push((table, count));
    }
    left
}

//! Collections: ingestion, search, and chats that answer with citations.

use super::*;

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

    creation_refuses_what_it_cannot_build(&platform, &admin, &reader).await;
    // The admin made the collection; it is theirs (another key's is covered by
    // isolation.rs), so the admin reads it below.
    ingestion_creates_then_changes_nothing(&platform, &admin, &admin).await;
    paraphrases_find_their_document_in_every_mode(&platform, &admin).await;
    search_refusals_name_their_field(&platform, &admin).await;
    a_jsonl_upload_names_a_broken_line(&platform, &admin).await;
    replacing_keeps_one_copy_and_deleting_removes(&platform, &admin, &admin).await;
    a_streamed_upload_reports_progress_and_where_it_stopped(&platform, &admin, &admin).await;
    an_upload_refused_in_its_first_batch_is_an_http_error(&platform, &admin).await;
    a_bad_query_parameter_is_refused_in_the_error_shape(&platform, &admin).await;
    chats_cite_their_sources(&platform, &admin).await;
    a_long_question_drops_sources_and_says_so(&platform, &admin).await;
    the_collection_is_deleted(&platform, &admin, &admin).await;
    platform.stop().await;
}

/// Uploads that must stop (issue 31, items 1 and 4): one whose client leaves, one
/// over the documents cap, and one into a collection deleted meanwhile, which ends
/// with an error while the process, and every other request, carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_stops_when_its_client_leaves_or_its_collection_goes() {
    use tokio::io::AsyncWriteExt as _;

    let config = slough_gateway::Config {
        max_body_bytes: 4 * 1024 * 1024,
        ..gateway_config()
    };
    let platform = Platform::start(config, inference_config()).await;
    let admin = platform.admin_key.clone();
    let documents = |count: usize| -> Value {
        let many: Vec<Value> = (0..count)
            .map(|i| json!({"id": format!("n{i}"), "text": format!("Maintenance note {i}: the left tyre of aircraft {i} was checked.")}))
            .collect();
        json!({"documents": many})
    };
    let create = || async {
        let created = platform
            .send(
                "/v1/collections",
                &admin,
                &json!({"name": "bulk", "embedding_model": EMBED}),
            )
            .await;
        assert_eq!(created.status(), 201);
    };
    let stored = || async {
        let described: Value = platform.get_json("/v1/collections/bulk", &admin).await;
        described["documents"].as_u64().unwrap_or(0)
    };
    create().await;

    // A plain (not streamed) upload whose client leaves after the first batch stops
    // within a batch; before, all 3000 documents went in for nobody.
    let body = documents(3000).to_string();
    let address = platform.url.trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "POST /v1/collections/bulk/documents HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \
         {admin}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(body.as_bytes()).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while stored().await == 0 {
        assert!(std::time::Instant::now() < deadline, "nothing was ingested");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(socket);
    // The batch being stored when the client left is finished (on a slow machine that
    // takes seconds), then nothing more: the count settles at most one batch (32
    // documents) past the one running when it left.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut after_leaving = stored().await;
    loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let now = stored().await;
        if now == after_leaving {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the upload went on: {now}"
        );
        after_leaving = now;
    }
    assert!(
        after_leaving <= 64,
        "the upload went on: {after_leaving} stored"
    );

    // Over the cap of documents per upload: 413 naming `documents`, nothing stored.
    let over = platform
        .send("/v1/collections/bulk/documents", &admin, &documents(10_001))
        .await;
    assert_eq!(over.status(), 413);
    let error: Value = over.json().await.unwrap();
    assert_eq!(error["error"]["param"], "documents", "{error}");
    assert_eq!(stored().await, after_leaving);

    // Deleted while an upload runs: the upload ends with an error naming the deletion
    // (409 when it stopped the ingest, 404 when it came between two batches), the
    // service stays up, and a new collection of the name starts empty and works.
    let delete = || async {
        let deleted = platform
            .http
            .delete(format!("{}/v1/collections/bulk", platform.url))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(deleted.status(), 200);
    };
    delete().await;
    create().await;
    for round in 0..3 {
        let upload = platform
            .post("/v1/collections/bulk/documents", &admin, &documents(3000))
            .send();
        let upload = tokio::spawn(upload);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while stored().await == 0 {
            assert!(std::time::Instant::now() < deadline, "nothing was ingested");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        delete().await;
        let answer = upload.await.unwrap().unwrap();
        let status = answer.status().as_u16();
        let error: Value = answer.json().await.unwrap();
        let message = error["error"]["message"].as_str().unwrap();
        assert!(
            status == 409 && message.contains("`bulk` was deleted during the ingest")
                || status == 404 && message.contains("`bulk` does not exist"),
            "round {round}: {status} {message}"
        );
        let models = platform.get("/v1/models", &admin).send().await.unwrap();
        assert_eq!(models.status(), 200);
        create().await;
        assert_eq!(stored().await, 0, "round {round}");
    }
    let ingested = platform
        .send("/v1/collections/bulk/documents", &admin, &aviation_corpus())
        .await;
    assert_eq!(ingested.status(), 200);
    let found = platform
        .post_json(
            "/v1/collections/bulk/search",
            &admin,
            &json!({"query": "what produces lift?", "top_k": 1}),
        )
        .await;
    assert_eq!(found["hits"][0]["document_id"], "wings", "{found}");
    assert_eq!(stored().await, 4);
    platform.stop().await;
}

/// Create: refusals first, each naming its problem.
async fn creation_refuses_what_it_cannot_build(platform: &Platform, admin: &str, reader: &str) {
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
        let response = platform.send("/v1/collections", admin, &body).await;
        let got = response.status();
        let error: Value = response.json().await.unwrap();
        assert_eq!(got, status, "{body} {error}");
        assert_eq!(error["error"]["param"].as_str(), param, "{error}");
    }
    let create =
        json!({"name": "docs", "embedding_model": EMBED, "chunk_size": 32, "chunk_overlap": 4});
    assert_eq!(
        platform
            .send("/v1/collections", reader, &create)
            .await
            .status(),
        403
    );
    let response = platform.send("/v1/collections", admin, &create).await;
    assert_eq!(response.status(), 201);
    assert_eq!(
        platform
            .send("/v1/collections", admin, &create)
            .await
            .status(),
        409
    );
}

/// Ingest: every document created, then the same again changes nothing.
async fn ingestion_creates_then_changes_nothing(platform: &Platform, admin: &str, reader: &str) {
    let ingested = platform
        .post_json("/v1/collections/docs/documents", admin, &aviation_corpus())
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
        .post_json("/v1/collections/docs/documents", admin, &aviation_corpus())
        .await;
    assert_eq!(again["chunks"], 0, "{again}");
    let described: Value = platform.get_json("/v1/collections/docs", reader).await;
    assert_eq!(described["documents"], 4);
    assert_eq!(described["chunks"].as_u64(), Some(chunks));
    assert_eq!(described["dimensions"], 384);
}

/// Paraphrased questions find their document first, in every mode.
async fn paraphrases_find_their_document_in_every_mode(platform: &Platform, reader: &str) {
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
                    reader,
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
            reader,
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
            reader,
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
}

/// Search refusals.
async fn search_refusals_name_their_field(platform: &Platform, reader: &str) {
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
        let response = platform.send(path, reader, &body).await;
        assert_eq!(response.status(), status, "{path} {body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["param"].as_str(), param, "{error}");
    }
}

/// A JSONL upload as a multipart form; a broken line is named.
async fn a_jsonl_upload_names_a_broken_line(platform: &Platform, admin: &str) {
    let jsonl =
        "{\"id\": \"radio\", \"text\": \"Pilots talk to the tower on a VHF radio frequency.\"}\n";
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::text(jsonl).file_name("more.jsonl"),
    );
    let uploaded = platform
        .http
        .post(format!("{}/v1/collections/docs/documents", platform.url))
        .bearer_auth(admin)
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
        .bearer_auth(admin)
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
}

/// Replacing a document keeps one copy of it; deleting removes it from search.
async fn replacing_keeps_one_copy_and_deleting_removes(
    platform: &Platform,
    admin: &str,
    reader: &str,
) {
    let replaced = platform
        .post_json(
            "/v1/collections/docs/documents",
            admin,
            &json!({"documents": [{"id": "tower", "text": "The control tower is closed at night."}]}),
        )
        .await;
    assert_eq!(replaced["documents"][0]["status"], "replaced");
    let found = platform
        .post_json(
            "/v1/collections/docs/search",
            reader,
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
        .bearer_auth(admin)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    let found = platform
        .post_json(
            "/v1/collections/docs/search",
            reader,
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
}

/// A streamed upload reports progress after each batch of 32 documents, then the
/// outcome; a document refused in the second batch ends the stream with an error
/// event that says how far it got, and the first batch stays ingested.
async fn a_streamed_upload_reports_progress_and_where_it_stopped(
    platform: &Platform,
    admin: &str,
    reader: &str,
) {
    let many: Vec<Value> = (0..40)
        .map(|i| json!({"id": format!("note-{i}"), "text": format!("Maintenance note {i}: check the tyres.")}))
        .collect();
    let response = platform
        .send(
            "/v1/collections/docs/documents?stream=true",
            admin,
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
            admin,
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
    let described: Value = platform.get_json("/v1/collections/docs", reader).await;
    assert_eq!(described["documents"], 4 + 40 + 32, "{described}");
}

/// An upload refused in its first batch is an HTTP error, not a stream.
async fn an_upload_refused_in_its_first_batch_is_an_http_error(platform: &Platform, admin: &str) {
    let response = platform
        .send(
            "/v1/collections/docs/documents?stream=true",
            admin,
            &json!({"documents": [{"id": "", "text": "No id."}]}),
        )
        .await;
    assert_eq!(response.status(), 400);
}

/// A query parameter that does not parse is refused in the API's error shape.
async fn a_bad_query_parameter_is_refused_in_the_error_shape(platform: &Platform, admin: &str) {
    let response = platform
        .send(
            "/v1/collections/docs/documents?stream=maybe",
            admin,
            &json!({"documents": []}),
        )
        .await;
    assert_eq!(response.status(), 400);
    let refused: Value = response.json().await.unwrap();
    assert_eq!(refused["error"]["param"], "query", "{refused}");
}

/// Retrieval-augmented chat: the sources are cited, in the answer and the stream.
async fn chats_cite_their_sources(platform: &Platform, reader: &str) {
    let question = json!([{"role": "user", "content": "Which fuel does a turbofan burn?"}]);
    let answered = platform
        .post_json(
            "/v1/chat/completions",
            reader,
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
            reader,
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
}

/// A long question leaves room for only some sources: the rest are dropped, said so.
async fn a_long_question_drops_sources_and_says_so(platform: &Platform, reader: &str) {
    let long = "Tell me everything about aircraft. ".repeat(40);
    let squeezed = platform
        .post_json(
            "/v1/chat/completions",
            reader,
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
    // A collection that does not exist is a 404, not an answer without sources.
    let question = json!([{"role": "user", "content": "Which fuel does a turbofan burn?"}]);
    let unknown = platform
        .send(
            "/v1/chat/completions",
            reader,
            &json!({"model": CHAT, "messages": question, "rag": {"collection": "nope"}}),
        )
        .await;
    assert_eq!(unknown.status(), 404);
}

/// Deleting the collection.
async fn the_collection_is_deleted(platform: &Platform, admin: &str, reader: &str) {
    let gone = platform
        .http
        .delete(format!("{}/v1/collections/docs", platform.url))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 200);
    let list: Value = platform.get_json("/v1/collections", reader).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0);
}

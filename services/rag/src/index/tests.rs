//! The backend suite: what every vector store must do. It runs on the embedded backend
//! always, and on a Qdrant server when `QDRANT_URL` (and `QDRANT_API_KEY` if it needs
//! one) names one; without it, each test says that the server run was skipped.

use std::{sync::Arc, time::Duration};

use serde_json::json;
use slough_protocol::rag::{SearchHit, SearchMode};

use super::*;

/// The backends to run a test on: a fresh edge directory, and the server when there is
/// one (collections under a prefix of this run's own).
fn backends(test: &str) -> Vec<(Backend, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let mut all = vec![(Backend::Edge(EdgeBackend::new(dir.path())), Some(dir))];
    match std::env::var("QDRANT_URL") {
        Ok(url) if !url.is_empty() => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let server = ServerBackend::new(server::ServerSettings {
                url,
                api_key: std::env::var("QDRANT_API_KEY").ok(),
                timeout: Duration::from_secs(30),
                connect_timeout: Duration::from_secs(5),
                collection_prefix: format!("slough_test_{}_{nanos}_", std::process::id()),
            })
            .unwrap();
            all.push((Backend::Server(server), None));
        }
        _ => eprintln!("{test}: Qdrant server run skipped (QDRANT_URL is not set)"),
    }
    all
}

/// A unit vector along `axis` of 4 dimensions, nudged toward `toward`.
fn vector(axis: usize, toward: usize) -> Vec<f32> {
    let mut values = vec![0.0; 4];
    values[axis] = 1.0;
    values[toward] += 0.3;
    values
}

fn chunk(document: &str, hash: &str, index: u32, text: &str, dense: Vec<f32>) -> ChunkPoint {
    ChunkPoint {
        document_id: document.to_owned(),
        content_hash: hash.to_owned(),
        chunk_index: index,
        start: u64::from(index) * 100,
        end: u64::from(index) * 100 + text.len() as u64,
        text: text.to_owned(),
        metadata: Some(
            json!({"topic": if document == "wings" { "lift" } else { "engines" }, "year": 1960})
                .as_object()
                .cloned()
                .unwrap(),
        ),
        dense,
    }
}

fn query(text: &str, dense: Option<Vec<f32>>, mode: SearchMode) -> IndexQuery {
    IndexQuery {
        text: text.to_owned(),
        dense,
        mode,
        top_k: 3,
        filter: None,
    }
}

fn ids(hits: &[SearchHit]) -> Vec<(String, u32)> {
    hits.iter()
        .map(|hit| (hit.document_id.clone(), hit.chunk_index))
        .collect()
}

fn corpus() -> Vec<ChunkPoint> {
    vec![
        chunk(
            "wings",
            "h1",
            0,
            "The wing produces lift from the airflow.",
            vector(0, 1),
        ),
        chunk(
            "wings",
            "h1",
            1,
            "Flaps increase lift at low speed.",
            vector(1, 0),
        ),
        chunk(
            "engines",
            "h2",
            0,
            "Jet engines burn kerosene for thrust.",
            vector(2, 3),
        ),
        chunk(
            "engines",
            "h2",
            1,
            "Propellers convert torque into thrust.",
            vector(3, 2),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dense_sparse_and_hybrid_find_their_chunks() {
    for (backend, _dir) in backends("dense_sparse_and_hybrid_find_their_chunks") {
        let index = backend.create("aero", 4).await.unwrap();
        index.upsert(corpus()).await.unwrap();
        assert_eq!(index.count().await.unwrap(), 4);

        let dense = index
            .search(query("", Some(vector(2, 0)), SearchMode::Dense))
            .await
            .unwrap();
        assert_eq!(ids(&dense)[0], ("engines".to_owned(), 0));
        assert!(dense[0].score > dense[1].score);
        let sparse = index
            .search(query("flaps lift", None, SearchMode::Sparse))
            .await
            .unwrap();
        assert_eq!(ids(&sparse)[0], ("wings".to_owned(), 1));
        // Hybrid: the words point at the propellers, the vector at the jet engines; both
        // come first, ahead of the wings.
        let hybrid = index
            .search(query(
                "propellers torque",
                Some(vector(2, 3)),
                SearchMode::Hybrid,
            ))
            .await
            .unwrap();
        let top: Vec<_> = ids(&hybrid).into_iter().take(2).collect();
        assert!(top.contains(&("engines".to_owned(), 0)), "{hybrid:#?}");
        assert!(top.contains(&("engines".to_owned(), 1)), "{hybrid:#?}");
        let hit = &sparse[0];
        assert_eq!(hit.text, "Flaps increase lift at low speed.");
        assert_eq!((hit.start, hit.end), (100, 133));
        assert_eq!(hit.metadata.as_ref().unwrap()["topic"], "lift");
        drop(index);
        backend.delete("aero").await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_filters_narrow_and_bad_ones_are_named() {
    for (backend, _dir) in backends("metadata_filters_narrow_and_bad_ones_are_named") {
        let index = backend.create("aero", 4).await.unwrap();
        index.upsert(corpus()).await.unwrap();
        let mut filtered = query("", Some(vector(2, 0)), SearchMode::Dense);
        filtered.filter = json!({"topic": "lift", "year": 1960}).as_object().cloned();
        let hits = index.search(filtered.clone()).await.unwrap();
        assert_eq!(hits.len(), 2);
        assert!(hits.iter().all(|hit| hit.document_id == "wings"));
        filtered.mode = SearchMode::Hybrid;
        filtered.text = "thrust".to_owned();
        let hits = index.search(filtered.clone()).await.unwrap();
        assert!(
            hits.iter().all(|hit| hit.document_id == "wings"),
            "{hits:#?}"
        );
        for bad in [json!({"topic": ["lift"]}), json!({"year": 1960.5})] {
            filtered.filter = bad.as_object().cloned();
            let err = index.search(filtered.clone()).await.unwrap_err();
            assert!(matches!(err, IndexError::FilterValue(_)), "{err}");
            // Only whole numbers match: the message says so.
            assert!(err.to_string().contains("an integer"), "{err}");
        }
        filtered.filter = json!({"a.b": "x"}).as_object().cloned();
        assert!(matches!(
            index.search(filtered).await,
            Err(IndexError::FilterField(_))
        ));
        drop(index);
        backend.delete("aero").await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_and_deleting_a_document_leaves_no_stale_chunks() {
    for (backend, _dir) in backends("replacing_and_deleting_a_document_leaves_no_stale_chunks") {
        let index = backend.create("aero", 4).await.unwrap();
        index.upsert(corpus()).await.unwrap();
        // The wings document again, new text, one chunk: upsert, then drop older hashes.
        index
            .upsert(vec![chunk(
                "wings",
                "h3",
                0,
                "Wings are airfoils.",
                vector(0, 2),
            )])
            .await
            .unwrap();
        index.delete_document("wings", Some("h3")).await.unwrap();
        assert_eq!(index.count().await.unwrap(), 3);
        let hits = index
            .search(query("wings airfoils lift flaps", None, SearchMode::Sparse))
            .await
            .unwrap();
        let wings: Vec<_> = hits
            .iter()
            .filter(|hit| hit.document_id == "wings")
            .collect();
        assert_eq!(wings.len(), 1);
        assert_eq!(wings[0].text, "Wings are airfoils.");
        index.delete_document("engines", None).await.unwrap();
        assert_eq!(index.count().await.unwrap(), 1);
        drop(index);
        backend.delete("aero").await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopened_index_holds_what_was_written() {
    for (backend, dir) in backends("a_reopened_index_holds_what_was_written") {
        {
            let index = backend.create("aero", 4).await.unwrap();
            index.upsert(corpus()).await.unwrap();
            index.delete_document("engines", None).await.unwrap();
        }
        let reopened = backend.open("aero").await.unwrap();
        assert_eq!(reopened.count().await.unwrap(), 2);
        let hits = reopened
            .search(query("flaps", Some(vector(1, 0)), SearchMode::Hybrid))
            .await
            .unwrap();
        assert_eq!(ids(&hits)[0], ("wings".to_owned(), 1));
        drop(reopened);
        backend.delete("aero").await.unwrap();
        if let Some(dir) = dir {
            assert!(!dir.path().join("aero").exists());
        }
        assert!(backend.open("aero").await.is_err(), "a deleted index opens");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_and_readers() {
    for (backend, _dir) in backends("concurrent_writers_and_readers") {
        let index = Arc::new(backend.create("aero", 4).await.unwrap());
        let writers: Vec<_> = (0..4)
            .map(|writer| {
                let index = Arc::clone(&index);
                tokio::spawn(async move {
                    for batch in 0..10u32 {
                        let points = (0..10u32)
                            .map(|i| {
                                chunk(
                                    &format!("doc-{writer}-{batch}"),
                                    "h",
                                    i,
                                    "thrust and lift",
                                    vector((i % 4) as usize, ((i + 1) % 4) as usize),
                                )
                            })
                            .collect();
                        index.upsert(points).await.unwrap();
                    }
                })
            })
            .collect();
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let index = Arc::clone(&index);
                tokio::spawn(async move {
                    for _ in 0..20 {
                        let hits = index
                            .search(query("lift", Some(vector(0, 1)), SearchMode::Hybrid))
                            .await
                            .unwrap();
                        assert!(hits.len() <= 3);
                    }
                })
            })
            .collect();
        for task in writers.into_iter().chain(readers) {
            task.await.unwrap();
        }
        assert_eq!(index.count().await.unwrap(), 400);
        drop(index);
        backend.delete("aero").await.unwrap();
    }
}

/// Optimizing an edge shard while writers and readers go on: the shard builds its HNSW
/// index (a low threshold here), loses nothing, and dense search still finds the
/// nearest chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_shard_builds_its_hnsw_index_while_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let backend = EdgeBackend::new(dir.path()).with_indexing_threshold_kb(16);
    let edge = Arc::new(backend.create("aero", 4).unwrap());
    let index = Arc::new(Index::Edge(Arc::clone(&edge)));
    let spread = |n: u32| {
        let angle = n as f32 * 0.001;
        vec![angle.cos(), angle.sin(), 0.1, 0.0]
    };
    let first: Vec<_> = (0..3000u32)
        .map(|i| chunk(&format!("d{i}"), "h", 0, "lift", spread(i)))
        .collect();
    index.upsert(first).await.unwrap();
    let writer = {
        let index = Arc::clone(&index);
        tokio::spawn(async move {
            for batch in 0..20u32 {
                let points = (0..50u32)
                    .map(|i| {
                        let n = 3000 + batch * 50 + i;
                        chunk(&format!("d{n}"), "h", 0, "thrust", spread(n))
                    })
                    .collect();
                index.upsert(points).await.unwrap();
            }
        })
    };
    let reader = {
        let index = Arc::clone(&index);
        tokio::spawn(async move {
            for _ in 0..20 {
                let hits = index
                    .search(query("lift", Some(spread(42)), SearchMode::Dense))
                    .await
                    .unwrap();
                assert_eq!(hits[0].document_id, "d42");
            }
        })
    };
    assert!(index.optimize().await.unwrap(), "nothing was optimized");
    writer.await.unwrap();
    reader.await.unwrap();
    index.optimize().await.unwrap();
    assert_eq!(index.count().await.unwrap(), 4000);
    let info = edge.info().unwrap();
    assert!(info.indexed_vectors_count > 0, "{info:?}");
    let hits = index
        .search(query("", Some(spread(3500)), SearchMode::Dense))
        .await
        .unwrap();
    assert_eq!(hits[0].document_id, "d3500");
    // Reopened, the index is still there.
    drop(index);
    drop(edge);
    let reopened = backend.open("aero").unwrap();
    assert_eq!(reopened.count().unwrap(), 4000);
    assert!(reopened.info().unwrap().indexed_vectors_count > 0);
}

/// A shard closed while writes and searches run on it (a collection deleted during an
/// ingest): the calls under way finish, later ones fail with `Closed`, its files can go,
/// and a new collection of the same name starts empty. Before, Qdrant Edge panicked
/// flushing into the deleted directory, and again while unwinding, aborting the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_closed_under_writes_refuses_them_and_its_files_can_go() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::Edge(EdgeBackend::new(dir.path()));
    let index = Arc::new(backend.create("busy", 4).await.unwrap());
    let writer = {
        let index = Arc::clone(&index);
        tokio::spawn(async move {
            for n in 0u32.. {
                let points = (0..20u32)
                    .map(|i| chunk(&format!("d{n}-{i}"), "h", 0, "lift", vector(0, 1)))
                    .collect();
                if let Err(err) = index.upsert(points).await {
                    return (n, err);
                }
            }
            unreachable!()
        })
    };
    let reader = {
        let index = Arc::clone(&index);
        tokio::spawn(async move {
            loop {
                let searched = index
                    .search(query("lift", Some(vector(0, 1)), SearchMode::Hybrid))
                    .await;
                if let Err(err) = searched {
                    return err;
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    index.close().await.unwrap();
    backend.delete("busy").await.unwrap();
    let (written, err) = writer.await.expect("the writer ends without a panic");
    assert!(written > 0, "nothing was written before the close");
    assert!(matches!(err, IndexError::Closed), "{err}");
    let err = reader.await.expect("the reader ends without a panic");
    assert!(matches!(err, IndexError::Closed), "{err}");
    assert!(!dir.path().join("busy").exists());
    drop(index);
    let again = backend.create("busy", 4).await.unwrap();
    assert_eq!(again.count().await.unwrap(), 0);
}

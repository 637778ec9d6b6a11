//! The store on both backends: SQLite under a temporary data directory and a fresh
//! PostgreSQL database (127.0.0.1:5432 unless `SLOUGH_TEST_POSTGRES_URL` says otherwise).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

use chrono::Utc;
use sea_orm::{ActiveModelTrait as _, ColumnTrait as _, EntityTrait as _, QueryFilter as _, Set};
use secrecy::SecretString;
use slough_store::{
    Store,
    entities::{api_key, usage},
};
use slough_testkit::TestPostgres;

fn key(prefix: &str) -> api_key::ActiveModel {
    api_key::ActiveModel {
        id: Set(uuid::Uuid::new_v4()),
        name: Set(format!("key {prefix}")),
        prefix: Set(prefix.to_owned()),
        secret_hash: Set("hash".to_owned()),
        scopes: Set("inference".to_owned()),
        created_at: Set(Utc::now()),
        revoked_at: Set(None),
        allowed_models: Set(Some("smollm2".to_owned())),
        requests_per_minute: Set(Some(60)),
        tokens_per_minute: Set(None),
        token_budget: Set(Some(1_000_000)),
        pii_policy: Set(Some("mask".to_owned())),
    }
}

/// Writes, reads back, refuses a duplicate prefix without losing the first row, and
/// finds the rows again after reopening (migrations run again and change nothing).
async fn round_trip(open: impl AsyncFn() -> Store) {
    let store = open().await;
    store.ping().await.unwrap();
    key("sk-aaaa").insert(store.connection()).await.unwrap();
    key("sk-bbbb").insert(store.connection()).await.unwrap();
    let duplicate = key("sk-aaaa").insert(store.connection()).await;
    assert!(
        duplicate.is_err(),
        "a second key with the same prefix must be refused"
    );
    store.close().await;

    let store = open().await;
    let found = api_key::Entity::find()
        .filter(api_key::Column::Prefix.eq("sk-aaaa"))
        .all(store.connection())
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].name, "key sk-aaaa");
    assert_eq!(found[0].allowed_models.as_deref(), Some("smollm2"));
    assert_eq!(found[0].token_budget, Some(1_000_000));
    usage::ActiveModel {
        id: Set(uuid::Uuid::new_v4()),
        key_id: Set(found[0].id),
        endpoint: Set("chat.completions".to_owned()),
        model: Set("smollm2".to_owned()),
        prompt_tokens: Set(12),
        completion_tokens: Set(30),
        latency_ms: Set(250),
        status: Set(200),
        created_at: Set(Utc::now()),
        pii_masked: Set(Some(r#"{"EMAIL_ADDRESS":1}"#.to_owned())),
        end_user: Set(Some("user-7".to_owned())),
    }
    .insert(store.connection())
    .await
    .unwrap();
    let rows = usage::Entity::find()
        .filter(usage::Column::KeyId.eq(found[0].id))
        .all(store.connection())
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].completion_tokens, 30);
    assert_eq!(
        api_key::Entity::find()
            .all(store.connection())
            .await
            .unwrap()
            .len(),
        2
    );
    store.close().await;
}

#[tokio::test]
async fn sqlite_file_under_the_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    round_trip(async || Store::open(None, &data_dir).await.unwrap()).await;
    assert!(data_dir.join("slough.db").exists());
    let store = Store::open(None, &data_dir).await.unwrap();
    assert_eq!(store.backend(), "sqlite");
}

#[tokio::test]
async fn postgres_when_a_database_url_is_given() {
    let database = TestPostgres::create().await;
    let url = SecretString::from(database.url().to_owned());
    let unused = tempfile::tempdir().unwrap();
    round_trip(async || Store::open(Some(&url), unused.path()).await.unwrap()).await;
    let store = Store::open(Some(&url), unused.path()).await.unwrap();
    assert_eq!(store.backend(), "postgres");
    store.close().await;
    database.drop_database().await;
}

#[tokio::test]
async fn replicas_starting_together_migrate_once() {
    let database = TestPostgres::create().await;
    let url = SecretString::from(database.url().to_owned());
    let unused = tempfile::tempdir().unwrap();
    let opens = (0..4).map(|_| Store::open(Some(&url), unused.path()));
    let stores = futures::future::join_all(opens).await;
    for store in stores {
        let store = store.expect("every replica opens the store");
        store.close().await;
    }
    database.drop_database().await;
}

#[tokio::test]
async fn unusable_urls_are_named() {
    let unused = tempfile::tempdir().unwrap();
    let url = SecretString::from("mysql://me:secret@db/x".to_owned());
    let err = Store::open(Some(&url), unused.path()).await.unwrap_err();
    let message = err.to_string();
    assert!(message.contains("mysql://me:***@db/x"), "{message}");
    assert!(!message.contains("secret"));
}

#[tokio::test]
async fn admin_keys_of_an_older_store_gain_the_fine_tune_scope() {
    use sea_orm_migration::MigratorTrait as _;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slough.db");
    let url = format!("sqlite://{}?mode=rwc", path.display());
    // The store as it was before fine-tuning: the first four migrations.
    let old = sea_orm::Database::connect(&url).await.unwrap();
    slough_store::Migrator::up(&old, Some(4)).await.unwrap();
    // Rows as that schema holds them: without the columns added since.
    let old_row = |mut row: api_key::ActiveModel| {
        row.pii_policy = sea_orm::ActiveValue::NotSet;
        api_key::Entity::insert(row).exec_without_returning(&old)
    };
    let mut admin = key("sk-admin");
    admin.scopes = Set("admin inference rag".to_owned());
    old_row(admin).await.unwrap();
    old_row(key("sk-plain")).await.unwrap();
    old.close().await.unwrap();

    let store = Store::open(None, dir.path()).await.unwrap();
    let scopes = |prefix: &'static str| {
        let store = store.clone();
        async move {
            api_key::Entity::find()
                .filter(api_key::Column::Prefix.eq(prefix))
                .one(store.connection())
                .await
                .unwrap()
                .unwrap()
                .scopes
        }
    };
    assert_eq!(scopes("sk-admin").await, "admin inference rag fine-tune");
    assert_eq!(scopes("sk-plain").await, "inference");
    store.close().await;
}

/// A database that refuses connections is told apart from a wrong query (503, not 500,
/// for callers), and the same store works again once the database is back.
#[tokio::test]
async fn an_unreachable_database_is_unavailable_and_comes_back() {
    use sea_orm::ConnectionTrait as _;
    let database = TestPostgres::create().await;
    let url = SecretString::from(database.url().to_owned());
    let unused = tempfile::tempdir().unwrap();
    let store = Store::open(Some(&url), unused.path()).await.unwrap();
    let wrong = store
        .connection()
        .execute_unprepared("SELECT * FROM no_such_table")
        .await
        .unwrap_err();
    assert!(!slough_store::is_unavailable(&wrong), "{wrong}");

    let admin = sea_orm::Database::connect(TestPostgres::admin_url())
        .await
        .unwrap();
    let name = database.url().rsplit('/').next().unwrap().to_owned();
    let allow = async |allow: bool| {
        admin
            .execute_unprepared(&format!(
                "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS {allow}"
            ))
            .await
            .unwrap();
        if !allow {
            admin
                .execute_unprepared(&format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = '{name}' AND pid <> pg_backend_pid()"
                ))
                .await
                .unwrap();
        }
    };
    allow(false).await;
    let gone = store
        .connection()
        .execute_unprepared("SELECT 1")
        .await
        .unwrap_err();
    assert!(slough_store::is_unavailable(&gone), "{gone}");
    allow(true).await;
    store
        .connection()
        .execute_unprepared("SELECT 1")
        .await
        .unwrap();
    store.close().await;
    let _ = admin.close().await;
    database.drop_database().await;
}

fn audit_event(n: usize) -> slough_store::audit::NewEvent {
    slough_store::audit::NewEvent {
        actor: "key-a".to_owned(),
        actor_prefix: Some("sk-aaaa".to_owned()),
        action: "DELETE /v1/collections/{name}".to_owned(),
        resource_type: "collections".to_owned(),
        resource_id: Some(format!("notes-{n}")),
        summary: serde_json::json!({"params": {"name": format!("notes-{n}")}}),
        client_address: Some("127.0.0.1".to_owned()),
        request_id: Some(format!("req-{n}")),
        trace_id: None,
        status: if n.is_multiple_of(3) { 403 } else { 200 },
    }
}

/// The audit chain (issue 36): appends from many writers at once stay one line, and an
/// edited, deleted or inserted record is named by `verify`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_chain_names_the_first_record_changed_behind_its_back() {
    use sea_orm::ConnectionTrait as _;
    use slough_store::audit::{Broken, append, verify};

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(None, dir.path()).await.unwrap();
    let db = store.connection().clone();
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let db = db.clone();
            tokio::spawn(async move {
                for n in 0..5 {
                    append(&db, audit_event(w * 5 + n)).await.unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let verified = verify(&db).await.unwrap().unwrap();
    assert_eq!(verified.records, 40);
    assert_eq!(verified.last.as_ref().unwrap().0, 40);

    let sql = |statement: &str| {
        let db = db.clone();
        let statement = statement.to_owned();
        async move { db.execute_unprepared(&statement).await.unwrap() }
    };
    sql("UPDATE audit_events SET resource_id = 'other' WHERE seq = 12").await;
    assert_eq!(verify(&db).await.unwrap(), Err(Broken::Edited(12)));
    sql("DELETE FROM audit_events WHERE seq = 12").await;
    assert_eq!(verify(&db).await.unwrap(), Err(Broken::Unlinked(13)));
    store.close().await;
}

/// Audit retention (issue 36): pruning removes the oldest records behind a checkpoint
/// that keeps the chain verifiable, twice over; deleting the oldest records without one
/// is named, and so is an edited checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_old_audit_records_behind_a_checkpoint() {
    use sea_orm::ConnectionTrait as _;
    use slough_store::audit::{Broken, append, prune, verify};

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(None, dir.path()).await.unwrap();
    let db = store.connection().clone();
    let sql = |statement: String| {
        let db = db.clone();
        async move { db.execute_unprepared(&statement).await.unwrap() }
    };
    for n in 0..10 {
        append(&db, audit_event(n)).await.unwrap();
    }
    // Records 1 to 6 are a year old.
    sql("UPDATE audit_events SET at = '2025-01-01 00:00:00+00:00' WHERE seq <= 6".to_owned()).await;
    // Their hashes are over their old times: re-hash the chain as it would have been.
    rehash(&db).await;
    assert!(verify(&db).await.unwrap().is_ok());
    let cutoff = chrono::Utc::now() - chrono::Duration::days(30);
    let pruned = prune(&db, cutoff).await.unwrap().unwrap();
    assert_eq!((pruned.removed, pruned.checkpoint), (6, 11));
    let verified = verify(&db).await.unwrap().unwrap();
    assert_eq!(verified.records, 5);
    assert_eq!(verified.checkpoint, Some(11));
    assert_eq!(prune(&db, cutoff).await.unwrap(), None);

    // Later, everything up to the checkpoint has aged out too: a second checkpoint.
    sql("UPDATE audit_events SET at = '2025-02-01 00:00:00+00:00' WHERE seq <= 11".to_owned())
        .await;
    rehash(&db).await;
    let pruned = prune(&db, cutoff).await.unwrap().unwrap();
    assert_eq!((pruned.removed, pruned.checkpoint), (5, 12));
    assert_eq!(verify(&db).await.unwrap().unwrap().checkpoint, Some(12));

    for n in 0..3 {
        append(&db, audit_event(n)).await.unwrap();
    }
    assert!(verify(&db).await.unwrap().is_ok());

    // Behind its back: the checkpoint edited (even with every hash recomputed, it then
    // vouches for nothing), or the oldest record deleted.
    sql("UPDATE audit_events SET summary = '{}' WHERE seq = 12".to_owned()).await;
    assert_eq!(verify(&db).await.unwrap(), Err(Broken::Edited(12)));
    rehash(&db).await;
    assert_eq!(verify(&db).await.unwrap(), Err(Broken::Unanchored(12)));
    sql("DELETE FROM audit_events WHERE seq = 12".to_owned()).await;
    assert_eq!(verify(&db).await.unwrap(), Err(Broken::Unanchored(13)));
    store.close().await;
}

/// Recomputes every record's hash in order, as if the chain had been written with
/// what it holds now (the test's way of ageing records).
async fn rehash(db: &sea_orm::DatabaseConnection) {
    use sea_orm::{ActiveModelTrait as _, EntityTrait as _, QueryOrder as _, Set};
    use slough_store::entities::audit_event;
    let rows = audit_event::Entity::find()
        .order_by_asc(audit_event::Column::Seq)
        .all(db)
        .await
        .unwrap();
    let mut prev: Option<String> = None;
    for mut row in rows {
        if let Some(prev) = &prev {
            row.prev_hash.clone_from(prev);
        }
        row.hash = slough_store::audit::hash(&row);
        prev = Some(row.hash.clone());
        let mut active: audit_event::ActiveModel = row.clone().into();
        active.prev_hash = Set(row.prev_hash.clone());
        active.hash = Set(row.hash.clone());
        active.reset_all().update(db).await.unwrap();
    }
}

//! The training service validating a large file (issue 31, item 3): a 64 MiB training
//! file is checked off the async runtime, so the service's other requests are answered
//! within a second meanwhile, and a job too large for `training.max_job_tokens` fails
//! validation naming the setting. Real NATS, the real SmolLM2 tokenizer and template.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use sea_orm::EntityTrait as _;
use slough_protocol::{
    ServiceKind,
    training::{self, CreateJob, CreateJobRequest, Job, JobRequest, JobStatus, ListJobs},
};
use slough_service::{CommonConfig, ServiceContext};
use slough_store::entities::file;
use slough_testkit::{CHAT_MODEL, TestNats};
use tokio_util::sync::CancellationToken;

const OWNER: &str = "key-a";

/// A training file of `bytes` or a little more: short chats, the last line broken when
/// `broken_end`.
fn training_file(bytes: usize, broken_end: bool) -> (Vec<u8>, usize) {
    let mut text = String::with_capacity(bytes + 256);
    let mut lines = 0;
    while text.len() < bytes {
        let (a, b) = (lines % 97, lines % 89);
        text.push_str(&format!(
            "{{\"messages\": [{{\"role\": \"user\", \"content\": \"What is {a} plus {b}?\"}}, \
             {{\"role\": \"assistant\", \"content\": \"{a} plus {b} is {}.\"}}]}}\n",
            a + b
        ));
        lines += 1;
    }
    if broken_end {
        text.push_str("{\"messages\": [{\"role\": \"user\", \"content\": \"no answer\"}]}\n");
        lines += 1;
    }
    (text.into_bytes(), lines)
}

/// Starts the training service; cancel the token to stop it, then await the task.
async fn start(
    common: &CommonConfig,
    nats: &TestNats,
    config: slough_training::Config,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let ctx = ServiceContext::start(
        ServiceKind::Training,
        slough_training::VERSION,
        common,
        &nats.url(),
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await
    .expect("context");
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        slough_training::run(ctx, config, stop)
            .await
            .expect("the training service runs");
    });
    (shutdown, task)
}

/// Stores `content` as file `id`, as the gateway stores an upload: its row, and its
/// content on the bus.
async fn upload(
    store: &slough_store::Store,
    files: &slough_bus::FileStore,
    id: &str,
    content: Vec<u8>,
) {
    files.put(id, &mut content.as_slice()).await.unwrap();
    let row = file::Model {
        id: id.to_owned(),
        owner: OWNER.to_owned(),
        filename: format!("{id}.jsonl"),
        purpose: "fine-tune".to_owned(),
        bytes: content.len() as i64,
        created_at: chrono::Utc::now(),
    };
    file::Entity::insert(file::ActiveModel::from(row))
        .exec(store.connection())
        .await
        .unwrap();
}

/// A job of the test chat model on `file`.
fn create(file: &str) -> CreateJobRequest {
    CreateJobRequest {
        owner: OWNER.to_owned(),
        job: serde_json::from_value::<CreateJob>(
            serde_json::json!({"model": CHAT_MODEL, "training_file": file}),
        )
        .unwrap(),
    }
}

/// The job `id` once its status is no longer `status` (at most `limit`).
async fn status_after(bus: &slough_bus::Bus, id: &str, status: JobStatus, limit: Duration) -> Job {
    let deadline = Instant::now() + limit;
    loop {
        let request = JobRequest {
            id: id.to_owned(),
            owner: None,
        };
        let now: Job = bus.call(&training::GET_JOB, &request).await.unwrap();
        if now.status != status {
            return now;
        }
        assert!(Instant::now() < deadline, "still {status:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// This process's resident memory, in MiB.
fn resident_mib() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .unwrap();
    let kib: i64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_is_validated_while_the_service_answers() {
    let nats = TestNats::start();
    let data = tempfile::tempdir().unwrap();
    let common = CommonConfig {
        data_dir: data.path().to_owned(),
        models_dir: Some(slough_testkit::test_models_dir()),
        ..CommonConfig::default()
    };
    let config = slough_training::Config {
        // The first job is validated to its last line, which is broken.
        max_job_tokens: u64::MAX,
        ..slough_training::Config::default()
    };
    let (shutdown, task) = start(&common, &nats, config).await;
    let bus = slough_bus::connect(&nats.url(), "test", common.nats.bus_options())
        .await
        .expect("bus");
    let list = || async {
        let request = ListJobs {
            owner: None,
            after: None,
            limit: None,
        };
        let started = Instant::now();
        let listed = bus.call(&training::LIST_JOBS, &request).await;
        (listed, started.elapsed())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while list().await.0.is_err() {
        assert!(
            Instant::now() < deadline,
            "the training service did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The file, as the gateway stores an upload: its row, and its content on the bus.
    let store = slough_store::Store::open(None, data.path()).await.unwrap();
    let files = slough_bus::FileStore::open(&bus).await.unwrap();
    let (big, lines) = training_file(64 * 1024 * 1024, true);
    upload(&store, &files, "file-big", big).await;
    let before = resident_mib();
    let job: Job = bus
        .call(&training::CREATE_JOB, &create("file-big"))
        .await
        .unwrap();

    // While it is validated, listing jobs answers within a second, every time.
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut answers = 0;
    let done = loop {
        let (listed, took) = list().await;
        let listed = listed.expect("list_jobs answers");
        slowest = slowest.max(took);
        answers += 1;
        let now = &listed.data[0];
        if now.status != JobStatus::ValidatingFiles {
            break now.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "still validating"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let grown = resident_mib() - before;
    eprintln!(
        "validated {lines} lines in {:.1} s; {answers} list_jobs answers, the slowest in {} ms; \
         resident memory grew by {grown} MiB",
        started.elapsed().as_secs_f64(),
        slowest.as_millis()
    );
    // The file (64 MiB) is read whole; its examples are counted, not kept.
    assert!(grown < 512, "{grown} MiB");
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    assert_eq!(done.id, job.id);
    assert_eq!(done.status, JobStatus::Failed);
    let error = done.error.unwrap();
    assert!(
        error.message.contains(&format!("line {lines}")),
        "{}",
        error.message
    );
    shutdown.cancel();
    task.await.unwrap();

    // With the default limit, a file of about 3.5 million tokens trained three times
    // is refused as soon as the count passes it, naming the setting.
    let (shutdown, task) = start(&common, &nats, slough_training::Config::default()).await;
    let (large, _) = training_file(16 * 1024 * 1024, false);
    upload(&store, &files, "file-large", large).await;
    let job: Job = bus
        .call(&training::CREATE_JOB, &create("file-large"))
        .await
        .unwrap();
    let done = status_after(
        &bus,
        &job.id,
        JobStatus::ValidatingFiles,
        Duration::from_secs(600),
    )
    .await;
    assert_eq!(done.status, JobStatus::Failed);
    let error = done.error.unwrap();
    assert_eq!(error.param.as_deref(), Some("training_file"));
    assert!(
        error.message.contains("training.max_job_tokens") && error.message.contains("3 epochs"),
        "{}",
        error.message
    );
    shutdown.cancel();
    task.await.unwrap();
    store.close().await;
}

/// A file store that cannot be read (JetStream without the bucket, as while a NATS
/// server is lost and a new leader is elected) does not fail a job as an invalid file:
/// validation tries again and queues the job once the content can be read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_store_that_cannot_be_read_delays_validation_and_fails_nothing() {
    let nats = TestNats::start();
    let data = tempfile::tempdir().unwrap();
    let mut common = CommonConfig {
        data_dir: data.path().to_owned(),
        models_dir: Some(slough_testkit::test_models_dir()),
        ..CommonConfig::default()
    };
    common.nats.request_timeout_ms = 1_000;
    let (shutdown, task) = start(&common, &nats, slough_training::Config::default()).await;
    let bus = slough_bus::connect(&nats.url(), "test", common.nats.bus_options())
        .await
        .expect("bus");
    let store = slough_store::Store::open(None, data.path()).await.unwrap();
    let files = slough_bus::FileStore::open(&bus).await.unwrap();
    let (content, _) = training_file(2_000, false);
    upload(&store, &files, "file-small", content.clone()).await;

    // The bucket goes away; the job is created and cannot be validated.
    let js = async_nats::jetstream::new(bus.client().clone());
    js.delete_object_store(slough_bus::files::BUCKET)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let job: Job = loop {
        // The service may not listen yet.
        match bus.call(&training::CREATE_JOB, &create("file-small")).await {
            Ok(job) => break job,
            Err(err) => assert!(Instant::now() < deadline, "cannot create the job: {err}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let request = JobRequest {
        id: job.id.clone(),
        owner: None,
    };
    let waiting: Job = bus.call(&training::GET_JOB, &request).await.unwrap();
    assert_eq!(
        waiting.status,
        JobStatus::ValidatingFiles,
        "{:?}",
        waiting.error
    );

    // The content is back: the job is validated and queued, not failed.
    let files = slough_bus::FileStore::open(&bus).await.unwrap();
    files
        .put("file-small", &mut content.as_slice())
        .await
        .unwrap();
    let done = status_after(
        &bus,
        &job.id,
        JobStatus::ValidatingFiles,
        Duration::from_secs(60),
    )
    .await;
    assert!(
        matches!(done.status, JobStatus::Queued | JobStatus::Running),
        "{:?}: {:?}",
        done.status,
        done.error
    );
    shutdown.cancel();
    task.await.unwrap();
    store.close().await;
}

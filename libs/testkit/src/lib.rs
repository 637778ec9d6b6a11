//! Test support: a real `nats-server` on a port it picks itself, with a throw-away
//! JetStream directory (or a cluster of them), and a fresh PostgreSQL database per test.
//! Tests use the real things, and no test guesses a free port: every server binds port 0
//! and says which port it got.

use std::path::Path;

use slough_service::{NatsServer, NatsServerOptions};

/// A `nats-server` for one test, stopped and its directory removed on drop.
pub struct TestNats {
    server: NatsServer,
    dir: tempfile::TempDir,
}

impl TestNats {
    /// Starts a server on a port it picks; panics with the reason when it cannot.
    pub fn start() -> TestNats {
        let dir = tempfile::tempdir().expect("temporary directory");
        let server = NatsServer::start(&NatsServerOptions {
            binary: None,
            port: 0,
            store_dir: dir.path().join("jetstream"),
            max_payload: None,
            cluster: None,
        })
        .unwrap_or_else(|err| panic!("cannot start nats-server for the test: {err}"));
        TestNats { server, dir }
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// A plain client connected to it.
    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .expect("connect to the test nats-server")
    }

    /// A scratch directory that lives as long as the server.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the server now (to test what happens when the bus goes away).
    pub fn stop(&mut self) {
        self.server.stop();
    }

    /// Starts the stopped server again on the same port (to test recovery).
    pub fn restart(&mut self) {
        self.server
            .restart()
            .unwrap_or_else(|err| panic!("cannot restart nats-server for the test: {err}"));
    }
}

/// A cluster of `nats-server`s with replicated JetStream, for one test; every node on
/// ports it picks, stopped and their directories removed on drop.
pub struct TestNatsCluster {
    nodes: Vec<NatsServer>,
    _dir: tempfile::TempDir,
}

impl TestNatsCluster {
    /// Starts `size` nodes, each routed to the first, and waits until the cluster can
    /// place a stream on every node; panics with the reason when it cannot.
    pub async fn start(size: usize) -> TestNatsCluster {
        let dir = tempfile::tempdir().expect("temporary directory");
        let nodes = NatsServer::start_cluster("slough-test", size, |index| NatsServerOptions {
            binary: None,
            port: 0,
            store_dir: dir.path().join(format!("node{index}")).join("jetstream"),
            max_payload: None,
            cluster: None,
        })
        .unwrap_or_else(|err| panic!("cannot start a cluster of {size} nats-servers: {err}"));
        let seeds = NatsServer::seed_urls(&nodes);
        let limit = std::time::Duration::from_secs(30);
        slough_bus::wait_for_cluster(&seeds, size, slough_bus::BusOptions::default(), limit)
            .await
            .unwrap_or_else(|err| panic!("the test cluster did not form: {err}"));
        TestNatsCluster { nodes, _dir: dir }
    }

    /// Node `index`'s client URL.
    pub fn url(&self, index: usize) -> String {
        self.nodes[index].url()
    }

    /// Kills node `index` (SIGTERM, then SIGKILL).
    pub fn stop(&mut self, index: usize) {
        self.nodes[index].stop();
    }

    /// Starts node `index` again on its ports with its store.
    pub fn restart(&mut self, index: usize) {
        self.nodes[index]
            .restart()
            .unwrap_or_else(|err| panic!("cannot restart nats-server node {index}: {err}"));
    }
}

/// A fresh, uniquely named PostgreSQL database, dropped at the end of the test.
pub struct TestPostgres {
    admin_url: String,
    name: String,
    url: String,
}

impl TestPostgres {
    /// The server to create databases on: `SLOUGH_TEST_POSTGRES_URL`, default
    /// `postgres://postgres@127.0.0.1:5432/postgres`.
    pub fn admin_url() -> String {
        std::env::var("SLOUGH_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
    }

    /// Creates the database; panics with the reason when the server does not answer
    /// (these tests are meant to run, not to be skipped).
    pub async fn create() -> TestPostgres {
        use sea_orm::ConnectionTrait as _;
        let admin_url = Self::admin_url();
        let name = format!("slough_test_{}", uuid::Uuid::new_v4().simple());
        let admin = sea_orm::Database::connect(&admin_url)
            .await
            .unwrap_or_else(|err| panic!("PostgreSQL at {admin_url} is not reachable: {err}"));
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let _ = admin.close().await;
        let (base, _) = admin_url.rsplit_once('/').expect("database URL has a path");
        let url = format!("{base}/{name}");
        TestPostgres {
            admin_url,
            name,
            url,
        }
    }

    /// The new database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Drops the database (connections to it must be closed first).
    pub async fn drop_database(self) {
        use sea_orm::ConnectionTrait as _;
        if let Ok(admin) = sea_orm::Database::connect(&self.admin_url).await {
            let _ = admin
                .execute_unprepared(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ))
                .await;
            let _ = admin.close().await;
        }
    }
}

/// The data directory `scripts/setup` filled: `SLOUGH_DATA_DIR`, else `~/.slough`.
pub fn setup_data_dir() -> std::path::PathBuf {
    std::env::var_os("SLOUGH_DATA_DIR")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| std::path::Path::new(&home).join(".slough"))
        })
        .unwrap_or_else(|| std::path::PathBuf::from(".slough"))
}

/// The evaluation data (real public datasets kept beside the repository, never in it):
/// `SLOUGH_EVAL_DATA`, else `../shared/data` next to the clone. `None`, after one line
/// on stderr naming `test` and where it looked, when it is not there: tests that need
/// it pass without running, and everything else runs.
pub fn eval_data_dir(test: &str) -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("SLOUGH_EVAL_DATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data")
        });
    if dir.is_dir() {
        return Some(dir);
    }
    eprintln!(
        "{test}: skipped, no evaluation data at {} (set SLOUGH_EVAL_DATA to its folder)",
        dir.display()
    );
    None
}

/// libonnxruntime as setup installed it (or `ORT_DYLIB_PATH`), for tests whose data
/// directory is a throw-away one.
pub fn onnxruntime_library() -> std::path::PathBuf {
    std::env::var_os("ORT_DYLIB_PATH")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| setup_data_dir().join("runtime/libonnxruntime.so"))
}

/// The value of one series, written as `/metrics` writes it (`name{label="value"}`), on
/// the admin server at `admin_url`; `None` when the series is absent.
pub async fn scrape_metric(admin_url: &str, series: &str) -> Option<f64> {
    let text = reqwest::get(format!("{admin_url}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("the metrics text");
    text.lines()
        .find(|line| line.starts_with(series))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

/// The id of the test chat model (SmolLM2-135M-Instruct) in [`test_models_dir`].
pub const CHAT_MODEL: &str = "smollm2";
/// The id of the test embedding model (all-MiniLM-L6-v2) in [`test_models_dir`].
pub const EMBED_MODEL: &str = "minilm";

/// A models directory holding the real default models as packages [`CHAT_MODEL`] and
/// [`EMBED_MODEL`], imported from setup's sources on first use in this process (an
/// import of an unchanged source is a no-op). The chat model is the exact graph, so that
/// tests may check greedy answers: the default graph's int8 activations flip near ties
/// (its quality is measured by perplexity, not asserted token by token).
pub fn test_models_dir() -> std::path::PathBuf {
    use slough_modelkit::package::{self, ImportOptions, Quiet};
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let data = setup_data_dir();
        let dir = data.join("cache/test-models");
        let sources = data.join("cache/sources");
        for (id, source) in [
            (CHAT_MODEL, sources.join("SmolLM2-135M-Instruct.Q4_1.gguf")),
            (EMBED_MODEL, sources.join("all-MiniLM-L6-v2")),
        ] {
            assert!(
                source.exists(),
                "{} is missing: run ./scripts/setup",
                source.display()
            );
            let options = ImportOptions {
                id: Some(id.to_owned()),
                build: slough_modelkit::llama::BuildOptions::EXACT,
                ..ImportOptions::default()
            };
            package::import(&source, &dir, &options, &Quiet).expect("import a test model");
        }
        dir
    })
    .clone()
}

//! Layered configuration: built-in defaults, then `slough.toml` (or the file named by
//! `SLOUGH_CONFIG`), then the environment (`SLOUGH_<SECTION>__<KEY>`, plus `NATS_URL`).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use figment::{
    Figment,
    providers::{Env, Format, Toml},
};
use secrecy::SecretString;
use serde::{Deserialize, de::DeserializeOwned};
use slough_telemetry::LogConfig;

/// Settings every service shares. Flattened into the `slough` binary's settings, so
/// these keys sit at the top level of `slough.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct CommonConfig {
    /// Where models, the SQLite file, vector shards and nats-server's store live
    /// (`SLOUGH_DATA_DIR`, default `~/.slough`).
    pub data_dir: PathBuf,
    /// The model packages (`SLOUGH_MODELS_DIR`, default `<data_dir>/models`): inference
    /// serves them, training reads base models and writes fine-tuned ones there, RAG
    /// reads embedding models' tokenizers and personality classifier heads. In a
    /// distributed layout every service must see the same directory.
    pub models_dir: Option<PathBuf>,
    /// The NATS server to use (`NATS_URL`). Unset: `slough up` starts its own.
    pub nats_url: Option<String>,
    /// PostgreSQL for the distributed layout (`SLOUGH_DATABASE_URL`); SQLite when unset.
    pub database_url: Option<SecretString>,
    /// The host name other machines use to reach this process's admin ports
    /// (`SLOUGH_ADVERTISE_HOST`). Unset: the listen address, or `$HOSTNAME` when
    /// listening on all interfaces.
    pub advertise_host: Option<String>,
    /// Logging.
    pub log: LogConfig,
    /// Bus behaviour.
    pub nats: NatsConfig,
}

impl CommonConfig {
    /// Where the model packages are: `models_dir`, else `<data_dir>/models`.
    pub fn models_dir(&self) -> PathBuf {
        self.models_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("models"))
    }

    /// Creates the data directory for its owner only, or makes an existing one so (and
    /// says so in the log), and has every file this process and its children (the
    /// nats-server) create from now on made for their owner only (umask 077): stores,
    /// shards and their write-ahead logs, checkpoints and uploads hold key hashes and
    /// users' text.
    #[allow(unsafe_code)] // std has no umask
    pub fn create_data_dir(&self) -> std::io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        // SAFETY: umask only sets this process's file-creation mask; it cannot fail.
        unsafe { libc::umask(0o077) };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.data_dir)?;
        let mode = std::fs::metadata(&self.data_dir)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&self.data_dir, std::fs::Permissions::from_mode(0o700))?;
            tracing::warn!(
                dir = %self.data_dir.display(),
                "the data directory was open to others (mode {mode:o}); it is now 0700"
            );
        }
        Ok(())
    }
}

impl Default for CommonConfig {
    fn default() -> Self {
        CommonConfig {
            data_dir: default_data_dir(),
            models_dir: None,
            nats_url: None,
            database_url: None,
            advertise_host: None,
            log: LogConfig::default(),
            nats: NatsConfig::default(),
        }
    }
}

/// The `[nats]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// How long to keep retrying the first connection before giving up, in seconds.
    pub connect_timeout_secs: u64,
    /// How long a request waits for its reply, in milliseconds.
    pub request_timeout_ms: u64,
    /// How often a stream producer proves it is alive, in milliseconds.
    pub heartbeat_ms: u64,
    /// Requests an instance handles at once per endpoint (a stream counts until it
    /// ends); beyond it a request is answered `overloaded` with a retry hint.
    pub max_in_flight: usize,
    /// `max_in_flight` for named endpoints (`generate = 64`, `ingest = 4`, ...).
    pub max_in_flight_by_endpoint: std::collections::HashMap<String, usize>,
    /// Copies JetStream keeps of the platform's streams (the fine-tuning queue, the
    /// files, the shared rates); 0: one per server of the cluster, at most three, as the
    /// cluster looks when a service creates them. Set it where services may start before
    /// every server is up (3 in `deploy/`).
    pub jetstream_replicas: usize,
    /// The `nats-server` that `slough up` starts when `NATS_URL` is unset.
    pub server: EmbeddedNatsConfig,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            connect_timeout_secs: 30,
            request_timeout_ms: 10_000,
            heartbeat_ms: 1_000,
            max_in_flight: 256,
            max_in_flight_by_endpoint: std::collections::HashMap::new(),
            jetstream_replicas: 0,
            server: EmbeddedNatsConfig::default(),
        }
    }
}

impl NatsConfig {
    /// The bus options these settings describe.
    pub fn bus_options(&self) -> slough_bus::BusOptions {
        slough_bus::BusOptions {
            connect_timeout: Duration::from_secs(self.connect_timeout_secs),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            jetstream_replicas: self.jetstream_replicas,
        }
    }

    /// The per-endpoint concurrency limits these settings describe.
    pub fn concurrency(&self) -> slough_bus::Concurrency {
        slough_bus::Concurrency {
            default: self.max_in_flight,
            by_endpoint: self.max_in_flight_by_endpoint.clone(),
        }
    }
}

/// The `[nats.server]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddedNatsConfig {
    /// Path of the `nats-server` binary; found on `PATH` when unset.
    pub binary: Option<PathBuf>,
    /// Port to listen on (loopback only). 4223, not NATS's usual 4222, so a NATS server
    /// the machine already runs is left alone; 0 picks a free port.
    pub port: u16,
    /// The largest message the server carries (its `max_payload`). 8 MiB by default:
    /// twice the gateway's largest body (`gateway.max_body_bytes`, 4 MiB), so that any
    /// body the gateway accepts fits one message.
    pub max_payload_bytes: usize,
    /// How many servers: 1, or a local cluster of 3 or 5 whose JetStream keeps three
    /// copies of everything (the first node on `port`, the others on free ports).
    pub nodes: usize,
}

impl Default for EmbeddedNatsConfig {
    fn default() -> Self {
        EmbeddedNatsConfig {
            binary: None,
            port: 4223,
            max_payload_bytes: 8 * 1024 * 1024,
            nodes: 1,
        }
    }
}

impl EmbeddedNatsConfig {
    /// How to start this server on `port` (0: a free one) with its store in `store_dir`.
    pub fn options(&self, port: u16, store_dir: PathBuf) -> crate::NatsServerOptions {
        crate::NatsServerOptions {
            binary: self.binary.clone(),
            port,
            store_dir,
            max_payload: Some(self.max_payload_bytes),
            cluster: None,
        }
    }

    /// Starts the configured servers, their stores under `dir`: one (its store in
    /// `dir/jetstream`), or `nodes` as a cluster (`dir/node<i>/jetstream`), each routed
    /// to the first.
    pub fn start(&self, dir: &Path) -> Result<Vec<crate::NatsServer>, crate::ServiceError> {
        if self.nodes == 1 {
            let server = crate::NatsServer::start(&self.options(self.port, dir.join("jetstream")))?;
            return Ok(vec![server]);
        }
        if !matches!(self.nodes, 3 | 5) {
            return Err(crate::ServiceError::Config(format!(
                "nats.server.nodes must be 1, 3 or 5 (a cluster needs an odd number to \
                 elect a leader), not {}",
                self.nodes
            )));
        }
        crate::NatsServer::start_cluster("slough", self.nodes, |index| {
            let port = if index == 0 { self.port } else { 0 };
            self.options(port, dir.join(format!("node{index}")).join("jetstream"))
        })
    }
}

fn default_data_dir() -> PathBuf {
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".slough"),
        None => PathBuf::from(".slough"),
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value is missing, has the wrong type, or a key is unknown; figment names it and
    /// where it came from.
    #[error("invalid configuration: {0}")]
    Invalid(Box<figment::Error>),
    /// `SLOUGH_CONFIG` names a file that does not exist.
    #[error("configuration file {0} (from SLOUGH_CONFIG) does not exist")]
    MissingFile(PathBuf),
}

/// Loads settings of type `T` from the layers above. `file` overrides where to look for
/// the TOML file (else `SLOUGH_CONFIG`, else `./slough.toml` when present).
pub fn load_config<T: DeserializeOwned>(file: Option<&Path>) -> Result<T, ConfigError> {
    let file = match (file, std::env::var_os("SLOUGH_CONFIG")) {
        (Some(file), _) => Some(file.to_path_buf()),
        (None, Some(from_env)) => {
            let path = PathBuf::from(from_env);
            if !path.exists() {
                return Err(ConfigError::MissingFile(path));
            }
            Some(path)
        }
        (None, None) => Some(PathBuf::from("slough.toml")).filter(|p| p.exists()),
    };
    let mut figment = Figment::new();
    if let Some(file) = file {
        figment = figment.merge(Toml::file(file));
    }
    figment
        .merge(Env::prefixed("SLOUGH_").ignore(&["CONFIG"]).split("__"))
        .merge(Env::raw().only(&["NATS_URL"]))
        .extract()
        .map_err(|err| ConfigError::Invalid(Box::new(err)))
}

#[cfg(test)]
#[allow(
    clippy::result_large_err,
    reason = "figment::Jail fixes the closure's error type"
)]
mod tests {
    use super::*;

    #[test]
    fn a_local_nats_cluster_has_an_odd_number_of_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let config = EmbeddedNatsConfig {
            nodes: 2,
            ..EmbeddedNatsConfig::default()
        };
        let Err(err) = config.start(dir.path()) else {
            panic!("two nodes started");
        };
        assert!(
            err.to_string()
                .contains("nats.server.nodes must be 1, 3 or 5"),
            "{err}"
        );
    }

    use figment::Jail;
    use secrecy::ExposeSecret;

    #[derive(Debug, Deserialize)]
    struct Settings {
        #[serde(flatten)]
        common: CommonConfig,
        #[serde(default)]
        gateway: Section,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Section {
        listen: Option<String>,
    }

    #[test]
    fn layers_apply_in_order() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "slough.toml",
                "data_dir = \"/from/file\"\n[nats]\nheartbeat_ms = 250\n[gateway]\nlisten = \"0.0.0.0:1\"\n",
            )?;
            jail.set_env("SLOUGH_GATEWAY__LISTEN", "127.0.0.1:9");
            jail.set_env("NATS_URL", "nats://example:4222");
            jail.set_env("SLOUGH_DATABASE_URL", "postgres://u:secret@h/db");
            let settings: Settings = load_config(None).map_err(|e| e.to_string())?;
            assert_eq!(settings.common.data_dir, PathBuf::from("/from/file"));
            assert_eq!(settings.common.nats.heartbeat_ms, 250);
            assert_eq!(settings.gateway.listen.as_deref(), Some("127.0.0.1:9"));
            assert_eq!(
                settings.common.nats_url.as_deref(),
                Some("nats://example:4222")
            );
            let url = settings.common.database_url.as_ref().unwrap();
            assert_eq!(url.expose_secret(), "postgres://u:secret@h/db");
            assert!(
                !format!("{settings:?}").contains("secret@"),
                "secrets never print"
            );
            Ok(())
        });
    }

    #[test]
    fn one_models_directory_and_endpoint_limits_come_from_the_environment() {
        Jail::expect_with(|jail| {
            jail.create_file("slough.toml", "data_dir = \"/data\"\n")?;
            let settings: Settings = load_config(None).map_err(|e| e.to_string())?;
            assert_eq!(settings.common.models_dir(), PathBuf::from("/data/models"));
            assert_eq!(settings.common.nats.concurrency().limit("ingest"), 256);
            jail.set_env("SLOUGH_MODELS_DIR", "/shared/models");
            jail.set_env("SLOUGH_NATS__MAX_IN_FLIGHT", "32");
            jail.set_env("SLOUGH_NATS__MAX_IN_FLIGHT_BY_ENDPOINT__INGEST", "4");
            let settings: Settings = load_config(None).map_err(|e| e.to_string())?;
            assert_eq!(
                settings.common.models_dir(),
                PathBuf::from("/shared/models")
            );
            let concurrency = settings.common.nats.concurrency();
            assert_eq!(concurrency.limit("ingest"), 4);
            assert_eq!(concurrency.limit("search"), 32);
            Ok(())
        });
    }

    #[test]
    fn unknown_section_keys_are_named() {
        Jail::expect_with(|jail| {
            jail.set_env("SLOUGH_GATEWAY__LISTN", "x");
            let err = load_config::<Settings>(None).unwrap_err().to_string();
            assert!(err.contains("listn"), "{err}");
            Ok(())
        });
    }
}

//! The configuration of the whole platform: the shared settings at the top level of
//! `slough.toml`, and one section per service (`[gateway]`, `[monitoring]`, ...).

use serde::Deserialize;
use slough_service::{CommonConfig, ConfigError};

/// Everything `slough.toml` and `SLOUGH_*` can set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Settings {
    #[serde(flatten)]
    pub common: CommonConfig,
    pub gateway: slough_gateway::Config,
    pub inference: slough_inference::Config,
    pub rag: slough_rag::Config,
    pub personality: slough_personality::Config,
    pub training: slough_training::Config,
    pub monitoring: slough_monitoring::Config,
}

impl Settings {
    /// Loads the layers: defaults, `slough.toml` (or `SLOUGH_CONFIG`), environment.
    pub fn load() -> Result<Settings, ConfigError> {
        slough_service::load_config(None)
    }

    /// The NATS server to talk to: `NATS_URL`; else the one a running `slough up` (or
    /// `slough run`) with this data directory uses, as its run file says; else where
    /// `slough up` would start one.
    pub fn nats_url(&self) -> String {
        if let Some(url) = &self.common.nats_url {
            return url.clone();
        }
        match crate::run_file::RunFile::running(&self.common.data_dir).first() {
            Some(running) => running.nats_url.clone(),
            None => format!("nats://127.0.0.1:{}", self.common.nats.server.port),
        }
    }
}

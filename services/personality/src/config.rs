//! The `[personality]` section of the configuration.

use std::{net::SocketAddr, path::PathBuf};

use serde::Deserialize;

/// How the personality service runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where `/metrics`, `/livez` and `/readyz` listen.
    pub admin_listen: SocketAddr,
    /// The model packages, for classifier heads (default `<data_dir>/models`, as
    /// inference and training).
    pub models_dir: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9404)),
            models_dir: None,
        }
    }
}

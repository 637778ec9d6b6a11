//! The `[personality]` section of the configuration.

use std::net::SocketAddr;

use serde::Deserialize;

/// How the personality service runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where `/metrics`, `/livez` and `/readyz` listen.
    pub admin_listen: SocketAddr,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9404)),
        }
    }
}

//! The `[rag]` section of the configuration.

use std::{net::SocketAddr, path::PathBuf};

use serde::Deserialize;

/// How the RAG service runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where `/metrics`, `/livez` and `/readyz` listen.
    pub admin_listen: SocketAddr,
    /// Where the Qdrant Edge shards live, one directory per collection (default
    /// `<data_dir>/collections`).
    pub collections_dir: Option<PathBuf>,
    /// The model packages, for the embedding models' tokenizers, which chunking counts
    /// with (default `<data_dir>/models`, as inference).
    pub models_dir: Option<PathBuf>,
    /// Texts per embed request sent to inference.
    pub embed_batch: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9403)),
            collections_dir: None,
            models_dir: None,
            embed_batch: 32,
        }
    }
}

impl Config {
    /// Refuses settings the service cannot run with, naming them.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=256).contains(&self.embed_batch) {
            return Err(format!(
                "rag.embed_batch = {} (must be 1 to 256)",
                self.embed_batch
            ));
        }
        Ok(())
    }
}

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
    /// Texts per embed request sent to inference.
    pub embed_batch: usize,
    /// A Qdrant server to keep the collections on instead of the embedded shards.
    pub qdrant: QdrantConfig,
}

/// The `[rag.qdrant]` section: a Qdrant server or cluster, for the distributed layout
/// (several RAG replicas sharing their collections).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QdrantConfig {
    /// The server's gRPC address, e.g. `http://qdrant:6334`; unset keeps the
    /// collections in embedded Qdrant Edge shards.
    pub url: Option<String>,
    /// Its API key, if it wants one (better set through `SLOUGH_RAG__QDRANT__API_KEY`).
    pub api_key: Option<String>,
    /// The longest one request to the server may take.
    pub timeout_seconds: u64,
    pub connect_timeout_seconds: u64,
    /// Put before every collection name on the server.
    pub collection_prefix: String,
}

impl Default for QdrantConfig {
    fn default() -> Self {
        QdrantConfig {
            url: None,
            api_key: None,
            timeout_seconds: 30,
            connect_timeout_seconds: 5,
            collection_prefix: "slough_".to_owned(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9403)),
            collections_dir: None,
            embed_batch: 32,
            qdrant: QdrantConfig::default(),
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
        let qdrant = &self.qdrant;
        if qdrant.timeout_seconds == 0 || qdrant.connect_timeout_seconds == 0 {
            return Err(
                "rag.qdrant.timeout_seconds and connect_timeout_seconds must be at \
                        least 1"
                    .to_owned(),
            );
        }
        let prefix_ok = qdrant
            .collection_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !prefix_ok {
            return Err(format!(
                "rag.qdrant.collection_prefix = {:?} (letters, digits, `_` and `-` only)",
                qdrant.collection_prefix
            ));
        }
        if let Some(url) = &qdrant.url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(format!(
                "rag.qdrant.url = {url:?} (must start with http:// or https://, and name \
                 the gRPC port, 6334 by default)"
            ));
        }
        Ok(())
    }
}

//! What every request handler shares: the bus, the store, the keys, admission and the
//! inference replicas' load. Handlers take it as `web::Data<AppState>`; nothing here
//! knows about routes.

use std::sync::Arc;

use slough_bus::Bus;
use slough_store::Store;

use crate::{admission::Admission, keys::Keys, metrics::Metrics, replicas::Replicas};

/// What every request handler shares.
pub struct AppState {
    pub bus: Bus,
    pub store: Store,
    pub keys: Arc<Keys>,
    pub metrics: Arc<Metrics>,
    /// Whether a model request may start (bus up, a free slot, the key's limits).
    pub admission: Admission,
    /// The inference replicas' load, to send each generation where there is room.
    pub replicas: Arc<Replicas>,
    /// The largest body a request may have.
    pub max_body_bytes: usize,
    /// How long a request body may take to arrive.
    pub body_timeout: std::time::Duration,
    /// Whether stored completions and feedback are kept with personal data masked.
    pub mask_stored_pii: bool,
    /// What one key may keep.
    pub quotas: crate::quotas::Quotas,
    /// Uploaded files' content, opened on the first file request.
    pub files: tokio::sync::OnceCell<slough_bus::FileStore>,
}

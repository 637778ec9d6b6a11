//! API keys: what a key is and the rules it follows ([`model`]), its rows in the store
//! ([`repository`]), the cache of authenticated keys the routes use ([`cache`]), and the
//! first admin key ([`bootstrap`]). Nothing here speaks HTTP: failures are [`KeyError`]s,
//! mapped to statuses once, in `error.rs`.

pub mod bootstrap;
pub mod cache;
pub mod model;
pub mod repository;

use std::path::PathBuf;

pub use bootstrap::{admin_key_from_env, admin_key_path, bootstrap_admin_key};
pub use cache::Keys;
pub use model::{ApiKey, CreatedKey, KeySettings, KeyUpdate, PiiPolicy, Scope};
use uuid::Uuid;

/// What can go wrong with API keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no API key: send `Authorization: Bearer sk-...`")]
    Missing,
    #[error("the Authorization header must read `Bearer sk-...`")]
    Malformed,
    #[error("invalid API key")]
    Unknown,
    #[error("this API key has been revoked")]
    Revoked,
    #[error("this API key lacks the `{}` scope this route needs", .0.as_str())]
    MissingScope(Scope),
    #[error("this API key may not use the model `{0}`")]
    ModelNotAllowed(String),
    #[error("no API key {0}")]
    NotFound(Uuid),
    /// A field of a key's settings breaks its rule.
    #[error("{message}")]
    Invalid {
        param: &'static str,
        message: String,
    },
    /// `SLOUGH_ADMIN_KEY` cannot be used.
    #[error("{0}")]
    AdminKey(String),
    #[error("cannot write the admin key to {}: {source}", path.display())]
    AdminKeyFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Store {
        context: &'static str,
        source: sea_orm::DbErr,
    },
}

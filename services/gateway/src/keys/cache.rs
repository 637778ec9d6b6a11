//! The keys the gateway uses: the repository behind a short-lived cache of
//! authenticated keys, so a request costs no query while its key was checked in the
//! last few seconds. A revocation or change on this replica applies at once; on another
//! replica within the cache's time to live.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use slough_store::Store;
use uuid::Uuid;

use super::{
    KeyError,
    model::{ApiKey, CreatedKey, KeySettings, KeyUpdate, generate, hash, prefix_of},
    repository::KeyRepository,
};

/// The keys in the store, with a short-lived cache of authenticated ones.
pub struct Keys {
    repository: KeyRepository,
    ttl: Duration,
    cache: Mutex<HashMap<String, Cached>>,
}

struct Cached {
    key: Arc<ApiKey>,
    hash: String,
    fetched: Instant,
}

impl Keys {
    /// Keys in `store`, trusted from the cache for `ttl`.
    pub fn new(store: Store, ttl: Duration) -> Keys {
        Keys {
            repository: KeyRepository::new(store),
            ttl,
            cache: Mutex::default(),
        }
    }

    /// The key an `Authorization` header value names.
    pub async fn authenticate(&self, header: Option<&str>) -> Result<Arc<ApiKey>, KeyError> {
        let header = header.ok_or(KeyError::Missing)?;
        let secret = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or(KeyError::Malformed)?;
        let prefix = prefix_of(secret).ok_or(KeyError::Unknown)?;
        let hash = hash(secret);
        if let Some(key) = self.cached(prefix, &hash) {
            return Ok(key);
        }
        let row = self
            .repository
            .by_prefix(prefix)
            .await?
            .ok_or(KeyError::Unknown)?;
        if row.secret_hash != hash {
            return Err(KeyError::Unknown);
        }
        if row.revoked_at.is_some() {
            return Err(KeyError::Revoked);
        }
        let key = Arc::new(ApiKey::from_row(row));
        self.lock().insert(
            prefix.to_owned(),
            Cached {
                key: key.clone(),
                hash,
                fetched: Instant::now(),
            },
        );
        Ok(key)
    }

    fn cached(&self, prefix: &str, hash: &str) -> Option<Arc<ApiKey>> {
        let cache = self.lock();
        let cached = cache.get(prefix)?;
        (cached.hash == hash && cached.fetched.elapsed() < self.ttl).then(|| cached.key.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached>> {
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Creates a key and returns its secret (once).
    pub async fn create(&self, settings: KeySettings) -> Result<CreatedKey, KeyError> {
        settings.validate()?;
        let secret = generate();
        let key = self.repository.insert(&secret, settings).await?;
        Ok(CreatedKey { secret, key })
    }

    /// Every key, newest first, revoked ones included.
    pub async fn list(&self) -> Result<Vec<ApiKey>, KeyError> {
        self.repository.list().await
    }

    /// One key by id.
    pub async fn get(&self, id: Uuid) -> Result<ApiKey, KeyError> {
        self.repository.row(id).await.map(ApiKey::from_row)
    }

    /// Applies `update` to a key that is not revoked.
    pub async fn update(&self, id: Uuid, update: KeyUpdate) -> Result<ApiKey, KeyError> {
        update.validate()?;
        let key = self.repository.update(id, update).await?;
        self.lock().remove(&key.prefix);
        Ok(key)
    }

    /// Revokes a key for good; revoking twice keeps the first time.
    pub async fn revoke(&self, id: Uuid) -> Result<ApiKey, KeyError> {
        let key = self.repository.revoke(id).await?;
        self.lock().remove(&key.prefix);
        Ok(key)
    }
}

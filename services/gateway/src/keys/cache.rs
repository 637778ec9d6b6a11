//! The keys the gateway uses: the repository behind a short-lived cache of
//! authenticated keys, so a request costs no query while its key was checked in the
//! last few seconds. A revocation or change is announced on the bus
//! (`slough_protocol::keys::KEY_CHANGED`) and every replica that [`follow`]s it drops the
//! key at once; the cache's time to live is the fallback for an event missed while a
//! replica was cut off from NATS.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use slough_bus::{Bus, BusError};
use slough_protocol::keys::{KEY_CHANGED, KeyChanged};
use slough_store::Store;
use tokio_util::sync::CancellationToken;
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
    /// Where changes are announced to the other replicas (none in a lone process).
    bus: Option<Bus>,
}

struct Cached {
    key: Arc<ApiKey>,
    hash: String,
    fetched: Instant,
}

impl Keys {
    /// Keys in `store`, trusted from the cache for `ttl`; changes are announced on `bus`.
    pub fn new(store: Store, ttl: Duration, bus: Option<Bus>) -> Keys {
        Keys {
            repository: KeyRepository::new(store),
            ttl,
            cache: Mutex::default(),
            bus,
        }
    }

    /// Drops the key with `prefix` from the cache: the next request reads it again.
    pub fn forget(&self, prefix: &str) {
        self.lock().remove(prefix);
    }

    /// Forgets `key` here and tells the other replicas to. A failure to tell is
    /// logged: they still read the key again within the cache's time to live.
    async fn changed(&self, key: &ApiKey) {
        self.forget(&key.prefix);
        if let Some(bus) = &self.bus {
            let event = KeyChanged {
                id: key.id.to_string(),
                prefix: key.prefix.clone(),
            };
            if let Err(err) = bus.emit(&KEY_CHANGED, &event).await {
                tracing::warn!(key = %key.id, "cannot announce a key's change: {err}");
            }
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
        self.changed(&key).await;
        Ok(key)
    }

    /// Revokes a key for good; revoking twice keeps the first time.
    pub async fn revoke(&self, id: Uuid) -> Result<ApiKey, KeyError> {
        let key = self.repository.revoke(id).await?;
        self.changed(&key).await;
        Ok(key)
    }
}

/// Drops from `keys`' cache every key another replica (or this one) says changed,
/// until `shutdown`. Subscribed when this returns.
pub async fn follow(
    bus: &Bus,
    keys: Arc<Keys>,
    shutdown: CancellationToken,
) -> Result<(), BusError> {
    let mut changes = bus.subscribe(&KEY_CHANGED).await?;
    tokio::spawn(async move {
        loop {
            let change = tokio::select! {
                change = changes.next() => change,
                () = shutdown.cancelled() => return,
            };
            match change {
                Some(Ok(change)) => keys.forget(&change.prefix),
                Some(Err(err)) => tracing::warn!("unreadable key change: {err}"),
                None => return,
            }
        }
    });
    Ok(())
}

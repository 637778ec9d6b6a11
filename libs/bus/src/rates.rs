//! Rates shared by every replica of a service, in a JetStream key-value bucket
//! (`slough-rates`): one entry per name (e.g. an API key's requests per minute) holds the
//! generic cell rate algorithm's next arrival in Unix milliseconds, and a replica starts
//! something only by moving it on with a compare-and-set, so the replicas together
//! allow exactly what one would. Entries expire two minutes after their last use.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::{Bus, BusError};
use async_nats::jetstream::{
    self,
    kv::{self, UpdateErrorKind},
    stream,
};

/// The bucket's name.
pub const BUCKET: &str = "slough-rates";

const MINUTE_MS: u64 = 60_000;

/// How often one start tries again when other replicas moved the entry first.
const TRIES: usize = 16;

/// The shared rates.
pub struct Rates {
    bucket: kv::Store,
    /// One start per name at a time from this replica, so that its own starts do not
    /// race each other for the entry.
    turns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for Rates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rates").field("bucket", &BUCKET).finish()
    }
}

impl Rates {
    /// Opens the bucket, creating it on first use (in memory: an entry matters for a
    /// minute, and a NATS restart that loses them forgives at most that minute).
    pub async fn open(bus: &Bus) -> Result<Rates, BusError> {
        let js = jetstream::new(bus.client().clone());
        if js.get_key_value(BUCKET).await.is_err() {
            // The bucket's stream, made directly: async-nats's `create_key_value` first
            // reads the account's limits in a shape nats-server 2.9 (Debian's) does not
            // send. These are the settings it would give a bucket.
            js.create_stream(stream::Config {
                name: format!("KV_{BUCKET}"),
                description: Some("SloughGPT rates shared by replicas".to_owned()),
                subjects: vec![format!("$KV.{BUCKET}.>")],
                max_messages_per_subject: 1,
                max_age: Duration::from_secs(120),
                storage: stream::StorageType::Memory,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard: stream::DiscardPolicy::New,
                num_replicas: bus.jetstream_replicas(),
                ..Default::default()
            })
            .await
            .map_err(|err| BusError::Nats(format!("cannot create the rates bucket: {err}")))?;
        }
        let bucket = js
            .get_key_value(BUCKET)
            .await
            .map_err(|err| BusError::Nats(format!("cannot open the rates bucket: {err}")))?;
        bus.keep_copies(&js, &format!("KV_{BUCKET}")).await?;
        Ok(Rates {
            bucket,
            turns: Mutex::default(),
        })
    }

    /// Starts one more of `name` within `per_minute` a minute (a burst of the whole
    /// minute, then one every minute / `per_minute`) for every replica together, or says
    /// how long until one may start. `name` is made of letters, digits, `-`, `_` and `.`.
    pub async fn take(
        &self,
        name: &str,
        per_minute: u32,
    ) -> Result<Result<(), Duration>, BusError> {
        let turn = {
            let mut turns = self
                .turns
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            turns.entry(name.to_owned()).or_default().clone()
        };
        let _turn = turn.lock().await;
        let interval = MINUTE_MS / u64::from(per_minute.max(1));
        for _ in 0..TRIES {
            let entry = self
                .bucket
                .entry(name)
                .await
                .map_err(|err| BusError::Nats(format!("cannot read {name}: {err}")))?;
            let (revision, next) = match &entry {
                Some(entry) if entry.operation == kv::Operation::Put => {
                    (entry.revision, parse(&entry.value))
                }
                Some(entry) => (entry.revision, 0),
                None => (0, 0),
            };
            let now = now_ms();
            let next = next.max(now) + interval;
            let ahead = next - now;
            if ahead > MINUTE_MS {
                return Ok(Err(Duration::from_millis(ahead - MINUTE_MS)));
            }
            match self
                .bucket
                .update(name, next.to_string().into(), revision)
                .await
            {
                Ok(_) => return Ok(Ok(())),
                Err(err) if err.kind() == UpdateErrorKind::WrongLastRevision => continue,
                Err(err) => return Err(BusError::Nats(format!("cannot move {name}: {err}"))),
            }
        }
        Err(BusError::Nats(format!(
            "{name} was moved by other replicas {TRIES} times in a row"
        )))
    }
}

fn parse(value: &[u8]) -> u64 {
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(0)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

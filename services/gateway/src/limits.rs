//! Per-key limits, checked before a request reaches a model: requests per minute (the
//! generic cell rate algorithm: a burst of the whole minute's allowance, then one
//! request every `60 s / limit`), tokens per minute (a one-minute window of what the
//! key's finished requests used) and the key's lifetime token budget (summed from the
//! `usage` table, re-read every few seconds so other replicas' use counts too).
//!
//! The per-minute limits hold for the fleet of gateway replicas, not per replica.
//! Requests per minute are counted on the bus's shared rates (`slough_bus::Rates`, a
//! compare-and-set on a JetStream key-value entry per key): exact for the fleet, at two
//! round trips to NATS per request of a key that has the limit. Tokens are counted after
//! a request ends, so each replica announces what its requests used
//! (`slough_protocol::keys::KEY_USED`, also the requests it admits) and counts what the
//! others announce; no request waits on the bus for that. While the shared rates are out
//! of reach, requests per minute are counted the same way, from the announcements, and
//! then requests that two replicas admit within the moment an announcement takes to
//! cross the bus may both pass. A replica that starts reads the minute before it from
//! the `usage` table the first time it admits a key, so a restart hands out no fresh
//! minute of tokens.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use slough_bus::{Bus, BusError, Rates};
use slough_protocol::keys::{KEY_USED, KeyUsed};
use slough_store::Store;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{keys::ApiKey, ledger, metrics::Metrics};

const MINUTE: Duration = Duration::from_secs(60);

/// Why a key may not start a request now.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("this API key has used its token budget ({spent} of {budget} tokens)")]
    Budget { spent: u64, budget: u64 },
    #[error("this API key used {used} tokens in the last minute; its limit is {limit}")]
    TokensPerMinute {
        used: u64,
        limit: u32,
        retry_after: Duration,
    },
    #[error("this API key is limited to {limit} requests per minute")]
    RequestsPerMinute { limit: u32, retry_after: Duration },
    /// The key's spending could not be read.
    #[error("cannot read the key's usage: {0}")]
    Store(#[source] sea_orm::DbErr),
}

/// The limits of every key this gateway has seen.
pub struct Limits {
    store: Store,
    /// How long a budget's spent total is trusted before re-reading it.
    refresh: Duration,
    keys: Mutex<HashMap<Uuid, KeyLimits>>,
    metrics: Arc<Metrics>,
    /// This replica's name in what it announces, so that it skips its own.
    origin: String,
    /// When this replica began counting: what finished before is read from the store.
    started: DateTime<Utc>,
    /// What [`share`] sends to the other replicas (unset in a lone process).
    outbox: OnceLock<mpsc::UnboundedSender<KeyUsed>>,
    /// The fleet's requests-per-minute counters (unset in a lone process).
    counter: OnceLock<Rates>,
    /// The counters failed on the last request (logged once until they answer).
    counter_lost: AtomicBool,
}

#[derive(Default)]
struct KeyLimits {
    /// The cell rate algorithm's next arrival: a request may start while it is at most a
    /// minute ahead, and each request moves it on by a minute / the key's limit.
    next_request: Option<Instant>,
    /// Tokens of finished requests in the last minute, oldest first.
    tokens: VecDeque<(Instant, u64)>,
    /// Tokens spent in all, as of `spent_read` plus what the fleet used since.
    spent: u64,
    spent_read: Option<Instant>,
    /// The key has a per-minute limit: its use is announced to the other replicas.
    shared: bool,
    /// The minute before this replica started has been read from the store.
    caught_up: bool,
}

impl Limits {
    pub fn new(store: Store, refresh: Duration, metrics: Arc<Metrics>) -> Limits {
        Limits {
            store,
            refresh,
            keys: Mutex::default(),
            metrics,
            origin: Uuid::new_v4().to_string(),
            started: Utc::now(),
            outbox: OnceLock::new(),
            counter: OnceLock::new(),
            counter_lost: AtomicBool::new(false),
        }
    }

    /// Admits one request of `key`, or says which limit it reached.
    pub async fn admit(&self, key: &ApiKey) -> Result<(), LimitError> {
        if let Some(budget) = key.token_budget {
            let spent = self.spent(key.id).await?;
            if spent >= budget {
                self.metrics.reject("token_budget");
                return Err(LimitError::Budget { spent, budget });
            }
        }
        let per_minute = key.requests_per_minute.is_some() || key.tokens_per_minute.is_some();
        if !per_minute {
            return Ok(());
        }
        self.catch_up(key).await;
        if let Some(tpm) = key.tokens_per_minute {
            self.check_tokens(key.id, tpm)?;
        }
        if let Some(rpm) = key.requests_per_minute {
            self.take_request(key.id, rpm).await?;
        }
        self.announce(KeyUsed {
            key: key.id.to_string(),
            origin: self.origin.clone(),
            requests: 1,
            requests_per_minute: key.requests_per_minute,
            tokens: 0,
        });
        Ok(())
    }

    /// Refuses a request of `key_id` while the tokens the fleet's requests of it used in
    /// the last minute reach `tpm`.
    fn check_tokens(&self, key_id: Uuid, tpm: u32) -> Result<(), LimitError> {
        let mut keys = self.lock();
        let limits = keys.entry(key_id).or_default();
        let now = Instant::now();
        limits.forget_before(now);
        let used: u64 = limits.tokens.iter().map(|(_, tokens)| tokens).sum();
        if used < u64::from(tpm) {
            return Ok(());
        }
        self.metrics.reject("tokens_per_minute");
        Err(LimitError::TokensPerMinute {
            used,
            limit: tpm,
            retry_after: limits.time_until_below(u64::from(tpm), now),
        })
    }

    /// Starts a request of `key_id` within `rpm` requests per minute: on the fleet's
    /// counter, or, while that is out of reach, on this replica's view of the fleet.
    async fn take_request(&self, key_id: Uuid, rpm: u32) -> Result<(), LimitError> {
        let fleet = match self.counter.get() {
            Some(counter) => match counter.take(&format!("rpm.{key_id}"), rpm).await {
                Ok(verdict) => {
                    if self.counter_lost.swap(false, Ordering::Relaxed) {
                        tracing::info!("the fleet's request counters answer again");
                    }
                    Some(verdict)
                }
                Err(err) => {
                    if !self.counter_lost.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            "the fleet's request counters are out of reach; requests per minute \
                             are counted from this replica's view until they answer: {err}"
                        );
                    }
                    None
                }
            },
            None => None,
        };
        let mut keys = self.lock();
        let limits = keys.entry(key_id).or_default();
        let now = Instant::now();
        let verdict = match fleet {
            Some(Ok(())) => {
                limits.count_request(rpm, now);
                Ok(())
            }
            Some(Err(wait)) => Err(wait),
            None => limits.take_request(rpm, now),
        };
        verdict.map_err(|retry_after| {
            self.metrics.reject("requests_per_minute");
            LimitError::RequestsPerMinute {
                limit: rpm,
                retry_after,
            }
        })
    }

    /// Counts `tokens` a finished request of `key_id` used.
    pub fn record(&self, key_id: Uuid, tokens: u64) {
        if tokens == 0 {
            return;
        }
        let shared = {
            let mut keys = self.lock();
            let limits = keys.entry(key_id).or_default();
            limits.count_tokens(tokens, Instant::now());
            limits.shared
        };
        if shared {
            self.announce(KeyUsed {
                key: key_id.to_string(),
                origin: self.origin.clone(),
                requests: 0,
                requests_per_minute: None,
                tokens,
            });
        }
    }

    /// Counts what another replica announced.
    fn counted_elsewhere(&self, used: &KeyUsed) {
        if used.origin == self.origin {
            return;
        }
        let Ok(key_id) = Uuid::parse_str(&used.key) else {
            tracing::warn!(
                key = used.key,
                "a replica announced the use of a key that is not a key id"
            );
            return;
        };
        let mut keys = self.lock();
        let limits = keys.entry(key_id).or_default();
        let now = Instant::now();
        if let Some(rpm) = used.requests_per_minute {
            for _ in 0..used.requests {
                limits.count_request(rpm, now);
            }
        }
        limits.count_tokens(used.tokens, now);
    }

    /// Marks `key`'s use as shared (it has a per-minute limit) and reads, the first time
    /// this replica admits it, the requests of the key that finished in the minute before
    /// the replica started (those since were announced). A store that cannot be read is
    /// tried again on the next request.
    async fn catch_up(&self, key: &ApiKey) {
        {
            let mut keys = self.lock();
            let limits = keys.entry(key.id).or_default();
            limits.shared = true;
            if limits.caught_up {
                return;
            }
            limits.caught_up = true;
        }
        let from = self.started - chrono::Duration::minutes(1);
        let finished = ledger::finished_between(&self.store, key.id, from, self.started).await;
        let mut keys = self.lock();
        let limits = keys.entry(key.id).or_default();
        let finished = match finished {
            Ok(finished) => finished,
            Err(err) => {
                tracing::warn!(key = %key.id, "cannot read the key's last minute of usage: {err}");
                limits.caught_up = false;
                return;
            }
        };
        let (now, wall) = (Instant::now(), Utc::now());
        for (at, tokens) in finished {
            let age = (wall - at).to_std().unwrap_or_default();
            let Some(then) = now.checked_sub(age) else {
                continue;
            };
            if let Some(rpm) = key.requests_per_minute {
                limits.count_request(rpm, then);
            }
            limits.tokens.push_back((then, tokens));
        }
        limits.tokens.make_contiguous().sort_by_key(|(at, _)| *at);
    }

    /// Hands `used` to the task that announces it (nothing when not shared).
    fn announce(&self, used: KeyUsed) {
        if let Some(outbox) = self.outbox.get() {
            let _ = outbox.send(used);
        }
    }

    /// Tokens `key_id` spent in all, re-read from the store when the last read is stale.
    async fn spent(&self, key_id: Uuid) -> Result<u64, LimitError> {
        {
            let keys = self.lock();
            if let Some(limits) = keys.get(&key_id)
                && limits
                    .spent_read
                    .is_some_and(|read| read.elapsed() < self.refresh)
            {
                return Ok(limits.spent);
            }
        }
        let spent = ledger::spent(&self.store, key_id)
            .await
            .map_err(LimitError::Store)?;
        let mut keys = self.lock();
        let limits = keys.entry(key_id).or_default();
        limits.spent = spent;
        limits.spent_read = Some(Instant::now());
        Ok(spent)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, KeyLimits>> {
        self.keys
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl KeyLimits {
    /// Starts a request at `now` within `rpm` requests per minute, or says how long until
    /// one may start.
    fn take_request(&mut self, rpm: u32, now: Instant) -> Result<(), Duration> {
        let ahead = self.next_after(rpm, now).saturating_duration_since(now);
        if ahead > MINUTE {
            return Err(ahead - MINUTE);
        }
        self.count_request(rpm, now);
        Ok(())
    }

    /// Counts a request started at `at` (admitted here, or elsewhere).
    fn count_request(&mut self, rpm: u32, at: Instant) {
        self.next_request = Some(self.next_after(rpm, at));
    }

    /// The next arrival once one more request starts at `at`.
    fn next_after(&self, rpm: u32, at: Instant) -> Instant {
        self.next_request.map_or(at, |next| next.max(at)) + MINUTE / rpm.max(1)
    }

    /// Counts `tokens` used by a request that finished at `now`.
    fn count_tokens(&mut self, tokens: u64, now: Instant) {
        if tokens == 0 {
            return;
        }
        self.forget_before(now);
        self.tokens.push_back((now, tokens));
        self.spent += tokens;
    }

    fn forget_before(&mut self, now: Instant) {
        while let Some((at, _)) = self.tokens.front() {
            if now.duration_since(*at) < MINUTE {
                break;
            }
            self.tokens.pop_front();
        }
    }

    /// How long until the window's total drops below `limit`.
    fn time_until_below(&self, limit: u64, now: Instant) -> Duration {
        let mut used: u64 = self.tokens.iter().map(|(_, tokens)| tokens).sum();
        for (at, tokens) in &self.tokens {
            used -= tokens;
            if used < limit {
                return (*at + MINUTE).saturating_duration_since(now);
            }
        }
        MINUTE
    }
}

/// Shares `limits` with the other gateway replicas until `shutdown`: opens the fleet's
/// request counters, announces on the bus what this one admits and counts what the
/// others announce.
pub async fn share(
    bus: &Bus,
    limits: Arc<Limits>,
    shutdown: CancellationToken,
) -> Result<(), BusError> {
    match Rates::open(bus).await {
        Ok(counter) => {
            let _ = limits.counter.set(counter);
        }
        Err(err) => {
            tracing::warn!(
                "requests per minute are counted from each replica's view until the fleet's \
                 counters can be opened (tried again every 5 s): {err}"
            );
            tokio::spawn(open_later(bus.clone(), limits.clone(), shutdown.clone()));
        }
    }
    let mut announced = bus.subscribe(&KEY_USED).await?;
    let (outbox, mut queued) = mpsc::unbounded_channel();
    if limits.outbox.set(outbox).is_err() {
        return Ok(());
    }
    let publisher = bus.clone();
    // Ends when `limits` is dropped with its end of the channel.
    tokio::spawn(async move {
        while let Some(used) = queued.recv().await {
            if let Err(err) = publisher.emit(&KEY_USED, &used).await {
                tracing::warn!(key = used.key, "cannot announce a key's use: {err}");
            }
        }
    });
    tokio::spawn(async move {
        loop {
            let used = tokio::select! {
                used = announced.next() => used,
                () = shutdown.cancelled() => return,
            };
            match used {
                Some(Ok(used)) => limits.counted_elsewhere(&used),
                Some(Err(err)) => tracing::warn!("unreadable key use: {err}"),
                None => return,
            }
        }
    });
    Ok(())
}

/// Tries to open the fleet's counters every 5 s until it can (a JetStream cluster still
/// forming, say) or `shutdown`.
async fn open_later(bus: Bus, limits: Arc<Limits>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
            () = shutdown.cancelled() => return,
        }
        if let Ok(counter) = Rates::open(&bus).await {
            let _ = limits.counter.set(counter);
            tracing::info!("requests per minute are counted on the fleet's counters now");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_window_forgets_after_a_minute() {
        let mut limits = KeyLimits::default();
        let start = Instant::now();
        limits.tokens.push_back((start, 30));
        limits
            .tokens
            .push_back((start + Duration::from_secs(20), 50));
        let now = start + Duration::from_secs(30);
        // Below 60 once the first 30 tokens leave the window at start + 60 s.
        assert_eq!(limits.time_until_below(60, now), Duration::from_secs(30));
        // Below 30 only once both have left.
        assert_eq!(limits.time_until_below(30, now), Duration::from_secs(50));
        limits.forget_before(start + Duration::from_secs(61));
        assert_eq!(limits.tokens.len(), 1);
    }

    #[test]
    fn rpm_limits_allow_a_burst_then_one_request_per_interval() {
        let mut limits = KeyLimits::default();
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(limits.take_request(3, start), Ok(()));
        }
        // The fourth waits for the first interval (20 s) to pass.
        assert_eq!(limits.take_request(3, start), Err(Duration::from_secs(20)));
        let later = start + Duration::from_secs(5);
        assert_eq!(limits.take_request(3, later), Err(Duration::from_secs(15)));
        let after = start + Duration::from_secs(20);
        assert_eq!(limits.take_request(3, after), Ok(()));
        assert!(limits.take_request(3, after).is_err());
    }

    #[test]
    fn requests_admitted_elsewhere_use_the_same_allowance() {
        let mut limits = KeyLimits::default();
        let start = Instant::now();
        limits.count_request(4, start);
        limits.count_request(4, start);
        limits.count_request(4, start);
        assert_eq!(limits.take_request(4, start), Ok(()));
        assert_eq!(limits.take_request(4, start), Err(Duration::from_secs(15)));
        // A request admitted elsewhere past the limit pushes this replica's wait on too.
        limits.count_request(4, start);
        assert_eq!(limits.take_request(4, start), Err(Duration::from_secs(30)));
    }
}

//! Per-key limits, checked before a request reaches a model: requests per minute (a
//! GCRA limiter from `governor`), tokens per minute (a one-minute window of what the
//! key's finished requests used) and the key's lifetime token budget (summed from the
//! `usage` table, re-read every few seconds so other replicas' use counts too).
//!
//! Limits live in this gateway's memory: with several replicas, a key's minute limits
//! apply per replica, while its budget is shared through the store.

use std::{
    collections::{HashMap, VecDeque},
    num::NonZeroU32,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter, clock::Clock as _};
use slough_store::Store;
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
}

#[derive(Default)]
struct KeyLimits {
    /// The limiter and the rate it was built for (rebuilt when the key's setting changes).
    requests: Option<(u32, DefaultDirectRateLimiter)>,
    /// Tokens of finished requests in the last minute, oldest first.
    tokens: VecDeque<(Instant, u64)>,
    /// Tokens spent in all, as of `spent_read` plus what this gateway recorded since.
    spent: u64,
    spent_read: Option<Instant>,
}

impl Limits {
    pub fn new(store: Store, refresh: Duration, metrics: Arc<Metrics>) -> Limits {
        Limits {
            store,
            refresh,
            keys: Mutex::default(),
            metrics,
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
        let mut keys = self.lock();
        let limits = keys.entry(key.id).or_default();
        let now = Instant::now();
        if let Some(tpm) = key.tokens_per_minute {
            limits.forget_before(now);
            let used: u64 = limits.tokens.iter().map(|(_, tokens)| tokens).sum();
            if used >= u64::from(tpm) {
                let retry_after = limits.time_until_below(u64::from(tpm), now);
                self.metrics.reject("tokens_per_minute");
                return Err(LimitError::TokensPerMinute {
                    used,
                    limit: tpm,
                    retry_after,
                });
            }
        }
        if let Some(rpm) = key.requests_per_minute {
            let limiter = match &limits.requests {
                Some((rate, limiter)) if *rate == rpm => limiter,
                _ => &limits.requests.insert((rpm, per_minute(rpm))).1,
            };
            if let Err(not_until) = limiter.check() {
                let retry_after =
                    not_until.wait_time_from(governor::clock::DefaultClock::default().now());
                self.metrics.reject("requests_per_minute");
                return Err(LimitError::RequestsPerMinute {
                    limit: rpm,
                    retry_after,
                });
            }
        }
        Ok(())
    }

    /// Counts `tokens` a finished request of `key_id` used.
    pub fn record(&self, key_id: Uuid, tokens: u64) {
        if tokens == 0 {
            return;
        }
        let mut keys = self.lock();
        let limits = keys.entry(key_id).or_default();
        let now = Instant::now();
        limits.forget_before(now);
        limits.tokens.push_back((now, tokens));
        limits.spent += tokens;
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

/// `rpm` requests per minute, allowing a burst of all of them.
fn per_minute(rpm: u32) -> DefaultDirectRateLimiter {
    let rate = NonZeroU32::new(rpm).unwrap_or(NonZeroU32::MIN);
    RateLimiter::direct(Quota::per_minute(rate))
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
    fn rpm_limits_allow_a_burst_then_refuse() {
        let limiter = per_minute(3);
        for _ in 0..3 {
            assert!(limiter.check().is_ok());
        }
        let refused = limiter.check().unwrap_err();
        let wait = refused.wait_time_from(governor::clock::DefaultClock::default().now());
        assert!(
            wait > Duration::from_secs(10) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
    }
}

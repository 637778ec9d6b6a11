//! Admission of model requests (chat, completions, embeddings): before anything is sent
//! to a model, the bus must be up, the gateway must have an in-flight slot free, and the
//! key must be within its limits. An admitted request gets a [`Metered`] guard that holds
//! its slot and records its usage however it ends.

use std::{sync::Arc, time::Duration};

use slough_bus::Bus;
use tokio::sync::Semaphore;

use crate::{
    error::ApiError,
    keys::ApiKey,
    limits::Limits,
    metrics::Metrics,
    usage::{Metered, UsageRecorder},
};

/// Decides whether a model request may start now.
pub struct Admission {
    bus: Bus,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    limits: Arc<Limits>,
    usage: UsageRecorder,
    metrics: Arc<Metrics>,
}

impl Admission {
    /// At most `max_in_flight` model requests at once.
    pub fn new(
        bus: Bus,
        max_in_flight: usize,
        limits: Arc<Limits>,
        usage: UsageRecorder,
        metrics: Arc<Metrics>,
    ) -> Admission {
        Admission {
            bus,
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            limits,
            usage,
            metrics,
        }
    }

    /// Admits a model request of `key` on `endpoint` for `model`: 503 with `Retry-After`
    /// while the bus is down, 429 when the gateway is full or a limit of the key is
    /// reached. The returned guard records the request's usage when it ends.
    pub async fn admit(
        &self,
        key: &ApiKey,
        endpoint: &'static str,
        model: &str,
    ) -> Result<Metered, ApiError> {
        if !self.bus.is_connected() {
            // Answer now rather than after the request timeout: nothing can reach a model
            // until the connection is back (it reconnects within a second of NATS).
            self.metrics.reject("bus_down");
            return Err(ApiError::unavailable(
                "the gateway has lost its connection to the message bus; retry shortly",
                Duration::from_secs(1),
            ));
        }
        let Ok(slot) = self.in_flight.clone().try_acquire_owned() else {
            self.metrics.reject("in_flight");
            return Err(ApiError::rate_limited(
                "gateway_busy",
                format!(
                    "the gateway is answering its limit of {} requests; retry shortly",
                    self.max_in_flight
                ),
                Duration::from_secs(1),
            ));
        };
        self.limits.admit(key).await?;
        Ok(Metered::new(
            self.usage.clone(),
            self.limits.clone(),
            slot,
            key.id,
            endpoint,
            model,
        ))
    }
}

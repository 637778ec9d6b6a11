//! Where inference requests go. NATS's queue group picks a replica at random per
//! request, so with two inference replicas eight streams can all land on one while the
//! other idles. Each replica publishes its load (`slough.v1.events.inference.load`, a
//! few times a second while it changes); the gateway keeps the latest reports here and
//! sends each request to the replica serving the model with the most room, straight to
//! that replica's own subject. With no fresh report (one replica, or just after start)
//! the queue group decides, as before.
//!
//! A replica that dies stops reporting: requests waiting on it are given up once its
//! last report is 1.5 s old, and idempotent ones ([`Replicas::call`]) are sent once more
//! to another replica, so nobody waits out the request timeout for a replica that is gone.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::{Duration, Instant},
};

use prometheus::IntGauge;
use serde::{Serialize, de::DeserializeOwned};
use slough_bus::{Bus, BusError};
use slough_protocol::{
    Endpoint,
    inference::{self, InstanceLoad, ModelInfo, ModelsRequest},
};
use tokio_util::sync::CancellationToken;

/// A report older than this is not trusted: its replica may be gone.
const FRESH_FOR: Duration = Duration::from_millis(1500);
/// How long the model list waits for each replica.
const LIST_WAIT: Duration = Duration::from_secs(2);

/// The inference replicas' latest load, by instance id.
///
/// A plain mutex rather than an actor: every generation reads it on its way out, the
/// lock is held for a lookup and never across an await.
#[derive(Debug)]
pub struct Replicas {
    known: Mutex<HashMap<String, Replica>>,
    /// How many replicas have fresh reports (`slough_gateway_inference_replicas`).
    fresh: IntGauge,
}

#[derive(Debug)]
struct Replica {
    reported_at: Instant,
    /// By model: requests running or queued, and how many run at once.
    models: HashMap<String, (u32, u32)>,
    /// Generations sent to it since its last report, by model (not in the report yet).
    sent: HashMap<String, u32>,
}

/// One replica as [`least_loaded`] sees it for a model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate<'a> {
    pub instance: &'a str,
    /// Requests it holds for the model (reported, plus sent since the report).
    pub pending: u32,
    /// How many of them it runs at once.
    pub capacity: u32,
}

/// The candidate with the most room: the lowest share of its capacity in use, the most
/// free slots on a tie, the first on a full tie. `None` when there is none.
pub fn least_loaded<'a>(candidates: &[Candidate<'a>]) -> Option<&'a str> {
    let share = |c: &Candidate<'_>| f64::from(c.pending) / f64::from(c.capacity.max(1));
    let free = |c: &Candidate<'_>| i64::from(c.capacity) - i64::from(c.pending);
    candidates
        .iter()
        .min_by(|a, b| {
            share(a)
                .total_cmp(&share(b))
                .then_with(|| free(b).cmp(&free(a)))
        })
        .map(|c| c.instance)
}

impl Replicas {
    /// No replica known yet; `fresh` counts those with fresh reports.
    pub fn new(fresh: IntGauge) -> Replicas {
        Replicas {
            known: Mutex::default(),
            fresh,
        }
    }

    /// Takes a replica's report. What was sent to it since the last one is taken as
    /// counted in it as far as its pending count grew; the rest is still on its way
    /// (so a report arriving in the middle of a burst does not forget it).
    pub fn update(&self, report: InstanceLoad) {
        let models: HashMap<String, (u32, u32)> = report
            .models
            .into_iter()
            .map(|load| (load.model, (load.pending, load.capacity)))
            .collect();
        let mut known = self.lock();
        let sent = known
            .remove(&report.instance_id)
            .map(|previous| still_on_the_way(&previous, &models))
            .unwrap_or_default();
        known.insert(
            report.instance_id,
            Replica {
                reported_at: Instant::now(),
                models,
                sent,
            },
        );
        self.drop_stale(&mut known);
    }

    /// Forgets replicas whose last report is too old, and counts the others.
    fn drop_stale(&self, known: &mut HashMap<String, Replica>) {
        known.retain(|_, replica| replica.reported_at.elapsed() < FRESH_FOR);
        self.fresh
            .set(i64::try_from(known.len()).unwrap_or(i64::MAX));
    }

    /// The replica to send a request for `model` to, counted as sent there; `None`
    /// when no fresh report names the model (the queue group decides then).
    pub fn pick(&self, model: &str) -> Option<String> {
        self.choose(model, None)
    }

    /// The replica with the most room for `model`, other than `except`, counted as sent
    /// there.
    fn choose(&self, model: &str, except: Option<&str>) -> Option<String> {
        let mut known = self.lock();
        self.drop_stale(&mut known);
        let candidates: Vec<Candidate<'_>> = known
            .iter()
            .filter(|(instance, _)| Some(instance.as_str()) != except)
            .filter_map(|(instance, replica)| {
                let &(pending, capacity) = replica.models.get(model)?;
                let sent = replica.sent.get(model).copied().unwrap_or(0);
                Some(Candidate {
                    instance,
                    pending: pending + sent,
                    capacity,
                })
            })
            .collect();
        let chosen = least_loaded(&candidates)?.to_owned();
        if let Some(replica) = known.get_mut(&chosen) {
            *replica.sent.entry(model.to_owned()).or_default() += 1;
        }
        Some(chosen)
    }

    /// Calls an idempotent `endpoint` (embed, tokenize) for `model` on the replica with
    /// the most room for it. If that replica is gone (nobody answers on its subject, or
    /// its reports stop while the call waits) the call goes once more to another one.
    pub async fn call<Req, Resp>(
        &self,
        bus: &Bus,
        endpoint: &Endpoint<Req, Resp>,
        model: &str,
        request: &Req,
    ) -> Result<Resp, BusError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let mut gone: Option<String> = None;
        loop {
            let Some(instance) = self.choose(model, gone.as_deref()) else {
                return bus.call(endpoint, request).await;
            };
            let outcome = tokio::select! {
                outcome = bus.call_on(endpoint, &instance, request) => outcome,
                () = self.lost(&instance) => Err(BusError::NoResponders {
                    subject: endpoint.instance_subject(&instance),
                }),
            };
            match outcome {
                Err(BusError::NoResponders { .. } | BusError::Timeout { .. }) if gone.is_none() => {
                    tracing::warn!(%instance, endpoint = endpoint.name(), "inference replica gone; asking another");
                    self.forget(&instance);
                    gone = Some(instance);
                }
                outcome => return outcome,
            }
        }
    }

    /// Every model the inference replicas serve, once each, sorted by id. With their
    /// load known, every replica is asked (a fleet may serve different models on
    /// different replicas, and each answers from memory within [`LIST_WAIT`]);
    /// otherwise one, through the queue group.
    pub async fn models(&self, bus: &Bus) -> Result<Vec<ModelInfo>, BusError> {
        let instances = self.instances();
        if instances.is_empty() {
            return Ok(bus
                .call(&inference::MODELS, &ModelsRequest {})
                .await?
                .models);
        }
        let asked = instances.iter().map(|instance| {
            let call = bus.call_on(&inference::MODELS, instance, &ModelsRequest {});
            tokio::time::timeout(LIST_WAIT, call)
        });
        let mut models = BTreeMap::new();
        let mut failure = None;
        for answer in futures::future::join_all(asked).await {
            match answer {
                Ok(Ok(answer)) => {
                    for model in answer.models {
                        models.entry(model.id.clone()).or_insert(model);
                    }
                }
                Ok(Err(err)) => failure = Some(err),
                Err(_) => {}
            }
        }
        match failure {
            Some(failure) if models.is_empty() => Err(failure),
            _ => Ok(models.into_values().collect()),
        }
    }

    /// Resolves once `instance` has not reported for [`FRESH_FOR`] (it is gone).
    async fn lost(&self, instance: &str) {
        loop {
            tokio::time::sleep(FRESH_FOR / 4).await;
            let fresh = self
                .lock()
                .get(instance)
                .is_some_and(|replica| replica.reported_at.elapsed() < FRESH_FOR);
            if !fresh {
                return;
            }
        }
    }

    /// The replicas with a fresh report that serve at least one model.
    pub fn instances(&self) -> Vec<String> {
        let mut known = self.lock();
        self.drop_stale(&mut known);
        known
            .iter()
            .filter(|(_, replica)| !replica.models.is_empty())
            .map(|(instance, _)| instance.clone())
            .collect()
    }

    /// Forgets a replica that did not answer (it went away before its report aged).
    pub fn forget(&self, instance: &str) {
        let mut known = self.lock();
        known.remove(instance);
        self.drop_stale(&mut known);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Replica>> {
        self.known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What was sent to a replica and is not in its new report yet: per model, the requests
/// sent since the previous report beyond what its pending count grew by.
fn still_on_the_way(
    previous: &Replica,
    models: &HashMap<String, (u32, u32)>,
) -> HashMap<String, u32> {
    previous
        .sent
        .iter()
        .filter_map(|(model, &sent)| {
            let before = previous
                .models
                .get(model)
                .map_or(0, |&(pending, _)| pending);
            let now = models.get(model).map_or(0, |&(pending, _)| pending);
            let left = sent.saturating_sub(now.saturating_sub(before));
            (left > 0).then(|| (model.clone(), left))
        })
        .collect()
}

/// Keeps `replicas` up to date with the load reports until `shutdown`.
pub async fn follow(
    bus: Bus,
    replicas: std::sync::Arc<Replicas>,
    shutdown: CancellationToken,
) -> Result<(), slough_bus::BusError> {
    let mut reports = bus.subscribe(&inference::LOAD_REPORTS).await?;
    tokio::spawn(async move {
        loop {
            let report = tokio::select! {
                report = reports.next() => report,
                () = shutdown.cancelled() => return,
            };
            match report {
                Some(Ok(report)) => replicas.update(report),
                Some(Err(err)) => tracing::warn!("unreadable load report: {err}"),
                None => return,
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use slough_protocol::inference::ModelLoad;

    fn candidate(instance: &str, pending: u32, capacity: u32) -> Candidate<'_> {
        Candidate {
            instance,
            pending,
            capacity,
        }
    }

    #[test]
    fn the_replica_with_the_most_room_wins() {
        assert_eq!(least_loaded(&[]), None);
        let idle_and_busy = [candidate("a", 5, 16), candidate("b", 0, 16)];
        assert_eq!(least_loaded(&idle_and_busy), Some("b"));
        // Shares, not counts: 4 of 16 is less loaded than 2 of 4.
        let sizes = [candidate("small", 2, 4), candidate("big", 4, 16)];
        assert_eq!(least_loaded(&sizes), Some("big"));
        // Equal shares: the one with more free slots.
        let tie = [candidate("small", 1, 2), candidate("big", 8, 16)];
        assert_eq!(least_loaded(&tie), Some("big"));
    }

    fn report(instance: &str, pending: u32) -> InstanceLoad {
        InstanceLoad {
            instance_id: instance.to_owned(),
            models: vec![ModelLoad {
                model: "m".to_owned(),
                pending,
                capacity: 16,
            }],
        }
    }

    #[test]
    fn a_report_keeps_what_was_sent_and_has_not_arrived() {
        let previous = Replica {
            reported_at: Instant::now(),
            models: HashMap::from([("m".to_owned(), (1, 16))]),
            sent: HashMap::from([("m".to_owned(), 4)]),
        };
        // Three of the four sent arrived: one is still on its way.
        let now = HashMap::from([("m".to_owned(), (4, 16))]);
        assert_eq!(
            still_on_the_way(&previous, &now),
            HashMap::from([("m".to_owned(), 1)])
        );
        // All four arrived: nothing left.
        let now = HashMap::from([("m".to_owned(), (5, 16))]);
        assert!(still_on_the_way(&previous, &now).is_empty());
        // Requests finished meanwhile hide arrivals: the sent ones keep counting (the
        // safe direction: the replica looks busier, not idler).
        let now = HashMap::from([("m".to_owned(), (0, 16))]);
        assert_eq!(
            still_on_the_way(&previous, &now),
            HashMap::from([("m".to_owned(), 4)])
        );
    }

    #[test]
    fn requests_arriving_together_are_spread_before_the_next_report() {
        let fresh = IntGauge::new("fresh", "fresh").unwrap();
        let replicas = Replicas::new(fresh.clone());
        assert_eq!(
            replicas.pick("m"),
            None,
            "no reports: the queue group decides"
        );
        replicas.update(report("a", 0));
        replicas.update(report("b", 0));
        assert_eq!(fresh.get(), 2);
        let mut counts: HashMap<String, u32> = HashMap::new();
        for _ in 0..8 {
            *counts.entry(replicas.pick("m").unwrap()).or_default() += 1;
        }
        assert_eq!(counts.get("a"), Some(&4));
        assert_eq!(counts.get("b"), Some(&4));
        assert_eq!(replicas.pick("other model"), None);
        replicas.update(report("a", 1));
        replicas.forget("b");
        assert_eq!(fresh.get(), 1);
        assert_eq!(replicas.pick("m").as_deref(), Some("a"));
    }
}

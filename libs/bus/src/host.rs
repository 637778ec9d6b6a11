//! Hosting a service on the bus: registration with the NATS micro-service API, typed
//! endpoints whose handlers run concurrently (up to a limit per endpoint, beyond which a
//! request is answered `overloaded`), metrics, and a drain on shutdown.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use async_nats::service::ServiceExt as _;
use futures::StreamExt as _;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use serde::{Serialize, de::DeserializeOwned};
use slough_protocol::{
    Endpoint, ErrorBody, ErrorCode, ServiceKind, StreamEndpoint, stream::CancelRequest, subjects,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument as _;

use tokio::sync::Semaphore;

use crate::{
    Bus, BusError, DEADLINE_HEADER,
    client::{decode, encode},
    reply::respond,
    stream::{StreamShared, StreamStart},
    trace,
};

/// How an instance introduces itself in `$SRV.INFO`.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Which service; also the NATS service name and queue group.
    pub kind: ServiceKind,
    /// The crate version.
    pub version: String,
    /// One line saying what the service does.
    pub description: String,
    /// Extra `$SRV.INFO` metadata, e.g. the admin URL.
    pub metadata: HashMap<String, String>,
    /// How many requests each endpoint handles at once.
    pub concurrency: Concurrency,
}

/// How many requests an instance handles at once per endpoint (a stream counts until
/// its final frame); one more is answered `overloaded` with a retry hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Concurrency {
    /// The limit of an endpoint not named in `by_endpoint`.
    pub default: usize,
    /// Limits by endpoint name (`generate`, `ingest`, ...).
    pub by_endpoint: HashMap<String, usize>,
}

impl Default for Concurrency {
    fn default() -> Self {
        Concurrency {
            default: 256,
            by_endpoint: HashMap::new(),
        }
    }
}

impl Concurrency {
    /// The limit of endpoint `name`.
    pub fn limit(&self, name: &str) -> usize {
        self.by_endpoint
            .get(name)
            .copied()
            .unwrap_or(self.default)
            .max(1)
    }
}

/// A service instance registered on the bus. Add endpoints with [`ServiceHost::serve`]
/// and [`ServiceHost::serve_stream`], then [`ServiceHost::run`].
pub struct ServiceHost {
    bus: Bus,
    kind: ServiceKind,
    service: async_nats::service::Service,
    id: String,
    tasks: TaskTracker,
    stop: CancellationToken,
    metrics: HostMetrics,
    concurrency: Concurrency,
    /// Open streams by request id, so a cancellation can find its stream.
    streams: Arc<Mutex<HashMap<String, CancellationToken>>>,
    listening_for_cancels: bool,
}

/// How long [`ServiceHost::serve`] waits for in-flight requests after shutdown.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

impl ServiceHost {
    /// Registers the instance: it answers `$SRV.PING/INFO/STATS` from now on.
    pub async fn register(
        bus: &Bus,
        registration: Registration,
        registry: &Registry,
    ) -> Result<ServiceHost, BusError> {
        let kind = registration.kind;
        let service = bus
            .client()
            .service_builder()
            .description(registration.description)
            .metadata(registration.metadata)
            .queue_group(kind.name())
            .start(kind.name(), registration.version)
            .await
            .map_err(BusError::nats)?;
        let id = service.info().await.id;
        let metrics = HostMetrics::register(kind, registry)?;
        tracing::info!(service = %kind, instance = %id, "registered on the bus");
        Ok(ServiceHost {
            bus: bus.clone(),
            kind,
            service,
            id,
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
            metrics,
            concurrency: registration.concurrency,
            streams: Arc::default(),
            listening_for_cancels: false,
        })
    }

    /// The instance id (unique per registration).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The service this instance belongs to.
    pub fn kind(&self) -> ServiceKind {
        self.kind
    }

    /// Serves a request/reply endpoint. Each request is decoded and handed, with a clone
    /// of `state`, to `handler` on its own task, and always answered: with the handler's
    /// value, or with its error and code.
    pub async fn serve<S, Req, Resp, F, Fut>(
        &mut self,
        endpoint: &Endpoint<Req, Resp>,
        state: S,
        handler: F,
    ) -> Result<(), BusError>
    where
        S: Clone + Send + Sync + 'static,
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(S, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, ErrorBody>> + Send + 'static,
    {
        let name = endpoint.name();
        let handler = Arc::new(handler);
        let endpoint_name: Arc<str> = name.into();
        let metrics = self.metrics.clone();
        let bus = self.bus.clone();
        let handle = move |request: async_nats::service::Request| {
            let handler = handler.clone();
            let name = endpoint_name.clone();
            let metrics = metrics.clone();
            let bus = bus.clone();
            let state = state.clone();
            async move {
                let started = Instant::now();
                let result = match decode::<Req>(&request.message.subject, &request.message.payload)
                {
                    Ok(decoded) => handler(state, decoded).await,
                    Err(err) => Err(invalid_request(&name, &err)),
                };
                let subject = request.message.subject.as_str();
                let result = result.and_then(|value| {
                    let payload = encode(subject, &value).map_err(|err| err.to_body())?;
                    // A reply the server would refuse is an error reply, never silence.
                    bus.check_size(subject, payload.len())
                        .map_err(|err| err.to_body())?;
                    Ok(payload)
                });
                metrics.observe(&name, result.as_ref().err(), started);
                respond(&request, result).await;
            }
        };
        let instance_subject = endpoint.instance_subject(&self.id);
        self.serve_on_both(endpoint.subject(), instance_subject, name, handle)
            .await
    }

    /// Serves a streaming endpoint. The handler gets a clone of `state`, the request and
    /// a [`StreamStart`]: it refuses by returning an error before [`StreamStart::accept`]
    /// (the caller gets an error reply), or accepts and then sends chunks and a final
    /// frame. An error returned after accepting becomes the final error frame; a handler
    /// that forgets the final frame gets one sent for it.
    pub async fn serve_stream<S, Req, C, E, F, Fut>(
        &mut self,
        endpoint: &StreamEndpoint<Req, C, E>,
        state: S,
        handler: F,
    ) -> Result<(), BusError>
    where
        S: Clone + Send + Sync + 'static,
        Req: DeserializeOwned + Send + 'static,
        C: Serialize + Send + 'static,
        E: Serialize + Send + 'static,
        F: Fn(S, Req, StreamStart<C, E>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), ErrorBody>> + Send + 'static,
    {
        self.listen_for_cancels().await?;
        let name = endpoint.name();
        let handler = Arc::new(handler);
        let endpoint_name: Arc<str> = name.into();
        let metrics = self.metrics.clone();
        let streams = self.streams.clone();
        let client = self.bus.client().clone();
        let instance_id: Arc<str> = self.id.as_str().into();
        let heartbeat = self.bus.options().heartbeat;
        let handle = move |request: async_nats::service::Request| {
            let state = state.clone();
            let handler = handler.clone();
            let name = endpoint_name.clone();
            let metrics = metrics.clone();
            let streams = streams.clone();
            let client = client.clone();
            let instance_id = instance_id.clone();
            async move {
                let started = Instant::now();
                let envelope = match decode::<slough_protocol::stream::StreamRequest<Req>>(
                    &request.message.subject,
                    &request.message.payload,
                ) {
                    Ok(envelope) => envelope,
                    Err(err) => {
                        let error = invalid_request(&name, &err);
                        metrics.observe(&name, Some(&error), started);
                        respond(&request, Err(error)).await;
                        return;
                    }
                };
                let shared = Arc::new(StreamShared::new(
                    client,
                    envelope.inbox,
                    envelope.request_id.clone(),
                    heartbeat,
                ));
                streams
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(envelope.request_id.clone(), shared.cancel.clone());
                metrics.streams_active.with_label_values(&[&name]).inc();
                let request = Arc::new(tokio::sync::Mutex::new(Some(request)));
                let start =
                    StreamStart::new(shared.clone(), request.clone(), instance_id.to_string());
                let outcome = handler(state, envelope.request, start).await;

                let unanswered = request.lock().await.take();
                let error = match (unanswered, outcome) {
                    // Refused before accepting: an ordinary error reply.
                    (Some(request), Err(error)) => {
                        respond(&request, Err(error.clone())).await;
                        Some(error)
                    }
                    (Some(request), Ok(())) => {
                        let error = ErrorBody::new(
                            ErrorCode::Internal,
                            format!("{name} neither accepted nor refused the stream"),
                        );
                        respond(&request, Err(error.clone())).await;
                        Some(error)
                    }
                    // Accepted: make sure the stream has its final frame.
                    (None, outcome) => {
                        let error = match outcome {
                            Err(error) => Some(error),
                            Ok(()) if shared.cancel.is_cancelled() => Some(ErrorBody::new(
                                ErrorCode::Cancelled,
                                "cancelled by the caller",
                            )),
                            Ok(()) => Some(ErrorBody::new(
                                ErrorCode::Internal,
                                format!("{name} ended the stream without a final frame"),
                            )),
                        };
                        match error {
                            Some(error) if !shared.is_finished().await => {
                                let _ = shared.send_error(error.clone()).await;
                                Some(error)
                            }
                            _ => None,
                        }
                    }
                };
                shared.close();
                streams
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&shared.request_id);
                metrics.streams_active.with_label_values(&[&name]).dec();
                metrics.observe(&name, error.as_ref(), started);
            }
        };
        let instance_subject = endpoint.instance_subject(&self.id);
        self.serve_on_both(endpoint.subject(), instance_subject, name, handle)
            .await
    }

    /// Every replica answers on the endpoint's shared subject (the queue group picks one)
    /// and on its own instance subject, for callers that choose the replica (the least
    /// loaded, or another one when the first is gone). Both count against the endpoint's
    /// one concurrency limit.
    async fn serve_on_both<H, Fut>(
        &mut self,
        subject: String,
        instance_subject: String,
        name: &str,
        handle: H,
    ) -> Result<(), BusError>
    where
        H: Fn(async_nats::service::Request) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let direct = format!("{name}-direct");
        let limit = Arc::new(Semaphore::new(self.concurrency.limit(name)));
        self.serve_endpoint(
            instance_subject,
            &direct,
            name,
            limit.clone(),
            handle.clone(),
        )
        .await?;
        self.serve_endpoint(subject, name, name, limit, handle)
            .await
    }

    /// Answers requests until `shutdown`, then stops taking requests, waits (up to 10 s)
    /// for in-flight ones, and deregisters.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), BusError> {
        shutdown.cancelled().await;
        self.stop.cancel();
        self.tasks.close();
        if tokio::time::timeout(DRAIN_LIMIT, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(service = %self.kind, "in-flight requests still running after {DRAIN_LIMIT:?}; leaving them");
        }
        self.service.stop().await.map_err(BusError::nats)?;
        tracing::info!(service = %self.kind, instance = %self.id, "left the bus");
        Ok(())
    }

    /// Subscribes `handle` to `subject` as the service API endpoint `name`; metrics and
    /// spans call it `label`. A request that finds no permit in `limit` is answered
    /// `overloaded` at once.
    async fn serve_endpoint<H, Fut>(
        &mut self,
        subject: String,
        name: &str,
        label: &str,
        limit: Arc<Semaphore>,
        handle: H,
    ) -> Result<(), BusError>
    where
        H: Fn(async_nats::service::Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut endpoint = self
            .service
            .endpoint_builder()
            .name(name)
            .add(subject.clone())
            .await
            .map_err(BusError::nats)?;
        // Once this returns, the server knows the subscription: a request from another
        // connection reaches it rather than finding no responders.
        self.bus.round_trip().await?;
        let tasks = self.tasks.clone();
        let stop = self.stop.clone();
        let endpoint_name = label.to_owned();
        let metrics = self.metrics.clone();
        let most = self.concurrency.limit(label);
        let kind = self.kind;
        self.metrics.announce(label);
        self.tasks.spawn(async move {
            loop {
                let request = tokio::select! {
                    () = stop.cancelled() => break,
                    request = endpoint.next() => match request {
                        Some(request) => request,
                        None => break,
                    },
                };
                let span = tracing::info_span!(
                    "bus.handle",
                    otel.kind = "server",
                    messaging.system = "nats",
                    messaging.destination.name = %subject,
                    endpoint = %endpoint_name,
                    trace_id = tracing::field::Empty,
                );
                trace::adopt(&span, request.message.headers.as_ref());
                record_trace_id(&span);
                if let Some(late_by) = past_deadline(&request) {
                    // The caller gave up already (e.g. the request waited in a client's
                    // buffer while NATS was down): do not run work nobody waits for.
                    let error = BusError::DeadlinePassed {
                        subject: subject.clone(),
                        late_by,
                    }
                    .to_body();
                    tracing::debug!(parent: &span, %subject, ?late_by, "dropping a request past its deadline");
                    metrics.observe(&endpoint_name, Some(&error), Instant::now());
                    tasks.spawn(async move { respond(&request, Err(error)).await });
                    continue;
                }
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    let error = ErrorBody::overloaded(
                        format!(
                            "this {kind} instance is handling {most} {endpoint_name} requests \
                             already (nats.max_in_flight); try again shortly"
                        ),
                        1000,
                    );
                    metrics.observe(&endpoint_name, Some(&error), Instant::now());
                    tasks.spawn(async move { respond(&request, Err(error)).await });
                    continue;
                };
                let in_flight = metrics.in_flight.with_label_values(&[&endpoint_name]);
                in_flight.inc();
                let work = handle(request).instrument(span);
                tasks.spawn(async move {
                    work.await;
                    in_flight.dec();
                    drop(permit);
                });
            }
            let _ = endpoint.stop().await;
        });
        Ok(())
    }

    async fn listen_for_cancels(&mut self) -> Result<(), BusError> {
        if self.listening_for_cancels {
            return Ok(());
        }
        self.listening_for_cancels = true;
        let subject = subjects::cancel(self.kind);
        let mut subscriber = self
            .bus
            .client()
            .subscribe(subject.clone())
            .await
            .map_err(BusError::nats)?;
        self.bus.round_trip().await?;
        let streams = self.streams.clone();
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            loop {
                let message = tokio::select! {
                    () = stop.cancelled() => break,
                    message = subscriber.next() => match message {
                        Some(message) => message,
                        None => break,
                    },
                };
                let Ok(cancel) = decode::<CancelRequest>(&subject, &message.payload) else {
                    tracing::warn!(%subject, "ignoring an undecodable cancellation");
                    continue;
                };
                let token = streams.lock().unwrap_or_else(|p| p.into_inner()).get(&cancel.request_id).cloned();
                if let Some(token) = token {
                    tracing::info!(request_id = %cancel.request_id, "stream cancelled by its caller");
                    token.cancel();
                }
            }
        });
        Ok(())
    }
}

fn invalid_request(endpoint: &str, err: &BusError) -> ErrorBody {
    let reason = match err {
        BusError::Codec { reason, .. } => reason.clone(),
        other => other.to_string(),
    };
    ErrorBody::new(
        ErrorCode::InvalidRequest,
        format!("invalid {endpoint} request: {reason}"),
    )
}

/// How long ago the request's deadline passed, if it did.
fn past_deadline(request: &async_nats::service::Request) -> Option<Duration> {
    let deadline_ms: u64 = request
        .message
        .headers
        .as_ref()?
        .get(DEADLINE_HEADER)?
        .as_str()
        .parse()
        .ok()?;
    let deadline = SystemTime::UNIX_EPOCH + Duration::from_millis(deadline_ms);
    SystemTime::now().duration_since(deadline).ok()
}

fn record_trace_id(span: &tracing::Span) {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let context = span.context();
    let otel_span = context.span();
    let span_context = otel_span.span_context();
    if span_context.is_valid() {
        span.record("trace_id", span_context.trace_id().to_string());
    }
}

/// Per-service bus metrics.
#[derive(Clone)]
struct HostMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    streams_active: IntGaugeVec,
    in_flight: IntGaugeVec,
}

const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

impl HostMetrics {
    fn register(kind: ServiceKind, registry: &Registry) -> Result<HostMetrics, BusError> {
        let metric_error =
            |err: prometheus::Error| BusError::Nats(format!("cannot register bus metrics: {err}"));
        let requests = IntCounterVec::new(
            Opts::new(
                format!("slough_{kind}_bus_requests_total"),
                "Requests handled on the bus, by endpoint and outcome (ok or an error code).",
            ),
            &["endpoint", "code"],
        )
        .map_err(metric_error)?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                format!("slough_{kind}_bus_request_duration_seconds"),
                "Time from receiving a request to its reply (for streams: to the final frame).",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["endpoint"],
        )
        .map_err(metric_error)?;
        let streams_active = IntGaugeVec::new(
            Opts::new(
                format!("slough_{kind}_bus_streams_active"),
                "Streams currently being produced, by endpoint.",
            ),
            &["endpoint"],
        )
        .map_err(metric_error)?;
        let in_flight = IntGaugeVec::new(
            Opts::new(
                format!("slough_{kind}_bus_requests_in_flight"),
                "Requests being handled, by endpoint (at most its nats.max_in_flight; beyond it \
                 requests are answered overloaded).",
            ),
            &["endpoint"],
        )
        .map_err(metric_error)?;
        registry
            .register(Box::new(in_flight.clone()))
            .map_err(metric_error)?;
        registry
            .register(Box::new(requests.clone()))
            .map_err(metric_error)?;
        registry
            .register(Box::new(duration.clone()))
            .map_err(metric_error)?;
        registry
            .register(Box::new(streams_active.clone()))
            .map_err(metric_error)?;
        Ok(HostMetrics {
            requests,
            duration,
            streams_active,
            in_flight,
        })
    }

    /// Creates the endpoint's series at zero, so dashboards see it before its first
    /// request and `rate()` has a starting point.
    fn announce(&self, endpoint: &str) {
        self.requests.with_label_values(&[endpoint, "ok"]);
        self.duration.with_label_values(&[endpoint]);
        self.in_flight.with_label_values(&[endpoint]);
    }

    fn observe(&self, endpoint: &str, error: Option<&ErrorBody>, started: Instant) {
        let code = error.map_or("ok", |error| error.code.as_str());
        self.requests.with_label_values(&[endpoint, code]).inc();
        self.duration
            .with_label_values(&[endpoint])
            .observe(started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_named_in_the_limits_takes_its_own_and_never_zero() {
        let concurrency = Concurrency {
            default: 16,
            by_endpoint: HashMap::from([("ingest".to_owned(), 2), ("embed".to_owned(), 0)]),
        };
        assert_eq!(concurrency.limit("ingest"), 2);
        assert_eq!(concurrency.limit("search"), 16);
        assert_eq!(concurrency.limit("embed"), 1, "0 would refuse everything");
    }

    #[test]
    fn an_undecodable_request_names_the_endpoint_and_the_reason() {
        let err = BusError::Codec {
            subject: "slough.v1.rag.search".to_owned(),
            reason: "missing field `query`".to_owned(),
        };
        let body = invalid_request("search", &err);
        assert_eq!(body.code, ErrorCode::InvalidRequest);
        assert_eq!(
            body.message,
            "invalid search request: missing field `query`"
        );
    }
}

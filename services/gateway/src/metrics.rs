//! The gateway's metrics (`slough_gateway_<what>_<unit>`). Labels are bounded: `route`
//! is the matched route pattern (or `unmatched`), `status` the HTTP status code.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Every gateway metric.
pub struct Metrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    /// SSE responses being streamed now.
    pub active_streams: IntGauge,
    /// Inference requests (chat, completions, embeddings) being answered now.
    pub in_flight: IntGauge,
    rejections: IntCounterVec,
    tokens: IntCounterVec,
    /// Usage rows lost because the writer fell behind.
    pub usage_dropped: IntCounter,
    /// Inference replicas whose load the gateway knows.
    pub inference_replicas: IntGauge,
    /// Personal data found in requests, by type and what the key's policy did.
    pii_findings: IntCounterVec,
    /// Audit events recorded, by action and outcome, and those that could not be.
    audit_events: IntCounterVec,
    /// 1 while the audit chain verified intact at the last check, 0 once broken.
    pub audit_chain_intact: IntGauge,
    /// Records in the audit chain at the last check.
    pub audit_chain_records: IntGauge,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

impl Metrics {
    pub fn register(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "slough_gateway_requests_total",
                "HTTP requests answered, by route and status.",
            ),
            &["route", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "slough_gateway_request_duration_seconds",
                "Time from receiving a request to sending the response head (the first \
                 byte of a stream), by route.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )?;
        let active_streams = IntGauge::new(
            "slough_gateway_active_streams",
            "Server-sent event streams open now.",
        )?;
        let in_flight = IntGauge::new(
            "slough_gateway_in_flight_requests",
            "Model requests (chat, completions, embeddings) being answered now.",
        )?;
        let rejections = IntCounterVec::new(
            Opts::new(
                "slough_gateway_limit_rejections_total",
                "Model requests refused before reaching a model, by reason: 429s for \
                 requests_per_minute, tokens_per_minute, token_budget, in_flight, \
                 upstream_overloaded; 503s for bus_down.",
            ),
            &["limit"],
        )?;
        let tokens = IntCounterVec::new(
            Opts::new(
                "slough_gateway_tokens_total",
                "Tokens of answered requests, by direction (prompt, completion).",
            ),
            &["direction"],
        )?;
        let usage_dropped = IntCounter::new(
            "slough_gateway_usage_dropped_total",
            "Usage rows not stored because the writer's queue was full.",
        )?;
        let inference_replicas = IntGauge::new(
            "slough_gateway_inference_replicas",
            "Inference replicas whose load reports are fresh; generations and embeddings \
             go to the one with the most room.",
        )?;
        let pii_findings = IntCounterVec::new(
            Opts::new(
                "slough_gateway_pii_findings_total",
                "Personal data found in requests sent to models, by type and by what the \
                 key's policy did (masked or blocked).",
            ),
            &["type", "action"],
        )?;
        registry.register(Box::new(pii_findings.clone()))?;
        let audit_events = IntCounterVec::new(
            Opts::new(
                "slough_gateway_audit_events_total",
                "Audit events by action (method and route) and outcome; outcome \
                 `unrecorded` counts events the store did not take.",
            ),
            &["action", "outcome"],
        )?;
        registry.register(Box::new(audit_events.clone()))?;
        let audit_chain_intact = IntGauge::new(
            "slough_gateway_audit_chain_intact",
            "1 when the audit log's hash chain verified intact at the last check (every              gateway.audit_check_s), 0 when a record was found edited, deleted or inserted.",
        )?;
        registry.register(Box::new(audit_chain_intact.clone()))?;
        let audit_chain_records = IntGauge::new(
            "slough_gateway_audit_chain_records",
            "Records in the audit log's hash chain at the last check.",
        )?;
        registry.register(Box::new(audit_chain_records.clone()))?;
        registry.register(Box::new(inference_replicas.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(active_streams.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(rejections.clone()))?;
        registry.register(Box::new(tokens.clone()))?;
        registry.register(Box::new(usage_dropped.clone()))?;
        Ok(Metrics {
            requests,
            duration,
            active_streams,
            in_flight,
            rejections,
            tokens,
            usage_dropped,
            inference_replicas,
            pii_findings,
            audit_events,
            audit_chain_intact,
            audit_chain_records,
        })
    }

    /// Counts an audit event of `action` that ended as `outcome` (`unrecorded` when the
    /// store did not take it).
    pub fn audited(&self, action: &str, outcome: &str) {
        self.audit_events
            .with_label_values(&[action, outcome])
            .inc();
    }

    /// Counts `count` findings of `kind` that a key's policy `action`ed.
    pub fn pii_found(&self, kind: &str, action: &str, count: u64) {
        self.pii_findings
            .with_label_values(&[kind, action])
            .inc_by(count);
    }

    /// Counts one answered request.
    pub fn request(&self, route: &str, status: u16, seconds: f64) {
        self.requests
            .with_label_values(&[route, &status.to_string()])
            .inc();
        self.duration.with_label_values(&[route]).observe(seconds);
    }

    /// Counts a refusal for `limit` (see the metric's description).
    pub fn reject(&self, limit: &str) {
        self.rejections.with_label_values(&[limit]).inc();
    }

    /// Counts the tokens of a finished request.
    pub fn tokens(&self, prompt: u64, completion: u64) {
        self.tokens.with_label_values(&["prompt"]).inc_by(prompt);
        self.tokens
            .with_label_values(&["completion"])
            .inc_by(completion);
    }
}

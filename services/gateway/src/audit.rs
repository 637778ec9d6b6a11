//! The audit log: every request with a valid key that changes state (any method but
//! `GET` on a route that is not a read in disguise, such as a chat or a search), every
//! export of personal data, and every refusal of an admin route (403), is recorded after it is answered: who (the key's id and prefix),
//! what (the method and route, the resource and its id, the route's parameters and the
//! names of the body's fields, never their values), when, from where (the client's
//! address, the request id) and how it ended. The records form a hash chain in the store
//! (`slough_store::audit`); `slough audit verify` walks it. `GET /v1/audit` lists them.
//! [`keep`] applies the retention setting and verifies the chain on a timer.

use actix_web::{
    HttpMessage as _,
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    http::Method,
    middleware::Next,
    web,
};
use std::sync::Arc;

use serde_json::{Map, Value, json};
use slough_store::audit::NewEvent;

use crate::{keys::ApiKey, state::AppState};

/// The top-level fields of a JSON body, set by the body extractor.
#[derive(Debug, Clone)]
pub struct BodyFields(pub Vec<String>);

/// Routes that take a `POST` but change nothing: they are not audited unless refused
/// with 403.
const READS: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/personality/analyze",
    "/v1/pii/analyze",
    "/v1/pii/anonymize",
    "/v1/collections/{name}/search",
    "/v1/personas/{id}/preview",
];

/// Routes that take a `GET` and hand over personal data: audited like changes.
const EXPORTS: &[&str] = &["/v1/keys/{id}/export", "/v1/end_users/{user}/export"];

/// Whether a request on `route` with `method` changes state.
pub fn changes(method: &Method, route: &str) -> bool {
    *method != Method::GET
        && *method != Method::HEAD
        && *method != Method::OPTIONS
        && route.starts_with("/v1/")
        && !READS.contains(&route)
}

/// Whether a request on `route` with `method`, answered `status`, is audited.
fn audited(method: &Method, route: &str, status: u16) -> bool {
    changes(method, route)
        || (*method == Method::GET && EXPORTS.contains(&route))
        || (status == 403 && route.starts_with("/v1/"))
}

/// Records the request after its answer, when [`audited`] says so. A failure to record
/// is logged; the answer stands.
pub async fn record(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let method = request.method().clone();
    let route = request.match_pattern();
    let state = request.app_data::<web::Data<AppState>>().cloned();
    let response = next.call(request).await?;
    let status = response.status().as_u16();
    let (Some(route), Some(state)) = (route, state) else {
        return Ok(response);
    };
    if !audited(&method, &route, status) {
        return Ok(response);
    }
    // Read only for the requests recorded, off the path of every other.
    let address = response
        .request()
        .connection_info()
        .realip_remote_addr()
        .map(str::to_owned);
    let query: Vec<String> = web::Query::<std::collections::BTreeMap<String, String>>::from_query(
        response.request().query_string(),
    )
    .map(|query| query.into_inner().into_keys().collect())
    .unwrap_or_default();
    // The route's parameters are known once the router has matched it.
    let params: Map<String, Value> = response
        .request()
        .match_info()
        .iter()
        .map(|(name, value)| (name.to_owned(), Value::from(value)))
        .collect();
    // A request without a valid key changed nothing and is counted in the request
    // metrics; recording it would let anyone write to the store at will.
    let Some(key) = response
        .request()
        .extensions()
        .get::<Arc<ApiKey>>()
        .cloned()
    else {
        return Ok(response);
    };
    let fields = response
        .request()
        .extensions()
        .get::<BodyFields>()
        .map(|fields| fields.0.clone())
        .unwrap_or_default();
    let request_id = response
        .headers()
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let mut summary = json!({"params": params});
    if !fields.is_empty() {
        summary["fields"] = json!(fields);
    }
    if !query.is_empty() {
        summary["query"] = json!(query);
    }
    let event = NewEvent {
        actor: key.id.to_string(),
        actor_prefix: Some(key.prefix.clone()),
        action: format!("{method} {route}"),
        resource_type: resource_type(&route).to_owned(),
        resource_id: params
            .values()
            .next()
            .and_then(Value::as_str)
            .map(str::to_owned),
        summary,
        client_address: address,
        trace_id: request_id.clone(),
        request_id,
        status,
    };
    let action = event.action.clone();
    match slough_store::audit::append(state.store.connection(), event).await {
        Ok(stored) => state.metrics.audited(&action, &stored.outcome),
        Err(err) => {
            state.metrics.audited(&action, "unrecorded");
            tracing::error!(error = %err, action, "cannot record an audit event");
        }
    }
    Ok(response)
}

/// `collections` for `/v1/collections/{name}/documents`.
fn resource_type(route: &str) -> &str {
    route
        .strip_prefix("/v1/")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or(route)
}

/// What [`keep`] does on each round.
#[derive(Debug, Clone, Copy)]
pub struct Upkeep {
    /// How long records are kept (`None`: for ever).
    pub retention: Option<chrono::Duration>,
    pub every: std::time::Duration,
}

/// Until `shutdown`, at start and then every `upkeep.every`: removes the records older
/// than the retention (behind a checkpoint), then verifies the chain and sets the
/// chain metrics. Several gateways may do it at once: a second prune finds nothing.
pub async fn keep(
    store: slough_store::Store,
    metrics: Arc<crate::metrics::Metrics>,
    upkeep: Upkeep,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(upkeep.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let db = store.connection();
        if let Some(retention) = upkeep.retention {
            match slough_store::audit::prune(db, chrono::Utc::now() - retention).await {
                Ok(Some(pruned)) => tracing::info!(
                    removed = pruned.removed,
                    checkpoint = pruned.checkpoint,
                    "audit records past their retention removed"
                ),
                Ok(None) => {}
                Err(err) => tracing::warn!(error = %err, "cannot apply the audit retention"),
            }
        }
        match slough_store::audit::verify(db).await {
            Ok(Ok(verified)) => {
                metrics.audit_chain_intact.set(1);
                metrics
                    .audit_chain_records
                    .set(i64::try_from(verified.records).unwrap_or(i64::MAX));
            }
            Ok(Err(broken)) => {
                metrics.audit_chain_intact.set(0);
                tracing::error!("the audit chain is broken at {broken}");
            }
            Err(err) => tracing::warn!(error = %err, "cannot verify the audit chain"),
        }
    }
}

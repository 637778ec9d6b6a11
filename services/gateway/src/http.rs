//! HTTP plumbing every route shares: the [`Caller`] (authenticated API key),
//! [`JsonBody`] and [`Connection`] extractors, the middleware that gives each request a
//! span and counts it, and OpenAI-shaped answers for unknown routes and methods.

use std::{
    any::Any,
    os::fd::{AsRawFd as _, RawFd},
    sync::Arc,
    time::{Duration, Instant},
};

use actix_web::{
    FromRequest, HttpMessage as _, HttpRequest,
    body::MessageBody,
    dev::{Payload, ServiceRequest, ServiceResponse},
    http::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue},
    middleware::Next,
    web,
};
use futures::future::LocalBoxFuture;
use opentelemetry::propagation::Extractor;
use serde::de::DeserializeOwned;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::{error::ApiError, keys::ApiKey, state::AppState};

/// The API key a request authenticated with (401 before the handler runs otherwise).
pub struct Caller(pub Arc<ApiKey>);

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Caller, ApiError>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = request.app_data::<web::Data<AppState>>().cloned();
        let header = request
            .headers()
            .get(AUTHORIZATION)
            .map(|value| value.to_str().unwrap_or("unreadable").to_owned());
        let request = request.clone();
        Box::pin(async move {
            let state = state.ok_or_else(|| ApiError::internal("no application state", "bug"))?;
            let key = state.keys.authenticate(header.as_deref()).await?;
            // For the audit log: who made the request.
            request.extensions_mut().insert(key.clone());
            Ok(Caller(key))
        })
    }
}

/// The client's connection, to notice that it went away while a plain (not streamed)
/// answer is being made. actix-web notices only when it writes, so without this a
/// handler awaiting a long generation would run on for nobody.
#[derive(Debug, Clone, Copy)]
pub struct Connection(Option<RawFd>);

/// The socket of an HTTP connection, stored by [`remember_socket`].
#[derive(Debug, Clone, Copy)]
struct Socket(RawFd);

/// The server's `on_connect` hook: keeps each connection's socket for [`Connection`].
pub fn remember_socket(connection: &dyn Any, data: &mut actix_web::dev::Extensions) {
    if let Some(stream) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
        data.insert(Socket(stream.as_raw_fd()));
    }
}

impl FromRequest for Connection {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Connection, ApiError>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let socket = request.conn_data::<Socket>().map(|socket| socket.0);
        std::future::ready(Ok(Connection(socket)))
    }
}

/// How often a waiting handler looks at its client's connection.
const CONNECTION_CHECK: Duration = Duration::from_millis(100);

impl Connection {
    /// Resolves once the client has closed its side of the connection (never, when the
    /// socket is unknown). Cheap: a non-blocking peek every 100 ms.
    pub async fn closed(self) {
        let Some(fd) = self.0 else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(CONNECTION_CHECK).await;
            if peer_closed(fd) {
                return;
            }
        }
    }
}

/// Whether the peer of `fd` has closed the connection: a peek that reads end-of-file or
/// fails for a reason other than "nothing to read yet".
#[allow(unsafe_code)] // std has no peek that does not block on a socket it does not own
fn peer_closed(fd: RawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: `fd` is the socket of the connection whose request is being handled; the
    // server keeps it open until the handler's future is done, and this runs inside that
    // future. recv writes at most one byte into `byte`, and MSG_PEEK leaves the data
    // for the server to read.
    let read = unsafe {
        libc::recv(
            fd,
            (&raw mut byte).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match read {
        0 => true,
        n if n > 0 => false,
        _ => !matches!(
            std::io::Error::last_os_error().kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
        ),
    }
}

/// A request body read whole: 413 over `gateway.max_body_bytes`, 408 when it does not
/// arrive within `gateway.body_timeout_s` (a client trickling a body must not hold a
/// connection and a handler for ever).
pub struct Body(pub web::Bytes);

impl FromRequest for Body {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Body, ApiError>>;

    fn from_request(request: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let (limit, timeout) = request
            .app_data::<web::Data<AppState>>()
            .map_or((0, Duration::ZERO), |state| {
                (state.max_body_bytes, state.body_timeout)
            });
        let payload = payload.take();
        Box::pin(async move { read_body(payload, limit, timeout).await.map(Body) })
    }
}

/// Reads `payload` to its end: at most `limit` bytes, within `timeout`.
pub async fn read_body(
    mut payload: Payload,
    limit: usize,
    timeout: Duration,
) -> Result<web::Bytes, ApiError> {
    use futures::StreamExt as _;
    let read = async {
        let mut body = web::BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk =
                chunk.map_err(|err| ApiError::malformed(format!("cannot read the body: {err}")))?;
            if body.len() + chunk.len() > limit {
                return Err(ApiError::too_large(limit));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or_else(|_| Err(ApiError::body_timeout(timeout)))
}

/// A JSON request body: 413 over the size limit, 408 when it is sent too slowly, 400
/// naming the field for anything else.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned + 'static> FromRequest for JsonBody<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<JsonBody<T>, ApiError>>;

    fn from_request(request: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = Body::from_request(request, payload);
        // For the audit log, on the routes that change state (not chats): which fields
        // the body set, never their values.
        let audited = request
            .match_pattern()
            .is_some_and(|route| crate::audit::changes(request.method(), &route))
            .then(|| request.clone());
        Box::pin(async move {
            let bytes = body.await?.0;
            if let Some(request) = audited
                && let Ok(fields) = serde_json::from_slice::<
                    std::collections::BTreeMap<String, serde::de::IgnoredAny>,
                >(&bytes)
            {
                let names = fields.into_keys().collect();
                request
                    .extensions_mut()
                    .insert(crate::audit::BodyFields(names));
            }
            parse_json(&bytes).map(JsonBody)
        })
    }
}

/// Decodes a JSON body; errors name the field at fault (`messages[1].role`).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::malformed(
            "the request body is empty; send a JSON object",
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::malformed(format!("the request body is not valid JSON: {inner}"));
        }
        let message = inner.to_string();
        let message = message
            .split(" at line ")
            .next()
            .unwrap_or(&message)
            .to_owned();
        // serde reports a missing field at its parent; name the field itself.
        let field = named_field(&message);
        let param = match (path.as_str(), field) {
            (".", Some(field)) => field.to_owned(),
            (".", None) => "body".to_owned(),
            (path, Some(field)) if !path.ends_with(field) => format!("{path}.{field}"),
            (path, _) => path.to_owned(),
        };
        ApiError::invalid(param.clone(), format!("{param}: {message}"))
    })?;
    deserializer
        .end()
        .map_err(|err| ApiError::malformed(format!("the request body is not valid JSON: {err}")))?;
    Ok(value)
}

fn named_field(message: &str) -> Option<&str> {
    let rest = message
        .strip_prefix("missing field `")
        .or_else(|| message.strip_prefix("unknown field `"))?;
    rest.split('`').next()
}

/// Gives every request a span (a child of the caller's `traceparent`, if any), answers
/// with its `x-request-id`, and counts it by route and status.
pub async fn observe(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let route = request
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let span = tracing::info_span!(
        "http.request",
        otel.kind = "server",
        otel.name = format!("{} {route}", request.method()),
        http.request.method = %request.method(),
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HttpHeaders(request.headers()))
    });
    let _ = span.set_parent(parent);
    let request_id = request_id(&span);
    let metrics = request
        .app_data::<web::Data<AppState>>()
        .map(|state| state.metrics.clone());
    let mut response = next.call(request).instrument(span.clone()).await;
    if let Ok(response) = &mut response
        && let Ok(value) = HeaderValue::from_str(&request_id)
    {
        response.headers_mut().insert(REQUEST_ID.clone(), value);
    }
    let status = match &response {
        Ok(response) => response.status().as_u16(),
        Err(err) => err.as_response_error().status_code().as_u16(),
    };
    span.record("http.response.status_code", status);
    if let Some(metrics) = metrics {
        metrics.request(&route, status, started.elapsed().as_secs_f64());
    }
    response
}

/// `x-request-id` on every answer: the request's trace id (to find it in traces and
/// logs), or a random id when tracing is off.
static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

fn request_id(span: &tracing::Span) -> String {
    span.in_scope(slough_telemetry::logging::current_trace_id)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
}

struct HttpHeaders<'a>(&'a HeaderMap);

impl Extractor for HttpHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|name| name.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code, reason = "only decoding is tested")]
    struct Probe {
        model: String,
        items: Vec<Item>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code, reason = "only decoding is tested")]
    struct Item {
        n: u32,
    }

    fn param_of(body: &str) -> (u16, Option<String>, String) {
        let err = parse_json::<Probe>(body.as_bytes()).unwrap_err();
        let object = err.object();
        (
            err.status().as_u16(),
            object.param.clone(),
            object.message.clone(),
        )
    }

    #[test]
    fn errors_name_the_field() {
        let (status, param, _) = param_of(r#"{"items": []}"#);
        assert_eq!((status, param.as_deref()), (400, Some("model")));
        let (_, param, message) = param_of(r#"{"model": "m", "items": [{"n": 1}, {"n": -1}]}"#);
        assert_eq!(param.as_deref(), Some("items[1].n"), "{message}");
        let (_, param, _) = param_of(r#"{"model": "m", "items": [], "temprature": 1}"#);
        assert_eq!(param.as_deref(), Some("temprature"));
        let (_, param, _) = param_of(r#"{"model": "m", "items": [{"n": 1e40}]}"#);
        assert_eq!(param.as_deref(), Some("items[0].n"));
    }

    #[test]
    fn malformed_bodies_are_not_field_errors() {
        for body in [
            "",
            "  ",
            "{",
            "{\"model\": ",
            "{\"model\": \"m\", \"items\": []} trailing",
        ] {
            let err = parse_json::<Probe>(body.as_bytes()).unwrap_err();
            assert_eq!(err.status().as_u16(), 400, "{body}");
            assert_eq!(err.object().param, None, "{body}");
        }
        let invalid_utf8 = b"{\"model\": \"\xff\xfe\", \"items\": []}";
        assert_eq!(
            parse_json::<Probe>(invalid_utf8)
                .unwrap_err()
                .status()
                .as_u16(),
            400
        );
    }
}

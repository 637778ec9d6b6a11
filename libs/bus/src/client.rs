//! Connecting to NATS and making typed requests.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use async_nats::{Client, ConnectOptions, Event, HeaderMap, Message, client::RequestErrorKind};
use futures::StreamExt as _;
use serde::{Serialize, de::DeserializeOwned};
use slough_protocol::{Endpoint, ErrorBody, ErrorCode, status::StreamStatus};
use tracing::Instrument as _;

use crate::{
    BusError, BusOptions, DEADLINE_HEADER, ERROR_CODE_HEADER, PARAM_HEADER, RETRY_AFTER_HEADER,
    trace,
};

/// A connection to the bus. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Bus {
    client: Client,
    options: BusOptions,
    state: Arc<ConnectionState>,
}

/// What the event log needs to know about the connection's history.
#[derive(Default)]
struct ConnectionState {
    /// Set once connected, so later connections are logged as reconnects.
    connected_before: AtomicBool,
    /// Set once we drain on purpose, so the disconnect that follows is not a warning.
    closing: AtomicBool,
    /// The last client or server error logged, so that the same error repeated at every
    /// reconnect attempt is logged once with a count instead of filling the log.
    last_error: Mutex<Option<RepeatedError>>,
}

/// An error message and how often it came again since it was logged.
struct RepeatedError {
    message: String,
    repeats: u64,
    logged_at: Instant,
}

/// How often a repeating error is logged again with its count.
const REPEAT_LOG_INTERVAL: Duration = Duration::from_secs(30);

/// Connects to `url` (one server, or a cluster's seed servers separated by commas: the
/// client learns the rest of the cluster from them and reconnects to any), retrying with
/// exponential backoff (100 ms doubling to 5 s) until `options.connect_timeout`. Once
/// connected, the client reconnects forever, trying at least every
/// [`MAX_RECONNECT_DELAY`] so service resumes soon after NATS returns; disconnects,
/// reconnects and slow consumers are logged, a repeating error once.
pub async fn connect(url: &str, name: &str, options: BusOptions) -> Result<Bus, BusError> {
    let started = Instant::now();
    let mut delay = Duration::from_millis(100);
    let state = Arc::new(ConnectionState::default());
    let servers = url
        .split(',')
        .map(str::trim)
        .filter(|seed| !seed.is_empty())
        .map(|seed| {
            seed.parse::<async_nats::ServerAddr>()
                .map_err(|err| BusError::Connect {
                    url: url.to_owned(),
                    after: Duration::ZERO,
                    reason: format!("{seed:?} is not a NATS URL: {err}"),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    loop {
        let seen = state.clone();
        let connect_options = ConnectOptions::new()
            .name(name)
            .max_reconnects(None)
            .request_timeout(Some(options.request_timeout))
            .reconnect_delay_callback(backoff)
            .event_callback(move |event| {
                let state = seen.clone();
                async move { log_event(event, &state) }
            });
        match connect_options.connect(servers.clone()).await {
            Ok(client) => {
                tracing::info!(url, name, "connected to NATS");
                return Ok(Bus {
                    client,
                    options,
                    state,
                });
            }
            Err(err) if started.elapsed() + delay < options.connect_timeout => {
                tracing::warn!(url, error = %err, retry_in = ?delay, "NATS not reachable yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(err) => {
                return Err(BusError::Connect {
                    url: url.to_owned(),
                    after: started.elapsed(),
                    reason: err.to_string(),
                });
            }
        }
    }
}

/// Waits (at most `limit`) until the NATS cluster at `url` has its `nodes` servers routed
/// together and JetStream can place a stream with a copy on each, so that the streams
/// the services make next get them all.
pub async fn wait_for_cluster(
    url: &str,
    nodes: usize,
    options: BusOptions,
    limit: Duration,
) -> Result<(), BusError> {
    use async_nats::jetstream::stream;
    let bus = connect(url, "cluster-check", options).await?;
    let js = async_nats::jetstream::new(bus.client.clone());
    let probe = stream::Config {
        name: "slough-cluster-check".to_owned(),
        subjects: vec!["slough.cluster-check".to_owned()],
        storage: stream::StorageType::Memory,
        num_replicas: nodes,
        ..Default::default()
    };
    let deadline = Instant::now() + limit;
    let formed = loop {
        let placed = if bus.client.server_info().connect_urls.len() < nodes {
            Err(format!("not all {nodes} servers are routed together yet"))
        } else {
            js.create_stream(probe.clone())
                .await
                .map(drop)
                .map_err(|err| err.to_string())
        };
        match placed {
            Ok(()) => {
                let _ = js.delete_stream(&probe.name).await;
                break Ok(());
            }
            Err(why) if Instant::now() > deadline => {
                break Err(BusError::Nats(format!(
                    "the NATS cluster did not form within {limit:?}: {why}"
                )));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    bus.close().await;
    formed
}

/// The longest wait between two reconnect attempts.
pub const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);

fn backoff(attempts: usize) -> Duration {
    let exponent = u32::try_from(attempts.min(6)).unwrap_or(6);
    Duration::from_millis(50 * 2u64.pow(exponent)).min(MAX_RECONNECT_DELAY)
}

fn log_event(event: Event, state: &ConnectionState) {
    match event {
        // The first one is logged by `connect` with the URL.
        Event::Connected if !state.connected_before.swap(true, Ordering::Relaxed) => {}
        Event::Connected => {
            let repeated = lock(&state.last_error)
                .take()
                .map_or(0, |last| last.repeats);
            tracing::info!(
                errors_while_away = repeated,
                "NATS connection re-established"
            );
        }
        Event::Disconnected if state.closing.load(Ordering::Relaxed) => {
            tracing::debug!("NATS connection closed")
        }
        Event::Disconnected => tracing::warn!("NATS connection lost; reconnecting"),
        Event::SlowConsumer(sid) => {
            tracing::warn!(subscription = sid, "slow consumer: NATS dropped messages")
        }
        Event::LameDuckMode => tracing::warn!("NATS server entered lame duck mode"),
        Event::Draining | Event::Closed => tracing::debug!(%event, "NATS connection closing"),
        Event::ServerError(err) => log_error(state, "NATS server error", &err.to_string()),
        Event::ClientError(err) => log_error(state, "NATS client error", &err.to_string()),
    }
}

/// Logs an error the first time, then only its count every [`REPEAT_LOG_INTERVAL`]
/// while the same error keeps coming (a server that is down fails every reconnect).
fn log_error(state: &ConnectionState, what: &str, message: &str) {
    let mut last = lock(&state.last_error);
    match last.as_mut() {
        Some(last) if last.message == message => {
            last.repeats += 1;
            if last.logged_at.elapsed() >= REPEAT_LOG_INTERVAL {
                tracing::error!(error = %message, repeated = last.repeats, "{what} (still)");
                last.logged_at = Instant::now();
            }
        }
        _ => {
            tracing::error!(error = %message, "{what}");
            *last = Some(RepeatedError {
                message: message.to_owned(),
                repeats: 0,
                logged_at: Instant::now(),
            });
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Bus {
    /// The underlying client, for what this crate does not wrap (`$SRV` discovery).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The timing this connection was made with.
    pub fn options(&self) -> BusOptions {
        self.options
    }

    /// True while the connection is up.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// How many copies JetStream keeps of what this platform stores (its streams and
    /// buckets): as configured, else one per server of the cluster, at most three, so
    /// that losing a server loses nothing; one on a lone server.
    pub fn jetstream_replicas(&self) -> usize {
        if self.options.jetstream_replicas > 0 {
            return self.options.jetstream_replicas;
        }
        let info = self.client.server_info();
        if info.cluster.is_none() {
            return 1;
        }
        info.connect_urls.len().clamp(1, 3)
    }

    /// Raises the copies JetStream keeps of `stream` to [`Bus::jetstream_replicas`] when it
    /// was created with fewer (by a service that started before the cluster had formed,
    /// or on a lone server that became a cluster).
    pub async fn keep_copies(
        &self,
        js: &async_nats::jetstream::Context,
        stream: &str,
    ) -> Result<(), BusError> {
        let wanted = self.jetstream_replicas();
        let mut found = js
            .get_stream(stream)
            .await
            .map_err(|err| BusError::Nats(format!("cannot read stream {stream}: {err}")))?;
        let mut config = found
            .info()
            .await
            .map_err(|err| BusError::Nats(format!("cannot read stream {stream}: {err}")))?
            .config
            .clone();
        if config.num_replicas >= wanted {
            return Ok(());
        }
        tracing::info!(
            stream,
            from = config.num_replicas,
            to = wanted,
            "keeping more copies of a stream"
        );
        config.num_replicas = wanted;
        js.update_stream(config).await.map_err(|err| {
            BusError::Nats(format!("cannot keep {wanted} copies of {stream}: {err}"))
        })?;
        Ok(())
    }

    /// The largest message the server carries (its `max_payload`, learnt on connect).
    pub fn max_payload(&self) -> usize {
        self.client.max_payload()
    }

    /// Refuses a message that the server would not carry, naming both sizes, before
    /// anything is sent. Some room is kept for the headers we add.
    pub(crate) fn check_size(&self, subject: &str, size: usize) -> Result<(), BusError> {
        let limit = self.max_payload().saturating_sub(HEADER_ROOM);
        if size > limit {
            return Err(BusError::PayloadTooLarge {
                subject: subject.to_owned(),
                size,
                limit,
            });
        }
        Ok(())
    }

    /// Headers for an outgoing request: the trace context and the caller's deadline.
    fn request_headers(&self, timeout: Duration) -> HeaderMap {
        let mut headers = HeaderMap::new();
        trace::inject(&mut headers);
        let deadline = SystemTime::now() + timeout;
        if let Ok(since_epoch) = deadline.duration_since(SystemTime::UNIX_EPOCH) {
            headers.insert(
                DEADLINE_HEADER,
                since_epoch.as_millis().to_string().as_str(),
            );
        }
        headers
    }

    /// Calls `endpoint` with `request` and decodes the reply. An error reply becomes
    /// [`BusError::Service`] with its code; nobody listening becomes
    /// [`BusError::NoResponders`]; a request the server would not carry becomes
    /// [`BusError::PayloadTooLarge`] before anything is sent.
    pub async fn call<Req, Resp>(
        &self,
        endpoint: &Endpoint<Req, Resp>,
        request: &Req,
    ) -> Result<Resp, BusError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let timeout = self.options.request_timeout;
        self.request(&endpoint.subject(), request, timeout).await
    }

    /// As [`Bus::call`], waiting up to `timeout` instead of the configured request
    /// timeout: for work known to take long (ingesting documents).
    pub async fn call_within<Req, Resp>(
        &self,
        endpoint: &Endpoint<Req, Resp>,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, BusError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        self.request(&endpoint.subject(), request, timeout).await
    }

    /// Calls `endpoint` at one replica, `instance_id` (see [`Bus::call`]); nobody
    /// answering there (the replica is gone) is [`BusError::NoResponders`] at once.
    pub async fn call_on<Req, Resp>(
        &self,
        endpoint: &Endpoint<Req, Resp>,
        instance_id: &str,
        request: &Req,
    ) -> Result<Resp, BusError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let timeout = self.options.request_timeout;
        self.request(&endpoint.instance_subject(instance_id), request, timeout)
            .await
    }

    /// Sends `request` to `subject` and decodes the reply (see [`Bus::call`]).
    pub(crate) async fn request<Req, Resp>(
        &self,
        subject: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, BusError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let span = tracing::info_span!(
            "bus.request",
            otel.kind = "client",
            messaging.system = "nats",
            messaging.destination.name = subject
        );
        async {
            let payload = encode(subject, request)?;
            self.check_size(subject, payload.len())?;
            let headers = self.request_headers(timeout);
            let payload_size = payload.len();
            let nats_request = async_nats::Request::new()
                .payload(payload.into())
                .headers(headers)
                .timeout(Some(timeout));
            let reply = self
                .client
                .send_request(subject.to_owned(), nats_request)
                .await
                .map_err(|err| match err.kind() {
                    RequestErrorKind::NoResponders => BusError::NoResponders {
                        subject: subject.to_owned(),
                    },
                    RequestErrorKind::TimedOut => BusError::Timeout {
                        subject: subject.to_owned(),
                        after: timeout,
                    },
                    RequestErrorKind::MaxPayloadExceeded => BusError::PayloadTooLarge {
                        subject: subject.to_owned(),
                        size: payload_size,
                        limit: self.max_payload(),
                    },
                    _ => BusError::nats(err),
                })?;
            decode_reply(subject, &reply)
        }
        .instrument(span)
        .await
    }

    /// Whether JetStream answers on this connection (`$JS.API.INFO`), or why not. Read
    /// as plain JSON rather than through a typed client, so that any server version's
    /// answer is understood.
    pub async fn jetstream_ready(&self) -> Result<(), String> {
        let reply = self
            .client
            .request(
                slough_protocol::subjects::JETSTREAM_ACCOUNT_INFO,
                bytes::Bytes::new(),
            )
            .await
            .map_err(|err| {
                format!(
                    "JetStream does not answer (is nats-server started with --jetstream?): {err}"
                )
            })?;
        let answer: serde_json::Value = serde_json::from_slice(&reply.payload)
            .map_err(|err| format!("JetStream answered something unreadable: {err}"))?;
        match answer.get("error") {
            None => Ok(()),
            Some(error) => Err(format!("JetStream refused: {error}")),
        }
    }

    /// JetStream's streams and how many copies of each are current, read as plain JSON
    /// (as [`Bus::jetstream_ready`] is) so that any server version's answer is understood.
    pub async fn streams(&self) -> Result<Vec<StreamStatus>, BusError> {
        let reply = self
            .client
            .request(
                slough_protocol::subjects::JETSTREAM_STREAM_LIST,
                bytes::Bytes::from_static(b"{}"),
            )
            .await
            .map_err(BusError::nats)?;
        let answer: serde_json::Value = serde_json::from_slice(&reply.payload).map_err(|err| {
            BusError::Nats(format!("JetStream's stream list is unreadable: {err}"))
        })?;
        if let Some(error) = answer.get("error") {
            return Err(BusError::Nats(format!(
                "JetStream refused to list streams: {error}"
            )));
        }
        let number = |value: &serde_json::Value| value.as_u64().unwrap_or(0);
        let streams = answer["streams"].as_array().into_iter().flatten();
        Ok(streams
            .map(|stream| {
                let config = &stream["config"];
                let replicas = u32::try_from(number(&config["num_replicas"]).max(1)).unwrap_or(1);
                // The leader's copy is current; so is each replica's that says so. A lone
                // server reports no cluster: its one copy is current.
                let current = match stream["cluster"]["replicas"].as_array() {
                    Some(others) => {
                        let leader = u32::from(stream["cluster"]["leader"].is_string());
                        let current = others
                            .iter()
                            .filter(|other| other["current"].as_bool() == Some(true))
                            .count();
                        leader + u32::try_from(current).unwrap_or(0)
                    }
                    None => u32::from(stream["cluster"]["leader"].is_string() || replicas == 1),
                };
                StreamStatus {
                    name: config["name"].as_str().unwrap_or_default().to_owned(),
                    description: config["description"].as_str().map(str::to_owned),
                    replicas,
                    current,
                    messages: number(&stream["state"]["messages"]),
                    bytes: number(&stream["state"]["bytes"]),
                }
            })
            .collect())
    }

    /// Asks every instance of every service a `$SRV` discovery question (`INFO`,
    /// `STATS`, `PING`) and gathers the answers that arrive within `window`; answers
    /// that do not decode as `T` (another kind of service) are left out.
    pub async fn discover<T: DeserializeOwned>(
        &self,
        verb: slough_protocol::subjects::DiscoveryVerb,
        window: Duration,
    ) -> Result<Vec<T>, BusError> {
        let inbox = self.client.new_inbox();
        let mut answers = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(BusError::nats)?;
        let subject = slough_protocol::subjects::discovery(verb);
        self.client
            .publish_with_reply(subject.clone(), inbox, bytes::Bytes::new())
            .await
            .map_err(BusError::nats)?;
        self.client.flush().await.map_err(BusError::nats)?;
        let deadline = tokio::time::Instant::now() + window;
        let mut collected = Vec::new();
        while let Ok(Some(message)) = tokio::time::timeout_at(deadline, answers.next()).await {
            match decode::<T>(&subject, &message.payload) {
                Ok(answer) => collected.push(answer),
                Err(err) => {
                    tracing::debug!(%subject, error = %err, "ignoring an answer we cannot read")
                }
            }
        }
        let _ = answers.unsubscribe().await;
        Ok(collected)
    }

    /// Delivers what is buffered and closes the connection (for every clone).
    pub async fn close(&self) {
        self.state.closing.store(true, Ordering::Relaxed);
        if let Err(err) = self.client.drain().await {
            tracing::debug!(error = %err, "draining the NATS connection failed");
        }
    }

    /// Waits until the server has processed everything this connection sent before
    /// (subscriptions included): it echoes a message back to us on a fresh inbox.
    /// `flush` alone only empties the client's buffer.
    pub async fn round_trip(&self) -> Result<(), BusError> {
        let inbox = self.client.new_inbox();
        let mut echo = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(BusError::nats)?;
        self.client
            .publish(inbox.clone(), bytes::Bytes::new())
            .await
            .map_err(BusError::nats)?;
        let timeout = self.options.request_timeout;
        match tokio::time::timeout(timeout, echo.next()).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(BusError::Nats(
                "connection closed during a round trip".to_owned(),
            )),
            Err(_) => Err(BusError::Timeout {
                subject: inbox,
                after: timeout,
            }),
        }
    }

    /// Publishes a message (an event, a cancellation) with the current trace context.
    pub(crate) async fn publish<T: Serialize>(
        &self,
        subject: &str,
        message: &T,
    ) -> Result<(), BusError> {
        let payload = encode(subject, message)?;
        self.check_size(subject, payload.len())?;
        let mut headers = HeaderMap::new();
        trace::inject(&mut headers);
        self.client
            .publish_with_headers(subject.to_owned(), headers, payload.into())
            .await
            .map_err(BusError::nats)
    }
}

/// Bytes kept free for headers (trace context, deadline, error codes) when checking a
/// payload against the server's `max_payload`.
const HEADER_ROOM: usize = 1024;

pub(crate) fn encode<T: Serialize>(subject: &str, value: &T) -> Result<Vec<u8>, BusError> {
    serde_json::to_vec(value).map_err(|err| BusError::Codec {
        subject: subject.to_owned(),
        reason: err.to_string(),
    })
}

pub(crate) fn decode<T: DeserializeOwned>(subject: &str, payload: &[u8]) -> Result<T, BusError> {
    serde_json::from_slice(payload).map_err(|err| BusError::Codec {
        subject: subject.to_owned(),
        reason: err.to_string(),
    })
}

/// Turns a reply into a value or the service error it carries.
fn decode_reply<T: DeserializeOwned>(subject: &str, reply: &Message) -> Result<T, BusError> {
    if let Some(error) = error_of(reply) {
        return Err(BusError::Service(error));
    }
    decode(subject, &reply.payload)
}

fn error_of(reply: &Message) -> Option<ErrorBody> {
    let headers = reply.headers.as_ref()?;
    let message = headers
        .get(async_nats::service::NATS_SERVICE_ERROR)?
        .as_str()
        .to_owned();
    let numeric = headers
        .get(async_nats::service::NATS_SERVICE_ERROR_CODE)
        .and_then(|code| code.as_str().parse::<u16>().ok());
    let code = headers
        .get(ERROR_CODE_HEADER)
        .and_then(|code| ErrorCode::parse(code.as_str()))
        .unwrap_or(match numeric {
            // A service that is not ours (or older): keep the meaning of its number.
            Some(400) => ErrorCode::InvalidRequest,
            Some(404) => ErrorCode::NotFound,
            Some(413) => ErrorCode::PayloadTooLarge,
            Some(429) => ErrorCode::Overloaded,
            Some(503) => ErrorCode::Unavailable,
            Some(504) => ErrorCode::Timeout,
            _ => ErrorCode::Internal,
        });
    let retry_after_ms = headers
        .get(RETRY_AFTER_HEADER)
        .and_then(|ms| ms.as_str().parse().ok());
    let param = headers
        .get(PARAM_HEADER)
        .map(|param| param.as_str().to_owned());
    Some(ErrorBody {
        code,
        message,
        retry_after_ms,
        param,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(headers: &[(&str, &str)], payload: &[u8]) -> Message {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, *value);
        }
        Message {
            subject: "_INBOX.test".into(),
            reply: None,
            payload: payload.to_vec().into(),
            headers: (!headers.is_empty()).then_some(map),
            status: None,
            description: None,
            length: payload.len(),
        }
    }

    #[test]
    fn an_error_reply_keeps_its_code_retry_hint_and_field() {
        let message = reply(
            &[
                (async_nats::service::NATS_SERVICE_ERROR, "n is too large"),
                (async_nats::service::NATS_SERVICE_ERROR_CODE, "400"),
                (ERROR_CODE_HEADER, "context_length_exceeded"),
                (RETRY_AFTER_HEADER, "250"),
                (PARAM_HEADER, "n"),
            ],
            b"",
        );
        let err = decode_reply::<u32>("slough.v1.inference.generate", &message).unwrap_err();
        let BusError::Service(body) = err else {
            panic!("expected a service error, got {err:?}")
        };
        assert_eq!(body.code, ErrorCode::ContextLengthExceeded);
        assert_eq!(body.message, "n is too large");
        assert_eq!(body.retry_after_ms, Some(250));
        assert_eq!(body.param.as_deref(), Some("n"));
    }

    #[test]
    fn a_foreign_error_reply_is_read_by_its_number() {
        for (number, code) in [
            ("404", ErrorCode::NotFound),
            ("429", ErrorCode::Overloaded),
            ("503", ErrorCode::Unavailable),
            ("418", ErrorCode::Internal),
        ] {
            let message = reply(
                &[
                    (async_nats::service::NATS_SERVICE_ERROR, "no"),
                    (async_nats::service::NATS_SERVICE_ERROR_CODE, number),
                ],
                b"",
            );
            assert_eq!(error_of(&message).map(|body| body.code), Some(code));
        }
    }

    #[test]
    fn a_reply_that_does_not_decode_names_its_subject() {
        let message = reply(&[], b"{\"not\": \"a number\"}");
        let err = decode_reply::<u32>("slough.v1.rag.search", &message).unwrap_err();
        assert!(
            matches!(&err, BusError::Codec { subject, .. } if subject == "slough.v1.rag.search"),
            "{err:?}"
        );
        assert_eq!(decode_reply::<u32>("s", &reply(&[], b"7")).unwrap(), 7);
    }
}

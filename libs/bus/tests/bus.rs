//! The bus against a real nats-server: typed request/reply from one descriptor on both
//! sides and its error codes, message sizes against `max_payload`, deadlines, streams
//! (order, heartbeats, refusal, a producer that dies, cancellation), events, and trace
//! context crossing NATS.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

use std::{collections::HashMap, time::Duration};

use prometheus::Registry;
use serde::{Deserialize, Serialize};
use slough_bus::{
    Bus, BusError, BusOptions, Concurrency, Registration, ServiceHost, StreamItem, StreamReceiver,
};
use slough_protocol::{Endpoint, ErrorBody, ErrorCode, Event, ServiceKind, StreamEndpoint};
use slough_testkit::TestNats;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Echo {
    text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Count {
    upto: u64,
    pause_ms: u64,
}

const ECHO: Endpoint<Echo, Echo> = Endpoint::new(ServiceKind::Personality, "echo");
/// The same subject declared with another request type, as a stale caller would.
const ECHO_ANYTHING: Endpoint<serde_json::Value, Echo> =
    Endpoint::new(ServiceKind::Personality, "echo");
const BUSY: Endpoint<Echo, Echo> = Endpoint::new(ServiceKind::Personality, "busy");
const NOTHING: Endpoint<Echo, Echo> = Endpoint::new(ServiceKind::Rag, "nothing");
const TRACE: Endpoint<Echo, Option<String>> = Endpoint::new(ServiceKind::Personality, "trace");
const COUNT: StreamEndpoint<Count, u64, u64> =
    StreamEndpoint::new(ServiceKind::Personality, "count");
const FOREVER: StreamEndpoint<Echo, u64, ()> =
    StreamEndpoint::new(ServiceKind::Personality, "forever");

fn options() -> BusOptions {
    BusOptions {
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(5),
        heartbeat: Duration::from_millis(100),
        jetstream_replicas: 0,
    }
}

async fn bus(nats: &TestNats) -> Bus {
    slough_bus::connect(&nats.url(), "test", options())
        .await
        .unwrap()
}

async fn host(bus: &Bus) -> ServiceHost {
    host_with(bus, Concurrency::default(), &Registry::new()).await
}

async fn host_with(bus: &Bus, concurrency: Concurrency, registry: &Registry) -> ServiceHost {
    let registration = Registration {
        kind: ServiceKind::Personality,
        version: "0.0.1".to_owned(),
        description: "test".to_owned(),
        metadata: HashMap::new(),
        concurrency,
    };
    ServiceHost::register(bus, registration, registry)
        .await
        .unwrap()
}

fn serve(host: ServiceHost) -> CancellationToken {
    let stop = CancellationToken::new();
    tokio::spawn(host.run(stop.clone()));
    stop
}

/// Streams `upto` numbers, pausing between them, then ends with their sum.
async fn counting_host(bus: &Bus) -> ServiceHost {
    let mut host = host(bus).await;
    host.serve_stream(&COUNT, (), |(), request, start| async move {
        if request.upto > 100 {
            return Err(ErrorBody::overloaded("too many", 50));
        }
        let sender = start.accept().await.map_err(|err| err.to_body())?;
        for n in 0..request.upto {
            tokio::select! {
                () = sender.cancelled() => return Ok(()),
                () = tokio::time::sleep(Duration::from_millis(request.pause_ms)) => {}
            }
            sender.chunk(n).await.map_err(|err| err.to_body())?;
        }
        sender
            .end((0..request.upto).sum::<u64>())
            .await
            .map_err(|err| err.to_body())
    })
    .await
    .unwrap();
    host
}

#[tokio::test]
async fn request_reply_carries_values_and_error_codes() {
    let nats = TestNats::start();
    let bus = bus(&nats).await;
    let mut host = host(&bus).await;
    host.serve(&ECHO, (), |(), request| async move { Ok(request) })
        .await
        .unwrap();
    host.serve(&BUSY, (), |(), _| async move {
        Err(ErrorBody::overloaded("queue full (64 waiting)", 250))
    })
    .await
    .unwrap();
    let _stop = serve(host);

    let echo = Echo {
        text: "héllo".to_owned(),
    };
    let answer = bus.call(&ECHO, &echo).await.unwrap();
    assert_eq!(answer, echo);

    let err = bus.call(&BUSY, &echo).await.unwrap_err();
    let BusError::Service(body) = err else {
        panic!("expected a service error, got {err:?}")
    };
    assert_eq!(body.code, ErrorCode::Overloaded);
    assert_eq!(body.message, "queue full (64 waiting)");
    assert_eq!(body.retry_after_ms, Some(250));

    // A request of the wrong shape is refused with a code and names the endpoint.
    let wrong = serde_json::json!({ "txt": 1 });
    let err = bus.call(&ECHO_ANYTHING, &wrong).await.unwrap_err();
    let BusError::Service(body) = err else {
        panic!("expected a service error, got {err:?}")
    };
    assert_eq!(body.code, ErrorCode::InvalidRequest);
    assert!(
        body.message.contains("echo") && body.message.contains("text"),
        "{}",
        body.message
    );
}

#[tokio::test]
async fn nobody_listening_is_reported_at_once() {
    let nats = TestNats::start();
    let bus = bus(&nats).await;
    let started = std::time::Instant::now();
    let err = bus
        .call(
            &NOTHING,
            &Echo {
                text: String::new(),
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::NoResponders { .. }), "{err:?}");
    assert_eq!(err.code(), ErrorCode::Unavailable);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no-responders must not wait for the timeout"
    );
}

#[tokio::test]
async fn streams_deliver_numbered_chunks_heartbeats_and_a_final_frame() {
    let nats = TestNats::start();
    let bus = bus(&nats).await;
    let _stop = serve(counting_host(&bus).await);

    // 350 ms between chunks is longer than the 300 ms silence limit: only heartbeats
    // keep the stream alive.
    let mut stream: StreamReceiver<u64, u64> = bus
        .open(
            &COUNT,
            &Count {
                upto: 3,
                pause_ms: 350,
            },
        )
        .await
        .unwrap();
    assert_eq!(stream.ack().heartbeat_ms, 100);
    let mut items = Vec::new();
    while let Some(item) = stream.next().await {
        items.push(item.unwrap());
    }
    assert_eq!(
        items,
        vec![
            StreamItem::Chunk(0),
            StreamItem::Chunk(1),
            StreamItem::Chunk(2),
            StreamItem::End(3)
        ]
    );
}

#[tokio::test]
async fn a_refused_stream_is_an_error_reply() {
    let nats = TestNats::start();
    let bus = bus(&nats).await;
    let _stop = serve(counting_host(&bus).await);
    let refused = bus
        .open(
            &COUNT,
            &Count {
                upto: 1_000,
                pause_ms: 0,
            },
        )
        .await;
    let Err(BusError::Service(body)) = refused else {
        panic!("expected a refusal")
    };
    assert_eq!(body.code, ErrorCode::Overloaded);
    assert_eq!(body.retry_after_ms, Some(50));
}

#[tokio::test]
async fn a_consumer_detects_a_producer_that_died_mid_stream() {
    let nats = TestNats::start();
    let producer = bus(&nats).await;
    let consumer = bus(&nats).await;
    let _stop = serve(counting_host(&producer).await);

    let mut stream = consumer
        .open(
            &COUNT,
            &Count {
                upto: 50,
                pause_ms: 20,
            },
        )
        .await
        .unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap(), StreamItem::Chunk(0));
    // The producer's connection goes away: no more chunks, no more heartbeats.
    producer.client().drain().await.unwrap();
    let started = std::time::Instant::now();
    let outcome = loop {
        match stream.next().await {
            Some(Ok(StreamItem::Chunk(_))) => continue,
            other => break other,
        }
    };
    let Some(Err(err)) = outcome else {
        panic!("expected the stream to fail, got {outcome:?}")
    };
    assert!(matches!(err, BusError::ProducerLost { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "detected after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn dropping_the_receiver_cancels_the_producer() {
    let nats = TestNats::start();
    let bus = bus(&nats).await;
    let (cancelled_tx, cancelled_rx) = tokio::sync::oneshot::channel::<u64>();
    let cancelled_tx = std::sync::Mutex::new(Some(cancelled_tx));
    let mut host = host(&bus).await;
    let cancelled_tx = std::sync::Arc::new(cancelled_tx);
    host.serve_stream(&FOREVER, cancelled_tx, |cancelled_tx, _, start| {
        let report = cancelled_tx.lock().unwrap().take();
        async move {
            let sender = start.accept().await.map_err(|err| err.to_body())?;
            let mut sent = 0;
            while !sender.is_cancelled() {
                sender.chunk(sent).await.map_err(|err| err.to_body())?;
                sent += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if let Some(report) = report {
                let _ = report.send(sent);
            }
            Ok::<(), ErrorBody>(())
        }
    })
    .await
    .unwrap();
    let _stop = serve(host);

    let mut stream = bus
        .open(
            &FOREVER,
            &Echo {
                text: String::new(),
            },
        )
        .await
        .unwrap();
    stream.next().await.unwrap().unwrap();
    drop(stream);
    let sent = tokio::time::timeout(Duration::from_secs(2), cancelled_rx)
        .await
        .expect("the producer must notice the cancellation")
        .unwrap();
    assert!(sent >= 1);
}

#[tokio::test]
async fn trace_context_crosses_the_bus() {
    let _telemetry =
        slough_telemetry::init("bus-test", &slough_telemetry::LogConfig::default()).unwrap();
    let nats = TestNats::start();
    let bus = bus(&nats).await;
    let mut host = host(&bus).await;
    host.serve(&TRACE, (), |(), _| async move {
        Ok(slough_telemetry::logging::current_trace_id())
    })
    .await
    .unwrap();
    let _stop = serve(host);

    let span = tracing::info_span!("caller");
    let (ours, theirs) = {
        use tracing::Instrument as _;
        async {
            let ours = slough_telemetry::logging::current_trace_id();
            let theirs = bus
                .call(
                    &TRACE,
                    &Echo {
                        text: String::new(),
                    },
                )
                .await
                .unwrap();
            (ours, theirs)
        }
        .instrument(span)
        .await
    };
    assert!(ours.is_some(), "the caller's span has a trace id");
    assert_eq!(ours, theirs, "the handler runs in the caller's trace");
}

#[tokio::test]
async fn messages_over_max_payload_are_refused_by_name_and_never_silent() {
    let nats = TestNats::start();
    let bus = bus(&nats).await;
    let mut host = host(&bus).await;
    // Answers with a text `n` times as long as the request's: a small request, a large reply.
    host.serve(&ECHO, (), |(), request: Echo| async move {
        let times: usize = request.text.parse().unwrap_or(1);
        Ok(Echo {
            text: "x".repeat(times),
        })
    })
    .await
    .unwrap();
    let _stop = serve(host);
    let limit = bus.max_payload();
    assert_eq!(limit, 1024 * 1024, "the test server keeps NATS's default");

    // Too large to send: refused before publishing, naming both sizes.
    let huge = Echo {
        text: "y".repeat(limit + 10),
    };
    let err = bus.call(&ECHO, &huge).await.unwrap_err();
    let BusError::PayloadTooLarge {
        size, limit: named, ..
    } = &err
    else {
        panic!("expected PayloadTooLarge, got {err:?}")
    };
    assert!(*size > limit && *named < limit, "{err}");
    assert_eq!(err.code(), ErrorCode::PayloadTooLarge);

    // A reply too large to send comes back as an error reply at once, not a timeout.
    let started = std::time::Instant::now();
    let asks_too_much = Echo {
        text: (limit * 2).to_string(),
    };
    let err = bus.call(&ECHO, &asks_too_much).await.unwrap_err();
    let BusError::Service(body) = &err else {
        panic!("expected an error reply, got {err:?}")
    };
    assert_eq!(body.code, ErrorCode::PayloadTooLarge);
    assert!(body.message.contains("bytes"), "{}", body.message);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_request_past_its_deadline_is_not_run_and_params_travel() {
    let nats = TestNats::start();
    let bus = bus(&nats).await;
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut host = host(&bus).await;
    host.serve(&ECHO, runs.clone(), |runs, request: Echo| async move {
        runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if request.text.is_empty() {
            return Err(ErrorBody::invalid("text", "text is empty"));
        }
        Ok(request)
    })
    .await
    .unwrap();
    let _stop = serve(host);

    // The field at fault travels with the error.
    let err = bus
        .call(
            &ECHO,
            &Echo {
                text: String::new(),
            },
        )
        .await
        .unwrap_err();
    let BusError::Service(body) = err else {
        panic!("expected an error reply")
    };
    assert_eq!(body.param.as_deref(), Some("text"));
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);

    // A request whose caller's deadline passed (as after sitting in a client's buffer
    // while NATS was down) is answered with `timeout` and never reaches the handler.
    let client = nats.client().await;
    let mut headers = async_nats::HeaderMap::new();
    let past = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        - 1_000;
    headers.insert(slough_bus::DEADLINE_HEADER, past.to_string().as_str());
    let reply = client
        .request_with_headers(
            ECHO.subject(),
            headers,
            serde_json::to_vec(&Echo {
                text: "late".to_owned(),
            })
            .unwrap()
            .into(),
        )
        .await
        .unwrap();
    let code = reply
        .headers
        .as_ref()
        .and_then(|headers| headers.get(slough_bus::ERROR_CODE_HEADER))
        .map(|code| code.as_str().to_owned());
    assert_eq!(code.as_deref(), Some("timeout"));
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn events_reach_every_subscriber_typed() {
    const HAPPENED: Event<Echo> = Event::new("test.happened");
    let nats = TestNats::start();
    let publisher = bus(&nats).await;
    let listener = bus(&nats).await;
    let mut first = listener.subscribe(&HAPPENED).await.unwrap();
    let mut second = listener.subscribe(&HAPPENED).await.unwrap();
    let event = Echo {
        text: "it happened".to_owned(),
    };
    publisher.emit(&HAPPENED, &event).await.unwrap();
    for stream in [&mut first, &mut second] {
        let got = tokio::time::timeout(Duration::from_secs(2), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got, event);
    }
}

/// The value of the series `name` in `registry` whose labels include `labels`
/// (`endpoint="busy"`, ...), as `/metrics` would show it; 0 when absent.
fn series(registry: &Registry, name: &str, labels: &[&str]) -> f64 {
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .find(|line| labels.iter().all(|label| line.contains(label)))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn an_endpoint_past_its_concurrency_limit_answers_overloaded() {
    let nats = TestNats::start();
    let bus = bus(&nats).await;
    let registry = Registry::new();
    let concurrency = Concurrency {
        default: 8,
        by_endpoint: HashMap::from([("busy".to_owned(), 2)]),
    };
    let mut host = host_with(&bus, concurrency, &registry).await;
    // Each request holds its place until the test lets one through.
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    host.serve(&BUSY, gate.clone(), |gate, request| async move {
        if let Ok(permit) = gate.acquire().await {
            permit.forget();
        }
        Ok(request)
    })
    .await
    .unwrap();
    host.serve(&ECHO, (), |(), request| async move { Ok(request) })
        .await
        .unwrap();
    let _stop = serve(host);
    let echo = |text: &str| Echo {
        text: text.to_owned(),
    };

    let held: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|text| {
            let bus = bus.clone();
            let request = echo(text);
            tokio::spawn(async move { bus.call(&BUSY, &request).await })
        })
        .collect();
    let in_flight = "slough_personality_bus_requests_in_flight";
    const BUSY_LABEL: &str = "endpoint=\"busy\"";
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while series(&registry, in_flight, &[BUSY_LABEL]) < 2.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "two requests never in flight"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let err = bus.call(&BUSY, &echo("c")).await.unwrap_err();
    let BusError::Service(body) = err else {
        panic!("expected a service error, got {err:?}")
    };
    assert_eq!(body.code, ErrorCode::Overloaded);
    assert_eq!(body.retry_after_ms, Some(1000));
    assert!(
        body.message.contains("nats.max_in_flight"),
        "{}",
        body.message
    );
    // Another endpoint has its own limit.
    assert_eq!(bus.call(&ECHO, &echo("d")).await.unwrap(), echo("d"));

    gate.add_permits(3);
    for (request, text) in held.into_iter().zip(["a", "b"]) {
        assert_eq!(request.await.unwrap().unwrap(), echo(text));
    }
    assert_eq!(bus.call(&BUSY, &echo("e")).await.unwrap(), echo("e"));
    let requests = "slough_personality_bus_requests_total";
    assert_eq!(
        series(&registry, requests, &[BUSY_LABEL, "code=\"overloaded\""]),
        1.0
    );
    assert_eq!(
        series(&registry, requests, &[BUSY_LABEL, "code=\"ok\""]),
        3.0
    );
    assert_eq!(series(&registry, in_flight, &[BUSY_LABEL]), 0.0);
}

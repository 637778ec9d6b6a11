//! The bus against a real nats-server: typed request/reply and its error codes, streams
//! (order, heartbeats, refusal, a producer that dies, cancellation), and trace context
//! crossing NATS.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

use std::{collections::HashMap, time::Duration};

use prometheus::Registry;
use serde::{Deserialize, Serialize};
use slough_bus::{
    Bus, BusError, BusOptions, Registration, ServiceHost, StreamItem, StreamReceiver,
};
use slough_protocol::{ErrorBody, ErrorCode, ServiceKind, subjects};
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

fn options() -> BusOptions {
    BusOptions {
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(5),
        heartbeat: Duration::from_millis(100),
    }
}

async fn bus(nats: &TestNats) -> Bus {
    slough_bus::connect(&nats.url(), "test", options())
        .await
        .unwrap()
}

async fn host(bus: &Bus) -> ServiceHost {
    let registration = Registration {
        kind: ServiceKind::Personality,
        version: "0.0.1".to_owned(),
        description: "test".to_owned(),
        metadata: HashMap::new(),
    };
    ServiceHost::register(bus, registration, &Registry::new())
        .await
        .unwrap()
}

fn serve(host: ServiceHost) -> CancellationToken {
    let stop = CancellationToken::new();
    tokio::spawn(host.serve(stop.clone()));
    stop
}

/// Streams `upto` numbers, pausing between them, then ends with their sum.
async fn counting_host(bus: &Bus) -> ServiceHost {
    let mut host = host(bus).await;
    host.stream_endpoint("count", |request: Count, start| async move {
        if request.upto > 100 {
            return Err(ErrorBody {
                code: ErrorCode::Overloaded,
                message: "too many".to_owned(),
                retry_after_ms: Some(50),
            });
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
    host.endpoint("echo", |request: Echo| async move { Ok(request) })
        .await
        .unwrap();
    host.endpoint("busy", |_: Echo| async move {
        Err::<Echo, _>(ErrorBody {
            code: ErrorCode::Overloaded,
            message: "queue full (64 waiting)".to_owned(),
            retry_after_ms: Some(250),
        })
    })
    .await
    .unwrap();
    let _stop = serve(host);

    let echo = Echo {
        text: "héllo".to_owned(),
    };
    let answer: Echo = bus
        .request(&subjects::endpoint(ServiceKind::Personality, "echo"), &echo)
        .await
        .unwrap();
    assert_eq!(answer, echo);

    let err = bus
        .request::<_, Echo>(&subjects::endpoint(ServiceKind::Personality, "busy"), &echo)
        .await
        .unwrap_err();
    let BusError::Service(body) = err else {
        panic!("expected a service error, got {err:?}")
    };
    assert_eq!(body.code, ErrorCode::Overloaded);
    assert_eq!(body.message, "queue full (64 waiting)");
    assert_eq!(body.retry_after_ms, Some(250));

    // A request of the wrong shape is refused with a code and names the endpoint.
    let wrong = serde_json::json!({ "txt": 1 });
    let err = bus
        .request::<_, Echo>(
            &subjects::endpoint(ServiceKind::Personality, "echo"),
            &wrong,
        )
        .await
        .unwrap_err();
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
        .request::<_, Echo>(
            &subjects::endpoint(ServiceKind::Rag, "nothing"),
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
        .request_stream(
            ServiceKind::Personality,
            "count",
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
        .request_stream::<_, u64, u64>(
            ServiceKind::Personality,
            "count",
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

    let mut stream: StreamReceiver<u64, u64> = consumer
        .request_stream(
            ServiceKind::Personality,
            "count",
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
    host.stream_endpoint(
        "forever",
        move |_: Echo, start: slough_bus::StreamStart<u64, ()>| {
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
        },
    )
    .await
    .unwrap();
    let _stop = serve(host);

    let mut stream: StreamReceiver<u64, ()> = bus
        .request_stream(
            ServiceKind::Personality,
            "forever",
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
    host.endpoint("trace", |_: Echo| async move {
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
            let theirs: Option<String> = bus
                .request(
                    &subjects::endpoint(ServiceKind::Personality, "trace"),
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

//! The bus on a three-node NATS cluster: a client given the seed servers keeps three
//! copies of the platform's JetStream buckets (raising those made with fewer), and when the server it talks to dies it
//! moves to another within seconds, with nothing stored lost and the shared rates still
//! counting, while the streams report one copy short until the server is back (issue 35,
//! items 1 and 2 at the bus's level).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

use std::time::{Duration, Instant};

use slough_bus::{Bus, BusOptions, FileStore, Rates};
use slough_testkit::TestNatsCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_keeps_three_copies_and_outlives_a_node() {
    let mut cluster = TestNatsCluster::start(3).await;
    let options = BusOptions {
        connect_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(5),
        heartbeat: Duration::from_millis(100),
        jetstream_replicas: 0,
    };
    // A service configured for one copy (or one that started before the cluster had
    // formed) made the buckets with one copy.
    let one_copy = BusOptions {
        jetstream_replicas: 1,
        ..options
    };
    let early = slough_bus::connect(&cluster.url(1), "early", one_copy)
        .await
        .unwrap();
    FileStore::open(&early).await.unwrap();
    Rates::open(&early).await.unwrap();
    let made: Vec<u32> = early
        .streams()
        .await
        .unwrap()
        .iter()
        .map(|s| s.replicas)
        .collect();
    assert_eq!(made, [1, 1]);

    // One seed is enough to find the others; opening the buckets keeps three copies.
    let bus = slough_bus::connect(&cluster.url(0), "cluster-test", options)
        .await
        .unwrap();
    assert_eq!(bus.jetstream_replicas(), 3);

    let files = FileStore::open(&bus).await.unwrap();
    let rates = Rates::open(&bus).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    copies(&bus, deadline, 3).await;
    let stored = b"a file that must outlive a server".repeat(1000);
    files.put("before", &mut stored.as_slice()).await.unwrap();
    for _ in 0..3 {
        assert_eq!(rates.take("rpm.cluster", 5).await.unwrap(), Ok(()));
    }

    // The server the bus is connected to dies.
    let port = bus.client().server_info().port;
    let node = (0..3)
        .find(|&node| cluster.url(node).ends_with(&format!(":{port}")))
        .expect("the bus is connected to one of the nodes");
    let killed = Instant::now();
    cluster.stop(node);
    let deadline = killed + Duration::from_secs(15);
    while !(bus.is_connected() && bus.client().server_info().port != port) {
        assert!(
            Instant::now() < deadline,
            "the bus did not move to another node"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let moved = killed.elapsed();

    // Everything stored is there, new things are stored, and the rate kept its count:
    // two of its five are left. JetStream may need a moment to elect new leaders.
    let read = retry(deadline, || files.get("before")).await;
    assert_eq!(read, stored);
    let after = b"stored while a server is down".to_vec();
    retry(deadline, || {
        let (files, after) = (&files, after.clone());
        async move { files.put("after", &mut after.as_slice()).await }
    })
    .await;
    assert_eq!(
        retry(deadline, || rates.take("rpm.cluster", 5)).await,
        Ok(())
    );
    assert_eq!(rates.take("rpm.cluster", 5).await.unwrap(), Ok(()));
    assert!(rates.take("rpm.cluster", 5).await.unwrap().is_err());
    let recovered = killed.elapsed();
    copies(&bus, deadline, 2).await;
    eprintln!(
        "node {node} killed: the bus moved in {moved:?}, JetStream answered in {recovered:?}"
    );

    // The node comes back and catches up.
    cluster.restart(node);
    copies(&bus, Instant::now() + Duration::from_secs(30), 3).await;
    assert_eq!(files.get("after").await.unwrap(), after);
}

/// Waits until the file bucket and the rates each keep three copies of which `current`
/// are up to date, as `Bus::streams` (what `slough status` shows) reports them.
async fn copies(bus: &Bus, deadline: Instant, current: u32) {
    loop {
        let streams = bus.streams().await.unwrap_or_default();
        let ours: Vec<_> = streams
            .iter()
            .filter(|s| ["OBJ_slough-files", "KV_slough-rates"].contains(&s.name.as_str()))
            .map(|s| (s.name.as_str(), s.replicas, s.current))
            .collect();
        if ours.len() == 2 && ours.iter().all(|(_, r, c)| *r == 3 && *c == current) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not 3 copies with {current} current: {ours:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `call()` until it succeeds, failing the test at `deadline`.
async fn retry<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    deadline: Instant,
    mut call: impl FnMut() -> F,
) -> T {
    loop {
        match call().await {
            Ok(value) => return value,
            Err(err) => {
                assert!(Instant::now() < deadline, "still failing: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

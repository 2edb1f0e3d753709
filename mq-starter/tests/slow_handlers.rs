//! Idempotent listeners whose handler is slower than the idempotency lease: the lease is renewed
//! while the handler runs, so a duplicate delivered meanwhile waits instead of running at the
//! same time; once the handler is done, the duplicate is acknowledged without running. Both
//! stores, in real time (the Redis store's leases expire by Redis's clock); the memory store's
//! renewal is also tested on a paused clock beside its code.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mq_starter::prelude::*;
use support::{eventually, start};

/// Handler runs, and the most that ever ran at once.
#[derive(Clone, Default)]
struct Slow {
    running: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    runs: Arc<AtomicUsize>,
}

/// Takes five times the lease configured below.
#[mq_listener(
    topic = "t-slow-idem",
    group = "g-slow-idem",
    idempotent = key,
    concurrency = 4,
    enabled = "${test.slow_idem:false}"
)]
async fn slow_once(State(s): State<Slow>) {
    let now = s.running.fetch_add(1, Ordering::SeqCst) + 1;
    s.most.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.running.fetch_sub(1, Ordering::SeqCst);
    s.runs.fetch_add(1, Ordering::SeqCst);
}

async fn slow_handler_runs_once(store_yaml: &str) {
    let slow = Slow::default();
    let app = start(
        &["slow_idem"],
        &format!("mq:\n  idempotency:\n    lease: 300ms\n{store_yaml}"),
        |a| a.with_state(slow.clone()),
    )
    .await;
    let t = app.running.template();
    let key = format!("slow-{}", mq_starter::core::MessageId::new());
    for _ in 0..3 {
        t.message("t-slow-idem")
            .key(key.clone())
            .bytes("x")
            .send()
            .await
            .unwrap();
    }
    // The first delivery runs; both duplicates wait for it (retried while its lease is held),
    // then are acknowledged without running.
    let series = app.running.metrics().series("t-slow-idem", "g-slow-idem");
    eventually("three acknowledgements", Duration::from_secs(30), || {
        series.acked_count() >= 3
    })
    .await;
    assert!(series.retried_count() >= 2, "the duplicates waited");
    assert_eq!(slow.most.load(Ordering::SeqCst), 1, "ran twice at once");
    assert_eq!(slow.runs.load(Ordering::SeqCst), 1, "ran more than once");
    app.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_handler_keeps_its_lease_with_the_memory_store() {
    slow_handler_runs_once("").await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_handler_keeps_its_lease_with_the_redis_store() {
    use support::redis::{cleanup, shared};
    let Some(url) = shared().await else { return };
    let prefix = format!("mq-test:slow:{}", mq_starter::core::MessageId::new());
    slow_handler_runs_once(&format!(
        "    store: redis\n    redis-url: {url}\n    prefix: {prefix}\n"
    ))
    .await;
    cleanup(&url, &prefix).await;
}

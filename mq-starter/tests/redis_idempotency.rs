//! The Redis idempotency store against a real Redis server, including a restart of Redis in the
//! middle of a run (the store's protocol itself is a unit test beside it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mq_starter::idempotency::{IdempotencyStore, RedisStore};
use mq_starter::prelude::*;
use support::redis::{cleanup, shared, OwnRedis};
use support::{eventually, start};

#[derive(Clone, Default)]
struct Runs(Arc<AtomicUsize>);

#[mq_listener(
    topic = "t-redis-idem",
    group = "g-redis-idem",
    idempotent = key,
    enabled = "${test.redis_idem:false}"
)]
async fn pay_once(State(runs): State<Runs>) {
    runs.0.fetch_add(1, Ordering::SeqCst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_run_once_with_the_redis_store() {
    let Some(url) = shared().await else { return };
    let runs = Runs::default();
    let prefix = format!("mq-test:{}", mq_starter::core::MessageId::new());
    let app = start(
        &["redis_idem"],
        &format!(
            "mq:\n  idempotency:\n    store: redis\n    redis-url: {url}\n    prefix: {prefix}\n"
        ),
        |a| a.with_state(runs.clone()),
    )
    .await;
    let t = app.running.template();
    let key = format!("pay-{}", mq_starter::core::MessageId::new());
    for _ in 0..3 {
        t.message("t-redis-idem")
            .key(key.clone())
            .bytes("x")
            .send()
            .await
            .unwrap();
    }
    eventually("one run", Duration::from_secs(10), || {
        runs.0.load(Ordering::SeqCst) == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(runs.0.load(Ordering::SeqCst), 1);
    app.running.shutdown().await.unwrap();
    cleanup(&url, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_mid_run_errors_clearly_then_recovers_without_double_runs() {
    let Some(mut redis) = OwnRedis::start().await else {
        return;
    };
    redis.ready().await;
    let runs = Runs::default();
    let app = start(
        &["redis_idem"],
        &format!(
            "mq:\n  idempotency:\n    store: redis\n    redis-url: {}\n",
            redis.url()
        ),
        |a| a.with_state(runs.clone()),
    )
    .await;
    let t = app.running.template();
    t.message("t-redis-idem")
        .key("k-1")
        .bytes("x")
        .send()
        .await
        .unwrap();
    eventually("the first run", Duration::from_secs(10), || {
        runs.0.load(Ordering::SeqCst) == 1
    })
    .await;

    // Redis goes down: the store says so clearly, and the duplicate does not run.
    redis.kill();
    let store = RedisStore::connect(&redis.url()).await;
    let err = match store {
        Err(e) => e.to_string(),
        Ok(s) => s
            .acquire("k", Duration::from_secs(1))
            .await
            .unwrap_err()
            .to_string(),
    };
    assert!(err.contains("idempotency store unavailable"), "{err}");
    t.message("t-redis-idem")
        .key("k-1")
        .bytes("x")
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        runs.0.load(Ordering::SeqCst),
        1,
        "ran while the store was down"
    );

    // Redis is back (with its data): the duplicate is recognised, a new key runs.
    redis.restart().await;
    t.message("t-redis-idem")
        .key("k-2")
        .bytes("x")
        .send()
        .await
        .unwrap();
    eventually("the new key to run", Duration::from_secs(20), || {
        runs.0.load(Ordering::SeqCst) == 2
    })
    .await;
    let broker = app.running.broker();
    for _ in 0..200 {
        if broker.lag("g-redis-idem", "t-redis-idem").await.unwrap() == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        broker.lag("g-redis-idem", "t-redis-idem").await.unwrap(),
        Some(0)
    );
    assert_eq!(runs.0.load(Ordering::SeqCst), 2, "the duplicate ran twice");
    app.running.shutdown().await.unwrap();
}

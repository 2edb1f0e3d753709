//! The `redis_raw` bench still builds and runs: a few hundred messages through both of its
//! sides (the raw Redis Streams loop and `RedisBroker`), every one seen (the bench fails if one
//! is lost), its keys deleted. No timing is asserted. Skips loudly without Redis, unless
//! `MQ_REQUIRE_REDIS=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

#[allow(dead_code)]
#[path = "../benches/redis_raw.rs"]
mod redis_raw;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_raw_bench_runs_a_few_hundred_messages() {
    let Some(url) = support::redis_url() else {
        return;
    };
    let load = redis_raw::Load {
        messages: 320,
        warmup: 32,
        senders: 16,
        body: 1024,
        queues: 4,
        batch: 256,
    };
    let (raw, mq) = redis_raw::run_once(&url, load, 1).await;
    for (side, f) in [("raw", &raw), ("mq", &mq)] {
        assert_eq!(f.messages, 320, "{side}");
        assert!(f.rate > 0.0 && f.p99_ms >= f.p50_ms, "{side}: {f:?}");
    }
    assert!(raw.commands.contains_key("xadd"), "{:?}", raw.commands);
}

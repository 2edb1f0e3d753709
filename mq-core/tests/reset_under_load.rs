//! A reset, at a seeded random moment, to a seeded time between the start and that moment, while producers send and a consumer
//! receives and acknowledges under load, on the embedded broker and on Redis.
//!
//! Afterwards every message stored at or after the timestamp (offset at or above the reset's
//! target of its queue, and store time at or after the timestamp) has been delivered by a
//! receive that returned after the reset began, and no message below the target whose
//! acknowledgement had returned before the reset began is delivered by a receive that began
//! after the reset returned.
//!
//! The seed is printed; `MQ_RESET_SEED=<seed>` replays its timing (reset moment, send
//! pauses). `MQ_RESET_MESSAGES` sets the messages per producer (default 300).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mq_core::embedded::{EmbeddedBroker, EmbeddedConfig};
use mq_core::redis::{RedisBroker, RedisConfig};
use mq_core::{Broker, ConsumeFrom, ConsumerOptions, Message, ResetTo, SendOptions, Subscription};
use parking_lot::Mutex;

const PRODUCERS: usize = 2;
const QUEUES: u32 = 4;

/// splitmix64: small, seedable, good enough for timing draws.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn seed() -> u64 {
    std::env::var("MQ_RESET_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64 % 1_000_000_000)
                .unwrap_or(1)
        })
}

fn per_producer() -> usize {
    std::env::var("MQ_RESET_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

/// One delivery as the consumer saw it.
#[derive(Debug, Clone)]
struct Seen {
    queue: u32,
    offset: u64,
    store_ms: u64,
    /// The receive that returned it began after the reset had returned: it read the new
    /// position for sure.
    after_reset: bool,
    /// The receive returned after the reset began: it may have read the new position.
    maybe_after: bool,
}

async fn run(broker: Arc<dyn Broker>, backend: &str, seed: u64) {
    let mut rng = Rng(seed);
    let topic = format!("reset-load-{}", mq_core::MessageId::new());
    let group = format!("g-{}", mq_core::MessageId::new());
    broker.create_topic(&topic, QUEUES).await.expect("create");
    let consumer = broker
        .subscribe(
            Subscription::new(&topic, &group),
            ConsumerOptions::new().consume_from(ConsumeFrom::First),
        )
        .await
        .expect("subscribe");

    let reset_started = Arc::new(AtomicBool::new(false));
    let reset_done = Arc::new(AtomicBool::new(false));
    let producing = Arc::new(AtomicBool::new(true));
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    // (queue, offset) of messages whose acknowledgement returned before the reset began.
    let settled_before: Arc<Mutex<BTreeSet<(u32, u64)>>> = Arc::default();

    let consumer_task = {
        let (seen, settled_before) = (seen.clone(), settled_before.clone());
        let (reset_started, reset_done, producing) =
            (reset_started.clone(), reset_done.clone(), producing.clone());
        tokio::spawn(async move {
            let mut quiet_since: Option<tokio::time::Instant> = None;
            loop {
                let after_reset = reset_done.load(Ordering::SeqCst);
                let batch = consumer
                    .receive(64, Duration::from_millis(100))
                    .await
                    .expect("receive");
                let maybe_after = reset_started.load(Ordering::SeqCst);
                if batch.is_empty() {
                    if !producing.load(Ordering::SeqCst) && after_reset {
                        let since = *quiet_since.get_or_insert_with(tokio::time::Instant::now);
                        if since.elapsed() > Duration::from_millis(1500) {
                            break;
                        }
                    }
                    continue;
                }
                quiet_since = None;
                let receipts: Vec<_> = batch.iter().map(|d| d.receipt.clone()).collect();
                {
                    let mut seen = seen.lock();
                    for d in &batch {
                        seen.push(Seen {
                            queue: d.message.queue_id,
                            offset: d.message.queue_offset,
                            store_ms: d.message.store_timestamp,
                            after_reset,
                            maybe_after,
                        });
                    }
                }
                consumer.ack(&receipts).await.expect("ack");
                if !reset_started.load(Ordering::SeqCst) {
                    settled_before.lock().extend(
                        batch
                            .iter()
                            .map(|d| (d.message.queue_id, d.message.queue_offset)),
                    );
                }
            }
            consumer.close().await.expect("close");
        })
    };

    let n = per_producer();
    let start_ms = now_ms();
    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let broker = broker.clone();
        let topic = topic.clone();
        let mut rng = Rng(seed ^ (p as u64 + 1).wrapping_mul(0x51_7cc1_b727_220a));
        producers.push(tokio::spawn(async move {
            let mut stored = Vec::with_capacity(n);
            for i in 0..n {
                let r = broker
                    .send(
                        Message::new(&topic, format!("p{p}-{i}")),
                        SendOptions::new(),
                    )
                    .await
                    .expect("send");
                stored.push((r.queue_id, r.queue_offset));
                // Paced, so that the reset falls while they send.
                tokio::time::sleep(Duration::from_millis(1 + rng.below(5))).await;
            }
            stored
        }));
    }

    tokio::time::sleep(Duration::from_millis(100 + rng.below(700))).await;
    reset_started.store(true, Ordering::SeqCst);
    // A time since the start, so that some messages at or after it were delivered already
    // and must come again.
    let at = start_ms + rng.below(now_ms() - start_ms + 1);
    let targets: BTreeMap<u32, u64> = broker
        .reset_offset(&group, &topic, ResetTo::Timestamp(at))
        .await
        .expect("reset")
        .into_iter()
        .map(|q| (q.queue_id, q.offset))
        .collect();
    reset_done.store(true, Ordering::SeqCst);

    let mut all = BTreeSet::new();
    for p in producers {
        all.extend(p.await.expect("producer"));
    }
    producing.store(false, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(60), consumer_task)
        .await
        .expect("the consumer finishes")
        .expect("consumer");

    let seen = seen.lock().clone();
    let settled_before = settled_before.lock().clone();
    let target = |q: u32| targets.get(&q).copied().unwrap_or(0);
    // Exactly the messages at or after the time are at or above the target.
    for s in &seen {
        assert_eq!(
            s.store_ms >= at,
            s.offset >= target(s.queue),
            "[{backend}] seed={seed}: {s:?}, reset to {at}, targets {targets:?}"
        );
    }
    let after: BTreeSet<(u32, u64)> = seen
        .iter()
        .filter(|s| s.after_reset)
        .map(|s| (s.queue, s.offset))
        .collect();
    let maybe_after: BTreeSet<(u32, u64)> = seen
        .iter()
        .filter(|s| s.maybe_after)
        .map(|s| (s.queue, s.offset))
        .collect();
    let missing: Vec<_> = all
        .iter()
        .filter(|(q, o)| *o >= target(*q) && !maybe_after.contains(&(*q, *o)))
        .collect();
    assert!(
        missing.is_empty(),
        "[{backend}] seed={seed}: {} messages at or after the reset not delivered after it: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let redelivered: Vec<_> = after
        .iter()
        .filter(|(q, o)| *o < target(*q) && settled_before.contains(&(*q, *o)))
        .collect();
    assert!(
        redelivered.is_empty(),
        "[{backend}] seed={seed}: settled messages before the reset delivered again: {redelivered:?}"
    );
    let at_or_after = all.iter().filter(|(q, o)| *o >= target(*q)).count();
    let again = settled_before
        .iter()
        .filter(|(q, o)| *o >= target(*q))
        .count();
    eprintln!(
        "reset_under_load[{backend}]: seed={seed} sent={} at-or-after={at_or_after} \
         delivered-again={again} deliveries={} settled-before={} targets={targets:?} \
         (replay with MQ_RESET_SEED={seed})",
        all.len(),
        seen.len(),
        settled_before.len()
    );
    broker.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_reset_under_load() {
    let seed = seed();
    eprintln!("reset_under_load[embedded]: seed={seed}");
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = EmbeddedBroker::open(EmbeddedConfig::new(dir.path()))
        .await
        .expect("open");
    run(broker, "embedded", seed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_reset_under_load() {
    let Some(url) = support::redis_url() else {
        return;
    };
    let seed = seed();
    eprintln!("reset_under_load[redis]: seed={seed}");
    let ns = support::Namespace::new(&url);
    let broker = RedisBroker::connect(
        RedisConfig::new(&ns.url)
            .prefix(&ns.prefix)
            .heartbeat_interval(Duration::from_millis(500)),
    )
    .await
    .expect("connect");
    run(broker, "redis", seed).await;
}

//! The message trace of a real application: listeners record each settled delivery, resends
//! are recorded, shutdown stores what is queued, and a broker that fails or stalls while
//! storing trace records costs trace events only, never a message nor a delivery's progress.
//!
//! The fault test is seeded: `MQ_TRACE_SEED=<n>` replays a run (the seed is printed).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use mq_starter::core::embedded::{EmbeddedBroker, EmbeddedConfig};
use mq_starter::core::trace::{CopyKind, DeliveryOutcome, Trace, TraceEvent, TraceKind};
use mq_starter::core::{BackendErrorKind, Broker, BrokerError, MessageId, MessageView};
use mq_starter::prelude::*;
use mq_starter::{MqApplication, Running};
use support::wrapped::{Hooks, Wrapped, R};
use support::{config, eventually, start};
use tokio::sync::Notify;

/// Handler calls per message id, by test.
static CALLS: Mutex<BTreeMap<(&'static str, MessageId), u32>> = Mutex::new(BTreeMap::new());

fn called(test: &'static str, id: MessageId) -> u32 {
    let mut calls = CALLS.lock().unwrap();
    let n = calls.entry((test, id)).or_default();
    *n += 1;
    *n
}

fn calls(test: &'static str) -> u64 {
    CALLS
        .lock()
        .unwrap()
        .iter()
        .filter(|((t, _), _)| *t == test)
        .map(|(_, n)| u64::from(*n))
        .sum()
}

#[mq_listener(topic = "t-flaky", group = "g-flaky", enabled = "${test.flaky:false}")]
async fn fails_once(msg: MessageView) -> Outcome {
    if called("flaky", msg.id) == 1 {
        return Outcome::retry("first try fails: inventory locked");
    }
    // Long enough for the handler time to show in whole milliseconds.
    tokio::time::sleep(Duration::from_millis(15)).await;
    Outcome::ack()
}

#[mq_listener(
    topic = "t-poison",
    group = "g-poison",
    enabled = "${test.poison:false}"
)]
async fn poison_until_resent(msg: MessageView) -> Outcome {
    if called("poison", msg.id) == 1 {
        return Outcome::dead_letter("cannot parse the order");
    }
    Outcome::ack()
}

#[mq_listener(topic = "t-drain", group = "g-drain", enabled = "${test.drain:false}")]
async fn acks(msg: MessageView) {
    called("drain", msg.id);
}

/// Whether the fault test's handler fails the first delivery of `id` (one in ten).
fn fails_first(id: MessageId) -> bool {
    id.as_u128().is_multiple_of(10)
}

#[mq_listener(
    topic = "t-fault",
    group = "g-fault",
    concurrency = 32,
    enabled = "${test.fault:false}"
)]
async fn mostly_acks(msg: MessageView) -> Outcome {
    // One in ten fails its first delivery, so that retries run while tracing is in trouble.
    if called("fault", msg.id) == 1 && fails_first(msg.id) {
        return Outcome::retry("first delivery fails");
    }
    Outcome::ack()
}

/// Polls the trace of `id` until `done` holds.
async fn trace_until(running: &Running, id: MessageId, done: impl Fn(&Trace) -> bool) -> Trace {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let t = running.trace(id).await.unwrap();
        if done(&t) {
            return t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "trace never complete: {t:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn outcome(e: &TraceEvent) -> Option<DeliveryOutcome> {
    match &e.kind {
        TraceKind::Delivered { outcome, .. } => Some(*outcome),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_then_acked_delivery_is_traced() {
    let app = start(&["flaky"], "", |a| a).await;
    failed_then_acked(&app.running).await;
    app.running.shutdown().await.unwrap();
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_then_acked_delivery_is_traced_on_redis() {
    let Some(url) = support::redis::shared().await else {
        return;
    };
    let prefix = format!("mq-test:{}", MessageId::new());
    let app = start(
        &["flaky"],
        &format!("mq:\n  broker:\n    kind: redis\n    redis:\n      url: {url}\n      prefix: {prefix}\n"),
        |a| a,
    )
    .await;
    assert_eq!(app.running.broker().backend(), "redis");
    failed_then_acked(&app.running).await;
    app.running.shutdown().await.unwrap();
    support::redis::cleanup(&url, &prefix).await;
}

/// Sends to the listener that fails once; its trace shows the send, the failed delivery with
/// its error and retry, the retry copy, and the acknowledged one with instance and duration.
async fn failed_then_acked(running: &Running) {
    let sent = running
        .template()
        .message("t-flaky")
        .key("order-42")
        .bytes("order 42")
        .send()
        .await
        .unwrap();
    let t = trace_until(running, sent.message_id, |t| t.deliveries().count() == 2).await;

    let sent_event = t.sent().expect("the send");
    let TraceKind::Stored {
        queue_id,
        queue_offset,
        ..
    } = &sent_event.kind
    else {
        panic!("{sent_event:?}")
    };
    assert_eq!(
        (*queue_id, *queue_offset),
        (sent.queue_id, sent.queue_offset)
    );

    let deliveries: Vec<&TraceEvent> = t.deliveries().collect();
    let me = format!("{}-", std::process::id());
    match &deliveries[0].kind {
        TraceKind::Delivered {
            group,
            topic,
            instance,
            attempt,
            outcome,
            error,
            queue_offset,
            ..
        } => {
            assert_eq!((group.as_str(), topic.as_str()), ("g-flaky", "t-flaky"));
            assert_eq!(*attempt, 1);
            assert_eq!(
                *queue_offset, sent.queue_offset,
                "the original was delivered"
            );
            assert!(
                matches!(outcome, DeliveryOutcome::Retried { retry: 1, .. }),
                "{outcome:?}"
            );
            assert_eq!(error.as_deref(), Some("first try fails: inventory locked"));
            assert!(instance.starts_with(&me), "{instance}");
        }
        other => panic!("{other:?}"),
    }
    match &deliveries[1].kind {
        TraceKind::Delivered {
            instance,
            attempt,
            outcome,
            error,
            duration_ms,
            ..
        } => {
            assert_eq!(*attempt, 2);
            assert_eq!(*outcome, DeliveryOutcome::Acked);
            assert_eq!(*error, None);
            assert!(instance.starts_with(&me), "{instance}");
            // The handler slept 15 ms: its measured time cannot be less.
            assert!(*duration_ms >= 15, "{duration_ms}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        t.events.iter().any(|e| matches!(
            e.kind,
            TraceKind::Stored {
                copy: CopyKind::Retry,
                reconsume_times: 1,
                ..
            }
        )),
        "the retry copy: {t:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_dead_letter_is_traced() {
    let app = start(&["poison"], "", |a| a).await;
    let running = &app.running;
    let id = running
        .template()
        .message("t-poison")
        .bytes("{not json")
        .send()
        .await
        .unwrap()
        .message_id;
    trace_until(running, id, |t| {
        t.deliveries()
            .any(|e| outcome(e) == Some(DeliveryOutcome::DeadLettered))
    })
    .await;
    let broker = running.broker();
    let dead = broker.dead_letters("g-poison", 0, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    let recorder = running.trace_recorder();
    assert!(mq_starter::trace::resend_dead_letter(
        &*broker,
        recorder.as_ref(),
        "g-poison",
        dead[0].seq
    )
    .await
    .unwrap());
    let t = trace_until(running, id, |t| {
        t.deliveries()
            .any(|e| outcome(e) == Some(DeliveryOutcome::Acked))
    })
    .await;
    let resent = t
        .events
        .iter()
        .position(|e| {
            matches!(&e.kind, TraceKind::Resent { group, seq } if group == "g-poison" && *seq == dead[0].seq)
        })
        .expect("the resend");
    let acked = t
        .events
        .iter()
        .position(|e| outcome(e) == Some(DeliveryOutcome::Acked))
        .unwrap();
    assert!(resent < acked, "{t:#?}");
    assert!(
        !mq_starter::trace::resend_dead_letter(
            &*broker,
            recorder.as_ref(),
            "g-poison",
            dead[0].seq
        )
        .await
        .unwrap(),
        "a dead letter is resent once"
    );
    app.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stores_the_queued_events() {
    let app = start(&["drain"], "", |a| a).await;
    let ids: Vec<MessageId> = send_to_drain(&app.running, 20).await;
    eventually("every handler call", Duration::from_secs(20), || {
        calls("drain") >= 20
    })
    .await;
    let data = app.dir.path().join("mq");
    // At once: the recorder's last batch is still waiting for its 100 ms.
    app.running.shutdown().await.unwrap();
    let broker = EmbeddedBroker::open(EmbeddedConfig::new(&data))
        .await
        .unwrap();
    for id in ids {
        let t = mq_starter::core::trace::trace(&*broker, id).await.unwrap();
        assert_eq!(
            t.deliveries().filter_map(outcome).collect::<Vec<_>>(),
            vec![DeliveryOutcome::Acked],
            "{t:#?}"
        );
    }
    broker.shutdown().await.unwrap();
}

async fn send_to_drain(running: &Running, n: usize) -> Vec<MessageId> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        ids.push(
            running
                .template()
                .message("t-drain")
                .bytes(format!("m{i}"))
                .send()
                .await
                .unwrap()
                .message_id,
        );
    }
    ids
}

// --- the fault test -------------------------------------------------------------------------

/// SplitMix64: a seeded stream of numbers, enough to pick faults.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// What one `record_trace` call does.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    Store,
    Fail,
    /// Waits until released.
    Stall,
}

/// Trace storage that fails or stalls as the seed says (the hooks of a [`Wrapped`] embedded
/// broker; everything else is the embedded broker's).
struct Faulty {
    rng: Mutex<Rng>,
    release: Notify,
    released: std::sync::atomic::AtomicBool,
    stalls: AtomicU64,
    failures: AtomicU64,
}

impl Faulty {
    fn next_fault(&self) -> Fault {
        if self.released.load(Ordering::Acquire) {
            return Fault::Store;
        }
        match self.rng.lock().unwrap().next() % 10 {
            0..=3 => Fault::Fail,
            4 => Fault::Stall,
            _ => Fault::Store,
        }
    }

    fn release(&self) {
        self.released.store(true, Ordering::Release);
        self.release.notify_waiters();
    }
}

#[async_trait]
impl Hooks for Faulty {
    async fn record_trace(&self, inner: &dyn Broker, events: Vec<TraceEvent>) -> R<()> {
        match self.next_fault() {
            Fault::Store => {}
            Fault::Fail => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                return Err(BrokerError::backend(
                    "faulty",
                    BackendErrorKind::Unavailable,
                    "trace store refused (injected)",
                ));
            }
            Fault::Stall => {
                self.stalls.fetch_add(1, Ordering::Relaxed);
                let released = self.release.notified();
                if !self.released.load(Ordering::Acquire) {
                    released.await;
                }
            }
        }
        inner.record_trace(events).await
    }
}

/// Under load, a broker that refuses or stalls trace records at seeded moments: every message
/// is handled and acknowledged while tracing is stuck (delivery never waits for it), what
/// could not be queued or stored is counted, and every event counted as stored is in the
/// traces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_trace_store_costs_no_message() {
    let seed = std::env::var("MQ_TRACE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| MessageId::new().as_u128() as u64);
    println!("MQ_TRACE_SEED={seed}");
    let (cfg, dir) = config(&["fault"], "mq:\n  trace:\n    queue-capacity: 64\n");
    let inner = EmbeddedBroker::open(EmbeddedConfig::new(dir.path().join("mq")))
        .await
        .unwrap();
    let faulty = Arc::new(Wrapped {
        inner,
        hooks: Faulty {
            rng: Mutex::new(Rng(seed)),
            release: Notify::new(),
            released: Default::default(),
            stalls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        },
    });
    let running = MqApplication::new(cfg)
        .unwrap()
        .with_broker(faulty.clone())
        .start()
        .await
        .unwrap();
    const N: usize = 2000;
    let template = running.template();
    let mut sent = HashSet::with_capacity(N);
    let mut rng = Rng(seed ^ 0x5eed);
    for i in 0..N {
        sent.insert(
            template
                .message("t-fault")
                .bytes(format!("m{i}"))
                .send()
                .await
                .unwrap()
                .message_id,
        );
        if rng.next().is_multiple_of(200) {
            // Bursts and pauses, so that the recorder both fills its queue and empties it.
            tokio::time::sleep(Duration::from_millis(rng.next() % 150)).await;
        }
    }
    let metrics = running.metrics();
    let series = metrics.series("t-fault", "g-fault");
    let expected_calls = || N as u64 + sent.iter().filter(|id| fails_first(**id)).count() as u64;
    // Deliveries finish while the trace store may still be stalled: nothing waits for it.
    eventually(
        "every message handled and acknowledged",
        Duration::from_secs(60),
        || series.acked_count() == N as u64 && calls("fault") == expected_calls(),
    )
    .await;
    let handled: HashSet<MessageId> = CALLS
        .lock()
        .unwrap()
        .keys()
        .filter(|(t, _)| *t == "fault")
        .map(|(_, id)| *id)
        .collect();
    assert_eq!(
        handled, sent,
        "seed {seed}: every message reached the handler"
    );
    faulty.hooks.release();
    running.shutdown().await.unwrap();

    let (full, failed) = metrics.trace().dropped_counts();
    let recorded = metrics.trace().recorded_count();
    println!(
        "seed {seed}: {} events: {recorded} stored, {full} dropped on a full queue, {failed} refused; {} stalls, {} refusals",
        expected_calls(),
        faulty.hooks.stalls.load(Ordering::Relaxed),
        faulty.hooks.failures.load(Ordering::Relaxed)
    );
    assert_eq!(
        recorded + full + failed,
        expected_calls(),
        "seed {seed}: every event is stored or counted as dropped"
    );
    let broker = EmbeddedBroker::open(EmbeddedConfig::new(dir.path().join("mq")))
        .await
        .unwrap();
    let mut found = 0;
    for id in &sent {
        found += mq_starter::core::trace::trace(&*broker, *id)
            .await
            .unwrap()
            .deliveries()
            .count() as u64;
    }
    assert_eq!(
        found, recorded,
        "seed {seed}: the stored events are in the traces"
    );
    broker.shutdown().await.unwrap();
}

//! Throughput of the embedded broker when some deliveries fail once: 1 KiB messages go
//! send -> handler -> ack through one consumer group, and the handler fails
//! `MQ_BENCH_FAIL_PERCENT` (default 10) percent of first deliveries with
//! `Failure::retry_after("bench", 100 ms)`. It acknowledges every other delivery, and every
//! retried one, so each message completes after at most one retry.
//!
//! Every run pair is the same run shape twice on fresh data directories: first with no failures,
//! then with failures, so that both see the same machine conditions as far as possible. The
//! figure of interest is the ratio of the two throughputs.
//!
//! Throughput counts completed messages: a message completes when a delivery of it is
//! acknowledged. It is the number of completed messages divided by the time from the first send
//! to the last completion, so the final retry delay is part of it (see `send-phase` for the rate
//! while the senders ran). Which message fails is decided by its sequence number (in the body).
//!
//! Knobs (environment): `MQ_BENCH_MESSAGES` (messages per run, default 300000),
//! `MQ_BENCH_SECONDS` (cap of the send phase, default 4), `MQ_BENCH_RUNS` (pairs, default 5),
//! `MQ_BENCH_FAIL_PERCENT` (default 10), `MQ_BENCH_RETRY_MS` (default 100),
//! `MQ_BENCH_NACK` (`serial`, the default: the handler loop awaits each nack in turn, as a
//! simple consumer does; `concurrent`: the nacks of one received batch run as concurrent
//! tasks and the loop waits for all of them),
//! `MQ_BENCH_SENDERS` (default 256), `MQ_BENCH_BATCH` (receive batch, default 256),
//! `MQ_BENCH_QUEUES` (default 4), `MQ_BENCH_BODY` (bytes, default 1024), `MQ_BENCH_WORKERS`
//! (tokio worker threads, default: the core count), `MQ_BENCH_DIR` (default /tmp). The flush
//! policy is `FlushPolicy::Async` (500 ms).
//!
//! Run with `cargo bench -p mq-core --bench retries`.

// A benchmark has nothing better to do on failure than abort with the message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mq_core::embedded::{EmbeddedBroker, EmbeddedConfig, FlushPolicy};
use mq_core::{
    Broker, Consumer, ConsumerOptions, Disposition, Failure, Message, Receipt, SendOptions,
    Subscription,
};

const TOPIC: &str = "bench";
const GROUP: &str = "bench-group";
/// Messages sent (and consumed) before the measured ones, per run; they never fail.
const WARMUP: u64 = 2_000;
/// Body marker of measured messages (bytes 8..16); warm-up messages carry 0.
const MEASURED: u64 = 1;

#[derive(Debug, Clone)]
struct Settings {
    messages: u64,
    seconds: f64,
    runs: usize,
    fail_percent: u64,
    retry: Duration,
    concurrent_nacks: bool,
    senders: usize,
    batch: usize,
    queues: u32,
    body: usize,
    workers: usize,
    dir: String,
}

impl Settings {
    fn from_env() -> Self {
        Settings {
            messages: env("MQ_BENCH_MESSAGES", 300_000),
            seconds: env("MQ_BENCH_SECONDS", 4.0),
            runs: env("MQ_BENCH_RUNS", 5usize).max(1),
            fail_percent: env("MQ_BENCH_FAIL_PERCENT", 10u64).min(100),
            retry: Duration::from_millis(env("MQ_BENCH_RETRY_MS", 100u64)),
            concurrent_nacks: match env("MQ_BENCH_NACK", "serial".to_owned()).as_str() {
                "serial" => false,
                "concurrent" => true,
                other => panic!("MQ_BENCH_NACK={other:?}: serial or concurrent"),
            },
            senders: env("MQ_BENCH_SENDERS", 256usize).max(1),
            batch: env("MQ_BENCH_BATCH", 256usize).max(1),
            queues: env("MQ_BENCH_QUEUES", 4u32).max(1),
            body: env("MQ_BENCH_BODY", 1024usize).max(16),
            workers: env(
                "MQ_BENCH_WORKERS",
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )
            .max(1),
            dir: env("MQ_BENCH_DIR", "/tmp".to_owned()),
        }
    }
}

/// The figures of one run.
#[derive(Debug, Clone)]
struct RunResult {
    fail_percent: u64,
    completed: u64,
    sent: u64,
    nacked: u64,
    /// Deliveries acknowledged although already completed (redeliveries).
    duplicates: u64,
    elapsed: Duration,
    send_phase: Duration,
    /// `nack` call duration, ns.
    nack: Histogram<u64>,
}

impl RunResult {
    fn throughput(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64()
    }

    fn send_rate(&self) -> f64 {
        self.sent as f64 / self.send_phase.as_secs_f64()
    }
}

fn body(len: usize, seq: u64, marker: u64) -> Vec<u8> {
    let mut b = vec![0x5a_u8; len];
    b[0..8].copy_from_slice(&seq.to_le_bytes());
    b[8..16].copy_from_slice(&marker.to_le_bytes());
    b
}

/// Whether the first delivery of message `seq` fails: exactly `percent` of every 100.
fn fails(seq: u64, percent: u64) -> bool {
    seq % 100 < percent
}

/// State shared by the senders and the consumer of one run.
struct Shared {
    start: Instant,
    /// Distinct measured messages completed so far.
    completed: AtomicU64,
    /// Measured messages sent; `u64::MAX` while senders still run.
    expected: AtomicU64,
    /// Nanoseconds since `start` of the last completion.
    last_completed: AtomicU64,
    stop: AtomicBool,
}

struct ConsumerFigures {
    nacked: u64,
    duplicates: u64,
    nack: Histogram<u64>,
}

/// The handler loop: receive a batch, nack the failing first deliveries, ack the rest.
async fn consume(
    consumer: Arc<dyn Consumer>,
    shared: Arc<Shared>,
    settings: Settings,
    fail_percent: u64,
) -> ConsumerFigures {
    let mut done = vec![false; settings.messages as usize];
    let mut figures = ConsumerFigures {
        nacked: 0,
        duplicates: 0,
        nack: histogram(),
    };
    let mut receipts = Vec::with_capacity(settings.batch);
    let mut nacks = tokio::task::JoinSet::new();
    loop {
        if shared.stop.load(Ordering::Acquire)
            || shared.completed.load(Ordering::Acquire) >= shared.expected.load(Ordering::Acquire)
        {
            break;
        }
        let deliveries = consumer
            .receive(settings.batch, Duration::from_millis(20))
            .await
            .expect("receive");
        if deliveries.is_empty() {
            continue;
        }
        receipts.clear();
        let mut completed = 0;
        for d in &deliveries {
            let body = &d.message.body;
            if read_u64(body, 8) != MEASURED {
                receipts.push(d.receipt.clone());
                continue;
            }
            let seq = read_u64(body, 0);
            if d.message.reconsume_times == 0 && fails(seq, fail_percent) {
                let nack = nack(consumer.clone(), d.receipt.clone(), settings.retry, seq);
                if settings.concurrent_nacks {
                    nacks.spawn(nack);
                } else {
                    figures.nack.saturating_record(nack.await);
                }
                figures.nacked += 1;
                continue;
            }
            receipts.push(d.receipt.clone());
            match done.get_mut(seq as usize) {
                Some(flag) if !*flag => {
                    *flag = true;
                    completed += 1;
                }
                _ => figures.duplicates += 1,
            }
        }
        while let Some(ns) = nacks.join_next().await {
            figures.nack.saturating_record(ns.expect("nack task"));
        }
        if !receipts.is_empty() {
            consumer.ack(&receipts).await.expect("ack");
        }
        if completed > 0 {
            shared
                .last_completed
                .fetch_max(nanos_since(shared.start), Ordering::AcqRel);
            shared.completed.fetch_add(completed, Ordering::AcqRel);
        }
    }
    consumer.close().await.expect("close consumer");
    figures
}

/// Fails one delivery; returns how long the call took, ns.
async fn nack(consumer: Arc<dyn Consumer>, receipt: Receipt, retry: Duration, seq: u64) -> u64 {
    let t0 = Instant::now();
    let disposition = consumer
        .nack(&receipt, Failure::retry_after("bench", retry))
        .await
        .expect("nack");
    assert!(
        matches!(disposition, Disposition::Retry { .. }),
        "nack of message {seq}: {disposition:?}"
    );
    (t0.elapsed().as_nanos() as u64).max(1_000)
}

async fn send_one(broker: &EmbeddedBroker, len: usize, seq: u64, marker: u64) {
    broker
        .send(
            Message::new(TOPIC, body(len, seq, marker)),
            SendOptions::new(),
        )
        .await
        .expect("send");
}

async fn run_once(settings: &Settings, fail_percent: u64) -> RunResult {
    let dir = tempfile::Builder::new()
        .prefix("mq-bench-retries-")
        .tempdir_in(std::path::Path::new(&settings.dir))
        .expect("temp dir");
    let broker =
        EmbeddedBroker::open(EmbeddedConfig::new(dir.path()).flush(FlushPolicy::default()))
            .await
            .expect("open broker");
    broker
        .create_topic(TOPIC, settings.queues)
        .await
        .expect("create topic");
    let shared = Arc::new(Shared {
        start: Instant::now(),
        completed: AtomicU64::new(0),
        expected: AtomicU64::new(u64::MAX),
        last_completed: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let consumer = broker
        .subscribe(
            Subscription::new(TOPIC, GROUP),
            ConsumerOptions::new().instance("bench-0"),
        )
        .await
        .expect("subscribe");
    let consuming = tokio::spawn(consume(
        Arc::from(consumer),
        shared.clone(),
        settings.clone(),
        fail_percent,
    ));

    // Warm-up: page in the files and the code paths; not measured.
    let warm_senders = settings.senders.min(64) as u64;
    let warm: Vec<_> = (0..warm_senders)
        .map(|k| {
            let broker = broker.clone();
            let len = settings.body;
            tokio::spawn(async move {
                let mut i = k;
                while i < WARMUP {
                    send_one(&broker, len, i, 0).await;
                    i += warm_senders;
                }
            })
        })
        .collect();
    for w in warm {
        w.await.expect("warm-up sender");
    }

    let claimed = Arc::new(AtomicU64::new(0));
    let first_send = nanos_since(shared.start);
    let deadline = Instant::now() + Duration::from_secs_f64(settings.seconds);
    let tasks: Vec<_> = (0..settings.senders)
        .map(|_| {
            let broker = broker.clone();
            let claimed = claimed.clone();
            let len = settings.body;
            let total = settings.messages;
            tokio::spawn(async move {
                let mut n = 0u64;
                loop {
                    let seq = claimed.fetch_add(1, Ordering::Relaxed);
                    if seq >= total || Instant::now() >= deadline {
                        return n;
                    }
                    send_one(&broker, len, seq, MEASURED).await;
                    n += 1;
                }
            })
        })
        .collect();
    let mut sent = 0;
    for t in tasks {
        sent += t.await.expect("sender");
    }
    let send_phase = Duration::from_nanos(nanos_since(shared.start) - first_send);
    // Messages claimed after the deadline were not sent: only `0..sent` exist, since every
    // sender stops at the first claim past the deadline (claims are taken in order).
    shared.expected.store(sent, Ordering::Release);

    let drain_deadline = Instant::now() + Duration::from_secs(60);
    while shared.completed.load(Ordering::Acquire) < sent {
        if Instant::now() > drain_deadline {
            panic!(
                "only {} of {sent} messages completed within 60 s",
                shared.completed.load(Ordering::Acquire)
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    shared.stop.store(true, Ordering::Release);
    let figures = consuming.await.expect("consumer");
    let completed = shared.completed.load(Ordering::Acquire);
    let last = shared.last_completed.load(Ordering::Acquire);
    broker.shutdown().await.expect("shutdown");
    drop(broker);
    drop(dir);
    RunResult {
        fail_percent,
        completed,
        sent,
        nacked: figures.nacked,
        duplicates: figures.duplicates,
        elapsed: Duration::from_nanos(last.saturating_sub(first_send).max(1)),
        send_phase,
        nack: figures.nack,
    }
}

fn print_run(pair: usize, r: &RunResult) {
    println!(
        "pair {} fail {:>2}%: {:>7} completed in {:>6.3} s = {:>8.0} msg/s  send-phase {:>8.0} msg/s  nacked {:>6}  nack p50 {:>7.1} us  p99 {:>8.1} us  duplicates {}",
        pair + 1,
        r.fail_percent,
        r.completed,
        r.elapsed.as_secs_f64(),
        r.throughput(),
        r.send_rate(),
        r.nacked,
        r.nack.value_at_quantile(0.50) as f64 / 1000.0,
        r.nack.value_at_quantile(0.99) as f64 / 1000.0,
        r.duplicates,
    );
}

fn main() {
    let settings = Settings::from_env();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.workers)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let began = Instant::now();
    println!("machine: {}", machine());
    println!(
        "settings: async flush, {} B bodies, {} senders, 1 consumer, receive batch {}, {} queues, \
         up to {} msgs or {} s of sending per run, {} pairs (0% then {}% failing once, retry after {} ms, {} nacks), \
         {} tokio workers, data under {}",
        settings.body,
        settings.senders,
        settings.batch,
        settings.queues,
        settings.messages,
        settings.seconds,
        settings.runs,
        settings.fail_percent,
        settings.retry.as_millis(),
        if settings.concurrent_nacks {
            "concurrent"
        } else {
            "serial"
        },
        settings.workers,
        settings.dir
    );
    let pairs: Vec<(RunResult, RunResult)> = runtime.block_on(async {
        let mut pairs = Vec::new();
        for i in 0..settings.runs {
            let clean = run_once(&settings, 0).await;
            print_run(i, &clean);
            let failing = run_once(&settings, settings.fail_percent).await;
            print_run(i, &failing);
            println!(
                "pair {}: ratio {:.3}",
                i + 1,
                failing.throughput() / clean.throughput()
            );
            pairs.push((clean, failing));
        }
        pairs
    });
    let clean = median(pairs.iter().map(|(c, _)| c.throughput()).collect());
    let failing = median(pairs.iter().map(|(_, f)| f.throughput()).collect());
    let clean_send = median(pairs.iter().map(|(c, _)| c.send_rate()).collect());
    let failing_send = median(pairs.iter().map(|(_, f)| f.send_rate()).collect());
    let ratio = median(
        pairs
            .iter()
            .map(|(c, f)| f.throughput() / c.throughput())
            .collect(),
    );
    let nack_p50 = median(
        pairs
            .iter()
            .map(|(_, f)| f.nack.value_at_quantile(0.5) as f64 / 1000.0)
            .collect(),
    );
    let nack_p99 = median(
        pairs
            .iter()
            .map(|(_, f)| f.nack.value_at_quantile(0.99) as f64 / 1000.0)
            .collect(),
    );
    println!();
    println!(
        "medians of {} pairs ({:.1} s in all):",
        pairs.len(),
        began.elapsed().as_secs_f64()
    );
    println!("| failing once | completed msg/s | send-phase msg/s | nack p50 / p99 (us) |");
    println!("|---|---|---|---|");
    println!("| 0% | {clean:.0} | {clean_send:.0} | – |");
    println!(
        "| {}% | {failing:.0} | {failing_send:.0} | {nack_p50:.1} / {nack_p99:.1} |",
        settings.fail_percent
    );
    println!(
        "ratio {}% / 0%: {:.3} (ratio of medians), {:.3} (median of per-pair ratios)",
        settings.fail_percent,
        failing / clean,
        ratio
    );
}

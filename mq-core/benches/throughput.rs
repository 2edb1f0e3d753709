//! Throughput and latency of the embedded broker, in one process: 1 KiB messages go
//! send -> handler -> ack through one consumer group.
//!
//! Scenarios (pick with positional arguments or `MQ_BENCH_SCENARIOS=async,sync,paced`; the
//! default is all three):
//! - `async`: `FlushPolicy::Async` (500 ms), N concurrent senders, as fast as possible;
//! - `sync`: `FlushPolicy::Sync` (group commit), N concurrent senders, as fast as possible;
//! - `paced`: async flush, senders paced at a fixed total rate (default: half the median
//!   `async` throughput of this invocation), to read the send-to-handler latency off-peak.
//!
//! Latency is measured from just before the message is built and sent to the moment the
//! consumer's handler sees it (the send time travels in the first 8 bytes of the body, as
//! nanoseconds since a start instant shared by every task). Throughput is the number of
//! messages handled divided by the time from the first send to the last handler call. Each
//! run also gives the messages per fsync of the commit log while its messages were written
//! (`EmbeddedBroker::write_stats`): group commit's batching under `sync`.
//!
//! Knobs (environment): `MQ_BENCH_MESSAGES` (messages per run, default 300000),
//! `MQ_BENCH_SECONDS` (cap per run, default 4), `MQ_BENCH_RUNS` (default 5),
//! `MQ_BENCH_SENDERS` (default 256), `MQ_BENCH_CONSUMERS` (members of the group, default 1),
//! `MQ_BENCH_BATCH` (receive batch, default 256), `MQ_BENCH_QUEUES` (default 4),
//! `MQ_BENCH_BODY` (bytes, default 1024), `MQ_BENCH_RATE` (msg/s of `paced`),
//! `MQ_BENCH_PACED_SECONDS` (default 3), `MQ_BENCH_PACED_SENDERS` (sender counts of `paced`,
//! default `256,64`), `MQ_BENCH_WORKERS` (tokio worker threads, default: the core count),
//! `MQ_BENCH_DIR` (parent of the data dirs, default /tmp), `MQ_BENCH_INDEX` (`on`, the
//! default, `off`, or `both`: the key index on and off in the same invocation, runs
//! alternating, with a median per setting). Every message carries one key (`k<n>`), so the
//! index holds two entries per message; runs with the index on also print its bytes on disk
//! per message.
//!
//! Run with `cargo bench -p mq-core --bench throughput [-- async|sync|paced]`.

// A benchmark has nothing better to do on failure than abort with the message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mq_core::embedded::{EmbeddedBroker, EmbeddedConfig, FlushPolicy};
use mq_core::{Broker, Consumer, ConsumerOptions, Message, SendOptions, Subscription};

const TOPIC: &str = "bench";
const GROUP: &str = "bench-group";
/// Messages sent (and consumed) before the measured ones, per run.
const WARMUP: u64 = 2_000;
/// Body marker of measured messages (bytes 8..16); warm-up messages carry 0.
const MEASURED: u64 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Async,
    Sync,
    Paced,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Async => "async",
            Scenario::Sync => "sync",
            Scenario::Paced => "paced",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "async" => Some(Scenario::Async),
            "sync" => Some(Scenario::Sync),
            "paced" => Some(Scenario::Paced),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
struct Settings {
    scenarios: Vec<Scenario>,
    messages: u64,
    seconds: f64,
    runs: usize,
    senders: usize,
    consumers: usize,
    batch: usize,
    queues: u32,
    body: usize,
    rate: Option<f64>,
    paced_seconds: f64,
    paced_senders: Vec<usize>,
    workers: usize,
    dir: String,
    /// Key-index settings to run, in turn.
    index: Vec<bool>,
}

impl Settings {
    fn from_env_and_args() -> Self {
        // `cargo bench` passes `--bench`; anything that is not a scenario name is ignored.
        let mut scenarios: Vec<Scenario> = std::env::args()
            .skip(1)
            .filter_map(|a| Scenario::parse(&a))
            .collect();
        if scenarios.is_empty() {
            if let Ok(list) = std::env::var("MQ_BENCH_SCENARIOS") {
                scenarios = list
                    .split(',')
                    .filter_map(|s| Scenario::parse(s.trim()))
                    .collect();
            }
        }
        if scenarios.is_empty() {
            scenarios = vec![Scenario::Async, Scenario::Sync, Scenario::Paced];
        }
        Settings {
            scenarios,
            messages: env("MQ_BENCH_MESSAGES", 300_000),
            seconds: env("MQ_BENCH_SECONDS", 4.0),
            runs: env("MQ_BENCH_RUNS", 5usize).max(1),
            senders: env("MQ_BENCH_SENDERS", 256usize).max(1),
            consumers: env("MQ_BENCH_CONSUMERS", 1usize).max(1),
            batch: env("MQ_BENCH_BATCH", 256usize).max(1),
            queues: env("MQ_BENCH_QUEUES", 4u32).max(1),
            body: env("MQ_BENCH_BODY", 1024usize).max(16),
            rate: std::env::var("MQ_BENCH_RATE").ok().map(|v| {
                v.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("MQ_BENCH_RATE={v:?} is not a number"))
            }),
            paced_seconds: env("MQ_BENCH_PACED_SECONDS", 3.0),
            paced_senders: env("MQ_BENCH_PACED_SENDERS", "256,64".to_owned())
                .split(',')
                .map(|n| {
                    n.trim()
                        .parse::<usize>()
                        .unwrap_or_else(|_| panic!("MQ_BENCH_PACED_SENDERS: {n:?}"))
                        .max(1)
                })
                .collect(),
            workers: env(
                "MQ_BENCH_WORKERS",
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )
            .max(1),
            dir: env("MQ_BENCH_DIR", "/tmp".to_owned()),
            index: match env("MQ_BENCH_INDEX", "on".to_owned()).as_str() {
                "on" => vec![true],
                "off" => vec![false],
                "both" => vec![true, false],
                other => panic!("MQ_BENCH_INDEX={other:?}: on, off or both"),
            },
        }
    }
}

/// The figures of one run.
#[derive(Debug, Clone)]
struct RunResult {
    handled: u64,
    elapsed: Duration,
    /// Send start -> handler, ns.
    e2e: Histogram<u64>,
    /// Send start -> send returned, ns.
    send: Histogram<u64>,
    /// The rate the senders were asked for (paced runs).
    target_rate: Option<f64>,
    /// Messages per fsync of the commit log while the measured messages were written.
    per_sync: f64,
    /// Whether the key index was on.
    index: bool,
    /// Key-index bytes on disk (sealed files) plus entries in memory at 16 bytes, per
    /// message stored.
    index_bytes_per_msg: Option<f64>,
}

impl RunResult {
    fn throughput(&self) -> f64 {
        self.handled as f64 / self.elapsed.as_secs_f64()
    }
}

fn body(len: usize, sent_ns: u64, marker: u64) -> Vec<u8> {
    let mut b = vec![0x5a_u8; len];
    b[0..8].copy_from_slice(&sent_ns.to_le_bytes());
    b[8..16].copy_from_slice(&marker.to_le_bytes());
    b
}

/// State shared by the senders and consumers of one run.
struct Shared {
    start: Instant,
    /// Measured messages handled so far.
    handled: AtomicU64,
    /// Measured messages sent; `u64::MAX` while senders still run.
    expected: AtomicU64,
    /// Nanoseconds since `start` of the last handler call of a measured message.
    last_handled: AtomicU64,
    /// Nanoseconds since `start` of the first measured send.
    first_sent: AtomicU64,
    stop_consumers: AtomicBool,
}

/// One member's loop: receive a batch, "handle" it (record the latency), ack it.
async fn consume(consumer: Box<dyn Consumer>, shared: Arc<Shared>, batch: usize) -> Histogram<u64> {
    let mut hist = histogram();
    let mut receipts = Vec::with_capacity(batch);
    loop {
        if shared.stop_consumers.load(Ordering::Acquire)
            || shared.handled.load(Ordering::Acquire) >= shared.expected.load(Ordering::Acquire)
        {
            break;
        }
        let deliveries = consumer
            .receive(batch, Duration::from_millis(20))
            .await
            .expect("receive");
        if deliveries.is_empty() {
            continue;
        }
        receipts.clear();
        let mut measured = 0;
        let mut last = 0;
        for d in &deliveries {
            let now = nanos_since(shared.start);
            let body = &d.message.body;
            if read_u64(body, 8) == MEASURED {
                let sent = read_u64(body, 0);
                hist.saturating_record(now.saturating_sub(sent).max(1_000));
                measured += 1;
                last = now;
            }
            receipts.push(d.receipt.clone());
        }
        consumer.ack(&receipts).await.expect("ack");
        if measured > 0 {
            shared.last_handled.fetch_max(last, Ordering::AcqRel);
            shared.handled.fetch_add(measured, Ordering::AcqRel);
        }
    }
    consumer.close().await.expect("close consumer");
    hist
}

async fn send_one(broker: &EmbeddedBroker, start: Instant, len: usize, marker: u64) -> u64 {
    let t0 = nanos_since(start);
    let msg = Message::new(TOPIC, body(len, t0, marker)).with_key(format!("k{t0}"));
    broker.send(msg, SendOptions::new()).await.expect("send");
    t0
}

/// Senders as fast as they go: each claims the next message until `total` or the deadline.
async fn flat_out_sender(
    broker: Arc<EmbeddedBroker>,
    shared: Arc<Shared>,
    claimed: Arc<AtomicU64>,
    total: u64,
    deadline: Instant,
    len: usize,
) -> Vec<u64> {
    let mut samples = Vec::new();
    while claimed.fetch_add(1, Ordering::Relaxed) < total && Instant::now() < deadline {
        let t0 = send_one(&broker, shared.start, len, MEASURED).await;
        if samples.is_empty() {
            shared.first_sent.fetch_min(t0, Ordering::AcqRel);
        }
        samples.push(nanos_since(shared.start) - t0);
    }
    samples
}

/// A paced sender: message `j` of sender `k` of `n` is due at `begin + (k + j n) / rate`.
#[allow(clippy::too_many_arguments)]
async fn paced_sender(
    broker: Arc<EmbeddedBroker>,
    shared: Arc<Shared>,
    k: usize,
    n: usize,
    rate: f64,
    count: u64,
    begin: Instant,
    len: usize,
) -> Vec<u64> {
    let mut samples = Vec::new();
    let mut j = 0u64;
    loop {
        let index = k as u64 + j * n as u64;
        if index >= count {
            break;
        }
        let due = begin + Duration::from_secs_f64(index as f64 / rate);
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        let t0 = send_one(&broker, shared.start, len, MEASURED).await;
        if samples.is_empty() {
            shared.first_sent.fetch_min(t0, Ordering::AcqRel);
        }
        samples.push(nanos_since(shared.start) - t0);
        j += 1;
    }
    samples
}

async fn run_once(
    settings: &Settings,
    scenario: Scenario,
    senders: usize,
    rate: Option<f64>,
    index: bool,
) -> RunResult {
    let parent = std::path::Path::new(&settings.dir);
    let dir = tempfile::Builder::new()
        .prefix("mq-bench-")
        .tempdir_in(parent)
        .expect("temp dir");
    let flush = match scenario {
        Scenario::Sync => FlushPolicy::Sync,
        Scenario::Async | Scenario::Paced => FlushPolicy::default(),
    };
    let broker = EmbeddedBroker::open(
        EmbeddedConfig::new(dir.path())
            .flush(flush)
            .message_index(index),
    )
    .await
    .expect("open broker");
    broker
        .create_topic(TOPIC, settings.queues)
        .await
        .expect("create topic");

    let shared = Arc::new(Shared {
        start: Instant::now(),
        handled: AtomicU64::new(0),
        expected: AtomicU64::new(u64::MAX),
        last_handled: AtomicU64::new(0),
        first_sent: AtomicU64::new(u64::MAX),
        stop_consumers: AtomicBool::new(false),
    });
    let mut consumers = Vec::new();
    for i in 0..settings.consumers {
        let consumer = broker
            .subscribe(
                Subscription::new(TOPIC, GROUP),
                ConsumerOptions::new().instance(format!("bench-{i}")),
            )
            .await
            .expect("subscribe");
        consumers.push(tokio::spawn(consume(
            consumer,
            shared.clone(),
            settings.batch,
        )));
    }

    // Warm-up: page in the files and the code paths; not measured.
    let warm_senders = senders.min(64);
    let warm: Vec<_> = (0..warm_senders)
        .map(|k| {
            let broker = broker.clone();
            let start = shared.start;
            let len = settings.body;
            tokio::spawn(async move {
                let mut i = k as u64;
                while i < WARMUP {
                    send_one(&broker, start, len, 0).await;
                    i += warm_senders as u64;
                }
            })
        })
        .collect();
    for w in warm {
        w.await.expect("warm-up sender");
    }

    let len = settings.body;
    let writes_before = broker.write_stats();
    let tasks: Vec<_> = match scenario {
        Scenario::Async | Scenario::Sync => {
            let claimed = Arc::new(AtomicU64::new(0));
            let deadline = Instant::now() + Duration::from_secs_f64(settings.seconds);
            (0..senders)
                .map(|_| {
                    tokio::spawn(flat_out_sender(
                        broker.clone(),
                        shared.clone(),
                        claimed.clone(),
                        settings.messages,
                        deadline,
                        len,
                    ))
                })
                .collect()
        }
        Scenario::Paced => {
            let rate = rate.expect("paced rate");
            let count = ((rate * settings.paced_seconds) as u64).max(1);
            let begin = Instant::now() + Duration::from_millis(5);
            (0..senders)
                .map(|k| {
                    tokio::spawn(paced_sender(
                        broker.clone(),
                        shared.clone(),
                        k,
                        senders,
                        rate,
                        count,
                        begin,
                        len,
                    ))
                })
                .collect()
        }
    };
    let mut sent = 0;
    let mut send_hist = histogram();
    for t in tasks {
        let samples = t.await.expect("sender");
        sent += samples.len() as u64;
        for ns in samples {
            send_hist.saturating_record(ns.max(1_000));
        }
    }
    shared.expected.store(sent, Ordering::Release);

    // Drain: every measured message must reach a handler.
    let drain_deadline = Instant::now() + Duration::from_secs(30);
    while shared.handled.load(Ordering::Acquire) < sent {
        if Instant::now() > drain_deadline {
            panic!(
                "only {} of {sent} messages reached a handler within 30 s",
                shared.handled.load(Ordering::Acquire)
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    shared.stop_consumers.store(true, Ordering::Release);
    let mut e2e = histogram();
    for c in consumers {
        e2e.add(c.await.expect("consumer"))
            .expect("merge histograms");
    }
    let handled = shared.handled.load(Ordering::Acquire);
    let first = shared.first_sent.load(Ordering::Acquire);
    let last = shared.last_handled.load(Ordering::Acquire);
    let writes = broker.write_stats();
    let per_sync = (writes.messages - writes_before.messages) as f64
        / (writes.syncs - writes_before.syncs).max(1) as f64;
    broker.shutdown().await.expect("shutdown");
    let index_bytes_per_msg = broker.key_index_footprint().map(|(disk, in_memory)| {
        (disk + 16 * in_memory as u64) as f64 / writes.messages.max(1) as f64
    });
    drop(broker);
    drop(dir);
    RunResult {
        handled,
        elapsed: Duration::from_nanos(last.saturating_sub(first).max(1)),
        e2e,
        send: send_hist,
        target_rate: if scenario == Scenario::Paced {
            rate
        } else {
            None
        },
        per_sync,
        index,
        index_bytes_per_msg,
    }
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1_000.0
}

fn print_run(scenario: Scenario, senders: usize, i: usize, r: &RunResult) {
    println!(
        "{:<6} {:>3} senders index {:<3} run {}: {:>8} msgs in {:>6.3} s = {:>8.0} msg/s{}  e2e p50 {:>8.1} us  p99 {:>8.1} us  max {:>9.1} us  send p99 {:>8.1} us  {:.0} msgs/fsync{}",
        scenario.name(),
        senders,
        if r.index { "on" } else { "off" },
        i + 1,
        r.handled,
        r.elapsed.as_secs_f64(),
        r.throughput(),
        r.target_rate
            .map(|t| {
                let behind = if r.throughput() < 0.95 * t {
                    ", BEHIND"
                } else {
                    ""
                };
                format!(" (target {t:.0}{behind})")
            })
            .unwrap_or_default(),
        us(r.e2e.value_at_quantile(0.50)),
        us(r.e2e.value_at_quantile(0.99)),
        us(r.e2e.max()),
        us(r.send.value_at_quantile(0.99)),
        r.per_sync,
        r.index_bytes_per_msg
            .map(|b| format!("  index {b:.1} B/msg"))
            .unwrap_or_default(),
    );
}

struct Summary {
    scenario: Scenario,
    senders: usize,
    runs: usize,
    throughput: f64,
    p50: f64,
    p99: f64,
    send_p99: f64,
    per_sync: f64,
    rate: Option<f64>,
    index: bool,
    index_bytes_per_msg: Option<f64>,
}

fn summarize(scenario: Scenario, senders: usize, results: &[RunResult]) -> Summary {
    let med = |f: &dyn Fn(&RunResult) -> f64| median(results.iter().map(f).collect());
    Summary {
        scenario,
        senders,
        runs: results.len(),
        throughput: med(&RunResult::throughput),
        p50: med(&|r| us(r.e2e.value_at_quantile(0.50))),
        p99: med(&|r| us(r.e2e.value_at_quantile(0.99))),
        send_p99: med(&|r| us(r.send.value_at_quantile(0.99))),
        per_sync: med(&|r| r.per_sync),
        rate: results.first().and_then(|r| r.target_rate),
        index: results.first().is_some_and(|r| r.index),
        index_bytes_per_msg: results
            .first()
            .and_then(|r| r.index_bytes_per_msg)
            .map(|_| med(&|r| r.index_bytes_per_msg.unwrap_or(0.0))),
    }
}

fn main() {
    let settings = Settings::from_env_and_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.workers)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let began = Instant::now();
    println!("machine: {}", machine());
    println!(
        "settings: {} B bodies, {} senders, {} consumer(s) in one group, receive batch {}, \
         {} queues, up to {} msgs or {} s per run, {} runs per scenario, {} tokio workers, \
         data under {}",
        settings.body,
        settings.senders,
        settings.consumers,
        settings.batch,
        settings.queues,
        settings.messages,
        settings.seconds,
        settings.runs,
        settings.workers,
        settings.dir
    );
    let mut summaries: Vec<Summary> = Vec::new();
    runtime.block_on(async {
        for &scenario in &settings.scenarios {
            let rate = match scenario {
                Scenario::Paced => Some(match settings.rate {
                    Some(r) => r,
                    None => {
                        let peak = match summaries.iter().find(|s| s.scenario == Scenario::Async) {
                            Some(s) => s.throughput,
                            None => {
                                println!("paced: measuring the async peak first (one run)");
                                let r = run_once(
                                    &settings,
                                    Scenario::Async,
                                    settings.senders,
                                    None,
                                    settings.index[0],
                                )
                                .await;
                                print_run(Scenario::Async, settings.senders, 0, &r);
                                r.throughput()
                            }
                        };
                        peak / 2.0
                    }
                }),
                _ => None,
            };
            let sender_counts = match scenario {
                Scenario::Paced => settings.paced_senders.clone(),
                _ => vec![settings.senders],
            };
            for senders in sender_counts {
                // Settings alternate run by run, so that drift in the machine hits both.
                let mut results: Vec<Vec<RunResult>> = vec![Vec::new(); settings.index.len()];
                for i in 0..settings.runs {
                    for (k, &index) in settings.index.iter().enumerate() {
                        let r = run_once(&settings, scenario, senders, rate, index).await;
                        print_run(scenario, senders, i, &r);
                        results[k].push(r);
                    }
                }
                for r in &results {
                    summaries.push(summarize(scenario, senders, r));
                }
            }
        }
    });
    println!();
    println!("medians ({:.1} s in all):", began.elapsed().as_secs_f64());
    println!(
        "| scenario | key index | runs | throughput (msg/s) | e2e p50 (us) | e2e p99 (us) | send p99 (us) | msgs per fsync | index B/msg |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for s in &summaries {
        let name = match (s.scenario, s.rate) {
            (Scenario::Paced, Some(r)) => {
                format!("paced @ {r:.0} msg/s, async flush, {} senders", s.senders)
            }
            (Scenario::Sync, _) => format!("sync flush, {} senders", s.senders),
            (_, _) => format!("async flush, {} senders", s.senders),
        };
        println!(
            "| {name} | {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.0} | {} |",
            if s.index { "on" } else { "off" },
            s.runs,
            s.throughput,
            s.p50,
            s.p99,
            s.send_p99,
            s.per_sync,
            s.index_bytes_per_msg
                .map(|b| format!("{b:.1}"))
                .unwrap_or_else(|| "-".to_owned()),
        );
    }
}

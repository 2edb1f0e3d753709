//! The application path beside the raw broker loop, in one run: what the annotated listener
//! and the template cost on top of the `Broker` trait.
//!
//! Both sides run the same workload, as issue 13 measures it: 1 KiB messages, `MQ_BENCH_SENDERS`
//! (default 256) sends awaiting their acknowledgement at once, one consumer acking what it
//! receives, producer and consumer in one process, on the embedded broker.
//! - `raw`: `Broker::send` from the senders; one task `receive`s up to 256 deliveries and acks
//!   them in one call;
//! - `app`: `MqTemplate::send_bytes` from the senders; one `#[mq_listener]` taking `Body`, with
//!   the defaults except `concurrency` (`MQ_BENCH_CONCURRENCY`, default 256).
//!
//! Each run measures both sides, full speed and then paced at half the raw side's rate, for
//! each flush policy (`MQ_BENCH_FLUSH=async,sync`; `async:<ms>` sets the fsync interval of
//! `async`, 500 ms by default). Latency is from just before the send to
//! the handler (or the raw loop) seeing the message: the send time travels in the body.
//!
//! Knobs: `MQ_BENCH_MESSAGES` (default 200000), `MQ_BENCH_RUNS` (default 3),
//! `MQ_BENCH_SENDERS`, `MQ_BENCH_CONCURRENCY`, `MQ_BENCH_FLUSH`, `MQ_BENCH_DIR` (parent of the
//! data directories, default the system's temporary directory), `MQ_BENCH_SIDES=app` (or
//! `raw`: one side only, at full load, to profile it alone), `MQ_BENCH_TRACE=on|off|both`
//! (`mq.trace.enabled` of the `app` side, default `on` as in applications; `both` measures, in
//! each run, raw, then `app` with the trace off and on, in alternating order, full speed and at
//! half the raw rate, and prints the ratio of the two).
//!
//! Run with `cargo bench -p mq-starter --bench app_path`.

// A benchmark has nothing better to do on failure than abort with the message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mq_core::embedded::{EmbeddedBroker, EmbeddedConfig, FlushPolicy};
use mq_core::{Broker, ConsumerOptions, Message, SendOptions, Subscription};
use mq_starter::config::Configuration;
use mq_starter::prelude::*;
use mq_starter::Body;

const RAW_TOPIC: &str = "bench-raw";
const APP_TOPIC: &str = "bench-app";
const BODY: usize = 1024;

/// What the side under measurement records of each message it sees.
struct Recorder {
    start: Instant,
    seen: AtomicU64,
    /// Nanoseconds since `start` when the last message was seen.
    last: AtomicU64,
    latencies: Mutex<Vec<u64>>,
}

impl Recorder {
    fn new(start: Instant, expected: usize) -> Self {
        Recorder {
            start,
            seen: AtomicU64::new(0),
            last: AtomicU64::new(0),
            latencies: Mutex::new(Vec::with_capacity(expected)),
        }
    }

    fn record(&self, body: &[u8]) {
        let now = self.start.elapsed().as_nanos() as u64;
        let sent = u64::from_le_bytes(body[..8].try_into().unwrap());
        self.latencies
            .lock()
            .unwrap()
            .push(now.saturating_sub(sent));
        self.last.fetch_max(now, Ordering::Relaxed);
        self.seen.fetch_add(1, Ordering::Release);
    }
}

/// The recorder of the current `app` run; the listener is registered once for the binary.
static CURRENT: OnceLock<Mutex<Option<Arc<Recorder>>>> = OnceLock::new();

fn current() -> Option<Arc<Recorder>> {
    CURRENT
        .get_or_init(|| Mutex::new(None))
        .lock()
        .unwrap()
        .clone()
}

#[mq_listener(
    topic = "bench-app",
    group = "bench-app-group",
    concurrency = "${bench.concurrency:256}"
)]
async fn bench_listener(Body(body): Body) -> Result<(), String> {
    if let Some(r) = current() {
        r.record(&body);
    }
    Ok(())
}

/// One side's figures.
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    /// Messages seen per second, first send to last seen.
    pub rate: f64,
    /// Median send-to-handler latency.
    pub p50_ms: f64,
    /// 99th percentile send-to-handler latency.
    pub p99_ms: f64,
}

impl Figures {
    fn of(r: &Recorder, first_send: u64) -> Self {
        let mut lat = std::mem::take(&mut *r.latencies.lock().unwrap());
        lat.sort_unstable();
        let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1e6;
        let span = (r.last.load(Ordering::Acquire) - first_send) as f64 / 1e9;
        Figures {
            rate: lat.len() as f64 / span,
            p50_ms: q(0.50),
            p99_ms: q(0.99),
        }
    }
}

/// A workload: how many messages, from how many senders, at what total rate (None: as fast
/// as they go).
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Messages in all.
    pub messages: usize,
    /// Sends awaiting their acknowledgement at once.
    pub senders: usize,
    /// Total rate the senders keep to; `None`: as fast as they go.
    pub rate: Option<f64>,
}

fn body_at(start: Instant) -> Bytes {
    let mut b = vec![0u8; BODY];
    b[..8].copy_from_slice(&(start.elapsed().as_nanos() as u64).to_le_bytes());
    Bytes::from(b)
}

/// Runs `load` through `send`, waits until `recorder` has seen every message.
async fn drive<F, Fut>(load: Load, recorder: &Recorder, send: F) -> u64
where
    F: Fn(Bytes) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let send = Arc::new(send);
    let first_send = recorder.start.elapsed().as_nanos() as u64;
    let per_sender = load.messages / load.senders;
    let gap = load
        .rate
        .map(|r| Duration::from_secs_f64(load.senders as f64 / r));
    let mut tasks = Vec::new();
    for _ in 0..load.senders {
        let (send, start) = (send.clone(), recorder.start);
        tasks.push(tokio::spawn(async move {
            let mut next = tokio::time::Instant::now();
            for _ in 0..per_sender {
                if let Some(gap) = gap {
                    next += gap;
                    tokio::time::sleep_until(next).await;
                }
                send(body_at(start)).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let expected = (per_sender * load.senders) as u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while recorder.seen.load(Ordering::Acquire) < expected {
        assert!(Instant::now() < deadline, "messages were lost");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    first_send
}

fn flush_policy(flush: &str) -> FlushPolicy {
    match flush {
        "sync" => FlushPolicy::Sync,
        other => FlushPolicy::Async {
            // `async` is the default interval; `async:<ms>` another one.
            interval: Duration::from_millis(
                other
                    .strip_prefix("async:")
                    .and_then(|ms| ms.parse().ok())
                    .unwrap_or(500),
            ),
        },
    }
}

/// The raw loop: `Broker::send`, one task receiving and acking batches.
pub async fn raw(dir: &Path, flush: &str, load: Load) -> Figures {
    let broker = EmbeddedBroker::open(EmbeddedConfig::new(dir).flush(flush_policy(flush)))
        .await
        .unwrap();
    let consumer = broker
        .subscribe(
            Subscription::new(RAW_TOPIC, "bench-raw-group"),
            ConsumerOptions::new(),
        )
        .await
        .unwrap();
    let recorder = Arc::new(Recorder::new(Instant::now(), load.messages));
    let r = recorder.clone();
    let reader = tokio::spawn(async move {
        loop {
            let got = match consumer.receive(256, Duration::from_millis(200)).await {
                Ok(got) => got,
                Err(_) => return,
            };
            if got.is_empty() && Arc::strong_count(&r) == 1 {
                return;
            }
            for d in &got {
                r.record(&d.message.body);
            }
            let receipts: Vec<_> = got.iter().map(|d| d.receipt.clone()).collect();
            consumer.ack(&receipts).await.unwrap();
        }
    });
    let b = broker.clone();
    let first = drive(load, &recorder, move |body| {
        let b = b.clone();
        async move {
            b.send(Message::new(RAW_TOPIC, body), SendOptions::new())
                .await
                .unwrap();
        }
    })
    .await;
    let figures = Figures::of(&recorder, first);
    if flush == "sync" {
        let w = broker.write_stats();
        println!(
            "  raw sync: {:.0} messages per fsync ({} messages, {} fsyncs)",
            w.messages_per_sync(),
            w.messages,
            w.syncs
        );
    }
    drop(recorder);
    reader.await.unwrap();
    broker.shutdown().await.unwrap();
    figures
}

/// The application path: `MqTemplate::send_bytes` to a `#[mq_listener]`.
pub async fn app(dir: &Path, flush: &str, load: Load, concurrency: usize) -> Figures {
    app_traced(dir, flush, load, concurrency, trace_setting() != "off").await
}

/// `MQ_BENCH_TRACE`: `on` (the default), `off` or `both`.
fn trace_setting() -> String {
    std::env::var("MQ_BENCH_TRACE").unwrap_or_else(|_| "on".into())
}

/// The application path with the message trace on or off.
pub async fn app_traced(
    dir: &Path,
    flush: &str,
    load: Load,
    concurrency: usize,
    trace: bool,
) -> Figures {
    let config_dir = dir.join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(
        config_dir.join("application.yaml"),
        format!(
            "bench:\n  concurrency: {concurrency}\nmq:\n  trace:\n    enabled: {trace}\n  broker:\n    data-dir: {}\n    flush: {}\n    flush-interval: {}ms\n",
            dir.join("mq").display(),
            if flush == "sync" { "sync" } else { "async" },
            match flush_policy(flush) {
                FlushPolicy::Async { interval } => interval.as_millis(),
                FlushPolicy::Sync => 500,
            }
        ),
    )
    .unwrap();
    let recorder = Arc::new(Recorder::new(Instant::now(), load.messages));
    *CURRENT.get_or_init(|| Mutex::new(None)).lock().unwrap() = Some(recorder.clone());
    let config = Configuration::load_from(&config_dir, &[]).unwrap();
    let running = MqApplication::new(config).unwrap().start().await.unwrap();
    let template = running.template();
    let first = drive(load, &recorder, move |body| {
        let t = template.clone();
        async move {
            t.send_bytes(APP_TOPIC, body).await.unwrap();
        }
    })
    .await;
    *CURRENT.get().unwrap().lock().unwrap() = None;
    running.shutdown().await.unwrap();
    Figures::of(&recorder, first)
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One run of every side for one flush policy: raw and app at full speed, then both paced at
/// half the raw rate. Returns (raw, app, raw at half, app at half).
pub async fn run_once(parent: &Path, flush: &str, load: Load, concurrency: usize) -> [Figures; 4] {
    let dir = tempfile::tempdir_in(parent).unwrap();
    match std::env::var("MQ_BENCH_SIDES").as_deref() {
        Ok("app") => {
            let f = app(&dir.path().join("app"), flush, load, concurrency).await;
            return [f; 4];
        }
        Ok("raw") => {
            let f = raw(&dir.path().join("raw"), flush, load).await;
            return [f; 4];
        }
        _ => {}
    }
    let raw_full = raw(&dir.path().join("raw"), flush, load).await;
    let app_full = app(&dir.path().join("app"), flush, load, concurrency).await;
    let half = Load {
        rate: Some(raw_full.rate / 2.0),
        ..load
    };
    let raw_half = raw(&dir.path().join("raw-half"), flush, half).await;
    let app_half = app(&dir.path().join("app-half"), flush, half, concurrency).await;
    [raw_full, app_full, raw_half, app_half]
}

/// One run of `MQ_BENCH_TRACE=both`: raw at full speed, then the app with the trace off and
/// on (`on_first` swaps them), full speed and at half the raw rate. Returns (raw, off, on, off
/// at half, on at half).
pub async fn run_trace_pair(
    parent: &Path,
    flush: &str,
    load: Load,
    concurrency: usize,
    on_first: bool,
) -> [Figures; 5] {
    let dir = tempfile::tempdir_in(parent).unwrap();
    let raw_full = raw(&dir.path().join("raw"), flush, load).await;
    let half = Load {
        rate: Some(raw_full.rate / 2.0),
        ..load
    };
    let mut got = [raw_full; 5];
    let order = if on_first {
        [true, false]
    } else {
        [false, true]
    };
    for (i, (l, speed)) in [("full", load), ("half", half)].into_iter().enumerate() {
        for trace in order {
            let name = format!("app-{l}-{}", if trace { "on" } else { "off" });
            let f = app_traced(&dir.path().join(name), flush, speed, concurrency, trace).await;
            got[1 + 2 * i + usize::from(trace)] = f;
        }
    }
    got
}

/// `MQ_BENCH_TRACE=both`: the trace's cost, run by run and as medians.
#[allow(dead_code)]
fn main_trace_pairs(
    rt: &tokio::runtime::Runtime,
    parent: &Path,
    flushes: &str,
    load: Load,
    concurrency: usize,
    runs: usize,
) {
    for flush in flushes.split(',') {
        let mut all: Vec<[Figures; 5]> = Vec::new();
        for run in 1..=runs {
            let f = rt.block_on(run_trace_pair(
                parent,
                flush,
                load,
                concurrency,
                run % 2 == 0,
            ));
            println!(
                "{flush} run {run}: raw {:.0} msg/s | trace off {:.0} msg/s p50 {:.2} ms p99 {:.2} ms | trace on {:.0} msg/s p50 {:.2} ms p99 {:.2} ms | on/off {:.3} | half load ({:.0} msg/s): off p99 {:.2} ms, on p99 {:.2} ms",
                f[0].rate, f[1].rate, f[1].p50_ms, f[1].p99_ms, f[2].rate, f[2].p50_ms, f[2].p99_ms,
                f[2].rate / f[1].rate, f[3].rate, f[3].p99_ms, f[4].p99_ms
            );
            all.push(f);
        }
        let m = |i: usize, g: fn(&Figures) -> f64| median(all.iter().map(|f| g(&f[i])).collect());
        println!(
            "{flush} median of {runs}: raw {:.0} msg/s | trace off {:.0} msg/s p50 {:.2} ms p99 {:.2} ms | trace on {:.0} msg/s p50 {:.2} ms p99 {:.2} ms | on/off {:.3} | half load: off p99 {:.2} ms, on p99 {:.2} ms",
            m(0, |f| f.rate),
            m(1, |f| f.rate), m(1, |f| f.p50_ms), m(1, |f| f.p99_ms),
            m(2, |f| f.rate), m(2, |f| f.p50_ms), m(2, |f| f.p99_ms),
            median(all.iter().map(|f| f[2].rate / f[1].rate).collect()),
            m(3, |f| f.p99_ms), m(4, |f| f.p99_ms),
        );
    }
}

#[allow(dead_code)]
fn main() {
    let messages = env_or("MQ_BENCH_MESSAGES", 200_000usize);
    let runs = env_or("MQ_BENCH_RUNS", 3usize);
    let senders = env_or("MQ_BENCH_SENDERS", 256usize);
    let concurrency = env_or("MQ_BENCH_CONCURRENCY", 256usize);
    let flushes = std::env::var("MQ_BENCH_FLUSH").unwrap_or_else(|_| "async,sync".into());
    let parent = std::env::var("MQ_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let load = Load {
        messages,
        senders,
        rate: None,
    };
    println!(
        "app_path: {messages} messages of {BODY} B, {senders} senders, listener concurrency {concurrency}, {runs} runs, trace {}",
        trace_setting()
    );
    if trace_setting() == "both" {
        main_trace_pairs(&rt, &parent, &flushes, load, concurrency, runs);
        return;
    }
    for flush in flushes.split(',') {
        let mut all: Vec<[Figures; 4]> = Vec::new();
        for run in 1..=runs {
            let f = rt.block_on(run_once(&parent, flush, load, concurrency));
            println!(
                "{flush} run {run}: raw {:.0} msg/s p50 {:.2} ms p99 {:.2} ms | app {:.0} msg/s p50 {:.2} ms p99 {:.2} ms | ratio {:.3} | half load ({:.0} msg/s): raw p99 {:.2} ms, app p99 {:.2} ms",
                f[0].rate, f[0].p50_ms, f[0].p99_ms, f[1].rate, f[1].p50_ms, f[1].p99_ms,
                f[1].rate / f[0].rate, f[2].rate, f[2].p99_ms, f[3].p99_ms
            );
            all.push(f);
        }
        let m = |i: usize, g: fn(&Figures) -> f64| median(all.iter().map(|f| g(&f[i])).collect());
        println!(
            "{flush} median of {runs}: raw {:.0} msg/s p50 {:.2} ms p99 {:.2} ms | app {:.0} msg/s p50 {:.2} ms p99 {:.2} ms | ratio {:.3} | half load: raw p99 {:.2} ms, app p99 {:.2} ms",
            m(0, |f| f.rate), m(0, |f| f.p50_ms), m(0, |f| f.p99_ms),
            m(1, |f| f.rate), m(1, |f| f.p50_ms), m(1, |f| f.p99_ms),
            median(all.iter().map(|f| f[1].rate / f[0].rate).collect()),
            m(2, |f| f.p99_ms), m(3, |f| f.p99_ms),
        );
    }
}

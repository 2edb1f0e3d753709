//! Delayed messages in the embedded broker: the memory a pending delayed message costs, and how
//! late delayed messages become visible to a consumer group.
//!
//! Scenarios (pick with positional arguments or `MQ_BENCH_SCENARIOS=light,million`; the default
//! is both):
//! - `light`: an otherwise idle broker; `MQ_BENCH_LIGHT_COUNT` (default 1000) delayed messages
//!   due at uniformly random times over `MQ_BENCH_LIGHT_WINDOW_SECS` (default 5) starting 1 s
//!   after the first send. One consumer group receives them; lateness = the wall time the
//!   consumer got the message − its due time. `MQ_BENCH_LIGHT_RUNS` runs (default 3).
//! - `million`: `MQ_BENCH_DELAYED` (default 1,000,000) delayed messages of `MQ_BENCH_BODY`
//!   bytes (default 1024) sent by `MQ_BENCH_SENDERS` (default 256) concurrent senders, due at
//!   uniformly random times over `MQ_BENCH_DELAY_WINDOW_SECS` (default 30). Then:
//!   1. in-process memory: VmRSS after opening the broker vs after the last send returned and
//!      `pending_delays()` equals the count. This includes whatever the allocator keeps cached
//!      from the send path (message buffers, sender tasks), so it overstates the cost;
//!   2. the broker is shut down and this binary runs itself again as a child process
//!      (`--reopen-child`). The child records its VmRSS, opens the same data directory (the
//!      scheduler rebuilds its heap from the on-disk schedule index), waits for
//!      `pending_delays()` to equal the count and for VmRSS to settle, and reports VmRSS growth
//!      per pending message: the clean figure. The broker's fixed costs are included;
//!   3. the child then subscribes the consumer group (which the parent created with
//!      `ConsumeFrom::First` before the first send) and receives every message, recording its
//!      lateness. The window starts `MQ_BENCH_DELAY_LEAD_SECS` after the first send; by default
//!      the lead is computed from a short probe of the delayed-send rate, so that the sends, the
//!      shutdown and the child's reopen all end before the first message is due.
//!
//! Due times are whole milliseconds, given as `Delay::At(SystemTime)` and carried in the first
//! 8 bytes of the body (the sequence number follows), so lateness needs no clock but the wall
//! clock. A message received before its due time counts as early.
//!
//! Other knobs (environment): `MQ_BENCH_QUEUES` (default 4), `MQ_BENCH_BATCH` (receive batch,
//! default 256), `MQ_BENCH_WORKERS` (tokio worker threads, default: the core count),
//! `MQ_BENCH_DIR` (parent of the data dirs, default /tmp).
//!
//! Run with `cargo bench -p mq-core --bench delays [-- light|million]`.

// A benchmark has nothing better to do on failure than abort with the message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use mq_core::embedded::{EmbeddedBroker, EmbeddedConfig};
use mq_core::{
    Broker, ConsumeFrom, Consumer, ConsumerOptions, Delay, Message, SendOptions, Subscription,
};

const TOPIC: &str = "delayed";
const GROUP: &str = "delay-bench";
const INSTANCE: &str = "delay-bench-0";
/// The argument that makes this binary the reopen child of the `million` scenario.
const CHILD_ARG: &str = "--reopen-child";
/// Prefix of the child's machine-readable result line.
const RESULT_PREFIX: &str = "RESULT";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Light,
    Million,
}

impl Scenario {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "light" => Some(Scenario::Light),
            "million" => Some(Scenario::Million),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
struct Settings {
    scenarios: Vec<Scenario>,
    count: u64,
    body: usize,
    window_secs: f64,
    lead_secs: Option<f64>,
    senders: usize,
    light_count: u64,
    light_window_secs: f64,
    light_runs: usize,
    queues: u32,
    batch: usize,
    workers: usize,
    dir: String,
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
            scenarios = vec![Scenario::Light, Scenario::Million];
        }
        Settings {
            scenarios,
            count: env("MQ_BENCH_DELAYED", 1_000_000u64).max(1),
            body: env("MQ_BENCH_BODY", 1024usize).max(16),
            window_secs: env("MQ_BENCH_DELAY_WINDOW_SECS", 30.0f64).max(0.001),
            lead_secs: std::env::var("MQ_BENCH_DELAY_LEAD_SECS").ok().map(|v| {
                v.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("MQ_BENCH_DELAY_LEAD_SECS={v:?} is not a number"))
            }),
            senders: env("MQ_BENCH_SENDERS", 256usize).max(1),
            light_count: env("MQ_BENCH_LIGHT_COUNT", 1000u64).max(1),
            light_window_secs: env("MQ_BENCH_LIGHT_WINDOW_SECS", 5.0f64).max(0.001),
            light_runs: env("MQ_BENCH_LIGHT_RUNS", 3usize).max(1),
            queues: env("MQ_BENCH_QUEUES", 4u32).max(1),
            batch: env("MQ_BENCH_BATCH", 256usize).max(1),
            workers: env(
                "MQ_BENCH_WORKERS",
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )
            .max(1),
            dir: env("MQ_BENCH_DIR", "/tmp".to_owned()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// A field of /proc/self/status in bytes (`VmRSS`, `RssAnon`, `RssFile`, `VmHWM`).
fn proc_status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn rss() -> u64 {
    proc_status_bytes("VmRSS")
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn now_unix_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as i64
}

fn now_unix_ms() -> u64 {
    (now_unix_us() / 1000) as u64
}

/// A well-mixed 64-bit value of `x` (splitmix64): the due-time spread, without a dependency.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The due time of message `seq`: uniform over `[start_ms, start_ms + window_ms)`.
fn due_of(seq: u64, start_ms: u64, window_ms: u64, salt: u64) -> u64 {
    start_ms + mix(seq ^ salt.rotate_left(32)) % window_ms.max(1)
}

fn body(len: usize, due_ms: u64, seq: u64) -> Vec<u8> {
    let mut b = vec![0x5a_u8; len];
    b[0..8].copy_from_slice(&due_ms.to_le_bytes());
    b[8..16].copy_from_slice(&seq.to_le_bytes());
    b
}

async fn send_delayed(broker: &EmbeddedBroker, len: usize, due_ms: u64, seq: u64) {
    let at = UNIX_EPOCH + Duration::from_millis(due_ms);
    broker
        .send(
            Message::new(TOPIC, body(len, due_ms, seq)),
            SendOptions::new().delayed(Delay::At(at)),
        )
        .await
        .expect("delayed send");
}

fn temp_dir(parent: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("mq-bench-delays-")
        .tempdir_in(Path::new(parent))
        .expect("temp dir")
}

async fn open(dir: &Path) -> Arc<EmbeddedBroker> {
    EmbeddedBroker::open(EmbeddedConfig::new(dir))
        .await
        .expect("open broker")
}

async fn subscribe(broker: &EmbeddedBroker) -> Box<dyn Consumer> {
    broker
        .subscribe(
            Subscription::new(TOPIC, GROUP),
            ConsumerOptions::new()
                .instance(INSTANCE)
                .consume_from(ConsumeFrom::First),
        )
        .await
        .expect("subscribe")
}

/// Lateness figures of one run, in microseconds.
#[derive(Debug, Clone)]
struct Lateness {
    /// Lateness of every message received at or after its due time (at least 1 us).
    late: Histogram<u64>,
    /// Messages received before their due time.
    early: u64,
    /// The most early one, us (0 if none).
    earliest: i64,
    received: u64,
    duplicates: u64,
}

impl Lateness {
    fn new() -> Self {
        Lateness {
            late: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds"),
            early: 0,
            earliest: 0,
            received: 0,
            duplicates: 0,
        }
    }

    fn ms(&self, q: f64) -> f64 {
        self.late.value_at_quantile(q) as f64 / 1000.0
    }

    fn max_ms(&self) -> f64 {
        self.late.max() as f64 / 1000.0
    }
}

/// Receives `expected` distinct messages (or until `deadline`) and records their lateness.
async fn consume(
    consumer: &dyn Consumer,
    expected: u64,
    batch: usize,
    deadline: Instant,
) -> Lateness {
    let mut out = Lateness::new();
    let mut seen = vec![false; expected as usize];
    let mut distinct = 0u64;
    let mut receipts = Vec::with_capacity(batch);
    while distinct < expected && Instant::now() < deadline {
        let deliveries = consumer
            .receive(batch, Duration::from_millis(100))
            .await
            .expect("receive");
        if deliveries.is_empty() {
            continue;
        }
        let now_us = now_unix_us();
        receipts.clear();
        for d in &deliveries {
            let b = &d.message.body;
            let due_us = read_u64(b, 0) as i64 * 1000;
            let seq = read_u64(b, 8) as usize;
            out.received += 1;
            match seen.get_mut(seq) {
                Some(s) if !*s => {
                    *s = true;
                    distinct += 1;
                }
                _ => out.duplicates += 1,
            }
            let lateness = now_us - due_us;
            if lateness < 0 {
                out.early += 1;
                out.earliest = out.earliest.min(lateness);
            } else {
                out.late.saturating_record(lateness.max(1) as u64);
            }
            receipts.push(d.receipt.clone());
        }
        consumer.ack(&receipts).await.expect("ack");
    }
    out
}

fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

// ---------------------------------------------------------------------------------------------
// Light load

struct LightRun {
    lateness: Lateness,
    expected: u64,
}

async fn light_once(settings: &Settings, run: usize) -> LightRun {
    let dir = temp_dir(&settings.dir);
    let broker = open(dir.path()).await;
    broker
        .create_topic(TOPIC, settings.queues)
        .await
        .expect("create topic");
    let consumer = subscribe(&broker).await;
    let count = settings.light_count;
    let window_ms = (settings.light_window_secs * 1000.0) as u64;
    let start_ms = now_unix_ms() + 1000;
    let consuming = {
        let batch = settings.batch;
        let deadline = Instant::now() + Duration::from_millis(1000 + window_ms + 10_000);
        tokio::spawn(async move {
            let l = consume(consumer.as_ref(), count, batch, deadline).await;
            consumer.close().await.expect("close consumer");
            l
        })
    };
    let senders = 8u64;
    let tasks: Vec<_> = (0..senders)
        .map(|k| {
            let broker = broker.clone();
            let len = settings.body;
            tokio::spawn(async move {
                let mut seq = k;
                while seq < count {
                    let due = due_of(seq, start_ms, window_ms, run as u64);
                    send_delayed(&broker, len, due, seq).await;
                    seq += senders;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("sender");
    }
    let sent_by = now_unix_ms();
    assert!(
        sent_by < start_ms,
        "light: sending took until {} ms after the window start",
        sent_by - start_ms
    );
    let lateness = consuming.await.expect("consumer task");
    broker.shutdown().await.expect("shutdown");
    drop(broker);
    drop(dir);
    LightRun {
        lateness,
        expected: count,
    }
}

fn print_lateness(label: &str, l: &Lateness, expected: u64) {
    println!(
        "{label}: {}/{} received ({} duplicates), lateness p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms, early {}{}",
        l.received - l.duplicates,
        expected,
        l.duplicates,
        l.ms(0.50),
        l.ms(0.99),
        l.max_ms(),
        l.early,
        if l.early > 0 {
            format!(" (earliest {:.3} ms early)", -l.earliest as f64 / 1000.0)
        } else {
            String::new()
        }
    );
}

// ---------------------------------------------------------------------------------------------
// One million pending

/// What the parent measured before handing the data directory to the child.
struct ParentFigures {
    sent: u64,
    send_secs: f64,
    rss_open: u64,
    rss_pending: u64,
    pending: usize,
    lead_secs: f64,
}

/// Delayed-send rate of a short probe on a throwaway broker, msg/s.
async fn probe_send_rate(settings: &Settings) -> f64 {
    let dir = temp_dir(&settings.dir);
    let broker = open(dir.path()).await;
    broker
        .create_topic(TOPIC, settings.queues)
        .await
        .expect("create topic");
    let far = now_unix_ms() + 3_600_000;
    let claimed = Arc::new(AtomicU64::new(0));
    let total = 20_000.min(settings.count.max(1000));
    let began = Instant::now();
    let stop = began + Duration::from_secs(2);
    let tasks: Vec<_> = (0..settings.senders)
        .map(|_| {
            let broker = broker.clone();
            let claimed = claimed.clone();
            let len = settings.body;
            tokio::spawn(async move {
                let mut n = 0u64;
                loop {
                    let seq = claimed.fetch_add(1, Ordering::Relaxed);
                    if seq >= total || Instant::now() > stop {
                        return n;
                    }
                    send_delayed(&broker, len, far, seq).await;
                    n += 1;
                }
            })
        })
        .collect();
    let mut sent = 0;
    for t in tasks {
        sent += t.await.expect("probe sender");
    }
    let rate = sent as f64 / began.elapsed().as_secs_f64();
    broker.shutdown().await.expect("shutdown");
    drop(broker);
    drop(dir);
    rate
}

async fn million_parent(settings: &Settings, dir: &Path, start_ms: &mut u64) -> ParentFigures {
    let lead_secs = match settings.lead_secs {
        Some(l) => l,
        None => {
            let rate = probe_send_rate(settings).await;
            // 1.5 times the probed send time (the machine is shared), plus shutdown and reopen.
            let lead = 1.5 * settings.count as f64 / rate + 4.0;
            println!(
                "million: probe: {rate:.0} delayed sends/s -> window starts {lead:.1} s after the first send"
            );
            lead
        }
    };
    let broker = open(dir).await;
    broker
        .create_topic(TOPIC, settings.queues)
        .await
        .expect("create topic");
    // The group exists (and starts from the first offset) before anything is sent.
    let consumer = subscribe(&broker).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_open = rss();

    let window_ms = (settings.window_secs * 1000.0) as u64;
    *start_ms = now_unix_ms() + (lead_secs * 1000.0) as u64;
    let start = *start_ms;
    let count = settings.count;
    let claimed = Arc::new(AtomicU64::new(0));
    let began = Instant::now();
    let tasks: Vec<_> = (0..settings.senders)
        .map(|_| {
            let broker = broker.clone();
            let claimed = claimed.clone();
            let len = settings.body;
            tokio::spawn(async move {
                let mut n = 0u64;
                loop {
                    let seq = claimed.fetch_add(1, Ordering::Relaxed);
                    if seq >= count {
                        return n;
                    }
                    send_delayed(&broker, len, due_of(seq, start, window_ms, 0), seq).await;
                    n += 1;
                }
            })
        })
        .collect();
    let mut sent = 0;
    for t in tasks {
        sent += t.await.expect("sender");
    }
    let send_secs = began.elapsed().as_secs_f64();
    let wait = Instant::now() + Duration::from_secs(30);
    while broker.pending_delays() < count as usize && Instant::now() < wait {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Let the scheduler read the last index entries into its heap.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let pending = broker.pending_delays();
    let rss_pending = rss();
    consumer.close().await.expect("close consumer");
    broker.shutdown().await.expect("shutdown");
    drop(broker);
    ParentFigures {
        sent,
        send_secs,
        rss_open,
        rss_pending,
        pending,
        lead_secs,
    }
}

/// Parameters the parent hands to the reopen child.
struct ChildArgs {
    dir: PathBuf,
    count: u64,
    start_ms: u64,
    window_ms: u64,
    batch: usize,
}

impl ChildArgs {
    fn from_env() -> Self {
        let dir = std::env::args()
            .skip_while(|a| a != CHILD_ARG)
            .nth(1)
            .expect("the data dir follows --reopen-child");
        ChildArgs {
            dir: PathBuf::from(dir),
            count: env("MQ_BENCH_CHILD_COUNT", 0u64),
            start_ms: env("MQ_BENCH_CHILD_START_MS", 0u64),
            window_ms: env("MQ_BENCH_CHILD_WINDOW_MS", 0u64),
            batch: env("MQ_BENCH_BATCH", 256usize).max(1),
        }
    }
}

/// The reopen child: memory of the rebuilt schedule, then lateness of every message.
async fn reopen_child(args: ChildArgs) {
    // Start the blocking pool's first thread before the baseline; it is not per message.
    tokio::task::spawn_blocking(|| ())
        .await
        .expect("blocking pool");
    let rss_base = rss();
    let anon_base = proc_status_bytes("RssAnon");
    let opened_at = Instant::now();
    let broker = open(&args.dir).await;
    let open_secs = opened_at.elapsed().as_secs_f64();
    let wait = Instant::now() + Duration::from_secs(60);
    while broker.pending_delays() < args.count as usize && Instant::now() < wait {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // `pending_delays` counts index entries not yet read into the heap too: give the scheduler
    // a moment, then wait for VmRSS to stop moving.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut rss_pending = rss();
    for _ in 0..25 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let r = rss();
        if r.abs_diff(rss_pending) < 64 * 1024 {
            rss_pending = r;
            break;
        }
        rss_pending = r;
    }
    let pending = broker.pending_delays();
    let anon = proc_status_bytes("RssAnon");
    let file = proc_status_bytes("RssFile");
    let ready_ms = now_unix_ms();

    let consumer = subscribe(&broker).await;
    let deadline = Instant::now()
        + Duration::from_millis(args.start_ms.saturating_sub(ready_ms))
        + Duration::from_millis(args.window_ms + 60_000);
    let l = consume(consumer.as_ref(), args.count, args.batch, deadline).await;
    consumer.close().await.expect("close consumer");
    let left = broker.pending_delays();
    broker.shutdown().await.expect("shutdown");
    println!(
        "{RESULT_PREFIX} rss_base={rss_base} anon_base={anon_base} rss_pending={rss_pending} rss_anon={anon} rss_file={file} \
         pending={pending} open_secs={open_secs:.3} ready_before_start_ms={} received={} duplicates={} \
         early={} earliest_us={} p50_us={} p90_us={} p99_us={} p999_us={} max_us={} left={left}",
        args.start_ms as i64 - ready_ms as i64,
        l.received,
        l.duplicates,
        l.early,
        l.earliest,
        l.late.value_at_quantile(0.50),
        l.late.value_at_quantile(0.90),
        l.late.value_at_quantile(0.99),
        l.late.value_at_quantile(0.999),
        l.late.max(),
    );
}

fn parse_result(stdout: &str) -> Vec<(String, f64)> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(RESULT_PREFIX))
        .expect("the child printed no result line")
        .split_whitespace()
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

fn million(settings: &Settings) {
    let dir = temp_dir(&settings.dir);
    let mut start_ms = 0;
    let parent = {
        let rt = runtime(settings.workers);
        let figures = rt.block_on(million_parent(settings, dir.path(), &mut start_ms));
        drop(rt);
        figures
    };
    let window_ms = (settings.window_secs * 1000.0) as u64;
    let in_process = parent.rss_pending.saturating_sub(parent.rss_open);
    println!(
        "million: sent {} delayed {} B messages in {:.2} s ({:.0} msg/s); window starts {:.1} s after the first send, {:.1} s after the last",
        parent.sent,
        settings.body,
        parent.send_secs,
        parent.sent as f64 / parent.send_secs,
        parent.lead_secs,
        parent.lead_secs - parent.send_secs
    );
    println!(
        "million: in-process VmRSS {:.1} MiB after open -> {:.1} MiB with {} pending: {:.1} B per pending message (includes allocator-cached send buffers)",
        mib(parent.rss_open),
        mib(parent.rss_pending),
        parent.pending,
        in_process as f64 / parent.pending.max(1) as f64
    );

    let output = Command::new(std::env::current_exe().expect("current exe"))
        .arg(CHILD_ARG)
        .arg(dir.path())
        .env("MQ_BENCH_CHILD_COUNT", settings.count.to_string())
        .env("MQ_BENCH_CHILD_START_MS", start_ms.to_string())
        .env("MQ_BENCH_CHILD_WINDOW_MS", window_ms.to_string())
        .env("MQ_BENCH_BATCH", settings.batch.to_string())
        .env("MQ_BENCH_WORKERS", settings.workers.to_string())
        .output()
        .expect("run the reopen child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        panic!(
            "reopen child failed ({}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let r = parse_result(&stdout);
    let get = |k: &str| {
        r.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("child result lacks {k}"))
    };
    let pending = get("pending");
    let growth = get("rss_pending") - get("rss_base");
    println!(
        "million: reopen child: opened in {:.2} s; VmRSS {:.1} MiB before open -> {:.1} MiB with {:.0} pending (RssAnon {:.1} MiB, RssFile {:.1} MiB): {:.1} B per pending message",
        get("open_secs"),
        mib(get("rss_base") as u64),
        mib(get("rss_pending") as u64),
        pending,
        mib(get("rss_anon") as u64),
        mib(get("rss_file") as u64),
        growth / pending.max(1.0)
    );
    println!(
        "million: reopen child: anonymous memory alone (RssAnon, no code pages): {:.1} B per pending message",
        (get("rss_anon") - get("anon_base")) / pending.max(1.0)
    );
    let ready = get("ready_before_start_ms");
    if ready < 0.0 {
        println!(
            "million: WARNING: the child was ready {:.0} ms AFTER the window started; the first messages' lateness includes the restart (raise MQ_BENCH_DELAY_LEAD_SECS)",
            -ready
        );
    } else {
        println!(
            "million: the child was ready {:.1} s before the first due time",
            ready / 1000.0
        );
    }
    let received = get("received");
    let duplicates = get("duplicates");
    println!(
        "million: {:.0}/{} received ({:.0} duplicates, {:.0} still pending), lateness p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms, early {:.0}{}",
        received - duplicates,
        settings.count,
        duplicates,
        get("left"),
        get("p50_us") / 1000.0,
        get("p90_us") / 1000.0,
        get("p99_us") / 1000.0,
        get("p999_us") / 1000.0,
        get("max_us") / 1000.0,
        get("early"),
        if get("early") > 0.0 {
            format!(" (earliest {:.3} ms early)", -get("earliest_us") / 1000.0)
        } else {
            String::new()
        }
    );
    println!();
    println!("| million: figure | value |");
    println!("|---|---|");
    println!(
        "| B per pending message, reopen child (clean) | {:.1} |",
        growth / pending.max(1.0)
    );
    println!(
        "| B per pending message, reopen child, RssAnon only | {:.1} |",
        (get("rss_anon") - get("anon_base")) / pending.max(1.0)
    );
    println!(
        "| B per pending message, in-process | {:.1} |",
        in_process as f64 / parent.pending.max(1) as f64
    );
    println!(
        "| delayed sends/s ({} senders) | {:.0} |",
        settings.senders,
        parent.sent as f64 / parent.send_secs
    );
    println!(
        "| lateness p50 / p99 / max (ms) | {:.2} / {:.2} / {:.2} |",
        get("p50_us") / 1000.0,
        get("p99_us") / 1000.0,
        get("max_us") / 1000.0
    );
    println!("| early | {:.0} |", get("early"));
    drop(dir);
}

// ---------------------------------------------------------------------------------------------

fn main() {
    if std::env::args().any(|a| a == CHILD_ARG) {
        let args = ChildArgs::from_env();
        let workers = env(
            "MQ_BENCH_WORKERS",
            std::thread::available_parallelism().map_or(2, |n| n.get()),
        )
        .max(1);
        runtime(workers).block_on(reopen_child(args));
        return;
    }
    let settings = Settings::from_env_and_args();
    let began = Instant::now();
    println!("machine: {}", machine());
    println!(
        "settings: million: {} delayed messages of {} B over a {} s window, {} senders; light: {} over {} s, {} runs; {} queues, receive batch {}, {} tokio workers, data under {}",
        settings.count,
        settings.body,
        settings.window_secs,
        settings.senders,
        settings.light_count,
        settings.light_window_secs,
        settings.light_runs,
        settings.queues,
        settings.batch,
        settings.workers,
        settings.dir
    );
    for &scenario in &settings.scenarios {
        match scenario {
            Scenario::Light => {
                let rt = runtime(settings.workers);
                let runs: Vec<LightRun> = rt.block_on(async {
                    let mut runs = Vec::new();
                    for i in 0..settings.light_runs {
                        let r = light_once(&settings, i).await;
                        print_lateness(&format!("light run {}", i + 1), &r.lateness, r.expected);
                        runs.push(r);
                    }
                    runs
                });
                let med = |f: &dyn Fn(&Lateness) -> f64| {
                    median(runs.iter().map(|r| f(&r.lateness)).collect())
                };
                println!(
                    "light: medians of {} runs: lateness p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms; early in all runs: {}",
                    runs.len(),
                    med(&|l| l.ms(0.50)),
                    med(&|l| l.ms(0.99)),
                    med(&|l| l.max_ms()),
                    runs.iter().map(|r| r.lateness.early).sum::<u64>()
                );
            }
            Scenario::Million => million(&settings),
        }
    }
    println!();
    println!("{:.1} s in all", began.elapsed().as_secs_f64());
}

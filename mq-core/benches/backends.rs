//! End-to-end throughput of the embedded broker and of the Redis Streams backend, measured in
//! the same invocation: every message goes send -> receive -> ack, and every one is accounted
//! for (each carries a sequence number; the run fails if one is missing after the drain, and
//! duplicates are counted).
//!
//! Scenarios (positional arguments or `MQ_BENCH_SCENARIOS=batch,single`; default both):
//! - `batch`: pipelined. `MQ_BENCH_PRODUCERS` (default 8) producer tasks each call
//!   `send_batch` with `MQ_BENCH_SEND_BATCH` (default 128) messages at a time;
//! - `single`: `MQ_BENCH_SENDERS` (default 64) tasks each call `send` with one message at a
//!   time.
//!
//! In both, `MQ_BENCH_CONSUMERS` (default 1) members of one group loop on
//! `receive(MQ_BENCH_BATCH = 256, 20 ms)` and settle each batch with one `ack` call. The topic
//! has `MQ_BENCH_QUEUES` (default 4) queues, bodies are `MQ_BENCH_BODY` (default 100) bytes.
//! Each run first sends and drains `MQ_BENCH_WARMUP` (default 2000) unmeasured messages, then
//! sends up to `MQ_BENCH_MESSAGES` (default 200000) messages or for `MQ_BENCH_SECONDS`
//! (default 3) seconds, whichever comes first, and waits until all of them are acknowledged.
//!
//! Throughput = measured messages / (time the last ack returned - time of the first send).
//! Each scenario runs `MQ_BENCH_RUNS` (default 5) pairs, embedded then Redis, so that both
//! see the same machine conditions; the summary gives the medians, the ratio of the medians,
//! and the median of the per-pair ratios.
//!
//! The embedded broker runs in a fresh temporary directory under `MQ_BENCH_DIR` (default
//! /tmp) with the default async flush (fsync every 500 ms). The Redis backend connects to
//! `MQ_BENCH_REDIS_URL` (default `redis://127.0.0.1:6379`) with a prefix unique to the run;
//! the run's keys are deleted afterwards (`KEYS prefix:*`, then `DEL`) over a plain RESP
//! connection. If Redis is not reachable, only the embedded broker runs. `MQ_BENCH_BACKENDS`
//! (`embedded,redis`) picks backends.
//!
//! Also printed per run: the send-phase rate and the drain rate after the last send, CPU time
//! of this process (`/proc/self/stat`) and of the Redis server (`INFO cpu`) per message, the
//! consumers' time in `receive` and `ack` per batch, and the mean e2e latency per queue
//! (whether every queue is served alike); per scenario, the Redis commands per message
//! (`INFO commandstats`, before/after difference). The server figures cover the whole server:
//! other clients of the same Redis show up in them.
//!
//! Run with `cargo bench -p mq-core --bench backends [-- batch|single]`.

// A benchmark has nothing better to do on failure than abort with the message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use mq_core::embedded::{EmbeddedBroker, EmbeddedConfig, FlushPolicy};
use mq_core::redis::{RedisBroker, RedisConfig};
use mq_core::{Broker, Consumer, ConsumerOptions, Message, SendOptions, Subscription};

const TOPIC: &str = "bench";
const GROUP: &str = "bench-group";
/// Body marker (bytes 16..24) of measured messages; warm-up messages carry 0.
const MEASURED: u64 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Batch,
    Single,
}

impl Scenario {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "batch" => Some(Scenario::Batch),
            "single" => Some(Scenario::Single),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Scenario::Batch => "batch",
            Scenario::Single => "single",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Embedded,
    Redis,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Embedded => "embedded",
            Backend::Redis => "redis",
        }
    }
}

#[derive(Debug, Clone)]
struct Settings {
    scenarios: Vec<Scenario>,
    backends: Vec<Backend>,
    messages: u64,
    seconds: f64,
    warmup: u64,
    runs: usize,
    producers: usize,
    send_batch: usize,
    senders: usize,
    consumers: usize,
    batch: usize,
    queues: u32,
    body: usize,
    workers: usize,
    dir: String,
    redis_url: String,
}

impl Settings {
    fn from_env_and_args() -> Self {
        // `cargo bench` passes `--bench`; anything that is not a scenario name is ignored.
        let mut scenarios: Vec<Scenario> = std::env::args()
            .skip(1)
            .filter_map(|a| Scenario::parse(&a))
            .collect();
        if scenarios.is_empty() {
            scenarios = env("MQ_BENCH_SCENARIOS", "batch,single".to_owned())
                .split(',')
                .filter_map(|s| Scenario::parse(s.trim()))
                .collect();
        }
        let backends = env("MQ_BENCH_BACKENDS", "embedded,redis".to_owned())
            .split(',')
            .filter_map(|b| match b.trim() {
                "embedded" => Some(Backend::Embedded),
                "redis" => Some(Backend::Redis),
                _ => None,
            })
            .collect();
        Settings {
            scenarios,
            backends,
            messages: env("MQ_BENCH_MESSAGES", 200_000u64).max(1),
            seconds: env("MQ_BENCH_SECONDS", 3.0),
            warmup: env("MQ_BENCH_WARMUP", 2_000),
            runs: env("MQ_BENCH_RUNS", 5usize).max(1),
            producers: env("MQ_BENCH_PRODUCERS", 8usize).max(1),
            send_batch: env("MQ_BENCH_SEND_BATCH", 128usize).max(1),
            senders: env("MQ_BENCH_SENDERS", 64usize).max(1),
            consumers: env("MQ_BENCH_CONSUMERS", 1usize).max(1),
            batch: env("MQ_BENCH_BATCH", 256usize).max(1),
            queues: env("MQ_BENCH_QUEUES", 4u32).max(1),
            body: env("MQ_BENCH_BODY", 100usize).max(24),
            workers: env(
                "MQ_BENCH_WORKERS",
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )
            .max(1),
            dir: env("MQ_BENCH_DIR", "/tmp".to_owned()),
            redis_url: env("MQ_BENCH_REDIS_URL", "redis://127.0.0.1:6379".to_owned()),
        }
    }

    /// Concurrent send calls and messages per call.
    fn senders(&self, scenario: Scenario) -> (usize, usize) {
        match scenario {
            Scenario::Batch => (self.producers, self.send_batch),
            Scenario::Single => (self.senders, 1),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A plain RESP connection for housekeeping and server statistics (not the backend's client).

enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

struct Admin {
    reader: BufReader<TcpStream>,
}

impl Admin {
    /// Connects to a `redis://[[user]:password@]host[:port][/db]` URL.
    fn connect(url: &str) -> std::io::Result<Self> {
        let rest = url
            .strip_prefix("redis://")
            .ok_or_else(|| std::io::Error::other(format!("only redis:// URLs: {url}")))?;
        let (creds, rest) = match rest.rsplit_once('@') {
            Some((c, r)) => (Some(c), r),
            None => (None, rest),
        };
        let (hostport, db) = match rest.split_once('/') {
            Some((h, d)) => (h, Some(d).filter(|d| !d.is_empty())),
            None => (rest, None),
        };
        let addr = if hostport.contains(':') {
            hostport.to_owned()
        } else {
            format!("{hostport}:6379")
        };
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_nodelay(true)?;
        let mut admin = Admin {
            reader: BufReader::new(stream),
        };
        if let Some((user, pw)) = creds.and_then(|c| c.split_once(':')) {
            let reply = if user.is_empty() {
                admin.cmd(&[b"AUTH", pw.as_bytes()])?
            } else {
                admin.cmd(&[b"AUTH", user.as_bytes(), pw.as_bytes()])?
            };
            if let Resp::Error(e) = reply {
                return Err(std::io::Error::other(e));
            }
        }
        if let Some(db) = db {
            admin.cmd(&[b"SELECT", db.as_bytes()])?;
        }
        Ok(admin)
    }

    fn cmd(&mut self, args: &[&[u8]]) -> std::io::Result<Resp> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        self.reader.get_mut().write_all(&out)?;
        self.read()
    }

    fn line(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        if !line.ends_with("\r\n") {
            return Err(std::io::Error::other("connection closed"));
        }
        line.truncate(line.len() - 2);
        Ok(line)
    }

    fn read(&mut self) -> std::io::Result<Resp> {
        let line = self.line()?;
        let (kind, rest) = line.split_at(1);
        let num = || {
            rest.parse::<i64>()
                .map_err(|_| std::io::Error::other(format!("bad reply {line:?}")))
        };
        Ok(match kind {
            "+" => Resp::Simple(rest.to_owned()),
            "-" => Resp::Error(rest.to_owned()),
            ":" => Resp::Int(num()?),
            "$" => {
                let n = num()?;
                if n < 0 {
                    Resp::Bulk(None)
                } else {
                    let mut buf = vec![0u8; n as usize + 2];
                    self.reader.read_exact(&mut buf)?;
                    buf.truncate(n as usize);
                    Resp::Bulk(Some(buf))
                }
            }
            "*" => {
                let n = num()?;
                if n < 0 {
                    Resp::Array(None)
                } else {
                    let mut items = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        items.push(self.read()?);
                    }
                    Resp::Array(Some(items))
                }
            }
            _ => return Err(std::io::Error::other(format!("bad reply {line:?}"))),
        })
    }

    fn text(&mut self, args: &[&[u8]]) -> String {
        match self.cmd(args).expect("redis admin command") {
            Resp::Bulk(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
            Resp::Simple(s) => s,
            Resp::Error(e) => panic!("redis admin command failed: {e}"),
            _ => String::new(),
        }
    }

    /// Deletes every key under `prefix:`; returns how many it deleted.
    fn delete_prefix(&mut self, prefix: &str) -> usize {
        let pattern = format!("{prefix}:*");
        let keys = match self
            .cmd(&[b"KEYS", pattern.as_bytes()])
            .expect("redis KEYS")
        {
            Resp::Array(Some(items)) => items
                .into_iter()
                .filter_map(|i| match i {
                    Resp::Bulk(Some(k)) => Some(k),
                    _ => None,
                })
                .collect::<Vec<_>>(),
            Resp::Error(e) => panic!("KEYS {pattern}: {e}"),
            _ => Vec::new(),
        };
        let mut deleted = 0;
        for chunk in keys.chunks(256) {
            let mut args: Vec<&[u8]> = vec![b"DEL"];
            args.extend(chunk.iter().map(Vec::as_slice));
            match self.cmd(&args).expect("redis DEL") {
                Resp::Int(n) => deleted += n.max(0) as usize,
                Resp::Error(e) => panic!("DEL: {e}"),
                _ => {}
            }
        }
        deleted
    }

    /// `INFO commandstats`: command -> (calls, usec).
    fn commandstats(&mut self) -> BTreeMap<String, (u64, u64)> {
        let info = self.text(&[b"INFO", b"commandstats"]);
        parse_commandstats(&info)
    }

    /// CPU seconds the server has used (user + system, all its threads).
    fn cpu_seconds(&mut self) -> f64 {
        let info = self.text(&[b"INFO", b"cpu"]);
        info.lines()
            .filter_map(|l| {
                l.strip_prefix("used_cpu_user:")
                    .or_else(|| l.strip_prefix("used_cpu_sys:"))
            })
            .filter_map(|v| v.trim().parse::<f64>().ok())
            .sum()
    }
}

/// CPU seconds this process has used (user + system). `/proc` counts in USER_HZ = 100.
fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (tick(11) + tick(12)) / 100.0
}

// ---------------------------------------------------------------------------------------------

/// The figures of one run.
struct RunResult {
    messages: u64,
    /// First send -> last send returned.
    send_phase: Duration,
    /// Measured messages acknowledged when the last send returned.
    acked_at_sends_done: u64,
    elapsed: Duration,
    duplicates: u64,
    /// First send of a batch -> receive returned it, ns.
    e2e: Histogram<u64>,
    /// CPU seconds of this process during the measured phase.
    cpu: f64,
    /// The consumers' loops, summed, during the measured phase.
    timing: Loop,
    /// CPU seconds of the Redis server during the measured phase (Redis runs).
    redis_cpu: Option<f64>,
    /// Redis commands during the measured phase (Redis runs).
    commands: BTreeMap<String, (u64, u64)>,
}

impl RunResult {
    fn throughput(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }

    /// Acknowledgements per second after the last send returned (the consumers alone).
    fn drain_rate(&self) -> f64 {
        let left = self.messages - self.acked_at_sends_done;
        let secs = self.elapsed.saturating_sub(self.send_phase).as_secs_f64();
        if left == 0 || secs <= 0.0 {
            f64::NAN
        } else {
            left as f64 / secs
        }
    }
}

/// State shared by the senders and consumers of one run.
struct Shared {
    start: Instant,
    /// One bit per measured sequence number: seen at least once.
    seen: Vec<AtomicU64>,
    /// Distinct measured messages acknowledged.
    distinct: AtomicU64,
    /// Deliveries of measured messages seen before (at-least-once redeliveries).
    duplicates: AtomicU64,
    /// Warm-up messages acknowledged.
    warm: AtomicU64,
    /// Nanoseconds since `start` when the last ack of a measured message returned.
    last_acked: AtomicU64,
    /// Nanoseconds since `start` of the first measured send.
    first_sent: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
    fn new(max: u64) -> Self {
        Shared {
            start: Instant::now(),
            seen: (0..max.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            distinct: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            warm: AtomicU64::new(0),
            last_acked: AtomicU64::new(0),
            first_sent: AtomicU64::new(u64::MAX),
            stop: AtomicBool::new(false),
        }
    }
}

fn body(len: usize, sent_ns: u64, seq: u64, marker: u64) -> Vec<u8> {
    let mut b = vec![0x5a_u8; len];
    b[0..8].copy_from_slice(&sent_ns.to_le_bytes());
    b[8..16].copy_from_slice(&seq.to_le_bytes());
    b[16..24].copy_from_slice(&marker.to_le_bytes());
    b
}

/// Where a member's loop spent its time.
#[derive(Debug, Clone, Default)]
struct Loop {
    /// `receive` calls that returned messages.
    batches: u64,
    delivered: u64,
    receive_ns: u64,
    ack_ns: u64,
    /// Per queue: measured messages and the sum of their e2e latencies (ns), to show whether
    /// every queue is served alike.
    queues: Vec<(u64, u64)>,
}

impl Loop {
    fn add(&mut self, o: &Loop) {
        self.batches += o.batches;
        self.delivered += o.delivered;
        self.receive_ns += o.receive_ns;
        self.ack_ns += o.ack_ns;
        if self.queues.len() < o.queues.len() {
            self.queues.resize(o.queues.len(), (0, 0));
        }
        for (mine, theirs) in self.queues.iter_mut().zip(&o.queues) {
            mine.0 += theirs.0;
            mine.1 += theirs.1;
        }
    }

    /// Mean e2e latency per queue, ms.
    fn queue_means(&self) -> String {
        self.queues
            .iter()
            .map(|(n, sum)| format!("{:.0}", *sum as f64 / 1e6 / (*n).max(1) as f64))
            .collect::<Vec<_>>()
            .join("/")
    }
}

/// One member's loop: receive up to `batch`, record, ack the batch with one call.
async fn consume(
    consumer: Box<dyn Consumer>,
    shared: Arc<Shared>,
    batch: usize,
) -> (Histogram<u64>, Loop) {
    let mut hist = histogram();
    let mut timing = Loop::default();
    let mut receipts = Vec::with_capacity(batch);
    let mut seqs = Vec::with_capacity(batch);
    while !shared.stop.load(Ordering::Acquire) {
        let asked = nanos_since(shared.start);
        let deliveries = consumer
            .receive(batch, Duration::from_millis(20))
            .await
            .expect("receive");
        if deliveries.is_empty() {
            continue;
        }
        let now = nanos_since(shared.start);
        let measuring = shared.first_sent.load(Ordering::Acquire) <= asked;
        receipts.clear();
        seqs.clear();
        let mut warm = 0;
        for d in &deliveries {
            let b = &d.message.body;
            if read_u64(b, 16) == MEASURED {
                let latency = now.saturating_sub(read_u64(b, 0));
                hist.saturating_record(latency.max(1_000));
                let q = d.message.queue_id as usize;
                if timing.queues.len() <= q {
                    timing.queues.resize(q + 1, (0, 0));
                }
                timing.queues[q].0 += 1;
                timing.queues[q].1 += latency;
                seqs.push(read_u64(b, 8));
            } else {
                warm += 1;
            }
            receipts.push(d.receipt.clone());
        }
        let acking = nanos_since(shared.start);
        consumer.ack(&receipts).await.expect("ack");
        let acked = nanos_since(shared.start);
        if measuring {
            timing.batches += 1;
            timing.delivered += deliveries.len() as u64;
            timing.receive_ns += now - asked;
            timing.ack_ns += acked - acking;
        }
        shared.warm.fetch_add(warm, Ordering::AcqRel);
        if !seqs.is_empty() {
            let mut fresh = 0;
            for &s in &seqs {
                let bit = 1u64 << (s % 64);
                let prev = shared.seen[(s / 64) as usize].fetch_or(bit, Ordering::AcqRel);
                if prev & bit == 0 {
                    fresh += 1;
                } else {
                    shared.duplicates.fetch_add(1, Ordering::Relaxed);
                }
            }
            shared.last_acked.fetch_max(acked, Ordering::AcqRel);
            shared.distinct.fetch_add(fresh, Ordering::AcqRel);
        }
    }
    consumer.close().await.expect("close consumer");
    (hist, timing)
}

/// Sends messages in calls of `per_call` until `total` are claimed or the deadline passes.
/// Returns how many it sent.
#[allow(clippy::too_many_arguments)]
async fn sender(
    broker: Arc<dyn Broker>,
    shared: Arc<Shared>,
    claimed: Arc<AtomicU64>,
    total: u64,
    deadline: Instant,
    per_call: usize,
    len: usize,
    marker: u64,
) -> u64 {
    let mut sent = 0;
    loop {
        if Instant::now() >= deadline {
            break;
        }
        let from = claimed.fetch_add(per_call as u64, Ordering::Relaxed);
        if from >= total {
            break;
        }
        let to = (from + per_call as u64).min(total);
        let t0 = nanos_since(shared.start);
        if marker == MEASURED {
            shared.first_sent.fetch_min(t0, Ordering::AcqRel);
        }
        if to - from == 1 {
            let msg = Message::new(TOPIC, body(len, t0, from, marker));
            broker.send(msg, SendOptions::new()).await.expect("send");
        } else {
            let msgs = (from..to)
                .map(|seq| Message::new(TOPIC, body(len, t0, seq, marker)))
                .collect();
            broker
                .send_batch(msgs, SendOptions::new())
                .await
                .expect("send_batch");
        }
        sent += to - from;
    }
    sent
}

async fn wait_until(
    what: &str,
    limit: Duration,
    done: impl Fn() -> bool,
    progress: impl Fn() -> String,
) {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            panic!("{what}: not done within {limit:?}: {}", progress());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A unique key prefix for one Redis run.
fn redis_prefix(run: usize) -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("mqbench-{}-{ms}-{run}", std::process::id())
}

async fn open(
    backend: Backend,
    settings: &Settings,
    prefix: &str,
) -> (Arc<dyn Broker>, Option<tempfile::TempDir>) {
    match backend {
        Backend::Embedded => {
            let dir = tempfile::Builder::new()
                .prefix("mq-bench-")
                .tempdir_in(&settings.dir)
                .expect("temp dir");
            let broker =
                EmbeddedBroker::open(EmbeddedConfig::new(dir.path()).flush(FlushPolicy::default()))
                    .await
                    .expect("open embedded broker");
            (broker, Some(dir))
        }
        Backend::Redis => {
            let broker = RedisBroker::connect(RedisConfig::new(&settings.redis_url).prefix(prefix))
                .await
                .expect("connect to redis");
            (broker, None)
        }
    }
}

async fn run_once(
    settings: &Settings,
    scenario: Scenario,
    backend: Backend,
    prefix: &str,
    mut admin: Option<&mut Admin>,
) -> RunResult {
    let (broker, dir) = open(backend, settings, prefix).await;
    broker
        .create_topic(TOPIC, settings.queues)
        .await
        .expect("create topic");
    let (senders, per_call) = settings.senders(scenario);
    // Room for the last claims, which may overshoot `messages` by less than one call each.
    let shared = Arc::new(Shared::new(settings.messages + per_call as u64));

    let mut members = Vec::new();
    for i in 0..settings.consumers {
        members.push(
            broker
                .subscribe(
                    Subscription::new(TOPIC, GROUP),
                    ConsumerOptions::new().instance(format!("bench-{i}")),
                )
                .await
                .expect("subscribe"),
        );
    }
    // Every member sees every other before the first send, so no queue changes hands mid-run.
    for m in &members {
        m.assignment().await.expect("assignment");
    }
    let consumers: Vec<_> = members
        .into_iter()
        .map(|m| tokio::spawn(consume(m, shared.clone(), settings.batch)))
        .collect();

    let spawn_senders = |total: u64, seconds: f64, marker: u64| {
        let claimed = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        (0..senders)
            .map(|_| {
                tokio::spawn(sender(
                    broker.clone(),
                    shared.clone(),
                    claimed.clone(),
                    total,
                    deadline,
                    per_call,
                    settings.body,
                    marker,
                ))
            })
            .collect::<Vec<_>>()
    };

    // Warm-up: connections, files and code paths; sent and drained before the measurement.
    let mut warm_sent = 0;
    for t in spawn_senders(settings.warmup, 60.0, 0) {
        warm_sent += t.await.expect("warm-up sender");
    }
    wait_until(
        "warm-up drain",
        Duration::from_secs(60),
        || shared.warm.load(Ordering::Acquire) >= warm_sent,
        || format!("{} of {warm_sent}", shared.warm.load(Ordering::Acquire)),
    )
    .await;

    let before_cmds = admin.as_mut().map(|a| a.commandstats());
    let before_redis_cpu = admin.as_mut().map(|a| a.cpu_seconds());
    let before_cpu = process_cpu_seconds();

    let mut sent = 0;
    for t in spawn_senders(settings.messages, settings.seconds, MEASURED) {
        sent += t.await.expect("sender");
    }
    let sends_done = nanos_since(shared.start);
    let acked_at_sends_done = shared.distinct.load(Ordering::Acquire);
    // Drain: every measured message must be acknowledged.
    wait_until(
        "drain",
        Duration::from_secs(120),
        || shared.distinct.load(Ordering::Acquire) >= sent,
        || {
            format!(
                "{} of {sent} acknowledged",
                shared.distinct.load(Ordering::Acquire)
            )
        },
    )
    .await;

    let cpu = process_cpu_seconds() - before_cpu;
    let redis_cpu = admin
        .as_mut()
        .zip(before_redis_cpu)
        .map(|(a, b)| a.cpu_seconds() - b);
    let commands = match (admin.as_mut(), before_cmds) {
        (Some(a), Some(before)) => a
            .commandstats()
            .into_iter()
            .filter_map(|(name, (calls, usec))| {
                let (c0, u0) = before.get(&name).copied().unwrap_or((0, 0));
                (calls > c0).then(|| (name, (calls - c0, usec.saturating_sub(u0))))
            })
            .collect(),
        _ => BTreeMap::new(),
    };

    shared.stop.store(true, Ordering::Release);
    let mut e2e = histogram();
    let mut timing = Loop::default();
    for c in consumers {
        let (hist, t) = c.await.expect("consumer");
        e2e.add(hist).expect("merge histograms");
        timing.add(&t);
    }
    let distinct = shared.distinct.load(Ordering::Acquire);
    assert_eq!(distinct, sent, "acknowledged vs sent");
    let first = shared.first_sent.load(Ordering::Acquire);
    let last = shared.last_acked.load(Ordering::Acquire);
    broker.shutdown().await.expect("shutdown");
    drop(broker);
    drop(dir);
    RunResult {
        send_phase: Duration::from_nanos(sends_done.saturating_sub(first)),
        acked_at_sends_done,
        messages: sent,
        elapsed: Duration::from_nanos(last.saturating_sub(first).max(1)),
        duplicates: shared.duplicates.load(Ordering::Acquire),
        e2e,
        cpu,
        timing,
        redis_cpu,
        commands,
    }
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn describe(settings: &Settings, scenario: Scenario) -> String {
    match scenario {
        Scenario::Batch => format!(
            "send_batch of {}, {} producers",
            settings.send_batch, settings.producers
        ),
        Scenario::Single => format!("single send, {} senders", settings.senders),
    }
}

fn print_run(backend: Backend, scenario: Scenario, i: usize, r: &RunResult) {
    let per_msg = |s: f64| s * 1e6 / r.messages as f64;
    let t = &r.timing;
    let per_batch = |ns: u64| ns as f64 / 1e3 / t.batches.max(1) as f64;
    println!(
        "{:<6} {:<8} run {}: {:>7} msgs in {:>6.3} s = {:>8.0} msg/s (sends {:>7.0} msg/s, {:>3.0}% acked by then, drain {:>7.0} msg/s)  e2e p50 {:>7.2} ms  p99 {:>7.2} ms  dup {}  cpu/msg: bench {:>5.2} us{}  consumer: {:.0} msgs/batch, receive {:.0} us, ack {:.0} us; mean e2e per queue {} ms",
        scenario.name(),
        backend.name(),
        i + 1,
        r.messages,
        r.elapsed.as_secs_f64(),
        r.throughput(),
        r.messages as f64 / r.send_phase.as_secs_f64().max(1e-9),
        100.0 * r.acked_at_sends_done as f64 / r.messages as f64,
        r.drain_rate(),
        ms(r.e2e.value_at_quantile(0.50)),
        ms(r.e2e.value_at_quantile(0.99)),
        r.duplicates,
        per_msg(r.cpu),
        r.redis_cpu
            .map(|c| format!(", redis-server {:>5.2} us", per_msg(c)))
            .unwrap_or_default(),
        t.delivered as f64 / t.batches.max(1) as f64,
        per_batch(t.receive_ns),
        per_batch(t.ack_ns),
        t.queue_means(),
    );
}

/// Redis commands per message over all runs of a scenario, most expensive first.
fn print_commands(results: &[RunResult]) {
    let messages: u64 = results.iter().map(|r| r.messages).sum();
    let mut total: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for r in results {
        for (name, (calls, usec)) in &r.commands {
            let e = total.entry(name.as_str()).or_default();
            e.0 += calls;
            e.1 += usec;
        }
    }
    let mut rows: Vec<_> = total.into_iter().collect();
    rows.sort_by_key(|(_, (_, usec))| std::cmp::Reverse(*usec));
    println!("  redis commands during the measured phases ({messages} messages; commands run by scripts are counted under their own name and inside evalsha's time):");
    for (name, (calls, usec)) in rows {
        println!(
            "    {name:<12} {:>8.4} calls/msg  {:>7.2} us/call  {:>6.3} us/msg",
            calls as f64 / messages as f64,
            usec as f64 / calls as f64,
            usec as f64 / messages as f64
        );
    }
}

struct Row {
    scenario: Scenario,
    embedded: Option<f64>,
    redis: Option<f64>,
    pair_ratio: Option<f64>,
    redis_p50: Option<f64>,
    embedded_p50: Option<f64>,
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
    let mut admin = None;
    let mut backends = settings.backends.clone();
    if backends.contains(&Backend::Redis) {
        match Admin::connect(&settings.redis_url) {
            Ok(mut a) => {
                let info = a.text(&[b"INFO", b"server"]);
                let version = info
                    .lines()
                    .find_map(|l| l.strip_prefix("redis_version:"))
                    .unwrap_or("?")
                    .to_owned();
                println!("redis: {} (server {version})", settings.redis_url);
                admin = Some(a);
            }
            Err(e) => {
                println!(
                    "REDIS NOT REACHABLE at {} ({e}): measuring the embedded broker only",
                    settings.redis_url
                );
                backends.retain(|b| *b != Backend::Redis);
            }
        }
    }
    println!(
        "settings: {} B bodies, {} queues, {} consumer(s) receiving {} and acking each batch \
         with one call, up to {} msgs or {} s of sending per run after {} warm-up msgs, \
         {} runs per backend and scenario, {} tokio workers, embedded data under {} \
         (async flush)",
        settings.body,
        settings.queues,
        settings.consumers,
        settings.batch,
        settings.messages,
        settings.seconds,
        settings.warmup,
        settings.runs,
        settings.workers,
        settings.dir
    );

    let mut rows = Vec::new();
    let mut run_no = 0;
    for &scenario in &settings.scenarios {
        println!(
            "scenario {}: {}",
            scenario.name(),
            describe(&settings, scenario)
        );
        let mut results: BTreeMap<&str, Vec<RunResult>> = BTreeMap::new();
        let mut pair_ratios = Vec::new();
        for i in 0..settings.runs {
            let mut pair = Vec::new();
            for &backend in &backends {
                run_no += 1;
                let prefix = redis_prefix(run_no);
                let r = runtime.block_on(run_once(
                    &settings,
                    scenario,
                    backend,
                    &prefix,
                    if backend == Backend::Redis {
                        admin.as_mut()
                    } else {
                        None
                    },
                ));
                if backend == Backend::Redis {
                    let a = admin.as_mut().expect("admin connection");
                    a.delete_prefix(&prefix);
                    // Anything a background task wrote on its way out.
                    std::thread::sleep(Duration::from_millis(100));
                    a.delete_prefix(&prefix);
                    let left = a.delete_prefix(&prefix);
                    assert_eq!(left, 0, "keys under {prefix}: left after the run");
                }
                print_run(backend, scenario, i, &r);
                pair.push(r.throughput());
                results.entry(backend.name()).or_default().push(r);
            }
            if let [e, r] = pair[..] {
                pair_ratios.push(r / e);
            }
        }
        if let Some(redis) = results.get("redis") {
            print_commands(redis);
        }
        let med = |name: &str, f: &dyn Fn(&RunResult) -> f64| {
            results
                .get(name)
                .map(|rs| median(rs.iter().map(f).collect()))
        };
        rows.push(Row {
            scenario,
            embedded: med("embedded", &RunResult::throughput),
            redis: med("redis", &RunResult::throughput),
            pair_ratio: (!pair_ratios.is_empty()).then(|| median(pair_ratios.clone())),
            embedded_p50: med("embedded", &|r| ms(r.e2e.value_at_quantile(0.5))),
            redis_p50: med("redis", &|r| ms(r.e2e.value_at_quantile(0.5))),
        });
    }
    drop(runtime);

    let fmt = |v: Option<f64>, digits: usize| v.map_or("-".to_owned(), |v| format!("{v:.digits$}"));
    println!();
    println!("medians ({:.1} s in all):", began.elapsed().as_secs_f64());
    println!("| scenario | embedded (msg/s) | redis (msg/s) | ratio of medians | median per-pair ratio | e2e p50 embedded / redis (ms) |");
    println!("|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} ({}) | {} | {} | {} | {} | {} / {} |",
            r.scenario.name(),
            describe(&settings, r.scenario),
            fmt(r.embedded, 0),
            fmt(r.redis, 0),
            fmt(r.redis.zip(r.embedded).map(|(r, e)| r / e), 3),
            fmt(r.pair_ratio, 3),
            fmt(r.embedded_p50, 2),
            fmt(r.redis_p50, 2),
        );
    }
    if let Some(batch) = rows
        .iter()
        .find(|r| r.scenario == Scenario::Batch)
        .and_then(|r| r.redis)
    {
        println!(
            "goal: >= 100,000 msg/s end to end on redis with pipelining: {:.0} msg/s, {}",
            batch,
            if batch >= 100_000.0 { "met" } else { "NOT met" }
        );
    }
}

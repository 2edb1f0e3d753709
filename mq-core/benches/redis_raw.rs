//! mq's Redis backend beside a raw Redis Streams loop, in one run: what `RedisBroker` costs on
//! top of the three commands a hand-written Streams client needs (`XADD`, `XREADGROUP`,
//! `XACK`). Issue 13's target: the backend at ≥ 100,000 msg/s and ≥ 0.9× the raw loop.
//!
//! Both sides run issue 13's workload: `MQ_BENCH_MESSAGES` (default 200000) messages of
//! `MQ_BENCH_BODY` (default 1024) bytes, `MQ_BENCH_SENDERS` (default 256) sends awaiting their
//! acknowledgement at once, one consumer acking what it receives, producer and consumer in one
//! process, Redis over loopback.
//! - `raw`: the `redis` crate directly. The senders share one multiplexed connection (as mq's
//!   sends share one) and `XADD key * m <body>` to `MQ_BENCH_QUEUES` (default 4) streams in
//!   turn: four streams because mq's topic has four queues, one stream each, so that both
//!   sides keep the same number of streams, pending lists and `XACK` commands. One consumer,
//!   on a connection of its own (a `BLOCK` would stall the senders' connection), loops on
//!   `XREADGROUP GROUP g c COUNT 256 BLOCK 20 STREAMS s0..s3 > ..>` and then `XACK`s what it
//!   read, one `XACK` per stream, pipelined in one round trip;
//! - `mq`: `RedisBroker` with a topic of the same number of queues; the senders call `send`;
//!   one member loops on `receive(256, 20 ms)` and settles each batch with one `ack` call.
//!
//! Each side first sends and drains `MQ_BENCH_WARMUP` (default 2000) unmeasured messages.
//! Throughput = measured messages / (last ack returned − first send). Latency is from just
//! before the send to the consumer seeing the message (the send time travels in the body).
//! Every measured message must be seen; duplicates are counted. Per side the bench also
//! prints CPU per message of this process and of `redis-server` (`INFO cpu`) and the commands
//! per message (`INFO commandstats`, difference over the measured phase). Server figures cover
//! the whole server: other clients of the same Redis show up in them.
//!
//! `MQ_BENCH_SIDE=raw` or `mq` runs one side alone (to profile it; no ratio).
//!
//! `MQ_BENCH_RUNS` (default 3) runs, each raw then mq, so that both see the same machine; the
//! summary gives the medians and the median of the per-run ratios. Every run uses a key prefix
//! of its own and deletes its keys afterwards. `MQ_BENCH_REDIS_URL` (default
//! `redis://127.0.0.1:6379`); if no Redis answers there, the bench says so and exits 0.
//!
//! Run with `cargo bench -p mq-core --bench redis_raw`.

// A benchmark has nothing better to do on failure than abort with the message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::parse_commandstats;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use mq_core::redis::{RedisBroker, RedisConfig};
use mq_core::{Broker, Consumer, ConsumerOptions, Message, SendOptions, Subscription};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};

const TOPIC: &str = "bench";
const GROUP: &str = "bench-group";
/// Body marker (bytes 16..24): the warm-up phase carries 0, the measured one 1.
const WARM: u64 = 0;
const MEASURED: u64 = 1;

/// The workload of one side.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Measured messages.
    pub messages: u64,
    /// Unmeasured messages sent and drained first.
    pub warmup: u64,
    /// Sends awaiting their acknowledgement at once.
    pub senders: usize,
    /// Body size in bytes (at least 24: send time, sequence, marker).
    pub body: usize,
    /// Streams (raw) and queues of the topic (mq).
    pub queues: u32,
    /// Messages asked for per read.
    pub batch: usize,
}

impl Load {
    /// Issue 13's workload, or what the `MQ_BENCH_*` variables say.
    pub fn from_env() -> Self {
        Load {
            messages: env("MQ_BENCH_MESSAGES", 200_000u64).max(1),
            warmup: env("MQ_BENCH_WARMUP", 2_000u64),
            senders: env("MQ_BENCH_SENDERS", 256usize).max(1),
            body: env("MQ_BENCH_BODY", 1024usize).max(24),
            queues: env("MQ_BENCH_QUEUES", 4u32).max(1),
            batch: env("MQ_BENCH_BATCH", 256usize).max(1),
        }
    }
}

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
        Err(_) => default,
    }
}

/// One side's figures of one run.
#[derive(Debug, Clone)]
pub struct Figures {
    /// Measured messages.
    pub messages: u64,
    /// Messages per second, first send to last ack.
    pub rate: f64,
    /// Median send-to-receive latency.
    pub p50_ms: f64,
    /// 99th percentile send-to-receive latency.
    pub p99_ms: f64,
    /// Deliveries of a message seen before.
    pub duplicates: u64,
    /// CPU of this process per message (µs).
    pub cpu_us: f64,
    /// CPU of the Redis server per message (µs).
    pub server_cpu_us: f64,
    /// Redis commands during the measured phase: name -> (calls, server µs).
    pub commands: BTreeMap<String, (u64, u64)>,
}

impl Figures {
    /// Commands per message, all names together (those run by scripts included).
    pub fn commands_per_message(&self) -> f64 {
        self.commands.values().map(|(c, _)| *c).sum::<u64>() as f64 / self.messages as f64
    }
}

/// What the consumer of one side records.
struct Tally {
    start: Instant,
    /// Per phase: one bit per sequence number seen.
    seen: [Vec<AtomicU64>; 2],
    distinct: [AtomicU64; 2],
    duplicates: AtomicU64,
    first_sent: AtomicU64,
    last_acked: AtomicU64,
    latencies: Mutex<Histogram<u64>>,
    stop: AtomicBool,
}

impl Tally {
    fn new(load: &Load) -> Self {
        let bits = |n: u64| (0..n.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        Tally {
            start: Instant::now(),
            seen: [bits(load.warmup), bits(load.messages)],
            distinct: [AtomicU64::new(0), AtomicU64::new(0)],
            duplicates: AtomicU64::new(0),
            first_sent: AtomicU64::new(u64::MAX),
            last_acked: AtomicU64::new(0),
            latencies: Mutex::new(
                Histogram::new_with_bounds(1_000, 120_000_000_000, 3).expect("histogram"),
            ),
            stop: AtomicBool::new(false),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn body(&self, len: usize, seq: u64, marker: u64) -> Vec<u8> {
        let mut b = vec![0x5a_u8; len];
        let t0 = self.now();
        if marker == MEASURED {
            self.first_sent.fetch_min(t0, Ordering::AcqRel);
        }
        b[0..8].copy_from_slice(&t0.to_le_bytes());
        b[8..16].copy_from_slice(&seq.to_le_bytes());
        b[16..24].copy_from_slice(&marker.to_le_bytes());
        b
    }

    /// Records the bodies of one batch, received at `at`.
    fn received<'a>(&self, at: u64, bodies: impl Iterator<Item = &'a [u8]>) -> Vec<(u64, u64)> {
        let mut hist = self.latencies.lock().unwrap();
        let mut seqs = Vec::new();
        for b in bodies {
            let field = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
            let marker = field(16);
            if marker == MEASURED {
                hist.saturating_record(at.saturating_sub(field(0)).max(1_000));
            }
            seqs.push((marker, field(8)));
        }
        seqs
    }

    /// Counts the messages of a batch once its ack returned.
    fn acked(&self, seqs: &[(u64, u64)]) {
        let at = self.now();
        for &(marker, seq) in seqs {
            let phase = usize::from(marker == MEASURED);
            let bit = 1u64 << (seq % 64);
            let prev = self.seen[phase][(seq / 64) as usize].fetch_or(bit, Ordering::AcqRel);
            if prev & bit == 0 {
                self.distinct[phase].fetch_add(1, Ordering::AcqRel);
            } else {
                self.duplicates.fetch_add(1, Ordering::Relaxed);
            }
            if phase == 1 {
                self.last_acked.fetch_max(at, Ordering::AcqRel);
            }
        }
    }

    async fn wait_for(&self, phase: usize, count: u64) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.distinct[phase].load(Ordering::Acquire) < count {
            assert!(
                Instant::now() < deadline,
                "phase {phase}: {} of {count} acknowledged after 120 s",
                self.distinct[phase].load(Ordering::Acquire)
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Sends `count` messages of `marker` from `load.senders` tasks through `send(seq, body)`.
async fn drive<F, Fut>(load: &Load, tally: &Arc<Tally>, count: u64, marker: u64, send: F)
where
    F: Fn(u64, Vec<u8>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let send = Arc::new(send);
    let claimed = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..load.senders)
        .map(|_| {
            let (send, claimed, tally, len) =
                (send.clone(), claimed.clone(), tally.clone(), load.body);
            tokio::spawn(async move {
                loop {
                    let seq = claimed.fetch_add(1, Ordering::Relaxed);
                    if seq >= count {
                        break;
                    }
                    send(seq, tally.body(len, seq, marker)).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("sender");
    }
}

/// Server-side counters, read before and after the measured phase.
struct Server {
    conn: MultiplexedConnection,
}

impl Server {
    async fn info(&mut self, section: &str) -> String {
        redis::cmd("INFO")
            .arg(section)
            .query_async(&mut self.conn)
            .await
            .expect("INFO")
    }

    async fn commandstats(&mut self) -> BTreeMap<String, (u64, u64)> {
        let info = self.info("commandstats").await;
        parse_commandstats(&info)
    }

    async fn cpu_seconds(&mut self) -> f64 {
        let info = self.info("cpu").await;
        info.lines()
            .filter_map(|l| {
                l.strip_prefix("used_cpu_user:")
                    .or_else(|| l.strip_prefix("used_cpu_sys:"))
            })
            .filter_map(|v| v.trim().parse::<f64>().ok())
            .sum()
    }

    /// Deletes every key under `prefix:`; returns how many there were.
    async fn delete_prefix(&mut self, prefix: &str) -> usize {
        let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
            .arg(format!("{prefix}:*"))
            .query_async(&mut self.conn)
            .await
            .expect("KEYS");
        for chunk in keys.chunks(256) {
            let _: u64 = redis::cmd("DEL")
                .arg(chunk)
                .query_async(&mut self.conn)
                .await
                .expect("DEL");
        }
        keys.len()
    }
}

/// What the measured phase cost: this process's and the server's CPU, the server's commands.
struct Meter {
    cpu: f64,
    server_cpu: f64,
    commands: BTreeMap<String, (u64, u64)>,
}

impl Meter {
    async fn start(server: &mut Server) -> Self {
        Meter {
            commands: server.commandstats().await,
            server_cpu: server.cpu_seconds().await,
            cpu: process_cpu_seconds(),
        }
    }

    async fn finish(self, server: &mut Server, tally: &Tally, messages: u64) -> Figures {
        let cpu = process_cpu_seconds() - self.cpu;
        let server_cpu = server.cpu_seconds().await - self.server_cpu;
        let commands = server
            .commandstats()
            .await
            .into_iter()
            .filter_map(|(name, (calls, usec))| {
                let (c0, u0) = self.commands.get(&name).copied().unwrap_or((0, 0));
                // The meter's own INFO calls are not the workload's.
                (calls > c0 && name != "info")
                    .then(|| (name, (calls - c0, usec.saturating_sub(u0))))
            })
            .collect();
        let hist = tally.latencies.lock().unwrap();
        let first = tally.first_sent.load(Ordering::Acquire);
        let last = tally.last_acked.load(Ordering::Acquire);
        let per_msg = |s: f64| s * 1e6 / messages as f64;
        Figures {
            messages,
            rate: messages as f64 / (last.saturating_sub(first).max(1) as f64 / 1e9),
            p50_ms: hist.value_at_quantile(0.50) as f64 / 1e6,
            p99_ms: hist.value_at_quantile(0.99) as f64 / 1e6,
            duplicates: tally.duplicates.load(Ordering::Acquire),
            cpu_us: per_msg(cpu),
            server_cpu_us: per_msg(server_cpu),
            commands,
        }
    }
}

/// CPU seconds this process has used (user + system). `/proc` counts in USER_HZ = 100.
fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15, 11 and 12 after the `(comm)`.
    (tick(11) + tick(12)) / 100.0
}

async fn connect(url: &str) -> MultiplexedConnection {
    // No response timeout: under load on two shared cores a reply may take longer than the
    // crate's default half second, and a bench should wait rather than fail.
    let config = AsyncConnectionConfig::new().set_response_timeout(None);
    redis::Client::open(url)
        .expect("redis url")
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("connect to redis")
}

/// What one `XREADGROUP` reply holds of one stream: its index, the entry ids, the bodies.
type StreamBatch = (usize, Vec<Vec<u8>>, Vec<Vec<u8>>);

/// The bodies of an `XREADGROUP` reply, per stream.
fn read_reply(reply: Value, streams: &[String]) -> Vec<StreamBatch> {
    let mut out = Vec::new();
    let Value::Array(per_stream) = reply else {
        return out;
    };
    for s in per_stream {
        let Value::Array(mut parts) = s else { continue };
        let (Some(Value::Array(entries)), Some(Value::BulkString(name))) =
            (parts.pop(), parts.pop())
        else {
            continue;
        };
        let Some(i) = streams.iter().position(|k| k.as_bytes() == name) else {
            continue;
        };
        let mut ids = Vec::with_capacity(entries.len());
        let mut bodies = Vec::with_capacity(entries.len());
        for e in entries {
            let Value::Array(mut id_fields) = e else {
                continue;
            };
            let fields = id_fields.pop();
            let Some(Value::BulkString(id)) = id_fields.pop() else {
                continue;
            };
            if let Some(Value::Array(mut kv)) = fields {
                if let Some(Value::BulkString(body)) = kv.pop() {
                    bodies.push(body);
                    ids.push(id);
                }
            }
        }
        out.push((i, ids, bodies));
    }
    out
}

/// The raw loop: `XADD` from the senders, `XREADGROUP` + `XACK` in one consumer.
pub async fn raw(url: &str, prefix: &str, load: Load) -> Figures {
    let mut server = Server {
        conn: connect(url).await,
    };
    let streams: Arc<Vec<String>> =
        Arc::new((0..load.queues).map(|q| format!("{prefix}:s{q}")).collect());
    for s in streams.iter() {
        let _: () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(s)
            .arg(GROUP)
            .arg("$")
            .arg("MKSTREAM")
            .query_async(&mut server.conn)
            .await
            .expect("XGROUP CREATE");
    }
    let tally = Arc::new(Tally::new(&load));
    let consumer = {
        let (tally, streams, mut conn) = (tally.clone(), streams.clone(), connect(url).await);
        tokio::spawn(async move {
            let mut read = redis::cmd("XREADGROUP");
            read.arg("GROUP")
                .arg(GROUP)
                .arg("c")
                .arg("COUNT")
                .arg(load.batch)
                .arg("BLOCK")
                .arg(20)
                .arg("STREAMS");
            for s in streams.iter() {
                read.arg(s);
            }
            for _ in streams.iter() {
                read.arg(">");
            }
            while !tally.stop.load(Ordering::Acquire) {
                let reply: Value = read.query_async(&mut conn).await.expect("XREADGROUP");
                let at = tally.now();
                let batch = read_reply(reply, &streams);
                if batch.is_empty() {
                    continue;
                }
                let seqs = tally.received(
                    at,
                    batch
                        .iter()
                        .flat_map(|(_, _, bodies)| bodies.iter().map(Vec::as_slice)),
                );
                let mut pipe = redis::pipe();
                for (i, ids, _) in &batch {
                    pipe.cmd("XACK").arg(&streams[*i]).arg(GROUP);
                    for id in ids {
                        pipe.arg(id);
                    }
                    pipe.ignore();
                }
                let _: () = pipe.query_async(&mut conn).await.expect("XACK");
                tally.acked(&seqs);
            }
        })
    };
    let senders = connect(url).await;
    let send = move |seq: u64, body: Vec<u8>| {
        let (mut conn, streams) = (senders.clone(), streams.clone());
        async move {
            let key = &streams[(seq % streams.len() as u64) as usize];
            let _: Value = redis::cmd("XADD")
                .arg(key)
                .arg("*")
                .arg("m")
                .arg(body)
                .query_async(&mut conn)
                .await
                .expect("XADD");
        }
    };
    let figures = measure(&load, &tally, &mut server, send).await;
    consumer.await.expect("raw consumer");
    figures
}

/// Warm-up, then the measured phase, through `send`; stops the consumer at the end.
async fn measure<F, Fut>(load: &Load, tally: &Arc<Tally>, server: &mut Server, send: F) -> Figures
where
    F: Fn(u64, Vec<u8>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    drive(load, tally, load.warmup, WARM, send.clone()).await;
    tally.wait_for(0, load.warmup).await;
    let meter = Meter::start(server).await;
    drive(load, tally, load.messages, MEASURED, send).await;
    tally.wait_for(1, load.messages).await;
    let figures = meter.finish(server, tally, load.messages).await;
    tally.stop.store(true, Ordering::Release);
    figures
}

/// mq's Redis backend on the same workload: `send`, one member `receive`s and `ack`s.
pub async fn mq(url: &str, prefix: &str, load: Load) -> Figures {
    let mut server = Server {
        conn: connect(url).await,
    };
    let broker = RedisBroker::connect(RedisConfig::new(url).prefix(prefix))
        .await
        .expect("connect the broker");
    broker
        .create_topic(TOPIC, load.queues)
        .await
        .expect("create topic");
    let member = broker
        .subscribe(Subscription::new(TOPIC, GROUP), ConsumerOptions::new())
        .await
        .expect("subscribe");
    member.assignment().await.expect("assignment");
    let tally = Arc::new(Tally::new(&load));
    let consumer = {
        let tally = tally.clone();
        tokio::spawn(async move {
            let member: Box<dyn Consumer> = member;
            while !tally.stop.load(Ordering::Acquire) {
                let got = member
                    .receive(load.batch, Duration::from_millis(20))
                    .await
                    .expect("receive");
                if got.is_empty() {
                    continue;
                }
                let seqs = tally.received(tally.now(), got.iter().map(|d| &d.message.body[..]));
                let receipts: Vec<_> = got.iter().map(|d| d.receipt.clone()).collect();
                member.ack(&receipts).await.expect("ack");
                tally.acked(&seqs);
            }
            member.close().await.expect("close");
        })
    };
    let b = broker.clone();
    let send = move |_seq: u64, body: Vec<u8>| {
        let b = b.clone();
        async move {
            b.send(Message::new(TOPIC, body), SendOptions::new())
                .await
                .expect("send");
        }
    };
    let figures = measure(&load, &tally, &mut server, send).await;
    consumer.await.expect("mq consumer");
    broker.shutdown().await.expect("shutdown");
    figures
}

/// A key prefix of one side of one run.
fn prefix(side: &str, run: usize) -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("mqbench-{side}-{}-{ms}-{run}", std::process::id())
}

/// Whether a Redis answers at `url`.
pub async fn reachable(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    let config = AsyncConnectionConfig::new().set_connection_timeout(Some(Duration::from_secs(2)));
    match client
        .get_multiplexed_async_connection_with_config(&config)
        .await
    {
        Ok(mut c) => redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .is_ok(),
        Err(_) => false,
    }
}

/// One run: the raw loop, then mq, each under a prefix of its own, deleted afterwards.
pub async fn run_once(url: &str, load: Load, run: usize) -> (Figures, Figures) {
    let mut server = Server {
        conn: connect(url).await,
    };
    let raw_prefix = prefix("raw", run);
    let raw_figures = raw(url, &raw_prefix, load).await;
    server.delete_prefix(&raw_prefix).await;
    let mq_prefix = prefix("mq", run);
    let mq_figures = mq(url, &mq_prefix, load).await;
    // Anything a background task wrote on its way out.
    server.delete_prefix(&mq_prefix).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.delete_prefix(&mq_prefix).await;
    let left = server.delete_prefix(&raw_prefix).await + server.delete_prefix(&mq_prefix).await;
    assert_eq!(left, 0, "keys left under {raw_prefix}:* or {mq_prefix}:*");
    (raw_figures, mq_figures)
}

fn line(side: &str, f: &Figures) -> String {
    format!(
        "{side} {:>7.0} msg/s  p50 {:>6.2} ms  p99 {:>7.2} ms  dup {}  cpu/msg: bench {:>5.2} us, redis-server {:>5.2} us  {:.3} commands/msg",
        f.rate, f.p50_ms, f.p99_ms, f.duplicates, f.cpu_us, f.server_cpu_us, f.commands_per_message()
    )
}

fn commands(side: &str, f: &Figures) {
    let mut rows: Vec<_> = f.commands.iter().collect();
    rows.sort_by_key(|(_, (_, usec))| std::cmp::Reverse(*usec));
    for (name, (calls, usec)) in rows {
        println!(
            "    {side} {name:<11} {:>8.4} calls/msg  {:>7.2} us/call  {:>6.3} us/msg",
            *calls as f64 / f.messages as f64,
            *usec as f64 / *calls as f64,
            *usec as f64 / f.messages as f64
        );
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[allow(dead_code)]
fn main() {
    let load = Load::from_env();
    let runs = env("MQ_BENCH_RUNS", 3usize).max(1);
    let url = env("MQ_BENCH_REDIS_URL", "redis://127.0.0.1:6379".to_owned());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if !rt.block_on(reachable(&url)) {
        println!("\n*** REDIS NOT REACHABLE at {url}: redis_raw measured nothing. Start redis-server or set MQ_BENCH_REDIS_URL. ***\n");
        return;
    }
    println!(
        "redis_raw: {} messages of {} B (+{} warm-up), {} senders, {} streams/queues, reads of {}, {runs} runs, {url}",
        load.messages, load.body, load.warmup, load.senders, load.queues, load.batch
    );
    // One side alone, for profiling it (`perf record -p`): no ratio then.
    if let Ok(side) = std::env::var("MQ_BENCH_SIDE") {
        for run in 1..=runs {
            let p = prefix(&side, run);
            let f = match side.as_str() {
                "raw" => rt.block_on(raw(&url, &p, load)),
                "mq" => rt.block_on(mq(&url, &p, load)),
                other => panic!("MQ_BENCH_SIDE={other:?}: raw or mq"),
            };
            rt.block_on(async {
                let mut server = Server {
                    conn: connect(&url).await,
                };
                tokio::time::sleep(Duration::from_millis(100)).await;
                server.delete_prefix(&p).await;
            });
            println!("run {run}: {}", line(&side, &f));
            commands(&side, &f);
        }
        return;
    }
    let mut all = Vec::new();
    for run in 1..=runs {
        let (r, m) = rt.block_on(run_once(&url, load, run));
        println!("run {run}: ratio mq / raw {:.3}", m.rate / r.rate);
        println!("  {}", line("raw", &r));
        println!("  {}", line("mq ", &m));
        commands("raw", &r);
        commands("mq ", &m);
        all.push((r, m));
    }
    let med = |g: &dyn Fn(&(Figures, Figures)) -> f64| median(all.iter().map(g).collect());
    let (raw_rate, mq_rate) = (med(&|p| p.0.rate), med(&|p| p.1.rate));
    let ratio = med(&|p| p.1.rate / p.0.rate);
    println!("median of {runs}:");
    println!(
        "  raw {raw_rate:.0} msg/s  p50 {:.2} ms  p99 {:.2} ms  {:.3} commands/msg",
        med(&|p| p.0.p50_ms),
        med(&|p| p.0.p99_ms),
        med(&|p| p.0.commands_per_message())
    );
    println!(
        "  mq  {mq_rate:.0} msg/s  p50 {:.2} ms  p99 {:.2} ms  {:.3} commands/msg",
        med(&|p| p.1.p50_ms),
        med(&|p| p.1.p99_ms),
        med(&|p| p.1.commands_per_message())
    );
    println!(
        "  ratio mq / raw: {ratio:.3} (median of the per-run ratios; ratio of the medians {:.3})",
        mq_rate / raw_rate
    );
    println!(
        "goal (issue 13): mq >= 100,000 msg/s: {}; mq >= 0.9x raw: {}",
        if mq_rate >= 100_000.0 {
            "met"
        } else {
            "NOT met"
        },
        if ratio >= 0.9 { "met" } else { "NOT met" }
    );
}

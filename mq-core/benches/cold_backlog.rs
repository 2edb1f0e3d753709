//! A cold backlog (issue 13): a new group with `consume-from: first` drains millions of 1 KiB
//! messages that were written before the broker was restarted, against the hot-path rate of
//! the same run, with the process's resident memory sampled as it goes.
//!
//! Phases, in one process:
//! 1. **Hot**: a fresh broker (async flush, 4 queues); `MQ_BENCH_HOT_SENDERS` senders (default
//!    256) call `Broker::send` while one consumer receives up to 256 and acks them in one call,
//!    as `throughput.rs` does. The hot rate is messages handled over the time from the first
//!    send to the last handled message: send -> receive -> ack with the consumer keeping up.
//! 2. **Fill**: another fresh broker, the same settings; `MQ_BENCH_SENDERS` senders (default
//!    16), each pinned to one queue, send `send_batch`es of `MQ_BENCH_SEND_BATCH` (default 64)
//!    as fast as they go, until `MQ_BENCH_MESSAGES` (default 10,000,000) are stored. The broker
//!    is then shut down, and every file of its data directory is dropped from the page cache
//!    (`dd iflag=nocache count=0`, which calls `posix_fadvise(DONTNEED)`; `MQ_BENCH_DROP_CACHE=0`
//!    keeps them), so that the broker reopens with nothing of the backlog in memory.
//! 3. **Cold**: the broker reopens; a new group subscribes with `ConsumeFrom::First`; one
//!    consumer receives up to 256 and acks each batch in one call until everything is read.
//!    The rate and `VmRSS` are reported at every tenth of the backlog (every million of 10M).
//!
//! Every message carries (sender, sequence, queue) in its body, and the cold phase checks each
//! delivery against what must come next: per queue the next offset, per sender the next
//! sequence, the queue it was sent to, its length and its last bytes. A lost, repeated,
//! reordered or damaged message panics at once; so does a corruption report or a delivery past
//! the end.
//!
//! Knobs (environment): `MQ_BENCH_MESSAGES`, `MQ_BENCH_HOT_MESSAGES` (default 1,000,000, at
//! most `MQ_BENCH_MESSAGES`), `MQ_BENCH_BODY` (default 1024), `MQ_BENCH_QUEUES` (default 4),
//! `MQ_BENCH_SENDERS`, `MQ_BENCH_SEND_BATCH`, `MQ_BENCH_HOT_SENDERS`, `MQ_BENCH_BATCH` (receive
//! batch, default 256), `MQ_BENCH_DROP_CACHE` (default 1), `MQ_BENCH_WORKERS` (tokio workers,
//! default: the core count), `MQ_BENCH_DIR` (parent of the data dirs, default the system
//! temp dir; 10M messages need about 11 GB there). The data is deleted at the end.
//!
//! Run with `cargo bench -p mq-core --bench cold_backlog`.

// A benchmark has nothing better to do on failure than abort with the message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mq_core::embedded::{EmbeddedBroker, EmbeddedConfig};
use mq_core::{Broker, ConsumeFrom, ConsumerOptions, Delivery, Message, SendOptions, Subscription};

const TOPIC: &str = "backlog";
const HOT_TOPIC: &str = "hot";
/// Fills the body after the header, so that a body read from the wrong place shows.
const FILLER: u8 = 0x5a;

/// What one invocation does.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Messages in the backlog.
    pub messages: u64,
    /// Messages of the hot phase.
    pub hot_messages: u64,
    /// Body length, at least 32.
    pub body: usize,
    /// Queues of each topic.
    pub queues: u32,
    /// Fill senders, each pinned to queue `k % queues`.
    pub senders: usize,
    /// Messages per `send_batch` of the fill.
    pub send_batch: usize,
    /// Senders of the hot phase (one message per send).
    pub hot_senders: usize,
    /// Receive batch of both consumers.
    pub batch: usize,
    /// Drop the data files from the page cache before reopening.
    pub drop_cache: bool,
    /// Parent of the data directories.
    pub dir: PathBuf,
    /// Print progress lines.
    pub verbose: bool,
}

impl Settings {
    /// The settings named by the environment.
    pub fn from_env() -> Self {
        use common::env;
        let messages = env("MQ_BENCH_MESSAGES", 10_000_000u64).max(1);
        Settings {
            messages,
            hot_messages: env("MQ_BENCH_HOT_MESSAGES", 1_000_000u64).clamp(1, messages),
            body: env("MQ_BENCH_BODY", 1024usize).max(32),
            queues: env("MQ_BENCH_QUEUES", 4u32).max(1),
            senders: env("MQ_BENCH_SENDERS", 16usize).max(1),
            send_batch: env("MQ_BENCH_SEND_BATCH", 64usize).max(1),
            hot_senders: env("MQ_BENCH_HOT_SENDERS", 256usize).max(1),
            batch: env("MQ_BENCH_BATCH", 256usize).max(1),
            drop_cache: env("MQ_BENCH_DROP_CACHE", 1u8) != 0,
            dir: std::env::var_os("MQ_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from),
            verbose: true,
        }
    }
}

/// One tenth (or the last part) of the cold drain.
#[derive(Debug, Clone)]
pub struct Mark {
    /// Messages consumed at this mark.
    pub consumed: u64,
    /// Rate since the mark before, msg/s.
    pub rate: f64,
    /// `VmRSS` at this mark, KiB.
    pub rss_kib: u64,
}

/// The figures of one invocation.
#[derive(Debug, Clone)]
pub struct Report {
    /// Hot path, msg/s.
    pub hot_rate: f64,
    /// Fill, msg/s.
    pub fill_rate: f64,
    /// Bytes of the backlog's data directory.
    pub data_bytes: u64,
    /// Page cache released by dropping the data files, bytes (0 when not asked).
    pub dropped_cache_bytes: u64,
    /// Time to reopen the filled broker.
    pub reopen: Duration,
    /// Cold drain, msg/s overall.
    pub cold_rate: f64,
    /// `VmRSS` just after the reopen, KiB.
    pub rss_open_kib: u64,
    /// Bytes the cold drain read through system calls, per message.
    pub read_per_message: f64,
    /// Bytes the cold drain fetched from storage (not the page cache), per message.
    pub disk_per_message: f64,
    /// Rate and RSS at every tenth of the drain.
    pub marks: Vec<Mark>,
}

impl Report {
    /// Cold rate over hot rate.
    pub fn ratio(&self) -> f64 {
        self.cold_rate / self.hot_rate
    }
}

/// The process's resident set, KiB.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// `rchar` (bytes read by system calls) and `read_bytes` (bytes fetched from storage) of
/// /proc/self/io.
pub fn io_read() -> (u64, u64) {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let get = |name: &str| {
        io.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (get("rchar:"), get("read_bytes:"))
}

/// `Cached:` of /proc/meminfo, bytes.
fn page_cache_bytes() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("Cached:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |k| k * 1024)
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("list data dir") {
        let path = entry.expect("list data dir").path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// Asks the kernel to drop every file under `dir` from the page cache; returns how much the
/// page cache shrank. `dd iflag=nocache count=0` is `posix_fadvise(POSIX_FADV_DONTNEED)` on
/// the whole file, without a libc dependency; the broker synced the files at shutdown, so no
/// dirty page stays behind.
fn drop_from_page_cache(dir: &Path) -> u64 {
    let before = page_cache_bytes();
    let mut files = Vec::new();
    files_under(dir, &mut files);
    for f in &files {
        let status = std::process::Command::new("dd")
            .arg(format!("if={}", f.display()))
            .args(["iflag=nocache", "count=0", "status=none"])
            .status()
            .expect("run dd");
        assert!(
            status.success(),
            "dd iflag=nocache failed on {}",
            f.display()
        );
    }
    before.saturating_sub(page_cache_bytes())
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut files = Vec::new();
    files_under(dir, &mut files);
    files
        .iter()
        .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
        .sum()
}

/// The body of message `seq` of `sender`, bound for `queue`.
fn body(len: usize, sender: u64, seq: u64, queue: u32) -> Vec<u8> {
    let mut b = vec![FILLER; len];
    b[0..8].copy_from_slice(&sender.to_le_bytes());
    b[8..16].copy_from_slice(&seq.to_le_bytes());
    b[16..24].copy_from_slice(&u64::from(queue).to_le_bytes());
    b[len - 8..].copy_from_slice(&(!seq).to_le_bytes());
    b
}

fn field(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

async fn open(dir: &Path) -> Arc<EmbeddedBroker> {
    EmbeddedBroker::open(EmbeddedConfig::new(dir))
        .await
        .expect("open broker")
}

/// Phase 1: send -> receive -> ack with the consumer keeping up, as `throughput.rs` measures
/// it. Returns msg/s from the first send to the last message handled.
pub async fn hot(settings: &Settings, parent: &Path) -> f64 {
    let dir = parent.join("hot");
    let broker = open(&dir).await;
    broker
        .create_topic(HOT_TOPIC, settings.queues)
        .await
        .expect("create topic");
    let consumer = broker
        .subscribe(
            Subscription::new(HOT_TOPIC, "hot-group"),
            ConsumerOptions::new().instance("hot-0"),
        )
        .await
        .expect("subscribe");
    let total = settings.hot_messages;
    let start = Instant::now();
    let claimed = Arc::new(AtomicU64::new(0));
    let senders: Vec<_> = (0..settings.hot_senders)
        .map(|_| {
            let broker = broker.clone();
            let claimed = claimed.clone();
            let len = settings.body;
            tokio::spawn(async move {
                loop {
                    let n = claimed.fetch_add(1, Ordering::Relaxed);
                    if n >= total {
                        break;
                    }
                    broker
                        .send(
                            Message::new(HOT_TOPIC, body(len, 0, n, 0)),
                            SendOptions::new(),
                        )
                        .await
                        .expect("send");
                }
            })
        })
        .collect();
    let batch = settings.batch;
    let drain = tokio::spawn(async move {
        let mut handled = 0u64;
        let mut last = Instant::now();
        let mut seen = Instant::now();
        let mut receipts = Vec::with_capacity(batch);
        while handled < total {
            let got = consumer
                .receive(batch, Duration::from_millis(100))
                .await
                .expect("receive");
            if got.is_empty() {
                assert!(
                    seen.elapsed() < Duration::from_secs(30),
                    "hot: only {handled} of {total} messages handled, none for 30 s"
                );
                continue;
            }
            seen = Instant::now();
            receipts.clear();
            receipts.extend(got.iter().map(|d| d.receipt.clone()));
            consumer.ack(&receipts).await.expect("ack");
            handled += got.len() as u64;
            last = Instant::now();
        }
        consumer.close().await.expect("close");
        assert_eq!(handled, total, "hot: handled more than was sent");
        last
    });
    for s in senders {
        s.await.expect("hot sender");
    }
    let last = drain.await.expect("hot consumer");
    broker.shutdown().await.expect("shutdown");
    drop(broker);
    std::fs::remove_dir_all(&dir).expect("remove hot data");
    total as f64 / last.duration_since(start).as_secs_f64()
}

/// Phase 2: the backlog, as fast as the senders go. Returns msg/s.
async fn fill(settings: &Settings, dir: &Path) -> f64 {
    let broker = open(dir).await;
    broker
        .create_topic(TOPIC, settings.queues)
        .await
        .expect("create topic");
    let start = Instant::now();
    let n = settings.senders as u64;
    let tasks: Vec<_> = (0..n)
        .map(|k| {
            let broker = broker.clone();
            // Sender k sends messages k, k + n, k + 2n, ... of the backlog, numbered 0, 1, 2, ...
            let count = settings.messages / n + u64::from(k < settings.messages % n);
            let queue = (k % u64::from(settings.queues)) as u32;
            let (len, batch) = (settings.body, settings.send_batch as u64);
            tokio::spawn(async move {
                let mut seq = 0;
                while seq < count {
                    let end = (seq + batch).min(count);
                    let messages = (seq..end)
                        .map(|s| Message::new(TOPIC, body(len, k, s, queue)))
                        .collect();
                    broker
                        .send_batch(messages, SendOptions::queue(queue))
                        .await
                        .expect("send batch");
                    seq = end;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("fill sender");
    }
    let rate = settings.messages as f64 / start.elapsed().as_secs_f64();
    broker.shutdown().await.expect("shutdown");
    rate
}

/// What the cold drain must see next.
struct Expect {
    body: usize,
    senders: u64,
    queues: u32,
    /// Next offset of each queue.
    offsets: Vec<u64>,
    /// Next sequence of each sender.
    seqs: Vec<u64>,
    /// What lies between the header and the trailer of every body.
    filler: Vec<u8>,
}

impl Expect {
    fn check(&mut self, d: &Delivery) {
        let m = &d.message;
        let b = &m.body;
        assert_eq!(m.topic, TOPIC, "a delivery of another topic");
        assert_eq!(
            b.len(),
            self.body,
            "queue {} offset {}: body length",
            m.queue_id,
            m.queue_offset
        );
        let q = m.queue_id as usize;
        assert!(q < self.offsets.len(), "queue {q} does not exist");
        assert_eq!(
            m.queue_offset, self.offsets[q],
            "queue {q}: offset {} delivered where {} comes next (lost, repeated or out of order)",
            m.queue_offset, self.offsets[q]
        );
        self.offsets[q] += 1;
        let (sender, seq, queue) = (field(b, 0), field(b, 8), field(b, 16));
        assert!(
            sender < self.senders,
            "queue {q} offset {}: sender {sender}",
            m.queue_offset
        );
        assert_eq!(
            queue,
            sender % u64::from(self.queues),
            "message of sender {sender} on the wrong queue"
        );
        assert_eq!(
            queue, q as u64,
            "message of queue {queue} delivered on queue {q}"
        );
        let next = &mut self.seqs[sender as usize];
        assert_eq!(
            seq, *next,
            "sender {sender}: message {seq} delivered where {} comes next",
            *next
        );
        *next += 1;
        assert_eq!(
            field(b, b.len() - 8),
            !seq,
            "sender {sender} message {seq}: body damaged"
        );
        // One slice comparison (memcmp), so that the check costs little beside the read.
        assert!(
            b[24..b.len() - 8] == self.filler[..],
            "sender {sender} message {seq}: body damaged"
        );
    }
}

/// Phase 3: reopen and drain with a new group from the first offset.
async fn cold(settings: &Settings, dir: &Path, report: &mut Report) {
    let opened = Instant::now();
    let broker = open(dir).await;
    report.reopen = opened.elapsed();
    report.rss_open_kib = rss_kib();
    let consumer = broker
        .subscribe(
            Subscription::new(TOPIC, "cold-group"),
            ConsumerOptions::new()
                .instance("cold-0")
                .consume_from(ConsumeFrom::First),
        )
        .await
        .expect("subscribe");
    let total = settings.messages;
    let mut expect = Expect {
        body: settings.body,
        senders: settings.senders as u64,
        queues: settings.queues,
        offsets: vec![0; settings.queues as usize],
        seqs: vec![0; settings.senders],
        filler: vec![FILLER; settings.body - 32],
    };
    let step = (total / 10).max(1);
    let mut next_mark = step.min(total);
    let io_start = io_read();
    let start = Instant::now();
    let mut mark_at = (start, 0u64);
    let mut consumed = 0u64;
    let mut seen = Instant::now();
    let mut receipts = Vec::with_capacity(settings.batch);
    while consumed < total {
        let got = consumer
            .receive(settings.batch, Duration::from_millis(100))
            .await
            .expect("receive");
        if got.is_empty() {
            assert!(
                seen.elapsed() < Duration::from_secs(30),
                "cold: only {consumed} of {total} messages delivered, none for 30 s"
            );
            continue;
        }
        seen = Instant::now();
        receipts.clear();
        for d in &got {
            expect.check(d);
            receipts.push(d.receipt.clone());
        }
        consumer.ack(&receipts).await.expect("ack");
        consumed += got.len() as u64;
        assert!(
            consumed <= total,
            "cold: {consumed} delivered of {total} sent"
        );
        if consumed >= next_mark {
            let now = Instant::now();
            let mark = Mark {
                consumed,
                rate: (consumed - mark_at.1) as f64 / now.duration_since(mark_at.0).as_secs_f64(),
                rss_kib: rss_kib(),
            };
            if settings.verbose {
                println!(
                    "cold: {:>10} consumed, {:>8.0} msg/s since the last mark, VmRSS {:>7.1} MiB",
                    mark.consumed,
                    mark.rate,
                    mark.rss_kib as f64 / 1024.0
                );
            }
            report.marks.push(mark);
            mark_at = (now, consumed);
            next_mark = (next_mark + step).min(total);
        }
    }
    report.cold_rate = total as f64 / start.elapsed().as_secs_f64();
    let io_end = io_read();
    report.read_per_message = io_end.0.saturating_sub(io_start.0) as f64 / total as f64;
    report.disk_per_message = io_end.1.saturating_sub(io_start.1) as f64 / total as f64;
    let extra = consumer
        .receive(settings.batch, Duration::from_millis(200))
        .await
        .expect("receive");
    assert!(
        extra.is_empty(),
        "cold: {} deliveries past the end",
        extra.len()
    );
    let n = settings.senders as u64;
    for (k, &seq) in expect.seqs.iter().enumerate() {
        let k = k as u64;
        let count = total / n + u64::from(k < total % n);
        assert_eq!(
            seq, count,
            "sender {k}: {seq} of {count} messages delivered"
        );
    }
    let corrupt = broker.corruptions();
    assert!(corrupt.is_empty(), "corruption reported: {corrupt:?}");
    consumer.close().await.expect("close");
    broker.shutdown().await.expect("shutdown");
}

/// Runs the three phases under `settings.dir` and deletes the data.
pub async fn run(settings: &Settings) -> Report {
    let parent = tempfile::Builder::new()
        .prefix("mq-cold-")
        .tempdir_in(&settings.dir)
        .expect("temp dir");
    let mut report = Report {
        hot_rate: 0.0,
        fill_rate: 0.0,
        data_bytes: 0,
        dropped_cache_bytes: 0,
        reopen: Duration::ZERO,
        cold_rate: 0.0,
        rss_open_kib: 0,
        read_per_message: 0.0,
        disk_per_message: 0.0,
        marks: Vec::new(),
    };
    report.hot_rate = hot(settings, parent.path()).await;
    if settings.verbose {
        println!(
            "hot: {} msgs, {:.0} msg/s (send -> receive -> ack)",
            settings.hot_messages, report.hot_rate
        );
    }
    let dir = parent.path().join("backlog");
    report.fill_rate = fill(settings, &dir).await;
    report.data_bytes = dir_bytes(&dir);
    if settings.drop_cache {
        report.dropped_cache_bytes = drop_from_page_cache(&dir);
    }
    if settings.verbose {
        println!(
            "fill: {} msgs, {:.0} msg/s, {:.2} GiB on disk, {:.2} GiB dropped from the page cache; VmRSS {:.1} MiB",
            settings.messages,
            report.fill_rate,
            report.data_bytes as f64 / (1u64 << 30) as f64,
            report.dropped_cache_bytes as f64 / (1u64 << 30) as f64,
            rss_kib() as f64 / 1024.0
        );
    }
    cold(settings, &dir, &mut report).await;
    drop(parent);
    report
}

#[allow(dead_code)]
fn main() {
    let settings = Settings::from_env();
    let workers = common::env(
        "MQ_BENCH_WORKERS",
        std::thread::available_parallelism().map_or(2, |n| n.get()),
    )
    .max(1);
    println!("machine: {}", common::machine());
    println!(
        "settings: {} msgs of {} B, {} queues; hot: {} msgs, {} senders; fill: {} senders x \
         send_batch {}; receive batch {}; drop page cache: {}; {} tokio workers; data under {}",
        settings.messages,
        settings.body,
        settings.queues,
        settings.hot_messages,
        settings.hot_senders,
        settings.senders,
        settings.send_batch,
        settings.batch,
        settings.drop_cache,
        workers,
        settings.dir.display()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let r = runtime.block_on(run(&settings));
    println!();
    println!(
        "reopen {:.0} ms, VmRSS after reopen {:.1} MiB; the drain read {:.0} B per message \
         through system calls, {:.0} B of it from storage",
        r.reopen.as_secs_f64() * 1e3,
        r.rss_open_kib as f64 / 1024.0,
        r.read_per_message,
        r.disk_per_message
    );
    println!("| consumed | msg/s since the mark before | VmRSS (MiB) |");
    println!("|---|---|---|");
    for m in &r.marks {
        println!(
            "| {} | {:.0} | {:.1} |",
            m.consumed,
            m.rate,
            m.rss_kib as f64 / 1024.0
        );
    }
    println!();
    println!(
        "fill {:.0} msg/s | hot {:.0} msg/s | cold {:.0} msg/s | cold / hot {:.3} (target >= 0.8)",
        r.fill_rate,
        r.hot_rate,
        r.cold_rate,
        r.ratio()
    );
}

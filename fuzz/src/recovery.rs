//! Target `recovery`: damage a valid data directory, reopen the broker, drain every queue.
//!
//! A small data directory is built once per process (three topics of 4, 2 and 1 queues,
//! plain, batched, transactional, delayed-and-due and delayed-for-an-hour messages, a group
//! that acked some and nacked some, a clean shutdown). Each input is a list of damage
//! operations, 7 bytes each: `kind, file, at (u24 LE), n, value`; `file` picks any file under
//! the data directory (sorted paths, modulo their count). The input's damage is applied to a
//! copy, the broker reopened, one message more sent to every topic, and every topic drained
//! by a new group from the first offset. Then:
//! - nothing panics and nothing hangs (every wait is bounded);
//! - every body served is one that was sent (bodies carry their own CRC);
//! - nothing delayed for an hour is served;
//! - every message whose commit-log record is byte for byte intact is served, and so are
//!   the messages sent after the reopen;
//! - if anything was lost, `corruptions()` is not empty (or open refused with an error that
//!   names a damaged configuration file).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use mq_core::embedded::{EmbeddedBroker, EmbeddedConfig};
use mq_core::fuzzing;
use mq_core::{
    Broker, ConsumeFrom, Consumer, ConsumerOptions, Delay, Failure, Message, SendOptions,
    Subscription, TxState,
};

/// Topics and their queue counts.
const TOPICS: [(&str, u32); 3] = [("fz-a", 4), ("fz-b", 2), ("fz-c", 1)];
/// Plain messages in the base directory.
const PLAIN: u64 = 360;
/// Messages delayed a little, already due (and moved to their topic) before the shutdown.
const DUE_DELAYED: u64 = 30;
/// Transactional messages, committed.
const TX: u64 = 6;
/// Messages delayed for an hour: never served during a case.
const PENDING: u64 = 12;
/// At most this many damage operations per input.
const MAX_OPS: usize = 4;
/// Bound on opening, on draining all topics, and on shutting down.
const OPEN_WAIT: Duration = Duration::from_secs(3);
const DRAIN_WAIT: Duration = Duration::from_secs(3);

fn config(dir: &Path) -> EmbeddedConfig {
    EmbeddedConfig::new(dir)
        .max_message_size(2048)
        .segment_size(2048 + 64 * 1024)
        .consume_queue_entries(16)
        .default_queues(4)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Due,
    Pending,
}

#[derive(Debug)]
struct Sent {
    topic: &'static str,
    body: Vec<u8>,
    kind: Kind,
}

/// Where a record lives: file relative to the data directory, byte range.
#[derive(Debug, Clone)]
struct Extent {
    file: PathBuf,
    start: usize,
    end: usize,
}

struct Base {
    // Kept alive for the whole process; removed when the process ends normally.
    _dir: tempfile::TempDir,
    /// Every file, relative to `root`, sorted, with its bytes.
    files: Vec<(PathBuf, Vec<u8>)>,
    sent: BTreeMap<u64, Sent>,
    /// The last commit-log record of every sequence number (the one a reader serves).
    extent: HashMap<u64, Extent>,
}

/// A body that carries its own checksum: `topic|seq|filler|crc32c-hex`.
fn body(topic: &str, seq: u64) -> Vec<u8> {
    let fill = 40 + (seq * 37 % 260) as usize;
    let filler: String = (0..fill)
        .map(|i| (b'a' + ((seq as usize + i * 7) % 26) as u8) as char)
        .collect();
    let head = format!("{topic}|{seq:06}|{filler}|");
    let crc = crc32c::crc32c(head.as_bytes());
    format!("{head}{crc:08x}").into_bytes()
}

/// The sequence number of a body whose checksum holds, else `None`.
fn parse(body: &[u8]) -> Option<(String, u64)> {
    let text = std::str::from_utf8(body).ok()?;
    let (head, crc) = text.split_at(text.len().checked_sub(8)?);
    if u32::from_str_radix(crc, 16).ok()? != crc32c::crc32c(head.as_bytes()) {
        return None;
    }
    let mut parts = head.split('|');
    let topic = parts.next()?.to_owned();
    let seq = parts.next()?.parse().ok()?;
    Some((topic, seq))
}

/// Where case directories go: `MQ_FUZZ_TMP`, else `/dev/shm` (fsync costs nothing there),
/// else the system temp directory.
fn scratch() -> PathBuf {
    if let Some(dir) = std::env::var_os("MQ_FUZZ_TMP") {
        return dir.into();
    }
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(build)
}

/// Prefix of this process's directories: `mq-fuzz-<pid>-`.
fn prefix() -> String {
    format!("mq-fuzz-{}-", std::process::id())
}

/// Removes what processes that died on a finding left behind (they exit without cleaning).
fn sweep(scratch: &Path) {
    let Ok(entries) = std::fs::read_dir(scratch) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("mq-fuzz-")
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn build() -> Base {
    sweep(&scratch());
    let dir = tempfile::Builder::new()
        .prefix(&format!("{}base-", prefix()))
        .tempdir_in(scratch())
        .expect("tempdir");
    let root = dir.path().to_owned();
    let mut sent = BTreeMap::new();
    runtime().block_on(async {
        let broker = EmbeddedBroker::open(config(&root))
            .await
            .expect("open base");
        for (t, q) in TOPICS {
            broker.create_topic(t, q).await.expect("create topic");
        }
        let mut seq = 0u64;
        let mut next = |topic: &'static str, kind: Kind, sent: &mut BTreeMap<u64, Sent>| {
            seq += 1;
            let b = body(topic, seq);
            sent.insert(
                seq,
                Sent {
                    topic,
                    body: b.clone(),
                    kind,
                },
            );
            Message::new(topic, b)
        };
        let mut i = 0u64;
        while i < PLAIN {
            let (topic, queues) = TOPICS[(i % 5).min(2) as usize];
            let q = (i / 3 % queues as u64) as u32;
            if i.is_multiple_of(40) {
                let batch: Vec<Message> =
                    (0..5).map(|_| next(topic, Kind::Due, &mut sent)).collect();
                broker
                    .send_batch(batch, SendOptions::queue(q))
                    .await
                    .expect("send batch");
                i += 5;
            } else {
                let m = next(topic, Kind::Due, &mut sent);
                broker.send(m, SendOptions::queue(q)).await.expect("send");
                i += 1;
            }
        }
        for i in 0..DUE_DELAYED {
            let (topic, queues) = TOPICS[(i % 3) as usize];
            let m = next(topic, Kind::Due, &mut sent);
            let opts = SendOptions::queue((i % queues as u64) as u32)
                .delayed(Delay::After(Duration::from_millis(20)));
            broker.send(m, opts).await.expect("send delayed");
        }
        let until = Instant::now() + Duration::from_secs(20);
        while broker.pending_delays() > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(broker.pending_delays(), 0, "short delays never came due");
        for _ in 0..TX {
            let m = next("fz-b", Kind::Due, &mut sent);
            let p = broker
                .prepare(m, SendOptions::new(), "fz-producer")
                .await
                .expect("prepare");
            broker
                .end_transaction(&p.transaction, TxState::Commit)
                .await
                .expect("commit");
        }
        // A group with progress, acks and retries scheduled an hour out.
        let old = broker
            .subscribe(
                Subscription::new("fz-a", "fz-old"),
                ConsumerOptions::new().consume_from(ConsumeFrom::First),
            )
            .await
            .expect("subscribe old");
        let got = old
            .receive(40, Duration::from_secs(2))
            .await
            .expect("receive");
        for (n, d) in got.iter().enumerate() {
            if n % 4 == 3 {
                old.nack(
                    &d.receipt,
                    Failure::retry_after("fuzz", Duration::from_secs(3600)),
                )
                .await
                .expect("nack");
            } else {
                old.ack(std::slice::from_ref(&d.receipt))
                    .await
                    .expect("ack");
            }
        }
        for i in 0..PENDING {
            let (topic, queues) = TOPICS[(i % 3) as usize];
            let m = next(topic, Kind::Pending, &mut sent);
            let opts = SendOptions::queue((i % queues as u64) as u32)
                .delayed(Delay::After(Duration::from_secs(3600)));
            broker.send(m, opts).await.expect("send pending");
        }
        old.close().await.expect("close old");
        broker.shutdown().await.expect("shutdown base");
    });
    let mut files = Vec::new();
    list(&root, &root, &mut files);
    files.sort();
    let files: Vec<(PathBuf, Vec<u8>)> = files
        .into_iter()
        .map(|rel| {
            let bytes = std::fs::read(root.join(&rel)).expect("read base file");
            (rel, bytes)
        })
        .collect();
    let mut extent = HashMap::new();
    for (rel, bytes) in &files {
        if !rel.starts_with("commitlog") {
            continue;
        }
        let mut at = 0;
        while let Ok(rec) = fuzzing::decode(&bytes[at..]) {
            // Retries are copies under the group's retry topic; the record a new group is
            // served is the last one under the message's own topic.
            let own = parse(&rec.message.body)
                .filter(|(_, seq)| sent.get(seq).is_some_and(|s| s.topic == rec.message.topic));
            if let Some((_, seq)) = own {
                extent.insert(
                    seq,
                    Extent {
                        file: rel.clone(),
                        start: at,
                        end: at + rec.len,
                    },
                );
            }
            at += rec.len;
        }
        assert_eq!(
            at,
            bytes.len(),
            "base segment {} does not frame",
            rel.display()
        );
    }
    for (seq, s) in &sent {
        if s.kind == Kind::Due {
            assert!(
                extent.contains_key(seq),
                "message {seq} not in the base log"
            );
        }
    }
    if std::env::var_os("MQ_FUZZ_TRACE").is_some() {
        for (i, (f, b)) in files.iter().enumerate() {
            eprintln!("base file {i}: {} ({} bytes)", f.display(), b.len());
        }
    }
    Base {
        _dir: dir,
        files,
        sent,
        extent,
    }
}

fn list(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let path = e.expect("dir entry").path();
        if path.is_dir() {
            list(root, &path, out);
        } else {
            out.push(path.strip_prefix(root).expect("under root").to_owned());
        }
    }
}

/// One damage operation, decoded from 7 input bytes.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    /// XOR `n` bytes from `at` with `value` (0 counts as 0xff).
    Flip { at: usize, n: usize, value: u8 },
    /// Overwrite 4 bytes at `at` with a little-endian value from a table of sizes.
    Word { at: usize, value: u32 },
    /// Cut the file at `at`.
    Cut { at: usize },
    /// Append `n * 16` bytes: zeros, or garbage from `value`.
    Extend { n: usize, value: u8 },
    /// Delete the file.
    Delete,
    /// Delete the file's directory (not the data directory itself).
    DeleteDir,
}

const WORDS: [u32; 8] = [
    0,
    1,
    72,
    0x7fff_ffff,
    0xffff_ffff,
    0x1000_0000,
    0xffff,
    0x0001_0000,
];

/// The damage an input describes: (file index into `Base::files`, operation).
fn decode_ops(data: &[u8], files: &[(PathBuf, Vec<u8>)]) -> Vec<(usize, Op)> {
    data.chunks_exact(7)
        .take(MAX_OPS)
        .map(|c| {
            let file = c[1] as usize % files.len();
            let len = files[file].1.len();
            let raw = u32::from_le_bytes([c[2], c[3], c[4], 0]) as usize;
            let at = raw % (len + 1);
            let op = match c[0] % 8 {
                0 | 1 => Op::Flip {
                    at,
                    n: 1 + c[5] as usize % 8,
                    value: if c[6] == 0 { 0xff } else { c[6] },
                },
                2 => Op::Word {
                    at,
                    value: WORDS[c[6] as usize % WORDS.len()],
                },
                3 => Op::Cut { at },
                4 => Op::Extend {
                    n: 1 + c[5] as usize,
                    value: c[6],
                },
                5 | 6 => Op::Delete,
                _ => Op::DeleteDir,
            };
            (file, op)
        })
        .collect()
}

/// Applies `ops` to the copy at `root`; returns the damaged files (relative paths).
fn apply(root: &Path, files: &[(PathBuf, Vec<u8>)], ops: &[(usize, Op)]) -> BTreeSet<PathBuf> {
    let mut damaged = BTreeSet::new();
    for &(i, op) in ops {
        let rel = &files[i].0;
        let path = root.join(rel);
        match op {
            Op::Delete => {
                if std::fs::remove_file(&path).is_ok() {
                    damaged.insert(rel.clone());
                }
                continue;
            }
            Op::DeleteDir => {
                let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) else {
                    continue;
                };
                if std::fs::remove_dir_all(root.join(parent)).is_ok() {
                    for (f, _) in files {
                        if f.starts_with(parent) {
                            damaged.insert(f.clone());
                        }
                    }
                }
                continue;
            }
            _ => {}
        }
        let Ok(mut bytes) = std::fs::read(&path) else {
            continue; // deleted by an earlier operation
        };
        match op {
            Op::Flip { at, n, value } => {
                for b in bytes.iter_mut().skip(at).take(n) {
                    *b ^= value;
                }
            }
            Op::Word { at, value } => {
                for (b, v) in bytes.iter_mut().skip(at).zip(value.to_le_bytes()) {
                    *b = v;
                }
            }
            Op::Cut { at } => bytes.truncate(at),
            Op::Extend { n, value } => {
                let mut x = u32::from(value) | 1;
                bytes.extend((0..n * 16).map(|_| {
                    if value.is_multiple_of(2) {
                        0
                    } else {
                        // xorshift: cheap garbage
                        x ^= x << 13;
                        x ^= x >> 17;
                        x ^= x << 5;
                        x as u8
                    }
                }));
            }
            Op::Delete | Op::DeleteDir => unreachable!("handled above"),
        }
        std::fs::write(&path, &bytes).expect("write damaged file");
        damaged.insert(rel.clone());
    }
    damaged
}

/// Whether the record of `e` is byte for byte what the base wrote.
fn intact(
    root: &Path,
    e: &Extent,
    base: &Base,
    cache: &mut HashMap<PathBuf, Option<Vec<u8>>>,
) -> bool {
    let now = cache
        .entry(e.file.clone())
        .or_insert_with(|| std::fs::read(root.join(&e.file)).ok());
    let Some(now) = now else { return false };
    let Some((_, was)) = base.files.iter().find(|(f, _)| *f == e.file) else {
        return false;
    };
    now.get(e.start..e.end) == Some(&was[e.start..e.end])
}

/// Runs one input; panics on any broken property.
pub fn run(data: &[u8]) {
    let base = base();
    run_ops(base, decode_ops(data, &base.files));
}

/// Runs the damage `ops` names by path (relative to the data directory), the way the
/// regression tests state a finding so that it survives changes to the directory's layout.
pub fn run_named(ops: &[(&str, Op)]) {
    let base = base();
    let ops = ops
        .iter()
        .map(|(path, op)| {
            let i = base
                .files
                .iter()
                .position(|(f, _)| f == Path::new(path))
                .unwrap_or_else(|| {
                    panic!(
                        "no {path} in the base directory: {:?}",
                        base.files.iter().map(|f| &f.0).collect::<Vec<_>>()
                    )
                });
            (i, *op)
        })
        .collect();
    run_ops(base, ops);
}

fn run_ops(base: &Base, ops: Vec<(usize, Op)>) {
    let dir = tempfile::Builder::new()
        .prefix(&format!("{}case-", prefix()))
        .tempdir_in(scratch())
        .expect("tempdir");
    let root = dir.path().to_owned();
    for (rel, bytes) in &base.files {
        let path = root.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&path, bytes).expect("copy base file");
    }
    let damaged = apply(&root, &base.files, &ops);
    let mut cache = HashMap::new();
    // Read the damaged log before the broker touches it (recovery may cut a torn tail).
    let intact: BTreeSet<u64> = base
        .extent
        .iter()
        .filter(|(_, e)| intact(&root, e, base, &mut cache))
        .map(|(seq, _)| *seq)
        .collect();
    let what = || format!("damage {ops:?} to {damaged:?}");

    let t0 = Instant::now();
    let trace = std::env::var_os("MQ_FUZZ_TRACE").is_some();
    let rt = runtime();
    rt.block_on(async {
        let opened =
            match tokio::time::timeout(OPEN_WAIT, EmbeddedBroker::open(config(&root))).await {
                Ok(r) => r,
                Err(_) => panic!("open hung for {OPEN_WAIT:?} after {}", what()),
            };
        let broker = match opened {
            Ok(b) => b,
            Err(e) => {
                // Refusing to open is a report, acceptable only for a damaged configuration
                // file that the error names.
                let text = e.to_string();
                let named = damaged.iter().any(|f| {
                    f.starts_with("config")
                        && f.file_name()
                            .is_some_and(|n| text.contains(&*n.to_string_lossy()))
                });
                assert!(named, "open failed: {text}; after {}", what());
                return;
            }
        };
        if trace {
            eprintln!("opened at {:?}", t0.elapsed());
        }
        check(&broker, base, &intact, &damaged, &what).await;
        if trace {
            eprintln!("checked at {:?}", t0.elapsed());
        }
        match tokio::time::timeout(OPEN_WAIT, broker.shutdown()).await {
            Ok(r) => r.unwrap_or_else(|e| panic!("shutdown failed: {e}; after {}", what())),
            Err(_) => panic!("shutdown hung after {}", what()),
        }
    });
    if trace {
        eprintln!("closed at {:?}", t0.elapsed());
    }
    rt.shutdown_timeout(Duration::from_millis(200));
    if trace {
        eprintln!("done at {:?}", t0.elapsed());
    }
}

async fn check(
    broker: &Arc<EmbeddedBroker>,
    base: &Base,
    intact: &BTreeSet<u64>,
    damaged: &BTreeSet<PathBuf>,
    what: &dyn Fn() -> String,
) {
    // One message more per topic: sends after damage must work and be served.
    let mut fresh = BTreeMap::new();
    for (n, (topic, _)) in TOPICS.iter().enumerate() {
        let seq = 900_000 + n as u64;
        let b = body(topic, seq);
        broker
            .send(Message::new(*topic, b.clone()), SendOptions::new())
            .await
            .unwrap_or_else(|e| panic!("send to {topic} failed: {e}; after {}", what()));
        fresh.insert(seq, b);
    }
    let mut served: BTreeMap<u64, usize> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + DRAIN_WAIT;
    let mut last_error = None;
    for (topic, _) in TOPICS {
        let consumer = broker
            .subscribe(
                Subscription::new(topic, "fz-check"),
                ConsumerOptions::new().consume_from(ConsumeFrom::First),
            )
            .await
            .unwrap_or_else(|e| panic!("subscribe {topic}: {e}; after {}", what()));
        drain(
            &*consumer,
            broker,
            topic,
            deadline,
            &mut served,
            &mut last_error,
            |seq, got| match base.sent.get(&seq) {
                Some(s) => {
                    assert_eq!(
                        s.topic,
                        topic,
                        "message {seq} served on the wrong topic; {}",
                        what()
                    );
                    assert_eq!(s.body, got, "message {seq} served altered; {}", what());
                    assert!(
                        s.kind != Kind::Pending,
                        "message {seq} delayed for an hour served now; {}",
                        what()
                    );
                }
                None => assert_eq!(
                    fresh.get(&seq).map(Vec::as_slice),
                    Some(got),
                    "served a message never sent: {seq}; {}",
                    what()
                ),
            },
        )
        .await;
        let _ = consumer.close().await;
    }
    for seq in fresh.keys() {
        assert!(
            served.contains_key(seq),
            "message {seq} sent after the reopen never served (last receive error: {last_error:?}); {}",
            what()
        );
    }
    let lost: Vec<u64> = base
        .sent
        .iter()
        .filter(|(seq, s)| s.kind == Kind::Due && !served.contains_key(seq))
        .map(|(seq, _)| *seq)
        .collect();
    let lost_intact: Vec<u64> = lost
        .iter()
        .copied()
        .filter(|s| intact.contains(s))
        .collect();
    if !lost_intact.is_empty() {
        finding(
            &format!("lost-intact:{}", kinds(damaged)),
            format!(
                "{} messages with an intact commit-log record never served (first {:?} at {:?}; \
                 {} corruptions reported; last receive error: {last_error:?}); {}",
                lost_intact.len(),
                &lost_intact[..lost_intact.len().min(8)],
                lost_intact.first().and_then(|s| base.extent.get(s)),
                broker.corruptions().len(),
                what()
            ),
        );
    }
    if !lost.is_empty() && broker.corruptions().is_empty() {
        finding(
            &format!("silent-loss:{}", kinds(damaged)),
            format!(
                "{} messages lost and nothing reported; {}",
                lost.len(),
                what()
            ),
        );
    }
}

/// Which kinds of file were damaged: `commitlog`, `consumequeue`, `config`, `checkpoint`,
/// joined by `+`.
fn kinds(damaged: &BTreeSet<PathBuf>) -> String {
    let set: BTreeSet<String> = damaged
        .iter()
        .filter_map(|f| f.components().next())
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    set.into_iter().collect::<Vec<_>>().join("+")
}

/// A broken property: a panic, unless `MQ_FUZZ_TOLERATE` (comma-separated) names its
/// category, e.g. `lost-intact:consumequeue`. A tolerated finding, already saved as a
/// regression test, is printed once per process so the fuzzer can look for new ones.
fn finding(category: &str, message: String) {
    static SEEN: std::sync::Mutex<BTreeSet<String>> = std::sync::Mutex::new(BTreeSet::new());
    let tolerated =
        std::env::var("MQ_FUZZ_TOLERATE").is_ok_and(|v| v.split(',').any(|c| c.trim() == category));
    if !tolerated {
        panic!("[{category}] {message}");
    }
    if SEEN
        .lock()
        .map(|mut s| s.insert(category.to_owned()))
        .unwrap_or(false)
    {
        eprintln!("tolerated known finding [{category}]: {message}");
    }
}

#[allow(clippy::too_many_arguments)]
async fn drain(
    consumer: &dyn Consumer,
    broker: &EmbeddedBroker,
    topic: &str,
    deadline: tokio::time::Instant,
    served: &mut BTreeMap<u64, usize>,
    last_error: &mut Option<String>,
    mut verify: impl FnMut(u64, &[u8]),
) {
    while tokio::time::Instant::now() < deadline {
        match consumer.receive(256, Duration::from_millis(2)).await {
            Ok(batch) if batch.is_empty() => {
                if broker.lag("fz-check", topic).await.ok().flatten() == Some(0) {
                    return;
                }
            }
            Ok(batch) => {
                for d in &batch {
                    let Some((_, seq)) = parse(&d.message.body) else {
                        panic!(
                            "served a body that fails its own checksum on {topic}: {:?}",
                            String::from_utf8_lossy(&d.message.body)
                        );
                    };
                    verify(seq, &d.message.body);
                    *served.entry(seq).or_default() += 1;
                }
                let receipts: Vec<_> = batch.iter().map(|d| d.receipt.clone()).collect();
                if let Err(e) = consumer.ack(&receipts).await {
                    *last_error = Some(format!("ack: {e}"));
                }
            }
            Err(e) => {
                *last_error = Some(format!("receive on {topic}: {e}"));
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

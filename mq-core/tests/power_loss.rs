//! Simulated power loss. SIGKILL keeps what the page cache holds, so it cannot show that a
//! `flush: sync` acknowledgement means "on disk". Here every change the store makes to its
//! files is recorded (`mq_core::embedded::Recorder`) while senders run; a cut at a seeded
//! random point then yields the image a power loss would leave (per file only what was
//! fsynced, optionally some unsynced writes with the last one torn), and the broker reopens
//! that image.
//!
//! Checked per round: under `sync` every send acknowledged before the cut is served; under
//! `async` every send acknowledged before the commit log's last fsync of the segment it was
//! written to is (the loss is bounded by the flush interval, and counted); nothing is served that was not sent,
//! every body is intact, and nothing is served twice.
//!
//! `MQ_POWER_SEED` replays a seed, `MQ_POWER_ROUNDS` sets the rounds per policy (default 12);
//! `cargo test --release -p mq-core --test power_loss -- --nocapture` with
//! `MQ_POWER_ROUNDS=500` is the long form.

// A failed step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use mq_core::embedded::{EmbeddedBroker, EmbeddedConfig, FlushPolicy, IoOp, Recorder};
use mq_core::{Broker, ConsumeFrom, ConsumerOptions, Message, SendOptions, Subscription};
use parking_lot::Mutex;

const TOPICS: [&str; 2] = ["pl-a", "pl-b"];

/// A small xorshift generator: the test's only randomness, from a printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn seed() -> u64 {
    std::env::var("MQ_POWER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        })
}

fn config(dir: &std::path::Path, flush: FlushPolicy) -> EmbeddedConfig {
    EmbeddedConfig::new(dir)
        .flush(flush)
        .max_message_size(8 * 1024)
        .segment_size(96 * 1024)
        .consume_queue_entries(64)
}

/// A body that carries its own checksum.
fn body(id: u64) -> String {
    let filler = "p".repeat((id % 700) as usize);
    let text = format!("{id}:{filler}");
    format!("{text}:{:08x}", crc32c::crc32c(text.as_bytes()))
}

fn intact(b: &str) -> Option<u64> {
    let (text, crc) = b.rsplit_once(':')?;
    (format!("{:08x}", crc32c::crc32c(text.as_bytes())) == crc)
        .then(|| text.split(':').next()?.parse().ok())
        .flatten()
}

#[derive(Default)]
struct Totals {
    rounds: u64,
    acked: u64,
    lost_unsynced: u64,
    duplicates: u64,
}

/// One round: load, cut, reopen the image, check. Returns what it counted.
async fn round(rng: &mut Rng, flush: FlushPolicy, totals: &mut Totals) {
    let live = tempfile::tempdir().expect("tempdir");
    let recorder = Recorder::start(live.path());
    let broker = EmbeddedBroker::open(config(live.path(), flush))
        .await
        .expect("open");
    // (id, changes recorded when the send returned)
    let acked: Arc<Mutex<Vec<(u64, usize)>>> = Arc::default();
    let run_for = Duration::from_millis(80 + rng.below(400));
    let mut tasks = Vec::new();
    for t in 0..6u64 {
        let broker = broker.clone();
        let acked = acked.clone();
        let recorder = recorder.clone();
        let batchy = t % 3 == 0;
        tasks.push(tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            let mut i = 0u64;
            while start.elapsed() < run_for {
                let topic = TOPICS[(i % 2) as usize];
                if batchy {
                    let ids: Vec<u64> = (0..4).map(|k| (t << 40) | ((i + k) << 1)).collect();
                    let msgs = ids
                        .iter()
                        .map(|id| Message::new(topic, body(*id)))
                        .collect();
                    if broker.send_batch(msgs, SendOptions::new()).await.is_ok() {
                        let at = recorder.len();
                        acked.lock().extend(ids.iter().map(|id| (*id, at)));
                    }
                    i += 4;
                } else {
                    let id = (t << 40) | (i << 1);
                    let sent = broker
                        .send(Message::new(topic, body(id)), SendOptions::new())
                        .await;
                    if sent.is_ok() {
                        let at = recorder.len();
                        acked.lock().push((id, at));
                    }
                    i += 1;
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("sender");
    }
    let ops = recorder.ops();
    let total = ops.len();
    // Cut anywhere in the second half of the run, or at the very end.
    let cut = if rng.below(8) == 0 {
        total
    } else {
        total / 2 + rng.below((total / 2) as u64 + 1) as usize
    };
    let unsynced = match rng.below(3) {
        0 => None,
        _ => Some((rng.below(6) as usize, rng.below(101) as f64 / 100.0)),
    };
    let image = tempfile::tempdir().expect("tempdir");
    recorder.image(cut, unsynced, image.path()).expect("image");
    if std::env::var_os("MQ_POWER_KEEP").is_some() {
        let kept = image.path().with_extension("kept");
        recorder.image(cut, unsynced, &kept).expect("image");
        println!("image kept in {}", kept.display());
    }
    recorder.stop();
    broker.shutdown().await.expect("shutdown");

    // Under `async`, a send is durable once the commit-log segment being written when it was
    // acknowledged has been fsynced after its record was written: records in older segments
    // were fsynced when the log rolled over. (Any commit-log fsync is not enough: the flusher
    // may fsync the segment it saw as the last one while the writer has moved on to the next.)
    let in_log = |p: &std::path::Path| p.components().any(|c| c.as_os_str() == "commitlog");
    let mut newest_segment = Vec::with_capacity(ops.len() + 1);
    let mut newest: Option<&std::path::Path> = None;
    newest_segment.push(newest);
    for op in &ops {
        if let IoOp::Create(p) = op {
            if in_log(p) {
                newest = Some(p.as_path());
            }
        }
        newest_segment.push(newest);
    }
    let mut last_sync: HashMap<&std::path::Path, usize> = HashMap::new();
    for (i, op) in ops[..cut].iter().enumerate() {
        if let IoOp::Sync(p) = op {
            if in_log(p) {
                last_sync.insert(p.as_path(), i);
            }
        }
    }
    let synced_after = |at: usize| {
        newest_segment[at]
            .and_then(|seg| last_sync.get(seg))
            .is_some_and(|&j| j + 1 >= at)
    };
    let last_log_sync = ops[..cut]
        .iter()
        .rposition(|op| matches!(op, IoOp::Sync(p) if in_log(p)))
        .map_or(0, |i| i + 1);

    let broker = EmbeddedBroker::open(config(image.path(), flush))
        .await
        .unwrap_or_else(|e| panic!("reopening the image cut at {cut}/{total} ({unsynced:?}): {e}"));
    let mut served: HashMap<u64, u32> = HashMap::new();
    let mut stranger = Vec::new();
    for topic in TOPICS {
        let consumer = broker
            .subscribe(
                Subscription::new(topic, "verifier"),
                ConsumerOptions::new().consume_from(ConsumeFrom::First),
            )
            .await
            .expect("subscribe");
        // Until the group has nothing left, however slow a loaded machine is.
        let start = tokio::time::Instant::now();
        loop {
            let got = consumer
                .receive(512, Duration::from_millis(100))
                .await
                .expect("receive");
            let receipts: Vec<_> = got.iter().map(|d| d.receipt.clone()).collect();
            consumer.ack(&receipts).await.expect("ack");
            for d in &got {
                match std::str::from_utf8(&d.message.body).ok().and_then(intact) {
                    Some(id) => *served.entry(id).or_default() += 1,
                    None => stranger.push(d.message.id),
                }
            }
            let lag = broker.lag("verifier", topic).await.expect("lag");
            if got.is_empty() && lag == Some(0) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "{topic} not drained: lag {lag:?}"
            );
        }
        consumer.close().await.expect("close");
    }
    let acked = acked.lock().clone();
    let sent: HashSet<u64> = acked.iter().map(|(id, _)| *id).collect();
    assert!(stranger.is_empty(), "corrupt bodies served: {stranger:?}");
    let mut must_have = 0;
    let mut lost = Vec::new();
    for (id, at) in &acked {
        let durable = match flush {
            FlushPolicy::Sync => *at <= cut,
            FlushPolicy::Async { .. } => *at <= cut && synced_after(*at),
        };
        if durable {
            must_have += 1;
            if !served.contains_key(id) {
                lost.push(*id);
            }
        } else if *at <= cut && !served.contains_key(id) {
            totals.lost_unsynced += 1;
        }
    }
    if !lost.is_empty() {
        // The evidence outlives the test: the live directory (everything written) and the
        // image the broker reopened.
        let live = live.keep();
        let image = image.keep();
        println!(
            "lost sends: live directory kept in {}, image in {}, cut {cut}/{total}, last log sync {last_log_sync}",
            live.display(),
            image.display()
        );
        let dump: String = ops
            .iter()
            .enumerate()
            .map(|(i, op)| format!("{i} {}\n", describe(op)))
            .collect();
        std::fs::write(live.with_extension("ops"), dump).expect("ops dump");
        let acked_at: String = acked
            .iter()
            .map(|(id, at)| format!("{id} {at} {}\n", lost.contains(id)))
            .collect();
        std::fs::write(live.with_extension("acked"), acked_at).expect("acked dump");
    }
    assert!(
        lost.is_empty(),
        "{flush:?}: {} of {must_have} durable acknowledged sends lost (cut {cut}/{total}, unsynced {unsynced:?}), e.g. {:?}; corruptions {:?}",
        lost.len(),
        &lost[..lost.len().min(5)],
        broker.corruptions()
    );
    // Every send returned Ok before the live broker stopped: nothing else may appear.
    let unknown: Vec<_> = served.keys().filter(|id| !sent.contains(id)).collect();
    assert!(unknown.is_empty(), "never sent: {unknown:?}");
    totals.duplicates += served.values().map(|n| u64::from(n - 1)).sum::<u64>();
    totals.acked += acked.len() as u64;
    totals.rounds += 1;
    broker.shutdown().await.expect("shutdown");
}

/// One recorded change, on one line, without its bytes.
fn describe(op: &IoOp) -> String {
    match op {
        IoOp::Write(p, at, bytes) => format!("write {} at {at} len {}", p.display(), bytes.len()),
        other => format!("{other:?}"),
    }
}

async fn power_loss(flush: FlushPolicy, salt: u64) {
    let raw = seed();
    let seed = raw ^ salt;
    let rounds: u64 = std::env::var("MQ_POWER_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    println!("power loss {flush:?}: MQ_POWER_SEED={raw} replays this, {rounds} rounds");
    let mut rng = Rng(seed);
    let mut totals = Totals::default();
    for _ in 0..rounds {
        round(&mut rng, flush, &mut totals).await;
    }
    println!(
        "power loss {flush:?}: MQ_POWER_SEED={raw}: {} rounds, {} acknowledged sends, lost 0 durable, {} lost unsynced (async only), {} duplicates",
        totals.rounds, totals.acked, totals.lost_unsynced, totals.duplicates
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_flush_acks_survive_power_loss() {
    power_loss(FlushPolicy::Sync, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_flush_loses_at_most_the_last_interval() {
    power_loss(
        FlushPolicy::Async {
            interval: Duration::from_millis(50),
        },
        0x5eed,
    )
    .await;
}

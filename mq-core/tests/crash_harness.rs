//! The standing crash harness of the embedded broker (issue 10, deliverable 2).
//!
//! Each test re-runs this binary as a child (`crash_harness_child`) on one data directory and
//! SIGKILLs it at seeded random moments, many times in a row with no clean stop: some kills a
//! few ms after spawn (often during recovery), some 50-300 ms after open (before the first
//! 500 ms flush tick and the 5 s offset persist), some 0.6-5.6 s after open. The first kill is
//! always early, so a new group's start point is tested before any periodic persistence. A
//! last child then runs to quiescence (nothing pending, nothing delivered for 3 s) and closes
//! cleanly.
//!
//! Every child drives at once: three topics (4, 4 and 3 queues) with small segments so files
//! roll often; plain sends; orderly sends (sharding keys) read by an orderly consumer; delayed
//! sends (0.2-4 s, `Delay::After` and `Delay::At`); messages the clustering group nacks on
//! their first delivery (a scheduled retry; a nack returns before its retry copy is written,
//! and half the batches nack all their failures at once); transactional messages committed or rolled back by
//! the producer, or left unanswered (some with `TxState::Unknown`) for check-back, whose
//! checker decides from the body; one clustering and one broadcasting group (fixed instance
//! name) on every topic. It prints one line per event, flushed at once (`SENDING` before a
//! send, `SENT`/`PREPARED` after it returned Ok, `DELIVERED`, `NACKING`, `ACKED` after the ack
//! returned Ok, `COMMITTED`, `CHECKED`, `OPENED` with the reopen time).
//!
//! The parent checks over all runs (see `ledger.rs`):
//! - lost = 0: every send that returned Ok and every prepared half that commits is
//!   acknowledged by both groups (the broadcasting one under its fixed instance);
//! - nothing delivered that was never sent, no rolled-back half delivered;
//! - early = 0: no delayed message or retry delivered before its due time (5 ms tolerance);
//! - every body intact (it carries its own CRC32C), orderly keys in order within a run, no
//!   corruption reported after a SIGKILL;
//! - duplicates are counted, not failed; reopen time (spawn to open) is reported as p50/p99;
//! - lookups: plain and orderly sends carry their harness id as key; after every reopen the
//!   child looks up the acknowledged sends of the run just killed (up to 300) and 100 drawn
//!   from earlier runs by id and by key: each is found, intact, once on its topic, and no
//!   other message claims its key (`check_lookups`); no key-index repair after a kill.
//!
//! Short form, in `cargo test --workspace` (`.ci/run`): 30 kills, 15 per flush policy, both
//! policies in parallel, about 50 s in a debug build on 2 cores:
//!     cargo test -p mq-core --test crash_harness
//! Long form, 1,000 kills (`MQ_CRASH_KILLS` counts both policies; 500 each), figures in
//! BENCHMARKS.md:
//!     MQ_CRASH_KILLS=1000 cargo test --release -p mq-core --test crash_harness -- --nocapture
//! `MQ_CRASH_SEED=<seed>` replays the kill schedule and workload of a printed seed;
//! `MQ_CRASH_KEEP=1` keeps the data directory and prints where it is.

// A failed step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "crash_harness/ledger.rs"]
mod ledger;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use mq_core::embedded::{EmbeddedBroker, EmbeddedConfig, FlushPolicy};
use mq_core::{
    Broker, CheckPolicy, ConsumeMode, Consumer, ConsumerOptions, Delay, Failure, Message,
    MessageModel, SendOptions, Subscription, TransactionChecker, TxState,
};

use ledger::{
    make_body, parse_body, KillClass, Ledger, Rng, EVENT, GROUP_BROADCAST, GROUP_CLUSTER,
    TOPIC_ORDER, TOPIC_PLAIN, TOPIC_TX,
};

const ENV_DIR: &str = "MQ_HARNESS_DIR";
const ENV_FLUSH: &str = "MQ_HARNESS_FLUSH";
const ENV_MODE: &str = "MQ_HARNESS_MODE";
const ENV_SEED: &str = "MQ_HARNESS_SEED";
const ENV_RUN: &str = "MQ_HARNESS_RUN";
const ENV_SPAWN_MS: &str = "MQ_HARNESS_SPAWN_MS";
const ENV_LOOKUPS: &str = "MQ_HARNESS_LOOKUPS";
/// Acknowledged sends a reopened child looks up: the latest of the run just killed, and a
/// seeded draw from the runs before.
const LOOKUP_RECENT: usize = 300;
const LOOKUP_OLDER: usize = 100;
const CHILD: &str = "crash_harness_child";

/// Kills per flush policy of the short form (30 in all).
const SHORT_KILLS: u32 = 15;
/// The broadcasting group's instance name: its progress is kept under it across restarts.
const BROADCAST_INSTANCE: &str = "hx-broadcast-fixed";
const PRODUCER: &str = "hx-producer";
const TOPICS: [(&str, u32); 3] = [(TOPIC_PLAIN, 4), (TOPIC_ORDER, 4), (TOPIC_TX, 3)];
/// A loaded child not killed by then exits by itself (its parent is gone).
const LOAD_LIMIT: Duration = Duration::from_secs(120);
const ENV_DRAIN_S: &str = "MQ_HARNESS_DRAIN_S";
/// The final child stops waiting for quiescence after this long, plus 2 s per kill: every
/// kill before the 5 s offset persist adds a backlog of redeliveries (orderly ones come one
/// per queue at a time).
const DRAIN_LIMIT: Duration = Duration::from_secs(90);

fn drain_limit(kills: u32) -> Duration {
    (DRAIN_LIMIT + Duration::from_secs(2 * u64::from(kills))).min(Duration::from_secs(1800))
}
/// Quiescence: nothing pending and nothing delivered for this long.
const DRAIN_IDLE_MS: u64 = 3000;

fn config(dir: &Path, flush: FlushPolicy) -> EmbeddedConfig {
    // Small segments and index files so that every run crosses several boundaries, yet not so
    // small that the long form's thousands of files exhaust the fd limit (the broker keeps
    // every segment open: 128 KiB / 64 entries reached 20,000 fds after ~150 kills, 256 KiB /
    // 256 entries after ~310; the long form's data grows past 2 GiB, so it takes larger
    // files). Check-back is quick so that unanswered halves resolve within a run or two;
    // never discarded.
    let (segment, entries) = if kills_from_env() > SHORT_KILLS * 4 {
        (4 * 1024 * 1024, 4096)
    } else {
        (256 * 1024, 256)
    };
    EmbeddedConfig::new(dir)
        .flush(flush)
        .max_message_size(16 * 1024)
        .segment_size(segment)
        .consume_queue_entries(entries)
        // Key-index parts sealed every few hundred sends: kills land around seals.
        .index_part_entries(entries as usize * 2)
        .check_policy(CheckPolicy {
            timeout: Duration::from_millis(1000),
            interval: Duration::from_millis(1000),
            max_checks: 10_000,
        })
}

fn flush_policy(name: &str) -> FlushPolicy {
    match name {
        "sync" => FlushPolicy::Sync,
        _ => FlushPolicy::default(),
    }
}

fn now_ms() -> u64 {
    mq_core::message::now_millis()
}

/// Prints one event line and flushes it, so that a SIGKILL loses nothing already printed.
fn emit(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{EVENT} {line}")
        .and_then(|()| out.flush())
        .is_err()
    {
        // The parent is gone, so nobody will kill this process.
        std::process::exit(3);
    }
}

macro_rules! emit {
    ($($t:tt)*) => { emit(format_args!($($t)*)) };
}

/// Decides check-back from the body: `c`/`C` commit, anything else rolls back.
struct ByBody;

#[async_trait::async_trait]
impl TransactionChecker for ByBody {
    async fn check(&self, half: &mq_core::MessageView) -> TxState {
        match parse_body(&half.body) {
            Some(b) if ledger::commits(b.kind) => {
                emit!("CHECKED {} commit", b.id);
                TxState::Commit
            }
            Some(b) => {
                emit!("CHECKED {} rollback", b.id);
                TxState::Rollback
            }
            None => {
                emit!("ERROR checker got a body failing its checksum");
                TxState::Rollback
            }
        }
    }
}

struct Ids {
    run: u32,
    next: AtomicU64,
}

impl Ids {
    fn next(&self) -> String {
        format!(
            "r{}-{}",
            self.run,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }
}

async fn pause(rng: &mut Rng, lo: u64, hi: u64) {
    tokio::time::sleep(Duration::from_millis(rng.range(lo, hi))).await;
}

/// Plain sends; one in four is nacked once by the clustering group.
async fn send_plain(broker: Arc<EmbeddedBroker>, ids: Arc<Ids>, mut rng: Rng) {
    loop {
        let id = ids.next();
        let (kind, aux) = if rng.percent(25) {
            ('n', rng.range(200, 2000).to_string())
        } else {
            ('p', "-".to_owned())
        };
        let body = make_body(&id, kind, &aux, rng.range(20, 1500) as usize);
        let crc = crc32c::crc32c(body.as_bytes());
        emit!("SENDING {id} {TOPIC_PLAIN} {kind} 0 {crc:08x} {aux}");
        // Keyed by the harness id, so that a reopened child finds it by key and by id.
        match broker
            .send(
                Message::new(TOPIC_PLAIN, body).with_key(&id),
                SendOptions::new(),
            )
            .await
        {
            Ok(sent) => emit!("SENT {id} {}", sent.message_id),
            Err(e) => emit!("ERROR send {id} {e}"),
        }
        pause(&mut rng, 1, 8).await;
    }
}

/// Delayed sends, 0.2 to 4 s, by duration or by time.
async fn send_delayed(broker: Arc<EmbeddedBroker>, ids: Arc<Ids>, mut rng: Rng) {
    loop {
        let id = ids.next();
        let after = rng.range(200, 4000);
        let (delay, due) = if rng.percent(30) {
            let at = SystemTime::now() + Duration::from_millis(after);
            (Delay::At(at), mq_core::clock::Clock::to_ms(at))
        } else {
            // Taken before the send: the broker's due time is at least this.
            (Delay::After(Duration::from_millis(after)), now_ms() + after)
        };
        let body = make_body(&id, 'd', "-", rng.range(20, 800) as usize);
        let crc = crc32c::crc32c(body.as_bytes());
        emit!("SENDING {id} {TOPIC_PLAIN} d {due} {crc:08x} -");
        match broker
            .send(
                Message::new(TOPIC_PLAIN, body),
                SendOptions::new().delayed(delay),
            )
            .await
        {
            Ok(_) => emit!("SENT {id}"),
            Err(e) => emit!("ERROR send {id} {e}"),
        }
        pause(&mut rng, 5, 30).await;
    }
}

/// Orderly sends: each task owns four keys and sends each key's messages one after another.
async fn send_orderly(broker: Arc<EmbeddedBroker>, ids: Arc<Ids>, mut rng: Rng, task: u32) {
    for i in 0u32.. {
        let id = ids.next();
        let key = format!("key-{}", task * 4 + i % 4);
        let body = make_body(&id, 'o', &key, rng.range(20, 600) as usize);
        let crc = crc32c::crc32c(body.as_bytes());
        emit!("SENDING {id} {TOPIC_ORDER} o 0 {crc:08x} {key}");
        match broker
            .send(
                Message::new(TOPIC_ORDER, body).with_key(&id),
                SendOptions::sharding_key(key),
            )
            .await
        {
            Ok(sent) => emit!("SENT {id} {}", sent.message_id),
            Err(e) => emit!("ERROR send {id} {e}"),
        }
        pause(&mut rng, 1, 10).await;
    }
}

/// Transactions: committed or rolled back by the producer after a pause, or left to check-back.
async fn send_transactional(broker: Arc<EmbeddedBroker>, ids: Arc<Ids>, mut rng: Rng) {
    loop {
        let id = ids.next();
        let kind = match rng.range(0, 100) {
            0..35 => 'c',
            35..50 => 'r',
            50..80 => 'C',
            _ => 'R',
        };
        let body = make_body(&id, kind, "-", rng.range(20, 600) as usize);
        let crc = crc32c::crc32c(body.as_bytes());
        emit!("SENDING {id} {TOPIC_TX} {kind} 0 {crc:08x} -");
        let prepared = match broker
            .prepare(Message::new(TOPIC_TX, body), SendOptions::new(), PRODUCER)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                emit!("ERROR prepare {id} {e}");
                continue;
            }
        };
        emit!("PREPARED {id}");
        let pause_ms = rng.range(0, 400);
        let unknown = rng.percent(50);
        let broker = broker.clone();
        tokio::spawn(async move {
            let state = match kind {
                'c' => TxState::Commit,
                'r' => TxState::Rollback,
                _ if unknown => TxState::Unknown,
                _ => return,
            };
            tokio::time::sleep(Duration::from_millis(pause_ms)).await;
            match broker.end_transaction(&prepared.transaction, state).await {
                Ok(_) if state == TxState::Commit => emit!("COMMITTED {id}"),
                Ok(_) if state == TxState::Rollback => emit!("ROLLEDBACK {id}"),
                Ok(_) => emit!("UNKNOWN {id}"),
                // Check-back may have ended it first.
                Err(e) => emit!("ENDFAILED {id} {e}"),
            }
        });
        pause(&mut rng, 5, 30).await;
    }
}

/// Receives, prints and settles until `stop`; hands the consumer back for a clean close.
async fn consume(
    consumer: Box<dyn Consumer>,
    stop: Arc<AtomicBool>,
    last_delivery: Arc<AtomicU64>,
    mut rng: Rng,
) -> Box<dyn Consumer> {
    let group = consumer.subscription().group.clone();
    let topic = consumer.subscription().topic.clone();
    let nacks = group == GROUP_CLUSTER && topic == TOPIC_PLAIN;
    while !stop.load(Ordering::Relaxed) {
        let batch = match consumer.receive(64, Duration::from_millis(100)).await {
            Ok(batch) => batch,
            Err(e) => {
                emit!("ERROR receive {group} {topic} {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if batch.is_empty() {
            continue;
        }
        let now = now_ms();
        last_delivery.store(now, Ordering::Relaxed);
        let mut receipts = Vec::new();
        let mut acked = Vec::new();
        // Half the batches nack one by one, half all at once (several retry copies on their
        // way to the log together when a kill comes).
        let at_once = rng.percent(50);
        let mut failing: Vec<(String, mq_core::Receipt, Failure)> = Vec::new();
        for d in batch {
            let body = parse_body(&d.message.body);
            let crc = crc32c::crc32c(&d.message.body);
            let id = body.as_ref().map_or("?", |b| b.id.as_str()).to_owned();
            let reconsume = d.message.reconsume_times;
            emit!(
                "DELIVERED {group} {id} {now} {} {crc:08x} {reconsume}",
                u8::from(body.is_some())
            );
            let retry_ms = body
                .as_ref()
                .filter(|b| nacks && b.kind == 'n' && reconsume == 0)
                .and_then(|b| b.aux.parse::<u64>().ok());
            if let Some(after) = retry_ms {
                // Printed before the call: the broker's due time is at least this.
                emit!("NACKING {group} {id} {}", now_ms() + after);
                let failure = Failure::retry_after(
                    "harness: first attempt fails",
                    Duration::from_millis(after),
                );
                if at_once {
                    failing.push((id, d.receipt, failure));
                } else {
                    match consumer.nack(&d.receipt, failure).await {
                        Ok(disposition) => emit!("NACKED {group} {id} {disposition:?}"),
                        Err(e) => emit!("ERROR nack {group} {id} {e}"),
                    }
                }
            } else {
                receipts.push(d.receipt);
                acked.push(id);
            }
        }
        let answers = join_all(
            failing
                .iter()
                .map(|(_, receipt, failure)| consumer.nack(receipt, failure.clone()))
                .collect(),
        )
        .await;
        for ((id, _, _), answer) in failing.iter().zip(answers) {
            match answer {
                Ok(disposition) => emit!("NACKED {group} {id} {disposition:?}"),
                Err(e) => emit!("ERROR nack {group} {id} {e}"),
            }
        }
        // A little processing time, so that kills find deliveries in flight.
        pause(&mut rng, 0, 15).await;
        if receipts.is_empty() {
            continue;
        }
        match consumer.ack(&receipts).await {
            Ok(()) => {
                for id in acked {
                    emit!("ACKED {group} {id}");
                }
            }
            Err(e) => emit!("ERROR ack {group} {topic} {e}"),
        }
    }
    consumer
}

/// Runs the futures concurrently; their outputs in order.
async fn join_all<T>(
    futures: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + '_>>>,
) -> Vec<T> {
    let mut futures: Vec<_> = futures.into_iter().map(Some).collect();
    let mut out: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, result) in futures.iter_mut().zip(out.iter_mut()) {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        *result = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_default()
}

/// The child process: opens the broker on the shared directory and drives the mix until it is
/// killed, or (drain mode) until everything settled, then closes cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of the crash_harness tests"]
async fn crash_harness_child() {
    let Ok(dir) = std::env::var(ENV_DIR) else {
        eprintln!("{CHILD} runs only as a child of the crash_harness tests");
        return;
    };
    let drain = env(ENV_MODE) == "drain";
    let run: u32 = env(ENV_RUN).parse().expect("run number");
    let seed: u64 = env(ENV_SEED).parse().expect("seed");
    let spawned_ms: u64 = env(ENV_SPAWN_MS).parse().expect("spawn time");
    let drain_limit = Duration::from_secs(env(ENV_DRAIN_S).parse().unwrap_or(90));
    let started = Instant::now();
    let broker = EmbeddedBroker::open(config(Path::new(&dir), flush_policy(&env(ENV_FLUSH))))
        .await
        .expect("open");
    emit!(
        "OPENED {run} {} {} {}",
        started.elapsed().as_millis(),
        now_ms().saturating_sub(spawned_ms),
        broker.corruptions().len()
    );
    for c in broker.corruptions() {
        emit!("CORRUPTION {c:?}");
    }
    for r in broker.key_index_repairs() {
        emit!("ERROR key index repaired after a kill: {r:?}");
    }
    check_lookups(&broker, &env(ENV_LOOKUPS), seed).await;
    for (topic, queues) in TOPICS {
        broker
            .create_topic(topic, queues)
            .await
            .expect("create topic");
    }
    let mut rng = Rng::new(seed);
    let stop = Arc::new(AtomicBool::new(false));
    let last_delivery = Arc::new(AtomicU64::new(now_ms()));
    let mut consumers = Vec::new();
    for (topic, _) in TOPICS {
        let mode = if topic == TOPIC_ORDER {
            ConsumeMode::Orderly
        } else {
            ConsumeMode::Concurrently
        };
        let clustering = Subscription::new(topic, GROUP_CLUSTER).mode(mode);
        let broadcasting =
            Subscription::new(topic, GROUP_BROADCAST).model(MessageModel::Broadcasting);
        // The default `consume-from: last`: a restarted group must resume from its progress.
        let subs = [
            (clustering, ConsumerOptions::new()),
            (
                broadcasting,
                ConsumerOptions::new().instance(BROADCAST_INSTANCE),
            ),
        ];
        for (sub, options) in subs {
            let consumer = broker.subscribe(sub, options).await.expect("subscribe");
            consumers.push(tokio::spawn(consume(
                consumer,
                stop.clone(),
                last_delivery.clone(),
                Rng::new(rng.next_u64()),
            )));
        }
    }
    emit!("SUBSCRIBED {run}");
    // After subscribing: a half committed by check-back is then sent to groups that exist.
    broker
        .register_checker(PRODUCER, Arc::new(ByBody))
        .await
        .expect("register checker");
    if !drain {
        let ids = Arc::new(Ids {
            run,
            next: AtomicU64::new(0),
        });
        tokio::spawn(send_plain(
            broker.clone(),
            ids.clone(),
            Rng::new(rng.next_u64()),
        ));
        tokio::spawn(send_delayed(
            broker.clone(),
            ids.clone(),
            Rng::new(rng.next_u64()),
        ));
        for task in 0..2 {
            tokio::spawn(send_orderly(
                broker.clone(),
                ids.clone(),
                Rng::new(rng.next_u64()),
                task,
            ));
        }
        tokio::spawn(send_transactional(
            broker.clone(),
            ids.clone(),
            Rng::new(rng.next_u64()),
        ));
        tokio::time::sleep(LOAD_LIMIT).await;
        emit!("ERROR run {run} was never killed");
        std::process::exit(4);
    }
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let idle = now_ms().saturating_sub(last_delivery.load(Ordering::Relaxed));
        let (delays, txs) = (broker.pending_delays(), broker.pending_transactions());
        if idle >= DRAIN_IDLE_MS && delays == 0 && txs == 0 {
            break;
        }
        if started.elapsed() > drain_limit {
            emit!("ERROR drain not quiet after {drain_limit:?}: {delays} delays, {txs} transactions pending");
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for task in consumers {
        let consumer = task.await.expect("consumer task");
        consumer.close().await.expect("close");
    }
    let corruptions = broker.corruptions();
    for c in &corruptions {
        emit!("CORRUPTION {c:?}");
    }
    let (delays, txs) = (broker.pending_delays(), broker.pending_transactions());
    broker.shutdown().await.expect("shutdown");
    emit!("DRAINED {delays} {txs} {}", corruptions.len());
}

/// Looks up, by id and by key, the acknowledged sends the parent listed (`key id topic`
/// lines): each is found by its id (every copy carrying its id, key and intact body, one of
/// them on its topic), exactly once by its key on its topic, and nothing else claims its key;
/// a key never sent finds nothing. Prints `LOOKUPS <checked>`, and `ERROR` per violation.
async fn check_lookups(broker: &EmbeddedBroker, list: &str, seed: u64) {
    let Ok(text) = std::fs::read_to_string(list) else {
        return;
    };
    let mut checked = 0u64;
    for line in text.lines() {
        let mut f = line.split(' ');
        let (Some(key), Some(id), Some(topic)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let Ok(id) = id.parse::<mq_core::MessageId>() else {
            emit!("ERROR lookup list names a bad id: {line}");
            continue;
        };
        let copies = broker.messages_by_id(id).await.expect("lookup by id");
        let intact = |v: &mq_core::MessageView| {
            v.id == id
                && v.keys == [key.to_owned()]
                && parse_body(&v.body).is_some_and(|b| b.id == key)
        };
        if !copies.iter().any(|v| v.topic == topic) || !copies.iter().all(intact) {
            emit!(
                "ERROR lookup by id {id} ({key}): {} copies, none intact on {topic}",
                copies.len()
            );
        }
        let on_topic = broker
            .messages_by_key(key, Some(topic), 10)
            .await
            .expect("lookup by key");
        if on_topic.len() != 1 || !on_topic.iter().all(intact) {
            emit!(
                "ERROR lookup by key {key} on {topic}: {} found",
                on_topic.len()
            );
        }
        let anywhere = broker
            .messages_by_key(key, None, 100)
            .await
            .expect("lookup by key");
        if !anywhere.iter().all(intact) {
            emit!("ERROR lookup by key {key}: another message claims it");
        }
        checked += 1;
    }
    let never = format!("never-sent-{seed}");
    if !broker
        .messages_by_key(&never, None, 10)
        .await
        .expect("lookup by key")
        .is_empty()
    {
        emit!("ERROR lookup by key {never}: a key never sent was found");
    }
    emit!("LOOKUPS {checked}");
}

/// A running child and the lines it printed, read by a thread so the pipe never fills.
struct Running {
    child: Child,
    lines: Receiver<(Instant, String)>,
}

fn spawn_child(
    dir: &Path,
    stderr: &Path,
    flush: &str,
    drain: bool,
    seed: u64,
    run: u32,
) -> Running {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(stderr)
        .expect("stderr log");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            CHILD,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENV_DIR, dir)
        .env(ENV_FLUSH, flush)
        .env(ENV_MODE, if drain { "drain" } else { "load" })
        .env(ENV_SEED, seed.to_string())
        .env(ENV_RUN, run.to_string())
        .env(ENV_DRAIN_S, drain_limit(run).as_secs().to_string())
        .env(ENV_SPAWN_MS, now_ms().to_string())
        .env(ENV_LOOKUPS, dir.with_extension("lookups"))
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut buf = Vec::new();
        // Until EOF: the child died and every byte it wrote has been read.
        while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
            buf.clear();
        }
    });
    Running { child, lines }
}

fn stderr_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Kills of one test: `MQ_CRASH_KILLS` counts both flush policies, so each gets half.
fn kills_from_env() -> u32 {
    std::env::var("MQ_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .map_or(SHORT_KILLS, |total| total.div_ceil(2))
}

/// One seed per test process, so that both policies print the same one.
fn seed_from_env() -> u64 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(|| {
        std::env::var("MQ_CRASH_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64 % 1_000_000_000)
                    .unwrap_or(1)
            })
    })
}

/// One load run: spawn, kill at the moment `class` and the draws say, read every line.
fn kill_run(
    ledger: &mut Ledger,
    dirs: (&Path, &Path),
    flush: &str,
    rng: &mut Rng,
    run: u32,
    class: KillClass,
) {
    let (data, stderr) = dirs;
    // Drawn whatever the class, so that the schedule depends on the seed alone.
    let (open_ms, early_ms, late_ms) = (rng.range(5, 80), rng.range(50, 300), rng.range(600, 5600));
    let mut running = spawn_child(data, stderr, flush, false, rng.next_u64(), run);
    let mut deadline = match class {
        KillClass::DuringOpen => Some(Instant::now() + Duration::from_millis(open_ms)),
        _ => None,
    };
    let mut opened = false;
    let hang = Instant::now() + Duration::from_secs(60);
    loop {
        let until = deadline.unwrap_or(hang);
        match running
            .lines
            .recv_timeout(until.saturating_duration_since(Instant::now()))
        {
            Ok((at, line)) => {
                if ledger.feed(run, &line) {
                    opened = true;
                    if deadline.is_none() {
                        let after = if class == KillClass::Early {
                            early_ms
                        } else {
                            late_ms
                        };
                        deadline = Some(at + Duration::from_millis(after));
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                if deadline.is_none() {
                    ledger
                        .failures
                        .push(format!("run {run}: not open after 60 s"));
                }
                break;
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = running.child.wait().expect("wait");
                ledger.failures.push(format!(
                    "run {run}: child exited by itself ({status}); stderr:\n{}",
                    stderr_tail(stderr)
                ));
                break;
            }
        }
    }
    // SIGKILL: no destructor, no flush, no persist runs in the child.
    let _ = running.child.kill();
    running.child.wait().expect("wait");
    // What it printed before it died still counts.
    for (_, line) in running.lines.iter() {
        opened |= ledger.feed(run, &line);
    }
    ledger.kills.push(class);
    if !opened {
        ledger.kills_before_open += 1;
    }
}

/// The final run: no sends, consume until quiet, close cleanly.
fn drain_run(ledger: &mut Ledger, dirs: (&Path, &Path), flush: &str, seed: u64, run: u32) {
    let (data, stderr) = dirs;
    let mut running = spawn_child(data, stderr, flush, true, seed, run);
    let deadline = Instant::now() + drain_limit(run) + Duration::from_secs(60);
    loop {
        match running
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok((_, line)) => {
                ledger.feed(run, &line);
            }
            Err(RecvTimeoutError::Timeout) => {
                let _ = running.child.kill();
                ledger
                    .failures
                    .push("the final child did not finish in time: killed".to_owned());
                break;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = running.child.wait().expect("wait");
    if !status.success() {
        ledger.failures.push(format!(
            "the final child failed ({status}); stderr:\n{}",
            stderr_tail(stderr)
        ));
    }
}

fn harness(flush: &str) {
    let seed = seed_from_env();
    let kills = kills_from_env();
    println!(
        "crash_harness[{flush}]: seed={seed} kills={kills} (replay with MQ_CRASH_SEED={seed})"
    );
    // One schedule per policy from the one printed seed.
    let mut rng = Rng::new(seed ^ crc32c::crc32c(flush.as_bytes()) as u64);
    let root = tempfile::Builder::new()
        .prefix("mq-crash-harness-")
        .tempdir()
        .expect("tempdir");
    let data = root.path().join("data");
    let stderr = root.path().join("child-stderr.log");
    let keep = std::env::var("MQ_CRASH_KEEP").is_ok_and(|v| v == "1");
    let mut ledger = Ledger::default();
    if keep {
        let log = std::fs::File::create(root.path().join("events.log")).expect("events.log");
        ledger.log = Some(std::io::BufWriter::new(log));
    }
    let started = Instant::now();
    // A generator of its own, so that the kill schedule is the one the seed always gave.
    let mut lookup_rng = Rng::new(seed ^ 0x6c6f_6f6b);
    let lookups = data.with_extension("lookups");
    for run in 0..kills {
        if let Some(last) = run.checked_sub(1) {
            let list = ledger.lookups(last, LOOKUP_RECENT, LOOKUP_OLDER, &mut lookup_rng);
            std::fs::write(&lookups, list).expect("lookup list");
        }
        // The first kill is early: the groups are new, nothing was persisted periodically yet.
        let class = match (run, rng.range(0, 100)) {
            (0, _) => KillClass::Early,
            (_, 0..15) => KillClass::DuringOpen,
            (_, 15..55) => KillClass::Early,
            _ => KillClass::Late,
        };
        kill_run(&mut ledger, (&data, &stderr), flush, &mut rng, run, class);
        if !ledger.failures.is_empty() {
            break;
        }
    }
    let kill_phase = started.elapsed();
    if ledger.failures.is_empty() {
        let list = ledger.lookups(kills - 1, LOOKUP_RECENT, LOOKUP_OLDER, &mut lookup_rng);
        std::fs::write(&lookups, list).expect("lookup list");
        drain_run(&mut ledger, (&data, &stderr), flush, rng.next_u64(), kills);
        if ledger.lookups_checked == 0 {
            ledger
                .failures
                .push("no acknowledged send was looked up after a reopen".to_owned());
        }
    }
    println!(
        "crash_harness[{flush}]: kill phase {:.1} s, drain {:.1} s, data {} MiB",
        kill_phase.as_secs_f64(),
        (started.elapsed() - kill_phase).as_secs_f64(),
        dir_size(&data) / (1024 * 1024)
    );
    let verdict = ledger.verdict(flush, seed);
    ledger.log = None;
    if keep {
        let kept: PathBuf = root.keep();
        println!("crash_harness[{flush}]: data kept in {}", kept.display());
    }
    match verdict {
        Ok(summary) => println!("{summary}"),
        Err(report) => panic!("{report}"),
    }
}

fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[test]
fn crash_harness_sync_flush() {
    harness("sync");
}

#[test]
fn crash_harness_async_flush() {
    harness("async");
}

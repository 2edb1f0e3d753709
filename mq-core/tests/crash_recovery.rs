//! Crash recovery of the embedded broker: SIGKILL with sync flush, a torn tail, flipped bytes
//! and lost indexes.

// A failed step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use mq_core::embedded::{EmbeddedBroker, EmbeddedConfig, FlushPolicy};
use mq_core::testkit::{body, drain};
use mq_core::{Broker, ConsumeFrom, ConsumerOptions, Message, SendOptions, Subscription};

const CHILD_DIR: &str = "MQ_CRASH_CHILD_DIR";
const TOPIC: &str = "crash";

fn config(dir: &Path) -> EmbeddedConfig {
    // Small segments so that the writes cross many segment boundaries.
    EmbeddedConfig::new(dir)
        .flush(FlushPolicy::Sync)
        .max_message_size(16 * 1024)
        .segment_size(128 * 1024)
        .consume_queue_entries(64)
}

/// The child process: sends with sync flush from several tasks and prints every id whose send
/// returned, until it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of sync_flush_survives_sigkill_and_torn_tail"]
async fn crash_child_writer() {
    let dir = PathBuf::from(std::env::var(CHILD_DIR).expect("child needs its directory"));
    let broker = EmbeddedBroker::open(config(&dir)).await.expect("open");
    let mut tasks = Vec::new();
    for t in 0..8 {
        let broker = broker.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0u64.. {
                let msg = Message::new(TOPIC, format!("{t}-{i}-{}", "x".repeat(1000)));
                let r = broker.send(msg, SendOptions::new()).await.expect("send");
                println!("SENT {}", r.message_id);
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
}

/// Runs the ignored test `name` of this binary as a child process on `dir`.
fn spawn_child(name: &str, dir: &Path) -> (std::process::Child, std::process::ChildStdout) {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            name,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    (child, stdout)
}

fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("commitlog"))
        .expect("commitlog")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).expect("read segment");
            (p, bytes)
        })
        .collect()
}

async fn consume_all(broker: &Arc<EmbeddedBroker>, expect_at_least: usize) -> Vec<String> {
    let consumer = broker
        .subscribe(
            Subscription::new(TOPIC, "verifier"),
            ConsumerOptions::new().consume_from(ConsumeFrom::First),
        )
        .await
        .expect("subscribe");
    let mut got = drain(&*consumer, expect_at_least, Duration::from_secs(20), true).await;
    // Whatever else is stored (sends in flight at the kill) comes too.
    got.extend(drain(&*consumer, usize::MAX, Duration::from_millis(500), true).await);
    got.iter().map(|d| d.message.id.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_flush_survives_sigkill_and_torn_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut child, stdout) = spawn_child("crash_child_writer", dir.path());
    let mut acknowledged = HashSet::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("line");
        // libtest's "test name ... " may stand before the first line on the same line.
        if let Some(id) = line.split("SENT ").nth(1) {
            acknowledged.insert(id.to_owned());
            if acknowledged.len() >= 2000 {
                break;
            }
        }
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    assert!(acknowledged.len() >= 2000, "child stopped early");

    let before = snapshot(dir.path());
    assert!(before.len() > 5, "expected several segments");
    // Tear the tail: half of a record, as a write cut short by a crash leaves it.
    let (last_path, last_bytes) = before.last().expect("segments").clone();
    let first_record_len = u32::from_le_bytes(last_bytes[4..8].try_into().expect("len")) as usize;
    let mut torn = last_bytes.clone();
    let half = &before[0].1[..first_record_len / 2];
    torn.extend_from_slice(half);
    std::fs::write(&last_path, &torn).expect("tear");

    let broker = EmbeddedBroker::open(config(dir.path()))
        .await
        .expect("reopen");
    let after = snapshot(dir.path());
    assert_eq!(after, before, "recovery changed more than the torn record");
    assert!(
        broker.corruptions().is_empty(),
        "{:?}",
        broker.corruptions()
    );

    let stored = consume_all(&broker, acknowledged.len()).await;
    let stored_set: HashSet<_> = stored.iter().cloned().collect();
    assert_eq!(stored.len(), stored_set.len(), "a message was served twice");
    let missing: Vec<_> = acknowledged.difference(&stored_set).collect();
    assert!(missing.is_empty(), "acknowledged sends lost: {missing:?}");
    broker.shutdown().await.expect("shutdown");
}

async fn write_numbered(dir: &Path, n: usize) -> Vec<String> {
    let broker = EmbeddedBroker::open(config(dir)).await.expect("open");
    let mut bodies = Vec::new();
    for i in 0..n {
        let b = format!("payload-{i:04}-{}", "y".repeat(200));
        broker
            .send(Message::new(TOPIC, b.clone()), SendOptions::queue(0))
            .await
            .expect("send");
        bodies.push(b);
    }
    broker.shutdown().await.expect("shutdown");
    bodies
}

/// Flips one byte inside the body of the message whose body starts with `needle`.
fn flip_inside(dir: &Path, needle: &str) -> PathBuf {
    for (path, mut bytes) in snapshot(dir) {
        if let Some(at) = bytes
            .windows(needle.len())
            .position(|w| w == needle.as_bytes())
        {
            bytes[at + needle.len() + 5] ^= 0x40;
            std::fs::write(&path, bytes).expect("write");
            return path;
        }
    }
    panic!("{needle} not found");
}

async fn bodies_after_reopen(dir: &Path, expect: usize) -> (Vec<String>, Arc<EmbeddedBroker>) {
    let broker = EmbeddedBroker::open(config(dir)).await.expect("reopen");
    let consumer = broker
        .subscribe(
            // A group of its own each time, so that it starts from the first message.
            Subscription::new(TOPIC, format!("reader-{}", mq_core::MessageId::new())),
            ConsumerOptions::new().consume_from(ConsumeFrom::First),
        )
        .await
        .expect("subscribe");
    let mut got: Vec<String> = drain(&*consumer, expect, Duration::from_secs(10), true)
        .await
        .iter()
        .map(body)
        .collect();
    got.extend(
        drain(&*consumer, usize::MAX, Duration::from_millis(300), true)
            .await
            .iter()
            .map(body),
    );
    (got, broker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_is_reported_not_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bodies = write_numbered(dir.path(), 1500).await;
    let segment = flip_inside(dir.path(), "payload-0700-");

    let (got, broker) = bodies_after_reopen(dir.path(), 1499).await;
    let want: Vec<String> = bodies
        .iter()
        .filter(|b| !b.starts_with("payload-0700-"))
        .cloned()
        .collect();
    assert_eq!(got, want);
    let corruptions = broker.corruptions();
    assert_eq!(corruptions.len(), 1, "{corruptions:?}");
    assert_eq!(corruptions[0].segment, segment);
    assert!(
        corruptions[0].reason.contains("checksum"),
        "{}",
        corruptions[0].reason
    );
    broker.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_indexes_are_rebuilt_around_damage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bodies = write_numbered(dir.path(), 1500).await;
    let segment = flip_inside(dir.path(), "payload-0900-");
    // Without checkpoint and indexes, recovery re-reads the whole log.
    std::fs::remove_dir_all(dir.path().join("consumequeue")).expect("rm consumequeue");
    std::fs::remove_file(dir.path().join("checkpoint")).expect("rm checkpoint");

    let (got, broker) = bodies_after_reopen(dir.path(), 1499).await;
    let want: Vec<String> = bodies
        .iter()
        .filter(|b| !b.starts_with("payload-0900-"))
        .cloned()
        .collect();
    assert_eq!(got, want);
    // The damaged bytes and the queue offset they cost are both reported, in that segment.
    let corruptions = broker.corruptions();
    assert!(!corruptions.is_empty());
    assert!(
        corruptions.iter().all(|c| c.segment == segment),
        "{corruptions:?}"
    );
    assert!(corruptions.iter().any(|c| c.reason.contains("checksum")));
    // The damaged record keeps its queue offset: later messages keep theirs.
    let r = broker
        .send(Message::new(TOPIC, "next"), SendOptions::queue(0))
        .await
        .expect("send");
    assert_eq!(r.queue_offset, 1500);
    broker.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_cannot_open_the_same_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = EmbeddedBroker::open(config(dir.path()))
        .await
        .expect("open");
    let err = EmbeddedBroker::open(config(dir.path()))
        .await
        .expect_err("locked");
    assert!(err.to_string().contains("locked"), "{err}");
    broker.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_releases_the_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = EmbeddedBroker::open(config(dir.path()))
        .await
        .expect("open");
    broker.shutdown().await.expect("shutdown");
    let err = broker
        .send(Message::new(TOPIC, "late"), SendOptions::new())
        .await
        .expect_err("closed");
    assert!(matches!(err, mq_core::BrokerError::Closed), "{err}");
    let again = EmbeddedBroker::open(config(dir.path()))
        .await
        .expect("reopen");
    again.shutdown().await.expect("shutdown");
}

const SCHED_TOPIC: &str = "sched";

fn sched_config(dir: &Path) -> EmbeddedConfig {
    config(dir).check_policy(mq_core::CheckPolicy {
        timeout: Duration::from_millis(500),
        interval: Duration::from_millis(500),
        max_checks: 5,
    })
}

/// The child process: leaves delayed messages, a pending retry and half messages behind, then
/// waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of pending_work_survives_sigkill"]
async fn crash_child_pending_work() {
    use mq_core::{Delay, Failure};
    let dir = PathBuf::from(std::env::var(CHILD_DIR).expect("child needs its directory"));
    let broker = EmbeddedBroker::open(sched_config(&dir))
        .await
        .expect("open");
    let consumer = broker
        .subscribe(
            Subscription::new(SCHED_TOPIC, "g"),
            ConsumerOptions::new().consume_from(ConsumeFrom::First),
        )
        .await
        .expect("subscribe");
    for (b, ms) in [("delay-A", 1500), ("delay-B", 1000)] {
        broker
            .send(
                Message::new(SCHED_TOPIC, b),
                SendOptions::new().delayed(Delay::After(Duration::from_millis(ms))),
            )
            .await
            .expect("send delayed");
    }
    broker
        .send(Message::new(SCHED_TOPIC, "retry-me"), SendOptions::new())
        .await
        .expect("send");
    let d = drain(&*consumer, 1, Duration::from_secs(5), false).await;
    consumer
        .nack(
            &d[0].receipt,
            Failure::retry_after("later", Duration::from_millis(1500)),
        )
        .await
        .expect("nack");
    for b in ["half-commit", "half-rollback"] {
        broker
            .prepare(Message::new(SCHED_TOPIC, b), SendOptions::new(), "p1")
            .await
            .expect("prepare");
    }
    broker.flush().await.expect("flush");
    println!("READY");
    tokio::time::sleep(Duration::from_secs(3600)).await;
}

struct ByBody;

#[async_trait::async_trait]
impl mq_core::TransactionChecker for ByBody {
    async fn check(&self, half: &mq_core::MessageView) -> mq_core::TxState {
        if &half.body[..] == b"half-commit" {
            mq_core::TxState::Commit
        } else {
            mq_core::TxState::Rollback
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_work_survives_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut child, stdout) = spawn_child("crash_child_pending_work", dir.path());
    let ready = BufReader::new(stdout)
        .lines()
        .map_while(|l| l.ok())
        .any(|l| l.ends_with("READY"));
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    assert!(ready, "child never got ready");

    let broker = EmbeddedBroker::open(sched_config(dir.path()))
        .await
        .expect("reopen");
    assert_eq!(broker.pending_transactions(), 2);
    broker
        .register_checker("p1", Arc::new(ByBody))
        .await
        .expect("register");
    let consumer = broker
        .subscribe(
            Subscription::new(SCHED_TOPIC, "g"),
            ConsumerOptions::new().consume_from(ConsumeFrom::First),
        )
        .await
        .expect("subscribe");
    let got = drain(&*consumer, 4, Duration::from_secs(15), true).await;
    let mut bodies: Vec<(String, u32)> = got
        .iter()
        .map(|d| (body(d), d.message.reconsume_times))
        .collect();
    bodies.sort();
    assert_eq!(
        bodies,
        vec![
            ("delay-A".to_string(), 0),
            ("delay-B".to_string(), 0),
            ("half-commit".to_string(), 0),
            ("retry-me".to_string(), 1),
        ]
    );
    let more = drain(&*consumer, 1, Duration::from_millis(1500), true).await;
    assert!(
        more.is_empty(),
        "unexpected {:?}",
        more.iter().map(body).collect::<Vec<_>>()
    );
    assert_eq!(broker.pending_delays(), 0);
    assert_eq!(broker.pending_transactions(), 0);
    broker.shutdown().await.expect("shutdown");
}

// Reproductions of the losses found by a hostile operator (issue 10), one test each.

const LATE: Duration = Duration::from_secs(3600);

/// The child process: plain sends, one-hour delays and one-hour retries, then waits to be
/// killed without any flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of delays_and_retries_wait_after_sigkill"]
async fn crash_child_late_work() {
    use mq_core::{Delay, Failure};
    let dir = PathBuf::from(std::env::var(CHILD_DIR).expect("child needs its directory"));
    let broker = EmbeddedBroker::open(config(&dir)).await.expect("open");
    let consumer = broker
        .subscribe(
            Subscription::new(SCHED_TOPIC, "g"),
            ConsumerOptions::new().consume_from(ConsumeFrom::First),
        )
        .await
        .expect("subscribe");
    for i in 0..20 {
        let m = Message::new(SCHED_TOPIC, format!("retry-{i}"));
        broker.send(m, SendOptions::new()).await.expect("send");
    }
    let got = drain(&*consumer, 20, Duration::from_secs(10), false).await;
    for d in &got {
        consumer
            .nack(&d.receipt, Failure::retry_after("later", LATE))
            .await
            .expect("nack");
    }
    for i in 0..5 {
        let m = Message::new(SCHED_TOPIC, format!("plain-{i}"));
        broker.send(m, SendOptions::new()).await.expect("send");
    }
    for i in 0..40 {
        let m = Message::new(SCHED_TOPIC, format!("delayed-{i}"));
        broker
            .send(m, SendOptions::new().delayed(Delay::After(LATE)))
            .await
            .expect("send delayed");
    }
    println!("READY {}", got.len());
    tokio::time::sleep(LATE).await;
}

/// What a group gets within `wait` after a reopen; retried copies are marked `(retry)`.
async fn bodies_of_group(broker: &Arc<EmbeddedBroker>, group: &str, wait: Duration) -> Vec<String> {
    let consumer = broker
        .subscribe(
            Subscription::new(SCHED_TOPIC, group),
            ConsumerOptions::new().consume_from(ConsumeFrom::First),
        )
        .await
        .expect("subscribe");
    let mut got: Vec<String> = drain(&*consumer, usize::MAX, wait, true)
        .await
        .iter()
        .map(|d| match d.message.reconsume_times {
            0 => body(d),
            _ => format!("{} (retry)", body(d)),
        })
        .collect();
    got.sort();
    consumer.close().await.expect("close");
    got
}

/// The immediate sends of `crash_child_late_work`: neither a delayed message nor a retry.
fn sent_at_once() -> Vec<String> {
    let mut v: Vec<String> = (0..5)
        .map(|i| format!("plain-{i}"))
        .chain((0..20).map(|i| format!("retry-{i}")))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delays_and_retries_wait_after_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut child, stdout) = spawn_child("crash_child_late_work", dir.path());
    let ready = BufReader::new(stdout)
        .lines()
        .map_while(|l| l.ok())
        .find_map(|l| l.split("READY ").nth(1).map(str::to_owned));
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    assert_eq!(ready.as_deref(), Some("20"), "child never got ready");

    let broker = EmbeddedBroker::open(config(dir.path()))
        .await
        .expect("reopen");
    assert_eq!(broker.pending_delays(), 60);
    // A new group sees what was sent at once; the old one may see again what it had not
    // saved progress for, but no delayed message and no retry comes before its hour.
    assert_eq!(
        bodies_of_group(&broker, "fresh", Duration::from_secs(2)).await,
        sent_at_once()
    );
    let old = bodies_of_group(&broker, "g", Duration::from_secs(1)).await;
    assert!(
        old.iter().all(|b| sent_at_once().contains(b)),
        "early: {old:?}"
    );
    assert!(
        broker.corruptions().is_empty(),
        "{:?}",
        broker.corruptions()
    );
    broker.shutdown().await.expect("shutdown");

    // The same after a clean stop without a checkpoint, or with a damaged one.
    for damage in ["delete", "flip"] {
        let path = dir.path().join("checkpoint");
        if damage == "delete" {
            std::fs::remove_file(&path).expect("rm checkpoint");
        } else {
            let mut bytes = std::fs::read(&path).expect("checkpoint");
            bytes[0] ^= 0x10;
            std::fs::write(&path, bytes).expect("write");
        }
        let broker = EmbeddedBroker::open(config(dir.path()))
            .await
            .expect("reopen");
        assert_eq!(broker.pending_delays(), 60, "after checkpoint {damage}");
        let group = format!("fresh-{damage}");
        assert_eq!(
            bodies_of_group(&broker, &group, Duration::from_secs(1)).await,
            sent_at_once(),
            "after checkpoint {damage}"
        );
        broker.shutdown().await.expect("shutdown");
    }
}

/// The child process: a new group that starts at the end of the queue, 200 sends, 100 acks,
/// then waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of a_new_groups_start_survives_sigkill"]
async fn crash_child_new_group() {
    let dir = PathBuf::from(std::env::var(CHILD_DIR).expect("child needs its directory"));
    let broker = EmbeddedBroker::open(config(&dir)).await.expect("open");
    let consumer = broker
        .subscribe(
            Subscription::new(TOPIC, "late-joiner"),
            ConsumerOptions::new().consume_from(ConsumeFrom::Last),
        )
        .await
        .expect("subscribe");
    for i in 0..200 {
        let m = Message::new(TOPIC, format!("m-{i:03}"));
        broker.send(m, SendOptions::queue(0)).await.expect("send");
    }
    let got = drain(&*consumer, 100, Duration::from_secs(10), false).await;
    let receipts: Vec<_> = got.iter().take(100).map(|d| d.receipt.clone()).collect();
    consumer.ack(&receipts).await.expect("ack");
    println!("READY {}", receipts.len());
    tokio::time::sleep(LATE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_groups_start_survives_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut child, stdout) = spawn_child("crash_child_new_group", dir.path());
    let ready = BufReader::new(stdout)
        .lines()
        .map_while(|l| l.ok())
        .find_map(|l| l.split("READY ").nth(1).map(str::to_owned));
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    assert_eq!(ready.as_deref(), Some("100"), "child never got ready");

    let broker = EmbeddedBroker::open(config(dir.path()))
        .await
        .expect("reopen");
    let consumer = broker
        .subscribe(
            Subscription::new(TOPIC, "late-joiner"),
            ConsumerOptions::new().consume_from(ConsumeFrom::Last),
        )
        .await
        .expect("subscribe");
    let got: HashSet<String> = drain(&*consumer, usize::MAX, Duration::from_secs(2), true)
        .await
        .iter()
        .map(body)
        .collect();
    // At least everything not acknowledged comes again (acknowledged ones may, too).
    let unacked: HashSet<String> = (100..200).map(|i| format!("m-{i:03}")).collect();
    let missing: Vec<_> = unacked.difference(&got).collect();
    assert!(
        missing.is_empty(),
        "unacknowledged messages skipped: {missing:?}"
    );
    broker.shutdown().await.expect("shutdown");
}

/// 1,500 messages on queue 0 with a 64-entry index segment, closed cleanly.
async fn numbered_dir() -> (tempfile::TempDir, Vec<String>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let bodies = write_numbered(dir.path(), 1500).await;
    (dir, bodies)
}

fn index_dir(dir: &Path) -> PathBuf {
    dir.join("consumequeue").join(TOPIC).join("0")
}

fn index_segment(dir: &Path, first: u64) -> PathBuf {
    index_dir(dir).join(format!("{first:020}"))
}

/// Reopens, sends `more` to queue 0, reopens again and checks that every message is served
/// once, in order, and what was reported.
async fn all_served_after(
    dir: &Path,
    bodies: &[String],
    more: usize,
) -> Vec<mq_core::embedded::Corruption> {
    let broker = EmbeddedBroker::open(config(dir)).await.expect("reopen");
    let reported = broker.corruptions();
    let mut want = bodies.to_vec();
    for i in 0..more {
        let b = format!("after-{i:04}");
        broker
            .send(Message::new(TOPIC, b.clone()), SendOptions::queue(0))
            .await
            .expect("send");
        want.push(b);
    }
    broker.shutdown().await.expect("shutdown");
    let (got, broker) = bodies_after_reopen(dir, want.len()).await;
    assert_eq!(
        got.len(),
        want.len(),
        "served {} of {}",
        got.len(),
        want.len()
    );
    assert_eq!(got, want);
    broker.shutdown().await.expect("shutdown");
    reported
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_index_segment_is_rebuilt() {
    let (dir, bodies) = numbered_dir().await;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(index_segment(dir.path(), 640))
        .expect("open");
    f.set_len(24 * 10).expect("cut");
    drop(f);
    let reported = all_served_after(dir.path(), &bodies, 50).await;
    assert!(reported.is_empty(), "nothing was lost: {reported:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_entry_with_a_huge_size_is_rebuilt() {
    let (dir, bodies) = numbered_dir().await;
    let path = index_segment(dir.path(), 0);
    let mut bytes = std::fs::read(&path).expect("read");
    // Entry 3's size field: 4 GiB - 1.
    bytes[3 * 24 + 8..3 * 24 + 12].copy_from_slice(&u32::MAX.to_le_bytes());
    std::fs::write(&path, bytes).expect("write");
    all_served_after(dir.path(), &bodies, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlong_index_segment_is_cut() {
    let (dir, bodies) = numbered_dir().await;
    let path = index_segment(dir.path(), 64);
    let mut bytes = std::fs::read(&path).expect("read");
    bytes.extend_from_slice(&[0xAB; 24 * 5]);
    std::fs::write(&path, bytes).expect("write");
    all_served_after(dir.path(), &bodies, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_cut_from_the_last_index_segment_are_rebuilt() {
    let (dir, bodies) = numbered_dir().await;
    // The last segment holds offsets 1472..1500: keep 5 of them.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(index_segment(dir.path(), 1472))
        .expect("open");
    f.set_len(24 * 5).expect("cut");
    drop(f);
    // Later sends must not reuse the cut offsets.
    let reported = all_served_after(dir.path(), &bodies, 40).await;
    assert!(reported.is_empty(), "nothing was lost: {reported:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_index_segment_or_queue_directory_is_rebuilt() {
    let (dir, bodies) = numbered_dir().await;
    std::fs::remove_file(index_segment(dir.path(), 256)).expect("rm");
    all_served_after(dir.path(), &bodies, 10).await;
    let mut bodies = bodies;
    bodies.extend((0..10).map(|i| format!("after-{i:04}")));
    std::fs::remove_dir_all(index_dir(dir.path())).expect("rm queue dir");
    all_served_after(dir.path(), &bodies, 10).await;
    bodies.extend((0..10).map(|i| format!("after-{i:04}")));
    // The first segment, too (nothing was ever deleted by retention).
    std::fs::remove_file(index_segment(dir.path(), 0)).expect("rm");
    all_served_after(dir.path(), &bodies, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_entry_pointing_at_another_record_is_rebuilt() {
    let (dir, bodies) = numbered_dir().await;
    let path = index_segment(dir.path(), 0);
    let mut bytes = std::fs::read(&path).expect("read");
    // Entry 7 takes entry 8's position and size: a valid record, but not offset 7's.
    let eight = bytes[8 * 24..8 * 24 + 12].to_vec();
    bytes[7 * 24..7 * 24 + 12].copy_from_slice(&eight);
    std::fs::write(&path, bytes).expect("write");
    all_served_after(dir.path(), &bodies, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_log_cut_below_the_checkpoint_is_reported() {
    let (dir, bodies) = numbered_dir().await;
    let last = snapshot(dir.path()).last().expect("segments").0.clone();
    let len = std::fs::metadata(&last).expect("stat").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .expect("open");
    f.set_len(len / 2).expect("cut");
    drop(f);
    let broker = EmbeddedBroker::open(config(dir.path()))
        .await
        .expect("reopen");
    let reported = broker.corruptions();
    assert!(
        reported
            .iter()
            .any(|c| c.segment == last && c.reason.contains("below the checkpoint")),
        "{reported:?}"
    );
    broker.shutdown().await.expect("shutdown");
    // Whatever survived is served, in order, and later sends get fresh offsets.
    let (got, broker) = bodies_after_reopen(dir.path(), 1).await;
    assert!(!got.is_empty() && got.len() < bodies.len());
    assert_eq!(got[..], bodies[..got.len()]);
    broker.shutdown().await.expect("shutdown");

    // A deleted last segment is reported under its own name.
    let (dir, _) = numbered_dir().await;
    let segments = snapshot(dir.path());
    let middle = segments[segments.len() / 2].0.clone();
    std::fs::remove_file(&middle).expect("rm");
    let broker = EmbeddedBroker::open(config(dir.path()))
        .await
        .expect("reopen");
    let reported = broker.corruptions();
    assert!(reported.iter().any(|c| c.segment == middle), "{reported:?}");
    broker.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_topic_table_hides_no_queue() {
    for damage in ["0", "2", "garbage"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = EmbeddedBroker::open(config(dir.path()))
            .await
            .expect("open");
        let mut sent = Vec::new();
        for i in 0..200 {
            let b = format!("q-{i:03}");
            broker
                .send(Message::new(TOPIC, b.clone()), SendOptions::new())
                .await
                .expect("send");
            sent.push(b);
        }
        broker.shutdown().await.expect("shutdown");
        let path = dir.path().join("config").join("topics.json");
        let table = if damage == "garbage" {
            "{\"crash\": 4".to_owned()
        } else {
            format!("{{\"{TOPIC}\": {damage}}}")
        };
        std::fs::write(&path, table).expect("write");
        let broker = EmbeddedBroker::open(config(dir.path()))
            .await
            .expect("reopen");
        assert_eq!(
            broker.queue_count(TOPIC).await.expect("count"),
            Some(4),
            "{damage}"
        );
        assert!(!broker.corruptions().is_empty(), "damage is reported");
        broker
            .send(Message::new(TOPIC, "later"), SendOptions::new())
            .await
            .expect("send after damage");
        sent.push("later".into());
        broker.shutdown().await.expect("shutdown");
        let (mut got, broker) = bodies_after_reopen(dir.path(), sent.len()).await;
        got.sort();
        sent.sort();
        assert_eq!(got, sent, "topic table {damage}");
        broker.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_file_does_not_unlock_the_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = EmbeddedBroker::open(config(dir.path()))
        .await
        .expect("open");
    for entry in std::fs::read_dir(dir.path()).expect("list") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            std::fs::remove_file(path).expect("rm");
        }
    }
    let err = EmbeddedBroker::open(config(dir.path()))
        .await
        .expect_err("still locked");
    assert!(matches!(err, mq_core::BrokerError::Locked(_)), "{err}");
    broker.shutdown().await.expect("shutdown");
}

//! Unit tests of the writer: group commit, the record limit, segment roll, stop, and the
//! read-only state after a failed write.

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::sync::watch;

use super::*;
use crate::embedded::commit_log::CommitLog;
use crate::embedded::io::{IoOp, Recorder};
use crate::message::Message;

const LIMIT: usize = 4096;
const ASYNC: FlushPolicy = FlushPolicy::Async {
    interval: Duration::from_secs(1),
};

fn shared(dir: &Path, flush: FlushPolicy, segment_size: u64) -> Arc<Shared> {
    Arc::new(Shared {
        flush,
        commit_log: CommitLog::open(&dir.join("commitlog"), segment_size).unwrap(),
        dispatched: AtomicU64::new(0),
        appended: watch::channel(0).0,
        stats: Default::default(),
    })
}

fn writer(shared: &Arc<Shared>) -> Writer {
    let active = shared.commit_log.segment_of(0).unwrap();
    Writer::new(shared.clone(), active, 0, LIMIT, None)
}

fn queue(dir: &Path, id: u32) -> Arc<ConsumeQueue> {
    let dir = dir.join("consumequeue").join("t").join(id.to_string());
    Arc::new(ConsumeQueue::open(id, &dir, 1000).unwrap().0)
}

fn request(
    queue: &Arc<ConsumeQueue>,
    bodies: &[&str],
) -> (AppendRequest, oneshot::Receiver<Result<u64>>) {
    let (reply, rx) = oneshot::channel();
    let messages = bodies
        .iter()
        .map(|b| Outgoing::from(Message::new("t", b.to_string()).into_parts()))
        .collect();
    let request = AppendRequest {
        queue: queue.clone(),
        messages,
        reply,
    };
    (request, rx)
}

fn answer(rx: &mut oneshot::Receiver<Result<u64>>) -> Result<u64> {
    rx.try_recv()
        .expect("the writer answers every request of its batch")
}

/// The body of the record indexed at `offset` of `queue`, checked to be that record.
fn body_at(shared: &Shared, queue: &ConsumeQueue, offset: u64) -> String {
    let e = queue.entry(offset).unwrap().expect("indexed");
    let rec = shared
        .commit_log
        .read_record(e.position, e.size as usize)
        .unwrap();
    assert_eq!(rec.placement.queue_id, queue.queue_id);
    assert_eq!(rec.placement.queue_offset, offset);
    String::from_utf8(rec.message.body.to_vec()).unwrap()
}

fn assert_failed(result: Result<u64>, says: &str) {
    match result {
        Err(BrokerError::Backend {
            kind: BackendErrorKind::Failed,
            message,
            ..
        }) => assert!(message.contains(says), "{message:?} lacks {says:?}"),
        other => panic!("expected a failed backend, got {other:?}"),
    }
}

#[test]
fn a_batch_is_one_write_and_under_sync_one_fsync() {
    for (flush, syncs) in [(FlushPolicy::Sync, 1), (ASYNC, 0)] {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared(dir.path(), flush, 1 << 20);
        let (q0, q1) = (queue(dir.path(), 0), queue(dir.path(), 1));
        let mut w = writer(&shared);
        let appended = shared.appended.subscribe();
        let (a, mut ra) = request(&q0, &["a0", "a1"]);
        let (b, mut rb) = request(&q1, &["b0"]);
        let (c, mut rc) = request(&q0, &["a2"]);
        let mut batch = vec![a, b, c];
        let rec = Recorder::start(dir.path());
        w.write_batch(&mut batch);
        rec.stop();

        assert!(batch.is_empty());
        // Each request learns the offset of its first message in its own queue.
        assert_eq!(answer(&mut ra).unwrap(), 0);
        assert_eq!(answer(&mut rb).unwrap(), 0);
        assert_eq!(answer(&mut rc).unwrap(), 2);
        assert_eq!((q0.max_offset(), q1.max_offset()), (3, 1));
        for (q, offset, body) in [(&q0, 0, "a0"), (&q0, 1, "a1"), (&q0, 2, "a2")] {
            assert_eq!(body_at(&shared, q, offset), body);
        }
        assert_eq!(body_at(&shared, &q1, 0), "b0");

        let log = shared.commit_log.segment_of(0).unwrap();
        let ops = rec.ops();
        let writes = ops
            .iter()
            .filter(|op| matches!(op, IoOp::Write(p, ..) if *p == log.path))
            .count();
        let fsyncs = ops
            .iter()
            .filter(|op| matches!(op, IoOp::Sync(p) if *p == log.path))
            .count();
        assert_eq!((writes, fsyncs), (1, syncs), "{flush:?}");
        // The counts operators read agree with what reached the disk.
        let stats = shared.stats.read();
        assert_eq!(
            (stats.messages, stats.batches, stats.syncs),
            (4, 1, syncs as u64),
            "{flush:?}"
        );
        assert_eq!(
            shared.dispatched.load(Ordering::Acquire),
            log.len().unwrap()
        );
        assert!(appended.has_changed().unwrap(), "consumers are woken");
    }
}

#[test]
fn a_request_over_the_record_limit_fails_alone_and_whole() {
    let dir = tempfile::tempdir().unwrap();
    let shared = shared(dir.path(), ASYNC, 1 << 20);
    let q = queue(dir.path(), 0);
    let mut w = writer(&shared);
    let big = "x".repeat(LIMIT);
    let (a, mut ra) = request(&q, &["a"]);
    let (b, mut rb) = request(&q, &["b", &big]);
    let (c, mut rc) = request(&q, &["c"]);
    w.write_batch(&mut vec![a, b, c]);

    assert_eq!(answer(&mut ra).unwrap(), 0);
    assert!(matches!(
        answer(&mut rb),
        Err(BrokerError::InvalidConfig(_))
    ));
    // Nothing of the refused request took an offset.
    assert_eq!(answer(&mut rc).unwrap(), 1);
    assert_eq!(q.max_offset(), 2);
    assert_eq!(body_at(&shared, &q, 1), "c");
    // A refused message is not a failure of the writer.
    assert!(w.failed.is_none());
    let (d, mut rd) = request(&q, &["d"]);
    w.write_batch(&mut vec![d]);
    assert_eq!(answer(&mut rd).unwrap(), 2);
}

#[test]
fn a_full_segment_is_synced_and_the_next_one_started() {
    let dir = tempfile::tempdir().unwrap();
    let segment_size = 512;
    let shared = shared(dir.path(), ASYNC, segment_size);
    let q = queue(dir.path(), 0);
    let mut w = writer(&shared);
    // Two such records do not fit in one segment, and records never span segments.
    let body = "y".repeat(300);
    let (a, mut ra) = request(&q, &[&body, &body, &body]);
    let rec = Recorder::start(dir.path());
    w.write_batch(&mut vec![a]);
    rec.stop();

    assert_eq!(answer(&mut ra).unwrap(), 0);
    let positions: Vec<u64> = (0..3)
        .map(|o| q.entry(o).unwrap().unwrap().position)
        .collect();
    assert_eq!(positions, [0, segment_size, 2 * segment_size]);
    for offset in 0..3 {
        assert_eq!(body_at(&shared, &q, offset), body);
    }
    assert_eq!(shared.commit_log.segments().len(), 3);
    let first = shared.commit_log.segment_of(0).unwrap();
    assert!(
        rec.ops()
            .iter()
            .any(|op| matches!(op, IoOp::Sync(p) if *p == first.path)),
        "a segment left behind is synced even under the async policy"
    );
    assert_eq!(w.write_pos, shared.dispatched.load(Ordering::Acquire));
}

#[test]
fn after_a_failed_write_every_append_fails_until_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let shared = shared(dir.path(), ASYNC, 1 << 20);
    let q = queue(dir.path(), 0);
    let good = shared.commit_log.segment_of(0).unwrap();
    // A read-only handle makes the write fail as a broken disk would.
    let read_only = Arc::new(Segment {
        base: 0,
        path: good.path.clone(),
        file: std::fs::File::open(&good.path).unwrap(),
    });
    let mut w = Writer::new(shared.clone(), read_only, 0, LIMIT, None);
    let appended = shared.appended.subscribe();
    let (a, mut ra) = request(&q, &["a"]);
    let (b, mut rb) = request(&q, &["b"]);
    w.write_batch(&mut vec![a, b]);

    // Every request of the failed batch hears of it; nothing is indexed or announced.
    assert_failed(answer(&mut ra), "write segment");
    assert_failed(answer(&mut rb), "write segment");
    assert!(w.failed.is_some());
    assert_eq!(q.max_offset(), 0);
    assert_eq!(shared.dispatched.load(Ordering::Acquire), 0);
    assert!(!appended.has_changed().unwrap());

    // The disk would take the write now; the writer still refuses, so that only
    // recovery decides what the log holds.
    w.active = good.clone();
    for body in ["c", "d"] {
        let (c, mut rc) = request(&q, &[body]);
        w.write_batch(&mut vec![c]);
        assert_failed(answer(&mut rc), "read-only after an earlier write failure");
    }
    assert_eq!(good.len().unwrap(), 0);
    assert_eq!(q.max_offset(), 0);
}

#[tokio::test]
async fn stop_stores_what_came_before_and_closes_on_what_came_after() {
    for inline in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared(dir.path(), ASYNC, 1 << 20);
        let q = queue(dir.path(), 0);
        let (tx, rx) = mpsc::channel(8);
        let (a, ra) = request(&q, &["a"]);
        let (b, rb) = request(&q, &["b"]);
        let (ack, acked) = oneshot::channel();
        for msg in [
            WriterMsg::Append(a),
            WriterMsg::Stop(ack),
            WriterMsg::Append(b),
        ] {
            assert!(tx.send(msg).await.is_ok());
        }
        writer(&shared).run(rx, inline).await;

        assert_eq!(ra.await.unwrap().unwrap(), 0, "inline: {inline}");
        assert!(matches!(rb.await.unwrap(), Err(BrokerError::Closed)));
        acked.await.unwrap();
        assert!(tx.is_closed());
        assert_eq!(q.max_offset(), 1);
    }
}

//! The delay scheduler: delayed messages and retries wait in the schedule topic and are
//! written to their real queue when due.
//!
//! A pending message costs memory only for its place in a heap of (due time, schedule offset)
//! and one flag, never its payload: the due time is kept in the schedule index (in place of the
//! store time), so the heap is rebuilt from the index alone after a restart. Progress (the
//! lowest offset not yet delivered) is saved with consumer progress, so retention keeps every
//! pending message. Messages fired above that lowest offset (a short delay behind a long one)
//! are saved as ranges in `config/scheduler_fired.json` with the progress, so a clean restart
//! fires nothing twice; a crash may fire again what fired since the last save.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::consume_queue::ConsumeQueue;
use super::offsets::{OffsetStore, ProgressKey};
use super::store::{MessageStore, Outgoing, Queued};
use super::system_topics::{DUE, REAL_QID, REAL_TOPIC, SCHEDULER_GROUP, SCHEDULE_TOPIC};
use crate::broker::SendResult;
use crate::clock::Clock;
use crate::error::{BrokerError, Result};
use crate::message::MessageParts;

/// Due messages written per round.
const FIRE_BATCH: usize = 4096;

/// What `config/scheduler_fired.json` holds.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct FiredFile {
    base: u64,
    /// Fired offsets at or above `base`, as `[start, end)` ranges.
    ranges: Vec<(u64, u64)>,
}

#[derive(Debug, Default)]
struct Pending {
    heap: BinaryHeap<Reverse<(u64, u64)>>,
    /// Next schedule offset to read into the heap.
    loaded: u64,
    /// Every schedule offset below has been delivered.
    base: u64,
    /// Delivered flags of `base..loaded`.
    fired: VecDeque<bool>,
    /// Offsets fired before the last restart, above `base`, not loaded yet.
    fired_before: Vec<(u64, u64)>,
    /// Whether the fired set changed since the last save.
    dirty: bool,
}

/// Holds delayed messages until they are due.
#[derive(Debug)]
pub(crate) struct DelayScheduler {
    store: Arc<MessageStore>,
    offsets: Arc<OffsetStore>,
    clock: Clock,
    queue: Arc<ConsumeQueue>,
    pending: Mutex<Pending>,
    fired_path: std::path::PathBuf,
}

impl DelayScheduler {
    pub fn open(store: Arc<MessageStore>, offsets: Arc<OffsetStore>, clock: Clock) -> Result<Self> {
        let topic = store.create_topic(SCHEDULE_TOPIC, 1)?;
        let queue = topic.queues[0].clone();
        let base = offsets
            .get(&progress_key())
            .unwrap_or_else(|| queue.min_offset())
            .clamp(queue.min_offset(), queue.max_offset());
        offsets.set(progress_key(), base);
        let fired_path = store.data_dir().join("config").join("scheduler_fired.json");
        let fired_before = match std::fs::read(&fired_path) {
            Ok(bytes) => match serde_json::from_slice::<FiredFile>(&bytes) {
                Ok(f) => f
                    .ranges
                    .into_iter()
                    .filter(|(_, end)| *end > base)
                    .collect(),
                Err(e) => {
                    tracing::warn!(path = %fired_path.display(), error = %e, "unreadable fired set; messages fired before the restart may fire again");
                    Vec::new()
                }
            },
            Err(_) => Vec::new(),
        };
        Ok(DelayScheduler {
            store,
            offsets,
            clock,
            queue,
            pending: Mutex::new(Pending {
                loaded: base,
                base,
                fired_before,
                ..Pending::default()
            }),
            fired_path,
        })
    }

    /// Saves the offsets fired above the progress, so that a restart does not fire them again.
    pub fn save(&self) -> Result<()> {
        let file = {
            let mut p = self.pending.lock();
            if !p.dirty {
                return Ok(());
            }
            p.dirty = false;
            let mut ranges: Vec<(u64, u64)> = Vec::new();
            for (i, fired) in p.fired.iter().enumerate() {
                if !*fired {
                    continue;
                }
                let o = p.base + i as u64;
                match ranges.last_mut() {
                    Some((_, end)) if *end == o => *end = o + 1,
                    _ => ranges.push((o, o + 1)),
                }
            }
            ranges.extend(p.fired_before.iter().copied());
            FiredFile {
                base: p.base,
                ranges,
            }
        };
        let bytes = serde_json::to_vec(&file)
            .map_err(|e| BrokerError::io("encode", &self.fired_path, std::io::Error::other(e)))?;
        super::flush::write_atomically(&self.fired_path, &bytes)
    }

    /// Messages waiting for their due time.
    pub fn pending(&self) -> usize {
        let p = self.pending.lock();
        p.heap.len() + (self.queue.max_offset() - p.loaded) as usize
    }

    /// Whether the schedule record at `offset` still waits: not fired since it was stored
    /// (before a restart: not in the saved fired set; a crash may fire again what fired since
    /// the last save, and then it waits again).
    pub fn is_waiting(&self, offset: u64) -> bool {
        let p = self.pending.lock();
        if offset < p.base {
            return false;
        }
        if offset < p.loaded {
            return p
                .fired
                .get((offset - p.base) as usize)
                .is_some_and(|fired| !fired);
        }
        !p.fired_before
            .iter()
            .any(|(start, end)| (*start..*end).contains(&offset))
    }

    /// Stores `out` for delivery to `queue` of `topic` at `due` (ms); writes it there at once
    /// if it is already due.
    pub async fn put(
        &self,
        out: Outgoing,
        topic: &str,
        queue: &Arc<ConsumeQueue>,
        due: u64,
    ) -> Result<SendResult> {
        let message_id = out.parts.id;
        let (to, out) = self.placed(out, topic, queue, due);
        let queue_offset = self.store.enqueue(to, vec![out]).await?.stored().await?;
        // The offset is the schedule's while the message waits, the real queue's if it was due.
        Ok(SendResult {
            message_id,
            queue_id: queue.queue_id,
            queue_offset,
        })
    }

    /// Like [`put`](Self::put), but returns at once (see [`MessageStore::defer`]): every
    /// append made after this returns is stored after the message.
    pub fn defer(&self, out: Outgoing, topic: &str, queue: &Arc<ConsumeQueue>, due: u64) -> Queued {
        let (to, out) = self.placed(out, topic, queue, due);
        self.store.defer(to, vec![out])
    }

    /// Where `out` is written, and as what: to `queue` if already due, else to the schedule,
    /// marked with its destination and due time.
    fn placed(
        &self,
        mut out: Outgoing,
        topic: &str,
        queue: &Arc<ConsumeQueue>,
        due: u64,
    ) -> (Arc<ConsumeQueue>, Outgoing) {
        if due <= self.clock.now_ms() {
            return (queue.clone(), out);
        }
        let props = &mut out.parts.properties;
        props.insert(REAL_TOPIC.into(), topic.to_owned());
        props.insert(REAL_QID.into(), queue.queue_id.to_string());
        props.insert(DUE.into(), due.to_string());
        // The record belongs to the schedule, never to its destination: recovery indexes a
        // record under the topic it names.
        out.parts.topic = SCHEDULE_TOPIC.into();
        out.index_time = Some(due);
        (self.queue.clone(), out)
    }

    /// Reads new schedule entries into the heap.
    fn load(&self) -> Result<()> {
        let max = self.queue.max_offset();
        loop {
            let from = self.pending.lock().loaded;
            if from >= max {
                return Ok(());
            }
            let entries = self.queue.read(from, FIRE_BATCH)?;
            if entries.is_empty() {
                return Ok(());
            }
            let mut p = self.pending.lock();
            let p = &mut *p;
            // Size the heap once for everything still to load, not by doubling.
            let wanted = (max - from) as usize;
            if p.heap.capacity() - p.heap.len() < wanted {
                p.heap.reserve_exact(wanted);
            }
            for (i, e) in entries.iter().enumerate() {
                let offset = from + i as u64;
                let fired = p
                    .fired_before
                    .iter()
                    .any(|(start, end)| (*start..*end).contains(&offset));
                if !fired {
                    p.heap.push(Reverse((e.store_timestamp, offset)));
                }
                p.fired.push_back(fired);
            }
            p.loaded = from + entries.len() as u64;
        }
    }

    /// The due messages, earliest first, and the due time of the next one after them.
    fn take_due(&self, now: u64) -> (Vec<u64>, Option<u64>) {
        let mut p = self.pending.lock();
        let mut due = Vec::new();
        while due.len() < FIRE_BATCH {
            match p.heap.peek() {
                Some(Reverse((at, offset))) if *at <= now => {
                    due.push(*offset);
                    p.heap.pop();
                }
                _ => break,
            }
        }
        let next = p.heap.peek().map(|Reverse((at, _))| *at);
        (due, next)
    }

    /// Writes due messages to their real queues, in due order.
    async fn fire(&self, offsets: &[u64]) -> Result<()> {
        let mut entries = Vec::with_capacity(offsets.len());
        for &o in offsets {
            entries.push(self.queue.entry(o)?);
        }
        let present: Vec<_> = entries.iter().flatten().copied().collect();
        let mut records = self.store.read_records(&present).into_iter();
        let mut items = Vec::with_capacity(offsets.len());
        let mut item_offsets = Vec::with_capacity(offsets.len());
        let mut skipped = Vec::new();
        for (&offset, entry) in offsets.iter().zip(&entries) {
            let record = match entry {
                Some(_) => records.next(),
                None => None,
            };
            let Some(Ok(rec)) = record else {
                // Gone or damaged (already reported): nothing left to deliver.
                skipped.push(offset);
                continue;
            };
            let mut view = rec.message;
            // The due time in the record wins over the index's copy, which could be damaged.
            let recorded_due = view.properties.get(DUE).and_then(|d| d.parse::<u64>().ok());
            if let Some(due) = recorded_due.filter(|d| *d > self.clock.now_ms()) {
                tracing::error!(
                    offset,
                    due,
                    "schedule index names an earlier due time than its record; the record wins"
                );
                self.pending.lock().heap.push(Reverse((due, offset)));
                continue;
            }
            let Some(topic) = view.properties.remove(REAL_TOPIC) else {
                tracing::error!(offset, "scheduled record without a destination; skipped");
                skipped.push(offset);
                continue;
            };
            let qid: u32 = view
                .properties
                .remove(REAL_QID)
                .and_then(|q| q.parse().ok())
                .unwrap_or(0);
            view.properties.remove(DUE);
            view.topic = topic.clone();
            let queue = match self.store.topic(&topic) {
                Some(t) => t.queues.get(qid as usize).or(t.queues.first()).cloned(),
                None => self
                    .store
                    .create_topic(&topic, self.store.config().common.default_queues)
                    .ok()
                    .and_then(|t| t.queues.first().cloned()),
            };
            let Some(queue) = queue else {
                tracing::error!(
                    topic,
                    "delayed message for a topic that cannot be created; dropped"
                );
                skipped.push(offset);
                continue;
            };
            let reconsume_times = view.reconsume_times;
            items.push((
                queue,
                Outgoing {
                    parts: MessageParts::from(view),
                    reconsume_times,
                    index_time: None,
                },
            ));
            item_offsets.push(offset);
        }
        let results = self.store.append_many(items).await;
        let mut done = skipped;
        let mut failed = Vec::new();
        let mut error = None;
        for (offset, r) in item_offsets.into_iter().zip(results) {
            match r {
                Ok(_) => done.push(offset),
                Err(e) => {
                    failed.push(offset);
                    error = Some(e);
                }
            }
        }
        self.mark_fired(&done);
        if let Some(e) = error {
            // Put back everything not written; the loop retries it or stops with the store.
            let due = self.clock.now_ms();
            let mut p = self.pending.lock();
            for offset in failed {
                p.heap.push(Reverse((due, offset)));
            }
            return Err(e);
        }
        Ok(())
    }

    fn mark_fired(&self, offsets: &[u64]) {
        let mut p = self.pending.lock();
        for &o in offsets {
            if let Some(flag) = o
                .checked_sub(p.base)
                .and_then(|i| p.fired.get_mut(i as usize))
            {
                *flag = true;
            }
        }
        while p.fired.front() == Some(&true) {
            p.fired.pop_front();
            p.base += 1;
        }
        let base = p.base;
        p.fired_before.retain(|(_, end)| *end > base);
        p.dirty = true;
        drop(p);
        self.offsets.set(progress_key(), base);
    }

    /// Runs until `closing` is cancelled.
    pub async fn run(self: Arc<Self>, closing: CancellationToken) {
        let mut appended = self.store.subscribe_appends();
        loop {
            if closing.is_cancelled() {
                return;
            }
            appended.borrow_and_update();
            if let Err(e) = self.load() {
                tracing::error!(error = %e, "delay scheduler cannot read its index");
            }
            let (due, next) = self.take_due(self.clock.now_ms());
            if !due.is_empty() {
                if let Err(e) = self.fire(&due).await {
                    if matches!(e, BrokerError::Closed) {
                        return;
                    }
                    tracing::error!(error = %e, "delay scheduler cannot deliver; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                continue;
            }
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(self.clock.instant_at(at)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = appended.changed() => if r.is_err() { return },
                _ = closing.cancelled() => return,
                _ = sleep => {}
            }
        }
    }
}

fn progress_key() -> ProgressKey {
    ProgressKey {
        topic: SCHEDULE_TOPIC.into(),
        group: SCHEDULER_GROUP.into(),
        instance: None,
        queue: 0,
    }
}

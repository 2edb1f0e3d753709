//! The message store: commit log, consume queues, topics, the single writer thread that
//! appends (group commit) and recovery on open.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, oneshot, watch};

use super::commit_log::{CommitLog, Corruption, Segment};
use super::consume_queue::{tag_code, ConsumeQueue, CqEntry};
use super::flush::{write_atomically, Checkpoint, FlushPolicy};
use super::record::{self, DecodedRecord, Placement};
use super::recovery;
use super::EmbeddedConfig;
use crate::broker::{QueueSelector, SendResult};
use crate::error::{BackendErrorKind, BrokerError, Result};
use crate::message::{now_millis, MessageParts};

thread_local! {
    /// Read buffer of [`MessageStore::read_records`], kept per thread (at most one span, 4 MiB).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Most queues a topic may have.
pub(crate) const MAX_QUEUES: u32 = 1024;
/// Room for a record's header, topic, tag, keys and properties beyond the message size limit
/// (the segment size must exceed the message limit by at least this much).
pub(crate) const RECORD_OVERHEAD: usize = 64 * 1024;

/// Whether `name` can be a topic's index directory (names come from disk, so are checked).
fn valid_topic_dir(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= u8::MAX as usize
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0'])
}

/// The queues of one topic.
#[derive(Debug)]
pub(crate) struct Topic {
    pub name: Arc<str>,
    pub queues: Vec<Arc<ConsumeQueue>>,
    next: AtomicU32,
}

impl Topic {
    pub fn queue(&self, selector: &QueueSelector) -> Result<Arc<ConsumeQueue>> {
        let id = selector.pick(&self.name, self.queues.len() as u32, || {
            u64::from(self.next.fetch_add(1, Ordering::Relaxed))
        })?;
        self.queues
            .get(id as usize)
            .cloned()
            .ok_or_else(|| BrokerError::QueueNotFound {
                topic: self.name.to_string(),
                queue_id: id,
            })
    }
}

/// A message on its way into the log.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub parts: MessageParts,
    /// Deliveries that failed before this copy was written (retries).
    pub reconsume_times: u32,
    /// Time to put in the index entry instead of the store time (the due time of a delayed
    /// message, so that the delay schedule can be rebuilt from the index alone).
    pub index_time: Option<u64>,
}

impl From<MessageParts> for Outgoing {
    fn from(parts: MessageParts) -> Self {
        Outgoing {
            parts,
            reconsume_times: 0,
            index_time: None,
        }
    }
}

struct AppendRequest {
    queue: Arc<ConsumeQueue>,
    messages: Vec<Outgoing>,
    /// Answered with the queue offset of the first message.
    reply: oneshot::Sender<Result<u64>>,
}

enum WriterMsg {
    Append(AppendRequest),
    Stop(oneshot::Sender<()>),
}

/// What the writer thread shares with readers. It holds no sender of the writer's channel, so
/// dropping the [`MessageStore`] ends the writer.
pub(crate) struct Shared {
    flush: FlushPolicy,
    pub commit_log: CommitLog,
    /// Commit-log position up to which records are written and indexed.
    dispatched: AtomicU64,
    /// Bumped after every written batch, so that waiting consumers look again.
    appended: watch::Sender<u64>,
}

/// Storage shared by the consumers and the background tasks.
pub(crate) struct MessageStore {
    config: EmbeddedConfig,
    shared: Arc<Shared>,
    topics: RwLock<HashMap<Arc<str>, Arc<Topic>>>,
    topic_lock: Mutex<()>,
    writer: mpsc::Sender<WriterMsg>,
    /// The writer task, and before it starts, its state and inbox.
    writer_task: Mutex<WriterSlot>,
    corruptions: Mutex<Vec<Corruption>>,
    /// Where retention lets the commit log start (see [`MessageStore::raise_log_start`]).
    log_start: AtomicU64,
    /// The position of the last checkpoint; one sync at a time, since the periodic flush and a
    /// shutdown would race on the checkpoint file.
    sync_lock: Mutex<Option<u64>>,
    /// Held while open; released by [`MessageStore::stop`] so the directory can be reopened.
    lock: Mutex<Option<fs::File>>,
}

impl std::fmt::Debug for MessageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageStore")
            .field("data_dir", &self.config.data_dir)
            .finish_non_exhaustive()
    }
}

impl MessageStore {
    /// Opens the store under `config.data_dir`, recovering from the last checkpoint.
    pub fn open(config: EmbeddedConfig) -> Result<Arc<Self>> {
        let dir = config.data_dir.clone();
        for sub in ["commitlog", "consumequeue", "config"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(|e| BrokerError::io("create directory", &p, e))?;
        }
        // The directory itself is locked, so deleting a file cannot let a second process in.
        let lock = fs::File::open(&dir).map_err(|e| BrokerError::io("open", &dir, e))?;
        if lock.try_lock().is_err() {
            return Err(BrokerError::Locked(dir));
        }

        let commit_log = CommitLog::open(&dir.join("commitlog"), config.segment_size)?;
        let (tx, rx) = mpsc::channel(16 * 1024);
        let (appended, _) = watch::channel(0);
        let store = MessageStore {
            shared: Arc::new(Shared {
                flush: config.flush,
                commit_log,
                dispatched: AtomicU64::new(0),
                appended,
            }),
            topics: RwLock::new(HashMap::new()),
            topic_lock: Mutex::new(()),
            writer: tx,
            writer_task: Mutex::new(WriterSlot::Idle(None)),
            corruptions: Mutex::new(Vec::new()),
            log_start: AtomicU64::new(0),
            sync_lock: Mutex::new(None),
            lock: Mutex::new(Some(lock)),
            config,
        };
        let checkpoint = Checkpoint::read(&store.checkpoint_path());
        store.log_start.store(
            checkpoint
                .as_ref()
                .map_or(0, |c| c.log_start)
                .max(store.shared.commit_log.min_position()),
            Ordering::Release,
        );
        let mut repairs = Vec::new();
        for (name, count) in store.known_topics(checkpoint.as_ref()) {
            repairs.extend(store.open_topic(&name, count)?.1);
        }
        for repair in &repairs {
            tracing::error!(%repair, "damaged index repaired; it is rebuilt from the commit log");
        }
        let recovered = recovery::recover(&store, checkpoint, repairs)?;
        let end = recovered.end;
        if !recovered.corruptions.is_empty() {
            tracing::warn!(
                corruptions = recovered.corruptions.len(),
                full_scan = recovered.full_scan,
                "commit log recovered with damage"
            );
        }
        store.corruptions.lock().extend(recovered.corruptions);
        store.shared.dispatched.store(end, Ordering::Release);
        store.save_topic_table()?;
        store.sync_all(recovered.full_scan)?;
        let store = Arc::new(store);
        let writer = Writer {
            shared: store.shared.clone(),
            active: store
                .shared
                .commit_log
                .segment_of(end)
                .ok_or(BrokerError::Closed)?,
            write_pos: end,
            buf: Vec::with_capacity(1 << 20),
            record_limit: store.record_limit(),
            failed: None,
        };
        *store.writer_task.lock() = WriterSlot::Idle(Some((writer, rx)));
        Ok(store)
    }

    /// Starts the writer task on the current tokio runtime.
    ///
    /// On a multi-thread runtime the writer has a thread of its own, which keeps the hand-off
    /// per batch to one wake-up. On a current-thread runtime (where tests pause the clock) it
    /// is a task that writes each batch on the blocking pool, so the clock cannot jump while
    /// a write is under way.
    pub fn start_writer(&self) -> Result<()> {
        let mut slot = self.writer_task.lock();
        if let WriterSlot::Idle(parts) = &mut *slot {
            if let Some((writer, rx)) = parts.take() {
                let handle = tokio::runtime::Handle::current();
                *slot = match handle.runtime_flavor() {
                    tokio::runtime::RuntimeFlavor::CurrentThread => {
                        WriterSlot::Task(tokio::spawn(writer.run(rx, false)))
                    }
                    _ => {
                        let thread = std::thread::Builder::new()
                            .name("mq-commitlog-writer".into())
                            .spawn(move || handle.block_on(writer.run(rx, true)))
                            .map_err(|e| {
                                BrokerError::io("spawn writer thread", &self.config.data_dir, e)
                            })?;
                        WriterSlot::Thread(thread)
                    }
                };
            }
        }
        Ok(())
    }

    pub fn config(&self) -> &EmbeddedConfig {
        &self.config
    }

    /// The commit log.
    pub fn commit_log(&self) -> &CommitLog {
        &self.shared.commit_log
    }

    fn topic_table_path(&self) -> PathBuf {
        self.config.data_dir.join("config").join("topics.json")
    }

    fn checkpoint_path(&self) -> PathBuf {
        self.config.data_dir.join("checkpoint")
    }

    /// The topics and queue counts to open: the topic table's, raised to what the index
    /// directories and the checkpoint show, since the table is advisory (the log is the truth
    /// and recovery adds what only the log knows). Damage to the table is reported.
    fn known_topics(&self, checkpoint: Option<&Checkpoint>) -> Vec<(String, u32)> {
        let mut known: HashMap<String, u32> = HashMap::new();
        fn raise(known: &mut HashMap<String, u32>, name: &str, count: u32) {
            let c = known.entry(name.to_owned()).or_insert(0);
            *c = (*c).max(count);
        }
        let path = self.topic_table_path();
        match fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<HashMap<String, u32>>(&bytes) {
                Ok(table) => {
                    for (name, count) in table {
                        if valid_topic_dir(&name) && (1..=MAX_QUEUES).contains(&count) {
                            raise(&mut known, &name, count);
                        } else {
                            self.report_config_damage(
                                &path,
                                format!("topic {name:?} with {count} queues is not valid; taken from the indexes and the log instead"),
                            );
                        }
                    }
                }
                Err(e) => self.report_config_damage(
                    &path,
                    format!("unreadable ({e}); topics are taken from the indexes and the log"),
                ),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => self.report_config_damage(
                &path,
                format!("unreadable ({e}); topics are taken from the indexes and the log"),
            ),
        }
        let mut lagging = Vec::new();
        let root = self.config.data_dir.join("consumequeue");
        for topic in fs::read_dir(&root).into_iter().flatten().flatten() {
            let Some(name) = topic.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !valid_topic_dir(&name) {
                continue;
            }
            let count = fs::read_dir(topic.path())
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|q| q.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
                .filter(|id| *id < MAX_QUEUES)
                .map(|id| id + 1)
                .max();
            if let Some(count) = count {
                if known.get(&name).is_some_and(|c| *c < count) {
                    lagging.push((name.clone(), count));
                }
                raise(&mut known, &name, count);
            }
        }
        for (name, count) in lagging {
            self.report_config_damage(
                &path,
                format!("topic {name:?} has index directories for {count} queues, more than the table says; all are kept"),
            );
        }
        if let Some(cp) = checkpoint {
            for (name, queues) in &cp.queues {
                let count = queues.len().min(MAX_QUEUES as usize) as u32;
                if valid_topic_dir(name) && count > 0 {
                    raise(&mut known, name, count);
                }
            }
        }
        known.into_iter().collect()
    }

    fn report_config_damage(&self, path: &Path, reason: String) {
        tracing::error!(path = %path.display(), %reason, "damaged broker configuration file");
        self.corruptions.lock().push(Corruption {
            segment: path.to_owned(),
            offset: 0,
            length: 0,
            reason,
        });
    }

    fn save_topic_table(&self) -> Result<()> {
        let table: HashMap<String, u32> = self
            .topics
            .read()
            .values()
            .map(|t| (t.name.to_string(), t.queues.len() as u32))
            .collect();
        let bytes = serde_json::to_vec_pretty(&table).map_err(|e| {
            BrokerError::io("encode", self.topic_table_path(), std::io::Error::other(e))
        })?;
        write_atomically(&self.topic_table_path(), &bytes)
    }

    /// Opens the topic's indexes (keeping those already open), with what opening repaired.
    fn open_topic(&self, name: &str, count: u32) -> Result<(Arc<Topic>, Vec<String>)> {
        let name: Arc<str> = name.into();
        let existing = self.topic(&name);
        let mut queues = Vec::with_capacity(count as usize);
        let mut repairs = Vec::new();
        for id in 0..count {
            if let Some(q) = existing.as_ref().and_then(|t| t.queues.get(id as usize)) {
                queues.push(q.clone());
                continue;
            }
            let dir = self
                .config
                .data_dir
                .join("consumequeue")
                .join(&*name)
                .join(id.to_string());
            let (cq, damage) = ConsumeQueue::open(id, &dir, self.config.consume_queue_entries)?;
            repairs.extend(damage);
            queues.push(Arc::new(cq));
        }
        let topic = Arc::new(Topic {
            name: name.clone(),
            queues,
            next: AtomicU32::new(0),
        });
        self.topics.write().insert(name, topic.clone());
        Ok((topic, repairs))
    }

    /// The index a record read by recovery belongs to, opening or growing its topic (the topic
    /// table lags the log if the process died right after a topic's first message). `None`
    /// for a queue id no topic may have.
    pub(crate) fn queue_for_recovery(
        &self,
        name: &str,
        queue_id: u32,
    ) -> Result<Option<Arc<ConsumeQueue>>> {
        if queue_id >= MAX_QUEUES || !valid_topic_dir(name) {
            return Ok(None);
        }
        if let Some(q) = self
            .topic(name)
            .and_then(|t| t.queues.get(queue_id as usize).cloned())
        {
            return Ok(Some(q));
        }
        let count = self.config.common.default_queues.max(queue_id + 1);
        let count = self
            .topic(name)
            .map_or(count, |t| count.max(t.queues.len() as u32));
        let (topic, _) = self.open_topic(name, count)?;
        Ok(topic.queues.get(queue_id as usize).cloned())
    }

    /// The largest record the store writes or reads: a message of the largest size allowed
    /// plus room for its header, keys and properties. Sizes read from disk are checked
    /// against it before anything is allocated.
    pub(crate) fn record_limit(&self) -> usize {
        self.config.common.max_message_size + RECORD_OVERHEAD
    }

    /// The topic, if it exists.
    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().get(name).cloned()
    }

    /// All topics.
    pub fn topics(&self) -> Vec<Arc<Topic>> {
        self.topics.read().values().cloned().collect()
    }

    /// The topic, created with `count` queues if missing.
    pub fn create_topic(&self, name: &str, count: u32) -> Result<Arc<Topic>> {
        if let Some(t) = self.topic(name) {
            return Ok(t);
        }
        let _guard = self.topic_lock.lock();
        if let Some(t) = self.topic(name) {
            return Ok(t);
        }
        if count == 0 || count > MAX_QUEUES {
            return Err(BrokerError::InvalidConfig(format!(
                "topic {name:?}: queue count must be 1 to 1024, not {count}"
            )));
        }
        let (topic, _) = self.open_topic(name, count)?;
        self.save_topic_table()?;
        tracing::info!(topic = name, queues = count, "topic created");
        Ok(topic)
    }

    /// The topic for a send: created on first use unless auto-creation is off.
    pub fn topic_for_send(&self, name: &str) -> Result<Arc<Topic>> {
        match self.topic(name) {
            Some(t) => Ok(t),
            None if self.config.auto_create_topics => {
                self.create_topic(name, self.config.common.default_queues)
            }
            None => Err(BrokerError::TopicNotFound(name.to_owned())),
        }
    }

    /// Appends messages of one topic to one queue; resolves once stored as the flush policy
    /// promises.
    pub async fn append(
        &self,
        queue: Arc<ConsumeQueue>,
        messages: Vec<Outgoing>,
    ) -> Result<Vec<SendResult>> {
        let queue_id = queue.queue_id;
        let ids: Vec<_> = messages.iter().map(|m| m.parts.id).collect();
        let first = self.append_raw(queue, messages).await?;
        Ok(ids
            .into_iter()
            .zip(first..)
            .map(|(message_id, queue_offset)| SendResult {
                message_id,
                queue_id,
                queue_offset,
            })
            .collect())
    }

    /// Appends one message.
    pub async fn append_one(
        &self,
        queue: Arc<ConsumeQueue>,
        message: Outgoing,
    ) -> Result<SendResult> {
        let queue_id = queue.queue_id;
        let message_id = message.parts.id;
        let queue_offset = self.append_raw(queue, vec![message]).await?;
        Ok(SendResult {
            message_id,
            queue_id,
            queue_offset,
        })
    }

    async fn append_raw(&self, queue: Arc<ConsumeQueue>, messages: Vec<Outgoing>) -> Result<u64> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(WriterMsg::Append(AppendRequest {
                queue,
                messages,
                reply,
            }))
            .await
            .map_err(|_| BrokerError::Closed)?;
        rx.await.map_err(|_| BrokerError::Closed)?
    }

    /// Appends many single messages, each to its queue, in one go: all requests are queued
    /// before the first answer is awaited, so they share writes.
    pub async fn append_many(
        &self,
        items: Vec<(Arc<ConsumeQueue>, Outgoing)>,
    ) -> Vec<Result<SendResult>> {
        let mut waiting = Vec::with_capacity(items.len());
        for (queue, message) in items {
            let head = (message.parts.id, queue.queue_id);
            let (reply, rx) = oneshot::channel();
            let sent = self
                .writer
                .send(WriterMsg::Append(AppendRequest {
                    queue,
                    messages: vec![message],
                    reply,
                }))
                .await;
            waiting.push((head, sent.ok().map(|()| rx)));
        }
        let mut out = Vec::with_capacity(waiting.len());
        for ((message_id, queue_id), rx) in waiting {
            let result = match rx {
                Some(rx) => match rx.await {
                    Ok(Ok(queue_offset)) => Ok(SendResult {
                        message_id,
                        queue_id,
                        queue_offset,
                    }),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(BrokerError::Closed),
                },
                None => Err(BrokerError::Closed),
            };
            out.push(result);
        }
        out
    }

    /// A receiver that changes whenever new records are indexed.
    pub fn subscribe_appends(&self) -> watch::Receiver<u64> {
        self.shared.appended.subscribe()
    }

    /// Reads and verifies the records of `entries`, with one read per stretch of nearby
    /// records. A record that fails verification is reported and returned as an error.
    pub fn read_records(&self, entries: &[CqEntry]) -> Vec<Result<DecodedRecord>> {
        const MAX_SPAN: u64 = 4 * 1024 * 1024;
        let mut out = Vec::with_capacity(entries.len());
        let mut i = 0;
        let limit = self.record_limit() as u64;
        while i < entries.len() {
            if entries[i].size == 0 {
                out.push(Err(BrokerError::Corrupt {
                    segment: self.config.data_dir.join("consumequeue"),
                    offset: 0,
                    source: crate::error::RecordError::Malformed("index entry of a lost record"),
                }));
                i += 1;
                continue;
            }
            if u64::from(entries[i].size) > limit {
                // A size read from disk is never trusted with an allocation.
                out.push(self.check(Err(self.corrupt_at(
                    entries[i].position,
                    crate::error::RecordError::Malformed(
                        "index entry names a size beyond the record limit",
                    ),
                ))));
                i += 1;
                continue;
            }
            let start = entries[i].position;
            let seg_end = self
                .commit_log()
                .segment_of(start)
                .map_or(start, |s| s.base + self.shared.commit_log.segment_size());
            let mut end = start + u64::from(entries[i].size);
            let mut useful = u64::from(entries[i].size);
            let mut j = i + 1;
            while j < entries.len() {
                let e = entries[j];
                if e.size == 0 || u64::from(e.size) > limit {
                    break;
                }
                let e_end = e.position + u64::from(e.size);
                if e.position < start || e_end > seg_end {
                    break;
                }
                let new_end = end.max(e_end);
                if new_end - start > MAX_SPAN || new_end - start > 4 * (useful + u64::from(e.size))
                {
                    break;
                }
                end = new_end;
                useful += u64::from(e.size);
                j += 1;
            }
            // One read per stretch into a reused buffer, then one small copy per record: a
            // fresh zeroed buffer per stretch costs more (memset and page faults) than the read.
            let span = (end - start) as usize;
            let read = SCRATCH.with(|cell| {
                let mut scratch = cell.borrow_mut();
                if scratch.len() < span {
                    scratch.resize(span, 0);
                }
                self.shared
                    .commit_log
                    .read_into(start, &mut scratch[..span])
                    .map(|()| {
                        entries[i..j]
                            .iter()
                            .map(|e| {
                                let s = (e.position - start) as usize;
                                Bytes::copy_from_slice(&scratch[s..s + e.size as usize])
                            })
                            .collect::<Vec<_>>()
                    })
            });
            match read {
                Ok(records) => {
                    for (e, bytes) in entries[i..j].iter().zip(records) {
                        out.push(self.check(self.shared.commit_log.decode_at(&bytes, e.position)));
                    }
                }
                Err(_) => {
                    // Fall back to one read per record so that one bad record spoils nothing else.
                    for e in &entries[i..j] {
                        out.push(
                            self.check(
                                self.shared
                                    .commit_log
                                    .read_record(e.position, e.size as usize),
                            ),
                        );
                    }
                }
            }
            i = j;
        }
        out
    }

    fn corrupt_at(&self, position: u64, source: crate::error::RecordError) -> BrokerError {
        let (segment, offset) = match self.shared.commit_log.segment_of(position) {
            Some(s) => (s.path.clone(), position - s.base),
            None => (self.shared.commit_log.dir().to_owned(), position),
        };
        BrokerError::Corrupt {
            segment,
            offset,
            source,
        }
    }

    /// Checks that a record read through the index of `queue` (of topic `topic`, when known)
    /// at `offset` is that record: an index entry pointing at another valid record is
    /// damage, reported and not served.
    pub fn check_placement(
        &self,
        topic: Option<&str>,
        queue: &ConsumeQueue,
        offset: u64,
        result: Result<DecodedRecord>,
    ) -> Result<DecodedRecord> {
        match result {
            Ok(rec)
                if rec.placement.queue_id != queue.queue_id
                    || rec.placement.queue_offset != offset
                    || topic
                        .is_some_and(|t| super::system_topics::stored_topic(&rec.message) != t) =>
            {
                let position = rec.placement.position;
                self.check(Err(self.corrupt_at(
                    position,
                    crate::error::RecordError::Malformed(
                        "index entry points at a record of another topic, queue or offset",
                    ),
                )))
            }
            other => other,
        }
    }

    /// Finds in the log the record of `offset` of `queue` (of topic `topic`) when its index
    /// entry led elsewhere, and rewrites the entry: the log wins. A queue's records lie in log
    /// order, so the record is between the end of the one before it and the start of the one
    /// after it; records lie back to back, so the walk hops from one to the next.
    pub fn refind(&self, topic: &str, queue: &ConsumeQueue, offset: u64) -> Option<DecodedRecord> {
        /// The most log bytes one search walks.
        const MAX_WALK: u64 = 64 * 1024 * 1024;
        let log = &self.shared.commit_log;
        let prev = offset
            .checked_sub(1)
            .and_then(|o| queue.entry(o).ok().flatten())
            .filter(|e| !e.is_empty());
        // Without the record before it, the walk starts where the log does.
        let start = prev.map_or(log.min_position(), |e| e.position + u64::from(e.size));
        let next = queue
            .entry(offset + 1)
            .ok()
            .flatten()
            .filter(|e| !e.is_empty() && e.position >= start)
            .map(|e| e.position);
        let mut pos = start;
        let limit = next
            .unwrap_or_else(|| self.dispatched())
            .min(pos + MAX_WALK);
        while pos < limit {
            let seg = log.segment_of(pos)?;
            let seg_end = seg.base + seg.len().ok()?;
            if pos + record::PREFIX_LEN as u64 > seg_end {
                // The unwritten tail of a full segment: records go on in the next one.
                pos = seg.base + log.segment_size();
                continue;
            }
            let prefix = log.read(pos, record::PREFIX_LEN).ok()?;
            let len = record::peek_len(&prefix).ok()?;
            if len > self.record_limit() {
                return None;
            }
            let rec = log.read_record(pos, len).ok()?;
            if rec.placement.queue_id == queue.queue_id
                && rec.placement.queue_offset == offset
                && super::system_topics::stored_topic(&rec.message) == topic
            {
                let entry = CqEntry {
                    position: pos,
                    size: len as u32,
                    tag_code: tag_code(rec.message.tag.as_deref()),
                    store_timestamp: super::system_topics::index_time(
                        &rec.message,
                        rec.placement.store_timestamp,
                    ),
                };
                if let Err(e) = queue.put(offset, &[entry]) {
                    tracing::error!(error = %e, offset, "cannot rewrite a damaged index entry");
                }
                tracing::warn!(
                    topic,
                    queue = queue.queue_id,
                    offset,
                    position = pos,
                    "damaged index entry rebuilt from the commit log"
                );
                return Some(rec);
            }
            pos += len as u64;
        }
        None
    }

    fn check(&self, result: Result<DecodedRecord>) -> Result<DecodedRecord> {
        if let Err(BrokerError::Corrupt {
            segment,
            offset,
            source,
        }) = &result
        {
            let mut list = self.corruptions.lock();
            if !list
                .iter()
                .any(|c| &c.segment == segment && c.offset == *offset)
            {
                tracing::error!(segment = %segment.display(), offset, error = %source, "corrupt record not served");
                list.push(Corruption {
                    segment: segment.clone(),
                    offset: *offset,
                    length: 0,
                    reason: source.to_string(),
                });
            }
        }
        result
    }

    /// Damage found so far (recovery and reads).
    pub fn corruptions(&self) -> Vec<Corruption> {
        self.corruptions.lock().clone()
    }

    /// Position up to which records are written and indexed.
    pub fn dispatched(&self) -> u64 {
        self.shared.dispatched.load(Ordering::Acquire)
    }

    /// Forces the log and the indexes to disk and moves the checkpoint.
    pub fn sync(&self) -> Result<()> {
        let mut synced = self.sync_lock.lock();
        let pos = self.dispatched();
        if *synced == Some(pos) {
            // Nothing written since the last sync: an idle broker does not fsync.
            return Ok(());
        }
        self.sync_to(pos, false)?;
        *synced = Some(pos);
        Ok(())
    }

    /// Syncs everything recovery wrote (every index segment after a full rescan).
    fn sync_all(&self, all_segments: bool) -> Result<()> {
        let mut synced = self.sync_lock.lock();
        let pos = self.dispatched();
        self.sync_to(pos, all_segments)?;
        *synced = Some(pos);
        Ok(())
    }

    fn sync_to(&self, pos: u64, all_segments: bool) -> Result<()> {
        // Entry counts are taken before the syncs, so every entry they count is on disk
        // once the checkpoint names them.
        let mut queues = std::collections::BTreeMap::new();
        let topics = self.topics();
        for topic in &topics {
            queues.insert(
                topic.name.to_string(),
                topic
                    .queues
                    .iter()
                    .map(|q| [q.min_offset(), q.max_offset()])
                    .collect(),
            );
        }
        if let Some(seg) = self.shared.commit_log.last_segment() {
            sync_segment(&seg)?;
        }
        for topic in &topics {
            for cq in &topic.queues {
                cq.sync(all_segments)?;
            }
        }
        Checkpoint {
            position: pos,
            log_start: self.log_start.load(Ordering::Acquire),
            queues,
        }
        .write(&self.checkpoint_path())
    }

    /// Records, durably, that retention is about to delete the segments below `start`.
    pub(crate) fn raise_log_start(&self, start: u64) -> Result<()> {
        let _one_at_a_time = self.sync_lock.lock();
        if self.log_start.fetch_max(start, Ordering::AcqRel) >= start {
            return Ok(());
        }
        self.sync_to(self.dispatched(), false)
    }

    /// Stops the writer after it has stored everything queued before, then syncs.
    pub async fn stop(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        if self.writer.send(WriterMsg::Stop(tx)).await.is_ok() {
            let _ = rx.await;
        }
        let slot = std::mem::replace(&mut *self.writer_task.lock(), WriterSlot::Idle(None));
        match slot {
            WriterSlot::Task(handle) => {
                let _ = handle.await;
            }
            WriterSlot::Thread(thread) => {
                let _ = tokio::task::spawn_blocking(move || thread.join()).await;
            }
            WriterSlot::Idle(_) => {}
        }
        self.sync()
    }

    /// Releases the directory lock (after [`stop`](Self::stop) and the last write).
    pub fn release(&self) {
        self.lock.lock().take();
    }

    /// Whether the writer is gone.
    pub fn is_stopped(&self) -> bool {
        self.writer.is_closed()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    /// The async flush interval, if the policy is async.
    pub fn flush_interval(&self) -> Option<Duration> {
        match self.config.flush {
            FlushPolicy::Async { interval } => Some(interval),
            FlushPolicy::Sync => None,
        }
    }
}

fn sync_segment(seg: &Segment) -> Result<()> {
    super::io::sync(&seg.file, &seg.path).map_err(|e| BrokerError::io("sync segment", &seg.path, e))
}

enum WriterSlot {
    Idle(Option<(Writer, mpsc::Receiver<WriterMsg>)>),
    Task(tokio::task::JoinHandle<()>),
    Thread(std::thread::JoinHandle<()>),
}

/// The one writer that appends: it drains every waiting request into one write (and one fsync
/// under the sync policy), indexes the records, then answers the senders.
struct Writer {
    shared: Arc<Shared>,
    active: Arc<Segment>,
    write_pos: u64,
    buf: Vec<u8>,
    /// The largest record written (see [`MessageStore::record_limit`]).
    record_limit: usize,
    /// Set after an I/O failure: the writer refuses appends until the store is reopened, so
    /// that recovery, not guesswork, decides what the log holds.
    failed: Option<String>,
}

const MAX_BATCH: usize = 4096;

impl Writer {
    /// Collects requests and writes them a batch at a time: `inline` on the writer's own
    /// thread, otherwise on the blocking pool (see [`MessageStore::start_writer`]).
    async fn run(self, mut rx: mpsc::Receiver<WriterMsg>, inline: bool) {
        let mut writer = Some(self);
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(msg) = rx.recv().await {
            let mut stop = None;
            match msg {
                WriterMsg::Append(req) => batch.push(req),
                WriterMsg::Stop(ack) => stop = Some(ack),
            }
            while stop.is_none() && batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(WriterMsg::Append(req)) => batch.push(req),
                    Ok(WriterMsg::Stop(ack)) => stop = Some(ack),
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                match writer.take() {
                    Some(mut w) if inline => {
                        w.write_batch(&mut batch);
                        writer = Some(w);
                    }
                    Some(mut w) => {
                        let mut b = std::mem::take(&mut batch);
                        match tokio::task::spawn_blocking(move || {
                            w.write_batch(&mut b);
                            (w, b)
                        })
                        .await
                        {
                            Ok((w, b)) => {
                                writer = Some(w);
                                batch = b;
                            }
                            Err(e) => {
                                // The senders of that batch see their reply dropped (Closed).
                                tracing::error!(error = %e, "commit-log writer failed; the store refuses writes until reopened");
                            }
                        }
                    }
                    None => {
                        for req in batch.drain(..) {
                            let _ = req.reply.send(Err(BrokerError::backend(
                                "embedded",
                                BackendErrorKind::Failed,
                                "the commit-log writer failed; reopen the store",
                            )));
                        }
                    }
                }
            }
            if let Some(ack) = stop {
                rx.close();
                while let Ok(msg) = rx.try_recv() {
                    if let WriterMsg::Append(req) = msg {
                        let _ = req.reply.send(Err(BrokerError::Closed));
                    }
                }
                let _ = ack.send(());
                return;
            }
        }
    }

    fn write_batch(&mut self, batch: &mut Vec<AppendRequest>) {
        if let Some(reason) = &self.failed {
            for req in batch.drain(..) {
                let _ = req.reply.send(Err(BrokerError::backend(
                    "embedded",
                    BackendErrorKind::Failed,
                    format!("store is read-only after an earlier write failure: {reason}"),
                )));
            }
            return;
        }
        let sync = matches!(self.shared.flush, FlushPolicy::Sync);
        let segment_size = self.shared.commit_log.segment_size();
        let store_timestamp = now_millis();
        self.buf.clear();
        let mut buf_start = self.write_pos;
        // Per queue touched by this batch: its index entries and next offset.
        let mut queues: Vec<(Arc<ConsumeQueue>, Vec<u8>, u64)> = Vec::new();
        let mut results: Vec<Result<u64>> = Vec::with_capacity(batch.len());
        let mut failed: Option<BrokerError> = None;

        for req in batch.iter() {
            let qi = match queues
                .iter()
                .position(|(q, _, _)| Arc::ptr_eq(q, &req.queue))
            {
                Some(i) => i,
                None => {
                    let next = req.queue.max_offset();
                    queues.push((req.queue.clone(), Vec::new(), next));
                    queues.len() - 1
                }
            };
            // A request is stored whole or not at all.
            let too_big = req
                .messages
                .iter()
                .find(|out| record::encoded_len(&out.parts).is_none_or(|l| l > self.record_limit));
            if let Some(out) = too_big {
                results.push(Err(BrokerError::InvalidConfig(format!(
                    "a record of topic {:?} exceeds the record limit of {} bytes",
                    out.parts.topic, self.record_limit
                ))));
                continue;
            }
            let first_offset = queues[qi].2;
            for out in &req.messages {
                let msg = &out.parts;
                let len = record::encoded_len(msg).unwrap_or(0);
                let pos = buf_start + self.buf.len() as u64;
                let pos = if pos - self.active.base + len as u64 > segment_size {
                    if let Err(e) = self.flush_buf(buf_start, sync).and_then(|()| self.roll()) {
                        failed = Some(e);
                        break;
                    }
                    buf_start = self.write_pos;
                    self.write_pos
                } else {
                    pos
                };
                let (ref q, ref mut entries, ref mut next) = queues[qi];
                let placement = Placement {
                    queue_id: q.queue_id,
                    queue_offset: *next,
                    position: pos,
                    store_timestamp,
                    reconsume_times: out.reconsume_times,
                    flags: 0,
                };
                record::encode_into(&mut self.buf, msg, &placement, len);
                CqEntry {
                    position: pos,
                    size: len as u32,
                    tag_code: tag_code(msg.tag.as_deref()),
                    store_timestamp: out.index_time.unwrap_or(store_timestamp),
                }
                .encode(entries);
                *next += 1;
            }
            if failed.is_some() {
                break;
            }
            results.push(Ok(first_offset));
        }

        let outcome = match failed {
            Some(e) => Err(e),
            None => self.flush_buf(buf_start, sync).and_then(|()| {
                for (q, entries, _) in &queues {
                    q.append(entries)?;
                }
                Ok(())
            }),
        };
        match outcome {
            Ok(()) => {
                self.shared
                    .dispatched
                    .store(self.write_pos, Ordering::Release);
                for (req, result) in batch.drain(..).zip(results) {
                    let _ = req.reply.send(result);
                }
                self.shared.appended.send_modify(|v| *v = v.wrapping_add(1));
            }
            Err(e) => {
                tracing::error!(error = %e, "commit log append failed; the store refuses writes until reopened");
                let msg = e.to_string();
                self.failed = Some(msg.clone());
                for req in batch.drain(..) {
                    let _ = req.reply.send(Err(BrokerError::backend(
                        "embedded",
                        BackendErrorKind::Failed,
                        msg.clone(),
                    )));
                }
            }
        }
    }

    /// Writes the buffered records (which start at `buf_start`) and fsyncs under `sync`.
    fn flush_buf(&mut self, buf_start: u64, sync: bool) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        super::io::write_at(
            &self.active.file,
            &self.active.path,
            &self.buf,
            buf_start - self.active.base,
        )
        .map_err(|e| BrokerError::io("write segment", &self.active.path, e))?;
        if sync {
            sync_segment(&self.active)?;
        }
        self.write_pos = buf_start + self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    fn roll(&mut self) -> Result<()> {
        sync_segment(&self.active)?;
        let base = self.active.base + self.shared.commit_log.segment_size();
        self.active = self.shared.commit_log.roll(base)?;
        self.write_pos = base;
        Ok(())
    }
}

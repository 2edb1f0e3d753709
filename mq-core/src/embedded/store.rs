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
use super::system_topics;
use super::EmbeddedConfig;
use crate::broker::{QueueSelector, SendResult};
use crate::error::{BrokerError, Result};
use crate::message::{now_millis, MessageParts};

thread_local! {
    /// Read buffer of [`MessageStore::read_records`], kept per thread (at most one span, 4 MiB).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
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
        let n = self.queues.len() as u32;
        let id = match selector {
            QueueSelector::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % n,
            QueueSelector::ShardingKey(key) => QueueSelector::queue_for_key(key, n),
            QueueSelector::Queue(id) => *id,
        };
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
        let lock_path = dir.join("LOCK");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| BrokerError::io("open", &lock_path, e))?;
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
            sync_lock: Mutex::new(None),
            lock: Mutex::new(Some(lock)),
            config,
        };
        for (name, count) in store.load_topic_table()? {
            store.open_topic(&name, count)?;
        }
        let end = store.recover()?;
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

    fn load_topic_table(&self) -> Result<Vec<(String, u32)>> {
        let path = self.topic_table_path();
        match fs::read(&path) {
            Ok(bytes) => {
                let table: HashMap<String, u32> = serde_json::from_slice(&bytes).map_err(|e| {
                    BrokerError::io(
                        "parse",
                        &path,
                        std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                    )
                })?;
                Ok(table.into_iter().collect())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(BrokerError::io("read", &path, e)),
        }
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

    fn open_topic(&self, name: &str, count: u32) -> Result<Arc<Topic>> {
        let name: Arc<str> = name.into();
        let mut queues = Vec::with_capacity(count as usize);
        for id in 0..count {
            let dir = self
                .config
                .data_dir
                .join("consumequeue")
                .join(&*name)
                .join(id.to_string());
            queues.push(Arc::new(ConsumeQueue::open(
                id,
                &dir,
                self.config.consume_queue_entries,
            )?));
        }
        let topic = Arc::new(Topic {
            name: name.clone(),
            queues,
            next: AtomicU32::new(0),
        });
        self.topics.write().insert(name, topic.clone());
        Ok(topic)
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
        if count == 0 || count > 1024 {
            return Err(BrokerError::InvalidConfig(format!(
                "topic {name:?}: queue count must be 1 to 1024, not {count}"
            )));
        }
        let topic = self.open_topic(name, count)?;
        self.save_topic_table()?;
        tracing::info!(topic = name, queues = count, "topic created");
        Ok(topic)
    }

    /// The topic for a send: created on first use unless auto-creation is off.
    pub fn topic_for_send(&self, name: &str) -> Result<Arc<Topic>> {
        match self.topic(name) {
            Some(t) => Ok(t),
            None if self.config.auto_create_topics => {
                self.create_topic(name, self.config.default_queues)
            }
            None => Err(BrokerError::TopicNotFound(name.to_owned())),
        }
    }

    /// Re-indexes the records after the checkpoint and cuts a torn tail. Returns the end.
    fn recover(&self) -> Result<u64> {
        let checkpoint_path = self.config.data_dir.join("checkpoint");
        let from = Checkpoint::read(&checkpoint_path).max(self.shared.commit_log.min_position());
        let mut pending: HashMap<(Arc<str>, u32), Vec<u8>> = HashMap::new();
        let mut next_offsets: HashMap<(Arc<str>, u32), u64> = HashMap::new();
        let mut gaps = Vec::new();
        let (report, end) = self.shared.commit_log.recover(from, |rec, size| {
            let topic = match self.topic(rec.topic()) {
                Some(t) if (rec.placement.queue_id as usize) < t.queues.len() => t,
                _ => {
                    // The topic table lags the log only if the process died right after the
                    // topic's first message: recreate it big enough for this queue.
                    let count = self.config.default_queues.max(rec.placement.queue_id + 1);
                    self.open_topic(rec.topic(), count)?
                }
            };
            let cq = &topic.queues[rec.placement.queue_id as usize];
            let key = (topic.name.clone(), cq.queue_id);
            let next = next_offsets
                .entry(key.clone())
                .or_insert_with(|| cq.max_offset());
            let off = rec.placement.queue_offset;
            if off < *next {
                return Ok(());
            }
            if off > *next {
                // Records in between were lost to damage: keep the offsets aligned with empty
                // entries, which consumers skip, rather than renumber what follows.
                gaps.push((rec.placement.position, *next, off));
                let entries = pending.entry(key.clone()).or_default();
                for _ in *next..off {
                    CqEntry::EMPTY.encode(entries);
                }
                *next = off;
            }
            CqEntry {
                position: rec.placement.position,
                size,
                tag_code: tag_code(rec.message.tag.as_deref()),
                store_timestamp: system_topics::index_time(
                    &rec.message,
                    rec.placement.store_timestamp,
                ),
            }
            .encode(pending.entry(key).or_default());
            *next += 1;
            Ok(())
        })?;
        for ((topic, queue_id), bytes) in pending {
            if let Some(t) = self.topic(&topic) {
                t.queues[queue_id as usize].append(&bytes)?;
            }
        }
        for (position, from, to) in gaps {
            tracing::error!(position, from, to, "queue offsets lost to damage; skipped");
        }
        // Index entries that point past the recovered end belong to a torn write.
        for topic in self.topics() {
            for cq in &topic.queues {
                let mut max = cq.max_offset();
                while max > cq.min_offset() {
                    match cq.entry(max - 1)? {
                        Some(e) if e.position + u64::from(e.size) > end => max -= 1,
                        _ => break,
                    }
                }
                cq.truncate(max)?;
            }
        }
        self.save_topic_table()?;
        if report.truncated_bytes > 0 || !report.corruptions.is_empty() {
            tracing::warn!(
                truncated_bytes = report.truncated_bytes,
                corruptions = report.corruptions.len(),
                "commit log recovered with damage"
            );
        }
        tracing::debug!(from, end, records = report.records, "commit log recovered");
        self.corruptions.lock().extend(report.corruptions);
        self.shared.dispatched.store(end, Ordering::Release);
        Checkpoint::write(&checkpoint_path, end)?;
        Ok(end)
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
                if e.size == 0 {
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
        if let Some(seg) = self.shared.commit_log.last_segment() {
            sync_segment(&seg)?;
        }
        for topic in self.topics() {
            for cq in &topic.queues {
                cq.sync()?;
            }
        }
        Checkpoint::write(&self.config.data_dir.join("checkpoint"), pos)?;
        *synced = Some(pos);
        Ok(())
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
    seg.file
        .sync_data()
        .map_err(|e| BrokerError::io("sync segment", &seg.path, e))
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
                            let _ = req.reply.send(Err(BrokerError::Backend {
                                backend: "embedded",
                                message: "the commit-log writer failed; reopen the store".into(),
                            }));
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
                let _ = req.reply.send(Err(BrokerError::Backend {
                    backend: "embedded",
                    message: format!("store is read-only after an earlier write failure: {reason}"),
                }));
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
            let too_big = req.messages.iter().find(|out| {
                record::encoded_len(&out.parts).is_none_or(|l| l as u64 > segment_size)
            });
            if let Some(out) = too_big {
                results.push(Err(BrokerError::InvalidConfig(format!(
                    "a record of topic {:?} does not fit a commit-log segment of {segment_size} bytes",
                    out.parts.topic
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
                    let _ = req.reply.send(Err(BrokerError::Backend {
                        backend: "embedded",
                        message: msg.clone(),
                    }));
                }
            }
        }
    }

    /// Writes the buffered records (which start at `buf_start`) and fsyncs under `sync`.
    fn flush_buf(&mut self, buf_start: u64, sync: bool) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        use std::os::unix::fs::FileExt;
        self.active
            .file
            .write_all_at(&self.buf, buf_start - self.active.base)
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

//! The message store: what it owns (commit log, consume queues, topics, the writer's inbox,
//! the directory lock) and opening it, which runs recovery. Each job on that state has a file
//! of its own: `topics.rs` the topic table, `append.rs` the senders' side of the writer,
//! `writer.rs` the single writer thread (group commit), `read.rs` reads for consumers and
//! `sync.rs` syncing and the checkpoint, `stats.rs` the counts of the writer's work.

mod append;
mod lookup;
mod read;
mod stats;
mod sync;
mod topics;
mod writer;

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, watch};

use super::commit_log::{CommitLog, Corruption};
use super::flush::{Checkpoint, FlushPolicy};
use super::key_index::KeyIndex;
use super::recovery;
use super::EmbeddedConfig;
use crate::error::{BrokerError, Result};

pub(crate) use append::{Outgoing, Queued};
pub(crate) use lookup::{Query, Wanted};
use stats::WriteCounters;
pub use stats::WriteStats;
pub(crate) use topics::Topic;
use writer::{AppendRequest, Writer, WriterMsg, WriterSlot};

/// Room for a record's header, topic, tag, keys and properties beyond the message size limit
/// (the segment size must exceed the message limit by at least this much).
pub(crate) const RECORD_OVERHEAD: usize = 64 * 1024;

/// What the writer thread shares with readers. It holds no sender of the writer's channel, so
/// dropping the [`MessageStore`] ends the writer.
pub(crate) struct Shared {
    flush: FlushPolicy,
    pub commit_log: CommitLog,
    /// Commit-log position up to which records are written and indexed.
    dispatched: AtomicU64,
    /// Bumped after every written batch, so that waiting consumers look again.
    appended: watch::Sender<u64>,
    /// What the writer has done: messages, batches, fsyncs.
    stats: WriteCounters,
}

/// Storage shared by the consumers and the background tasks.
pub(crate) struct MessageStore {
    config: EmbeddedConfig,
    shared: Arc<Shared>,
    topics: RwLock<HashMap<Arc<str>, Arc<Topic>>>,
    topic_lock: Mutex<()>,
    writer: mpsc::Sender<WriterMsg>,
    /// Appends handed over by [`MessageStore::defer`] and not yet in the writer's inbox, in
    /// the order they were made.
    deferred: Mutex<VecDeque<AppendRequest>>,
    /// How many appends are deferred and not yet in the inbox. While it is not zero every
    /// append queues behind them, so that the inbox keeps the order appends were made in.
    deferred_len: AtomicUsize,
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
    /// The key index, set once recovery is done (unless the settings turn it off).
    key_index: OnceLock<Arc<KeyIndex>>,
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
                stats: WriteCounters::default(),
            }),
            topics: RwLock::new(HashMap::new()),
            topic_lock: Mutex::new(()),
            writer: tx,
            deferred: Mutex::new(VecDeque::new()),
            deferred_len: AtomicUsize::new(0),
            writer_task: Mutex::new(WriterSlot::Idle(None)),
            corruptions: Mutex::new(Vec::new()),
            log_start: AtomicU64::new(0),
            sync_lock: Mutex::new(None),
            lock: Mutex::new(Some(lock)),
            key_index: OnceLock::new(),
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
        if store.config.message_index {
            let index = KeyIndex::open(
                &dir.join("index"),
                &store.shared.commit_log,
                end,
                store.config.index_part_entries,
            )?;
            let _ = store.key_index.set(Arc::new(index));
        }
        let store = Arc::new(store);
        let writer = Writer::new(
            store.shared.clone(),
            store
                .shared
                .commit_log
                .segment_of(end)
                .ok_or(BrokerError::Closed)?,
            end,
            store.record_limit(),
            store.key_index.get().cloned(),
        );
        *store.writer_task.lock() = WriterSlot::Idle(Some((writer, rx)));
        Ok(store)
    }

    pub fn config(&self) -> &EmbeddedConfig {
        &self.config
    }

    /// The commit log.
    pub fn commit_log(&self) -> &CommitLog {
        &self.shared.commit_log
    }

    /// The largest record the store writes or reads: a message of the largest size allowed
    /// plus room for its header, keys and properties. Sizes read from disk are checked
    /// against it before anything is allocated.
    pub(crate) fn record_limit(&self) -> usize {
        self.config.common.max_message_size + RECORD_OVERHEAD
    }

    /// Damage found so far (recovery and reads).
    pub fn corruptions(&self) -> Vec<Corruption> {
        self.corruptions.lock().clone()
    }

    /// Position up to which records are written and indexed.
    pub fn dispatched(&self) -> u64 {
        self.shared.dispatched.load(Ordering::Acquire)
    }

    /// Releases the directory lock (after [`stop`](Self::stop) and the last write).
    pub fn release(&self) {
        self.lock.lock().take();
    }

    /// What the writer has done since the store opened.
    pub fn write_stats(&self) -> WriteStats {
        self.shared.stats.read()
    }

    /// The key index, unless the settings turn it off.
    pub fn key_index(&self) -> Option<&Arc<KeyIndex>> {
        self.key_index.get()
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

//! The embedded broker: a durable, single-process message store with RocketMQ's delivery
//! semantics, and the default backend of mq.
//!
//! Layout under the data directory (the directory itself is locked while a broker has it open):
//! ```text
//! checkpoint                         commit-log position recovery starts from
//! commitlog/<20-digit position>      segments of the commit log (record.rs has the format)
//! consumequeue/<topic>/<queue>/<20-digit offset>   index segments
//! config/topics.json                 queue count of every topic
//! config/consumer_offsets.json       committed progress of every group
//! config/dead_letters.json           dead letters re-sent or deleted (the log is append-only)
//! config/scheduler_fired.json        delayed messages already fired past the saved progress
//! index/<20-digit position>.idx      sealed parts of the key index (key_index/mod.rs)
//! ```
//!
//! ```
//! use std::time::Duration;
//! use mq_core::{Broker, ConsumerOptions, Message, SendOptions, Subscription};
//! use mq_core::embedded::{EmbeddedBroker, EmbeddedConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), mq_core::BrokerError> {
//! let dir = tempfile::tempdir().map_err(|e| mq_core::BrokerError::io("tempdir", "/tmp", e))?;
//! let broker = EmbeddedBroker::open(EmbeddedConfig::new(dir.path())).await?;
//! let consumer = broker
//!     .subscribe(Subscription::new("greetings", "printer"), ConsumerOptions::new())
//!     .await?;
//! broker.send(Message::new("greetings", "hello"), SendOptions::new()).await?;
//! let got = consumer.receive(10, Duration::from_secs(1)).await?;
//! assert_eq!(&got[0].message.body[..], b"hello");
//! consumer.ack(&[got[0].receipt.clone()]).await?;
//! broker.shutdown().await?;
//! # Ok(()) }
//! ```

mod commit_log;
mod consume_queue;
mod dead_letter;
mod dispatch;
mod flush;
mod io;
mod key_index;
mod offsets;
pub(crate) mod record;
mod recovery;
mod retention;
mod scheduler;
mod store;
pub(crate) mod system_topics;
mod trace;
mod transactions;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;

pub use commit_log::Corruption;
pub use flush::{FlushPolicy, DEFAULT_FLUSH_INTERVAL};
#[cfg(feature = "testkit")]
pub use io::{IoOp, Recorder};
pub use retention::RetentionReport;
pub use store::WriteStats;
pub use transactions::DiscardedTransaction;

use tokio_util::sync::CancellationToken;

use crate::broker::{
    Broker, Consumer, ConsumerOptions, Prepared, SendOptions, SendResult, TransactionId,
};
use crate::clock::Clock;
use crate::dead_letter::DeadLetter;
use crate::error::{BackendErrorKind, BrokerError, Result};
use crate::message::{validate_topic, Message, MessageId, MessageView, ScheduledMessage};
use crate::settings::BrokerSettings;
use crate::stats::{GroupStats, QueueOffset, QueueStats, ResetTo, TopicStats};
use crate::subscription::Subscription;
use crate::system_topics::listed;
use crate::transaction::{TransactionChecker, TxState};
use dead_letter::DeadLetterBook;
use dispatch::Groups;
use offsets::OffsetStore;
use scheduler::DelayScheduler;
use store::{MessageStore, Outgoing, Query, Wanted};
use transactions::Transactions;

/// RocketMQ's commit-log segment size: 1 GiB.
pub const DEFAULT_SEGMENT_SIZE: u64 = 1024 * 1024 * 1024;
/// RocketMQ's consume-queue segment: 300,000 entries.
pub const DEFAULT_CONSUME_QUEUE_ENTRIES: u64 = 300_000;
/// RocketMQ's `fileReservedTime`: 72 hours.
pub const DEFAULT_FILE_RESERVED_TIME: Duration = Duration::from_secs(72 * 3600);
/// RocketMQ's `persistConsumerOffsetInterval`: 5 s.
pub const DEFAULT_OFFSET_PERSIST_INTERVAL: Duration = Duration::from_secs(5);
/// RocketMQ's `cleanResourceInterval`: 10 s.
pub const DEFAULT_RETENTION_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// Settings of the embedded broker; every field has RocketMQ's default.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EmbeddedConfig {
    /// Where the data lives.
    pub data_dir: PathBuf,
    /// What every backend has: queue count, message size, delays, check-back.
    pub common: BrokerSettings,
    /// Size of a commit-log segment file.
    pub segment_size: u64,
    /// Entries per consume-queue segment file.
    pub consume_queue_entries: u64,
    /// When sends are acknowledged relative to fsync.
    pub flush: FlushPolicy,
    /// Whether a send or subscription to an unknown topic creates it.
    pub auto_create_topics: bool,
    /// How long deleted-eligible segments are kept at least.
    pub file_reserved_time: Duration,
    /// How often retention runs.
    pub retention_check_interval: Duration,
    /// How often consumer progress is saved.
    pub offset_persist_interval: Duration,
    /// Whether the key index finds messages by id and key (RocketMQ's `messageIndexEnable`,
    /// default on). Off, [`Broker::messages_by_id`] and [`Broker::messages_by_key`] read the
    /// whole log instead.
    pub message_index: bool,
    /// Entries of the key index kept in memory before they are sealed into a file
    /// (65,536, 1 MiB; two per message with one key).
    pub index_part_entries: usize,
}

impl EmbeddedConfig {
    /// Defaults, with data under `data_dir`.
    pub fn new(data_dir: impl AsRef<Path>) -> Self {
        EmbeddedConfig {
            data_dir: data_dir.as_ref().to_owned(),
            common: BrokerSettings::default(),
            segment_size: DEFAULT_SEGMENT_SIZE,
            consume_queue_entries: DEFAULT_CONSUME_QUEUE_ENTRIES,
            flush: FlushPolicy::default(),
            auto_create_topics: true,
            file_reserved_time: DEFAULT_FILE_RESERVED_TIME,
            retention_check_interval: DEFAULT_RETENTION_CHECK_INTERVAL,
            offset_persist_interval: DEFAULT_OFFSET_PERSIST_INTERVAL,
            message_index: true,
            index_part_entries: key_index::DEFAULT_SEAL_AT,
        }
    }

    /// Turns the key index on or off.
    pub fn message_index(mut self, on: bool) -> Self {
        self.message_index = on;
        self
    }

    /// Sets how many key-index entries are kept in memory before they are sealed into a file.
    pub fn index_part_entries(mut self, entries: usize) -> Self {
        self.index_part_entries = entries;
        self
    }

    /// Sets the flush policy.
    pub fn flush(mut self, policy: FlushPolicy) -> Self {
        self.flush = policy;
        self
    }

    /// Sets the commit-log segment size.
    pub fn segment_size(mut self, bytes: u64) -> Self {
        self.segment_size = bytes;
        self
    }

    /// Sets the entries per consume-queue segment.
    pub fn consume_queue_entries(mut self, entries: u64) -> Self {
        self.consume_queue_entries = entries;
        self
    }

    /// Sets the retention time and how often retention runs.
    pub fn retention(mut self, reserved: Duration, check_interval: Duration) -> Self {
        self.file_reserved_time = reserved;
        self.retention_check_interval = check_interval;
        self
    }

    /// Sets how often consumer progress is saved.
    pub fn offset_persist_interval(mut self, interval: Duration) -> Self {
        self.offset_persist_interval = interval;
        self
    }

    crate::settings::common_setters!();

    fn validate(&self) -> Result<()> {
        self.common.validate()?;
        let need = self.common.max_message_size as u64 + 64 * 1024;
        if self.segment_size < need {
            return Err(BrokerError::InvalidConfig(format!(
                "segment-size {} must exceed max-message-size by 64 KiB at least ({need})",
                self.segment_size
            )));
        }
        if self.index_part_entries == 0 {
            return Err(BrokerError::InvalidConfig(
                "key-index entries per part must be at least 1".into(),
            ));
        }
        if self.consume_queue_entries == 0 {
            return Err(BrokerError::InvalidConfig(
                "consume-queue entries per segment must be at least 1".into(),
            ));
        }
        if let FlushPolicy::Async { interval } = self.flush {
            if interval.is_zero() {
                return Err(BrokerError::InvalidConfig(
                    "async flush interval must be above zero".into(),
                ));
            }
        }
        Ok(())
    }
}

/// The embedded broker. Cheap to share as `Arc<EmbeddedBroker>` or `Arc<dyn Broker>`.
#[derive(Debug)]
pub struct EmbeddedBroker {
    store: Arc<MessageStore>,
    groups: Arc<Groups>,
    clock: Clock,
    scheduler: Arc<DelayScheduler>,
    transactions: Arc<Transactions>,
    dead_letters: DeadLetterBook,
    /// Cancelled at shutdown: the delay scheduler and the transaction checker stop.
    closing: CancellationToken,
}

impl EmbeddedBroker {
    /// Opens the data directory (creating it), recovers, and starts the background flush,
    /// progress and retention tasks. Must be called inside a tokio runtime.
    pub async fn open(config: EmbeddedConfig) -> Result<Arc<Self>> {
        config.validate()?;
        let store = tokio::task::spawn_blocking(move || MessageStore::open(config))
            .await
            .map_err(|e| {
                BrokerError::backend_caused("embedded", BackendErrorKind::Failed, "open task", e)
            })??;
        store.start_writer()?;
        let offsets = Arc::new(OffsetStore::open(
            store
                .data_dir()
                .join("config")
                .join("consumer_offsets.json"),
        )?);
        let clock = Clock::new();
        let scheduler = Arc::new(DelayScheduler::open(store.clone(), offsets.clone(), clock)?);
        let check = store.config().common.check;
        let transactions = Arc::new(Transactions::open(
            store.clone(),
            offsets.clone(),
            clock,
            check,
        )?);
        let broker = Arc::new(EmbeddedBroker {
            groups: Arc::new(Groups::new(
                store.clone(),
                offsets,
                scheduler.clone(),
                clock,
            )),
            dead_letters: DeadLetterBook::open(store.clone())?,
            store,
            clock,
            scheduler,
            transactions,
            closing: CancellationToken::new(),
        });
        tokio::spawn(broker.scheduler.clone().run(broker.closing.clone()));
        tokio::spawn(broker.transactions.clone().run(broker.closing.clone()));
        broker.spawn_background();
        tracing::info!(data_dir = %broker.store.data_dir().display(), "embedded broker open");
        Ok(broker)
    }

    fn spawn_background(self: &Arc<Self>) {
        let config = self.store.config().clone();
        if let Some(interval) = self.store.flush_interval() {
            spawn_every(Arc::downgrade(self), interval, |b| {
                if b.store.is_stopped() {
                    return;
                }
                if let Err(e) = b.store.sync() {
                    tracing::error!(error = %e, "periodic flush failed");
                }
            });
        } else {
            // Sync flush keeps the log durable; the indexes and checkpoint still follow.
            spawn_every(Arc::downgrade(self), DEFAULT_FLUSH_INTERVAL, |b| {
                if !b.store.is_stopped() {
                    if let Err(e) = b.store.sync() {
                        tracing::error!(error = %e, "periodic index flush failed");
                    }
                }
            });
        }
        spawn_every(Arc::downgrade(self), config.offset_persist_interval, |b| {
            if let Err(e) = b.scheduler.save().and_then(|()| b.groups.persist()) {
                tracing::error!(error = %e, "saving consumer progress failed");
            }
        });
        spawn_every(
            Arc::downgrade(self),
            config.retention_check_interval,
            move |b| {
                if let Err(e) = b.run_retention() {
                    tracing::error!(error = %e, "retention failed");
                }
            },
        );
    }

    /// Runs one retention pass now (it also runs every `retention_check_interval`).
    pub fn run_retention(&self) -> Result<RetentionReport> {
        retention::run(
            &self.store,
            &self.groups,
            self.store.config().file_reserved_time,
        )
    }

    /// Damage found in stored records: during recovery, and by reads that refused to serve a
    /// record whose checksum failed.
    pub fn corruptions(&self) -> Vec<Corruption> {
        self.store.corruptions()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.store.data_dir()
    }

    /// Key-index files found damaged or stale (at open or by a lookup) and rebuilt from the
    /// commit log since open. Empty when the index is off.
    pub fn key_index_repairs(&self) -> Vec<Corruption> {
        self.store
            .key_index()
            .map(|index| index.repairs())
            .unwrap_or_default()
    }

    /// Bytes of the key index on disk and its entries in memory; `None` when it is off.
    pub fn key_index_footprint(&self) -> Option<(u64, usize)> {
        self.store.key_index().map(|index| index.footprint())
    }

    /// Runs a lookup off the async workers (it reads files): the first `limit` records in
    /// log order that answer `query`. Dead letters re-sent or deleted are left out, and so
    /// are schedule records that have fired.
    async fn find(&self, query: Query, limit: usize) -> Result<Vec<record::DecodedRecord>> {
        self.check_open()?;
        let store = self.store.clone();
        let removed = self.dead_letters.removed();
        let scheduler = self.scheduler.clone();
        tokio::task::spawn_blocking(move || {
            let keep = |rec: &record::DecodedRecord| {
                if query.scheduled {
                    return scheduler.is_waiting(rec.placement.queue_offset);
                }
                crate::system_topics::dlq_group(&rec.message.topic).is_none_or(|group| {
                    !removed
                        .get(group)
                        .is_some_and(|seqs| seqs.contains(&rec.placement.queue_offset))
                })
            };
            store.lookup(&query, limit, &keep)
        })
        .await
        .map_err(|e| {
            BrokerError::backend_caused("embedded", BackendErrorKind::Failed, "lookup task", e)
        })?
    }

    /// Stored copies answering `wanted` in `topic`, as views, oldest first.
    async fn lookup(
        &self,
        wanted: Wanted,
        topic: Option<&str>,
        limit: usize,
    ) -> Result<Vec<MessageView>> {
        let query = Query {
            wanted,
            topic: topic.map(str::to_owned),
            scheduled: false,
        };
        let mut views = self
            .find(query, limit)
            .await?
            .into_iter()
            .map(|rec| system_topics::stored_view(rec.message))
            .collect::<Vec<_>>();
        crate::broker::sort_oldest_first(&mut views);
        Ok(views)
    }

    /// Schedule records answering `wanted` that still wait, bound for `topic`: the `limit`
    /// soonest due, soonest first. Every waiting match is read to find them (a key's waiting
    /// messages are few; its fired ones are read by the index but left out).
    async fn scheduled(
        &self,
        wanted: Wanted,
        topic: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ScheduledMessage>> {
        let query = Query {
            wanted,
            topic: topic.map(str::to_owned),
            scheduled: true,
        };
        let mut found = self
            .find(query, usize::MAX)
            .await?
            .into_iter()
            .filter_map(|rec| system_topics::scheduled_view(rec.message))
            .collect::<Vec<_>>();
        crate::broker::sort_soonest_due(&mut found);
        found.truncate(limit);
        Ok(found)
    }

    /// What the commit-log writer has done since open: messages, batches and fsyncs, so
    /// that operators and benches see how many messages group commit puts into one fsync.
    pub fn write_stats(&self) -> WriteStats {
        self.store.write_stats()
    }

    /// Delayed messages and retries waiting for their due time.
    pub fn pending_delays(&self) -> usize {
        self.scheduler.pending()
    }

    /// Half messages waiting for their outcome.
    pub fn pending_transactions(&self) -> usize {
        self.transactions.pending()
    }

    /// Half messages discarded after their last unanswered check-back (the latest thousand
    /// since open; the op log keeps them all).
    pub fn discarded_transactions(&self) -> Vec<DiscardedTransaction> {
        self.transactions.discarded()
    }

    /// The segment files of the commit log, oldest first (for operators and tests).
    pub fn commit_log_segments(&self) -> Vec<PathBuf> {
        self.store
            .commit_log()
            .segments()
            .iter()
            .map(|s| s.path.clone())
            .collect()
    }

    fn check_open(&self) -> Result<()> {
        if self.store.is_stopped() {
            Err(BrokerError::Closed)
        } else {
            Ok(())
        }
    }
}

fn spawn_every(
    broker: Weak<EmbeddedBroker>,
    interval: Duration,
    tick: impl Fn(&EmbeddedBroker) + Send + Sync + 'static,
) {
    let tick = Arc::new(tick);
    tokio::spawn(async move {
        let mut timer = tokio::time::interval(interval);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        timer.tick().await;
        loop {
            timer.tick().await;
            let Some(b) = broker.upgrade() else { return };
            if b.store.is_stopped() {
                return;
            }
            // File I/O and fsync block: keep them off the async workers.
            let tick = tick.clone();
            let _ = tokio::task::spawn_blocking(move || tick(&b)).await;
        }
    });
}

impl EmbeddedBroker {
    /// Saves every group's progress off the async workers (file I/O and fsync block);
    /// `doing` names the step in the error.
    async fn persist_groups(&self, doing: &'static str) -> Result<()> {
        let groups = self.groups.clone();
        tokio::task::spawn_blocking(move || groups.persist())
            .await
            .map_err(|e| {
                BrokerError::backend_caused("embedded", BackendErrorKind::Failed, doing, e)
            })?
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        // Best effort for a broker dropped without `shutdown`: keep the progress made so far.
        self.closing.cancel();
        self.groups.close();
        if !self.store.is_stopped() {
            let _ = self.store.sync();
        }
        let _ = self.scheduler.save();
        let _ = self.groups.persist();
    }
}

#[async_trait]
impl Broker for EmbeddedBroker {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn create_topic(&self, topic: &str, queue_count: u32) -> Result<()> {
        self.check_open()?;
        validate_topic(topic)?;
        self.store.create_topic(topic, queue_count).map(|_| ())
    }

    async fn queue_count(&self, topic: &str) -> Result<Option<u32>> {
        Ok(self.store.topic(topic).map(|t| t.queues.len() as u32))
    }

    async fn send(&self, message: Message, options: SendOptions) -> Result<SendResult> {
        if options.delay.is_some() {
            let mut results = self.send_batch(vec![message], options).await?;
            return results.pop().ok_or(BrokerError::Closed);
        }
        message.validate(self.store.config().common.max_message_size)?;
        let topic = self.store.topic_for_send(message.topic())?;
        let queue = topic.queue(&options.queue)?;
        self.store
            .append_one(queue, Outgoing::from(message.into_parts()))
            .await
    }

    async fn send_batch(
        &self,
        messages: Vec<Message>,
        options: SendOptions,
    ) -> Result<Vec<SendResult>> {
        let Some(first) = messages.first() else {
            return Ok(Vec::new());
        };
        let topic_name = first.topic().to_owned();
        let max = self.store.config().common.max_message_size;
        for m in &messages {
            m.validate(max)?;
            if m.topic() != topic_name {
                return Err(BrokerError::InvalidConfig(format!(
                    "a batch goes to one topic: {:?} and {:?} differ",
                    topic_name,
                    m.topic()
                )));
            }
        }
        let topic = self.store.topic_for_send(&topic_name)?;
        let queue = topic.queue(&options.queue)?;
        if let Some(delay) = options.delay {
            // Rounded up, so that a delay never falls due before it has passed.
            let now = self.clock.due_after(Duration::ZERO);
            let due = self.store.config().common.delay.due_ms(delay, now)?;
            if due > now {
                let mut results = Vec::with_capacity(messages.len());
                for m in messages {
                    results.push(
                        self.scheduler
                            .put(Outgoing::from(m.into_parts()), &topic_name, &queue, due)
                            .await?,
                    );
                }
                return Ok(results);
            }
        }
        self.store
            .append(
                queue,
                messages
                    .into_iter()
                    .map(|m| Outgoing::from(m.into_parts()))
                    .collect(),
            )
            .await
    }

    async fn prepare(
        &self,
        message: Message,
        options: SendOptions,
        producer: &str,
    ) -> Result<Prepared> {
        self.check_open()?;
        message.validate(self.store.config().common.max_message_size)?;
        if options.delay.is_some() {
            return Err(BrokerError::InvalidConfig(
                "a transactional message cannot be delayed".into(),
            ));
        }
        let topic = self.store.topic_for_send(message.topic())?;
        let queue = topic.queue(&options.queue)?;
        let name = topic.name.to_string();
        self.transactions
            .prepare(message.into_parts(), &name, &queue, producer)
            .await
    }

    async fn end_transaction(
        &self,
        transaction: &TransactionId,
        state: TxState,
    ) -> Result<Option<SendResult>> {
        self.check_open()?;
        self.transactions.end(transaction, state).await
    }

    async fn register_checker(
        &self,
        producer: &str,
        checker: Arc<dyn TransactionChecker>,
    ) -> Result<()> {
        self.transactions.register(producer, checker);
        Ok(())
    }

    async fn dead_letters(&self, group: &str, from: u64, limit: usize) -> Result<Vec<DeadLetter>> {
        self.dead_letters.list(group, from, limit)
    }

    async fn dead_letter_counts(&self) -> Result<Vec<(String, u64)>> {
        Ok(self.dead_letters.counts())
    }

    async fn resend_dead_letter(&self, group: &str, seq: u64) -> Result<bool> {
        self.check_open()?;
        self.dead_letters.resend(group, seq).await
    }

    async fn delete_dead_letter(&self, group: &str, seq: u64) -> Result<bool> {
        self.dead_letters.delete(group, seq)
    }

    async fn subscribe(
        &self,
        subscription: Subscription,
        options: ConsumerOptions,
    ) -> Result<Box<dyn Consumer>> {
        self.check_open()?;
        let consumer = self.groups.join(subscription, options)?;
        // A new group's start point is saved before it is used: after a crash the group must
        // resume there, not at a `consume-from: last` that has moved past what was sent.
        self.persist_groups("saving the group's start").await?;
        Ok(Box::new(consumer))
    }

    async fn lag(&self, group: &str, topic: &str) -> Result<Option<u64>> {
        Ok(self.groups.lag(group, topic))
    }

    async fn topics(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .store
            .topics()
            .iter()
            .map(|t| t.name.to_string())
            .filter(|name| listed(name))
            .collect();
        names.sort();
        Ok(names)
    }

    async fn topic_stats(&self, topic: &str) -> Result<TopicStats> {
        let t = self
            .store
            .topic(topic)
            .ok_or_else(|| BrokerError::TopicNotFound(topic.to_owned()))?;
        let mut queues = Vec::with_capacity(t.queues.len());
        for cq in &t.queues {
            let (min, max) = (cq.min_offset(), cq.max_offset());
            let last = match max.checked_sub(1).filter(|last| *last >= min) {
                Some(last) => cq.entry(last)?.map(|e| e.store_timestamp),
                None => None,
            };
            queues.push(QueueStats::new(cq.queue_id, min, max, last));
        }
        Ok(TopicStats {
            topic: topic.to_owned(),
            queues,
        })
    }

    async fn groups(&self) -> Result<Vec<String>> {
        Ok(self.groups.names())
    }

    async fn group_stats(&self, group: &str) -> Result<GroupStats> {
        self.groups
            .stats(group)
            .ok_or_else(|| BrokerError::GroupNotFound {
                group: group.to_owned(),
                topic: None,
            })
    }

    async fn reset_offset(
        &self,
        group: &str,
        topic: &str,
        to: ResetTo,
    ) -> Result<Vec<QueueOffset>> {
        self.check_open()?;
        let offsets = self.groups.reset(group, topic, to)?;
        // Saved before returning: a restart must not bring the old position back.
        self.persist_groups("saving a reset offset").await?;
        Ok(offsets)
    }

    async fn record_trace(&self, events: Vec<crate::trace::TraceEvent>) -> Result<()> {
        self.check_open()?;
        trace::record(&self.store, &events).await
    }

    async fn messages_by_id(&self, id: MessageId) -> Result<Vec<MessageView>> {
        self.lookup(Wanted::Id(id), None, usize::MAX).await
    }

    async fn messages_by_key(
        &self,
        key: &str,
        topic: Option<&str>,
        limit: usize,
    ) -> Result<Vec<MessageView>> {
        self.lookup(Wanted::Key(key.to_owned()), topic, limit).await
    }

    async fn scheduled_by_id(&self, id: MessageId) -> Result<Vec<ScheduledMessage>> {
        self.scheduled(Wanted::Id(id), None, usize::MAX).await
    }

    async fn scheduled_by_key(
        &self,
        key: &str,
        topic: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ScheduledMessage>> {
        self.scheduled(Wanted::Key(key.to_owned()), topic, limit)
            .await
    }

    async fn health(&self) -> Result<()> {
        // The writer's inbox closes when the writer stops, by shutdown or by failing: then no
        // send can be stored.
        self.check_open()
    }

    async fn flush(&self) -> Result<()> {
        self.check_open()?;
        let store = self.store.clone();
        let groups = self.groups.clone();
        tokio::task::spawn_blocking(move || {
            store.sync()?;
            groups.persist()
        })
        .await
        .map_err(|e| {
            BrokerError::backend_caused("embedded", BackendErrorKind::Failed, "flush task", e)
        })?
    }

    async fn shutdown(&self) -> Result<()> {
        if self.store.is_stopped() {
            return Ok(());
        }
        self.closing.cancel();
        self.groups.close();
        let stopped = self.store.stop().await;
        // The writer answered every queued retry copy; their slots settle before the save.
        self.groups.moves_done().await;
        let persisted = self.scheduler.save().and_then(|()| self.groups.persist());
        self.store.release();
        stopped?;
        persisted?;
        tracing::info!(data_dir = %self.store.data_dir().display(), "embedded broker shut down");
        Ok(())
    }
}

//! The contract every broker backend honours. This rustdoc is the specification; the
//! conformance suite in [`testkit`](crate) checks it.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::sync::Arc;

use async_trait::async_trait;

use crate::dead_letter::DeadLetter;
use crate::delay::{Backoff, Delay};
use crate::error::{BrokerError, Result};
use crate::message::{Message, MessageId, MessageView, ScheduledMessage};
use crate::stats::{GroupStats, QueueOffset, ResetTo, TopicStats};
use crate::subscription::{ConsumeFrom, Subscription};
use crate::trace::TraceEvent;
use crate::transaction::{TransactionChecker, TxState};

/// RocketMQ's default number of queues of an auto-created topic.
pub const DEFAULT_QUEUE_COUNT: u32 = 4;

/// RocketMQ's default `consume-timeout`: 15 minutes.
pub const DEFAULT_CONSUME_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// RocketMQ's `pullThresholdForQueue`: unacknowledged messages a queue may have out at once.
pub const DEFAULT_MAX_IN_FLIGHT_PER_QUEUE: usize = 1000;

/// RocketMQ's `maxReconsumeTimes` for concurrent consumers: 16 retries, then the dead-letter
/// queue. mq applies the same limit to orderly consumers (RocketMQ retries those forever).
pub const DEFAULT_MAX_RECONSUME_TIMES: u32 = 16;

/// RocketMQ's `suspendCurrentQueueTimeMillis`: an orderly queue pauses this long after a
/// failure before the same message is tried again.
pub const DEFAULT_SUSPEND_CURRENT_QUEUE_TIME: Duration = Duration::from_secs(1);

/// How a send picks the queue of its topic.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum QueueSelector {
    /// The next queue in turn (the default).
    #[default]
    RoundRobin,
    /// `hash(key) % queue count`: every message with one key lands on one queue, so an orderly
    /// consumer sees them in send order.
    ShardingKey(String),
    /// This queue id.
    Queue(u32),
}

impl QueueSelector {
    /// The queue for a sharding key among `queue_count` queues; stable across processes and
    /// backends (CRC32C of the key).
    pub fn queue_for_key(key: &str, queue_count: u32) -> u32 {
        crc32c::crc32c(key.as_bytes()) % queue_count.max(1)
    }

    /// The queue this selector picks among the `queue_count` queues of `topic`; `turn` gives
    /// the topic's next round-robin position and is called only for [`RoundRobin`](Self::RoundRobin).
    pub(crate) fn pick(
        &self,
        topic: &str,
        queue_count: u32,
        turn: impl FnOnce() -> u64,
    ) -> Result<u32, BrokerError> {
        let id = match self {
            _ if queue_count == 0 => 0,
            QueueSelector::RoundRobin => (turn() % u64::from(queue_count)) as u32,
            QueueSelector::ShardingKey(key) => QueueSelector::queue_for_key(key, queue_count),
            QueueSelector::Queue(id) => *id,
        };
        if id >= queue_count {
            return Err(BrokerError::QueueNotFound {
                topic: topic.to_owned(),
                queue_id: id,
            });
        }
        Ok(id)
    }
}

/// Options of one send.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SendOptions {
    /// How the queue is picked.
    pub queue: QueueSelector,
    /// When the message becomes visible; `None` is at once.
    pub delay: Option<Delay>,
}

impl SendOptions {
    /// Round-robin send.
    pub fn new() -> Self {
        Self::default()
    }

    /// Orderly send: every message with `key` goes to the same queue.
    pub fn sharding_key(key: impl Into<String>) -> Self {
        SendOptions {
            queue: QueueSelector::ShardingKey(key.into()),
            delay: None,
        }
    }

    /// Send to one queue.
    pub fn queue(queue_id: u32) -> Self {
        SendOptions {
            queue: QueueSelector::Queue(queue_id),
            delay: None,
        }
    }

    /// Makes the message visible only after `delay`.
    pub fn delayed(mut self, delay: Delay) -> Self {
        self.delay = Some(delay);
        self
    }
}

/// What a successful send returns: the message id and where it was stored.
///
/// For a delayed message the queue is the one it will be delivered on and the offset is its
/// place in the broker's delay schedule; its offset in the queue is assigned when it is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SendResult {
    /// The message id.
    pub message_id: MessageId,
    /// The queue it went to.
    pub queue_id: u32,
    /// Its offset in that queue.
    pub queue_offset: u64,
}

/// Options of one consumer instance.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConsumerOptions {
    /// The instance name, unique among the live members of a group. Broadcasting progress is
    /// kept per instance name, so name instances explicitly to keep it across restarts. The
    /// default (`<pid>-<random>@<n>`) is unique per process, host and consumer.
    pub instance: String,
    /// Where a group with no stored progress starts.
    pub consume_from: ConsumeFrom,
    /// A message not acknowledged within this time is delivered again.
    pub consume_timeout: Duration,
    /// Unacknowledged messages one queue may have out at once (concurrent mode).
    pub max_in_flight_per_queue: usize,
    /// Failed deliveries retried before the message goes to the dead-letter queue.
    pub max_reconsume_times: u32,
    /// Delay before each retry (concurrent and broadcasting consumers).
    pub backoff: Backoff,
    /// Pause of an orderly queue before it retries a failed message in place.
    pub suspend_current_queue_time: Duration,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        // The pid alone is not unique across hosts (in containers it is often 1).
        static PROCESS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let process = PROCESS.get_or_init(|| {
            let random = crate::message::MessageId::new().as_u128() as u32;
            format!("{}-{random:08x}", std::process::id())
        });
        ConsumerOptions {
            instance: format!("{process}@{}", NEXT.fetch_add(1, Ordering::Relaxed)),
            consume_from: ConsumeFrom::Last,
            consume_timeout: DEFAULT_CONSUME_TIMEOUT,
            max_in_flight_per_queue: DEFAULT_MAX_IN_FLIGHT_PER_QUEUE,
            max_reconsume_times: DEFAULT_MAX_RECONSUME_TIMES,
            backoff: Backoff::default(),
            suspend_current_queue_time: DEFAULT_SUSPEND_CURRENT_QUEUE_TIME,
        }
    }
}

impl ConsumerOptions {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the instance name.
    pub fn instance(mut self, name: impl Into<String>) -> Self {
        self.instance = name.into();
        self
    }

    /// Sets where a new group starts.
    pub fn consume_from(mut self, from: ConsumeFrom) -> Self {
        self.consume_from = from;
        self
    }

    /// Sets the consume timeout.
    pub fn consume_timeout(mut self, timeout: Duration) -> Self {
        self.consume_timeout = timeout;
        self
    }

    /// Sets the per-queue in-flight limit (at least 1).
    pub fn max_in_flight_per_queue(mut self, limit: usize) -> Self {
        self.max_in_flight_per_queue = limit.max(1);
        self
    }

    /// Sets how many retries come before the dead-letter queue.
    pub fn max_reconsume_times(mut self, times: u32) -> Self {
        self.max_reconsume_times = times;
        self
    }

    /// Sets the retry back-off.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets the pause of an orderly queue after a failure.
    pub fn suspend_current_queue_time(mut self, pause: Duration) -> Self {
        self.suspend_current_queue_time = pause;
        self
    }
}

/// Why a delivery failed, and when to try again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What went wrong; kept with the message and shown in the dead-letter queue.
    pub reason: String,
    /// Retry after this long instead of the back-off schedule.
    pub retry_after: Option<Duration>,
}

impl Failure {
    /// A failure retried on the back-off schedule.
    pub fn new(reason: impl Into<String>) -> Self {
        Failure {
            reason: reason.into(),
            retry_after: None,
        }
    }

    /// A failure retried after `delay`.
    pub fn retry_after(reason: impl Into<String>, delay: Duration) -> Self {
        Failure {
            reason: reason.into(),
            retry_after: Some(delay),
        }
    }
}

/// What became of a failed delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// It will be delivered again after `after`, as retry number `retry`.
    Retry {
        /// 1 for the first retry.
        retry: u32,
        /// The delay before it.
        after: Duration,
    },
    /// It went to the group's dead-letter queue.
    DeadLettered,
    /// The receipt was stale (the message had been redelivered or settled): nothing changed.
    Stale,
}

/// A half message waiting for its transaction's outcome.
#[derive(Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct TransactionId(pub String);

impl fmt::Display for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TransactionId({})", self.0)
    }
}

/// A stored half message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// Pass it to [`Broker::end_transaction`].
    pub transaction: TransactionId,
    /// The id the message keeps when committed.
    pub message_id: MessageId,
}

/// Identifies one delivery so that the consumer can acknowledge it or hand it back.
///
/// Opaque: its fields mean something only to the backend that issued it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Receipt {
    pub(crate) queue_id: u32,
    pub(crate) offset: u64,
    pub(crate) token: u64,
}

impl fmt::Debug for Receipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Receipt({}@{}#{})",
            self.queue_id, self.offset, self.token
        )
    }
}

/// One delivered message and the receipt that settles it (ack, nack or dead-letter).
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The message.
    pub message: MessageView,
    /// Pass it to [`Consumer::ack`], [`Consumer::nack`] or [`Consumer::dead_letter`].
    pub receipt: Receipt,
}

/// Whether copies stored on `topic` are in the scope of a lookup: topic `wanted` when given,
/// else every topic but the internal ones (see [`Broker::messages_by_key`]).
pub(crate) fn in_lookup_scope(topic: &str, wanted: Option<&str>) -> bool {
    match wanted {
        Some(t) => topic == t,
        None => {
            crate::system_topics::topic_kind(topic) != crate::system_topics::TopicKind::Internal
        }
    }
}

/// Sorts lookup results as [`Broker::messages_by_id`] promises: oldest first, by store time,
/// then topic, queue and offset (the one order of both backends).
pub(crate) fn sort_oldest_first(views: &mut [MessageView]) {
    views.sort_by(|a, b| {
        (a.store_timestamp, &a.topic, a.queue_id, a.queue_offset).cmp(&(
            b.store_timestamp,
            &b.topic,
            b.queue_id,
            b.queue_offset,
        ))
    });
}

/// Sorts scheduled lookups as [`Broker::scheduled_by_id`] promises: soonest due first, then
/// by when they were scheduled, topic, queue and id (the one order of both backends).
pub(crate) fn sort_soonest_due(found: &mut [ScheduledMessage]) {
    found.sort_by(|a, b| {
        let key = |s: &ScheduledMessage| {
            (
                s.due_ms,
                s.message.store_timestamp,
                s.message.topic.clone(),
                s.message.queue_id,
                s.message.id,
            )
        };
        key(a).cmp(&key(b))
    });
}

/// A broker: stores messages in topics of queues and delivers them to consumer groups.
///
/// Used as `Arc<dyn Broker>` so that the backend is chosen by configuration at run time.
///
/// # Contract
/// - **Send**: a send that returns `Ok` is stored (durably, as the backend's flush policy
///   promises) and gets a per-queue offset one higher than the previous message of that queue.
///   Messages are validated first ([`Message::validate`]). Topics are created on first use
///   with the backend's default queue count unless created beforehand.
/// - **Groups**: every group subscribed to a topic receives every message that matches its tag
///   filter and that was stored after the group's starting point.
/// - **Clustering**: each message goes to one live member; the topic's queues are shared among
///   the members (RocketMQ's "averagely" allocation over member names in order) and shared again
///   when a member joins or leaves. Progress is kept per (group, queue).
/// - **Broadcasting**: every member receives every message; progress is kept per member.
/// - **Orderly**: a queue has at most one unacknowledged message out at a time, delivered in
///   offset order; a message handed back is delivered again before any later one.
/// - **Delays**: a message sent with a delay is stored at once and delivered at its due time,
///   also after a restart; one that fell due while the broker was down comes promptly after
///   start, in due order.
/// - **Retries**: a failed delivery ([`Consumer::nack`]) comes back to the same group only,
///   after the back-off for its retry (or the delay asked for), with its reconsume count
///   increased; after `max_reconsume_times` retries it goes to the group's dead-letter queue.
///   Orderly queues retry in place after `suspend_current_queue_time`, so order holds.
/// - **Transactions**: a prepared (half) message is invisible until committed; a rollback
///   discards it; without an answer the broker asks the producer's registered checker after
///   the transaction timeout, then every check interval, at most `max checks` times, then
///   discards it with a warning.
/// - **At least once**: a message is delivered again when it is handed back, when its consumer
///   is closed or dropped with it unacknowledged, when `consume_timeout` passes, and after a
///   restart if it was not acknowledged. Stored progress never passes an unacknowledged message,
///   even when later ones are acknowledged.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// A short name of the backend (`"embedded"`, `"redis"`).
    fn backend(&self) -> &'static str;

    /// Creates `topic` with `queue_count` queues, or does nothing if it exists.
    async fn create_topic(&self, topic: &str, queue_count: u32) -> Result<()>;

    /// The queue count of `topic`, `None` if it does not exist.
    async fn queue_count(&self, topic: &str) -> Result<Option<u32>>;

    /// Stores one message.
    async fn send(&self, message: Message, options: SendOptions) -> Result<SendResult>;

    /// Stores messages of one topic atomically, on one queue, in order.
    async fn send_batch(
        &self,
        messages: Vec<Message>,
        options: SendOptions,
    ) -> Result<Vec<SendResult>>;

    /// Joins `subscription.group` as a new member and returns its consumer.
    ///
    /// Fails if the subscription is invalid, differs from the one the group's live members
    /// use, or the instance name is already live in the group.
    async fn subscribe(
        &self,
        subscription: Subscription,
        options: ConsumerOptions,
    ) -> Result<Box<dyn Consumer>>;

    /// Stores a half message for `producer`: invisible to consumers until committed.
    async fn prepare(
        &self,
        message: Message,
        options: SendOptions,
        producer: &str,
    ) -> Result<Prepared>;

    /// Commits (delivers) or rolls back (discards) a half message; `Unknown` leaves it to
    /// check-back. Returns where a committed message was stored. Fails if the transaction is
    /// unknown or already ended.
    async fn end_transaction(
        &self,
        transaction: &TransactionId,
        state: TxState,
    ) -> Result<Option<SendResult>>;

    /// Registers the checker that answers check-back for half messages of `producer`,
    /// replacing an earlier one. Half messages of a producer without a checker wait for one.
    async fn register_checker(
        &self,
        producer: &str,
        checker: Arc<dyn TransactionChecker>,
    ) -> Result<()>;

    /// Up to `limit` dead letters of `group` from position `from`, oldest first.
    async fn dead_letters(&self, group: &str, from: u64, limit: usize) -> Result<Vec<DeadLetter>>;

    /// How many dead letters each group has.
    async fn dead_letter_counts(&self) -> Result<Vec<(String, u64)>>;

    /// Delivers a dead letter again to its group (only), as a fresh message. Returns whether
    /// it was there.
    async fn resend_dead_letter(&self, group: &str, seq: u64) -> Result<bool>;

    /// Delivers every dead letter `group` has when called again (see
    /// [`resend_dead_letter`](Broker::resend_dead_letter)). Returns how many.
    async fn resend_all_dead_letters(&self, group: &str) -> Result<u64> {
        // Positions first, resends after: a resent message that fails again comes back under
        // a new position, which paging on while resending would find and resend again.
        let mut seqs = Vec::new();
        let mut from = 0;
        loop {
            let page = self.dead_letters(group, from, 256).await?;
            let Some(last) = page.last() else {
                break;
            };
            from = last.seq + 1;
            seqs.extend(page.iter().map(|dead| dead.seq));
        }
        let mut resent = 0;
        for seq in seqs {
            if self.resend_dead_letter(group, seq).await? {
                resent += 1;
            }
        }
        Ok(resent)
    }

    /// Removes a dead letter. Returns whether it was there.
    async fn delete_dead_letter(&self, group: &str, seq: u64) -> Result<bool>;

    /// Messages of `topic` stored but not yet settled by `group` (the largest of its members,
    /// for broadcasting), or `None` if the backend cannot tell.
    async fn lag(&self, _group: &str, _topic: &str) -> Result<Option<u64>> {
        Ok(None)
    }

    /// Every topic's name, sorted: user topics and the retry and dead-letter topics of groups
    /// (tell them apart with [`topic_kind`](crate::system_topics::topic_kind)); topics a
    /// backend keeps for itself (delays, half messages) are left out.
    async fn topics(&self) -> Result<Vec<String>>;

    /// The queues of `topic` with their offsets and message counts. Fails with
    /// [`BrokerError::TopicNotFound`] if it does not exist.
    async fn topic_stats(&self, topic: &str) -> Result<TopicStats>;

    /// Every consumer group the broker knows, live or known by its stored progress, sorted.
    async fn groups(&self) -> Result<Vec<String>>;

    /// The model, live members and progress of `group` on every topic it subscribed to
    /// (see [`GroupStats`]); its lag agrees with [`lag`](Broker::lag). Fails with
    /// [`BrokerError::GroupNotFound`] if the group is not known.
    async fn group_stats(&self, group: &str) -> Result<GroupStats>;

    /// Moves the committed offset of `group` on every queue of `topic` (not its retry topic)
    /// to `to`, persisted at once, and returns the new offset of each queue.
    ///
    /// Live members continue from there: what the reset re-delivers is delivered again, and
    /// what it skips is not, except deliveries already handed out before the reset, whose
    /// acknowledgements and failures are then ignored (a receipt from before a reset is
    /// stale). The embedded broker applies it at once; on Redis, members in other processes
    /// see it at their next refresh (one heartbeat interval at most), and until then may hand
    /// out what they had already read. Retries already queued for the group are kept.
    /// Fails with [`BrokerError::TopicNotFound`] or [`BrokerError::GroupNotFound`]
    /// (a group that never subscribed to `topic`).
    async fn reset_offset(&self, group: &str, topic: &str, to: ResetTo)
        -> Result<Vec<QueueOffset>>;

    /// Stores trace events (see [`crate::trace`]) as one record of
    /// [`TRACE_TOPIC`](crate::system_topics::TRACE_TOPIC) whose keys are the distinct message
    /// ids of the events, so that [`trace::trace`](crate::trace::trace) finds them by id. Does
    /// nothing for no events. Once it returns the record is readable; it is kept as the
    /// backend keeps records of a topic no group consumes. Trace is diagnostic: it may be
    /// stored with less care than messages (on the embedded broker it shares the writer with
    /// sends, and what `flush: async` has not synced may be lost in a crash), never at their
    /// expense.
    async fn record_trace(&self, events: Vec<TraceEvent>) -> Result<()>;

    /// Every stored copy of message `id` still retained, oldest first (by store time, then
    /// topic, queue and offset): the message on its topic, its retry copies (on
    /// `%RETRY%<group>%<topic>`, same id, higher `reconsume_times`) and its dead-letter copy
    /// (on `%DLQ%<group>`), like RocketMQ's `queryMessage` by id.
    ///
    /// Each view's `topic` is where that copy is stored (the retry or dead-letter topic for
    /// those copies), its `queue_id` and `queue_offset` its place there. Copies in topics a
    /// backend keeps for itself ([`TopicKind::Internal`](crate::system_topics::TopicKind)) are
    /// not returned: a prepared (half) message appears once committed, and a delayed message
    /// once it is due and stored on its topic (RocketMQ shows a pending one in its schedule
    /// topic; mq shows what a consumer can receive). Dead letters that were re-sent or deleted
    /// are gone, and so is whatever retention removed. An unknown id gives an empty list.
    async fn messages_by_id(&self, id: MessageId) -> Result<Vec<MessageView>>;

    /// Messages stored with business key `key` (one of their [`Message::with_key`] keys; a
    /// message may have several), the oldest `limit` of them, oldest first as in
    /// [`messages_by_id`](Broker::messages_by_id).
    ///
    /// `topic: Some(t)` searches topic `t` only, whatever its kind (internal topics included,
    /// e.g. a trace topic whose records are keyed by the traced message ids); `None` searches
    /// every topic except the internal ones. Keys are compared exactly. An unknown key, or a
    /// `limit` of 0, gives an empty list.
    async fn messages_by_key(
        &self,
        key: &str,
        topic: Option<&str>,
        limit: usize,
    ) -> Result<Vec<MessageView>>;

    /// Every copy of message `id` waiting in the broker's schedule for its due time: the
    /// message itself if it was sent delayed and is not due yet, and its retries that wait
    /// for their back-off (see [`ScheduledMessage`]), soonest due first. Once due, a copy is
    /// stored on its topic and found by [`messages_by_id`](Broker::messages_by_id) instead
    /// (RocketMQ keeps a waiting one in its schedule topic; mq shows it under the topic it
    /// will enter). A copy that fell due a moment ago may be in neither answer until the
    /// backend has moved it. An unknown id gives an empty list.
    async fn scheduled_by_id(&self, id: MessageId) -> Result<Vec<ScheduledMessage>>;

    /// Messages with business key `key` waiting in the schedule, as in
    /// [`scheduled_by_id`](Broker::scheduled_by_id): the `limit` soonest due, soonest first. `topic: Some(t)` keeps those that will enter `t` (a group's pending
    /// retries enter its retry topic), `None` every topic but the internal ones. An unknown
    /// key, or a `limit` of 0, gives an empty list.
    async fn scheduled_by_key(
        &self,
        key: &str,
        topic: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ScheduledMessage>>;

    /// Whether the broker can do its work now: `Ok` when it is open and its storage answers
    /// (embedded: the commit-log writer is alive; Redis: a `PING` round trip within the
    /// command timeout). Fails with [`BrokerError::Closed`] after
    /// [`shutdown`](Broker::shutdown), and with the backend's error when it cannot be reached.
    async fn health(&self) -> Result<()>;

    /// Makes everything stored and every acknowledged progress durable.
    async fn flush(&self) -> Result<()>;

    /// Stops the broker: flushes, persists progress and releases its resources. Later calls
    /// fail with [`BrokerError::Closed`].
    async fn shutdown(&self) -> Result<()>;
}

/// One member of a consumer group. Dropping it leaves the group, like [`Consumer::close`].
#[async_trait]
pub trait Consumer: Send + Sync {
    /// The subscription.
    fn subscription(&self) -> &Subscription;

    /// The instance name.
    fn instance(&self) -> &str;

    /// Up to `max` deliveries; waits up to `wait` for the first and returns an empty list if
    /// none came. Fails with [`BrokerError::Closed`] once closed.
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>>;

    /// Acknowledges deliveries: they will not be delivered to this group (or, broadcasting,
    /// this member) again. Acknowledging twice, or after a redelivery, is harmless.
    async fn ack(&self, receipts: &[Receipt]) -> Result<()>;

    /// Reports a failed delivery: it is retried (see [`Disposition`]) or, past
    /// `max_reconsume_times`, dead-lettered.
    async fn nack(&self, receipt: &Receipt, failure: Failure) -> Result<Disposition>;

    /// Sends a delivery to the group's dead-letter queue at once (a poison message).
    async fn dead_letter(&self, receipt: &Receipt, reason: &str) -> Result<()>;

    /// The queue ids this member currently consumes.
    async fn assignment(&self) -> Result<Vec<u32>>;

    /// Leaves the group: unacknowledged deliveries go to the remaining members, progress is
    /// persisted.
    async fn close(&self) -> Result<()>;
}

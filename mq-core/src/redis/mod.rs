//! The Redis Streams backend (feature `redis`): the same [`Broker`] contract across many
//! processes sharing one Redis server.
//!
//! A stream per (topic, queue) whose entry ids are the queue offsets; a Redis consumer group
//! per mq group (per member, broadcasting); delays and retries in a sorted set per queue moved
//! into the stream by a Lua script; dead letters in a stream per group; half messages in a hash
//! checked back by any live instance that has the producer's checker. `docs/redis-backend.md`
//! lists every key.
//!
//! ```no_run
//! use mq_core::redis::{RedisBroker, RedisConfig};
//! use mq_core::{Broker, Message, SendOptions};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), mq_core::BrokerError> {
//! let broker = RedisBroker::connect(RedisConfig::new("redis://127.0.0.1:6379").prefix("shop")).await?;
//! broker.send(Message::new("order", "o-1 created"), SendOptions::new()).await?;
//! broker.shutdown().await?;
//! # Ok(()) }
//! ```

mod admin;
mod appender;
mod consumer;
mod dead_letter;
mod envelope;
mod group;
mod io;
mod keys;
mod lookup;
mod retention;
mod scheduler;
mod scripts;
mod trace;
mod transactions;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::task::AbortOnDropHandle;

use crate::broker::{
    Broker, Consumer, ConsumerOptions, Prepared, QueueSelector, SendOptions, SendResult,
    TransactionId,
};
use crate::clock::Clock;
use crate::dead_letter::DeadLetter;
use crate::error::{BackendErrorKind, BrokerError, Result};
use crate::message::{validate_topic, Message, MessageId, MessageView, ScheduledMessage};
use crate::settings::BrokerSettings;
use crate::stats::{GroupStats, QueueOffset, ResetTo, TopicStats};
use crate::subscription::Subscription;
use crate::transaction::{TransactionChecker, TxState};

use envelope::Envelope;
use io::Redis;
use keys::Keys;

pub use retention::TrimReport;

/// How long a command may wait for an unreachable Redis before it fails.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(3);
/// How often an idle consumer looks for messages stored by other processes.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How often a member proves it is alive; three missed heartbeats and it is gone.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// How often streams are trimmed below what every group has settled.
pub const DEFAULT_TRIM_INTERVAL: Duration = Duration::from_secs(30);
/// How long a broadcasting member may stay away before its progress is dropped.
pub const DEFAULT_BROADCAST_RESERVE: Duration = Duration::from_secs(24 * 3600);

/// Configuration of a [`RedisBroker`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS.
    pub url: String,
    /// Every key starts with `prefix:`; brokers with different prefixes do not see each other.
    pub prefix: String,
    /// What every backend has: queue count, message size, delays, check-back.
    pub common: BrokerSettings,
    /// How long a command waits for an unreachable Redis before it fails.
    pub command_timeout: Duration,
    /// How often an idle consumer looks for messages stored by other processes (messages of
    /// this process wake it at once).
    pub poll_interval: Duration,
    /// How often members heartbeat; a member silent for three intervals is dead.
    pub heartbeat_interval: Duration,
    /// How often streams are trimmed.
    pub trim_interval: Duration,
    /// A broadcasting member unseen this long loses its progress, so that it no longer holds
    /// back trimming (RocketMQ keeps broadcasting progress on the client; a client that never
    /// comes back must not pin the broker's storage).
    pub broadcast_reserve: Duration,
}

impl RedisConfig {
    /// Defaults for a server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            prefix: "mq".into(),
            common: BrokerSettings::default(),
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            poll_interval: DEFAULT_POLL_INTERVAL,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            trim_interval: DEFAULT_TRIM_INTERVAL,
            broadcast_reserve: DEFAULT_BROADCAST_RESERVE,
        }
    }

    /// Sets the key prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets how long a command waits for an unreachable Redis.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Sets how often idle consumers poll.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Sets the heartbeat interval.
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = interval;
        self
    }

    /// Sets how often streams are trimmed.
    pub fn trim_interval(mut self, interval: Duration) -> Self {
        self.trim_interval = interval;
        self
    }

    /// Sets how long a broadcasting member may stay away before its progress is dropped.
    pub fn broadcast_reserve(mut self, reserve: Duration) -> Self {
        self.broadcast_reserve = reserve;
        self
    }

    crate::settings::common_setters!();

    fn validate(&self) -> Result<()> {
        self.common.validate()?;
        let bad = |what: &str| Err(BrokerError::InvalidConfig(what.to_owned()));
        if self.prefix.is_empty() || self.prefix.contains(['{', '}']) {
            return bad("redis prefix must be non-empty and free of `{` and `}`");
        }
        if self.poll_interval.is_zero()
            || self.heartbeat_interval.is_zero()
            || self.trim_interval.is_zero()
            || self.command_timeout.is_zero()
        {
            return bad(
                "poll, heartbeat and trim intervals and the command timeout must be positive",
            );
        }
        Ok(())
    }
}

/// What the broker, its consumers and its background tasks share.
pub(crate) struct Shared {
    redis: Redis,
    /// Consumers' reads and acknowledgements: a connection and I/O thread of their own, so
    /// that they do not queue behind sends.
    reader: Redis,
    /// Per topic and queue in use: the task that groups concurrent appends (by topic first,
    /// so that a send looks its appender up without allocating a key).
    appenders: Mutex<HashMap<String, HashMap<u32, appender::Appender>>>,
    keys: Keys,
    clock: Clock,
    config: RedisConfig,
    /// Queue counts of known topics, and the round-robin position of each.
    topics: Mutex<HashMap<String, (u32, u64)>>,
    /// Woken at shutdown, so that waiting consumers see it at once.
    activity: Notify,
    /// Per topic: woken when this process stores into it, so that its local consumers do not
    /// wait for their poll.
    signals: Mutex<HashMap<String, Arc<Notify>>>,
    /// Woken when a delayed message is stored.
    scheduler_wake: Notify,
    /// Woken when a half message or a checker arrives.
    checker_wake: Notify,
    checkers: Mutex<HashMap<String, Arc<dyn TransactionChecker>>>,
    /// Live members of this broker (members key, instance): they leave at shutdown.
    members: Mutex<Vec<(String, String)>>,
    /// Where this broker's trace appends were, for trimming `%TRACE%` (`trace.rs`).
    trace_marks: trace::Marks,
    closed: AtomicBool,
}

/// A broker on Redis Streams. Cheap to share: use it as `Arc<dyn Broker>`.
pub struct RedisBroker {
    shared: Arc<Shared>,
    /// The delay scheduler, the transaction checker and trimming: aborted when dropped.
    tasks: Mutex<Vec<AbortOnDropHandle<()>>>,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("url", &io::redact(&self.shared.config.url))
            .field("prefix", &self.shared.config.prefix)
            .finish()
    }
}

impl RedisBroker {
    /// Connects and starts the delay scheduler, the transaction checker and stream trimming.
    /// Must be called inside a tokio runtime; the background tasks run on it.
    pub async fn connect(config: RedisConfig) -> Result<Arc<Self>> {
        config.validate()?;
        let redis = Redis::connect(&config.url, config.command_timeout).await?;
        let reader = Redis::connect(&config.url, config.command_timeout).await?;
        // Fail now, with the URL in the error, rather than at the first send.
        let pong: Result<String> = redis.query("PING", ::redis::cmd("PING")).await;
        if let Err(e) = pong {
            let at = format!("connecting to {}", io::redact(&config.url));
            return Err(match e {
                BrokerError::Backend {
                    backend,
                    kind,
                    message,
                    source,
                } => BrokerError::Backend {
                    backend,
                    kind,
                    message: format!("{at}: {message}"),
                    source,
                },
                other => other,
            });
        }
        let shared = Arc::new(Shared {
            redis,
            reader,
            appenders: Mutex::new(HashMap::new()),
            keys: Keys::new(&config.prefix),
            clock: Clock::new(),
            config,
            topics: Mutex::new(HashMap::new()),
            activity: Notify::new(),
            signals: Mutex::new(HashMap::new()),
            scheduler_wake: Notify::new(),
            checker_wake: Notify::new(),
            checkers: Mutex::new(HashMap::new()),
            members: Mutex::new(Vec::new()),
            trace_marks: trace::Marks::default(),
            closed: AtomicBool::new(false),
        });
        let tasks = vec![
            AbortOnDropHandle::new(tokio::spawn(scheduler::run(shared.clone()))),
            AbortOnDropHandle::new(tokio::spawn(transactions::run(shared.clone()))),
            AbortOnDropHandle::new(tokio::spawn(retention::run(shared.clone()))),
        ];
        Ok(Arc::new(RedisBroker {
            shared,
            tasks: Mutex::new(tasks),
        }))
    }

    /// Trims every stream below what all its groups have settled, now.
    pub async fn trim(&self) -> Result<TrimReport> {
        retention::trim_all(&self.shared).await
    }

    /// Messages waiting in delay sets (delays and retries), over all queues.
    pub async fn pending_delays(&self) -> Result<u64> {
        scheduler::pending(&self.shared).await
    }

    /// Half messages waiting for their transaction's outcome.
    pub async fn pending_transactions(&self) -> Result<u64> {
        self.shared
            .redis
            .query(
                "HLEN",
                ::redis::cmd("HLEN").arg(self.shared.keys.half()).clone(),
            )
            .await
    }
}

impl Shared {
    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(BrokerError::Closed)
        } else {
            Ok(())
        }
    }

    /// The signal of `topic`'s local consumers.
    fn signal(&self, topic: &str) -> Arc<Notify> {
        let mut signals = self.signals.lock();
        // Looked up before inserting: every send passes here, and `entry` wants an owned key.
        if let Some(s) = signals.get(topic) {
            return s.clone();
        }
        signals
            .entry(topic.to_owned())
            .or_insert_with(|| Arc::new(Notify::new()))
            .clone()
    }

    /// The queue count of `topic`, creating it with the default count if it is new.
    async fn ensure_topic(&self, topic: &str) -> Result<u32> {
        if let Some((n, _)) = self.topics.lock().get(topic) {
            return Ok(*n);
        }
        let n = self
            .create_topic(topic, self.config.common.default_queues)
            .await?;
        Ok(n)
    }

    /// Creates a topic unless it exists; returns its queue count.
    async fn create_topic(&self, topic: &str, queues: u32) -> Result<u32> {
        let mut pipe = ::redis::pipe();
        pipe.cmd("HSETNX")
            .arg(self.keys.topics())
            .arg(topic)
            .arg(queues)
            .ignore()
            .cmd("HGET")
            .arg(self.keys.topics())
            .arg(topic);
        let (n,): (u32,) = self.redis.pipe("creating a topic", pipe).await?;
        self.topics
            .lock()
            .entry(topic.to_owned())
            .or_insert((n, 0))
            .0 = n;
        Ok(n)
    }

    async fn queue_count(&self, topic: &str) -> Result<Option<u32>> {
        if let Some((n, _)) = self.topics.lock().get(topic) {
            return Ok(Some(*n));
        }
        let n: Option<u32> = self
            .redis
            .query(
                "reading a topic",
                ::redis::cmd("HGET")
                    .arg(self.keys.topics())
                    .arg(topic)
                    .clone(),
            )
            .await?;
        if let Some(n) = n {
            self.topics.lock().insert(topic.to_owned(), (n, 0));
        }
        Ok(n)
    }

    /// The queue a send goes to.
    async fn select_queue(&self, topic: &str, selector: &QueueSelector) -> Result<u32> {
        let n = self.ensure_topic(topic).await?;
        selector.pick(topic, n, || {
            let mut topics = self.topics.lock();
            if let Some(entry) = topics.get_mut(topic) {
                entry.1 = entry.1.wrapping_add(1);
                return entry.1;
            }
            let entry = topics.entry(topic.to_owned()).or_insert((n, 0));
            entry.1 = entry.1.wrapping_add(1);
            entry.1
        })
    }

    /// Appends encoded messages to a queue; returns their offsets.
    async fn append(&self, topic: &str, queue: u32, blobs: Vec<Vec<u8>>) -> Result<Vec<u64>> {
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if !multi_thread {
            let keys = [
                self.keys.stream(topic, queue),
                self.keys.counter(topic, queue),
                self.keys.lookup(topic, queue),
            ];
            let offsets = appender::append_now(&self.redis, &self.clock, &keys, blobs).await?;
            self.signal(topic).notify_waiters();
            return Ok(offsets);
        }
        let appender = {
            let mut appenders = self.appenders.lock();
            match appenders.get(topic).and_then(|queues| queues.get(&queue)) {
                Some(a) => a.clone(),
                None => {
                    let a = appender::Appender::start(
                        self.redis.clone(),
                        self.clock,
                        [
                            self.keys.stream(topic, queue),
                            self.keys.counter(topic, queue),
                            self.keys.lookup(topic, queue),
                        ],
                    );
                    appenders
                        .entry(topic.to_owned())
                        .or_default()
                        .insert(queue, a.clone());
                    a
                }
            }
        };
        let offsets = appender.append(blobs).await?;
        self.signal(topic).notify_waiters();
        Ok(offsets)
    }

    /// Stores messages on one queue, at once or when due.
    async fn store(
        &self,
        messages: Vec<Message>,
        options: &SendOptions,
    ) -> Result<Vec<SendResult>> {
        self.check_open()?;
        let Some(first) = messages.first() else {
            return Ok(Vec::new());
        };
        let topic = first.topic().to_owned();
        for m in &messages {
            m.validate(self.config.common.max_message_size)?;
            if m.topic() != topic {
                return Err(BrokerError::InvalidConfig(format!(
                    "a batch goes to one topic: {:?} and {:?}",
                    topic,
                    m.topic()
                )));
            }
        }
        // Rounded up, so that a delay never falls due before it has passed.
        let now = self.clock.due_after(Duration::ZERO);
        let due = match options.delay {
            Some(d) => Some(self.config.common.delay.due_ms(d, now)?).filter(|due| *due > now),
            None => None,
        };
        let queue = self.select_queue(&topic, &options.queue).await?;
        let ids: Vec<_> = messages.iter().map(Message::id).collect();
        let blobs = messages
            .into_iter()
            .map(|m| Envelope::from_message(m).encode())
            .collect::<Result<Vec<_>>>()?;
        let offsets = match due {
            Some(due) => scheduler::put(self, &topic, queue, due, blobs).await?,
            None => self.append(&topic, queue, blobs).await?,
        };
        Ok(ids
            .into_iter()
            .zip(offsets)
            .map(|(message_id, queue_offset)| SendResult {
                message_id,
                queue_id: queue,
                queue_offset,
            })
            .collect())
    }
}

#[async_trait]
impl Broker for RedisBroker {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn create_topic(&self, topic: &str, queue_count: u32) -> Result<()> {
        self.shared.check_open()?;
        validate_topic(topic)?;
        if queue_count == 0 {
            return Err(BrokerError::InvalidConfig(format!(
                "topic {topic:?} needs at least one queue"
            )));
        }
        self.shared.create_topic(topic, queue_count).await?;
        Ok(())
    }

    async fn queue_count(&self, topic: &str) -> Result<Option<u32>> {
        self.shared.check_open()?;
        self.shared.queue_count(topic).await
    }

    async fn send(&self, message: Message, options: SendOptions) -> Result<SendResult> {
        let mut results = self.shared.store(vec![message], &options).await?;
        results.pop().ok_or_else(|| {
            BrokerError::backend("redis", BackendErrorKind::Failed, "send: no result")
        })
    }

    async fn send_batch(
        &self,
        messages: Vec<Message>,
        options: SendOptions,
    ) -> Result<Vec<SendResult>> {
        self.shared.store(messages, &options).await
    }

    async fn subscribe(
        &self,
        subscription: Subscription,
        options: ConsumerOptions,
    ) -> Result<Box<dyn Consumer>> {
        self.shared.check_open()?;
        let consumer =
            consumer::RedisConsumer::join(self.shared.clone(), subscription, options).await?;
        Ok(Box::new(consumer))
    }

    async fn prepare(
        &self,
        message: Message,
        options: SendOptions,
        producer: &str,
    ) -> Result<Prepared> {
        self.shared.check_open()?;
        transactions::prepare(&self.shared, message, options, producer).await
    }

    async fn end_transaction(
        &self,
        transaction: &TransactionId,
        state: TxState,
    ) -> Result<Option<SendResult>> {
        self.shared.check_open()?;
        transactions::end(&self.shared, transaction, state).await
    }

    async fn register_checker(
        &self,
        producer: &str,
        checker: Arc<dyn TransactionChecker>,
    ) -> Result<()> {
        self.shared.check_open()?;
        self.shared
            .checkers
            .lock()
            .insert(producer.to_owned(), checker);
        self.shared.checker_wake.notify_waiters();
        Ok(())
    }

    async fn dead_letters(&self, group: &str, from: u64, limit: usize) -> Result<Vec<DeadLetter>> {
        self.shared.check_open()?;
        dead_letter::list(&self.shared, group, from, limit).await
    }

    async fn dead_letter_counts(&self) -> Result<Vec<(String, u64)>> {
        self.shared.check_open()?;
        dead_letter::counts(&self.shared).await
    }

    async fn resend_dead_letter(&self, group: &str, seq: u64) -> Result<bool> {
        self.shared.check_open()?;
        dead_letter::resend(&self.shared, group, seq).await
    }

    async fn delete_dead_letter(&self, group: &str, seq: u64) -> Result<bool> {
        self.shared.check_open()?;
        dead_letter::delete(&self.shared, group, seq).await
    }

    async fn lag(&self, group: &str, topic: &str) -> Result<Option<u64>> {
        self.shared.check_open()?;
        retention::lag(&self.shared, group, topic).await.map(Some)
    }

    async fn topics(&self) -> Result<Vec<String>> {
        self.shared.topic_names().await
    }

    async fn topic_stats(&self, topic: &str) -> Result<TopicStats> {
        self.shared.topic_stats(topic).await
    }

    async fn groups(&self) -> Result<Vec<String>> {
        self.shared.group_names().await
    }

    async fn group_stats(&self, group: &str) -> Result<GroupStats> {
        self.shared.group_stats(group).await
    }

    async fn reset_offset(
        &self,
        group: &str,
        topic: &str,
        to: ResetTo,
    ) -> Result<Vec<QueueOffset>> {
        self.shared.reset_offset(group, topic, to).await
    }

    async fn record_trace(&self, events: Vec<crate::trace::TraceEvent>) -> Result<()> {
        self.shared.check_open()?;
        trace::record(&self.shared, &events).await
    }

    async fn messages_by_id(&self, id: MessageId) -> Result<Vec<MessageView>> {
        self.shared.check_open()?;
        let topics = self.shared.lookup_topics(None).await?;
        self.shared
            .lookup(lookup::Wanted::Id(id), topics, usize::MAX)
            .await
    }

    async fn messages_by_key(
        &self,
        key: &str,
        topic: Option<&str>,
        limit: usize,
    ) -> Result<Vec<MessageView>> {
        self.shared.check_open()?;
        let topics = self.shared.lookup_topics(topic).await?;
        self.shared
            .lookup(lookup::Wanted::Key(key), topics, limit)
            .await
    }

    async fn scheduled_by_id(&self, id: MessageId) -> Result<Vec<ScheduledMessage>> {
        self.shared.check_open()?;
        let topics = self.shared.lookup_topics(None).await?;
        self.shared
            .scheduled(lookup::Wanted::Id(id), topics, usize::MAX)
            .await
    }

    async fn scheduled_by_key(
        &self,
        key: &str,
        topic: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ScheduledMessage>> {
        self.shared.check_open()?;
        let topics = self.shared.lookup_topics(topic).await?;
        self.shared
            .scheduled(lookup::Wanted::Key(key), topics, limit)
            .await
    }

    async fn health(&self) -> Result<()> {
        self.shared.check_open()?;
        let timeout = self.shared.config.command_timeout;
        // The query retries an unreachable server until its own timeout; this bounds the
        // whole check by the same time, whatever the connection does meanwhile.
        let ping = self
            .shared
            .redis
            .query::<String>("PING", ::redis::cmd("PING"));
        match tokio::time::timeout(timeout, ping).await {
            Ok(pong) => pong.map(|_| ()),
            Err(_) => Err(BrokerError::backend(
                "redis",
                BackendErrorKind::Unavailable,
                format!(
                    "PING to {} not answered within {timeout:?}",
                    io::redact(&self.shared.config.url)
                ),
            )),
        }
    }

    async fn flush(&self) -> Result<()> {
        // Redis acknowledges a write once it holds it; durability is the server's
        // `appendfsync` setting.
        self.shared.check_open()
    }

    async fn shutdown(&self) -> Result<()> {
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return Err(BrokerError::Closed);
        }
        self.tasks.lock().clear();
        self.shared.activity.notify_waiters();
        // Members leave now, so that their queues and unacknowledged messages go to the
        // others (or to this group after a restart) without waiting for their heartbeat to age.
        let members = std::mem::take(&mut *self.shared.members.lock());
        if !members.is_empty() {
            let mut pipe = ::redis::pipe();
            for (key, instance) in &members {
                pipe.cmd("ZREM").arg(key).arg(instance).ignore();
            }
            self.shared.redis.pipe::<()>("leaving groups", pipe).await?;
        }
        Ok(())
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        // The background tasks abort as their handles drop; consumers still held see this.
        self.shared.closed.store(true, Ordering::Release);
    }
}

//! The typed `mq:` section of the configuration. Every key, its default and its meaning are
//! listed in `docs/configuration.md`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use mq_core::subscription::{ConsumeMode, MessageModel};

use super::values::{ConsumeTimestamp, InstanceName};

/// Everything under `mq:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct MqSettings {
    /// Which broker and how it stores.
    pub broker: BrokerSettings,
    /// Defaults of the template sender.
    pub producer: ProducerSettings,
    /// Defaults of every listener.
    pub consumer: ConsumerSettings,
    /// Where idempotent listeners remember what they processed.
    pub idempotency: IdempotencySettings,
    /// Per-listener overrides, by listener name (the handler function's name).
    pub listeners: BTreeMap<String, ListenerSettings>,
    /// The message trace.
    pub trace: TraceSettings,
    /// The admin API (`Running::admin_router`).
    pub admin: AdminSettings,
    /// How long shutdown waits for handlers in flight.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// The name broadcasting listeners keep their progress under; `None`:
    /// [`InstanceName::default_for`] the backend.
    pub instance_name: Option<InstanceName>,
}

impl Default for MqSettings {
    fn default() -> Self {
        MqSettings {
            broker: BrokerSettings::default(),
            producer: ProducerSettings::default(),
            consumer: ConsumerSettings::default(),
            idempotency: IdempotencySettings::default(),
            listeners: BTreeMap::new(),
            trace: TraceSettings::default(),
            admin: AdminSettings::default(),
            shutdown_timeout: Duration::from_secs(30),
            instance_name: None,
        }
    }
}

/// The broker backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BrokerKind {
    /// The embedded, durable broker (the default).
    #[default]
    Embedded,
    /// Redis Streams.
    Redis,
}

/// When sends are acknowledged relative to fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FlushMode {
    /// After the write reaches the operating system; fsync on `flush-interval`.
    #[default]
    Async,
    /// After fsync (group commit).
    Sync,
}

/// `mq.broker`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct BrokerSettings {
    /// `embedded` or `redis`.
    pub kind: BrokerKind,
    /// Data directory of the embedded broker.
    pub data_dir: PathBuf,
    /// `async` or `sync`.
    pub flush: FlushMode,
    /// fsync interval of `flush: async`.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Queues of a topic created on first use.
    pub queues: u32,
    /// Commit-log segment size in bytes.
    pub segment_size: u64,
    /// Largest accepted body in bytes.
    pub max_message_size: usize,
    /// Minimum age of a segment before retention may delete it.
    #[serde(with = "humantime_serde")]
    pub file_reserved_time: Duration,
    /// The delay levels, level 1 first, as durations separated by blanks.
    pub delay_levels: String,
    /// The longest accepted delay.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// Transaction check-back.
    pub transaction: TransactionSettings,
    /// The Redis backend.
    pub redis: RedisSettings,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            kind: BrokerKind::Embedded,
            data_dir: PathBuf::from("data/mq"),
            flush: FlushMode::Async,
            flush_interval: mq_core::embedded::DEFAULT_FLUSH_INTERVAL,
            queues: mq_core::DEFAULT_QUEUE_COUNT,
            segment_size: mq_core::embedded::DEFAULT_SEGMENT_SIZE,
            max_message_size: mq_core::DEFAULT_MAX_MESSAGE_SIZE,
            file_reserved_time: mq_core::embedded::DEFAULT_FILE_RESERVED_TIME,
            delay_levels: "1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h".into(),
            max_delay: mq_core::delay::DEFAULT_MAX_DELAY,
            transaction: TransactionSettings::default(),
            redis: RedisSettings::default(),
        }
    }
}

/// `mq.broker.transaction`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct TransactionSettings {
    /// First check-back after this long.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Then every this long.
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
    /// At most this many checks.
    pub check_max: u32,
}

impl Default for TransactionSettings {
    fn default() -> Self {
        let p = mq_core::CheckPolicy::default();
        TransactionSettings {
            timeout: p.timeout,
            check_interval: p.interval,
            check_max: p.max_checks,
        }
    }
}

/// `mq.broker.redis`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct RedisSettings {
    /// `redis://` or `rediss://` URL.
    pub url: String,
    /// Prefix of every key.
    pub prefix: String,
    /// How often an idle consumer looks for messages stored by other processes.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How often members heartbeat; three missed heartbeats and a member is gone.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A broadcasting member unseen this long loses its progress (so it stops holding back
    /// trimming).
    #[serde(with = "humantime_serde")]
    pub broadcast_reserve: Duration,
    /// How often each broker trims the streams to what some group still needs.
    #[serde(with = "humantime_serde")]
    pub trim_interval: Duration,
}

// The Redis backend's defaults, spelled out here because the settings exist (and are checked)
// in builds without the `redis` feature; a test holds them equal to mq-core's.
const REDIS_POLL_INTERVAL: Duration = Duration::from_millis(100);
const REDIS_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
const REDIS_BROADCAST_RESERVE: Duration = Duration::from_secs(24 * 3600);
const REDIS_TRIM_INTERVAL: Duration = Duration::from_secs(30);

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            url: "redis://127.0.0.1:6379".into(),
            prefix: "mq".into(),
            poll_interval: REDIS_POLL_INTERVAL,
            heartbeat_interval: REDIS_HEARTBEAT_INTERVAL,
            broadcast_reserve: REDIS_BROADCAST_RESERVE,
            trim_interval: REDIS_TRIM_INTERVAL,
        }
    }
}

/// `mq.producer`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ProducerSettings {
    /// The longest one attempt of a send may take (on Redis also how long a command waits
    /// for an unreachable server).
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    /// Retries of a send whose attempt failed or timed out (with the same message id).
    pub retries: u32,
    /// The longest a whole send may take, retries included (RocketMQ's `sendMsgTimeout`); a
    /// send not done by then fails with [`SendError::RequestTimeout`](crate::SendError::RequestTimeout).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for ProducerSettings {
    fn default() -> Self {
        ProducerSettings {
            send_timeout: Duration::from_secs(3),
            retries: 2,
            request_timeout: Duration::from_secs(3),
        }
    }
}

/// Where a group with no stored progress starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(try_from = "String")]
pub enum ConsumeFromSetting {
    /// New messages only (RocketMQ's default).
    #[default]
    Last,
    /// Everything still stored.
    First,
    /// The first message stored at or after `consume-timestamp`.
    Timestamp,
}

impl TryFrom<String> for ConsumeFromSetting {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        // By hand: the configuration's own enum error does not say which values there are.
        match s.as_str() {
            "last" => Ok(ConsumeFromSetting::Last),
            "first" => Ok(ConsumeFromSetting::First),
            "timestamp" => Ok(ConsumeFromSetting::Timestamp),
            other => Err(format!("expected last, first or timestamp, got {other:?}")),
        }
    }
}

/// `mq.consumer`: defaults of every listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ConsumerSettings {
    /// Handlers of one listener running at once (RocketMQ starter: 20).
    pub concurrency: usize,
    /// A handler that has not answered within this time counts as failed.
    #[serde(with = "humantime_serde")]
    pub consume_timeout: Duration,
    /// Retries before the dead-letter queue.
    pub max_reconsume_times: u32,
    /// Pause of an orderly queue after a failure.
    #[serde(with = "humantime_serde")]
    pub suspend_current_queue_time: Duration,
    /// Back-off before each retry, as durations separated by blanks.
    pub backoff: String,
    /// `last`, `first` or `timestamp`.
    pub consume_from: ConsumeFromSetting,
    /// Where `consume-from: timestamp` starts; `None`: half an hour before start-up.
    pub consume_timestamp: Option<ConsumeTimestamp>,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        ConsumerSettings {
            concurrency: 20,
            consume_timeout: mq_core::DEFAULT_CONSUME_TIMEOUT,
            max_reconsume_times: mq_core::broker::DEFAULT_MAX_RECONSUME_TIMES,
            suspend_current_queue_time: mq_core::broker::DEFAULT_SUSPEND_CURRENT_QUEUE_TIME,
            backoff: "10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h".into(),
            consume_from: ConsumeFromSetting::Last,
            consume_timestamp: None,
        }
    }
}

/// Which idempotency store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum IdempotencyStoreKind {
    /// In memory, bounded and expiring (the default).
    #[default]
    Memory,
    /// Redis.
    Redis,
}

/// `mq.idempotency`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct IdempotencySettings {
    /// `memory` or `redis`.
    pub store: IdempotencyStoreKind,
    /// URL of the Redis store.
    pub redis_url: String,
    /// Prefix of its keys.
    pub prefix: String,
    /// How long a handler may hold a key before another delivery may run.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How long a processed key is remembered.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Most keys the memory store keeps.
    pub capacity: usize,
}

impl Default for IdempotencySettings {
    fn default() -> Self {
        IdempotencySettings {
            store: IdempotencyStoreKind::Memory,
            redis_url: "redis://127.0.0.1:6379".into(),
            prefix: "mq:idem".into(),
            lease: Duration::from_secs(60),
            retention: Duration::from_secs(24 * 3600),
            capacity: 100_000,
        }
    }
}

/// `mq.trace`: the message trace (see [`crate::trace`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct TraceSettings {
    /// Whether listeners trace their deliveries and resends are recorded.
    pub enabled: bool,
    /// Most trace events waiting to be stored; one more is dropped (and counted).
    pub queue_capacity: usize,
}

impl Default for TraceSettings {
    fn default() -> Self {
        TraceSettings {
            enabled: true,
            queue_capacity: 10_000,
        }
    }
}

/// `mq.admin`: the admin API.
#[derive(Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct AdminSettings {
    /// The bearer token every `/mq/api/*` request must carry; `None` (or empty): the admin
    /// routes answer loopback clients only.
    pub token: Option<String>,
}

impl AdminSettings {
    /// The configured token, if one is set and not empty.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref().filter(|t| !t.is_empty())
    }
}

// By hand: the token is a secret and stays out of logs and error messages.
impl std::fmt::Debug for AdminSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSettings")
            .field("token", &self.token().map(|_| "***"))
            .finish()
    }
}

/// `mq.listeners.<name>`: overrides of one listener.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ListenerSettings {
    /// `false` switches the listener off.
    pub enabled: Option<bool>,
    /// Handlers running at once.
    pub concurrency: Option<usize>,
    /// Retries before the dead-letter queue.
    pub max_reconsume_times: Option<u32>,
    /// Consume timeout.
    #[serde(default, with = "humantime_serde::option")]
    pub consume_timeout: Option<Duration>,
    /// Where the listener's group starts if it has no stored progress.
    pub consume_from: Option<ConsumeFromSetting>,
    /// Where `consume-from: timestamp` starts.
    pub consume_timestamp: Option<ConsumeTimestamp>,
    /// The instance name of a broadcasting listener.
    pub instance_name: Option<InstanceName>,
}

/// Parses `1s 5s 10s` into durations.
pub fn parse_durations(list: &str) -> Result<Vec<Duration>, String> {
    list.split_whitespace()
        .map(|d| humantime::parse_duration(d).map_err(|e| format!("{d:?}: {e}")))
        .collect()
}

/// The message model named by a listener attribute (the words are `mq_core`'s).
pub fn parse_model(s: &str) -> Result<MessageModel, String> {
    s.parse()
        .map_err(|e: mq_core::subscription::UnknownWord| e.to_string())
}

/// The consume mode named by a listener attribute (the words are `mq_core`'s).
pub fn parse_mode(s: &str) -> Result<ConsumeMode, String> {
    s.parse()
        .map_err(|e: mq_core::subscription::UnknownWord| e.to_string())
}

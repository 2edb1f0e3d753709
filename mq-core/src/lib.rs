//! The core of mq: the message model, the [`Broker`] contract and the embedded durable broker.
//!
//! mq gives Rust services the delivery semantics of Apache RocketMQ: topics of queues, tags,
//! consumer groups (clustering and broadcasting), orderly consumption per sharding key and
//! at-least-once delivery with redelivery of anything not acknowledged. This crate knows
//! nothing of macros, YAML or HTTP; applications use it through `mq-starter`.
//!
//! ```
//! use std::time::Duration;
//! use mq_core::embedded::{EmbeddedBroker, EmbeddedConfig};
//! use mq_core::{Broker, ConsumerOptions, Message, SendOptions, Subscription};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let broker = EmbeddedBroker::open(EmbeddedConfig::new(dir.path())).await?;
//!
//! // A group that wants only paid orders.
//! let sub = Subscription::new("order", "points").tags("paid")?;
//! let consumer = broker.subscribe(sub, ConsumerOptions::new()).await?;
//!
//! broker.send(Message::new("order", "o-1 created").with_tag("created"), SendOptions::new()).await?;
//! broker.send(Message::new("order", "o-1 paid").with_tag("paid").with_key("o-1"), SendOptions::new()).await?;
//!
//! let deliveries = consumer.receive(16, Duration::from_secs(1)).await?;
//! assert_eq!(deliveries.len(), 1);
//! assert_eq!(deliveries[0].message.key(), Some("o-1"));
//! consumer.ack(&[deliveries[0].receipt.clone()]).await?;
//! broker.shutdown().await?;
//! # Ok(()) }
//! ```

pub mod broker;
pub mod clock;
pub mod dead_letter;
pub mod delay;
pub mod embedded;
pub mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod message;
mod rebalance;
#[cfg(feature = "redis")]
pub mod redis;
pub(crate) mod retry;
pub mod settings;
pub mod stats;
pub mod subscription;
pub mod system_topics;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod trace;
pub mod transaction;

pub use broker::{
    Broker, Consumer, ConsumerOptions, Delivery, Disposition, Failure, Prepared, QueueSelector,
    Receipt, SendOptions, SendResult, TransactionId, DEFAULT_CONSUME_TIMEOUT, DEFAULT_QUEUE_COUNT,
};
pub use dead_letter::DeadLetter;
pub use delay::{Backoff, Delay, DelayPolicy};
pub use error::{BackendErrorKind, BrokerError, MessageError, RecordError};
pub use message::{
    Destination, Message, MessageId, MessageParts, MessageView, ScheduledMessage,
    DEFAULT_MAX_MESSAGE_SIZE,
};
pub use settings::BrokerSettings;
pub use stats::{GroupQueueStats, GroupStats, QueueOffset, QueueStats, ResetTo, TopicStats};
pub use subscription::{ConsumeFrom, ConsumeMode, MessageModel, Subscription, TagFilter};
pub use trace::{DeliveryOutcome, Trace, TraceEvent, TraceKind};
pub use transaction::{CheckPolicy, TransactionChecker, TxState};

//! Dead letters: messages a group gave up on, with why and how often it tried.

use crate::message::MessageView;

/// Property names the broker sets on retried and dead-lettered messages. Names starting with
/// `%` are reserved for the broker's own bookkeeping and never reach handlers.
pub mod property {
    /// The topic the message was first sent to.
    pub const ORIGIN_TOPIC: &str = "mq.origin-topic";
    /// The consumer group that dead-lettered the message.
    pub const CONSUMER_GROUP: &str = "mq.consumer-group";
    /// Deliveries made before the message was dead-lettered.
    pub const ATTEMPTS: &str = "mq.attempts";
    /// When the first delivery failed (ms since the Unix epoch).
    pub const FIRST_FAILURE_TIME: &str = "mq.first-failure-time";
    /// When the last delivery failed (ms since the Unix epoch).
    pub const LAST_FAILURE_TIME: &str = "mq.last-failure-time";
    /// What the last failure said.
    pub const LAST_ERROR: &str = "mq.last-error";

    /// Every property above: what a dead letter loses when it is sent again as a fresh message.
    pub(crate) const ALL: [&str; 6] = [
        ORIGIN_TOPIC,
        CONSUMER_GROUP,
        ATTEMPTS,
        FIRST_FAILURE_TIME,
        LAST_FAILURE_TIME,
        LAST_ERROR,
    ];
}

/// A dead-lettered message of one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its position in the group's dead-letter queue; what resend and delete take.
    pub seq: u64,
    /// The group that gave up on it.
    pub group: String,
    /// The message as it was sent; `topic` is the original topic.
    pub message: MessageView,
    /// How many deliveries failed.
    pub attempts: u32,
    /// When the first delivery failed (ms since the Unix epoch).
    pub first_failure_ms: u64,
    /// When the last delivery failed (ms since the Unix epoch).
    pub last_failure_ms: u64,
    /// What the last failure said.
    pub last_error: String,
}

impl DeadLetter {
    /// Reads the dead-letter properties of a message stored in a dead-letter queue.
    pub fn from_stored(seq: u64, group: &str, mut message: MessageView) -> Self {
        let prop = |m: &MessageView, k: &str| m.properties.get(k).cloned().unwrap_or_default();
        let num = |m: &MessageView, k: &str| prop(m, k).parse::<u64>().unwrap_or(0);
        let attempts = num(&message, property::ATTEMPTS) as u32;
        let first_failure_ms = num(&message, property::FIRST_FAILURE_TIME);
        let last_failure_ms = num(&message, property::LAST_FAILURE_TIME);
        let last_error = prop(&message, property::LAST_ERROR);
        if let Some(origin) = message.properties.get(property::ORIGIN_TOPIC) {
            message.topic = origin.clone();
        }
        DeadLetter {
            seq,
            group: group.to_owned(),
            message,
            attempts,
            first_failure_ms,
            last_failure_ms,
            last_error,
        }
    }
}

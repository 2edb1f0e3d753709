//! Dead letters: messages a group gave up on, with why and how often it tried.
//!
//! The record is the same on every backend: the stored copy carries the properties below, so
//! a dead letter reads the same whichever backend kept it, and a resend strips them again.

use std::collections::BTreeMap;

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
    pub const ALL: [&str; 6] = [
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

/// Notes a failure on the copy of a message that goes to its retry queue: when it first failed
/// (kept from an earlier retry) and what the last failure said.
pub(crate) fn note_retry(
    properties: &mut BTreeMap<String, String>,
    first_failure_ms: u64,
    reason: &str,
) {
    properties
        .entry(property::FIRST_FAILURE_TIME.into())
        .or_insert_with(|| first_failure_ms.to_string());
    properties.insert(property::LAST_ERROR.into(), reason.to_owned());
}

/// What a dead letter records of the failures that put it there.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Burial<'a> {
    /// The topic the message was first sent to.
    pub origin_topic: &'a str,
    /// The group that gave up on it.
    pub group: &'a str,
    /// Deliveries made, the last included.
    pub attempts: u32,
    /// When its first delivery failed, if the backend knows it from elsewhere than the
    /// message's own properties (which win: they survive retries through the retry queue).
    pub first_failure_ms: Option<u64>,
    /// Now, which is when the last delivery failed.
    pub now_ms: u64,
    /// What the last failure said.
    pub reason: &'a str,
}

impl Burial<'_> {
    /// Writes the dead-letter properties on the copy that goes to the dead-letter queue.
    pub(crate) fn mark(&self, properties: &mut BTreeMap<String, String>) {
        let first = properties
            .get(property::FIRST_FAILURE_TIME)
            .cloned()
            .or(self.first_failure_ms.map(|ms| ms.to_string()))
            .unwrap_or_else(|| self.now_ms.to_string());
        properties.insert(property::ORIGIN_TOPIC.into(), self.origin_topic.to_owned());
        properties.insert(property::CONSUMER_GROUP.into(), self.group.to_owned());
        properties.insert(property::ATTEMPTS.into(), self.attempts.to_string());
        properties.insert(property::FIRST_FAILURE_TIME.into(), first);
        properties.insert(property::LAST_FAILURE_TIME.into(), self.now_ms.to_string());
        properties.insert(property::LAST_ERROR.into(), self.reason.to_owned());
    }
}

impl DeadLetter {
    /// The message to send again: as first sent, without what its failures added. Its
    /// `topic` is the original topic; the backend sends it to the group's retry queue, so
    /// that only this group sees it again.
    pub fn into_resend(self) -> MessageView {
        let mut message = self.message;
        for key in property::ALL {
            message.properties.remove(key);
        }
        message
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::message::{Message, MessageId};

    fn stored(properties: BTreeMap<String, String>) -> MessageView {
        let p = Message::new("order", "body").into_parts();
        MessageView {
            id: MessageId::new(),
            topic: "%DLQ%g".into(),
            tag: None,
            keys: vec![],
            properties,
            body: p.body,
            queue_id: 0,
            queue_offset: 7,
            born_timestamp: 1,
            store_timestamp: 2,
            reconsume_times: 3,
        }
    }

    #[test]
    fn a_burial_reads_back_as_the_dead_letter_it_describes_and_a_resend_drops_it() {
        let mut props = BTreeMap::from([("user".to_owned(), "kept".to_owned())]);
        note_retry(&mut props, 100, "first");
        note_retry(&mut props, 200, "second");
        Burial {
            origin_topic: "order",
            group: "g",
            attempts: 3,
            first_failure_ms: Some(150),
            now_ms: 300,
            reason: "third",
        }
        .mark(&mut props);
        let dead = DeadLetter::from_stored(7, "g", stored(props));
        assert_eq!(dead.message.topic, "order");
        assert_eq!(dead.attempts, 3);
        assert_eq!(dead.first_failure_ms, 100, "the first retry's time wins");
        assert_eq!(dead.last_failure_ms, 300);
        assert_eq!(dead.last_error, "third");
        let again = dead.into_resend();
        assert_eq!(again.topic, "order");
        assert_eq!(
            again.properties,
            BTreeMap::from([("user".to_owned(), "kept".to_owned())])
        );
    }

    #[test]
    fn a_first_failure_unknown_elsewhere_is_now() {
        let mut props = BTreeMap::new();
        Burial {
            origin_topic: "order",
            group: "g",
            attempts: 1,
            first_failure_ms: None,
            now_ms: 42,
            reason: "r",
        }
        .mark(&mut props);
        assert_eq!(props[property::FIRST_FAILURE_TIME], "42");
    }
}

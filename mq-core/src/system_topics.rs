//! Names of the topics every backend keeps for a consumer group: its retry queue and its
//! dead-letter queue, named as RocketMQ names them.
//!
//! Names of system topics start with `%`, which user topics may not contain, so they never
//! collide with a user's topic.

/// Prefix of retry topics: `%RETRY%<group>%<topic>`.
pub const RETRY_PREFIX: &str = "%RETRY%";
/// Prefix of dead-letter topics: `%DLQ%<group>`.
pub const DLQ_PREFIX: &str = "%DLQ%";
/// The topic of message trace records (RocketMQ's `RMQ_SYS_TRACE_TOPIC`), keyed by the ids of
/// the messages they trace (see [`crate::trace`]). Internal: not listed with the topics.
pub const TRACE_TOPIC: &str = "%TRACE%";

/// Longest retry-topic name kept as written; a longer one ends in a checksum of the topic
/// instead, so that file and key names stay short enough for any filesystem.
const MAX_RETRY_TOPIC_LEN: usize = 240;

/// The retry topic of one (group, topic): retried messages reach that group only.
///
/// ```
/// use mq_core::system_topics::retry_topic;
/// assert_eq!(retry_topic("points", "order"), "%RETRY%points%order");
/// ```
pub fn retry_topic(group: &str, topic: &str) -> String {
    let name = format!("{RETRY_PREFIX}{group}%{topic}");
    if name.len() <= MAX_RETRY_TOPIC_LEN {
        name
    } else {
        format!(
            "{RETRY_PREFIX}{group}%{:08x}",
            crc32c::crc32c(topic.as_bytes())
        )
    }
}

/// The dead-letter topic of a group.
///
/// ```
/// use mq_core::system_topics::dlq_topic;
/// assert_eq!(dlq_topic("points"), "%DLQ%points");
/// ```
pub fn dlq_topic(group: &str) -> String {
    format!("{DLQ_PREFIX}{group}")
}

/// The group whose dead-letter topic this is, if it is one.
pub fn dlq_group(topic: &str) -> Option<&str> {
    topic.strip_prefix(DLQ_PREFIX)
}

/// What a topic name is, for tools that show user topics apart from the ones mq keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum TopicKind {
    /// A topic of the application.
    User,
    /// A group's retry topic (`%RETRY%<group>%<topic>`).
    Retry,
    /// A group's dead-letter topic (`%DLQ%<group>`).
    DeadLetter,
    /// A topic a backend keeps for itself (delays, half messages...); never listed.
    Internal,
}

/// The kind of a topic name. User topics cannot contain `%`, so every other name is mq's.
///
/// ```
/// use mq_core::system_topics::{topic_kind, TopicKind};
/// assert_eq!(topic_kind("order"), TopicKind::User);
/// assert_eq!(topic_kind("%RETRY%points%order"), TopicKind::Retry);
/// assert_eq!(topic_kind("%DLQ%points"), TopicKind::DeadLetter);
/// assert_eq!(topic_kind("%SCHEDULE%"), TopicKind::Internal);
/// assert_eq!(topic_kind(mq_core::system_topics::TRACE_TOPIC), TopicKind::Internal);
/// ```
pub fn topic_kind(topic: &str) -> TopicKind {
    if topic.starts_with(RETRY_PREFIX) {
        TopicKind::Retry
    } else if topic.starts_with(DLQ_PREFIX) {
        TopicKind::DeadLetter
    } else if topic.starts_with('%') {
        TopicKind::Internal
    } else {
        TopicKind::User
    }
}

/// Whether [`Broker::topics`](crate::Broker::topics) lists a topic: every kind but internal.
pub(crate) fn listed(topic: &str) -> bool {
    topic_kind(topic) != TopicKind::Internal
}

/// Whether a progress name is a group's, not a backend's own reader (those start with `%`).
pub(crate) fn listed_group(group: &str) -> bool {
    !group.starts_with('%')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_retry_topics_stay_short() {
        let topic = "t".repeat(300);
        let name = retry_topic("g", &topic);
        assert!(name.len() <= MAX_RETRY_TOPIC_LEN, "{name}");
        assert!(name.starts_with("%RETRY%g%"));
        assert_ne!(name, retry_topic("g", &"u".repeat(300)));
    }

    #[test]
    fn dead_letter_topics_name_their_group() {
        assert_eq!(dlq_group(&dlq_topic("points")), Some("points"));
        assert_eq!(dlq_group("order"), None);
    }
}

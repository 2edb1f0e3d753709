//! Names of the topics every backend keeps for a consumer group: its retry queue and its
//! dead-letter queue, named as RocketMQ names them.
//!
//! Names of system topics start with `%`, which user topics may not contain, so they never
//! collide with a user's topic.

/// Prefix of retry topics: `%RETRY%<group>%<topic>`.
pub const RETRY_PREFIX: &str = "%RETRY%";
/// Prefix of dead-letter topics: `%DLQ%<group>`.
pub const DLQ_PREFIX: &str = "%DLQ%";

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

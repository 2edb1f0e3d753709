//! What a consumer group subscribes to and how it consumes.

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use crate::error::MessageError;
use crate::message::{validate_group, validate_topic};

/// A tag expression: `*` for all messages, or `a || b || c`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TagFilter {
    /// Every message, tagged or not.
    All,
    /// Messages whose tag is one of these (sorted, without duplicates).
    Tags(Vec<String>),
}

impl TagFilter {
    /// Parses `*` (or an empty string) or `a || b`.
    pub fn parse(expression: &str) -> Result<Self, MessageError> {
        expression.parse()
    }

    /// Whether a message with this tag passes the filter.
    pub fn matches(&self, tag: Option<&str>) -> bool {
        match self {
            TagFilter::All => true,
            TagFilter::Tags(tags) => {
                tag.is_some_and(|t| tags.binary_search_by(|x| x.as_str().cmp(t)).is_ok())
            }
        }
    }
}

impl FromStr for TagFilter {
    type Err = MessageError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let trimmed = s.trim();
        if trimmed.is_empty() || trimmed == "*" {
            return Ok(TagFilter::All);
        }
        let mut tags = Vec::new();
        for part in trimmed.split("||") {
            let tag = part.trim();
            if tag.is_empty() {
                return Err(MessageError::InvalidTagExpression {
                    expression: s.to_owned(),
                    reason: "empty tag between '||'",
                });
            }
            if tag == "*" {
                return Err(MessageError::InvalidTagExpression {
                    expression: s.to_owned(),
                    reason: "'*' cannot be combined with other tags",
                });
            }
            tags.push(tag.to_owned());
        }
        tags.sort();
        tags.dedup();
        Ok(TagFilter::Tags(tags))
    }
}

impl fmt::Display for TagFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TagFilter::All => f.write_str("*"),
            TagFilter::Tags(tags) => f.write_str(&tags.join(" || ")),
        }
    }
}

/// How a group's members share messages.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum MessageModel {
    /// Each message goes to one member; queues are balanced across members (the default).
    #[default]
    Clustering,
    /// Every member receives every message, with its own progress.
    Broadcasting,
}

/// How messages of one queue are processed.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ConsumeMode {
    /// Messages of a queue may be processed in parallel (the default).
    #[default]
    Concurrently,
    /// One message at a time per queue, in offset order.
    Orderly,
}

/// Where a group that has no stored progress starts.
///
/// mq's default is [`ConsumeFrom::Last`], RocketMQ's `CONSUME_FROM_LAST_OFFSET`: a new group sees
/// the messages sent after it first subscribed, not the backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConsumeFrom {
    /// From the end of each queue (the default).
    #[default]
    Last,
    /// From the oldest message still stored.
    First,
    /// From the first message stored at or after this time.
    Timestamp(SystemTime),
}

/// A consumer group's subscription to one topic.
///
/// ```
/// use mq_core::{Subscription, ConsumeMode};
///
/// let sub = Subscription::new("order-events", "timeline")
///     .tags("created || paid")?
///     .mode(ConsumeMode::Orderly);
/// assert!(sub.validate().is_ok());
/// # Ok::<(), mq_core::MessageError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Subscription {
    /// The topic.
    pub topic: String,
    /// The consumer group.
    pub group: String,
    /// Which tags the group wants.
    pub filter: TagFilter,
    /// Clustering or broadcasting.
    pub model: MessageModel,
    /// Concurrently or orderly.
    pub mode: ConsumeMode,
}

impl Subscription {
    /// All tags of `topic` for `group`, clustering, concurrently.
    pub fn new(topic: impl Into<String>, group: impl Into<String>) -> Self {
        Subscription {
            topic: topic.into(),
            group: group.into(),
            filter: TagFilter::All,
            model: MessageModel::Clustering,
            mode: ConsumeMode::Concurrently,
        }
    }

    /// Sets the tag filter from an expression (`*` or `a || b`).
    pub fn tags(mut self, expression: &str) -> Result<Self, MessageError> {
        self.filter = expression.parse()?;
        Ok(self)
    }

    /// Sets the message model.
    pub fn model(mut self, model: MessageModel) -> Self {
        self.model = model;
        self
    }

    /// Sets the consume mode.
    pub fn mode(mut self, mode: ConsumeMode) -> Self {
        self.mode = mode;
        self
    }

    /// Checks names and rejects orderly consumption with broadcasting (as rocketmq-spring does).
    pub fn validate(&self) -> Result<(), crate::BrokerError> {
        validate_topic(&self.topic)?;
        validate_group(&self.group)?;
        if self.model == MessageModel::Broadcasting && self.mode == ConsumeMode::Orderly {
            return Err(crate::BrokerError::InvalidSubscription {
                group: self.group.clone(),
                reason: "orderly consumption cannot be combined with broadcasting".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_filter_parses_and_matches() {
        assert_eq!(TagFilter::parse("*").unwrap(), TagFilter::All);
        assert_eq!(TagFilter::parse("").unwrap(), TagFilter::All);
        let f = TagFilter::parse(" b || a ||b").unwrap();
        assert_eq!(f, TagFilter::Tags(vec!["a".into(), "b".into()]));
        assert!(f.matches(Some("a")));
        assert!(!f.matches(Some("c")));
        assert!(!f.matches(None));
        assert!(TagFilter::All.matches(None));
        assert!(TagFilter::parse("a || ").is_err());
        assert!(TagFilter::parse("a || *").is_err());
        assert_eq!(f.to_string(), "a || b");
    }

    #[test]
    fn orderly_broadcasting_is_rejected() {
        let sub = Subscription::new("t", "g")
            .model(MessageModel::Broadcasting)
            .mode(ConsumeMode::Orderly);
        assert!(sub.validate().is_err());
    }
}

//! Messages as producers build them and as consumers see them.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::error::MessageError;

/// RocketMQ's longest topic or group name.
pub const MAX_NAME_LEN: usize = 127;

/// RocketMQ's default `max-message-size`: 4 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

/// A message identifier, unique per message and kept across producer retries.
///
/// Ids are time-ordered (UUID v7) and print as 32 upper-case hex digits, as RocketMQ's do.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(u128);

impl MessageId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        MessageId(uuid::Uuid::now_v7().as_u128())
    }

    /// The id from its 128-bit value.
    pub const fn from_u128(value: u128) -> Self {
        MessageId(value)
    }

    /// The 128-bit value of the id.
    pub const fn as_u128(self) -> u128 {
        self.0
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032X}", self.0)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

impl FromStr for MessageId {
    type Err = MessageError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 {
            return Err(MessageError::InvalidField {
                what: "message id",
                reason: "must be 32 hex digits",
            });
        }
        u128::from_str_radix(s, 16)
            .map(MessageId)
            .map_err(|_| MessageError::InvalidField {
                what: "message id",
                reason: "must be 32 hex digits",
            })
    }
}

impl serde::Serialize for MessageId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MessageId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Checks a topic name against RocketMQ's rule: 1 to 127 characters of `[%|a-zA-Z0-9_-]`.
/// Names starting with `%` are the broker's own (`%RETRY%`, `%DLQ%`, ...), as in RocketMQ.
pub fn validate_topic(topic: &str) -> Result<(), MessageError> {
    let reason = check_name(topic).err().or_else(|| {
        topic
            .starts_with('%')
            .then_some("names starting with '%' are reserved for the broker")
    });
    match reason {
        Some(reason) => Err(MessageError::InvalidTopic {
            topic: topic.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Checks a consumer group name: the topic rule without `%`, which the broker uses to build
/// the names of a group's retry and dead-letter topics.
pub fn validate_group(group: &str) -> Result<(), MessageError> {
    let reason = check_name(group).err().or_else(|| {
        group
            .contains('%')
            .then_some("'%' is reserved for the broker's retry and dead-letter topics")
    });
    match reason {
        Some(reason) => Err(MessageError::InvalidGroup {
            group: group.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("must not be empty");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("must be at most 127 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'%' | b'|' | b'_' | b'-'))
    {
        return Err("may only contain letters, digits, '%', '|', '_' and '-'");
    }
    Ok(())
}

/// Checks a tag: non-empty, no surrounding blanks, no `||` (the expression separator), not `*`.
pub fn validate_tag(tag: &str) -> Result<(), MessageError> {
    let reason = if tag.is_empty() {
        Some("must not be empty")
    } else if tag.trim() != tag {
        Some("must not start or end with blanks")
    } else if tag.contains("||") {
        Some("must not contain '||'")
    } else if tag == "*" {
        Some("'*' is reserved for 'all tags'")
    } else if tag.len() > u16::MAX as usize {
        Some("is too long")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(MessageError::InvalidTag {
            tag: tag.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Where a message goes: `"topic"` or `"topic:tag"`, as in `rocketMQTemplate.syncSend("order:created", ..)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Destination {
    /// The topic.
    pub topic: String,
    /// The tag, if any.
    pub tag: Option<String>,
}

impl Destination {
    /// Parses and validates `"topic"` or `"topic:tag"`.
    pub fn parse(s: &str) -> Result<Self, MessageError> {
        s.parse()
    }
}

impl FromStr for Destination {
    type Err = MessageError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (topic, tag) = match s.split_once(':') {
            Some((topic, tag)) => (topic, Some(tag)),
            None => (s, None),
        };
        validate_topic(topic)?;
        if let Some(tag) = tag {
            validate_tag(tag)?;
        }
        Ok(Destination {
            topic: topic.to_owned(),
            tag: tag.map(str::to_owned),
        })
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.tag {
            Some(tag) => write!(f, "{}:{}", self.topic, tag),
            None => f.write_str(&self.topic),
        }
    }
}

/// A message to send: topic, optional tag, business keys, user properties and a body.
///
/// ```
/// use mq_core::Message;
///
/// let msg = Message::new("order-created", r#"{"id":42}"#)
///     .with_tag("vip")
///     .with_key("order-42")
///     .with_property("source", "web");
/// assert_eq!(msg.topic(), "order-created");
/// assert!(msg.validate(mq_core::DEFAULT_MAX_MESSAGE_SIZE).is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    id: MessageId,
    topic: String,
    tag: Option<String>,
    keys: Vec<String>,
    properties: BTreeMap<String, String>,
    body: Bytes,
    born_timestamp: u64,
}

impl Message {
    /// A message for `topic` with `body`; validated when sent (or by [`Message::validate`]).
    pub fn new(topic: impl Into<String>, body: impl Into<Bytes>) -> Self {
        Message {
            id: MessageId::new(),
            topic: topic.into(),
            tag: None,
            keys: Vec::new(),
            properties: BTreeMap::new(),
            body: body.into(),
            born_timestamp: now_millis(),
        }
    }

    /// A message for a parsed [`Destination`] (topic and optional tag).
    pub fn to_destination(destination: Destination, body: impl Into<Bytes>) -> Self {
        let mut msg = Message::new(destination.topic, body);
        msg.tag = destination.tag;
        msg
    }

    /// Sets the tag.
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }

    /// Adds a business key (used for lookup and as the default idempotency key).
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.keys.push(key.into());
        self
    }

    /// Sets a user property.
    pub fn with_property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(name.into(), value.into());
        self
    }

    /// Replaces the id (to keep one id across retries of a send).
    pub fn with_id(mut self, id: MessageId) -> Self {
        self.id = id;
        self
    }

    /// The message id.
    pub fn id(&self) -> MessageId {
        self.id
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The tag, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The business keys.
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// The user properties.
    pub fn properties(&self) -> &BTreeMap<String, String> {
        &self.properties
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// When the message was built, in milliseconds since the Unix epoch.
    pub fn born_timestamp(&self) -> u64 {
        self.born_timestamp
    }

    /// Checks topic, tag, keys, properties and body size.
    pub fn validate(&self, max_message_size: usize) -> Result<(), MessageError> {
        validate_topic(&self.topic)?;
        if let Some(tag) = &self.tag {
            validate_tag(tag)?;
        }
        if self.body.len() > max_message_size {
            return Err(MessageError::BodyTooLarge {
                size: self.body.len(),
                max: max_message_size,
            });
        }
        if self.keys.len() > u16::MAX as usize || self.properties.len() > u16::MAX as usize {
            return Err(MessageError::InvalidField {
                what: "keys or properties",
                reason: "at most 65535 of each",
            });
        }
        for key in &self.keys {
            if key.is_empty() || key.len() > u16::MAX as usize {
                return Err(MessageError::InvalidField {
                    what: "key",
                    reason: "must be 1 to 65535 bytes",
                });
            }
        }
        for (name, value) in &self.properties {
            if name.starts_with('%') {
                return Err(MessageError::InvalidField {
                    what: "property name",
                    reason: "names starting with '%' are reserved for the broker",
                });
            }
            if name.is_empty() || name.len() > u16::MAX as usize {
                return Err(MessageError::InvalidField {
                    what: "property name",
                    reason: "must be 1 to 65535 bytes",
                });
            }
            if value.len() > max_message_size {
                return Err(MessageError::InvalidField {
                    what: "property value",
                    reason: "larger than max-message-size",
                });
            }
        }
        Ok(())
    }

    /// Rebuilds a message from its parts (for backends that re-send stored messages).
    pub fn from_parts(parts: MessageParts) -> Self {
        Message {
            id: parts.id,
            topic: parts.topic,
            tag: parts.tag,
            keys: parts.keys,
            properties: parts.properties,
            body: parts.body,
            born_timestamp: parts.born_timestamp,
        }
    }

    /// Splits the message into its parts (for backends that store it).
    pub fn into_parts(self) -> MessageParts {
        MessageParts {
            id: self.id,
            topic: self.topic,
            tag: self.tag,
            keys: self.keys,
            properties: self.properties,
            body: self.body,
            born_timestamp: self.born_timestamp,
        }
    }
}

/// The parts of a [`Message`], public so that backends can store them field by field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageParts {
    /// The message id.
    pub id: MessageId,
    /// The topic.
    pub topic: String,
    /// The tag, if any.
    pub tag: Option<String>,
    /// The business keys.
    pub keys: Vec<String>,
    /// The user properties.
    pub properties: BTreeMap<String, String>,
    /// The body.
    pub body: Bytes,
    /// When the message was built, in milliseconds since the Unix epoch.
    pub born_timestamp: u64,
}

impl From<MessageView> for MessageParts {
    /// The parts of a stored message, to store it again elsewhere (a retry, a dead letter).
    fn from(view: MessageView) -> Self {
        MessageParts {
            id: view.id,
            topic: view.topic,
            tag: view.tag,
            keys: view.keys,
            properties: view.properties,
            body: view.body,
            born_timestamp: view.born_timestamp,
        }
    }
}

/// A delivered message as a consumer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageView {
    /// The message id.
    pub id: MessageId,
    /// The topic.
    pub topic: String,
    /// The tag, if any.
    pub tag: Option<String>,
    /// The business keys.
    pub keys: Vec<String>,
    /// The user properties.
    pub properties: BTreeMap<String, String>,
    /// The body.
    pub body: Bytes,
    /// The queue the message was stored in.
    pub queue_id: u32,
    /// Its offset in that queue.
    pub queue_offset: u64,
    /// When the producer built it (ms since the Unix epoch).
    pub born_timestamp: u64,
    /// When the broker stored it (ms since the Unix epoch).
    pub store_timestamp: u64,
    /// How many times it was delivered before this delivery without being acknowledged.
    pub reconsume_times: u32,
}

impl MessageView {
    /// The attempt this delivery is, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.reconsume_times.saturating_add(1)
    }

    /// The store time as a [`SystemTime`].
    pub fn store_time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.store_timestamp)
    }

    /// The first business key, the default idempotency key.
    pub fn key(&self) -> Option<&str> {
        self.keys.first().map(String::as_str)
    }
}

/// A delayed message or a retry waiting in the broker's schedule for its due time, as
/// [`Broker::scheduled_by_id`](crate::Broker::scheduled_by_id) and
/// [`Broker::scheduled_by_key`](crate::Broker::scheduled_by_key) find it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledMessage {
    /// The message as it will be stored when due: `topic` and `queue_id` are where it goes
    /// (the group's `%RETRY%<group>%<topic>` for a retry), `reconsume_times` the failed
    /// deliveries before it, `store_timestamp` when it was scheduled. It has no place on its
    /// topic yet: `queue_offset` is 0.
    pub message: MessageView,
    /// When it falls due (ms since the Unix epoch).
    pub due_ms: u64,
}

/// Milliseconds since the Unix epoch, 0 if the clock is before it.
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_rules_follow_rocketmq() {
        assert!(validate_topic("order-created_1%|x").is_ok());
        assert!(validate_topic("%SCHEDULE%").is_err());
        assert!(validate_group("a%b").is_err());
        assert!(validate_group("points").is_ok());
        assert!(validate_topic("").is_err());
        assert!(validate_topic("has space").is_err());
        assert!(validate_topic("dot.topic").is_err());
        assert!(validate_topic(&"a".repeat(127)).is_ok());
        assert!(validate_topic(&"a".repeat(128)).is_err());
    }

    #[test]
    fn destination_parses_topic_and_tag() {
        let d: Destination = "order:created".parse().unwrap();
        assert_eq!(d.topic, "order");
        assert_eq!(d.tag.as_deref(), Some("created"));
        assert_eq!(d.to_string(), "order:created");
        let d: Destination = "order".parse().unwrap();
        assert_eq!(d.tag, None);
        assert!("order:".parse::<Destination>().is_err());
        assert!("bad topic:x".parse::<Destination>().is_err());
        assert!("t:a||b".parse::<Destination>().is_err());
    }

    #[test]
    fn body_limit_is_enforced() {
        let msg = Message::new("t", vec![0u8; 11]);
        assert_eq!(
            msg.validate(10),
            Err(MessageError::BodyTooLarge { size: 11, max: 10 })
        );
        assert!(msg.validate(11).is_ok());
    }

    #[test]
    fn message_id_round_trips_as_hex() {
        let id = MessageId::new();
        let s = id.to_string();
        assert_eq!(s.len(), 32);
        assert_eq!(s.parse::<MessageId>().unwrap(), id);
        assert_ne!(MessageId::new(), id);
        assert!("xyz".parse::<MessageId>().is_err());
    }
}

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

/// The word list of a unit enum, derived from its `word` at compile time so that each word
/// is written once: `ALL` (every value), `WORDS` (their words, in that order) and `from_word`.
macro_rules! words {
    ($enum:ident, [$($value:ident),+ $(,)?]) => {
        impl $enum {
            /// Every value, in the order of `WORDS`.
            pub const ALL: [$enum; [$($enum::$value),+].len()] = [$($enum::$value),+];

            /// The word of every value, in the order of `ALL`.
            pub const WORDS: [&'static str; [$($enum::$value),+].len()] = {
                let mut out = [""; Self::ALL.len()];
                let mut i = 0;
                while i < out.len() {
                    out[i] = Self::ALL[i].word();
                    i += 1;
                }
                out
            };

            /// The value `word` names, if any (exact, lower-case match).
            pub const fn from_word(word: &str) -> Option<Self> {
                let mut i = 0;
                while i < Self::ALL.len() {
                    if same(Self::ALL[i].word(), word) {
                        return Some(Self::ALL[i]);
                    }
                    i += 1;
                }
                None
            }
        }
    };
}

/// How a group's members share messages.
///
/// Its words (`clustering`, `broadcasting`) are defined once, by [`MessageModel::word`]; parsing,
/// display and serde all go through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MessageModel {
    /// Each message goes to one member; queues are balanced across members (the default).
    #[default]
    Clustering,
    /// Every member receives every message, with its own progress.
    Broadcasting,
}

impl MessageModel {
    /// The word naming this model.
    pub const fn word(self) -> &'static str {
        match self {
            MessageModel::Clustering => "clustering",
            MessageModel::Broadcasting => "broadcasting",
        }
    }
}

words!(MessageModel, [Clustering, Broadcasting]);

/// How messages of one queue are processed.
///
/// Its words (`concurrently`, `orderly`) are defined once, by [`ConsumeMode::word`]; parsing,
/// display and serde all go through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ConsumeMode {
    /// Messages of a queue may be processed in parallel (the default).
    #[default]
    Concurrently,
    /// One message at a time per queue, in offset order.
    Orderly,
}

impl ConsumeMode {
    /// The word naming this mode.
    pub const fn word(self) -> &'static str {
        match self {
            ConsumeMode::Concurrently => "concurrently",
            ConsumeMode::Orderly => "orderly",
        }
    }
}

words!(ConsumeMode, [Concurrently, Orderly]);

/// Whether a group may consume with `model` and `mode` together: `Err` holds why not.
///
/// Orderly consumption cannot be combined with broadcasting, as in rocketmq-spring.
/// [`Subscription::validate`] applies this rule; it is a `const fn` so that callers that know
/// both at compile time can check it there too.
pub const fn check_model_and_mode(
    model: MessageModel,
    mode: ConsumeMode,
) -> Result<(), &'static str> {
    match (model, mode) {
        (MessageModel::Broadcasting, ConsumeMode::Orderly) => {
            Err("orderly consumption cannot be combined with broadcasting")
        }
        _ => Ok(()),
    }
}

/// A word that names none of the values of the enum it was parsed as.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected {}, got {word:?}", expected.join(" or "))]
pub struct UnknownWord {
    /// The word given.
    pub word: String,
    /// The words accepted.
    pub expected: &'static [&'static str],
}

impl FromStr for MessageModel {
    type Err = UnknownWord;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_word(s).ok_or_else(|| UnknownWord {
            word: s.to_owned(),
            expected: &Self::WORDS,
        })
    }
}

impl FromStr for ConsumeMode {
    type Err = UnknownWord;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_word(s).ok_or_else(|| UnknownWord {
            word: s.to_owned(),
            expected: &Self::WORDS,
        })
    }
}

impl fmt::Display for MessageModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

impl fmt::Display for ConsumeMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

// Serde goes through the same words, so that no second list (a `rename_all`) can drift.
impl serde::Serialize for MessageModel {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.word())
    }
}

impl<'de> serde::Deserialize<'de> for MessageModel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let word = String::deserialize(d)?;
        word.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for ConsumeMode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.word())
    }
}

impl<'de> serde::Deserialize<'de> for ConsumeMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let word = String::deserialize(d)?;
        word.parse().map_err(serde::de::Error::custom)
    }
}

/// `a == b`, which `str` does not offer in a `const fn`.
const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
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

    /// Checks names and the combination of model and mode ([`check_model_and_mode`]).
    pub fn validate(&self) -> Result<(), crate::BrokerError> {
        validate_topic(&self.topic)?;
        validate_group(&self.group)?;
        check_model_and_mode(self.model, self.mode).map_err(|reason| {
            crate::BrokerError::InvalidSubscription {
                group: self.group.clone(),
                reason: reason.into(),
            }
        })
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

    #[test]
    fn words_round_trip() {
        for m in MessageModel::ALL {
            assert_eq!(MessageModel::from_word(m.word()), Some(m));
            assert_eq!(m.to_string().parse::<MessageModel>(), Ok(m));
        }
        for m in ConsumeMode::ALL {
            assert_eq!(ConsumeMode::from_word(m.word()), Some(m));
            assert_eq!(m.to_string().parse::<ConsumeMode>(), Ok(m));
        }
        assert_eq!(MessageModel::WORDS, ["clustering", "broadcasting"]);
        assert_eq!(ConsumeMode::WORDS, ["concurrently", "orderly"]);
    }

    #[test]
    fn unknown_words_are_rejected_with_the_accepted_ones() {
        assert_eq!(MessageModel::from_word("Clustering"), None);
        assert_eq!(ConsumeMode::from_word(""), None);
        let e = "sideways".parse::<MessageModel>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "expected clustering or broadcasting, got \"sideways\""
        );
        let e = "sometimes".parse::<ConsumeMode>().unwrap_err();
        assert_eq!(e.expected, &["concurrently", "orderly"]);
    }

    #[test]
    fn serde_uses_the_words() {
        let json = serde_json::to_string(&MessageModel::Broadcasting).unwrap();
        assert_eq!(json, "\"broadcasting\"");
        let mode: ConsumeMode = serde_json::from_str("\"orderly\"").unwrap();
        assert_eq!(mode, ConsumeMode::Orderly);
        assert!(serde_json::from_str::<ConsumeMode>("\"Orderly\"").is_err());
    }

    #[test]
    fn only_orderly_broadcasting_is_forbidden() {
        for model in MessageModel::ALL {
            for mode in ConsumeMode::ALL {
                let forbidden = model == MessageModel::Broadcasting && mode == ConsumeMode::Orderly;
                assert_eq!(check_model_and_mode(model, mode).is_err(), forbidden);
            }
        }
    }
}

//! `GET /mq/api/topics` and `GET /mq/api/topics/{topic}`: the broker's topics (user topics
//! and the retry and dead-letter topics of groups) and their queues.

use axum::extract::State;
use axum::http::Uri;
use axum::Json;
use mq_core::stats::{QueueStats, TopicStats};
use mq_core::system_topics::{topic_kind, TopicKind};
use mq_core::BrokerError;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{AdminError, AdminErrorBody};
use super::AdminState;

/// What a topic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TopicKindName {
    /// The application's.
    User,
    /// A group's retry topic, `%RETRY%<group>%<topic>`.
    Retry,
    /// A group's dead-letter topic, `%DLQ%<group>`.
    DeadLetter,
}

/// One topic, in the list.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopicRow {
    /// The topic.
    pub topic: String,
    /// What it is.
    pub kind: TopicKindName,
    /// Its queue count.
    pub queues: usize,
    /// Messages stored over all its queues.
    pub messages: u64,
}

/// A topic and its queues: `mq_core::stats::TopicStats` as serde writes it.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopicStatsView {
    /// The topic.
    pub topic: String,
    /// Its queues, by id.
    pub queues: Vec<QueueStatsView>,
}

/// One queue: `mq_core::stats::QueueStats`.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueStatsView {
    /// The queue id.
    pub queue_id: u32,
    /// The first offset still stored.
    pub min_offset: u64,
    /// The offset the next message will get.
    pub max_offset: u64,
    /// Messages stored: `max_offset - min_offset`.
    pub messages: u64,
    /// When its last message was stored (ms since the Unix epoch); `null` when it holds none.
    pub last_store_ms: Option<u64>,
}

impl From<TopicStats> for TopicStatsView {
    fn from(t: TopicStats) -> Self {
        TopicStatsView {
            topic: t.topic,
            queues: t.queues.into_iter().map(QueueStatsView::from).collect(),
        }
    }
}

impl From<QueueStats> for QueueStatsView {
    fn from(q: QueueStats) -> Self {
        QueueStatsView {
            queue_id: q.queue_id,
            min_offset: q.min_offset,
            max_offset: q.max_offset,
            messages: q.messages,
            last_store_ms: q.last_store_ms,
        }
    }
}

/// The pattern of a topic name in a path: user topics and mq's own retry and dead-letter
/// topics (up to 240 characters, see `mq_core::system_topics::retry_topic`).
const TOPIC_PATTERN: &str = r"^[A-Za-z0-9%|_-]{1,255}$";

/// Every topic, sorted, with its kind, queue count and messages stored.
#[utoipa::path(get, path = "/mq/api/topics", tag = "mq", security(("bearer" = [])),
    responses(
        (status = 200, description = "the topics", body = Vec<TopicRow>),
        (status = 401, description = "no or a wrong bearer token", body = AdminErrorBody),
        (status = 500, description = "the broker failed", body = AdminErrorBody),
        (status = 503, description = "the broker is shut down or unreachable", body = AdminErrorBody),
    ))]
pub async fn list(State(s): State<AdminState>) -> Result<Json<Vec<TopicRow>>, AdminError> {
    let mut out = Vec::new();
    for topic in s.broker.topics().await? {
        let kind = match topic_kind(&topic) {
            TopicKind::User => TopicKindName::User,
            TopicKind::Retry => TopicKindName::Retry,
            TopicKind::DeadLetter => TopicKindName::DeadLetter,
            // Not listed by the broker; skipped should one appear.
            _ => continue,
        };
        let stats = match s.broker.topic_stats(&topic).await {
            Ok(stats) => stats,
            // Gone since the list was read (retention): not a topic any more.
            Err(BrokerError::TopicNotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        out.push(TopicRow {
            kind,
            queues: stats.queues.len(),
            messages: stats.messages(),
            topic,
        });
    }
    Ok(Json(out))
}

/// One topic's queues with their offsets, counts and last store time.
#[utoipa::path(get, path = "/mq/api/topics/{topic}", tag = "mq", security(("bearer" = [])),
    params(("topic" = String, Path, description = "the topic", pattern = r"^[A-Za-z0-9%|_-]{1,255}$")),
    responses(
        (status = 200, description = "the topic's queues", body = TopicStatsView),
        (status = 400, description = "a malformed topic name", body = AdminErrorBody),
        (status = 401, description = "no or a wrong bearer token", body = AdminErrorBody),
        (status = 404, description = "no such topic", body = AdminErrorBody),
        (status = 500, description = "the broker failed", body = AdminErrorBody),
        (status = 503, description = "the broker is shut down or unreachable", body = AdminErrorBody),
    ))]
pub async fn get(
    State(s): State<AdminState>,
    uri: Uri,
) -> Result<Json<TopicStatsView>, AdminError> {
    // The route's last segment, as sent: `Path` would fail on `%` escapes that are no UTF-8.
    let topic = decode_name(uri.path().rsplit('/').next().unwrap_or_default());
    check_topic(&topic)?;
    Ok(Json(s.broker.topic_stats(&topic).await?.into()))
}

/// Decodes a topic name from a path segment. mq's own topic names hold `%` (`%RETRY%g%t`),
/// which clients do not always escape: an escape that decodes to a character of a name
/// (`%25`, `%7C`, a letter...) is decoded, and any other `%` is the character itself, since no
/// name holds what such an escape would give (`%fee-ledger` is `%`, then `fee-ledger`).
fn decode_name(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            .filter(|b| name_byte(*b));
        match escaped {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'%' | b'|' | b'_' | b'-')
}

/// A topic name [`TOPIC_PATTERN`] accepts.
fn check_topic(topic: &str) -> Result<(), AdminError> {
    let fits = (1..=255).contains(&topic.len()) && topic.bytes().all(name_byte);
    if fits {
        Ok(())
    } else {
        Err(AdminError::bad_request(format!(
            "{topic:?} is not a topic name (1 to 255 of A-Z a-z 0-9 % | _ -; pattern {TOPIC_PATTERN})"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::decode_name;

    #[test]
    fn names_decode_from_escaped_and_unescaped_percent_signs() {
        assert_eq!(decode_name("order"), "order");
        assert_eq!(decode_name("%25RETRY%25g%25t"), "%RETRY%g%t");
        assert_eq!(
            decode_name("%25RETRY%fee-ledger%fee-paid"),
            "%RETRY%fee-ledger%fee-paid"
        );
        assert_eq!(decode_name("%RETRY%g%t"), "%RETRY%g%t");
        assert_eq!(decode_name("a%7Cb%41"), "a|bA");
        assert_eq!(decode_name("a%2Fb%"), "a%2Fb%");
    }
}

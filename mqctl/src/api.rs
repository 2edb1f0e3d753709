//! The documents of the admin API (`/mq/api/*`) that mqctl reads and sends, as the API
//! specifies them. Only what mqctl shows is read; other fields are ignored, so that the API can
//! grow without breaking older mqctl builds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `GET /mq/api/health`: the application's status and each component's.
#[derive(Debug, Clone, Deserialize)]
pub struct Health {
    /// `UP` or `DOWN`.
    pub status: String,
    /// By component name (`broker`, `idempotency`).
    #[serde(default)]
    pub components: BTreeMap<String, Component>,
}

/// One component of [`Health`].
#[derive(Debug, Clone, Deserialize)]
pub struct Component {
    /// `UP` or `DOWN`.
    pub status: String,
    /// The broker's backend (`embedded`, `redis`).
    pub backend: Option<String>,
    /// The idempotency store (`memory`, `redis`, ...).
    pub store: Option<String>,
    /// Why it is down.
    pub error: Option<String>,
}

/// A row of `GET /mq/api/topics`.
#[derive(Debug, Clone, Deserialize)]
pub struct TopicRow {
    /// The topic.
    pub topic: String,
    /// `user`, `retry` or `dead_letter`.
    pub kind: String,
    /// How many queues it has.
    pub queues: u64,
    /// Messages stored over all queues.
    pub messages: u64,
}

/// `GET /mq/api/topics/{topic}`.
#[derive(Debug, Clone, Deserialize)]
pub struct TopicStats {
    /// The topic.
    pub topic: String,
    /// Its queues, by id.
    pub queues: Vec<QueueStats>,
}

/// One queue of [`TopicStats`].
#[derive(Debug, Clone, Deserialize)]
pub struct QueueStats {
    /// The queue id.
    pub queue_id: u32,
    /// The first offset still stored.
    pub min_offset: u64,
    /// The offset the next message will get.
    pub max_offset: u64,
    /// Messages stored.
    pub messages: u64,
    /// When the last message was stored (ms since the Unix epoch).
    pub last_store_ms: Option<u64>,
}

/// A row of `GET /mq/api/groups`.
#[derive(Debug, Clone, Deserialize)]
pub struct GroupRow {
    /// The group.
    pub group: String,
    /// `clustering` or `broadcasting`, when known.
    pub model: Option<String>,
    /// The live members' instance names.
    #[serde(default)]
    pub members: Vec<String>,
    /// Messages stored and not yet settled, over all its topics.
    pub lag: u64,
}

/// `GET /mq/api/groups/{group}`.
#[derive(Debug, Clone, Deserialize)]
pub struct GroupStats {
    /// The group.
    pub group: String,
    /// `clustering` or `broadcasting`, when known.
    pub model: Option<String>,
    /// The live members' instance names.
    #[serde(default)]
    pub members: Vec<String>,
    /// Progress per (topic, queue, member).
    pub queues: Vec<GroupQueue>,
}

/// One row of [`GroupStats`].
#[derive(Debug, Clone, Deserialize)]
pub struct GroupQueue {
    /// The topic (or the group's retry topic of it).
    pub topic: String,
    /// The queue id.
    pub queue_id: u32,
    /// Broadcasting: whose progress this is.
    pub instance: Option<String>,
    /// The committed offset.
    pub committed: u64,
    /// The queue's max offset.
    pub max_offset: u64,
    /// Messages of the queue not yet settled by the group.
    pub lag: u64,
    /// Clustering: the member the queue is assigned to.
    pub owner: Option<String>,
}

/// A row of `GET /mq/api/listeners`: one listener on one topic.
#[derive(Debug, Clone, Deserialize)]
pub struct ListenerRow {
    /// The listener (handler function) name.
    pub name: String,
    /// The topic.
    pub topic: String,
    /// The consumer group.
    pub group: String,
    /// `clustering` or `broadcasting`.
    pub model: String,
    /// `concurrently` or `orderly`.
    pub mode: String,
    /// Deliveries handled at once.
    pub concurrency: u64,
    /// Messages per handler call, for batch listeners.
    pub batch: Option<u64>,
    /// Deliveries being handled now.
    pub in_flight: u64,
    /// The queue ids this member reads.
    #[serde(default)]
    pub assignment: Vec<u32>,
    /// `running` or `paused`.
    pub state: String,
}

/// Where `POST /mq/api/groups/{group}/offset` moves a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResetTo {
    /// The first message still stored.
    First,
    /// The max offset: the backlog is skipped.
    Last,
    /// The first message stored at or after a time.
    #[serde(untagged)]
    Timestamp {
        /// Milliseconds since the Unix epoch.
        timestamp_ms: u64,
    },
}

/// The body of `POST /mq/api/groups/{group}/offset`.
#[derive(Debug, Clone, Serialize)]
pub struct OffsetReset {
    /// The topic whose queues move.
    pub topic: String,
    /// Where to.
    pub to: ResetTo,
}

/// A row of the answer to an offset reset.
#[derive(Debug, Clone, Deserialize)]
pub struct QueueOffset {
    /// The queue id.
    pub queue_id: u32,
    /// The group's new committed offset on it.
    pub offset: u64,
}

/// A row of `GET /mq/api/dead-letters`.
#[derive(Debug, Clone, Deserialize)]
pub struct DeadLetterCount {
    /// The group.
    pub group: String,
    /// How many dead letters it has.
    pub count: u64,
}

/// `GET /mq/api/dead-letters/{group}`: one page.
#[derive(Debug, Clone, Deserialize)]
pub struct DeadLetterPage {
    /// The dead letters, oldest first.
    pub items: Vec<DeadLetter>,
    /// Where the next page starts (`--from`), if there is one.
    pub next: Option<u64>,
}

/// A message a group gave up on.
#[derive(Debug, Clone, Deserialize)]
pub struct DeadLetter {
    /// The group.
    pub group: String,
    /// Its position in the group's dead-letter queue.
    pub seq: u64,
    /// The original topic.
    pub topic: String,
    /// The message id.
    pub message_id: String,
    /// The message's keys.
    #[serde(default)]
    pub keys: Vec<String>,
    /// The message's tag.
    pub tag: Option<String>,
    /// How many deliveries failed.
    pub attempts: u64,
    /// When the first delivery failed (ms since the Unix epoch).
    pub first_failure_ms: u64,
    /// When the last delivery failed (ms since the Unix epoch).
    pub last_failure_ms: u64,
    /// What the last failure said.
    pub last_error: String,
    /// The body, as UTF-8 (lossy).
    pub body: String,
    /// The message's properties.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// The answer to a resend.
#[derive(Debug, Clone, Deserialize)]
pub struct Resent {
    /// How many dead letters were delivered again.
    pub resent: u64,
}

/// The answer to a delete.
#[derive(Debug, Clone, Deserialize)]
pub struct Deleted {
    /// How many dead letters were removed.
    pub deleted: u64,
}

/// A stored copy of a message (`GET /mq/api/messages/{id}`, `GET /mq/api/messages?key=`).
#[derive(Debug, Clone, Deserialize)]
pub struct StoredMessage {
    /// The message id.
    pub message_id: String,
    /// The topic this copy is stored in (a retry or dead-letter topic for those copies).
    pub topic: String,
    /// The tag.
    pub tag: Option<String>,
    /// The keys.
    #[serde(default)]
    pub keys: Vec<String>,
    /// The properties.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// The queue id.
    pub queue_id: u32,
    /// Its offset in the queue.
    pub queue_offset: u64,
    /// When the producer made it (ms since the Unix epoch).
    pub born_timestamp: u64,
    /// When the broker stored it, or scheduled it (ms since the Unix epoch).
    pub store_timestamp: u64,
    /// For a copy waiting in the schedule: when it falls due (ms since the Unix epoch).
    #[serde(default)]
    pub due_ms: Option<u64>,
    /// How many times it was delivered again.
    pub reconsume_times: u64,
    /// The body, as UTF-8 (lossy).
    pub body: String,
}

/// The error document of every non-2xx answer: `{"error":{"code","message"}}`.
#[derive(Debug, Clone, Deserialize)]
pub struct ErrorDocument {
    /// The error.
    pub error: ErrorBody,
}

/// The inside of [`ErrorDocument`].
#[derive(Debug, Clone, Deserialize)]
pub struct ErrorBody {
    /// `unauthorized`, `not_found`, `bad_request`, `invalid`, `unavailable` or `internal`.
    pub code: String,
    /// What went wrong, for a person.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_reset_bodies_are_as_the_api_specifies() {
        let body = |to| {
            serde_json::to_value(OffsetReset {
                topic: "t".into(),
                to,
            })
            .unwrap()
        };
        assert_eq!(
            body(ResetTo::First),
            serde_json::json!({"topic": "t", "to": "first"})
        );
        assert_eq!(
            body(ResetTo::Last),
            serde_json::json!({"topic": "t", "to": "last"})
        );
        assert_eq!(
            body(ResetTo::Timestamp { timestamp_ms: 5 }),
            serde_json::json!({"topic": "t", "to": {"timestamp_ms": 5}})
        );
    }
}

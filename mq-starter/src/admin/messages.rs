//! The message routes: every copy of a message by its id, messages by business key
//! (RocketMQ's `queryMessage`), each stored or waiting in the schedule, and a message's trace
//! (`mq_core::trace`).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use mq_core::message::MessageId;
use mq_core::{MessageView, ScheduledMessage};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{AdminError, AdminErrorBody, PathParam, QueryParam};
use super::AdminState;

/// Most messages one key search answers.
const MAX_LIMIT: usize = 500;
/// Messages a key search answers when the query does not say.
const DEFAULT_LIMIT: usize = 50;

/// One copy of a message: the original on its topic, a retry copy or a dead letter; or one
/// waiting in the schedule (a delayed message not due yet, a retry waiting for its back-off),
/// which has `due_ms`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StoredMessage {
    /// Its id (32 hex digits); retry and dead-letter copies keep the original's.
    pub message_id: String,
    /// Where this copy is stored: the topic it was sent to, or `%RETRY%<group>%<topic>`, or
    /// `%DLQ%<group>`; for a waiting copy, the topic it will enter.
    pub topic: String,
    /// Its tag.
    pub tag: Option<String>,
    /// Its business keys.
    pub keys: Vec<String>,
    /// Its properties.
    pub properties: BTreeMap<String, String>,
    /// The queue this copy is stored on (will enter, for a waiting copy).
    pub queue_id: u32,
    /// Its offset in that queue (0 for a waiting copy: it has none yet).
    pub queue_offset: u64,
    /// When the producer made it (ms since the Unix epoch).
    pub born_timestamp: u64,
    /// When this copy was stored, or scheduled for a waiting copy (ms since the Unix epoch).
    pub store_timestamp: u64,
    /// Only for a copy waiting in the schedule: when it falls due and is stored on `topic`
    /// (ms since the Unix epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub due_ms: Option<u64>,
    /// Failed deliveries before this copy was made (0 for the original).
    pub reconsume_times: u32,
    /// The body as UTF-8 (bytes that are not UTF-8 become U+FFFD).
    pub body: String,
}

impl From<MessageView> for StoredMessage {
    fn from(m: MessageView) -> Self {
        StoredMessage {
            message_id: m.id.to_string(),
            body: String::from_utf8_lossy(&m.body).into_owned(),
            topic: m.topic,
            tag: m.tag,
            keys: m.keys,
            properties: m.properties,
            queue_id: m.queue_id,
            queue_offset: m.queue_offset,
            born_timestamp: m.born_timestamp,
            store_timestamp: m.store_timestamp,
            reconsume_times: m.reconsume_times,
            due_ms: None,
        }
    }
}

impl From<ScheduledMessage> for StoredMessage {
    fn from(s: ScheduledMessage) -> Self {
        StoredMessage {
            due_ms: Some(s.due_ms),
            ..StoredMessage::from(s.message)
        }
    }
}

/// A key search.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct KeyQuery {
    /// The business key, compared exactly.
    #[param(min_length = 1)]
    pub key: String,
    /// Only this topic (every topic but the broker's internal ones when not given); a waiting
    /// message is in the topic it will enter.
    pub topic: Option<String>,
    /// Most messages to answer, 1 to 500 (50 when not given).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
}

fn parse_id(id: &str) -> Result<MessageId, AdminError> {
    id.parse()
        .map_err(|e: mq_core::MessageError| AdminError::bad_request(e.to_string()))
}

/// Every copy of a message: the stored ones oldest first, then those waiting in the schedule,
/// soonest due first.
#[utoipa::path(get, path = "/mq/api/messages/{id}", tag = "mq", security(("bearer" = [])),
    params(("id" = String, Path, description = "the message id, 32 hex digits", pattern = r"^[0-9A-Fa-f]{32}$")),
    responses(
        (status = 200, description = "the message on its topic, its retry copies and its dead letter, oldest first; then its copies waiting in the schedule (with due_ms), soonest due first", body = Vec<StoredMessage>),
        (status = 400, description = "not a message id", body = AdminErrorBody),
        (status = 401, description = "no or a wrong bearer token", body = AdminErrorBody),
        (status = 404, description = "no copy, stored or waiting (never sent, not yet committed, or removed by retention)", body = AdminErrorBody),
        (status = 500, description = "the broker failed", body = AdminErrorBody),
        (status = 503, description = "the broker is shut down or unreachable", body = AdminErrorBody),
    ))]
pub async fn by_id(
    State(s): State<AdminState>,
    PathParam(id): PathParam<String>,
) -> Result<Json<Vec<StoredMessage>>, AdminError> {
    let id = parse_id(&id)?;
    let copies = s.broker.messages_by_id(id).await?;
    let waiting = s.broker.scheduled_by_id(id).await?;
    if copies.is_empty() && waiting.is_empty() {
        return Err(AdminError::not_found(format!("no message {id} is stored")));
    }
    Ok(Json(
        copies
            .into_iter()
            .map(StoredMessage::from)
            .chain(waiting.into_iter().map(StoredMessage::from))
            .collect(),
    ))
}

/// Messages with a business key: the stored ones oldest first, then those waiting in the
/// schedule, soonest due first; `limit` counts both.
#[utoipa::path(get, path = "/mq/api/messages", tag = "mq", security(("bearer" = [])),
    params(KeyQuery),
    responses(
        (status = 200, description = "the messages with that key, stored then waiting (with due_ms); an empty list when none", body = Vec<StoredMessage>),
        (status = 400, description = "no key, or a malformed limit", body = AdminErrorBody),
        (status = 401, description = "no or a wrong bearer token", body = AdminErrorBody),
        (status = 500, description = "the broker failed", body = AdminErrorBody),
        (status = 503, description = "the broker is shut down or unreachable", body = AdminErrorBody),
    ))]
pub async fn by_key(
    State(s): State<AdminState>,
    QueryParam(q): QueryParam<KeyQuery>,
) -> Result<Json<Vec<StoredMessage>>, AdminError> {
    if q.key.is_empty() {
        return Err(AdminError::bad_request("key must not be empty"));
    }
    let limit = match q.limit {
        None => DEFAULT_LIMIT,
        Some(n @ 1..=MAX_LIMIT) => n,
        Some(n) => {
            return Err(AdminError::bad_request(format!(
                "limit must be 1 to {MAX_LIMIT}, not {n}"
            )))
        }
    };
    let stored = s
        .broker
        .messages_by_key(&q.key, q.topic.as_deref(), limit)
        .await?;
    let waiting = match limit.saturating_sub(stored.len()) {
        0 => Vec::new(),
        left => {
            s.broker
                .scheduled_by_key(&q.key, q.topic.as_deref(), left)
                .await?
        }
    };
    Ok(Json(
        stored
            .into_iter()
            .map(StoredMessage::from)
            .chain(waiting.into_iter().map(StoredMessage::from))
            .collect(),
    ))
}

/// What happened to a message: when it was stored and where, each delivery (member, attempt,
/// outcome, error, duration), its retry copies, its dead letter, resends.
#[utoipa::path(get, path = "/mq/api/messages/{id}/trace", tag = "mq", security(("bearer" = [])),
    params(("id" = String, Path, description = "the message id, 32 hex digits", pattern = r"^[0-9A-Fa-f]{32}$")),
    responses(
        (status = 200, description = "the trace: {\"message_id\", \"events\": [...]}, oldest first (the shape of mq_core::trace::Trace)", body = Object),
        (status = 400, description = "not a message id", body = AdminErrorBody),
        (status = 401, description = "no or a wrong bearer token", body = AdminErrorBody),
        (status = 404, description = "nothing is known of the message", body = AdminErrorBody),
        (status = 500, description = "the broker failed", body = AdminErrorBody),
        (status = 503, description = "the broker is shut down or unreachable", body = AdminErrorBody),
    ))]
pub async fn trace(
    State(s): State<AdminState>,
    PathParam(id): PathParam<String>,
) -> Result<Json<mq_core::trace::Trace>, AdminError> {
    let id = parse_id(&id)?;
    let trace = mq_core::trace::trace(s.broker.as_ref(), id).await?;
    if trace.is_empty() {
        return Err(AdminError::not_found(format!(
            "nothing is known of message {id}"
        )));
    }
    Ok(Json(trace))
}

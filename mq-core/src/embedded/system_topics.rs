//! The embedded broker's own topics and the reserved properties it keeps on stored copies.
//!
//! Delays, retries, dead letters and transactions are all messages in the one commit log, as in
//! RocketMQ, so they are durable and crash-safe through the same recovery. Reserved property
//! names start with `%`, which users may not use; they are removed before a handler sees a
//! message. The retry and dead-letter topics of groups are named by
//! [`crate::system_topics`], as on every backend.

use crate::message::{MessageView, ScheduledMessage};

/// Delayed messages (and retries) waiting for their due time. One queue; each index entry
/// holds the due time in place of the store time.
pub(crate) const SCHEDULE_TOPIC: &str = "%SCHEDULE%";
/// Half messages of transactions. One queue.
pub(crate) const HALF_TOPIC: &str = "%HALF%";
/// Outcomes and check counts of half messages. One queue.
pub(crate) const HALF_OP_TOPIC: &str = "%HALF_OP%";
/// The progress name of the delay scheduler in the offset table.
pub(crate) const SCHEDULER_GROUP: &str = "%SCHEDULER%";
/// The progress name of the transaction checker in the offset table.
pub(crate) const TRANSACTION_GROUP: &str = "%TRANSACTION%";
/// Where a delayed message goes when due.
pub(crate) const REAL_TOPIC: &str = "%REAL_TOPIC";
/// The queue it goes to.
pub(crate) const REAL_QID: &str = "%REAL_QID";
/// Its due time (ms since the Unix epoch).
pub(crate) const DUE: &str = "%DUE";
/// The topic a retried message was first sent to.
pub(crate) const ORIGIN_TOPIC: &str = "%ORIGIN_TOPIC";
/// The producer of a half message, whose checker answers check-back.
pub(crate) const PRODUCER: &str = "%PRODUCER";

/// The message as a handler sees it: reserved properties removed, and a retried message shown
/// under the topic it was sent to.
pub(crate) fn user_view(mut view: MessageView) -> MessageView {
    if view.properties.keys().any(|k| k.starts_with('%')) {
        if let Some(origin) = view.properties.remove(ORIGIN_TOPIC) {
            view.topic = origin;
        }
        view.properties.retain(|k, _| !k.starts_with('%'));
    }
    view
}

/// A stored copy as a lookup shows it: under the topic it is stored in (a retry or
/// dead-letter topic for those copies), reserved properties removed.
pub(crate) fn stored_view(mut view: MessageView) -> MessageView {
    let topic = stored_topic(&view).to_owned();
    view.topic = topic;
    view.properties.retain(|k, _| !k.starts_with('%'));
    view
}

/// A schedule record as a scheduled lookup shows it: under the topic and queue it will enter,
/// with its due time, reserved properties removed. `None` for a record that names no
/// destination or due time (never written so; reported by the scheduler when it fires).
pub(crate) fn scheduled_view(mut view: MessageView) -> Option<ScheduledMessage> {
    let topic = view.properties.get(REAL_TOPIC)?.clone();
    let due_ms = view.properties.get(DUE)?.parse().ok()?;
    view.queue_id = view
        .properties
        .get(REAL_QID)
        .and_then(|q| q.parse().ok())
        .unwrap_or(0);
    view.topic = topic;
    view.queue_offset = 0;
    view.properties.retain(|k, _| !k.starts_with('%'));
    Some(ScheduledMessage {
        message: view,
        due_ms,
    })
}

/// The topic whose index a stored record belongs to. A record waiting in the schedule names
/// the schedule; one written before that rule (its real topic in the record, the schedule's
/// reserved properties beside it) is still a schedule record, never one of the real topic.
pub(crate) fn stored_topic(view: &MessageView) -> &str {
    if !view.topic.starts_with('%')
        && view.properties.contains_key(DUE)
        && view.properties.contains_key(REAL_TOPIC)
    {
        return SCHEDULE_TOPIC;
    }
    &view.topic
}

/// The index time of a stored record: the due time for a delayed one.
pub(crate) fn index_time(view: &MessageView, store_timestamp: u64) -> u64 {
    view.properties
        .get(DUE)
        .and_then(|v| v.parse().ok())
        .unwrap_or(store_timestamp)
}

//! Message trace: what happened to one message, from its send to its last delivery.
//!
//! As in RocketMQ's message trace, the broker does not watch deliveries itself: clients (the
//! listeners of `mq-starter`) collect a [`TraceEvent`] per settled delivery and per resent dead
//! letter, and store them in batches through [`Broker::record_trace`] as ordinary records of
//! the system topic [`TRACE_TOPIC`] (`%TRACE%`, RocketMQ's `RMQ_SYS_TRACE_TOPIC`), keyed by the
//! ids of the messages they describe. [`trace`] answers "what happened to this message?" on
//! every backend the same way: the stored copies of the message (`Broker::messages_by_id`: the
//! original gives when it was sent, its queue and offset; then its retry copies and its
//! dead-letter copy) and the events of the trace records found by its id as key
//! (`Broker::messages_by_key` restricted to `%TRACE%`), in time order.
//!
//! A trace record's body is compact JSON with a format version (`record.rs`). A record that
//! does not decode, or of another version, is reported with a warning and skipped, never read
//! as data; so is a single event that does not decode.
//!
//! Trace is diagnostic: trace records are kept as long as the backend keeps records of a topic
//! no group consumes (embedded: until retention deletes their commit-log segment; Redis: see
//! the backend's `record_trace`), and a crash may lose the last events a process had not yet
//! stored, never a message.

mod record;

use serde::{Deserialize, Serialize};

use crate::broker::Broker;
use crate::error::Result;
use crate::message::{MessageId, MessageView, ScheduledMessage};
use crate::system_topics::{topic_kind, TopicKind, TRACE_TOPIC};

pub(crate) use record::trace_record;
pub use record::{decode_record, encode_record, TraceDecodeError};

/// The version of the trace record format this build writes and reads.
pub const TRACE_FORMAT_VERSION: u32 = 1;

/// Longest error text an event keeps, in bytes: a handler's error can be long (a whole
/// response body), and a trace is for finding out what happened, not for storing payloads.
pub const MAX_ERROR_LEN: usize = 512;

/// Most trace records [`trace`] reads for one message (each holds one or more of its events).
pub const MAX_TRACE_RECORDS: usize = 1000;

/// One thing that happened to a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceEvent {
    /// The message it happened to.
    pub message_id: MessageId,
    /// When (ms since the Unix epoch): for a delivery, when it started.
    pub at_ms: u64,
    /// What happened.
    #[serde(flatten)]
    pub kind: TraceKind,
}

/// What happened to a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum TraceKind {
    /// A copy of the message was stored: the original when sent, a retry copy when its retry
    /// fell due (or a dead letter was resent), the dead-letter copy. [`trace`] builds these
    /// from the stored copies; they are never recorded (`record_trace` leaves them out).
    Stored {
        /// The topic of the copy (`%RETRY%…` and `%DLQ%…` for the group's copies).
        topic: String,
        /// What kind of copy it is.
        copy: CopyKind,
        /// Its queue.
        queue_id: u32,
        /// Its offset in that queue.
        queue_offset: u64,
        /// Deliveries that had failed before this copy was stored.
        reconsume_times: u32,
        /// When the producer built the message (ms since the Unix epoch).
        born_ms: u64,
    },
    /// A delivery to a listener was settled.
    Delivered {
        /// The consumer group.
        group: String,
        /// The topic the message was sent to.
        topic: String,
        /// The queue of the delivered copy (a retry copy's queue for a retry).
        queue_id: u32,
        /// The offset of the delivered copy in that queue.
        queue_offset: u64,
        /// The member that received it (`Consumer::instance`).
        instance: String,
        /// Which delivery this was, starting at 1.
        attempt: u32,
        /// How it was settled.
        outcome: DeliveryOutcome,
        /// Why it failed, when it did (at most [`MAX_ERROR_LEN`] bytes).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// How long the handler ran, in milliseconds (0 if it did not run).
        duration_ms: u64,
    },
    /// A dead letter of `group` was sent again. It keeps its message id on every backend, so
    /// its next deliveries appear in the same trace.
    Resent {
        /// The group whose dead-letter queue held it.
        group: String,
        /// Its position in that dead-letter queue.
        seq: u64,
    },
    /// A copy waits in the broker's schedule: the message sent delayed and not due yet, or a
    /// retry waiting for its back-off. [`trace`] builds these from
    /// [`Broker::scheduled_by_id`] (`at_ms` is when it was scheduled); never recorded. Once
    /// due, the copy is stored and shows as `Stored` instead.
    Scheduled {
        /// The topic it will enter (`%RETRY%…` for a retry).
        topic: String,
        /// The queue it will enter.
        queue_id: u32,
        /// Deliveries that had failed before it was scheduled.
        reconsume_times: u32,
        /// When it falls due (ms since the Unix epoch).
        due_ms: u64,
        /// When the producer built the message (ms since the Unix epoch).
        born_ms: u64,
    },
}

impl TraceKind {
    /// Whether events of this kind are recorded in trace records; the others ([`Stored`],
    /// [`Scheduled`]) are read from the broker's own state.
    ///
    /// [`Stored`]: TraceKind::Stored
    /// [`Scheduled`]: TraceKind::Scheduled
    pub fn is_recorded(&self) -> bool {
        matches!(self, TraceKind::Delivered { .. } | TraceKind::Resent { .. })
    }
}

/// What a stored copy of a message is, by the topic it is stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyKind {
    /// The message as sent, on its own topic.
    Original,
    /// A copy on a group's retry topic: a retry due, or a resent dead letter.
    Retry,
    /// The copy in a group's dead-letter queue.
    DeadLetter,
    /// A copy a backend keeps for itself (a retry or delayed message waiting for its time).
    Internal,
}

impl CopyKind {
    /// The kind of a copy stored in `topic`.
    pub fn of(topic: &str) -> Self {
        match topic_kind(topic) {
            TopicKind::User => CopyKind::Original,
            TopicKind::Retry => CopyKind::Retry,
            TopicKind::DeadLetter => CopyKind::DeadLetter,
            TopicKind::Internal => CopyKind::Internal,
        }
    }
}

/// How a delivery was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum DeliveryOutcome {
    /// The handler succeeded and the delivery was acknowledged.
    Acked,
    /// An idempotent listener had processed the key already: acknowledged without running.
    Duplicate,
    /// The delivery failed and the message will come again.
    Retried {
        /// 1 for the first retry.
        retry: u32,
        /// The delay before it, in milliseconds.
        after_ms: u64,
    },
    /// The message went to the group's dead-letter queue.
    DeadLettered,
    /// The receipt was stale (the message had been redelivered or settled): nothing changed.
    Stale,
    /// Settling it failed (the broker refused the ack, nack or dead letter); the message will
    /// come again.
    Failed,
}

/// Cuts an error text to at most [`MAX_ERROR_LEN`] bytes, on a character boundary.
pub fn clip_error(mut text: String) -> String {
    if text.len() > MAX_ERROR_LEN {
        let mut end = MAX_ERROR_LEN;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Everything known of one message: its stored copies and its recorded events, in time order.
///
/// Serialized (as the admin API answers it), a message that failed once and then succeeded:
///
/// ```text
/// {"message_id":"01A2…","events":[
///   {"message_id":"01A2…","at_ms":1796411615321,"kind":"stored","topic":"order","copy":"original",
///    "queue_id":0,"queue_offset":41,"reconsume_times":0,"born_ms":1796411615320},
///   {"message_id":"01A2…","at_ms":1796411615322,"kind":"delivered","group":"points","topic":"order",
///    "queue_id":0,"queue_offset":41,"instance":"4711-1a2b3c4d@1","attempt":1,
///    "outcome":{"type":"retried","retry":1,"after_ms":10000},"error":"inventory locked","duration_ms":3},
///   {"message_id":"01A2…","at_ms":1796411625323,"kind":"stored","topic":"%RETRY%points%order",
///    "copy":"retry","queue_id":0,"queue_offset":7,"reconsume_times":1,"born_ms":1796411615320},
///   {"message_id":"01A2…","at_ms":1796411625324,"kind":"delivered","group":"points","topic":"order",
///    "queue_id":0,"queue_offset":7,"instance":"4711-1a2b3c4d@1","attempt":2,
///    "outcome":{"type":"acked"},"duration_ms":12}]}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trace {
    /// The message.
    pub message_id: MessageId,
    /// What happened to it, oldest first; within one millisecond, in the order one causes the
    /// next (the send, a delivery, the retry copy it made, the next delivery...).
    pub events: Vec<TraceEvent>,
}

impl Trace {
    /// The original copy's `Stored` event (when it was sent, its queue and offset), if the
    /// broker still keeps it.
    pub fn sent(&self) -> Option<&TraceEvent> {
        self.events.iter().find(|e| {
            matches!(
                e.kind,
                TraceKind::Stored {
                    copy: CopyKind::Original,
                    ..
                }
            )
        })
    }

    /// The deliveries, oldest first.
    pub fn deliveries(&self) -> impl Iterator<Item = &TraceEvent> {
        self.events
            .iter()
            .filter(|e| matches!(e.kind, TraceKind::Delivered { .. }))
    }

    /// Whether nothing at all is known of the message.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

/// The `Stored` event of a stored copy.
fn stored(view: &MessageView) -> TraceEvent {
    TraceEvent {
        message_id: view.id,
        at_ms: view.store_timestamp,
        kind: TraceKind::Stored {
            topic: view.topic.clone(),
            copy: CopyKind::of(&view.topic),
            queue_id: view.queue_id,
            queue_offset: view.queue_offset,
            reconsume_times: view.reconsume_times,
            born_ms: view.born_timestamp,
        },
    }
}

/// The `Scheduled` event of a copy waiting in the schedule.
fn scheduled(s: &ScheduledMessage) -> TraceEvent {
    TraceEvent {
        message_id: s.message.id,
        at_ms: s.message.store_timestamp,
        kind: TraceKind::Scheduled {
            topic: s.message.topic.clone(),
            queue_id: s.message.queue_id,
            reconsume_times: s.message.reconsume_times,
            due_ms: s.due_ms,
            born_ms: s.message.born_timestamp,
        },
    }
}

/// Where a step comes among those of the same millisecond: in the order one causes the next.
/// The send; a resend of its dead letter and the copy it made (delivered again from attempt
/// 1); delivery `a`; the retry copy it made (reconsume count `a`), delivered as `a + 1`; the
/// dead-letter copy the last delivery made.
fn step(kind: &TraceKind) -> u64 {
    match kind {
        TraceKind::Stored {
            copy,
            reconsume_times,
            ..
        } => {
            let r = u64::from(*reconsume_times);
            match copy {
                CopyKind::Original => 0,
                CopyKind::Retry | CopyKind::Internal if r == 0 => 2,
                CopyKind::Retry | CopyKind::Internal => 2 * r + 2,
                CopyKind::DeadLetter => 2 * r + 4,
            }
        }
        // Scheduled like the copy it becomes: the send, or the retry of delivery `r`.
        TraceKind::Scheduled {
            reconsume_times: 0, ..
        } => 0,
        TraceKind::Scheduled {
            reconsume_times, ..
        } => 2 * u64::from(*reconsume_times) + 2,
        TraceKind::Resent { .. } => 1,
        TraceKind::Delivered { attempt, .. } => 2 * u64::from(*attempt) + 1,
    }
}

/// Puts the stored copies, the copies waiting in the schedule and the recorded events of
/// message `id` in one time line.
pub fn assemble(
    id: MessageId,
    copies: &[MessageView],
    waiting: &[ScheduledMessage],
    records: &[MessageView],
) -> Trace {
    let mut events: Vec<TraceEvent> = copies.iter().filter(|c| c.id == id).map(stored).collect();
    events.extend(waiting.iter().filter(|s| s.message.id == id).map(scheduled));
    for record in records {
        match decode_record(&record.body) {
            Ok(decoded) => events.extend(decoded.into_iter().filter(|e| e.message_id == id)),
            Err(e) => tracing::warn!(
                record = %record.id,
                topic = %record.topic,
                queue_id = record.queue_id,
                queue_offset = record.queue_offset,
                error = %e,
                "trace record that does not decode skipped"
            ),
        }
    }
    // Stable, so that the events of one record keep the order they were recorded in.
    events.sort_by_key(|e| (e.at_ms, step(&e.kind)));
    Trace {
        message_id: id,
        events,
    }
}

/// The trace of message `id`, the same on every backend: its stored copies, its copies
/// waiting in the schedule, then the events of the trace records whose key is its id, in time
/// order. An unknown id has an empty trace.
pub async fn trace(broker: &dyn Broker, id: MessageId) -> Result<Trace> {
    let copies = broker.messages_by_id(id).await?;
    let waiting = broker.scheduled_by_id(id).await?;
    let records = broker
        .messages_by_key(&id.to_string(), Some(TRACE_TOPIC), MAX_TRACE_RECORDS)
        .await?;
    Ok(assemble(id, &copies, &waiting, &records))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn delivered(id: MessageId, at_ms: u64, outcome: DeliveryOutcome) -> TraceEvent {
        TraceEvent {
            message_id: id,
            at_ms,
            kind: TraceKind::Delivered {
                group: "g".into(),
                topic: "order".into(),
                queue_id: 1,
                queue_offset: 7,
                instance: "i@1".into(),
                attempt: 1,
                outcome,
                error: None,
                duration_ms: 3,
            },
        }
    }

    fn view(id: MessageId, topic: &str, store: u64, body: Vec<u8>) -> MessageView {
        MessageView {
            id,
            topic: topic.into(),
            tag: None,
            keys: vec![],
            properties: Default::default(),
            body: body.into(),
            queue_id: 0,
            queue_offset: 0,
            born_timestamp: store,
            store_timestamp: store,
            reconsume_times: 0,
        }
    }

    #[test]
    fn bad_records_are_skipped_not_read() {
        let id = MessageId::new();
        let good = encode_record(&[delivered(id, 20, DeliveryOutcome::Acked)]).unwrap();
        let records = [
            view(MessageId::new(), TRACE_TOPIC, 1, b"\x00 not json".to_vec()),
            view(MessageId::new(), TRACE_TOPIC, 2, br#"{"v":2}"#.to_vec()),
            view(MessageId::new(), TRACE_TOPIC, 4, good),
        ];
        let t = assemble(id, &[], &[], &records);
        assert_eq!(t.events, vec![delivered(id, 20, DeliveryOutcome::Acked)]);
    }

    #[test]
    fn copies_and_events_form_one_time_line_in_causal_order_within_a_millisecond() {
        let id = MessageId::new();
        let other = MessageId::new();
        let retried = |mut v: MessageView| {
            v.reconsume_times = 1;
            v
        };
        let copies = [
            retried(view(id, "%DLQ%g", 30, vec![])),
            view(id, "order", 10, vec![]),
            retried(view(id, "%RETRY%g%order", 30, vec![])),
        ];
        let mut second = delivered(id, 30, DeliveryOutcome::DeadLettered);
        if let TraceKind::Delivered { attempt, .. } = &mut second.kind {
            *attempt = 2;
        }
        let record = encode_record(&[
            delivered(
                id,
                10,
                DeliveryOutcome::Retried {
                    retry: 1,
                    after_ms: 20,
                },
            ),
            delivered(other, 11, DeliveryOutcome::Acked),
            second,
        ])
        .unwrap();
        let t = assemble(
            id,
            &copies,
            &[],
            &[view(MessageId::new(), TRACE_TOPIC, 60, record)],
        );
        let line: Vec<(u64, &str)> = t
            .events
            .iter()
            .map(|e| {
                let what = match &e.kind {
                    TraceKind::Stored {
                        copy: CopyKind::Original,
                        ..
                    } => "sent",
                    TraceKind::Stored {
                        copy: CopyKind::Retry,
                        ..
                    } => "retry copy",
                    TraceKind::Stored {
                        copy: CopyKind::DeadLetter,
                        ..
                    } => "dead letter",
                    TraceKind::Delivered { .. } => "delivered",
                    _ => "other",
                };
                (e.at_ms, what)
            })
            .collect();
        assert_eq!(
            line,
            vec![
                (10, "sent"),
                (10, "delivered"),
                (30, "retry copy"),
                (30, "delivered"),
                (30, "dead letter"),
            ]
        );
        assert_eq!(t.sent().map(|e| e.at_ms), Some(10));
        assert_eq!(t.deliveries().count(), 2);
    }

    #[test]
    fn waiting_copies_show_where_and_when_they_go_after_what_scheduled_them() {
        let id = MessageId::new();
        let mut retry = view(id, "%RETRY%g%order", 10, vec![]);
        retry.reconsume_times = 1;
        let waiting = [ScheduledMessage {
            message: retry,
            due_ms: 40,
        }];
        let record = encode_record(&[delivered(
            id,
            10,
            DeliveryOutcome::Retried {
                retry: 1,
                after_ms: 30,
            },
        )])
        .unwrap();
        let t = assemble(
            id,
            &[view(id, "order", 10, vec![])],
            &waiting,
            &[view(MessageId::new(), TRACE_TOPIC, 60, record)],
        );
        let kinds: Vec<&str> = t
            .events
            .iter()
            .map(|e| match &e.kind {
                TraceKind::Stored { .. } => "stored",
                TraceKind::Delivered { .. } => "delivered",
                TraceKind::Scheduled { .. } => "scheduled",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, ["stored", "delivered", "scheduled"]);
        assert_eq!(
            t.events[2].kind,
            TraceKind::Scheduled {
                topic: "%RETRY%g%order".into(),
                queue_id: 0,
                reconsume_times: 1,
                due_ms: 40,
                born_ms: 10,
            }
        );
        let json = serde_json::to_value(&t.events[2]).unwrap();
        assert_eq!(json["kind"], "scheduled");
        assert_eq!(json["due_ms"], 40);
        // A scheduled copy is the broker's state, never written into a trace record.
        assert!(trace_record(&t.events[2..]).unwrap().is_none());
    }

    #[test]
    fn the_json_of_a_trace_names_its_kinds() {
        let id = MessageId::new();
        let t = assemble(
            id,
            &[view(id, "order", 10, vec![])],
            &[],
            &[view(
                MessageId::new(),
                TRACE_TOPIC,
                11,
                encode_record(&[delivered(
                    id,
                    11,
                    DeliveryOutcome::Retried {
                        retry: 1,
                        after_ms: 10_000,
                    },
                )])
                .unwrap(),
            )],
        );
        let text = serde_json::to_string(&t).unwrap();
        for part in [
            format!(r#"{{"message_id":"{id}","events":[{{"message_id":"{id}","at_ms":10,"kind":"stored","topic":"order","copy":"original","queue_id":0"#),
            r#""kind":"delivered","group":"g","topic":"order","queue_id":1,"queue_offset":7,"instance":"i@1","attempt":1,"outcome":{"type":"retried","retry":1,"after_ms":10000},"duration_ms":3}"#.to_owned(),
        ] {
            assert!(text.contains(&part), "{part} not in {text}");
        }
        let back: Trace = serde_json::from_str(&text).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn long_errors_are_clipped_on_a_character_boundary() {
        let text = "é".repeat(MAX_ERROR_LEN);
        let clipped = clip_error(text);
        assert!(clipped.len() <= MAX_ERROR_LEN);
        assert!(clipped.chars().all(|c| c == 'é'));
        assert_eq!(clip_error("short".into()), "short");
    }
}

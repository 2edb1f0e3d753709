//! The trace record: how a batch of [`TraceEvent`]s is stored as the body of one message of
//! [`TRACE_TOPIC`], keyed by the distinct ids of the messages it traces.
//!
//! Compact JSON, version 1: the (group, topic, instance) of the deliveries once per record,
//! each event naming its origin by index, short field names:
//!
//! ```text
//! {"v":1,
//!  "o":[{"g":"points","t":"order","i":"4711-1a2b3c4d@1"}],
//!  "e":[{"k":"d","id":"01A2…","at":1796411615321,"o":0,"q":3,"off":42,"a":1,
//!        "r":{"type":"retried","retry":1,"after_ms":10000},"err":"inventory locked","ms":12},
//!       {"k":"r","id":"01A2…","at":1796411616000,"g":"points","seq":7}]}
//! ```
//!
//! A delivery costs about 110 bytes of it (a 32-digit id, times, offsets, outcome); the
//! record's keys add the id again. A record that is not JSON of this shape, or of another
//! version, fails to decode as a whole; an event that does not decode (an unknown kind, an
//! origin that is not there) is reported with a warning and left out.

use serde::{Deserialize, Serialize};

use super::{DeliveryOutcome, TraceEvent, TraceKind, TRACE_FORMAT_VERSION};
use crate::error::{BackendErrorKind, BrokerError, Result};
use crate::message::{now_millis, MessageId, MessageParts};
use crate::system_topics::TRACE_TOPIC;

/// Where deliveries came from: one entry per distinct (group, topic, instance) of a record.
#[derive(Serialize, Deserialize, PartialEq, Eq)]
struct Origin<'a> {
    #[serde(rename = "g", borrow)]
    group: std::borrow::Cow<'a, str>,
    #[serde(rename = "t", borrow)]
    topic: std::borrow::Cow<'a, str>,
    #[serde(rename = "i", borrow)]
    instance: std::borrow::Cow<'a, str>,
}

/// One event as stored.
#[derive(Serialize, Deserialize)]
#[serde(tag = "k")]
enum Wire<'a> {
    #[serde(rename = "d")]
    Delivered {
        id: MessageId,
        at: u64,
        o: usize,
        q: u32,
        off: u64,
        a: u32,
        r: DeliveryOutcome,
        #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
        err: Option<std::borrow::Cow<'a, str>>,
        ms: u64,
    },
    #[serde(rename = "r")]
    Resent {
        id: MessageId,
        at: u64,
        #[serde(borrow)]
        g: std::borrow::Cow<'a, str>,
        seq: u64,
    },
}

#[derive(Serialize)]
struct RecordOut<'a> {
    v: u32,
    o: Vec<Origin<'a>>,
    e: Vec<Wire<'a>>,
}

/// A record as read: events one by one, so that one bad event does not cost the others.
#[derive(Deserialize)]
struct RecordIn<'a> {
    v: u32,
    #[serde(default, borrow)]
    o: Vec<Origin<'a>>,
    #[serde(default)]
    e: Vec<serde_json::Value>,
}

/// Why a trace record could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TraceDecodeError {
    /// The body is not a trace record.
    #[error("not a trace record: {0}")]
    Malformed(#[source] serde_json::Error),
    /// A record of a format version this build does not read.
    #[error("trace record of version {0}, this build reads version {TRACE_FORMAT_VERSION}")]
    UnknownVersion(u32),
}

/// The body of a trace record holding `events`. `Stored` events are left out: copies are the
/// broker's own record, never recorded.
pub fn encode_record(events: &[TraceEvent]) -> Result<Vec<u8>> {
    let mut origins: Vec<Origin<'_>> = Vec::new();
    let mut wire = Vec::with_capacity(events.len());
    for e in events {
        match &e.kind {
            TraceKind::Delivered {
                group,
                topic,
                queue_id,
                queue_offset,
                instance,
                attempt,
                outcome,
                error,
                duration_ms,
            } => {
                let origin = Origin {
                    group: group.into(),
                    topic: topic.into(),
                    instance: instance.into(),
                };
                // A record's deliveries come from few listeners: a scan beats a map.
                let o = match origins.iter().position(|x| *x == origin) {
                    Some(o) => o,
                    None => {
                        origins.push(origin);
                        origins.len() - 1
                    }
                };
                wire.push(Wire::Delivered {
                    id: e.message_id,
                    at: e.at_ms,
                    o,
                    q: *queue_id,
                    off: *queue_offset,
                    a: *attempt,
                    r: *outcome,
                    err: error.as_deref().map(Into::into),
                    ms: *duration_ms,
                });
            }
            TraceKind::Resent { group, seq } => wire.push(Wire::Resent {
                id: e.message_id,
                at: e.at_ms,
                g: group.into(),
                seq: *seq,
            }),
            TraceKind::Stored { .. } | TraceKind::Scheduled { .. } => {}
        }
    }
    serde_json::to_vec(&RecordOut {
        v: TRACE_FORMAT_VERSION,
        o: origins,
        e: wire,
    })
    .map_err(|e| {
        BrokerError::backend_caused(
            "trace",
            BackendErrorKind::Malformed,
            "encoding trace events",
            e,
        )
    })
}

/// The events of a trace record's body, in the order they were recorded.
pub fn decode_record(body: &[u8]) -> std::result::Result<Vec<TraceEvent>, TraceDecodeError> {
    let record: RecordIn<'_> = serde_json::from_slice(body).map_err(TraceDecodeError::Malformed)?;
    if record.v != TRACE_FORMAT_VERSION {
        return Err(TraceDecodeError::UnknownVersion(record.v));
    }
    let mut out = Vec::with_capacity(record.e.len());
    for value in &record.e {
        let event = match Wire::deserialize(value) {
            Ok(Wire::Delivered {
                id,
                at,
                o,
                q,
                off,
                a,
                r,
                err,
                ms,
            }) => {
                let Some(origin) = record.o.get(o) else {
                    tracing::warn!(
                        origin = o,
                        "trace event naming an origin the record lacks skipped"
                    );
                    continue;
                };
                TraceEvent {
                    message_id: id,
                    at_ms: at,
                    kind: TraceKind::Delivered {
                        group: origin.group.clone().into_owned(),
                        topic: origin.topic.clone().into_owned(),
                        queue_id: q,
                        queue_offset: off,
                        instance: origin.instance.clone().into_owned(),
                        attempt: a,
                        outcome: r,
                        error: err.map(std::borrow::Cow::into_owned),
                        duration_ms: ms,
                    },
                }
            }
            Ok(Wire::Resent { id, at, g, seq }) => TraceEvent {
                message_id: id,
                at_ms: at,
                kind: TraceKind::Resent {
                    group: g.into_owned(),
                    seq,
                },
            },
            Err(e) => {
                tracing::warn!(error = %e, "trace event that does not decode skipped");
                continue;
            }
        };
        out.push(event);
    }
    Ok(out)
}

/// The stored message that holds `events`: a record of [`TRACE_TOPIC`] whose keys are the
/// distinct message ids of the events, in first-seen order. `None` for no events to record.
/// Backends store it through their internal path (user topics cannot start with `%`).
pub(crate) fn trace_record(events: &[TraceEvent]) -> Result<Option<MessageParts>> {
    if !events.iter().any(|e| e.kind.is_recorded()) {
        return Ok(None);
    }
    let mut keys: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::with_capacity(events.len());
    for e in events {
        if e.kind.is_recorded() && seen.insert(e.message_id) {
            keys.push(e.message_id.to_string());
        }
    }
    Ok(Some(MessageParts {
        id: MessageId::new(),
        topic: TRACE_TOPIC.to_owned(),
        tag: None,
        keys,
        properties: Default::default(),
        body: encode_record(events)?.into(),
        born_timestamp: now_millis(),
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::trace::CopyKind;

    fn delivered(
        id: MessageId,
        group: &str,
        outcome: DeliveryOutcome,
        error: Option<&str>,
    ) -> TraceEvent {
        TraceEvent {
            message_id: id,
            at_ms: 1_796_411_615_321,
            kind: TraceKind::Delivered {
                group: group.into(),
                topic: "order".into(),
                queue_id: 3,
                queue_offset: 123_456,
                instance: "4711-1a2b3c4d@1".into(),
                attempt: 1,
                outcome,
                error: error.map(str::to_owned),
                duration_ms: 12,
            },
        }
    }

    #[test]
    fn a_record_reads_back_as_written_and_is_keyed_by_distinct_ids() {
        let (a, b) = (MessageId::new(), MessageId::new());
        let events = vec![
            delivered(
                a,
                "g",
                DeliveryOutcome::Retried {
                    retry: 1,
                    after_ms: 100,
                },
                Some("boom"),
            ),
            delivered(b, "h", DeliveryOutcome::Acked, None),
            delivered(a, "g", DeliveryOutcome::Acked, None),
            TraceEvent {
                message_id: b,
                at_ms: 5,
                kind: TraceKind::Resent {
                    group: "h".into(),
                    seq: 9,
                },
            },
        ];
        let parts = trace_record(&events).unwrap().unwrap();
        assert_eq!(parts.topic, TRACE_TOPIC);
        assert_eq!(parts.keys, vec![a.to_string(), b.to_string()]);
        assert_eq!(decode_record(&parts.body).unwrap(), events);
        assert!(trace_record(&[]).unwrap().is_none());
    }

    #[test]
    fn stored_events_are_not_recorded() {
        let id = MessageId::new();
        let stored = TraceEvent {
            message_id: id,
            at_ms: 1,
            kind: TraceKind::Stored {
                topic: "order".into(),
                copy: CopyKind::Original,
                queue_id: 0,
                queue_offset: 0,
                reconsume_times: 0,
                born_ms: 1,
            },
        };
        assert!(trace_record(std::slice::from_ref(&stored))
            .unwrap()
            .is_none());
        let acked = delivered(id, "g", DeliveryOutcome::Acked, None);
        let parts = trace_record(&[stored, acked.clone()]).unwrap().unwrap();
        assert_eq!(decode_record(&parts.body).unwrap(), vec![acked]);
    }

    #[test]
    fn a_delivery_costs_about_a_hundred_bytes() {
        let events: Vec<TraceEvent> = (0..256)
            .map(|_| delivered(MessageId::new(), "points", DeliveryOutcome::Acked, None))
            .collect();
        let body = encode_record(&events).unwrap();
        let per_event = body.len() / events.len();
        assert!(
            (90..=130).contains(&per_event),
            "{per_event} bytes per delivery"
        );
        let text = String::from_utf8(body).unwrap();
        assert!(text.starts_with(r#"{"v":1,"o":[{"g":"points","t":"order","i":"4711-1a2b3c4d@1"}],"e":[{"k":"d","id":""#), "{text}");
        assert!(text.contains(r#""r":{"type":"acked"}"#), "{text}");
        assert!(!text.contains("err"), "no error, no field");
    }

    #[test]
    fn bad_records_and_events_are_skipped_not_read() {
        let id = MessageId::new();
        assert!(matches!(
            decode_record(br#"{"v":2,"e":[]}"#),
            Err(TraceDecodeError::UnknownVersion(2))
        ));
        assert!(matches!(
            decode_record(b"\x00\x01 not json"),
            Err(TraceDecodeError::Malformed(_))
        ));
        let mixed = format!(
            r#"{{"v":1,"o":[],"e":[{{"k":"teleported","id":"{id}","at":30}},{{"k":"d","id":"{id}","at":31,"o":4,"q":0,"off":0,"a":1,"r":{{"type":"acked"}},"ms":0}},{{"k":"r","id":"{id}","at":32,"g":"g","seq":4}}]}}"#
        );
        let events = decode_record(mixed.as_bytes()).unwrap();
        assert_eq!(
            events,
            vec![TraceEvent {
                message_id: id,
                at_ms: 32,
                kind: TraceKind::Resent {
                    group: "g".into(),
                    seq: 4
                }
            }],
            "the unknown kind and the missing origin are left out"
        );
    }
}

//! Conformance cases for the message trace: trace records stored by `record_trace` and the
//! trace assembled from them and the stored copies, the same on every backend.

use std::time::Duration;

use super::{drain, first, unique, Harness, WAIT};
use crate::broker::{Delivery, SendOptions};
use crate::delay::Backoff;
use crate::message::{now_millis, Message, MessageId};
use crate::subscription::Subscription;
use crate::system_topics::TRACE_TOPIC;
use crate::trace::{trace, CopyKind, DeliveryOutcome, Trace, TraceEvent, TraceKind};

/// The event a listener would record for `d`, delivered to `group` at `at_ms`.
fn delivered(
    d: &Delivery,
    group: &str,
    at_ms: u64,
    outcome: DeliveryOutcome,
    error: Option<&str>,
) -> TraceEvent {
    TraceEvent {
        message_id: d.message.id,
        at_ms,
        kind: TraceKind::Delivered {
            group: group.to_owned(),
            topic: d.message.topic.clone(),
            queue_id: d.message.queue_id,
            queue_offset: d.message.queue_offset,
            instance: "member-1".into(),
            attempt: d.message.attempt(),
            outcome,
            error: error.map(str::to_owned),
            duration_ms: 2,
        },
    }
}

/// The outcomes of the trace's deliveries, in order.
fn outcomes(t: &Trace) -> Vec<DeliveryOutcome> {
    t.deliveries()
        .map(|e| match &e.kind {
            TraceKind::Delivered { outcome, .. } => *outcome,
            _ => unreachable!("deliveries() yields deliveries"),
        })
        .collect()
}

/// The stored copies of the trace: (kind, reconsume times).
fn copies(t: &Trace) -> Vec<(CopyKind, u32)> {
    t.events
        .iter()
        .filter_map(|e| match &e.kind {
            TraceKind::Stored {
                copy,
                reconsume_times,
                ..
            } => Some((*copy, *reconsume_times)),
            _ => None,
        })
        .collect()
}

/// Retried twice, then acknowledged: the trace holds the send (queue and offset as the send
/// said), the retry copies, and the three deliveries with their errors, in time order; the
/// events of another message recorded beside them are not in it; trace records are not
/// listed with the topics nor found by a key search over user topics; an unknown id has an
/// empty trace; and the trace is the same after a restart.
pub async fn trace_of_a_message_retried_twice_then_acked(h: &dyn Harness) {
    let broker = h.open().await;
    let topic = unique("traced");
    let group = unique("g");
    let consumer = broker
        .subscribe(
            Subscription::new(&topic, &group),
            first().max_reconsume_times(5).backoff(Backoff {
                steps: vec![Duration::from_millis(50)],
            }),
        )
        .await
        .expect("subscribe");
    let sent = broker
        .send(
            Message::new(&topic, "order 42").with_key("order-42"),
            SendOptions::new(),
        )
        .await
        .expect("send");
    let id = sent.message_id;
    let mut events = Vec::new();
    for (retry, error) in [(1, "boom 1"), (2, "boom 2")] {
        let d = drain(&*consumer, 1, WAIT, false).await;
        assert_eq!(d.len(), 1, "delivery before retry {retry}");
        let at = now_millis();
        let disposition = consumer
            .nack(&d[0].receipt, crate::broker::Failure::new(error))
            .await
            .expect("nack");
        let crate::broker::Disposition::Retry { retry: r, after } = disposition else {
            panic!("retry {retry} expected, got {disposition:?}");
        };
        assert_eq!(r, retry);
        events.push(delivered(
            &d[0],
            &group,
            at,
            DeliveryOutcome::Retried {
                retry,
                after_ms: after.as_millis() as u64,
            },
            Some(error),
        ));
    }
    let d = drain(&*consumer, 1, WAIT, true).await;
    assert_eq!(d.len(), 1, "third delivery");
    assert_eq!(d[0].message.id, id);
    events.push(delivered(
        &d[0],
        &group,
        now_millis(),
        DeliveryOutcome::Acked,
        None,
    ));
    // Two records, the second shared with another message.
    let other = TraceEvent {
        message_id: MessageId::new(),
        ..events[2].clone()
    };
    broker
        .record_trace(events[..1].to_vec())
        .await
        .expect("record");
    broker
        .record_trace(vec![events[1].clone(), other, events[2].clone()])
        .await
        .expect("record");
    broker
        .record_trace(Vec::new())
        .await
        .expect("nothing to record");

    let check = |t: &Trace| {
        assert_eq!(t.message_id, id);
        let sent_event = t.sent().expect("the send is in the trace");
        match &sent_event.kind {
            TraceKind::Stored {
                topic: t_topic,
                queue_id,
                queue_offset,
                ..
            } => {
                assert_eq!(t_topic, &topic);
                assert_eq!(
                    (*queue_id, *queue_offset),
                    (sent.queue_id, sent.queue_offset)
                );
            }
            other => panic!("sent is a stored copy, not {other:?}"),
        }
        assert_eq!(t.events.first(), Some(sent_event), "the send comes first");
        assert!(
            matches!(
                outcomes(t)[..],
                [
                    DeliveryOutcome::Retried { retry: 1, .. },
                    DeliveryOutcome::Retried { retry: 2, .. },
                    DeliveryOutcome::Acked,
                ]
            ),
            "{t:?}"
        );
        let recorded: Vec<&TraceEvent> = t.deliveries().collect();
        assert_eq!(recorded, events.iter().collect::<Vec<_>>());
        let retry_copies: Vec<u32> = copies(t)
            .into_iter()
            .filter(|(kind, _)| *kind == CopyKind::Retry)
            .map(|(_, n)| n)
            .collect();
        assert_eq!(retry_copies, vec![1, 2], "both retry copies, in order");
        let second_copy = t
            .events
            .iter()
            .position(|e| {
                matches!(
                    e.kind,
                    TraceKind::Stored {
                        copy: CopyKind::Retry,
                        reconsume_times: 2,
                        ..
                    }
                )
            })
            .expect("second retry copy");
        let acked = t
            .events
            .iter()
            .position(|e| e == &events[2])
            .expect("acked delivery");
        assert!(
            second_copy < acked,
            "the copy is stored before it is delivered: {t:?}"
        );
    };
    let t = trace(&*broker, id).await.expect("trace");
    check(&t);

    assert!(
        !broker
            .topics()
            .await
            .expect("topics")
            .iter()
            .any(|t| t == TRACE_TOPIC),
        "trace records are not a listed topic"
    );
    let by_key = broker
        .messages_by_key(&id.to_string(), None, 10)
        .await
        .expect("by key");
    assert!(
        by_key.is_empty(),
        "a key search over user topics finds no trace record: {by_key:?}"
    );
    let unknown = trace(&*broker, MessageId::new()).await.expect("trace");
    assert!(unknown.is_empty(), "{unknown:?}");

    drop(consumer);
    broker.shutdown().await.expect("shutdown");
    let broker = h.open().await;
    check(&trace(&*broker, id).await.expect("trace after restart"));
    broker.shutdown().await.expect("shutdown");
}

/// Dead-lettered, then resent and acknowledged: before the resend the trace shows the dead
/// letter's copy after the failed delivery; after it, the resend (same id on every backend)
/// and the delivery of the resent copy follow.
pub async fn trace_of_a_dead_letter_resent(h: &dyn Harness) {
    let broker = h.open().await;
    let topic = unique("traced-dlq");
    let group = unique("g");
    let consumer = broker
        .subscribe(Subscription::new(&topic, &group), first())
        .await
        .expect("subscribe");
    let id = broker
        .send(Message::new(&topic, "poison"), SendOptions::new())
        .await
        .expect("send")
        .message_id;
    let d = drain(&*consumer, 1, WAIT, false).await;
    assert_eq!(d.len(), 1);
    let at = now_millis();
    consumer
        .dead_letter(&d[0].receipt, "does not deserialize")
        .await
        .expect("dead letter");
    broker
        .record_trace(vec![delivered(
            &d[0],
            &group,
            at,
            DeliveryOutcome::DeadLettered,
            Some("does not deserialize"),
        )])
        .await
        .expect("record");

    let t = trace(&*broker, id).await.expect("trace");
    let kinds: Vec<CopyKind> = copies(&t).into_iter().map(|(k, _)| k).collect();
    assert_eq!(kinds.first(), Some(&CopyKind::Original), "{t:?}");
    assert!(kinds.contains(&CopyKind::DeadLetter), "{t:?}");
    let dead_at = t
        .events
        .iter()
        .position(|e| {
            matches!(
                e.kind,
                TraceKind::Stored {
                    copy: CopyKind::DeadLetter,
                    ..
                }
            )
        })
        .expect("dead-letter copy");
    let failed_at = t
        .events
        .iter()
        .position(|e| matches!(e.kind, TraceKind::Delivered { .. }))
        .expect("delivery");
    assert!(
        failed_at <= dead_at,
        "the failed delivery, then its dead letter: {t:?}"
    );
    assert_eq!(outcomes(&t), vec![DeliveryOutcome::DeadLettered]);

    let dead = broker
        .dead_letters(&group, 0, 10)
        .await
        .expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message.id, id);
    let resent_at = now_millis();
    assert!(broker
        .resend_dead_letter(&group, dead[0].seq)
        .await
        .expect("resend"));
    let again = drain(&*consumer, 1, WAIT, true).await;
    assert_eq!(again.len(), 1, "the resent copy comes again");
    assert_eq!(again[0].message.id, id, "a resent dead letter keeps its id");
    broker
        .record_trace(vec![
            TraceEvent {
                message_id: id,
                at_ms: resent_at,
                kind: TraceKind::Resent {
                    group: group.clone(),
                    seq: dead[0].seq,
                },
            },
            delivered(
                &again[0],
                &group,
                now_millis(),
                DeliveryOutcome::Acked,
                None,
            ),
        ])
        .await
        .expect("record");

    let t = trace(&*broker, id).await.expect("trace");
    let resent = t
        .events
        .iter()
        .position(|e| matches!(e.kind, TraceKind::Resent { .. }))
        .expect("the resend is in the trace");
    let last = t.events.last().expect("events");
    assert!(
        matches!(
            last.kind,
            TraceKind::Delivered {
                outcome: DeliveryOutcome::Acked,
                ..
            }
        ),
        "the acknowledged delivery of the resent copy comes last: {t:?}"
    );
    assert!(resent < t.events.len() - 1);
    assert!(
        copies(&t)
            .iter()
            .any(|(k, n)| *k == CopyKind::Retry && *n == 0),
        "the resent copy, with its count reset, is a stored copy: {t:?}"
    );
    assert_eq!(
        outcomes(&t),
        vec![DeliveryOutcome::DeadLettered, DeliveryOutcome::Acked]
    );
    broker.shutdown().await.expect("shutdown");
}

/// Many messages in one trace record: each message's trace holds its own event only.
pub async fn trace_records_hold_many_messages(h: &dyn Harness) {
    let broker = h.open().await;
    let ids: Vec<MessageId> = (0..300).map(|_| MessageId::new()).collect();
    let events: Vec<TraceEvent> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| TraceEvent {
            message_id: *id,
            at_ms: 1_000 + i as u64,
            kind: TraceKind::Resent {
                group: "g".into(),
                seq: i as u64,
            },
        })
        .collect();
    broker.record_trace(events.clone()).await.expect("record");
    for i in [0, 150, 299] {
        let t = trace(&*broker, ids[i]).await.expect("trace");
        assert_eq!(t.events, vec![events[i].clone()], "message {i}");
    }
    broker.shutdown().await.expect("shutdown");
}

//! Message trace, the application's side: every listener reports each settled delivery (who
//! received it, which attempt, how it was settled, the error, how long the handler ran) to the
//! application's [`TraceRecorder`], which stores them in batches in the broker's `%TRACE%`
//! topic; [`resend_dead_letter`] records the resends. `mq_core::trace::trace` (or
//! [`Running::trace`](crate::Running::trace)) reads a message's whole story back: when it was
//! sent, each delivery, its retries, its dead letter and its resends.
//!
//! Switched on by default (`mq.trace.enabled`); `mq.trace.queue-capacity` bounds the events
//! waiting to be stored. Costs and retention: BENCHMARKS.md, "Message trace".

mod recorder;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use mq_core::{Broker, BrokerError};
use tokio::time::Instant;

pub use mq_core::trace::{DeliveryOutcome, Trace, TraceEvent, TraceKind};
pub(crate) use recorder::Seen;
pub use recorder::{TraceRecorder, CLOSE_TIMEOUT, FLUSH_EVERY, MAX_BATCH};

use recorder::Origin;

/// One listener's connection to the recorder: its group and topic, and the instance name of
/// its consumer once it has joined.
#[derive(Debug)]
pub(crate) struct Tap {
    recorder: TraceRecorder,
    group: String,
    topic: String,
    origin: OnceLock<Arc<Origin>>,
}

impl Tap {
    pub fn new(recorder: TraceRecorder, group: &str, topic: &str) -> Self {
        Tap {
            recorder,
            group: group.to_owned(),
            topic: topic.to_owned(),
            origin: OnceLock::new(),
        }
    }

    /// Names the consumer the listener's deliveries come from.
    pub fn joined(&self, instance: &str) {
        let _ = self.origin.set(Arc::new(Origin {
            group: self.group.clone(),
            topic: self.topic.clone(),
            instance: instance.to_owned(),
        }));
    }

    /// Records one settled delivery.
    pub fn delivered(
        &self,
        seen: Seen,
        started: Instant,
        outcome: DeliveryOutcome,
        error: Option<String>,
        duration: Duration,
    ) {
        if let Some(origin) = self.origin.get() {
            self.recorder
                .delivery(origin, seen, started, outcome, error, duration);
        }
    }
}

/// Sends dead letter `seq` of `group` again ([`Broker::resend_dead_letter`]) and, when it was
/// there, records a `Resent` event with `recorder` (the application's, from
/// [`Running::trace_recorder`](crate::Running::trace_recorder); `None` records nothing).
/// Returns whether it was there.
pub async fn resend_dead_letter(
    broker: &dyn Broker,
    recorder: Option<&TraceRecorder>,
    group: &str,
    seq: u64,
) -> Result<bool, BrokerError> {
    // The id, read first: a resent dead letter is gone from the list. Every backend resends
    // it under the same id, so its next deliveries join the same trace.
    let id = match recorder {
        Some(_) => broker
            .dead_letters(group, seq, 1)
            .await?
            .into_iter()
            .find(|d| d.seq == seq)
            .map(|d| d.message.id),
        None => None,
    };
    // When the resend began: its copy may be delivered before this call returns.
    let at_ms = mq_core::message::now_millis();
    let resent = broker.resend_dead_letter(group, seq).await?;
    if let (true, Some(recorder), Some(message_id)) = (resent, recorder, id) {
        recorder.record(TraceEvent {
            message_id,
            at_ms,
            kind: TraceKind::Resent {
                group: group.to_owned(),
                seq,
            },
        });
    }
    Ok(resent)
}

/// Sends every dead letter `group` has now again, recording each as [`resend_dead_letter`]
/// does. Returns how many were resent. Dead letters that arrive meanwhile (a resent message
/// that fails again comes back under a new position) are left for the next call, so that a
/// message failing every time cannot keep this going.
pub async fn resend_all_dead_letters(
    broker: &dyn Broker,
    recorder: Option<&TraceRecorder>,
    group: &str,
) -> Result<u64, BrokerError> {
    let mut now = Vec::new();
    let mut from = 0;
    loop {
        let page = broker.dead_letters(group, from, 256).await?;
        let Some(last) = page.last() else {
            break;
        };
        from = last.seq + 1;
        now.extend(page.iter().map(|d| (d.seq, d.message.id)));
    }
    let mut resent = 0;
    for (seq, message_id) in now {
        let at_ms = mq_core::message::now_millis();
        if broker.resend_dead_letter(group, seq).await? {
            resent += 1;
            if let Some(recorder) = recorder {
                recorder.record(TraceEvent {
                    message_id,
                    at_ms,
                    kind: TraceKind::Resent {
                        group: group.to_owned(),
                        seq,
                    },
                });
            }
        }
    }
    Ok(resent)
}

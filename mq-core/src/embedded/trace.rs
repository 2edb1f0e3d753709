//! Trace records on the embedded broker: one record of `%TRACE%` (one queue) per batch of
//! events, appended through the store's internal path like retry and dead-letter copies.
//!
//! A record goes through the one writer with the sends, so it shares their write (and, under
//! `flush: sync`, their fsync: group commit); under `flush: async` a crash may lose the trace
//! records of the last flush interval, never a message. It is indexed by its keys like any
//! record and deleted with its commit-log segment by retention (`file-reserved-time`).

use super::store::{MessageStore, Outgoing};
use crate::error::Result;
use crate::system_topics::TRACE_TOPIC;
use crate::trace::{trace_record, TraceEvent};

/// Appends one trace record holding `events`; returns once it is stored and readable.
pub(crate) async fn record(store: &MessageStore, events: &[TraceEvent]) -> Result<()> {
    let Some(parts) = trace_record(events)? else {
        return Ok(());
    };
    let topic = match store.topic(TRACE_TOPIC) {
        Some(t) => t,
        None => store.create_topic(TRACE_TOPIC, 1)?,
    };
    store
        .append_one(topic.queues[0].clone(), Outgoing::from(parts))
        .await?;
    Ok(())
}

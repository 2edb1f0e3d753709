//! Trace records on Redis: one entry of the `%TRACE%` stream (one queue) per batch of events,
//! appended by the same script as sends, keyed by the traced message ids.
//!
//! No group reads `%TRACE%`, so the group-based trimming of `retention.rs` never shortens it;
//! it is trimmed here instead, to [`TRACE_RETENTION`] (the embedded broker's default
//! `file-reserved-time`). Each broker notes, at most once per [`MARK_EVERY`], the offset it
//! appended at and when; at each append, every entry below the newest mark older than the
//! retention goes (`XTRIM MINID`). Offsets grow with time whoever appends, so the cut is right
//! for the records of every process, and a restarted broker trims what its predecessor left as
//! soon as its own first mark is old enough. The marks cost at most
//! `TRACE_RETENTION / MARK_EVERY` (4,320) entries of memory.

use std::collections::VecDeque;
use std::time::Duration;

use parking_lot::Mutex;

use super::envelope::Envelope;
use super::keys::entry_id;
use super::Shared;
use crate::error::Result;
use crate::message::Message;
use crate::system_topics::TRACE_TOPIC;
use crate::trace::{trace_record, TraceEvent};

/// How long trace records are kept.
pub const TRACE_RETENTION: Duration = Duration::from_secs(72 * 3600);

/// Shortest time between two marks.
const MARK_EVERY: Duration = Duration::from_secs(60);

/// (time in ms, offset appended at) of this broker's trace appends, oldest first, at least
/// [`MARK_EVERY`] apart.
#[derive(Debug, Default)]
pub(crate) struct Marks(Mutex<VecDeque<(u64, u64)>>);

impl Marks {
    /// Notes an append at `offset` at `now_ms`; returns the offset below which every entry is
    /// older than `retention`, if it moved.
    fn note(&self, now_ms: u64, offset: u64, retention: Duration) -> Option<u64> {
        let mut marks = self.0.lock();
        if marks
            .back()
            .is_none_or(|(at, _)| now_ms >= at + MARK_EVERY.as_millis() as u64)
        {
            marks.push_back((now_ms, offset));
        }
        let retention_ms = retention.as_millis() as u64;
        let mut cut = None;
        while let Some(&(at, o)) = marks.front() {
            if at.saturating_add(retention_ms) > now_ms {
                break;
            }
            cut = Some(o);
            marks.pop_front();
        }
        cut
    }
}

/// Appends one trace record holding `events`; returns once Redis holds it.
pub(crate) async fn record(shared: &Shared, events: &[TraceEvent]) -> Result<()> {
    let Some(parts) = trace_record(events)? else {
        return Ok(());
    };
    if shared.queue_count(TRACE_TOPIC).await?.is_none() {
        shared.create_topic(TRACE_TOPIC, 1).await?;
    }
    let blob = Envelope::from_message(Message::from_parts(parts)).encode()?;
    let offsets = shared.append(TRACE_TOPIC, 0, vec![blob]).await?;
    let Some(&offset) = offsets.first() else {
        return Ok(());
    };
    if let Some(cut) = shared
        .trace_marks
        .note(shared.clock.now_ms(), offset, TRACE_RETENTION)
    {
        let removed: u64 = shared
            .redis
            .query(
                "trimming trace records",
                ::redis::cmd("XTRIM")
                    .arg(shared.keys.stream(TRACE_TOPIC, 0))
                    .arg("MINID")
                    .arg(entry_id(cut))
                    .clone(),
            )
            .await?;
        tracing::debug!(removed, "trace records past their retention trimmed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_cut_at_the_newest_mark_past_the_retention() {
        let marks = Marks::default();
        let retention = Duration::from_secs(600);
        let min = 60_000;
        assert_eq!(marks.note(0, 0, retention), None);
        // Within a minute of the last mark: not noted.
        assert_eq!(marks.note(min / 2, 5, retention), None);
        assert_eq!(marks.note(min, 10, retention), None);
        assert_eq!(marks.note(2 * min, 20, retention), None);
        // 10 minutes after the first two marks: both are past, the newer one is the cut.
        assert_eq!(marks.note(11 * min, 110, retention), Some(10));
        assert_eq!(marks.note(11 * min + 1, 111, retention), None);
        assert_eq!(marks.note(12 * min, 120, retention), Some(20));
    }
}

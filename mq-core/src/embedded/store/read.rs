//! Reads for consumers: records through their index entries, with one read per stretch of
//! nearby records, checked against the queue and offset they were read for; damage found
//! by a read is reported and never served.

use bytes::Bytes;
use tokio::sync::watch;

use super::MessageStore;
use crate::embedded::commit_log::Corruption;
use crate::embedded::consume_queue::{tag_code, ConsumeQueue, CqEntry};
use crate::embedded::record::{self, DecodedRecord};
use crate::embedded::system_topics;
use crate::error::{BrokerError, Result};

thread_local! {
    /// Read buffer of [`MessageStore::read_records`], kept per thread (at most one span, 4 MiB).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl MessageStore {
    /// A receiver that changes whenever new records are indexed.
    pub fn subscribe_appends(&self) -> watch::Receiver<u64> {
        self.shared.appended.subscribe()
    }

    /// Reads and verifies the records of `entries`, with one read per stretch of nearby
    /// records. A record that fails verification is reported and returned as an error.
    pub fn read_records(&self, entries: &[CqEntry]) -> Vec<Result<DecodedRecord>> {
        const MAX_SPAN: u64 = 4 * 1024 * 1024;
        let mut out = Vec::with_capacity(entries.len());
        let mut i = 0;
        let limit = self.record_limit() as u64;
        while i < entries.len() {
            if entries[i].size == 0 {
                out.push(Err(BrokerError::Corrupt {
                    segment: self.config.data_dir.join("consumequeue"),
                    offset: 0,
                    source: crate::error::RecordError::Malformed("index entry of a lost record"),
                }));
                i += 1;
                continue;
            }
            if u64::from(entries[i].size) > limit {
                // A size read from disk is never trusted with an allocation.
                out.push(self.check(Err(self.corrupt_at(
                    entries[i].position,
                    crate::error::RecordError::Malformed(
                        "index entry names a size beyond the record limit",
                    ),
                ))));
                i += 1;
                continue;
            }
            let start = entries[i].position;
            let seg_end = self
                .commit_log()
                .segment_of(start)
                .map_or(start, |s| s.base + self.shared.commit_log.segment_size());
            let mut end = start + u64::from(entries[i].size);
            let mut useful = u64::from(entries[i].size);
            let mut j = i + 1;
            while j < entries.len() {
                let e = entries[j];
                if e.size == 0 || u64::from(e.size) > limit {
                    break;
                }
                let e_end = e.position + u64::from(e.size);
                if e.position < start || e_end > seg_end {
                    break;
                }
                let new_end = end.max(e_end);
                if new_end - start > MAX_SPAN || new_end - start > 4 * (useful + u64::from(e.size))
                {
                    break;
                }
                end = new_end;
                useful += u64::from(e.size);
                j += 1;
            }
            // One read per stretch into a reused buffer, then one small copy per record: a
            // fresh zeroed buffer per stretch costs more (memset and page faults) than the read.
            let span = (end - start) as usize;
            let read = SCRATCH.with(|cell| {
                let mut scratch = cell.borrow_mut();
                if scratch.len() < span {
                    scratch.resize(span, 0);
                }
                self.shared
                    .commit_log
                    .read_into(start, &mut scratch[..span])
                    .map(|()| {
                        entries[i..j]
                            .iter()
                            .map(|e| {
                                let s = (e.position - start) as usize;
                                Bytes::copy_from_slice(&scratch[s..s + e.size as usize])
                            })
                            .collect::<Vec<_>>()
                    })
            });
            match read {
                Ok(records) => {
                    for (e, bytes) in entries[i..j].iter().zip(records) {
                        out.push(self.check(self.shared.commit_log.decode_at(&bytes, e.position)));
                    }
                }
                Err(_) => {
                    // Fall back to one read per record so that one bad record spoils nothing else.
                    for e in &entries[i..j] {
                        out.push(
                            self.check(
                                self.shared
                                    .commit_log
                                    .read_record(e.position, e.size as usize),
                            ),
                        );
                    }
                }
            }
            i = j;
        }
        out
    }

    fn corrupt_at(&self, position: u64, source: crate::error::RecordError) -> BrokerError {
        let (segment, offset) = match self.shared.commit_log.segment_of(position) {
            Some(s) => (s.path.clone(), position - s.base),
            None => (self.shared.commit_log.dir().to_owned(), position),
        };
        BrokerError::Corrupt {
            segment,
            offset,
            source,
        }
    }

    /// Checks that a record read through the index of `queue` (of topic `topic`, when known)
    /// at `offset` is that record: an index entry pointing at another valid record is
    /// damage, reported and not served.
    pub fn check_placement(
        &self,
        topic: Option<&str>,
        queue: &ConsumeQueue,
        offset: u64,
        result: Result<DecodedRecord>,
    ) -> Result<DecodedRecord> {
        match result {
            Ok(rec)
                if rec.placement.queue_id != queue.queue_id
                    || rec.placement.queue_offset != offset
                    || topic.is_some_and(|t| system_topics::stored_topic(&rec.message) != t) =>
            {
                let position = rec.placement.position;
                self.check(Err(self.corrupt_at(
                    position,
                    crate::error::RecordError::Malformed(
                        "index entry points at a record of another topic, queue or offset",
                    ),
                )))
            }
            other => other,
        }
    }

    /// Finds in the log the record of `offset` of `queue` (of topic `topic`) when its index
    /// entry led elsewhere, and rewrites the entry: the log wins. A queue's records lie in log
    /// order, so the record is between the end of the one before it and the start of the one
    /// after it; records lie back to back, so the walk hops from one to the next.
    pub fn refind(&self, topic: &str, queue: &ConsumeQueue, offset: u64) -> Option<DecodedRecord> {
        /// The most log bytes one search walks.
        const MAX_WALK: u64 = 64 * 1024 * 1024;
        let log = &self.shared.commit_log;
        let prev = offset
            .checked_sub(1)
            .and_then(|o| queue.entry(o).ok().flatten())
            .filter(|e| !e.is_empty());
        // Without the record before it, the walk starts where the log does.
        let start = prev.map_or(log.min_position(), |e| e.position + u64::from(e.size));
        let next = queue
            .entry(offset + 1)
            .ok()
            .flatten()
            .filter(|e| !e.is_empty() && e.position >= start)
            .map(|e| e.position);
        let mut pos = start;
        let limit = next
            .unwrap_or_else(|| self.dispatched())
            .min(pos + MAX_WALK);
        while pos < limit {
            let seg = log.segment_of(pos)?;
            let seg_end = seg.base + seg.len().ok()?;
            if pos + record::PREFIX_LEN as u64 > seg_end {
                // The unwritten tail of a full segment: records go on in the next one.
                pos = seg.base + log.segment_size();
                continue;
            }
            let prefix = log.read(pos, record::PREFIX_LEN).ok()?;
            let len = record::peek_len(&prefix).ok()?;
            if len > self.record_limit() {
                return None;
            }
            let rec = log.read_record(pos, len).ok()?;
            if rec.placement.queue_id == queue.queue_id
                && rec.placement.queue_offset == offset
                && system_topics::stored_topic(&rec.message) == topic
            {
                let entry = CqEntry {
                    position: pos,
                    size: len as u32,
                    tag_code: tag_code(rec.message.tag.as_deref()),
                    store_timestamp: system_topics::index_time(
                        &rec.message,
                        rec.placement.store_timestamp,
                    ),
                };
                if let Err(e) = queue.put(offset, &[entry]) {
                    tracing::error!(error = %e, offset, "cannot rewrite a damaged index entry");
                }
                tracing::warn!(
                    topic,
                    queue = queue.queue_id,
                    offset,
                    position = pos,
                    "damaged index entry rebuilt from the commit log"
                );
                return Some(rec);
            }
            pos += len as u64;
        }
        None
    }

    pub(super) fn check(&self, result: Result<DecodedRecord>) -> Result<DecodedRecord> {
        if let Err(BrokerError::Corrupt {
            segment,
            offset,
            source,
        }) = &result
        {
            let mut list = self.corruptions.lock();
            if !list
                .iter()
                .any(|c| &c.segment == segment && c.offset == *offset)
            {
                tracing::error!(segment = %segment.display(), offset, error = %source, "corrupt record not served");
                list.push(Corruption {
                    segment: segment.clone(),
                    offset: *offset,
                    length: 0,
                    reason: source.to_string(),
                });
            }
        }
        result
    }
}

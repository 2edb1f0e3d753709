//! Recovery on open. The commit log is the truth; the indexes, the checkpoint and the topic
//! table are derived from it, so where they disagree with the log, the log wins.
//!
//! Normally only the records after the checkpoint are re-read: each is checked against its
//! index entry (rewritten if it differs) or appended. The whole log is re-read, and every index
//! entry checked against it, when the checkpoint is missing or damaged, when an index was
//! repaired at open or holds fewer entries than the checkpoint recorded, when its entries are
//! implausible (out of order, oversized, past the log), when the log ends below the
//! checkpoint, or when the scan from the checkpoint meets a record whose offset its index
//! cannot reach. A queue offset with no record in the log is damage only when records are
//! missing between two that are present: it is reported (file and offset), and an empty entry
//! keeps later offsets in place.

use std::collections::HashMap;
use std::sync::Arc;

use super::commit_log::{Corruption, RecoveryReport};
use super::consume_queue::{tag_code, ConsumeQueue, CqEntry};
use super::flush::Checkpoint;
use super::record::{DecodedRecord, HEADER_LEN};
use super::store::MessageStore;
use super::system_topics;
use crate::error::Result;

/// Entries written to an index in one call during recovery.
const WRITE_BATCH: usize = 64 * 1024;
/// Entries read back from an index at a time while checking.
const READ_BATCH: usize = 4096;

/// What recovery found and did.
#[derive(Debug)]
pub(crate) struct Recovered {
    /// Where the next record goes.
    pub end: u64,
    /// Damage found: reported, never served.
    pub corruptions: Vec<Corruption>,
    /// Whether the whole log was re-read.
    pub full_scan: bool,
}

/// Brings every index in line with the commit log. `repairs` lists what opening the indexes
/// already had to repair.
pub(crate) fn recover(
    store: &MessageStore,
    checkpoint: Option<Checkpoint>,
    repairs: Vec<String>,
) -> Result<Recovered> {
    let log = store.commit_log();
    let log_end = log
        .last_segment()
        .map(|s| s.base + s.len().unwrap_or(0))
        .unwrap_or(0);
    let mut corruptions = log.missing_segments();
    let mut why_full: Vec<String> = repairs;
    if !corruptions.is_empty() {
        why_full.push("commit-log segments are missing".into());
    }
    let durable = checkpoint.as_ref().map_or(0, |c| c.position);
    let log_start = checkpoint.as_ref().map_or(0, |c| c.log_start);
    if checkpoint.is_some() && log.min_position() > log_start {
        // Segments below the oldest one left were not deleted by retention.
        let segment = log.dir().join(format!("{log_start:020}"));
        let reason = format!(
            "commit-log segments from position {log_start} to {} are missing: their records are lost",
            log.min_position()
        );
        tracing::error!(segment = %segment.display(), %reason, "commit-log damage");
        corruptions.push(Corruption {
            segment,
            offset: 0,
            length: log.min_position() - log_start,
            reason,
        });
    }
    match &checkpoint {
        None => why_full.push("no valid checkpoint".into()),
        Some(cp) => {
            if cp.position > log_end {
                let seg = log.last_segment();
                let (segment, offset) = seg.map_or((log.dir().to_owned(), log_end), |s| {
                    (s.path.clone(), log_end - s.base)
                });
                let reason = format!(
                    "the commit log ends at {log_end}, below the checkpoint at {}: records written and synced were lost",
                    cp.position
                );
                tracing::error!(segment = %segment.display(), offset, %reason, "commit log cut below its checkpoint");
                corruptions.push(Corruption {
                    segment,
                    offset,
                    length: cp.position - log_end,
                    reason,
                });
                why_full.push("the log ends below the checkpoint".into());
            }
            for topic in store.topics() {
                let recorded = cp.queues.get(&*topic.name);
                for cq in &topic.queues {
                    let [min, max] = recorded
                        .and_then(|q| q.get(cq.queue_id as usize))
                        .copied()
                        .unwrap_or([0, 0]);
                    if cq.max_offset() < max || (cq.min_offset() > min && max > min) {
                        why_full.push(format!(
                            "index {} holds offsets {} to {}, the checkpoint recorded {min} to {max}",
                            cq.dir().display(),
                            cq.min_offset(),
                            cq.max_offset()
                        ));
                    }
                }
            }
        }
    }
    if log.min_position() == 0 {
        // Nothing was ever deleted, so every index must start at offset 0.
        for topic in store.topics() {
            for cq in &topic.queues {
                if cq.min_offset() > 0 {
                    why_full.push(format!(
                        "index {} starts at offset {} but no segment was ever deleted",
                        cq.dir().display(),
                        cq.min_offset()
                    ));
                }
            }
        }
    }
    if why_full.is_empty() {
        let limit = store.record_limit();
        for topic in store.topics() {
            for cq in &topic.queues {
                if let Some(problem) = implausible(cq, log_end, limit)? {
                    why_full.push(problem);
                }
            }
        }
    }

    if why_full.is_empty() {
        let from = durable.max(log.min_position());
        let mut scan = Scan::new(store, from, durable, false);
        let (report, end) = scan.run()?;
        if !scan.rescan {
            let end = scan.finish(end)?;
            corruptions.extend(scan.corruptions);
            corruptions.extend(report.corruptions);
            return Ok(Recovered {
                end,
                corruptions,
                full_scan: false,
            });
        }
        why_full.push(scan.why_rescan);
    }
    if log_end == log.min_position() {
        // A new data directory: nothing to re-index, nothing to warn about.
        tracing::debug!(reasons = ?why_full, "re-indexing the whole (empty) commit log");
    } else {
        tracing::warn!(reasons = ?why_full, "re-indexing the whole commit log");
    }
    let mut scan = Scan::new(store, log.min_position(), durable, true);
    let (report, end) = scan.run()?;
    let end = scan.finish(end)?;
    corruptions.extend(scan.corruptions);
    corruptions.extend(report.corruptions);
    Ok(Recovered {
        end,
        corruptions,
        full_scan: true,
    })
}

/// Why an index cannot be trusted without re-reading the log, if it cannot: entries out of
/// order, overlapping, oversized or pointing past the end of the log.
fn implausible(cq: &ConsumeQueue, log_end: u64, limit: usize) -> Result<Option<String>> {
    let mut at = cq.min_offset();
    let mut prev_end = 0u64;
    while at < cq.max_offset() {
        let entries = cq.read(at, READ_BATCH)?;
        if entries.is_empty() {
            return Ok(Some(format!(
                "index {} cannot be read at offset {at}",
                cq.dir().display()
            )));
        }
        for (i, e) in entries.iter().enumerate() {
            if *e == CqEntry::EMPTY {
                continue;
            }
            let end = e.position.checked_add(u64::from(e.size));
            let bad = (e.size as usize) < HEADER_LEN
                || e.size as usize > limit
                || end.is_none_or(|end| end > log_end)
                || e.position < prev_end;
            if bad {
                return Ok(Some(format!(
                    "index {} has an implausible entry at offset {} ({e:?})",
                    cq.dir().display(),
                    at + i as u64
                )));
            }
            prev_end = e.position + u64::from(e.size);
        }
        at += entries.len() as u64;
    }
    Ok(None)
}

/// One queue during a scan.
struct QueueScan {
    cq: Arc<ConsumeQueue>,
    /// The index's entry count before recovery touched it.
    original_max: u64,
    /// One past the last offset an entry was kept or written for.
    end: u64,
    /// The last offset a record was found for.
    last: Option<u64>,
    /// Entries to write, in offset order.
    writes: Vec<(u64, CqEntry)>,
    /// Existing entries read back for comparison: `(first offset, entries)`.
    cached: (u64, Vec<CqEntry>),
}

impl QueueScan {
    fn new(cq: Arc<ConsumeQueue>) -> Self {
        let max = cq.max_offset();
        QueueScan {
            cq,
            original_max: max,
            end: max,
            last: None,
            writes: Vec::new(),
            cached: (0, Vec::new()),
        }
    }

    /// The existing entry at `offset` (below `original_max`).
    fn existing(&mut self, offset: u64) -> Result<Option<CqEntry>> {
        let (first, entries) = &self.cached;
        if offset < *first || offset >= first + entries.len() as u64 {
            let entries = self.cq.read(offset, READ_BATCH)?;
            self.cached = (offset, entries);
        }
        let (first, entries) = &self.cached;
        Ok(offset
            .checked_sub(*first)
            .and_then(|i| entries.get(i as usize))
            .copied())
    }

    fn write(&mut self, offset: u64, entry: CqEntry) -> Result<()> {
        self.writes.push((offset, entry));
        self.end = self.end.max(offset + 1);
        if self.writes.len() >= WRITE_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the collected entries, one call per contiguous run.
    fn flush(&mut self) -> Result<()> {
        let mut i = 0;
        let mut run = Vec::new();
        while i < self.writes.len() {
            let start = self.writes[i].0;
            run.clear();
            while i < self.writes.len() && self.writes[i].0 == start + run.len() as u64 {
                run.push(self.writes[i].1);
                i += 1;
            }
            self.cq.put(start, &run)?;
        }
        self.writes.clear();
        self.cached = (0, Vec::new());
        Ok(())
    }
}

/// One pass over the log.
struct Scan<'a> {
    store: &'a MessageStore,
    from: u64,
    /// The checkpoint position: records below it were synced.
    durable: u64,
    full: bool,
    queues: HashMap<(Arc<str>, u32), QueueScan>,
    corruptions: Vec<Corruption>,
    /// Set when a scan from the checkpoint finds the index cannot be trusted.
    rescan: bool,
    why_rescan: String,
}

impl<'a> Scan<'a> {
    fn new(store: &'a MessageStore, from: u64, durable: u64, full: bool) -> Self {
        Scan {
            store,
            from,
            durable,
            full,
            queues: HashMap::new(),
            corruptions: Vec::new(),
            rescan: false,
            why_rescan: String::new(),
        }
    }

    fn run(&mut self) -> Result<(RecoveryReport, u64)> {
        let log = self.store.commit_log();
        log.recover(self.from, |rec, size| {
            if self.rescan {
                return Ok(());
            }
            self.visit(rec, size)
        })
    }

    fn visit(&mut self, rec: &DecodedRecord, size: u32) -> Result<()> {
        let name = system_topics::stored_topic(&rec.message);
        let queue_id = rec.placement.queue_id;
        let Some(cq) = self.store.queue_for_recovery(name, queue_id)? else {
            self.report(
                rec.placement.position,
                format!("record of topic {name:?} names queue {queue_id}, beyond any topic's 1,024 queues; not indexed"),
            );
            return Ok(());
        };
        let key: (Arc<str>, u32) = (name.into(), queue_id);
        let full = self.full;
        let q = self
            .queues
            .entry(key)
            .or_insert_with(|| QueueScan::new(cq.clone()));
        if !Arc::ptr_eq(&q.cq, &cq) {
            // The topic was reopened with more queues: start over on the new index.
            *q = QueueScan::new(cq);
        }
        let off = rec.placement.queue_offset;
        let entry = CqEntry {
            position: rec.placement.position,
            size,
            tag_code: tag_code(rec.message.tag.as_deref()),
            store_timestamp: system_topics::index_time(&rec.message, rec.placement.store_timestamp),
        };
        let expected = match q.last {
            Some(last) => last + 1,
            None if off > q.end && !full => {
                let why = format!(
                    "index {} ends at {} but the log holds offset {off} after the checkpoint",
                    q.cq.dir().display(),
                    q.end
                );
                self.rescan = true;
                self.why_rescan = why;
                return Ok(());
            }
            // Offsets below the first record found lie in deleted segments, or were never
            // written when nothing was ever deleted.
            None => off.min(q.end),
        };
        let first_record = q.last.is_none();
        if off < expected {
            let position = rec.placement.position;
            self.report(
                position,
                format!("record repeats offset {off} of queue {queue_id} of {name:?}; the earlier record is kept"),
            );
            return Ok(());
        }
        if off > expected {
            // Records between two present ones are missing: damage.
            let mut replaced = 0;
            for o in expected..off {
                if o < q.original_max && q.existing(o)?.is_some_and(|e| !e.is_empty()) {
                    replaced += 1;
                }
                q.write(o, CqEntry::EMPTY)?;
            }
            if !first_record || self.store.commit_log().min_position() == 0 {
                self.report(
                    rec.placement.position,
                    format!(
                        "queue {queue_id} of {name:?}: offsets {expected} to {} have no record in the log (lost to damage; {replaced} index entries pointed at nothing)",
                        off - 1
                    ),
                );
            }
        }
        let q = self
            .queues
            .get_mut(&(name.into(), queue_id))
            .ok_or(crate::error::BrokerError::Closed)?;
        if off < q.original_max {
            if q.existing(off)? != Some(entry) {
                q.write(off, entry)?;
            }
        } else {
            q.write(off, entry)?;
        }
        q.last = Some(off);
        Ok(())
    }

    fn report(&mut self, position: u64, reason: String) {
        let (segment, offset) = match self.store.commit_log().segment_of(position) {
            Some(s) => (s.path.clone(), position - s.base),
            None => (self.store.commit_log().dir().to_owned(), position),
        };
        tracing::error!(segment = %segment.display(), offset, %reason, "commit-log damage found by recovery");
        self.corruptions.push(Corruption {
            segment,
            offset,
            length: 0,
            reason,
        });
    }

    /// Writes what the scan decided and drops entries no record backs. Returns the log end.
    fn finish(&mut self, end: u64) -> Result<u64> {
        for topic in self.store.topics() {
            for cq in &topic.queues {
                let key = (topic.name.clone(), cq.queue_id);
                let mut q = match self.queues.remove(&key) {
                    Some(q) if Arc::ptr_eq(&q.cq, cq) => q,
                    _ => QueueScan::new(cq.clone()),
                };
                q.flush()?;
                // Entries past the last record found point at nothing the log holds.
                let keep = match q.last {
                    Some(last) => last + 1,
                    None => {
                        let mut keep = cq.max_offset();
                        while keep > cq.min_offset() {
                            match cq.entry(keep - 1)? {
                                Some(e)
                                    if !e.is_empty()
                                        && (e.position >= self.from
                                            || e.position + u64::from(e.size) > end) =>
                                {
                                    keep -= 1
                                }
                                _ => break,
                            }
                        }
                        keep
                    }
                };
                let mut lost = 0u64;
                let mut first_lost = None;
                for o in keep..cq.max_offset() {
                    if let Some(e) = cq.entry(o)? {
                        if !e.is_empty() && e.position < self.durable {
                            lost += 1;
                            first_lost.get_or_insert(e.position);
                        }
                    }
                }
                if let Some(position) = first_lost {
                    self.report(
                        position,
                        format!(
                            "queue {} of {:?}: {lost} synced messages from offset {keep} on are missing from the log",
                            cq.queue_id, topic.name
                        ),
                    );
                }
                cq.truncate(keep)?;
                if self.full {
                    cq.sync(true)?;
                }
            }
        }
        Ok(end)
    }
}

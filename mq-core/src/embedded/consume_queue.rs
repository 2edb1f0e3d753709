//! The consume queue: per (topic, queue), an index of fixed-size entries pointing into the
//! commit log, so that consumers read a queue sequentially and filter by tag without reading
//! message bodies.
//!
//! An entry is 24 bytes: commit-log position (u64), record size (u32), tag code (u32: 0 for no
//! tag, else CRC32C of the tag, never 0) and store time (u64, ms). Entries live in segment files
//! of a fixed number of entries, named after the queue offset of their first entry.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::error::{BrokerError, Result};

/// Size of one entry.
pub(crate) const ENTRY_LEN: usize = 24;

/// One index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CqEntry {
    pub position: u64,
    pub size: u32,
    pub tag_code: u32,
    pub store_timestamp: u64,
}

impl CqEntry {
    /// The entry of a record lost to damage: it keeps later offsets in place and is skipped.
    pub const EMPTY: CqEntry = CqEntry {
        position: 0,
        size: 0,
        tag_code: 0,
        store_timestamp: 0,
    };

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.position.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.tag_code.to_le_bytes());
        out.extend_from_slice(&self.store_timestamp.to_le_bytes());
    }

    /// Whether this is the entry of a record lost to damage (or never written: zeros).
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    fn decode(b: &[u8]) -> Self {
        let mut p = [0u8; 8];
        p.copy_from_slice(&b[0..8]);
        let mut s = [0u8; 4];
        s.copy_from_slice(&b[8..12]);
        let mut t = [0u8; 4];
        t.copy_from_slice(&b[12..16]);
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&b[16..24]);
        CqEntry {
            position: u64::from_le_bytes(p),
            size: u32::from_le_bytes(s),
            tag_code: u32::from_le_bytes(t),
            store_timestamp: u64::from_le_bytes(ts),
        }
    }
}

/// The tag code stored in an entry.
pub(crate) fn tag_code(tag: Option<&str>) -> u32 {
    match tag {
        None => 0,
        Some(t) => crc32c::crc32c(t.as_bytes()).max(1),
    }
}

#[derive(Debug)]
struct CqSegment {
    first: u64,
    path: PathBuf,
    file: File,
}

/// The index of one queue.
#[derive(Debug)]
pub(crate) struct ConsumeQueue {
    pub queue_id: u32,
    dir: PathBuf,
    per_segment: u64,
    segments: RwLock<BTreeMap<u64, Arc<CqSegment>>>,
    min_offset: AtomicU64,
    max_offset: AtomicU64,
    /// Segments written since the last sync: an index that moved on to a new segment must
    /// still sync the end of the one before.
    dirty: parking_lot::Mutex<Vec<Arc<CqSegment>>>,
}

impl ConsumeQueue {
    /// Opens (or creates) the index in `dir`, dropping a partly written last entry.
    ///
    /// The index is derived data, so its damage is repaired here rather than trusted: a
    /// segment longer than its capacity is cut to it, and everything after the first missing
    /// or short segment is dropped (recovery rebuilds it from the commit log). What was
    /// repaired is returned, so that recovery knows to rescan the whole log.
    pub fn open(queue_id: u32, dir: &Path, per_segment: u64) -> Result<(Self, Vec<String>)> {
        fs::create_dir_all(dir).map_err(|e| BrokerError::io("create directory", dir, e))?;
        let mut found = BTreeMap::new();
        let mut damage = Vec::new();
        let entries = fs::read_dir(dir).map_err(|e| BrokerError::io("list directory", dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| BrokerError::io("list directory", dir, e))?;
            let Some(first) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if first % per_segment != 0 {
                damage.push(format!(
                    "index segment {} does not start at a segment boundary; removed",
                    entry.path().display()
                ));
                remove(&entry.path())?;
                continue;
            }
            found.insert(first, Arc::new(open_segment(dir, first)?));
        }
        let capacity = per_segment * ENTRY_LEN as u64;
        let mut segments = BTreeMap::new();
        let mut expected = None;
        let mut max = None;
        for (first, seg) in found {
            if max.is_some() || expected.is_some_and(|e| e != first) {
                // After a hole nothing is trusted: recovery re-indexes it from the log.
                damage.push(format!(
                    "index segment {} follows a missing or short segment; removed",
                    seg.path.display()
                ));
                remove(&seg.path)?;
                continue;
            }
            let len = file_len(&seg)?;
            let whole = (len - len % ENTRY_LEN as u64).min(capacity);
            if len > capacity {
                damage.push(format!(
                    "index segment {} is longer than its {per_segment} entries; cut",
                    seg.path.display()
                ));
            }
            if whole != len {
                super::io::set_len(&seg.file, &seg.path, whole)
                    .map_err(|e| BrokerError::io("truncate consume queue", &seg.path, e))?;
            }
            if whole < capacity {
                // Only the last segment may be short; if another follows, it is dropped above.
                max = Some(first + whole / ENTRY_LEN as u64);
            }
            expected = Some(first + per_segment);
            segments.insert(first, seg);
        }
        if segments.is_empty() {
            segments.insert(0, Arc::new(open_segment(dir, 0)?));
        }
        let min = segments.keys().next().copied().unwrap_or(0);
        let max = max.or(expected).unwrap_or(min);
        Ok((
            ConsumeQueue {
                queue_id,
                dir: dir.to_owned(),
                per_segment,
                segments: RwLock::new(segments),
                min_offset: AtomicU64::new(min),
                max_offset: AtomicU64::new(max),
                dirty: parking_lot::Mutex::new(Vec::new()),
            },
            damage,
        ))
    }

    /// The directory of this index.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The offset of the oldest entry still stored.
    pub fn min_offset(&self) -> u64 {
        self.min_offset.load(Ordering::Acquire)
    }

    /// The offset the next entry gets (one past the newest).
    pub fn max_offset(&self) -> u64 {
        self.max_offset.load(Ordering::Acquire)
    }

    /// Appends encoded entries starting at [`max_offset`](Self::max_offset). Writer only.
    pub fn append(&self, encoded: &[u8]) -> Result<()> {
        let end = self.write_encoded(self.max_offset(), encoded)?;
        self.max_offset.store(end, Ordering::Release);
        Ok(())
    }

    /// Writes encoded entries from `offset` on, segment by segment. Returns the offset after
    /// the last one.
    fn write_encoded(&self, mut offset: u64, mut encoded: &[u8]) -> Result<u64> {
        while !encoded.is_empty() {
            let seg_first = offset - offset % self.per_segment;
            let seg = self.segment_for_write(seg_first)?;
            let room = (seg_first + self.per_segment - offset) as usize * ENTRY_LEN;
            let n = room.min(encoded.len());
            super::io::write_at(
                &seg.file,
                &seg.path,
                &encoded[..n],
                (offset - seg_first) * ENTRY_LEN as u64,
            )
            .map_err(|e| BrokerError::io("write consume queue", &seg.path, e))?;
            // Marked after the write: a sync that takes the mark must find the bytes there.
            self.mark_dirty(&seg);
            encoded = &encoded[n..];
            offset += (n / ENTRY_LEN) as u64;
        }
        Ok(offset)
    }

    fn segment_for_write(&self, first: u64) -> Result<Arc<CqSegment>> {
        let existing = self.segments.read().get(&first).cloned();
        let seg = match existing {
            Some(seg) => seg,
            None => {
                let seg = Arc::new(open_segment(&self.dir, first)?);
                self.segments.write().insert(first, seg.clone());
                seg
            }
        };
        Ok(seg)
    }

    /// Records that `seg` holds writes the next [`sync`](Self::sync) must force to disk.
    fn mark_dirty(&self, seg: &Arc<CqSegment>) {
        let mut dirty = self.dirty.lock();
        if !dirty.iter().any(|d| Arc::ptr_eq(d, seg)) {
            dirty.push(seg.clone());
        }
    }

    /// Up to `max` entries from `from` (fewer at the end or at a segment boundary).
    pub fn read(&self, from: u64, max: usize) -> Result<Vec<CqEntry>> {
        let end = self.max_offset();
        if from >= end || max == 0 {
            return Ok(Vec::new());
        }
        let seg = {
            let segments = self.segments.read();
            match segments.range(..=from).next_back() {
                Some((_, s)) => s.clone(),
                None => return Ok(Vec::new()),
            }
        };
        let seg_end = seg.first + self.per_segment;
        if from >= seg_end {
            // A missing segment (deleted under a running broker): nothing readable here.
            return Err(BrokerError::io(
                "read consume queue",
                &self.dir,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("no index segment holds offset {from}"),
                ),
            ));
        }
        let count = (end.min(seg_end) - from).min(max as u64) as usize;
        let mut buf = vec![0u8; count * ENTRY_LEN];
        let at = (from - seg.first) * ENTRY_LEN as u64;
        // A file cut under a running broker reads short: serve what is there.
        let mut filled = 0;
        while filled < buf.len() {
            match seg.file.read_at(&mut buf[filled..], at + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(BrokerError::io("read consume queue", &seg.path, e)),
            }
        }
        buf.truncate(filled - filled % ENTRY_LEN);
        Ok(buf.chunks_exact(ENTRY_LEN).map(CqEntry::decode).collect())
    }

    /// Writes `entries` from `offset` on, which must not lie past [`max_offset`]
    /// (Self::max_offset): recovery uses it to replace entries the commit log contradicts, to
    /// restore entries below the oldest segment and to append; readers use it to replace a
    /// damaged entry below the end (the writer only ever appends at the end).
    pub fn put(&self, offset: u64, entries: &[CqEntry]) -> Result<()> {
        if offset > self.max_offset() {
            return Err(BrokerError::io(
                "write consume queue",
                &self.dir,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "offset {offset} lies past the end {} of the index",
                        self.max_offset()
                    ),
                ),
            ));
        }
        let mut encoded = Vec::with_capacity(entries.len() * ENTRY_LEN);
        for e in entries {
            e.encode(&mut encoded);
        }
        let at = self.write_encoded(offset, &encoded)?;
        let first = offset - offset % self.per_segment;
        if first < self.min_offset() {
            // Entries of a new first segment before `offset` read as zeros: empty entries.
            self.min_offset.store(first, Ordering::Release);
        }
        if at > self.max_offset() {
            self.max_offset.store(at, Ordering::Release);
        }
        Ok(())
    }

    /// The entry at `offset`, if stored.
    pub fn entry(&self, offset: u64) -> Result<Option<CqEntry>> {
        if offset < self.min_offset() {
            return Ok(None);
        }
        Ok(self.read(offset, 1)?.into_iter().next())
    }

    /// The first offset whose message was stored at or after `timestamp` (ms).
    pub fn offset_for_timestamp(&self, timestamp: u64) -> Result<u64> {
        let (mut lo, mut hi) = (self.min_offset(), self.max_offset());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.entry(mid)? {
                Some(e) if e.store_timestamp < timestamp => lo = mid + 1,
                _ => hi = mid,
            }
        }
        Ok(lo)
    }

    /// Drops entries from `offset` on (recovery after the commit log was cut).
    pub fn truncate(&self, offset: u64) -> Result<()> {
        if offset >= self.max_offset() {
            return Ok(());
        }
        let mut segments = self.segments.write();
        let doomed: Vec<u64> = segments.range(offset + 1..).map(|(k, _)| *k).collect();
        for first in doomed {
            if let Some(seg) = segments.remove(&first) {
                remove(&seg.path)?;
            }
        }
        if let Some((_, seg)) = segments.range(..=offset).next_back() {
            let len = (offset - seg.first) * ENTRY_LEN as u64;
            super::io::set_len(&seg.file, &seg.path, len)
                .map_err(|e| BrokerError::io("truncate consume queue", &seg.path, e))?;
        }
        self.max_offset.store(offset, Ordering::Release);
        Ok(())
    }

    /// Forces the index files to disk: the last segment, or every one after recovery
    /// rewrote entries.
    pub fn sync(&self, all: bool) -> Result<()> {
        let mut segments = std::mem::take(&mut *self.dirty.lock());
        if all {
            segments = self.segments.read().values().cloned().collect();
        }
        for seg in segments {
            super::io::sync(&seg.file, &seg.path)
                .map_err(|e| BrokerError::io("sync consume queue", &seg.path, e))?;
        }
        Ok(())
    }

    /// Deletes whole index segments whose every entry points below `min_position`; never the
    /// last segment. Returns the new minimum offset.
    pub fn remove_below(&self, min_position: u64) -> Result<u64> {
        loop {
            let (first, seg, is_last) = {
                let segments = self.segments.read();
                let Some((first, seg)) = segments.iter().next() else {
                    break;
                };
                (*first, seg.clone(), segments.len() == 1)
            };
            if is_last {
                break;
            }
            let last_offset = first + self.per_segment - 1;
            let Some(last) = self.read(last_offset, 1)?.into_iter().next() else {
                break;
            };
            if last.position + u64::from(last.size) > min_position {
                break;
            }
            self.segments.write().remove(&first);
            remove(&seg.path)?;
            self.min_offset
                .store(first + self.per_segment, Ordering::Release);
        }
        Ok(self.min_offset())
    }
}

fn open_segment(dir: &Path, first: u64) -> Result<CqSegment> {
    let path = dir.join(format!("{first:020}"));
    let file = super::io::open(&path, true)
        .map_err(|e| BrokerError::io("open consume queue", &path, e))?;
    Ok(CqSegment { first, path, file })
}

fn remove(path: &Path) -> Result<()> {
    super::io::remove(path).map_err(|e| BrokerError::io("delete consume queue", path, e))
}

fn file_len(seg: &CqSegment) -> Result<u64> {
    seg.file
        .metadata()
        .map(|m| m.len())
        .map_err(|e| BrokerError::io("stat consume queue", &seg.path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    fn entry(i: u64) -> CqEntry {
        CqEntry {
            position: i * 100,
            size: 100,
            tag_code: tag_code(Some("t")),
            store_timestamp: 1000 + i,
        }
    }

    #[test]
    fn appends_across_segments_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let (cq, _) = ConsumeQueue::open(0, dir.path(), 4).unwrap();
        let mut buf = Vec::new();
        for i in 0..10 {
            entry(i).encode(&mut buf);
        }
        cq.append(&buf).unwrap();
        assert_eq!(cq.max_offset(), 10);
        let mut got = Vec::new();
        let mut from = 0;
        while from < 10 {
            let batch = cq.read(from, 100).unwrap();
            assert!(!batch.is_empty());
            from += batch.len() as u64;
            got.extend(batch);
        }
        assert_eq!(got, (0..10).map(entry).collect::<Vec<_>>());
        assert_eq!(cq.offset_for_timestamp(1005).unwrap(), 5);
        assert_eq!(cq.offset_for_timestamp(0).unwrap(), 0);
        assert_eq!(cq.offset_for_timestamp(9999).unwrap(), 10);

        drop(cq);
        let (cq, _) = ConsumeQueue::open(0, dir.path(), 4).unwrap();
        assert_eq!(cq.max_offset(), 10);
        cq.truncate(5).unwrap();
        assert_eq!(cq.max_offset(), 5);
        assert_eq!(cq.read(3, 10).unwrap().len(), 1);
        assert_eq!(cq.read(4, 10).unwrap(), vec![entry(4)]);
        assert_eq!(cq.remove_below(450).unwrap(), 4);
        assert_eq!(cq.entry(2).unwrap(), None);
    }

    #[test]
    fn partial_entry_is_dropped_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let (cq, _) = ConsumeQueue::open(0, dir.path(), 100).unwrap();
        let mut buf = Vec::new();
        entry(0).encode(&mut buf);
        entry(1).encode(&mut buf);
        buf.truncate(ENTRY_LEN + 7);
        cq.append(&buf[..ENTRY_LEN]).unwrap();
        let path = dir.path().join(format!("{:020}", 0));
        let f = OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(&buf[ENTRY_LEN..], ENTRY_LEN as u64).unwrap();
        drop(cq);
        let (cq, _) = ConsumeQueue::open(0, dir.path(), 100).unwrap();
        assert_eq!(cq.max_offset(), 1);
    }

    fn append(cq: &ConsumeQueue, range: std::ops::Range<u64>) {
        let mut buf = Vec::new();
        for i in range {
            entry(i).encode(&mut buf);
        }
        cq.append(&buf).unwrap();
    }

    #[test]
    fn damaged_segments_are_cut_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (cq, damage) = ConsumeQueue::open(0, dir.path(), 4).unwrap();
        assert!(damage.is_empty());
        append(&cq, 0..14);
        drop(cq);
        let seg = |first: u64| dir.path().join(format!("{first:020}"));

        // A short middle segment: everything after it goes, the rest stays readable.
        let f = OpenOptions::new().write(true).open(seg(4)).unwrap();
        f.set_len(2 * ENTRY_LEN as u64).unwrap();
        drop(f);
        let (cq, damage) = ConsumeQueue::open(0, dir.path(), 4).unwrap();
        assert_eq!(damage.len(), 2, "{damage:?}");
        assert_eq!(cq.max_offset(), 6);
        assert_eq!(cq.read(4, 10).unwrap(), vec![entry(4), entry(5)]);
        assert!(!seg(8).exists() && !seg(12).exists());
        append(&cq, 6..14);
        drop(cq);

        // A segment longer than its capacity is cut to it.
        let f = OpenOptions::new().write(true).open(seg(8)).unwrap();
        f.write_all_at(&[7u8; ENTRY_LEN * 3], 4 * ENTRY_LEN as u64)
            .unwrap();
        drop(f);
        let (cq, damage) = ConsumeQueue::open(0, dir.path(), 4).unwrap();
        assert_eq!(damage.len(), 1, "{damage:?}");
        assert_eq!(cq.max_offset(), 14);
        assert_eq!(cq.read(8, 10).unwrap().len(), 4);
        drop(cq);

        // A missing middle segment.
        std::fs::remove_file(seg(4)).unwrap();
        let (cq, damage) = ConsumeQueue::open(0, dir.path(), 4).unwrap();
        assert_eq!(damage.len(), 2, "{damage:?}");
        assert_eq!(cq.max_offset(), 4);
    }

    #[test]
    fn put_rewrites_entries_and_restores_a_lost_first_segment() {
        let dir = tempfile::tempdir().unwrap();
        let (cq, _) = ConsumeQueue::open(0, dir.path(), 4).unwrap();
        append(&cq, 0..10);
        drop(cq);
        std::fs::remove_file(dir.path().join(format!("{:020}", 0))).unwrap();
        let (cq, damage) = ConsumeQueue::open(0, dir.path(), 4).unwrap();
        assert!(
            damage.is_empty(),
            "a missing first segment looks like retention"
        );
        assert_eq!((cq.min_offset(), cq.max_offset()), (4, 10));
        cq.put(1, &[entry(1), entry(2), entry(3)]).unwrap();
        assert_eq!(cq.min_offset(), 0);
        assert_eq!(cq.read(0, 10).unwrap()[0], CqEntry::EMPTY);
        assert_eq!(cq.read(1, 3).unwrap(), vec![entry(1), entry(2), entry(3)]);
        cq.put(10, &[entry(10)]).unwrap();
        assert_eq!(cq.max_offset(), 11);
        assert!(cq.put(12, &[entry(12)]).is_err());
    }
}

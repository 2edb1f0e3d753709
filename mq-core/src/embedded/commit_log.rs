//! The commit log: every message of every topic, appended to fixed-size segment files.
//!
//! A segment is named after the commit-log position of its first byte (20 digits, as
//! RocketMQ names them). Records never span segments: a record that does not fit starts the
//! next one, and the unused tail of a full segment is simply not written, so a segment's data
//! ends at its file length.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;

use super::record::{self, DecodedRecord};
use crate::error::{BrokerError, RecordError, Result};

/// One segment file.
#[derive(Debug)]
pub(crate) struct Segment {
    pub base: u64,
    pub path: PathBuf,
    pub file: File,
}

impl Segment {
    fn open(dir: &Path, base: u64, create: bool) -> Result<Self> {
        let path = dir.join(format!("{base:020}"));
        let file = super::io::open(&path, create)
            .map_err(|e| BrokerError::io("open segment", &path, e))?;
        Ok(Segment { base, path, file })
    }

    /// The file's length: where its data ends.
    pub fn len(&self) -> Result<u64> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| BrokerError::io("stat segment", &self.path, e))
    }
}

/// A damaged stretch found while recovering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    /// The segment file.
    pub segment: PathBuf,
    /// Byte offset inside the segment where the bad bytes start.
    pub offset: u64,
    /// How many bytes were skipped.
    pub length: u64,
    /// What was wrong.
    pub reason: String,
}

/// What recovery found.
#[derive(Debug, Clone, Default)]
pub(crate) struct RecoveryReport {
    /// Bytes cut from the end of the last segment (a torn last write).
    pub truncated_bytes: u64,
    /// Damaged stretches in the middle of the log, skipped.
    pub corruptions: Vec<Corruption>,
    /// Records read during recovery.
    pub records: u64,
}

impl RecoveryReport {
    /// Logs and records a damaged stretch.
    fn damage(&mut self, seg: &Segment, offset: u64, length: u64, reason: String, action: &str) {
        tracing::error!(
            segment = %seg.path.display(),
            offset,
            length,
            %reason,
            "corrupt bytes in the commit log; {action}"
        );
        self.corruptions.push(Corruption {
            segment: seg.path.clone(),
            offset,
            length,
            reason,
        });
    }
}

/// Readable view of the commit log, shared by the writer and every reader.
#[derive(Debug)]
pub(crate) struct CommitLog {
    dir: PathBuf,
    segment_size: u64,
    segments: RwLock<BTreeMap<u64, Arc<Segment>>>,
}

impl CommitLog {
    /// Opens (or creates) the commit log in `dir`.
    pub fn open(dir: &Path, segment_size: u64) -> Result<Self> {
        fs::create_dir_all(dir).map_err(|e| BrokerError::io("create directory", dir, e))?;
        let mut segments = BTreeMap::new();
        let entries = fs::read_dir(dir).map_err(|e| BrokerError::io("list directory", dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| BrokerError::io("list directory", dir, e))?;
            let name = entry.file_name();
            let Some(base) = name.to_str().and_then(|n| n.parse::<u64>().ok()) else {
                continue;
            };
            segments.insert(base, Arc::new(Segment::open(dir, base, false)?));
        }
        if segments.is_empty() {
            segments.insert(0, Arc::new(Segment::open(dir, 0, true)?));
        }
        Ok(CommitLog {
            dir: dir.to_owned(),
            segment_size,
            segments: RwLock::new(segments),
        })
    }

    /// The directory of the segment files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Segment files missing between the oldest and the newest (retention only ever deletes
    /// the oldest): each is reported under its own name.
    pub fn missing_segments(&self) -> Vec<Corruption> {
        let bases: Vec<u64> = self.segments.read().keys().copied().collect();
        let mut out = Vec::new();
        for pair in bases.windows(2) {
            let mut base = pair[0] + self.segment_size;
            while base < pair[1] {
                let segment = self.dir.join(format!("{base:020}"));
                let reason = "commit-log segment file missing: its records are lost".to_owned();
                tracing::error!(segment = %segment.display(), %reason, "commit-log damage");
                out.push(Corruption {
                    segment,
                    offset: 0,
                    length: self.segment_size.min(pair[1] - base),
                    reason,
                });
                base += self.segment_size;
            }
        }
        out
    }

    /// The configured segment size.
    pub fn segment_size(&self) -> u64 {
        self.segment_size
    }

    /// The segment holding `position`.
    pub fn segment_of(&self, position: u64) -> Option<Arc<Segment>> {
        self.segments
            .read()
            .range(..=position)
            .next_back()
            .map(|(_, s)| s.clone())
    }

    /// The last segment (the one being written).
    pub fn last_segment(&self) -> Option<Arc<Segment>> {
        self.segments.read().values().next_back().cloned()
    }

    /// All segments, oldest first.
    pub fn segments(&self) -> Vec<Arc<Segment>> {
        self.segments.read().values().cloned().collect()
    }

    /// The position of the oldest byte still stored.
    pub fn min_position(&self) -> u64 {
        self.segments.read().keys().next().copied().unwrap_or(0)
    }

    /// Creates the segment starting at `base`.
    pub fn roll(&self, base: u64) -> Result<Arc<Segment>> {
        let seg = Arc::new(Segment::open(&self.dir, base, true)?);
        self.segments.write().insert(base, seg.clone());
        Ok(seg)
    }

    /// Removes a segment file (retention). Never the last one.
    pub fn remove(&self, base: u64) -> Result<bool> {
        let seg = {
            let mut segments = self.segments.write();
            if segments.keys().next_back() == Some(&base) {
                return Ok(false);
            }
            segments.remove(&base)
        };
        if let Some(seg) = seg {
            super::io::remove(&seg.path)
                .map_err(|e| BrokerError::io("delete segment", &seg.path, e))?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Reads `len` bytes at `position`; they must lie in one segment.
    pub fn read(&self, position: u64, len: usize) -> Result<Bytes> {
        let mut buf = vec![0u8; len];
        self.read_into(position, &mut buf)?;
        Ok(Bytes::from(buf))
    }

    /// Fills `buf` from `position`; the bytes must lie in one segment.
    pub fn read_into(&self, position: u64, buf: &mut [u8]) -> Result<()> {
        let seg = self
            .segment_of(position)
            .ok_or_else(|| BrokerError::Corrupt {
                segment: self.dir.clone(),
                offset: position,
                source: RecordError::Malformed("position lies before the oldest segment"),
            })?;
        seg.file
            .read_exact_at(buf, position - seg.base)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => BrokerError::Corrupt {
                    segment: seg.path.clone(),
                    offset: position - seg.base,
                    source: RecordError::Truncated {
                        needed: buf.len(),
                        available: 0,
                    },
                },
                _ => BrokerError::io("read segment", &seg.path, e),
            })
    }

    /// Reads, verifies and decodes the record at `position` of `size` bytes.
    pub fn read_record(&self, position: u64, size: usize) -> Result<DecodedRecord> {
        let bytes = self.read(position, size)?;
        self.decode_at(&bytes, position)
    }

    /// Decodes a record read from `position`, checking that it was written there.
    pub fn decode_at(&self, bytes: &Bytes, position: u64) -> Result<DecodedRecord> {
        let corrupt = |source| {
            let (segment, offset) = match self.segment_of(position) {
                Some(seg) => (seg.path.clone(), position - seg.base),
                None => (self.dir.clone(), position),
            };
            BrokerError::Corrupt {
                segment,
                offset,
                source,
            }
        };
        let rec = record::decode(bytes).map_err(corrupt)?;
        if rec.placement.position != position {
            return Err(corrupt(RecordError::Malformed(
                "record was written at another position",
            )));
        }
        Ok(rec)
    }

    /// Scans every record from `from` to the end, calling `visit` for each valid one, and cuts
    /// a torn last record. Returns the report and the position where the next record goes.
    pub fn recover(
        &self,
        from: u64,
        mut visit: impl FnMut(&DecodedRecord, u32) -> Result<()>,
    ) -> Result<(RecoveryReport, u64)> {
        let mut report = RecoveryReport::default();
        let segments = self.segments();
        let last_base = segments.last().map_or(0, |s| s.base);
        let mut end = last_base;
        for seg in segments {
            let seg_len = seg.len()?;
            if seg.base + seg_len <= from && seg.base != last_base {
                continue;
            }
            let start = from.saturating_sub(seg.base).min(seg_len);
            let is_last = seg.base == last_base;
            let mut reader = SegmentReader::new(&seg, seg_len);
            let mut off = start;
            while off < seg_len {
                // A record that cannot be framed or decoded; `true` when it is cut short.
                let read = match reader.record_at(off) {
                    Ok(bytes) => self
                        .decode_at(&bytes, seg.base + off)
                        .map(|rec| (rec, bytes.len()))
                        .map_err(|e| (e.to_string(), false)),
                    Err(e) => Err((e.to_string(), matches!(e, RecordError::Truncated { .. }))),
                };
                match read {
                    Ok((rec, len)) => {
                        visit(&rec, len as u32)?;
                        report.records += 1;
                        off += len as u64;
                    }
                    Err(damage) => {
                        off = self.skip_damage(
                            &seg,
                            &mut reader,
                            off,
                            seg_len,
                            is_last,
                            damage,
                            &mut report,
                        )?;
                    }
                }
            }
            if is_last {
                end = seg.base + off.min(seg_len);
            }
        }
        Ok((report, end))
    }

    /// Calls `visit` with every valid record that starts in `[from, to)`, in log order,
    /// reading each segment sequentially. Unlike [`recover`](Self::recover) it changes nothing
    /// and reports nothing: damage (already reported by recovery or a read) is stepped over to
    /// the next record that verifies. `from` must be a record boundary or a segment base.
    /// `visit` returns `false` to stop early.
    pub fn scan(
        &self,
        from: u64,
        to: u64,
        mut visit: impl FnMut(&DecodedRecord, u32) -> Result<bool>,
    ) -> Result<()> {
        for seg in self.segments() {
            if seg.base >= to {
                break;
            }
            let seg_len = seg.len()?;
            if seg.base + seg_len <= from {
                continue;
            }
            let mut reader = SegmentReader::with_chunk(&seg, seg_len, SCAN_CHUNK);
            let mut off = from.saturating_sub(seg.base);
            let end = (to - seg.base).min(seg_len);
            while off < end {
                let decoded = reader.record_at(off).ok().and_then(|bytes| {
                    self.decode_at(&bytes, seg.base + off)
                        .ok()
                        .map(|rec| (rec, bytes.len()))
                });
                match decoded {
                    Some((rec, len)) => {
                        if !visit(&rec, len as u32)? {
                            return Ok(());
                        }
                        off += len as u64;
                    }
                    None => match reader.next_valid(self, off + 1, end)? {
                        Some(next) => off = next,
                        None => break,
                    },
                }
            }
        }
        Ok(())
    }

    /// Handles a bad record at `off`: resynchronises on the next valid record, or, when none
    /// follows in the last segment, cuts the log there. A cut record that is incomplete (or
    /// zeros) is a torn write, expected after a crash; a complete record that fails its
    /// checksum is damage and is reported as well. Returns where scanning goes on.
    #[allow(clippy::too_many_arguments)]
    fn skip_damage(
        &self,
        seg: &Segment,
        reader: &mut SegmentReader<'_>,
        off: u64,
        seg_len: u64,
        is_last: bool,
        (reason, incomplete): (String, bool),
        report: &mut RecoveryReport,
    ) -> Result<u64> {
        let mut probe = off + 1;
        while probe + record::PREFIX_LEN as u64 <= seg_len {
            if let Some(next) = reader.find_magic(probe)? {
                if let Ok(bytes) = reader.record_at(next) {
                    if self.decode_at(&bytes, seg.base + next).is_ok() {
                        report.damage(seg, off, next - off, reason, "skipped");
                        return Ok(next);
                    }
                }
                probe = next + 1;
            } else {
                break;
            }
        }
        if is_last {
            let torn = incomplete || reader.all_zero(off)?;
            if torn {
                tracing::warn!(
                    segment = %seg.path.display(),
                    offset = off,
                    bytes = seg_len - off,
                    %reason,
                    "torn record at the end of the commit log; truncated"
                );
            } else {
                report.damage(seg, off, seg_len - off, reason, "the log is cut there");
            }
            super::io::set_len(&seg.file, &seg.path, off)
                .map_err(|e| BrokerError::io("truncate segment", &seg.path, e))?;
            super::io::sync(&seg.file, &seg.path)
                .map_err(|e| BrokerError::io("sync segment", &seg.path, e))?;
            report.truncated_bytes += seg_len - off;
        } else {
            report.damage(
                seg,
                off,
                seg_len - off,
                reason,
                "skipped to the next segment",
            );
        }
        Ok(seg_len)
    }
}

/// Sequential reads through a segment with a large buffer, for recovery.
struct SegmentReader<'a> {
    seg: &'a Segment,
    len: u64,
    buf: Bytes,
    buf_start: u64,
    /// Bytes read at a time.
    chunk: usize,
}

const READ_CHUNK: usize = 8 * 1024 * 1024;
/// Read size of [`CommitLog::scan`]: it runs beside the broker's work (a key-index rebuild at
/// open, a lookup with the index off), where 8 MiB buffers left the allocator holding tens of
/// MiB.
const SCAN_CHUNK: usize = 256 * 1024;

impl<'a> SegmentReader<'a> {
    fn new(seg: &'a Segment, len: u64) -> Self {
        Self::with_chunk(seg, len, READ_CHUNK)
    }

    fn with_chunk(seg: &'a Segment, len: u64, chunk: usize) -> Self {
        SegmentReader {
            seg,
            len,
            buf: Bytes::new(),
            buf_start: 0,
            chunk,
        }
    }

    /// Makes `[off, off + want)` (clamped to the file) available in the buffer.
    fn fill(&mut self, off: u64, want: usize) -> Result<Bytes> {
        let want = want.min((self.len - off.min(self.len)) as usize);
        let buf_end = self.buf_start + self.buf.len() as u64;
        if off >= self.buf_start && off + want as u64 <= buf_end {
            let s = (off - self.buf_start) as usize;
            return Ok(self.buf.slice(s..s + want));
        }
        let size = want.max(self.chunk).min((self.len - off) as usize);
        let mut v = vec![0u8; size];
        self.seg
            .file
            .read_exact_at(&mut v, off)
            .map_err(|e| BrokerError::io("read segment", &self.seg.path, e))?;
        self.buf = Bytes::from(v);
        self.buf_start = off;
        Ok(self.buf.slice(0..want))
    }

    /// The bytes of the record framed at `off` (not yet verified).
    fn record_at(&mut self, off: u64) -> std::result::Result<Bytes, RecordError> {
        let prefix = self
            .fill(off, record::PREFIX_LEN)
            .map_err(|_| RecordError::Malformed("unreadable"))?;
        let len = record::peek_len(&prefix)?;
        let bytes = self
            .fill(off, len)
            .map_err(|_| RecordError::Malformed("unreadable"))?;
        if bytes.len() < len {
            return Err(RecordError::Truncated {
                needed: len,
                available: bytes.len(),
            });
        }
        Ok(bytes)
    }

    /// The first offset in `[from, end)` where a record that verifies starts.
    fn next_valid(&mut self, log: &CommitLog, from: u64, end: u64) -> Result<Option<u64>> {
        let mut probe = from;
        while probe + record::PREFIX_LEN as u64 <= end {
            let Some(next) = self.find_magic(probe)? else {
                return Ok(None);
            };
            if next >= end {
                return Ok(None);
            }
            if let Ok(bytes) = self.record_at(next) {
                if log.decode_at(&bytes, self.seg.base + next).is_ok() {
                    return Ok(Some(next));
                }
            }
            probe = next + 1;
        }
        Ok(None)
    }

    /// Whether every byte from `from` to the end is zero.
    fn all_zero(&mut self, from: u64) -> Result<bool> {
        let mut at = from;
        while at < self.len {
            let chunk = self.fill(at, self.chunk)?;
            if chunk.is_empty() {
                break;
            }
            if chunk.iter().any(|b| *b != 0) {
                return Ok(false);
            }
            at += chunk.len() as u64;
        }
        Ok(true)
    }

    /// The next offset at or after `from` where the record magic appears.
    fn find_magic(&mut self, from: u64) -> Result<Option<u64>> {
        let magic = record::MAGIC.to_le_bytes();
        let mut at = from;
        while at + 4 <= self.len {
            let chunk = self.fill(at, self.chunk)?;
            if let Some(i) = chunk.windows(4).position(|w| w == magic) {
                return Ok(Some(at + i as u64));
            }
            if chunk.len() < 4 {
                break;
            }
            at += (chunk.len() - 3) as u64;
        }
        Ok(None)
    }
}

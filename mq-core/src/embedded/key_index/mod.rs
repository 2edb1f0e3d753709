//! The key index: finds the records of a message id or a business key in the commit log, like
//! RocketMQ's IndexFile, and like it derived from the log, so that recovery rebuilds whatever
//! a crash or damage took.
//!
//! **Entries.** For every record the writer adds (hash of its id, log position) and
//! (hash of each key, position): 16 bytes each, hashes 64-bit (FNV-1a with a final mix, stable
//! across builds since they are stored). A hash only narrows the search: every candidate
//! record is read from the log and its id or keys compared exactly, so collisions cost a
//! read, never a wrong answer.
//!
//! **Parts.** New entries go to the in-memory *active* part, which covers the log from its
//! start position to what the writer has written. When it reaches `seal_at` entries (65,536:
//! 1 MiB) the writer freezes it, starts a new one, and a thread of its own writes the frozen
//! part as a sealed file `index/<20-digit start>.idx` (`sealed.rs`: sorted by hash, in
//! checksummed 4 KiB blocks, temp file then rename), off the writer's path; with more than
//! four parts waiting the writer seals one itself, so memory stays bounded. Lookups search
//! the active and frozen parts by a scan and each sealed file by a binary search over its
//! in-memory fence table (16 bytes per block of 256 entries), reading only the blocks that
//! may hold the hash.
//!
//! **Cost.** Per message on disk: 16 bytes for the id and 16 per key, plus 16 bytes of block
//! table per 256 entries (32.1 bytes per message with one key, measured: BENCHMARKS.md, "Key
//! index"); in memory: the active part (at most 1 MiB, and up to four frozen parts waiting) and the fence
//! tables (16 bytes per 256 entries of the retained log). Per send: one hash per id and key, and
//! a copy into the active part. At open every sealed file is read once to verify it (16 bytes
//! per id and key).
//!
//! **Recovery** (`open`): every sealed file is verified by checksum; a damaged one, one
//! covering log that is no longer there (cut by recovery) or one left by an unfinished
//! seal is reported (`tracing::warn!`, [`KeyIndex::repairs`]), deleted and rebuilt from the
//! log range it covered. Gaps between sealed files are rebuilt the same way, and the active
//! part is rebuilt by reading the log from the end of the last sealed file. A block found
//! damaged by a lookup is reported and its file rebuilt at once.
//!
//! **Retention**: a sealed file whose whole range lies below the oldest log segment is
//! deleted with it.

mod sealed;
#[cfg(test)]
mod tests;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::commit_log::{CommitLog, Corruption};
use crate::error::{BrokerError, Result};
use crate::message::MessageId;
use sealed::Sealed;

/// Entries of the active part before it is sealed: 1 MiB.
pub(crate) const DEFAULT_SEAL_AT: usize = 64 * 1024;
/// Frozen parts waiting for the sealing thread before the writer seals one itself.
const MAX_FROZEN: usize = 4;

/// One index entry: the hash of an id or key, and the log position of its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    pub hash: u64,
    pub position: u64,
}

/// The hash under which a record is found by its id.
pub(crate) fn id_hash(id: MessageId) -> u64 {
    hash(b'i', &id.as_u128().to_le_bytes())
}

/// The hash under which a record is found by one of its keys.
pub(crate) fn key_hash(key: &str) -> u64 {
    hash(b'k', key.as_bytes())
}

/// FNV-1a over a domain byte (ids and keys never share a hash by construction) and the
/// bytes, then SplitMix64's finalizer so that similar inputs spread over the whole range.
/// Stored on disk: it must never change.
fn hash(domain: u8, bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in std::iter::once(domain).chain(bytes.iter().copied()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The entries of a record: its id, then each key.
pub(crate) fn entries_of(id: MessageId, keys: &[String], position: u64, out: &mut Vec<Entry>) {
    out.push(Entry {
        hash: id_hash(id),
        position,
    });
    for key in keys {
        out.push(Entry {
            hash: key_hash(key),
            position,
        });
    }
}

/// An in-memory part: the entries of the records in `[start, end)`.
#[derive(Debug)]
struct Part {
    start: u64,
    end: u64,
    entries: Vec<Entry>,
}

impl Part {
    fn new(start: u64) -> Self {
        Part {
            start,
            end: start,
            entries: Vec::new(),
        }
    }

    fn matching(&self, hash: u64, out: &mut Vec<u64>) {
        out.extend(
            self.entries
                .iter()
                .filter(|e| e.hash == hash)
                .map(|e| e.position),
        );
    }
}

#[derive(Debug)]
struct State {
    /// Sealed files, by start.
    sealed: Vec<Arc<Sealed>>,
    /// Parts handed to a sealing thread and not yet on disk.
    frozen: Vec<Arc<Part>>,
    active: Part,
}

/// The key index of one store (see the module doc).
#[derive(Debug)]
pub(crate) struct KeyIndex {
    dir: PathBuf,
    seal_at: usize,
    state: RwLock<State>,
    /// Damaged or stale index files found and rebuilt since open.
    repairs: Mutex<Vec<Corruption>>,
    /// The sealing thread, started with the first full part.
    sealer: Mutex<Option<Sealer>>,
}

/// The thread that writes frozen parts as sealed files, one at a time (one thread, so that
/// its buffers are reused rather than held by an allocator arena per thread).
#[derive(Debug)]
struct Sealer {
    jobs: std::sync::mpsc::Sender<Arc<Part>>,
    thread: std::thread::JoinHandle<()>,
}

impl KeyIndex {
    /// Opens the index in `dir` for a log that recovery ended at `log_end`, verifying the
    /// sealed files and rebuilding from the log what they lack (see the module doc).
    pub fn open(dir: &Path, log: &CommitLog, log_end: u64, seal_at: usize) -> Result<Self> {
        fs::create_dir_all(dir).map_err(|e| BrokerError::io("create directory", dir, e))?;
        let index = KeyIndex {
            dir: dir.to_owned(),
            seal_at: seal_at.max(1),
            state: RwLock::new(State {
                sealed: Vec::new(),
                frozen: Vec::new(),
                active: Part::new(0),
            }),
            repairs: Mutex::new(Vec::new()),
            sealer: Mutex::new(None),
        };
        let min = log.min_position();
        let mut files = Vec::new();
        let listing = fs::read_dir(dir).map_err(|e| BrokerError::io("list directory", dir, e))?;
        for entry in listing {
            let entry = entry.map_err(|e| BrokerError::io("list directory", dir, e))?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".tmp") {
                // A seal that a crash interrupted: its range is rebuilt below.
                remove(&path)?;
                continue;
            }
            if let Some(start) = name
                .strip_suffix(".idx")
                .and_then(|s| s.parse::<u64>().ok())
            {
                files.push((start, path));
            }
        }
        files.sort();
        let mut valid: Vec<Sealed> = Vec::new();
        for (start, path) in files {
            match Sealed::open(&path) {
                Ok(s) if s.end <= min => {
                    // Its log went to retention while the index was closed or off.
                    remove(&path)?;
                }
                Ok(s) if s.end > log_end => {
                    index.repaired(
                        &path,
                        s.len(),
                        format!(
                            "covers the log up to {} but the log ends at {log_end}",
                            s.end
                        ),
                    );
                    remove(&path)?;
                }
                Ok(s) if s.start != start || valid.last().is_some_and(|v| s.start < v.end) => {
                    index.repaired(
                        &path,
                        s.len(),
                        "overlaps another index file or is misnamed".into(),
                    );
                    remove(&path)?;
                }
                Ok(s) => valid.push(s),
                Err(reason) => {
                    let len = fs::metadata(&path).map_or(0, |m| m.len());
                    index.repaired(&path, len, reason);
                    remove(&path)?;
                }
            }
        }
        let mut cursor = min;
        let mut sealed = Vec::with_capacity(valid.len());
        for s in valid {
            if s.start > cursor {
                let (mut filled, rest) = index.rebuild(log, cursor, s.start)?;
                sealed.append(&mut filled);
                if !rest.entries.is_empty() || rest.start < rest.end {
                    sealed.push(Arc::new(Sealed::write(
                        dir,
                        rest.start,
                        rest.end,
                        &rest.entries,
                    )?));
                }
            }
            cursor = cursor.max(s.end);
            sealed.push(Arc::new(s));
        }
        let (mut filled, active) = index.rebuild(log, cursor, log_end)?;
        sealed.append(&mut filled);
        {
            let mut state = index.state.write();
            state.sealed = sealed;
            state.active = active;
        }
        Ok(index)
    }

    /// Reads the log from `from` to `to` into sealed files of `seal_at` entries; returns them
    /// and the part left over (fewer entries), which ends at `to`.
    fn rebuild(&self, log: &CommitLog, from: u64, to: u64) -> Result<(Vec<Arc<Sealed>>, Part)> {
        let mut done = Vec::new();
        let mut part = Part::new(from);
        if from >= to {
            return Ok((done, part));
        }
        let mut pending_err = None;
        log.scan(from, to, |rec, size| {
            let next = rec.placement.position + u64::from(size);
            entries_of(
                rec.message.id,
                &rec.message.keys,
                rec.placement.position,
                &mut part.entries,
            );
            part.end = next;
            if part.entries.len() >= self.seal_at {
                let full = std::mem::replace(&mut part, Part::new(next));
                match Sealed::write(&self.dir, full.start, full.end, &full.entries) {
                    Ok(s) => done.push(Arc::new(s)),
                    Err(e) => {
                        pending_err = Some(e);
                        return Ok(false);
                    }
                }
            }
            Ok(true)
        })?;
        if let Some(e) = pending_err {
            return Err(e);
        }
        part.end = to;
        if done.is_empty() && part.entries.is_empty() {
            tracing::debug!(from, to, "no records to index in this range");
        } else {
            tracing::info!(
                from,
                to,
                files = done.len(),
                "key index rebuilt from the commit log"
            );
        }
        Ok((done, part))
    }

    fn repaired(&self, path: &Path, length: u64, reason: String) {
        tracing::warn!(file = %path.display(), %reason, "damaged key-index file; it is deleted and rebuilt from the commit log");
        self.repairs.lock().push(Corruption {
            segment: path.to_owned(),
            offset: 0,
            length,
            reason,
        });
    }

    /// Damaged or stale index files found since open (each was rebuilt).
    pub fn repairs(&self) -> Vec<Corruption> {
        self.repairs.lock().clone()
    }

    /// Adds the entries of records the writer has just written, which end at `end`. Seals the
    /// active part on a thread of its own once it is full.
    pub fn add(self: &Arc<Self>, entries: &[Entry], end: u64) {
        let (frozen, backlog) = {
            let mut state = self.state.write();
            state.active.entries.extend_from_slice(entries);
            state.active.end = end;
            if state.active.entries.len() < self.seal_at {
                return;
            }
            // Sized once: growing by doubling copied each part several times over.
            let mut next = Part::new(end);
            next.entries.reserve_exact(self.seal_at + entries.len());
            let part = Arc::new(std::mem::replace(&mut state.active, next));
            state.frozen.push(part.clone());
            (part, state.frozen.len())
        };
        if backlog > MAX_FROZEN {
            // The sealing thread fell behind: the writer seals this one itself, which holds up
            // its senders, so that memory stays bounded.
            self.seal(&frozen);
            return;
        }
        let mut sealer = self.sealer.lock();
        if sealer.is_none() {
            *sealer = self.start_sealer();
        }
        let queued = sealer
            .as_ref()
            .is_some_and(|s| s.jobs.send(frozen.clone()).is_ok());
        drop(sealer);
        if !queued {
            tracing::warn!("no key-index sealing thread; sealing on the writer");
            self.seal(&frozen);
        }
    }

    fn start_sealer(self: &Arc<Self>) -> Option<Sealer> {
        let (jobs, parts) = std::sync::mpsc::channel::<Arc<Part>>();
        // Weak: a broker dropped without shutdown drops the index, which ends the thread.
        let index = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("mq-key-index-seal".into())
            .spawn(move || {
                while let Ok(part) = parts.recv() {
                    match index.upgrade() {
                        Some(index) => index.seal(&part),
                        None => return,
                    }
                }
            });
        match spawned {
            Ok(thread) => Some(Sealer { jobs, thread }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the key-index sealing thread");
                None
            }
        }
    }

    /// Waits until every frozen part is sealed and stops the sealing thread (at shutdown, so
    /// that a reopen finds the files).
    pub fn finish(&self) {
        let Some(Sealer { jobs, thread }) = self.sealer.lock().take() else {
            return;
        };
        drop(jobs);
        if thread.join().is_err() {
            tracing::error!(
                "the key-index sealing thread panicked; the next open rebuilds its parts"
            );
        }
    }

    /// Writes a frozen part as a sealed file. On failure the part stays in memory, still
    /// searched, and the next open rebuilds its file from the log.
    fn seal(&self, part: &Arc<Part>) {
        match Sealed::write(&self.dir, part.start, part.end, &part.entries) {
            Ok(sealed) => {
                let mut state = self.state.write();
                state.frozen.retain(|p| !Arc::ptr_eq(p, part));
                let at = state.sealed.partition_point(|s| s.start < sealed.start);
                state.sealed.insert(at, Arc::new(sealed));
            }
            Err(e) => {
                tracing::error!(error = %e, start = part.start, end = part.end, "sealing a key-index part failed; it stays in memory until the next open rebuilds it");
            }
        }
    }

    /// The log positions of every entry with `hash`, sorted. A sealed file found damaged is
    /// reported and rebuilt from `log` at once.
    pub fn candidates(&self, hash: u64, log: &CommitLog) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        let sealed = {
            let state = self.state.read();
            state.active.matching(hash, &mut out);
            for part in &state.frozen {
                part.matching(hash, &mut out);
            }
            state.sealed.clone()
        };
        for file in sealed {
            match file.search(hash) {
                Ok(found) => out.extend(found),
                Err(reason) => {
                    self.repaired(&file.path, file.len(), reason);
                    let rebuilt = self.replace(&file, log)?;
                    for s in &rebuilt {
                        out.extend(s.search(hash).map_err(|_| BrokerError::Corrupt {
                            segment: s.path.clone(),
                            offset: 0,
                            source: crate::error::RecordError::Malformed(
                                "a key-index file just rebuilt fails its checksum",
                            ),
                        })?);
                    }
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Rebuilds a damaged sealed file from the log range it covers.
    fn replace(&self, damaged: &Arc<Sealed>, log: &CommitLog) -> Result<Vec<Arc<Sealed>>> {
        let (mut files, rest) = self.rebuild(log, damaged.start, damaged.end)?;
        if !rest.entries.is_empty() || files.is_empty() {
            files.push(Arc::new(Sealed::write(
                &self.dir,
                rest.start,
                rest.end,
                &rest.entries,
            )?));
        }
        let mut state = self.state.write();
        state.sealed.retain(|s| !Arc::ptr_eq(s, damaged));
        for f in &files {
            let at = state.sealed.partition_point(|s| s.start < f.start);
            state.sealed.insert(at, f.clone());
        }
        Ok(files)
    }

    /// Deletes the sealed files whose whole range lies below `min_position` (retention).
    pub fn retain(&self, min_position: u64) -> Result<()> {
        let gone: Vec<Arc<Sealed>> = {
            let mut state = self.state.write();
            let (gone, kept) = state.sealed.drain(..).partition(|s| s.end <= min_position);
            state.sealed = kept;
            gone
        };
        for s in gone {
            remove(&s.path)?;
            tracing::info!(file = %s.path.display(), "key-index file deleted by retention");
        }
        Ok(())
    }

    /// Bytes of the sealed files, and entries in memory (for benches and tests).
    pub fn footprint(&self) -> (u64, usize) {
        let state = self.state.read();
        (
            state.sealed.iter().map(|s| s.len()).sum(),
            state.active.entries.len()
                + state.frozen.iter().map(|p| p.entries.len()).sum::<usize>(),
        )
    }
}

fn remove(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(BrokerError::io("delete index file", path, e)),
    }
}

//! A sealed part of the key index: an immutable file of (hash, log position) entries sorted
//! by hash, in checksummed blocks, written once (temp file, then rename) and verified whole
//! when opened.
//!
//! ```text
//! 0   magic           u32   "MQX1"
//! 4   version         u32   1
//! 8   start           u64   first commit-log position the file covers
//! 16  end             u64   position after the last record it covers
//! 24  entries         u64
//! 32  blocks          u32
//! 36  reserved        u32   0
//! 40  table crc32c    u32   of the block table
//! 44  header crc32c   u32   of bytes [0, 44)
//! 48  block table     per block: first hash u64, crc32c of the block u32, reserved u32
//! ..  blocks          BLOCK entries each (the last may be shorter): hash u64, position u64
//! ```
//! All integers are little-endian. The block table (16 bytes per 256 entries) stays in
//! memory as the fence table; a lookup reads and verifies only the blocks that may hold its
//! hash, so damage that appears after open is still caught, never read as data.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::Entry;
use crate::error::{BrokerError, Result};

const MAGIC: u32 = u32::from_le_bytes(*b"MQX1");
const VERSION: u32 = 1;
const HEADER_LEN: usize = 48;
const ENTRY_LEN: usize = 16;
const TABLE_ROW: usize = 16;
/// Entries per checksummed block: one 4 KiB read per block.
const BLOCK: usize = 256;

/// The file name of the part starting at `start`.
pub(super) fn file_name(start: u64) -> String {
    format!("{start:020}.idx")
}

/// One block's fence: its first hash and its checksum.
#[derive(Debug, Clone, Copy)]
struct Fence {
    first: u64,
    crc: u32,
}

/// An opened, verified sealed part.
#[derive(Debug)]
pub(super) struct Sealed {
    pub start: u64,
    pub end: u64,
    pub path: PathBuf,
    entries: u64,
    file: File,
    fences: Vec<Fence>,
}

/// Why a sealed file cannot be used.
pub(super) type Damage = String;

impl Sealed {
    /// Writes a sorted copy of `entries` as the part covering `[start, end)` into `dir`: a
    /// kill leaves either no file or the whole one. The blocks are encoded twice
    /// (once for their checksums, which the table before them holds, once to write them), so
    /// that no second copy of the part is held.
    pub fn write(dir: &Path, start: u64, end: u64, entries: &[Entry]) -> Result<Sealed> {
        let mut sorted = entries.to_vec();
        sorted.sort_unstable_by_key(|e| (e.hash, e.position));
        let blocks = sorted.len().div_ceil(BLOCK);
        let mut block = Vec::with_capacity(BLOCK * ENTRY_LEN);
        let encode = |chunk: &[Entry], out: &mut Vec<u8>| {
            out.clear();
            for e in chunk {
                out.extend_from_slice(&e.hash.to_le_bytes());
                out.extend_from_slice(&e.position.to_le_bytes());
            }
        };
        let mut table = Vec::with_capacity(blocks * TABLE_ROW);
        let mut fences = Vec::with_capacity(blocks);
        for chunk in sorted.chunks(BLOCK) {
            encode(chunk, &mut block);
            let fence = Fence {
                first: chunk[0].hash,
                crc: crc32c::crc32c(&block),
            };
            table.extend_from_slice(&fence.first.to_le_bytes());
            table.extend_from_slice(&fence.crc.to_le_bytes());
            table.extend_from_slice(&0u32.to_le_bytes());
            fences.push(fence);
        }
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(&MAGIC.to_le_bytes());
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&start.to_le_bytes());
        header.extend_from_slice(&end.to_le_bytes());
        header.extend_from_slice(&(sorted.len() as u64).to_le_bytes());
        header.extend_from_slice(&(blocks as u32).to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&crc32c::crc32c(&table).to_le_bytes());
        let crc = crc32c::crc32c(&header);
        header.extend_from_slice(&crc.to_le_bytes());

        let path = dir.join(file_name(start));
        let tmp = dir.join(format!("{}.tmp", file_name(start)));
        let io = |doing: &'static str, p: &Path| {
            let p = p.to_owned();
            move |e| BrokerError::io(doing, &p, e)
        };
        let file = File::create(&tmp).map_err(io("create index file", &tmp))?;
        let mut out = BufWriter::with_capacity(64 * 1024, file);
        out.write_all(&header)
            .and_then(|()| out.write_all(&table))
            .and_then(|()| {
                for chunk in sorted.chunks(BLOCK) {
                    encode(chunk, &mut block);
                    out.write_all(&block)?;
                }
                Ok(())
            })
            .map_err(io("write index file", &tmp))?;
        let file = out
            .into_inner()
            .map_err(|e| BrokerError::io("write index file", &tmp, e.into_error()))?;
        // Renamed whole, so a kill leaves no half file; not fsynced: the file is derived from
        // the log, and one that power loss damaged or lost fails its checksum at open and is
        // rebuilt, so an fsync per part on the disk the log is writing would buy nothing.
        drop(file);
        fs::rename(&tmp, &path).map_err(io("rename index file", &tmp))?;
        let file = File::open(&path).map_err(io("open index file", &path))?;
        Ok(Sealed {
            start,
            end,
            path,
            entries: sorted.len() as u64,
            file,
            fences,
        })
    }

    /// Opens and verifies every checksum of the file at `path`.
    pub fn open(path: &Path) -> std::result::Result<Sealed, Damage> {
        let unreadable = |e: std::io::Error| format!("unreadable: {e}");
        let file = File::open(path).map_err(unreadable)?;
        let len = file.metadata().map_err(unreadable)?.len();
        if len < HEADER_LEN as u64 {
            return Err(format!("{len} bytes, shorter than the header"));
        }
        let mut header = [0u8; HEADER_LEN];
        file.read_exact_at(&mut header, 0).map_err(unreadable)?;
        let u32_at =
            |b: &[u8], at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let u64_at = |b: &[u8], at: usize| {
            let mut v = [0u8; 8];
            v.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(v)
        };
        if u32_at(&header, 0) != MAGIC || u32_at(&header, 4) != VERSION {
            return Err("not a key-index file (magic or version)".into());
        }
        if crc32c::crc32c(&header[..44]) != u32_at(&header, 44) {
            return Err("header checksum mismatch".into());
        }
        let (start, end) = (u64_at(&header, 8), u64_at(&header, 16));
        let (entries, blocks) = (u64_at(&header, 24), u32_at(&header, 32) as usize);
        let table_end = (HEADER_LEN + blocks * TABLE_ROW) as u64;
        let expected = table_end.checked_add(entries.saturating_mul(ENTRY_LEN as u64));
        if expected != Some(len) || entries.div_ceil(BLOCK as u64) != blocks as u64 {
            return Err(format!(
                "{len} bytes where the header announces {entries} entries in {blocks} blocks"
            ));
        }
        let mut table = vec![0u8; blocks * TABLE_ROW];
        file.read_exact_at(&mut table, HEADER_LEN as u64)
            .map_err(unreadable)?;
        if crc32c::crc32c(&table) != u32_at(&header, 40) {
            return Err("block table checksum mismatch".into());
        }
        // The blocks are read in sequence through one small buffer: opening holds no file whole.
        let mut reader =
            std::io::BufReader::with_capacity(64 * 1024, File::open(path).map_err(unreadable)?);
        std::io::Seek::seek(&mut reader, std::io::SeekFrom::Start(table_end))
            .map_err(unreadable)?;
        let mut block = vec![0u8; BLOCK * ENTRY_LEN];
        let mut fences = Vec::with_capacity(blocks);
        for b in 0..blocks {
            let row = b * TABLE_ROW;
            let fence = Fence {
                first: u64_at(&table, row),
                crc: u32_at(&table, row + 8),
            };
            let n = (entries - (b * BLOCK) as u64).min(BLOCK as u64) as usize * ENTRY_LEN;
            std::io::Read::read_exact(&mut reader, &mut block[..n]).map_err(unreadable)?;
            if crc32c::crc32c(&block[..n]) != fence.crc {
                return Err(format!("block {b} checksum mismatch"));
            }
            fences.push(fence);
        }
        Ok(Sealed {
            start,
            end,
            path: path.to_owned(),
            entries,
            file,
            fences,
        })
    }

    /// The log positions of the entries with `hash`, reading only the blocks that may hold
    /// it, each verified first.
    pub fn search(&self, hash: u64) -> std::result::Result<Vec<u64>, Damage> {
        // Blocks whose first hash is `hash` hold it, and so may the block before them.
        let hi = self.fences.partition_point(|f| f.first <= hash);
        let lo = self
            .fences
            .partition_point(|f| f.first < hash)
            .saturating_sub(1);
        let mut out = Vec::new();
        let table_end = (HEADER_LEN + self.fences.len() * TABLE_ROW) as u64;
        let mut block = vec![0u8; BLOCK * ENTRY_LEN];
        for b in lo..hi {
            let first = (b * BLOCK) as u64;
            let n = (self.entries - first).min(BLOCK as u64) as usize;
            let buf = &mut block[..n * ENTRY_LEN];
            self.file
                .read_exact_at(buf, table_end + first * ENTRY_LEN as u64)
                .map_err(|e| format!("block {b} unreadable: {e}"))?;
            if crc32c::crc32c(buf) != self.fences[b].crc {
                return Err(format!("block {b} checksum mismatch"));
            }
            for e in buf.chunks_exact(ENTRY_LEN) {
                let mut h = [0u8; 8];
                h.copy_from_slice(&e[..8]);
                if u64::from_le_bytes(h) == hash {
                    let mut p = [0u8; 8];
                    p.copy_from_slice(&e[8..]);
                    out.push(u64::from_le_bytes(p));
                }
            }
        }
        Ok(out)
    }

    /// Bytes on disk.
    pub fn len(&self) -> u64 {
        (HEADER_LEN + self.fences.len() * TABLE_ROW) as u64 + self.entries * ENTRY_LEN as u64
    }
}

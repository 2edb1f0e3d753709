//! A sealed part of the key index: an immutable file of (hash, log position) entries sorted
//! by hash, in checksummed blocks, written once (temp file, fsync, rename) and verified whole
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
use std::io::Write;
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
    /// Sorts `entries` and writes them as the part covering `[start, end)` into `dir`,
    /// durably: a crash leaves either no file or the whole one.
    pub fn write(dir: &Path, start: u64, end: u64, mut entries: Vec<Entry>) -> Result<Sealed> {
        entries.sort_unstable_by_key(|e| (e.hash, e.position));
        let blocks = entries.len().div_ceil(BLOCK);
        let mut table = Vec::with_capacity(blocks * TABLE_ROW);
        let mut body = Vec::with_capacity(entries.len() * ENTRY_LEN);
        let mut fences = Vec::with_capacity(blocks);
        for chunk in entries.chunks(BLOCK) {
            let at = body.len();
            for e in chunk {
                body.extend_from_slice(&e.hash.to_le_bytes());
                body.extend_from_slice(&e.position.to_le_bytes());
            }
            let fence = Fence {
                first: chunk[0].hash,
                crc: crc32c::crc32c(&body[at..]),
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
        header.extend_from_slice(&(entries.len() as u64).to_le_bytes());
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
        let mut file = File::create(&tmp).map_err(io("create index file", &tmp))?;
        file.write_all(&header)
            .and_then(|()| file.write_all(&table))
            .and_then(|()| file.write_all(&body))
            .map_err(io("write index file", &tmp))?;
        file.sync_data().map_err(io("sync index file", &tmp))?;
        fs::rename(&tmp, &path).map_err(io("rename index file", &tmp))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("sync index directory", dir))?;
        let file = File::open(&path).map_err(io("open index file", &path))?;
        Ok(Sealed {
            start,
            end,
            path,
            entries: entries.len() as u64,
            file,
            fences,
        })
    }

    /// Opens and verifies every checksum of the file at `path`.
    pub fn open(path: &Path) -> std::result::Result<Sealed, Damage> {
        let bytes = fs::read(path).map_err(|e| format!("unreadable: {e}"))?;
        let file = File::open(path).map_err(|e| format!("unreadable: {e}"))?;
        if bytes.len() < HEADER_LEN {
            return Err(format!("{} bytes, shorter than the header", bytes.len()));
        }
        let u32_at = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(b)
        };
        if u32_at(0) != MAGIC || u32_at(4) != VERSION {
            return Err("not a key-index file (magic or version)".into());
        }
        if crc32c::crc32c(&bytes[..44]) != u32_at(44) {
            return Err("header checksum mismatch".into());
        }
        let (start, end, entries, blocks) =
            (u64_at(8), u64_at(16), u64_at(24), u32_at(32) as usize);
        let table_end = HEADER_LEN + blocks * TABLE_ROW;
        let expected_len = (table_end as u64).checked_add(entries.saturating_mul(ENTRY_LEN as u64));
        if expected_len != Some(bytes.len() as u64) || (entries as usize).div_ceil(BLOCK) != blocks
        {
            return Err(format!(
                "{} bytes where the header announces {entries} entries in {blocks} blocks",
                bytes.len()
            ));
        }
        if crc32c::crc32c(&bytes[HEADER_LEN..table_end]) != u32_at(40) {
            return Err("block table checksum mismatch".into());
        }
        let mut fences = Vec::with_capacity(blocks);
        for b in 0..blocks {
            let row = HEADER_LEN + b * TABLE_ROW;
            let fence = Fence {
                first: u64_at(row),
                crc: u32_at(row + 8),
            };
            let from = table_end + b * BLOCK * ENTRY_LEN;
            let to = (from + BLOCK * ENTRY_LEN).min(bytes.len());
            if crc32c::crc32c(&bytes[from..to]) != fence.crc {
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

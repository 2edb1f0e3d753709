//! When appended bytes become durable: the flush policy and the checkpoint recovery starts from.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::error::{BrokerError, Result};

/// RocketMQ's `flushIntervalCommitLog` for asynchronous flushing: 500 ms.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_millis(500);

/// When a send is acknowledged relative to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Acknowledged once written to the operating system (it survives a crash of the process,
    /// not of the machine); an fsync runs every `interval`.
    Async {
        /// Time between two fsyncs.
        interval: Duration,
    },
    /// Acknowledged after fsync. Sends that arrive while one fsync runs share the next one
    /// (group commit), so concurrent senders pay for far fewer fsyncs than messages.
    Sync,
}

impl Default for FlushPolicy {
    fn default() -> Self {
        FlushPolicy::Async {
            interval: DEFAULT_FLUSH_INTERVAL,
        }
    }
}

/// What the last sync made durable: the commit-log position below which every record is
/// written and indexed, and how many entries each queue's index held then. Recovery re-indexes
/// from the position; a queue whose index holds fewer entries than recorded was damaged and is
/// rebuilt from the whole log. A missing or damaged checkpoint costs time (a full rescan),
/// never data.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Checkpoint {
    /// Commit-log position.
    pub position: u64,
    /// The commit-log position where the oldest segment retention kept starts.
    #[serde(default)]
    pub log_start: u64,
    /// Per topic, the first and one past the last offset of each queue's index.
    pub queues: BTreeMap<String, Vec<[u64; 2]>>,
}

impl Checkpoint {
    /// Reads the checkpoint; `None` when it is missing or damaged (logged).
    pub fn read(path: &Path) -> Option<Checkpoint> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "checkpoint unreadable; recovering from the start of the log");
                return None;
            }
        };
        let Some(split) = bytes.len().checked_sub(4) else {
            tracing::warn!(path = %path.display(), "checkpoint too short; recovering from the start of the log");
            return None;
        };
        let (body, crc) = bytes.split_at(split);
        let mut c = [0u8; 4];
        c.copy_from_slice(crc);
        if crc32c::crc32c(body) != u32::from_le_bytes(c) {
            tracing::warn!(path = %path.display(), "checkpoint checksum mismatch; recovering from the start of the log");
            return None;
        }
        match serde_json::from_slice(body) {
            Ok(cp) => Some(cp),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "checkpoint undecodable; recovering from the start of the log");
                None
            }
        }
    }

    /// Writes the checkpoint atomically (temporary file, fsync, rename).
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut bytes = serde_json::to_vec(self)
            .map_err(|e| BrokerError::io("encode", path, std::io::Error::other(e)))?;
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        write_atomically(path, &bytes)
    }
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new content.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let f = super::io::create_new(&tmp).map_err(|e| BrokerError::io("create", &tmp, e))?;
        super::io::write_at(&f, &tmp, bytes, 0).map_err(|e| BrokerError::io("write", &tmp, e))?;
        super::io::sync(&f, &tmp).map_err(|e| BrokerError::io("sync", &tmp, e))?;
    }
    super::io::rename(&tmp, path).map_err(|e| BrokerError::io("rename", path, e))?;
    // The rename itself is durable only once the directory is synced.
    if let Some(dir) = path.parent() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| BrokerError::io("sync directory", dir, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_round_trips_and_rejects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint");
        assert_eq!(Checkpoint::read(&path), None);
        let cp = Checkpoint {
            position: 123_456,
            log_start: 0,
            queues: [("t".to_owned(), vec![[0, 3], [0, 0], [4, 7]])]
                .into_iter()
                .collect(),
        };
        cp.write(&path).unwrap();
        assert_eq!(Checkpoint::read(&path), Some(cp));
        let mut bytes = fs::read(&path).unwrap();
        bytes[3] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert_eq!(Checkpoint::read(&path), None);
        fs::write(&path, &bytes[..2]).unwrap();
        assert_eq!(Checkpoint::read(&path), None);
    }
}

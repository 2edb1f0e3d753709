//! When appended bytes become durable: the flush policy and the checkpoint recovery starts from.

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

/// The commit-log position below which every record is durable and indexed. Recovery
/// re-indexes from here, so a stale checkpoint costs time, never data.
pub(crate) struct Checkpoint;

impl Checkpoint {
    /// Reads the checkpoint; a missing or damaged file means "start from the beginning".
    pub fn read(path: &Path) -> u64 {
        let Ok(bytes) = fs::read(path) else {
            return 0;
        };
        if bytes.len() != 12 {
            tracing::warn!(path = %path.display(), "checkpoint has the wrong size; recovering from the start");
            return 0;
        }
        let mut pos = [0u8; 8];
        pos.copy_from_slice(&bytes[0..8]);
        let mut crc = [0u8; 4];
        crc.copy_from_slice(&bytes[8..12]);
        if crc32c::crc32c(&pos) != u32::from_le_bytes(crc) {
            tracing::warn!(path = %path.display(), "checkpoint checksum mismatch; recovering from the start");
            return 0;
        }
        u64::from_le_bytes(pos)
    }

    /// Writes the checkpoint atomically (temporary file, fsync, rename).
    pub fn write(path: &Path, position: u64) -> Result<()> {
        let mut bytes = position.to_le_bytes().to_vec();
        bytes.extend_from_slice(&crc32c::crc32c(&position.to_le_bytes()).to_le_bytes());
        write_atomically(path, &bytes)
    }
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new content.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut f = fs::File::create(&tmp).map_err(|e| BrokerError::io("create", &tmp, e))?;
        f.write_all(bytes)
            .map_err(|e| BrokerError::io("write", &tmp, e))?;
        f.sync_all().map_err(|e| BrokerError::io("sync", &tmp, e))?;
    }
    fs::rename(&tmp, path).map_err(|e| BrokerError::io("rename", path, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_round_trips_and_rejects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint");
        assert_eq!(Checkpoint::read(&path), 0);
        Checkpoint::write(&path, 123_456).unwrap();
        assert_eq!(Checkpoint::read(&path), 123_456);
        let mut bytes = fs::read(&path).unwrap();
        bytes[0] ^= 1;
        fs::write(&path, bytes).unwrap();
        assert_eq!(Checkpoint::read(&path), 0);
    }
}

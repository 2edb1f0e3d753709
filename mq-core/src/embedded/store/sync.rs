//! Making what was written durable: syncing the active log segment and the indexes, then
//! moving the checkpoint recovery starts from (one sync at a time), and recording how far
//! retention has deleted the log.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use super::MessageStore;
use crate::embedded::commit_log::Segment;
use crate::embedded::flush::Checkpoint;
use crate::error::{BrokerError, Result};

impl MessageStore {
    pub(super) fn checkpoint_path(&self) -> PathBuf {
        self.config.data_dir.join("checkpoint")
    }

    /// Forces the log and the indexes to disk and moves the checkpoint.
    pub fn sync(&self) -> Result<()> {
        let mut synced = self.sync_lock.lock();
        let pos = self.dispatched();
        if *synced == Some(pos) {
            // Nothing written since the last sync: an idle broker does not fsync.
            return Ok(());
        }
        self.sync_to(pos, false)?;
        *synced = Some(pos);
        Ok(())
    }

    /// Syncs everything recovery wrote (every index segment after a full rescan).
    pub(super) fn sync_all(&self, all_segments: bool) -> Result<()> {
        let mut synced = self.sync_lock.lock();
        let pos = self.dispatched();
        self.sync_to(pos, all_segments)?;
        *synced = Some(pos);
        Ok(())
    }

    fn sync_to(&self, pos: u64, all_segments: bool) -> Result<()> {
        // Entry counts are taken before the syncs, so every entry they count is on disk
        // once the checkpoint names them.
        let mut queues = std::collections::BTreeMap::new();
        let topics = self.topics();
        for topic in &topics {
            queues.insert(
                topic.name.to_string(),
                topic
                    .queues
                    .iter()
                    .map(|q| [q.min_offset(), q.max_offset()])
                    .collect(),
            );
        }
        if let Some(seg) = self.shared.commit_log.last_segment() {
            sync_segment(&seg)?;
            self.shared.stats.synced();
        }
        for topic in &topics {
            for cq in &topic.queues {
                cq.sync(all_segments)?;
            }
        }
        Checkpoint {
            position: pos,
            log_start: self.log_start.load(Ordering::Acquire),
            queues,
        }
        .write(&self.checkpoint_path())
    }

    /// Records, durably, that retention is about to delete the segments below `start`.
    pub(crate) fn raise_log_start(&self, start: u64) -> Result<()> {
        let _one_at_a_time = self.sync_lock.lock();
        if self.log_start.fetch_max(start, Ordering::AcqRel) >= start {
            return Ok(());
        }
        self.sync_to(self.dispatched(), false)
    }
}

/// Forces a commit-log segment's data to disk.
pub(super) fn sync_segment(seg: &Segment) -> Result<()> {
    crate::embedded::io::sync(&seg.file, &seg.path)
        .map_err(|e| BrokerError::io("sync segment", &seg.path, e))
}

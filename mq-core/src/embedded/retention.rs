//! Retention: which commit-log segments may be deleted.
//!
//! The rule: a segment other than the one being written is deleted once it is older than
//! `file-reserved-time` (by its last write, default 72 h, RocketMQ's `fileReservedTime`) **and**
//! every consumer group that ever subscribed to a topic has committed progress past every
//! message of that segment. Consume-queue segments whose entries all point into deleted
//! commit-log segments go with them, and so do key-index files whose whole range was deleted.
//! A group that never comes back keeps its backlog until it is removed from
//! `config/consumer_offsets.json`.

use std::time::{Duration, SystemTime};

use super::dispatch::Groups;
use super::store::MessageStore;
use crate::error::Result;

/// What a retention pass deleted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RetentionReport {
    /// Commit-log segments deleted.
    pub segments_deleted: usize,
    /// New oldest commit-log position.
    pub min_position: u64,
}

/// Runs one retention pass.
pub(crate) fn run(
    store: &MessageStore,
    groups: &Groups,
    reserved: Duration,
) -> Result<RetentionReport> {
    groups.persist()?;
    // The lowest commit-log position some group still needs.
    let mut needed = u64::MAX;
    let min_offsets = groups.offsets().min_offsets();
    for topic in store.topics() {
        for cq in &topic.queues {
            let Some(offset) = min_offsets.get(&(topic.name.to_string(), cq.queue_id)) else {
                continue;
            };
            if *offset < cq.max_offset() {
                if let Some(e) = cq.entry((*offset).max(cq.min_offset()))? {
                    needed = needed.min(e.position);
                }
            }
        }
    }
    let now = SystemTime::now();
    let segments = store.commit_log().segments();
    let size = store.commit_log().segment_size();
    let mut deleted = 0;
    for seg in segments.iter().take(segments.len().saturating_sub(1)) {
        if seg.base + size > needed {
            break;
        }
        let old_enough = seg
            .file
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age >= reserved);
        if !old_enough {
            break;
        }
        // The checkpoint learns the new start first: a segment missing below the start it
        // names is one retention deleted, any other missing one is a loss.
        store.raise_log_start(seg.base + size)?;
        if store.commit_log().remove(seg.base)? {
            tracing::info!(segment = %seg.path.display(), "commit-log segment deleted by retention");
            deleted += 1;
        }
    }
    let min_position = store.commit_log().min_position();
    if deleted > 0 {
        for topic in store.topics() {
            for cq in &topic.queues {
                let min = cq.remove_below(min_position)?;
                groups.offsets().clamp(&topic.name, cq.queue_id, min);
            }
        }
        groups.offsets().save()?;
        if let Some(index) = store.key_index() {
            index.retain(min_position)?;
        }
    }
    Ok(RetentionReport {
        segments_deleted: deleted,
        min_position,
    })
}

//! What the commit-log writer has done since the store opened, counted as it goes: how many
//! messages group commit put into each write and each fsync.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts of the writer's work since the store opened (see
/// [`EmbeddedBroker::write_stats`](crate::embedded::EmbeddedBroker::write_stats)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Messages appended to the commit log (sends, retries, delayed and system messages).
    pub messages: u64,
    /// Batches the writer wrote: every request waiting when it woke, in one write.
    pub batches: u64,
    /// fsyncs of the commit log: one per batch under `flush: sync`, one per flush tick with
    /// something new under `flush: async`.
    pub syncs: u64,
}

impl WriteStats {
    /// Messages per fsync: how much group commit shares one sync.
    pub fn messages_per_sync(&self) -> f64 {
        self.messages as f64 / self.syncs.max(1) as f64
    }
}

/// The live counters behind [`WriteStats`].
#[derive(Debug, Default)]
pub(crate) struct WriteCounters {
    messages: AtomicU64,
    batches: AtomicU64,
    syncs: AtomicU64,
}

impl WriteCounters {
    pub(crate) fn batch(&self, messages: u64) {
        self.messages.fetch_add(messages, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn synced(&self) {
        self.syncs.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn read(&self) -> WriteStats {
        WriteStats {
            messages: self.messages.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            syncs: self.syncs.load(Ordering::Relaxed),
        }
    }
}

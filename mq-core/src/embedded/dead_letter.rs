//! Dead-letter queues: `%DLQ%<group>` topics, listed, counted, re-sent and deleted.
//!
//! The log is append-only, so re-sent and deleted dead letters are remembered in
//! `config/dead_letters.json` and skipped. Dead-letter topics have no consumer group, so
//! retention removes them after `file-reserved-time`, as RocketMQ does.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;

use super::flush::write_atomically;
use super::store::{MessageStore, Outgoing};
use super::system_topics::ORIGIN_TOPIC;
use crate::dead_letter::DeadLetter;
use crate::error::{BrokerError, Result};
use crate::message::MessageParts;
use crate::system_topics::{dlq_group, dlq_topic, retry_topic};

/// Dead letters of every group.
#[derive(Debug)]
pub(crate) struct DeadLetterBook {
    store: Arc<MessageStore>,
    path: PathBuf,
    removed: Mutex<BTreeMap<String, BTreeSet<u64>>>,
}

impl DeadLetterBook {
    pub fn open(store: Arc<MessageStore>) -> Result<Self> {
        let path = store.data_dir().join("config").join("dead_letters.json");
        let removed = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                BrokerError::io(
                    "parse",
                    &path,
                    std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(BrokerError::io("read", &path, e)),
        };
        Ok(DeadLetterBook {
            store,
            path,
            removed: Mutex::new(removed),
        })
    }

    fn save(&self, removed: &BTreeMap<String, BTreeSet<u64>>) -> Result<()> {
        let bytes = serde_json::to_vec(removed)
            .map_err(|e| BrokerError::io("encode", &self.path, std::io::Error::other(e)))?;
        write_atomically(&self.path, &bytes)
    }

    /// The dead letters re-sent or deleted, by group: still in the log, no longer there.
    pub fn removed(&self) -> BTreeMap<String, BTreeSet<u64>> {
        self.removed.lock().clone()
    }

    fn is_removed(&self, group: &str, seq: u64) -> bool {
        self.removed
            .lock()
            .get(group)
            .is_some_and(|s| s.contains(&seq))
    }

    /// Up to `limit` live dead letters of `group` from `from`.
    pub fn list(&self, group: &str, from: u64, limit: usize) -> Result<Vec<DeadLetter>> {
        let Some(topic) = self.store.topic(&dlq_topic(group)) else {
            return Ok(Vec::new());
        };
        let cq = &topic.queues[0];
        let mut out = Vec::new();
        let mut at = from.max(cq.min_offset());
        while out.len() < limit && at < cq.max_offset() {
            let entries = cq.read(at, 256)?;
            if entries.is_empty() {
                break;
            }
            let records = self.store.read_records(&entries);
            for (i, r) in records.into_iter().enumerate() {
                let seq = at + i as u64;
                if out.len() >= limit {
                    break;
                }
                if self.is_removed(group, seq) {
                    continue;
                }
                if let Ok(rec) = r {
                    out.push(DeadLetter::from_stored(seq, group, rec.message));
                }
            }
            at += entries.len() as u64;
        }
        Ok(out)
    }

    /// Live dead letters per group.
    pub fn counts(&self) -> Vec<(String, u64)> {
        let removed = self.removed.lock();
        let mut out = Vec::new();
        for topic in self.store.topics() {
            let Some(group) = dlq_group(&topic.name) else {
                continue;
            };
            let cq = &topic.queues[0];
            let (min, max) = (cq.min_offset(), cq.max_offset());
            let gone = removed
                .get(group)
                .map_or(0, |s| s.range(min..max).count() as u64);
            out.push((group.to_owned(), max - min - gone));
        }
        out.sort();
        out
    }

    /// The stored dead letter at `seq`, if live.
    fn get(&self, group: &str, seq: u64) -> Result<Option<DeadLetter>> {
        if self.is_removed(group, seq) {
            return Ok(None);
        }
        Ok(self.list(group, seq, 1)?.into_iter().find(|d| d.seq == seq))
    }

    /// Marks a dead letter removed; false if it already was.
    fn claim(&self, group: &str, seq: u64) -> Result<bool> {
        let mut removed = self.removed.lock();
        if !removed.entry(group.to_owned()).or_default().insert(seq) {
            return Ok(false);
        }
        self.save(&removed)?;
        Ok(true)
    }

    fn unclaim(&self, group: &str, seq: u64) -> Result<()> {
        let mut removed = self.removed.lock();
        if let Some(set) = removed.get_mut(group) {
            set.remove(&seq);
        }
        self.save(&removed)
    }

    /// Sends a dead letter to its group's retry queue as a fresh message; only that group
    /// sees it again.
    pub async fn resend(&self, group: &str, seq: u64) -> Result<bool> {
        let Some(dead) = self.get(group, seq)? else {
            return Ok(false);
        };
        // Claim it first, so that two resends of one dead letter cannot both send it.
        if !self.claim(group, seq)? {
            return Ok(false);
        }
        let mut view = dead.into_resend();
        view.properties
            .insert(ORIGIN_TOPIC.into(), view.topic.clone());
        let retry = retry_topic(group, &view.topic);
        let topic = self.store.create_topic(&retry, 1)?;
        view.topic = retry;
        let sent = self
            .store
            .append(
                topic.queues[0].clone(),
                vec![Outgoing::from(MessageParts::from(view))],
            )
            .await;
        if let Err(e) = sent {
            self.unclaim(group, seq)?;
            return Err(e);
        }
        tracing::info!(group, seq, "dead letter re-sent");
        Ok(true)
    }

    /// Deletes a dead letter.
    pub fn delete(&self, group: &str, seq: u64) -> Result<bool> {
        if self.get(group, seq)?.is_none() || !self.claim(group, seq)? {
            return Ok(false);
        }
        tracing::info!(group, seq, "dead letter deleted");
        Ok(true)
    }
}

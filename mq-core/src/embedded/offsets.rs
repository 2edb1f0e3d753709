//! Consumer progress, persisted per (topic, group, queue), and per instance for broadcasting.
//!
//! The table lives in `config/consumer_offsets.json`, rewritten atomically. Progress is saved on
//! an interval (RocketMQ's `persistConsumerOffsetInterval`, 5 s), when a consumer leaves and at
//! shutdown; after a crash a group resumes from the last save, so it may see some messages
//! again, never miss one.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::flush::write_atomically;
use crate::error::{BrokerError, Result};

/// Whose progress an offset is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) struct ProgressKey {
    pub topic: String,
    pub group: String,
    /// The member, for broadcasting groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    pub queue: u32,
}

#[derive(Serialize, Deserialize)]
struct Row {
    #[serde(flatten)]
    key: ProgressKey,
    offset: u64,
}

/// The persisted progress table.
#[derive(Debug)]
pub(crate) struct OffsetStore {
    path: PathBuf,
    table: Mutex<(BTreeMap<ProgressKey, u64>, bool)>,
    /// One save at a time: concurrent saves would race on the temporary file.
    save_lock: Mutex<()>,
}

impl OffsetStore {
    /// Loads the table; a missing file is an empty table, an unreadable one an error.
    pub fn open(path: PathBuf) -> Result<Self> {
        let table = match fs::read(&path) {
            Ok(bytes) => {
                let rows: Vec<Row> = serde_json::from_slice(&bytes).map_err(|e| {
                    BrokerError::io(
                        "parse",
                        &path,
                        std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                    )
                })?;
                rows.into_iter().map(|r| (r.key, r.offset)).collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(BrokerError::io("read", &path, e)),
        };
        Ok(OffsetStore {
            path,
            table: Mutex::new((table, false)),
            save_lock: Mutex::new(()),
        })
    }

    /// The stored offset.
    pub fn get(&self, key: &ProgressKey) -> Option<u64> {
        self.table.lock().0.get(key).copied()
    }

    /// Records an offset in memory.
    pub fn set(&self, key: ProgressKey, offset: u64) {
        let mut t = self.table.lock();
        if t.0.get(&key) != Some(&offset) {
            t.0.insert(key, offset);
            t.1 = true;
        }
    }

    /// Every stored offset, in key order.
    pub fn rows(&self) -> Vec<(ProgressKey, u64)> {
        self.table
            .lock()
            .0
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// The lowest offset any clustering group still needs in each (topic, queue).
    ///
    /// Broadcasting progress does not hold retention back: as in RocketMQ, where it lives on
    /// the client, a broadcasting member that stays away longer than the retention time misses
    /// what was deleted. Otherwise every member that ever ran would pin the log forever.
    pub fn min_offsets(&self) -> BTreeMap<(String, u32), u64> {
        let mut out: BTreeMap<(String, u32), u64> = BTreeMap::new();
        for (k, v) in self
            .table
            .lock()
            .0
            .iter()
            .filter(|(k, _)| k.instance.is_none())
        {
            let e = out.entry((k.topic.clone(), k.queue)).or_insert(*v);
            *e = (*e).min(*v);
        }
        out
    }

    /// Raises every offset of (topic, queue) to at least `min` (after retention deleted below).
    pub fn clamp(&self, topic: &str, queue: u32, min: u64) {
        let mut t = self.table.lock();
        let mut changed = false;
        for (k, v) in t.0.iter_mut() {
            if k.topic == topic && k.queue == queue && *v < min {
                *v = min;
                changed = true;
            }
        }
        t.1 |= changed;
    }

    /// Writes the table if it changed since the last save.
    pub fn save(&self) -> Result<()> {
        let _one_at_a_time = self.save_lock.lock();
        let bytes = {
            let mut t = self.table.lock();
            if !t.1 {
                return Ok(());
            }
            t.1 = false;
            let rows: Vec<Row> =
                t.0.iter()
                    .map(|(k, v)| Row {
                        key: k.clone(),
                        offset: *v,
                    })
                    .collect();
            serde_json::to_vec_pretty(&rows)
                .map_err(|e| BrokerError::io("encode", &self.path, std::io::Error::other(e)))?
        };
        write_atomically(&self.path, &bytes).inspect_err(|_| self.table.lock().1 = true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(group: &str, instance: Option<&str>, queue: u32) -> ProgressKey {
        ProgressKey {
            topic: "t".into(),
            group: group.into(),
            instance: instance.map(Into::into),
            queue,
        }
    }

    #[test]
    fn saves_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("offsets.json");
        let store = OffsetStore::open(path.clone()).unwrap();
        store.set(key("g", None, 0), 5);
        store.set(key("g", Some("i1"), 1), 7);
        store.set(key("h", None, 0), 3);
        store.save().unwrap();
        let store = OffsetStore::open(path).unwrap();
        assert_eq!(store.get(&key("g", None, 0)), Some(5));
        assert_eq!(store.get(&key("g", Some("i1"), 1)), Some(7));
        store.set(key("g", Some("i1"), 0), 1);
        assert_eq!(store.min_offsets()[&("t".to_string(), 0)], 3);
        store.clamp("t", 0, 4);
        assert_eq!(store.get(&key("h", None, 0)), Some(4));
    }

    #[test]
    fn unreadable_table_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("offsets.json");
        fs::write(&path, b"{not json").unwrap();
        let err = OffsetStore::open(path).unwrap_err().to_string();
        assert!(err.contains("offsets.json"), "{err}");
    }
}

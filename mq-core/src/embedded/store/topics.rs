//! Topics: the queues of each topic, queue selection for a send, and the topic table
//! (`config/topics.json`), which is advisory: at open it is checked and raised to what the
//! index directories, the checkpoint and the log show.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use super::MessageStore;
use crate::broker::QueueSelector;
use crate::embedded::commit_log::Corruption;
use crate::embedded::consume_queue::ConsumeQueue;
use crate::embedded::flush::{write_atomically, Checkpoint};
use crate::error::{BrokerError, Result};

/// Most queues a topic may have.
pub(crate) const MAX_QUEUES: u32 = 1024;

/// Whether `name` can be a topic's index directory (names come from disk, so are checked).
fn valid_topic_dir(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= u8::MAX as usize
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0'])
}

/// The queues of one topic.
#[derive(Debug)]
pub(crate) struct Topic {
    pub name: Arc<str>,
    pub queues: Vec<Arc<ConsumeQueue>>,
    next: AtomicU32,
}

impl Topic {
    pub fn queue(&self, selector: &QueueSelector) -> Result<Arc<ConsumeQueue>> {
        let id = selector.pick(&self.name, self.queues.len() as u32, || {
            u64::from(self.next.fetch_add(1, Ordering::Relaxed))
        })?;
        self.queues
            .get(id as usize)
            .cloned()
            .ok_or_else(|| BrokerError::QueueNotFound {
                topic: self.name.to_string(),
                queue_id: id,
            })
    }
}

impl MessageStore {
    fn topic_table_path(&self) -> PathBuf {
        self.config.data_dir.join("config").join("topics.json")
    }

    /// The topics and queue counts to open: the topic table's, raised to what the index
    /// directories and the checkpoint show, since the table is advisory (the log is the truth
    /// and recovery adds what only the log knows). Damage to the table is reported.
    pub(super) fn known_topics(&self, checkpoint: Option<&Checkpoint>) -> Vec<(String, u32)> {
        let mut known: HashMap<String, u32> = HashMap::new();
        fn raise(known: &mut HashMap<String, u32>, name: &str, count: u32) {
            let c = known.entry(name.to_owned()).or_insert(0);
            *c = (*c).max(count);
        }
        let path = self.topic_table_path();
        match fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<HashMap<String, u32>>(&bytes) {
                Ok(table) => {
                    for (name, count) in table {
                        if valid_topic_dir(&name) && (1..=MAX_QUEUES).contains(&count) {
                            raise(&mut known, &name, count);
                        } else {
                            self.report_config_damage(
                                &path,
                                format!("topic {name:?} with {count} queues is not valid; taken from the indexes and the log instead"),
                            );
                        }
                    }
                }
                Err(e) => self.report_config_damage(
                    &path,
                    format!("unreadable ({e}); topics are taken from the indexes and the log"),
                ),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => self.report_config_damage(
                &path,
                format!("unreadable ({e}); topics are taken from the indexes and the log"),
            ),
        }
        let mut lagging = Vec::new();
        let root = self.config.data_dir.join("consumequeue");
        for topic in fs::read_dir(&root).into_iter().flatten().flatten() {
            let Some(name) = topic.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !valid_topic_dir(&name) {
                continue;
            }
            let count = fs::read_dir(topic.path())
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|q| q.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
                .filter(|id| *id < MAX_QUEUES)
                .map(|id| id + 1)
                .max();
            if let Some(count) = count {
                if known.get(&name).is_some_and(|c| *c < count) {
                    lagging.push((name.clone(), count));
                }
                raise(&mut known, &name, count);
            }
        }
        for (name, count) in lagging {
            self.report_config_damage(
                &path,
                format!("topic {name:?} has index directories for {count} queues, more than the table says; all are kept"),
            );
        }
        if let Some(cp) = checkpoint {
            for (name, queues) in &cp.queues {
                let count = queues.len().min(MAX_QUEUES as usize) as u32;
                if valid_topic_dir(name) && count > 0 {
                    raise(&mut known, name, count);
                }
            }
        }
        known.into_iter().collect()
    }

    fn report_config_damage(&self, path: &Path, reason: String) {
        tracing::error!(path = %path.display(), %reason, "damaged broker configuration file");
        self.corruptions.lock().push(Corruption {
            segment: path.to_owned(),
            offset: 0,
            length: 0,
            reason,
        });
    }

    pub(super) fn save_topic_table(&self) -> Result<()> {
        let table: HashMap<String, u32> = self
            .topics
            .read()
            .values()
            .map(|t| (t.name.to_string(), t.queues.len() as u32))
            .collect();
        let bytes = serde_json::to_vec_pretty(&table).map_err(|e| {
            BrokerError::io("encode", self.topic_table_path(), std::io::Error::other(e))
        })?;
        write_atomically(&self.topic_table_path(), &bytes)
    }

    /// Opens the topic's indexes (keeping those already open), with what opening repaired.
    pub(super) fn open_topic(&self, name: &str, count: u32) -> Result<(Arc<Topic>, Vec<String>)> {
        let name: Arc<str> = name.into();
        let existing = self.topic(&name);
        let mut queues = Vec::with_capacity(count as usize);
        let mut repairs = Vec::new();
        for id in 0..count {
            if let Some(q) = existing.as_ref().and_then(|t| t.queues.get(id as usize)) {
                queues.push(q.clone());
                continue;
            }
            let dir = self
                .config
                .data_dir
                .join("consumequeue")
                .join(&*name)
                .join(id.to_string());
            let (cq, damage) = ConsumeQueue::open(id, &dir, self.config.consume_queue_entries)?;
            repairs.extend(damage);
            queues.push(Arc::new(cq));
        }
        let topic = Arc::new(Topic {
            name: name.clone(),
            queues,
            next: AtomicU32::new(0),
        });
        self.topics.write().insert(name, topic.clone());
        Ok((topic, repairs))
    }

    /// The index a record read by recovery belongs to, opening or growing its topic (the topic
    /// table lags the log if the process died right after a topic's first message). `None`
    /// for a queue id no topic may have.
    pub(crate) fn queue_for_recovery(
        &self,
        name: &str,
        queue_id: u32,
    ) -> Result<Option<Arc<ConsumeQueue>>> {
        if queue_id >= MAX_QUEUES || !valid_topic_dir(name) {
            return Ok(None);
        }
        if let Some(q) = self
            .topic(name)
            .and_then(|t| t.queues.get(queue_id as usize).cloned())
        {
            return Ok(Some(q));
        }
        let count = self.config.common.default_queues.max(queue_id + 1);
        let count = self
            .topic(name)
            .map_or(count, |t| count.max(t.queues.len() as u32));
        let (topic, _) = self.open_topic(name, count)?;
        Ok(topic.queues.get(queue_id as usize).cloned())
    }

    /// The topic, if it exists.
    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().get(name).cloned()
    }

    /// All topics.
    pub fn topics(&self) -> Vec<Arc<Topic>> {
        self.topics.read().values().cloned().collect()
    }

    /// The topic, created with `count` queues if missing.
    pub fn create_topic(&self, name: &str, count: u32) -> Result<Arc<Topic>> {
        if let Some(t) = self.topic(name) {
            return Ok(t);
        }
        let _guard = self.topic_lock.lock();
        if let Some(t) = self.topic(name) {
            return Ok(t);
        }
        if count == 0 || count > MAX_QUEUES {
            return Err(BrokerError::InvalidConfig(format!(
                "topic {name:?}: queue count must be 1 to 1024, not {count}"
            )));
        }
        let (topic, _) = self.open_topic(name, count)?;
        self.save_topic_table()?;
        tracing::info!(topic = name, queues = count, "topic created");
        Ok(topic)
    }

    /// The topic for a send: created on first use unless auto-creation is off.
    pub fn topic_for_send(&self, name: &str) -> Result<Arc<Topic>> {
        match self.topic(name) {
            Some(t) => Ok(t),
            None if self.config.auto_create_topics => {
                self.create_topic(name, self.config.common.default_queues)
            }
            None => Err(BrokerError::TopicNotFound(name.to_owned())),
        }
    }
}

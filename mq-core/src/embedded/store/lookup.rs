//! Finding stored records by message id or business key: through the key index
//! (`key_index/`) when it is on, otherwise by reading the whole log. Either way each record is
//! read from the log, verified by its checksum and compared exactly, so the index only ever
//! narrows the search; a damaged record is reported and never returned.

use crate::broker::in_lookup_scope;
use crate::embedded::key_index::{id_hash, key_hash};
use crate::embedded::record::{self, DecodedRecord};
use crate::embedded::system_topics::{stored_topic, REAL_TOPIC, SCHEDULE_TOPIC};
use crate::error::Result;
use crate::message::MessageId;

use super::MessageStore;

/// What a lookup looks for: records of a message id or of a business key.
#[derive(Debug, Clone)]
pub(crate) enum Wanted {
    Id(MessageId),
    Key(String),
}

/// A lookup: what, in which topic (every topic but the internal ones when `None`), and
/// whether among the stored copies or among the records waiting in the schedule.
#[derive(Debug, Clone)]
pub(crate) struct Query {
    pub wanted: Wanted,
    /// For a scheduled record, the topic it will enter.
    pub topic: Option<String>,
    pub scheduled: bool,
}

impl Query {
    fn hash(&self) -> u64 {
        match &self.wanted {
            Wanted::Id(id) => id_hash(*id),
            Wanted::Key(key) => key_hash(key),
        }
    }

    /// Whether a stored record answers the query. A scheduled record answers it whether or
    /// not it has fired since: the delay scheduler knows which are still waiting.
    pub fn matches(&self, rec: &DecodedRecord) -> bool {
        let hit = match &self.wanted {
            Wanted::Id(id) => rec.message.id == *id,
            Wanted::Key(key) => rec.message.keys.iter().any(|k| k == key),
        };
        let topic = stored_topic(&rec.message);
        let wanted = self.topic.as_deref();
        hit && if self.scheduled {
            topic == SCHEDULE_TOPIC
                && rec
                    .message
                    .properties
                    .get(REAL_TOPIC)
                    .is_some_and(|real| in_lookup_scope(real, wanted))
        } else {
            in_lookup_scope(topic, wanted)
        }
    }
}

impl MessageStore {
    /// The first `limit` records in log order that answer `query` and pass `keep`.
    pub fn lookup(
        &self,
        query: &Query,
        limit: usize,
        keep: &dyn Fn(&DecodedRecord) -> bool,
    ) -> Result<Vec<DecodedRecord>> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let log = self.commit_log();
        let (min, end) = (log.min_position(), self.dispatched());
        let Some(index) = self.key_index() else {
            log.scan(min, end, |rec, _| {
                if query.matches(rec) && keep(rec) {
                    out.push(rec.clone());
                }
                Ok(out.len() < limit)
            })?;
            return Ok(out);
        };
        for position in index.candidates(query.hash(), log)? {
            // Positions below the log's start went to retention; above its end, nothing yet.
            if position < min || position >= end {
                continue;
            }
            let Some(rec) = self.record_at(position) else {
                continue;
            };
            if query.matches(&rec) && keep(&rec) {
                out.push(rec);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The verified record starting at `position`, or `None` when there is none (a damaged
    /// one is reported).
    fn record_at(&self, position: u64) -> Option<DecodedRecord> {
        let log = self.commit_log();
        let prefix = log.read(position, record::PREFIX_LEN).ok()?;
        let len = record::peek_len(&prefix).ok()?;
        if len > self.record_limit() {
            return None;
        }
        self.check(log.read_record(position, len)).ok()
    }
}

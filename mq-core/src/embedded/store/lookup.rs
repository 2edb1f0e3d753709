//! Finding stored records by message id or business key: through the key index
//! (`key_index/`) when it is on, otherwise by reading the whole log. Either way each record is
//! read from the log, verified by its checksum and compared exactly, so the index only ever
//! narrows the search; a damaged record is reported and never returned.

use crate::broker::in_lookup_scope;
use crate::embedded::key_index::{id_hash, key_hash};
use crate::embedded::record::{self, DecodedRecord};
use crate::embedded::system_topics::stored_topic;
use crate::error::Result;
use crate::message::MessageId;

use super::MessageStore;

/// What a lookup looks for.
#[derive(Debug, Clone)]
pub(crate) enum Query {
    /// Every copy of a message, outside internal topics.
    Id(MessageId),
    /// Messages with a key, in one topic or in every topic but the internal ones.
    Key { key: String, topic: Option<String> },
}

impl Query {
    fn hash(&self) -> u64 {
        match self {
            Query::Id(id) => id_hash(*id),
            Query::Key { key, .. } => key_hash(key),
        }
    }

    /// Whether a stored record answers the query.
    pub fn matches(&self, rec: &DecodedRecord) -> bool {
        let topic = stored_topic(&rec.message);
        match self {
            Query::Id(id) => rec.message.id == *id && in_lookup_scope(topic, None),
            Query::Key { key, topic: wanted } => {
                in_lookup_scope(topic, wanted.as_deref())
                    && rec.message.keys.iter().any(|k| k == key)
            }
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

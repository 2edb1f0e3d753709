//! What an operator sees of a broker (RocketMQ's `mqadmin topicStatus`, `consumerProgress`,
//! `resetOffsetByTime`): the figures of topics and groups, and where a group's offset can be
//! reset to. Plain serializable values, the same for every backend; the rules that turn a
//! backend's raw figures into them live here, so that no backend computes them its own way.

use serde::{Deserialize, Serialize};

use crate::subscription::MessageModel;
use crate::system_topics::retry_topic;

/// One queue of a topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    /// The queue id.
    pub queue_id: u32,
    /// The first offset still stored (retention removes what lies below).
    pub min_offset: u64,
    /// The offset the next message will get.
    pub max_offset: u64,
    /// Messages stored: `max_offset - min_offset`.
    pub messages: u64,
    /// When the last stored message was stored (ms since the Unix epoch); `None` when the
    /// queue holds none.
    pub last_store_ms: Option<u64>,
}

impl QueueStats {
    /// The figures of a queue from its offsets; `messages` follows from them.
    pub fn new(
        queue_id: u32,
        min_offset: u64,
        max_offset: u64,
        last_store_ms: Option<u64>,
    ) -> Self {
        QueueStats {
            queue_id,
            min_offset: min_offset.min(max_offset),
            max_offset,
            messages: max_offset.saturating_sub(min_offset),
            last_store_ms,
        }
    }
}

/// A topic and its queues.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicStats {
    /// The topic.
    pub topic: String,
    /// Its queues, by id.
    pub queues: Vec<QueueStats>,
}

impl TopicStats {
    /// Messages stored over all queues.
    pub fn messages(&self) -> u64 {
        self.queues.iter().map(|q| q.messages).sum()
    }
}

/// A group's progress on one queue: the group's (clustering) or one member's (broadcasting).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupQueueStats {
    /// The topic: a subscribed topic, or the group's retry topic of it
    /// (`%RETRY%<group>%<topic>`, see [`crate::system_topics::retry_topic`]).
    pub topic: String,
    /// The queue id.
    pub queue_id: u32,
    /// Broadcasting: the member whose progress this is; `None` for the group's (clustering).
    pub instance: Option<String>,
    /// The committed offset: every message below it is settled, and the group resumes here.
    pub committed: u64,
    /// The queue's max offset (the offset the next message will get).
    pub max_offset: u64,
    /// Messages of the queue stored and not yet settled by the group; what
    /// [`Broker::lag`](crate::Broker::lag) adds up. At most `max_offset - committed`: a backend
    /// that knows of settled messages above the committed offset does not count them.
    pub lag: u64,
    /// Clustering: the live member the queue is assigned to; `None` when no member is live
    /// (and for broadcasting, where every member reads every queue).
    pub owner: Option<String>,
}

/// A consumer group: its model, its live members and its progress on every queue it reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStats {
    /// The group.
    pub group: String,
    /// Clustering or broadcasting, when the backend knows the subscription (it may not, for a
    /// group known only by its stored progress).
    pub model: Option<MessageModel>,
    /// The live members' instance names, sorted.
    pub members: Vec<String>,
    /// Progress per (topic, queue, member), sorted; the retry topic of each subscribed topic
    /// has rows of its own.
    pub queues: Vec<GroupQueueStats>,
}

impl GroupStats {
    /// The group's lag on `topic`, its retry topic included: the sum over its rows (the
    /// largest member's sum, broadcasting). It agrees with [`Broker::lag`](crate::Broker::lag).
    pub fn lag(&self, topic: &str) -> u64 {
        let retry = retry_topic(&self.group, topic);
        let mut per_member: std::collections::BTreeMap<Option<&str>, u64> = Default::default();
        for row in self
            .queues
            .iter()
            .filter(|r| r.topic == topic || r.topic == retry)
        {
            *per_member.entry(row.instance.as_deref()).or_default() += row.lag;
        }
        per_member.into_values().max().unwrap_or(0)
    }

    /// Sorts members and rows so that every backend reports in one order.
    pub(crate) fn sorted(mut self) -> Self {
        self.members.sort();
        self.members.dedup();
        self.queues.sort_by(|a, b| {
            (&a.topic, a.queue_id, &a.instance).cmp(&(&b.topic, b.queue_id, &b.instance))
        });
        self
    }
}

/// Where [`Broker::reset_offset`](crate::Broker::reset_offset) moves a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResetTo {
    /// The first message still stored: everything is delivered again.
    First,
    /// The max offset: the backlog is skipped, only later messages are delivered.
    Last,
    /// The first message stored at or after this time (ms since the Unix epoch), per queue
    /// (RocketMQ's `resetOffsetByTime`); the max offset where none was.
    Timestamp(u64),
}

/// Where a reset moved one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueOffset {
    /// The queue id.
    pub queue_id: u32,
    /// The group's new committed offset on it.
    pub offset: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(topic: &str, queue_id: u32, instance: Option<&str>, lag: u64) -> GroupQueueStats {
        GroupQueueStats {
            topic: topic.into(),
            queue_id,
            instance: instance.map(Into::into),
            committed: 0,
            max_offset: lag,
            lag,
            owner: None,
        }
    }

    #[test]
    fn lag_adds_the_retry_topic_and_takes_the_largest_member() {
        let stats = GroupStats {
            group: "g".into(),
            model: Some(MessageModel::Clustering),
            members: vec![],
            queues: vec![
                row("t", 0, None, 3),
                row("t", 1, None, 4),
                row(&retry_topic("g", "t"), 0, None, 1),
                row("u", 0, None, 100),
            ],
        };
        assert_eq!(stats.lag("t"), 8);
        let stats = GroupStats {
            queues: vec![
                row("t", 0, Some("a"), 3),
                row("t", 1, Some("a"), 4),
                row("t", 0, Some("b"), 10),
            ],
            ..stats
        };
        assert_eq!(stats.lag("t"), 10);
        assert_eq!(stats.lag("nothing"), 0);
    }

    #[test]
    fn queue_messages_follow_from_the_offsets() {
        let q = QueueStats::new(1, 5, 9, Some(7));
        assert_eq!(q.messages, 4);
        assert_eq!(QueueStats::new(0, 9, 5, None).min_offset, 5);
    }
}

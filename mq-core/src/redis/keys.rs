//! Redis key names. Every key starts with the configured prefix; the keys of one queue share
//! a hash tag (`{topic:queue}`) so that a queue lives in one Redis Cluster slot and its Lua
//! scripts touch one slot only.

/// The key names of one broker namespace.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    /// The prefix every key starts with.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Counter: offset resets of a group on a topic; members drop what they read before one.
    pub(crate) fn reset_epoch(&self, group: &str, topic: &str) -> String {
        format!("{}:group:{{{group}:{topic}}}:reset", self.prefix)
    }

    /// Hash: topic → queue count.
    pub(crate) fn topics(&self) -> String {
        format!("{}:topics", self.prefix)
    }

    /// Stream: the messages of one queue; entry ids are `<offset>-1`.
    pub(crate) fn stream(&self, topic: &str, queue: u32) -> String {
        format!("{}:{{{topic}:{queue}}}", self.prefix)
    }

    /// Counter: the next offset of a queue.
    pub(crate) fn counter(&self, topic: &str, queue: u32) -> String {
        format!("{}:n", self.stream(topic, queue))
    }

    /// The base of the lookup index of a queue: sorted sets `<base><bucket>` of ids and keys,
    /// and `<base>low`, the lowest bucket retention left (see `scripts::APPEND`).
    pub(crate) fn lookup(&self, topic: &str, queue: u32) -> String {
        lookup_of(&self.stream(topic, queue))
    }

    /// Sorted set: messages waiting to enter a queue, scored by due time (ms).
    pub(crate) fn delays(&self, topic: &str, queue: u32) -> String {
        format!("{}:delays", self.stream(topic, queue))
    }

    /// Counter: orders the members of a queue's delay set that are due at the same time.
    pub(crate) fn delay_seq(&self, topic: &str, queue: u32) -> String {
        format!("{}:dseq", self.stream(topic, queue))
    }

    /// Sorted set: the lookup index of a queue's delayed messages while they wait (see
    /// `scripts::PUT_DELAYED`).
    pub(crate) fn waiting(&self, topic: &str, queue: u32) -> String {
        format!("{}:dix", self.stream(topic, queue))
    }

    /// Hash: per offset, failed attempts a group made in place or lost to timeouts.
    pub(crate) fn attempts(&self, topic: &str, queue: u32, group: &str) -> String {
        format!("{}:attempts:{group}", self.stream(topic, queue))
    }

    /// String: the instance that owns an orderly queue for a group.
    pub(crate) fn lease(&self, topic: &str, queue: u32, group: &str) -> String {
        format!("{}:lease:{group}", self.stream(topic, queue))
    }

    /// Sorted set: queues with delayed messages (member `queue:topic`), scored by the earliest
    /// due time among them.
    pub(crate) fn delay_index(&self) -> String {
        format!("{}:delay-index", self.prefix)
    }

    /// Sorted set: live instances of a group on a topic, scored by their last heartbeat (ms).
    /// A group that subscribes to several topics has members per topic, as in RocketMQ.
    pub(crate) fn members(&self, group: &str, topic: &str) -> String {
        format!("{}:group:{{{group}:{topic}}}:members", self.prefix)
    }

    /// String: the subscription a group's members on a topic share.
    pub(crate) fn subscription(&self, group: &str, topic: &str) -> String {
        format!("{}:group:{{{group}:{topic}}}:subscription", self.prefix)
    }

    /// Hash: broadcasting member → its last heartbeat (ms); kept after the member leaves, so
    /// that retention can drop the progress of one gone too long.
    pub(crate) fn seen(&self, group: &str) -> String {
        format!("{}:group:{group}:seen", self.prefix)
    }

    /// Set: groups that have a dead-letter queue.
    pub(crate) fn dead_letter_groups(&self) -> String {
        format!("{}:dlq-groups", self.prefix)
    }

    /// Hash: half messages by transaction id.
    pub(crate) fn half(&self) -> String {
        format!("{}:{{%half}}:messages", self.prefix)
    }

    /// Sorted set: transaction ids by next check-back time (ms).
    pub(crate) fn half_due(&self) -> String {
        format!("{}:{{%half}}:due", self.prefix)
    }

    /// String: which instance is ending or checking a transaction right now.
    pub(crate) fn half_lock(&self, id: &str) -> String {
        format!("{}:{{%half}}:lock:{id}", self.prefix)
    }

    /// List: transactions discarded after their last unanswered check.
    pub(crate) fn half_discarded(&self) -> String {
        format!("{}:{{%half}}:discarded", self.prefix)
    }
}

/// The lookup base of the queue whose stream key is `stream`.
pub(crate) fn lookup_of(stream: &str) -> String {
    format!("{stream}:ix:")
}

/// The member of the delay index naming a queue.
pub(crate) fn index_member(topic: &str, queue: u32) -> String {
    format!("{queue}:{topic}")
}

/// The queue named by a member of the delay index.
pub(crate) fn parse_index_member(member: &str) -> Option<(String, u32)> {
    let (q, topic) = member.split_once(':')?;
    Some((topic.to_owned(), q.parse().ok()?))
}

/// The stream entry id of a queue offset.
pub(crate) fn entry_id(offset: u64) -> String {
    format!("{offset}-1")
}

/// The queue offset of a stream entry id.
pub(crate) fn offset_of(id: &str) -> Option<u64> {
    id.split_once('-')?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_keys_share_one_hash_tag() {
        let k = Keys::new("mq");
        let tag = |key: &str| {
            let open = key.find('{').unwrap();
            let close = key[open..].find('}').unwrap() + open;
            key[open + 1..close].to_owned()
        };
        let s = k.stream("order", 3);
        assert_eq!(s, "mq:{order:3}");
        for key in [
            k.counter("order", 3),
            k.delays("order", 3),
            k.delay_seq("order", 3),
            k.waiting("order", 3),
            k.attempts("order", 3, "g"),
            k.lease("order", 3, "g"),
            k.lookup("order", 3),
        ] {
            assert_eq!(tag(&key), "order:3", "{key}");
        }
        assert_eq!(tag(&k.half()), tag(&k.half_due()));
        assert_eq!(tag(&k.members("g", "t")), tag(&k.subscription("g", "t")));
        assert_eq!(tag(&k.half()), tag(&k.half_lock("x")));
    }

    #[test]
    fn ids_and_index_members_round_trip() {
        assert_eq!(offset_of(&entry_id(42)), Some(42));
        assert_eq!(offset_of("nope"), None);
        assert_eq!(
            parse_index_member(&index_member("%RETRY%g%t", 0)),
            Some(("%RETRY%g%t".to_owned(), 0))
        );
    }
}

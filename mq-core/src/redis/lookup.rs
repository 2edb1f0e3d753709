//! Lookups by message id and business key on Redis (RocketMQ's `queryMessage`).
//!
//! The storing scripts (`APPEND`, `MOVE_DUE`) index every entry they add in the queue's
//! lookup index, in the same atomic call: per bucket of 65,536 offsets a sorted set whose
//! members are `i<id>\0<offset>` and `k<key>\0<offset>` (see `scripts.rs`), in the queue's
//! hash tag. Retention deletes the buckets wholly below the first entry it keeps
//! (`TRIM_LOOKUP`), so the index expires with the stream. A lookup reads, per queue of the
//! topics in scope, the members of the buckets from the first retained offset on
//! (`ZRANGEBYLEX`, one pipelined call), then fetches each candidate entry from its stream and
//! compares its id or keys exactly: an entry deleted since (a dead letter deleted or re-sent)
//! or trimmed is simply not there, so the index never answers by itself.
//!
//! Cost per message in Redis: one sorted-set member per id and per key, about 35 bytes plus
//! the key's length, plus Redis's per-member overhead (BENCHMARKS.md has the measured
//! figure).
//!
//! A delayed message (or a retry) waiting in a queue's delay set is indexed apart, in the
//! queue's waiting index (`PUT_DELAYED` adds its members, `MOVE_DUE` takes them out when it
//! moves the message into the stream), with members `i<id>\0` and `k<key>\0` followed by its
//! due time, sequence and schedule time: a scheduled lookup reads the members, then fetches
//! each message from the delay set by its due time (its score) and sequence (its prefix).
//! That costs memory only while the message waits: about 370 bytes for a message with one
//! 36-character key (two members; `MEMORY USAGE` of 100,000 such messages' members on Redis
//! 7.0: 36.8 MB), nothing once it has moved.

use ::redis::streams::StreamRangeReply;

use crate::broker::in_lookup_scope;
use crate::error::Result;
use crate::message::{MessageId, MessageView, ScheduledMessage};
use crate::system_topics::dlq_topic;

use super::dead_letter::decode_entry;
use super::envelope::Envelope;
use super::keys::{entry_id, offset_of};
use super::scripts::LOOKUP_BUCKET;
use super::Shared;

/// What a lookup looks for.
pub(crate) enum Wanted<'a> {
    Id(MessageId),
    Key(&'a str),
}

impl Wanted<'_> {
    /// The index token: the member's bytes before the offset.
    fn token(&self) -> Vec<u8> {
        let mut t = Vec::new();
        match self {
            Wanted::Id(id) => {
                t.push(b'i');
                t.extend_from_slice(id.to_string().as_bytes());
            }
            Wanted::Key(key) => {
                t.push(b'k');
                t.extend_from_slice(key.as_bytes());
            }
        }
        t.push(0);
        t
    }

    /// The token, and the first byte string above every member that starts with it (the
    /// token's closing `\0` raised to `\x01`).
    fn bounds(&self) -> (Vec<u8>, Vec<u8>) {
        let token = self.token();
        let mut upper = token.clone();
        if let Some(last) = upper.last_mut() {
            *last = 1;
        }
        (token, upper)
    }

    fn matches(&self, view: &MessageView) -> bool {
        match self {
            Wanted::Id(id) => view.id == *id,
            Wanted::Key(key) => view.keys.iter().any(|k| k == key),
        }
    }
}

/// Every queue of `topics` (topic, queue count), as (topic, queue).
fn queues_of(topics: Vec<(String, u32)>) -> Vec<(String, u32)> {
    topics
        .into_iter()
        .flat_map(|(topic, n)| (0..n).map(move |q| (topic.clone(), q)))
        .collect()
}

/// The due time, sequence and schedule time at the end of a waiting-index member (16 hex
/// digits each).
fn waiting_tail(member: &[u8]) -> Option<(u64, [u8; 16], u64)> {
    let tail = member.get(member.len().checked_sub(48)?..)?;
    let hex = |b: &[u8]| u64::from_str_radix(std::str::from_utf8(b).ok()?, 16).ok();
    let seq: [u8; 16] = tail[16..32].try_into().ok()?;
    Some((hex(&tail[..16])?, seq, hex(&tail[32..])?))
}

/// The offset at the end of an index member (16 hex digits).
fn member_offset(member: &[u8]) -> Option<u64> {
    let hex = member.get(member.len().checked_sub(16)?..)?;
    u64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

impl Shared {
    /// The topics a lookup searches, with their queue counts: `topic` if given and known,
    /// else every topic but the internal ones. Dead-letter topics are not in the topic table
    /// (their one stream is written directly); they come from the set of groups that have one.
    pub(crate) async fn lookup_topics(&self, topic: Option<&str>) -> Result<Vec<(String, u32)>> {
        let dead_letter_groups: Vec<String> = self
            .redis
            .query(
                "listing dead-letter queues",
                ::redis::cmd("SMEMBERS")
                    .arg(self.keys.dead_letter_groups())
                    .clone(),
            )
            .await?;
        let dead: Vec<String> = dead_letter_groups.iter().map(|g| dlq_topic(g)).collect();
        let mut out = Vec::new();
        match topic {
            Some(t) if dead.iter().any(|d| d == t) => out.push((t.to_owned(), 1)),
            Some(t) => {
                if let Some(n) = self.queue_count(t).await? {
                    out.push((t.to_owned(), n));
                }
            }
            None => {
                for name in self.topic_names().await? {
                    if !in_lookup_scope(&name, None) || dead.contains(&name) {
                        continue;
                    }
                    if let Some(n) = self.queue_count(&name).await? {
                        out.push((name, n));
                    }
                }
                out.extend(dead.into_iter().map(|d| (d, 1)));
            }
        }
        Ok(out)
    }

    /// The first `limit` stored entries of `topics` that answer `wanted`, oldest first, each
    /// under the topic it is stored in.
    pub(crate) async fn lookup(
        &self,
        wanted: Wanted<'_>,
        topics: Vec<(String, u32)>,
        limit: usize,
    ) -> Result<Vec<MessageView>> {
        if limit == 0 || topics.is_empty() {
            return Ok(Vec::new());
        }
        let queues = queues_of(topics);
        let mut ends = ::redis::pipe();
        for (topic, q) in &queues {
            ends.cmd("GET")
                .arg(self.keys.counter(topic, *q))
                .cmd("XRANGE")
                .arg(self.keys.stream(topic, *q))
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(1);
        }
        let mut ends: Vec<::redis::Value> = self.redis.pipe("reading queue ends", ends).await?;
        let (token, upper) = wanted.bounds();
        let count: i64 = i64::try_from(limit).unwrap_or(-1);
        let mut search = ::redis::pipe();
        let mut searched = Vec::new();
        for (i, (topic, q)) in queues.iter().enumerate() {
            let mut take = |at: usize| {
                ends.get_mut(at)
                    .map(|v| std::mem::replace(v, ::redis::Value::Nil))
            };
            let max: u64 = take(2 * i)
                .and_then(|v| ::redis::from_redis_value::<Option<u64>>(v).ok().flatten())
                .unwrap_or(0);
            let first: Option<StreamRangeReply> =
                take(2 * i + 1).and_then(|v| ::redis::from_redis_value(v).ok());
            let Some(min) = first.and_then(|r| r.ids.first().and_then(|e| offset_of(&e.id))) else {
                continue;
            };
            let base = self.keys.lookup(topic, *q);
            let mut from = token.clone();
            from.extend_from_slice(format!("{min:016x}").as_bytes());
            for bucket in min / LOOKUP_BUCKET..=max.saturating_sub(1).max(min) / LOOKUP_BUCKET {
                let mut lo = b"[".to_vec();
                lo.extend_from_slice(&from);
                let mut hi = b"(".to_vec();
                hi.extend_from_slice(&upper);
                search
                    .cmd("ZRANGEBYLEX")
                    .arg(format!("{base}{bucket}"))
                    .arg(lo)
                    .arg(hi)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(count);
                searched.push(i);
            }
        }
        if searched.is_empty() {
            return Ok(Vec::new());
        }
        let found: Vec<Vec<Vec<u8>>> = self
            .redis
            .pipe("searching the lookup index", search)
            .await?;
        let mut candidates = Vec::new();
        for (i, members) in searched.into_iter().zip(found) {
            for m in members {
                if let Some(offset) = member_offset(&m) {
                    candidates.push((i, offset));
                }
            }
        }
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let mut fetch = ::redis::pipe();
        for (i, offset) in &candidates {
            let (topic, q) = &queues[*i];
            fetch
                .cmd("XRANGE")
                .arg(self.keys.stream(topic, *q))
                .arg(entry_id(*offset))
                .arg(entry_id(*offset));
        }
        let entries: Vec<StreamRangeReply> =
            self.redis.pipe("reading found entries", fetch).await?;
        let mut out = Vec::new();
        for ((i, offset), reply) in candidates.into_iter().zip(entries) {
            let (topic, q) = &queues[i];
            for entry in reply.ids {
                match decode_entry(entry.map, *q, offset, 0) {
                    Ok(mut view) if wanted.matches(&view) => {
                        view.topic = topic.clone();
                        out.push(view);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(topic = %topic, queue = q, offset, error = %e, "unreadable stream entry skipped by a lookup")
                    }
                }
            }
        }
        crate::broker::sort_oldest_first(&mut out);
        out.truncate(limit);
        Ok(out)
    }

    /// The first `limit` messages (by due time, then sequence) waiting in the delay sets of
    /// `topics` that answer `wanted`, each under the topic and queue it will enter.
    pub(crate) async fn scheduled(
        &self,
        wanted: Wanted<'_>,
        topics: Vec<(String, u32)>,
        limit: usize,
    ) -> Result<Vec<ScheduledMessage>> {
        if limit == 0 || topics.is_empty() {
            return Ok(Vec::new());
        }
        let queues = queues_of(topics);
        let (token, upper) = wanted.bounds();
        let count: i64 = i64::try_from(limit).unwrap_or(-1);
        let mut search = ::redis::pipe();
        for (topic, q) in &queues {
            let mut lo = b"[".to_vec();
            lo.extend_from_slice(&token);
            let mut hi = b"(".to_vec();
            hi.extend_from_slice(&upper);
            search
                .cmd("ZRANGEBYLEX")
                .arg(self.keys.waiting(topic, *q))
                .arg(lo)
                .arg(hi)
                .arg("LIMIT")
                .arg(0)
                .arg(count);
        }
        let found: Vec<Vec<Vec<u8>>> = self
            .redis
            .pipe("searching the waiting index", search)
            .await?;
        let mut candidates = Vec::new();
        for (i, members) in found.into_iter().enumerate() {
            candidates.extend(
                members
                    .iter()
                    .filter_map(|m| waiting_tail(m))
                    .map(|(due, seq, scheduled)| (i, due, seq, scheduled)),
            );
        }
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let mut fetch = ::redis::pipe();
        for (i, due, _, _) in &candidates {
            let (topic, q) = &queues[*i];
            fetch
                .cmd("ZRANGEBYSCORE")
                .arg(self.keys.delays(topic, *q))
                .arg(*due)
                .arg(*due);
        }
        let sets: Vec<Vec<Vec<u8>>> = self.redis.pipe("reading waiting messages", fetch).await?;
        let mut out = Vec::new();
        for ((i, due, seq, scheduled), members) in candidates.into_iter().zip(sets) {
            let (topic, q) = &queues[i];
            // Moved into its stream since the index was read: found by `lookup` now.
            let Some(member) = members.into_iter().find(|m| m.starts_with(&seq)) else {
                continue;
            };
            match Envelope::decode_owned(member[16..].to_vec()) {
                Ok(envelope) => {
                    let mut view = envelope.view(*q, 0, scheduled, 0);
                    if !wanted.matches(&view) {
                        continue;
                    }
                    view.topic = topic.clone();
                    out.push(ScheduledMessage {
                        message: view,
                        due_ms: due,
                    });
                }
                Err(e) => {
                    tracing::error!(topic = %topic, queue = q, due, error = %e, "unreadable delayed message skipped by a lookup")
                }
            }
        }
        crate::broker::sort_soonest_due(&mut out);
        out.truncate(limit);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_members_end_in_due_sequence_and_schedule_time() {
        let mut m = Wanted::Key("order-7").token();
        m.extend_from_slice(
            format!(
                "{:016x}{:016x}{:016x}",
                1_733_500_000_000u64, 9u64, 1_733_400_000_000u64
            )
            .as_bytes(),
        );
        let (due, seq, scheduled) = waiting_tail(&m).unwrap();
        assert_eq!((due, scheduled), (1_733_500_000_000, 1_733_400_000_000));
        assert_eq!(&seq, format!("{:016x}", 9u64).as_bytes());
        assert_eq!(waiting_tail(b"short"), None);
    }

    #[test]
    fn members_end_in_their_offset() {
        let mut m = Wanted::Key("order-7").token();
        m.extend_from_slice(format!("{:016x}", 70_000u64).as_bytes());
        assert_eq!(member_offset(&m), Some(70_000));
        assert_eq!(member_offset(b"short"), None);
    }
}

//! What operators see and do on Redis: topic and group figures read from the streams, their
//! counters and the Redis consumer groups, and offset resets (`XGROUP SETID`, with the group's
//! pending entries dropped, in one script per queue so that no read slips between).
//!
//! A reset also increments the (group, topic) reset counter: live members, in any process,
//! see it at their next refresh (one heartbeat interval at most) and drop what they had read
//! or handed out of the topic's queues, so that they continue from the new position.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use ::redis::{Script, Value};

use crate::error::{BrokerError, Result};
use crate::stats::{GroupQueueStats, GroupStats, QueueOffset, QueueStats, ResetTo, TopicStats};
use crate::subscription::MessageModel;
use crate::system_topics::{listed, listed_group, retry_topic};

use super::group::assign;
use super::keys::offset_of;
use super::retention::groups;
use super::Shared;

/// Moves Redis consumer groups of one queue. KEYS: stream, counter, then the attempts hash of
/// each group. ARGV: mode (`first`, `last`, `time`), time (ms), then the group names. Each
/// group's pending entries are acknowledged and its last-delivered id set just before the
/// target, created there if missing; entries read is the target, since every offset below it
/// was added, so that Redis keeps counting the group's lag. Returns the target offset.
static RESET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local max = tonumber(redis.call('GET', KEYS[2]) or '0')
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local min = max
if #first > 0 then
  min = tonumber(string.match(first[1][1], '^(%d+)'))
end
local function stamp(offset)
  local e = redis.call('XRANGE', KEYS[1], string.format('%d-1', offset), '+', 'COUNT', 1)
  if #e == 0 then return nil end
  local f = e[1][2]
  for i = 1, #f, 2 do
    if f[i] == 't' then return tonumber(f[i + 1]) end
  end
  return 0
end
local target = max
if ARGV[1] == 'first' then
  target = min
elseif ARGV[1] == 'time' then
  local ts = tonumber(ARGV[2])
  local lo, hi = min, max
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    local t = stamp(mid)
    if t ~= nil and t < ts then lo = mid + 1 else hi = mid end
  end
  target = lo
end
local id = string.format('%d-0', target)
for i = 3, #ARGV do
  local group = ARGV[i]
  local set = redis.pcall('XGROUP', 'SETID', KEYS[1], group, id, 'ENTRIESREAD', target)
  if type(set) == 'table' and set.err then
    redis.call('XGROUP', 'CREATE', KEYS[1], group, id, 'MKSTREAM', 'ENTRIESREAD', target)
  else
    while true do
      local p = redis.call('XPENDING', KEYS[1], group, '-', '+', 1000)
      if #p == 0 then break end
      local ids = {}
      for j, e in ipairs(p) do ids[j] = e[1] end
      redis.call('XACK', KEYS[1], group, unpack(ids))
    end
  end
  redis.call('DEL', KEYS[i])
end
return target
",
    )
});

/// The store time (`t`) of a stream entry's fields.
fn stored_at(fields: &std::collections::HashMap<String, Value>) -> Option<u64> {
    match fields.get("t")? {
        Value::BulkString(t) => std::str::from_utf8(t).ok()?.parse().ok(),
        _ => None,
    }
}

impl Shared {
    /// Listed topics, sorted.
    pub(crate) async fn topic_names(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .redis
            .query(
                "listing topics",
                ::redis::cmd("HKEYS").arg(self.keys.topics()).clone(),
            )
            .await?;
        names.retain(|n| listed(n));
        names.sort();
        Ok(names)
    }

    /// The max offset (the counter) of every queue of a topic.
    async fn max_offsets(&self, topic: &str, queues: u32) -> Result<Vec<u64>> {
        let mut pipe = ::redis::pipe();
        for q in 0..queues {
            pipe.cmd("GET").arg(self.keys.counter(topic, q));
        }
        let max: Vec<Option<u64>> = self.redis.pipe("reading queue counters", pipe).await?;
        Ok(max.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// A topic's queues and their offsets.
    pub(crate) async fn topic_stats(&self, topic: &str) -> Result<TopicStats> {
        let queues = self
            .queue_count(topic)
            .await?
            .ok_or_else(|| BrokerError::TopicNotFound(topic.to_owned()))?;
        let max = self.max_offsets(topic, queues).await?;
        let mut pipe = ::redis::pipe();
        for q in 0..queues {
            let stream = self.keys.stream(topic, q);
            pipe.cmd("XRANGE")
                .arg(&stream)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(1)
                .cmd("XREVRANGE")
                .arg(&stream)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1);
        }
        let ends: Vec<::redis::streams::StreamRangeReply> =
            self.redis.pipe("reading queue ends", pipe).await?;
        let mut out = Vec::with_capacity(queues as usize);
        for (q, max) in max.into_iter().enumerate() {
            let first = ends.get(2 * q).and_then(|r| r.ids.first());
            let last = ends.get(2 * q + 1).and_then(|r| r.ids.first());
            let min = first.and_then(|e| offset_of(&e.id)).unwrap_or(max);
            out.push(QueueStats::new(
                q as u32,
                min,
                max,
                last.and_then(|e| stored_at(&e.map)),
            ));
        }
        Ok(TopicStats {
            topic: topic.to_owned(),
            queues: out,
        })
    }

    /// (group, topic) of every stored subscription, optionally of one group only.
    async fn subscriptions(&self, group: Option<&str>) -> Result<Vec<(String, String)>> {
        let head = format!("{}:group:{{", self.keys.prefix());
        let tail = "}:subscription";
        // Names cannot hold glob characters, so the group is matched literally.
        let pattern = format!("{head}{}:*{tail}", group.unwrap_or("*"));
        let mut cursor = 0u64;
        let mut out = BTreeSet::new();
        loop {
            let (next, keys): (u64, Vec<String>) = self
                .redis
                .query(
                    "listing groups",
                    ::redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(512)
                        .clone(),
                )
                .await?;
            for key in keys {
                let pair = key
                    .strip_prefix(&head)
                    .and_then(|k| k.strip_suffix(tail))
                    .and_then(|k| k.split_once(':'));
                if let Some((g, t)) = pair {
                    if group.is_none_or(|want| want == g) {
                        out.insert((g.to_owned(), t.to_owned()));
                    }
                }
            }
            cursor = next;
            if cursor == 0 {
                return Ok(out.into_iter().collect());
            }
        }
    }

    /// Every group that subscribed, sorted.
    pub(crate) async fn group_names(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .subscriptions(None)
            .await?
            .into_iter()
            .map(|(g, _)| g)
            .filter(|g| listed_group(g))
            .collect();
        names.dedup();
        Ok(names)
    }

    /// The model of a stored subscription (`topic|filter|Model|Mode`; the filter may hold `|`).
    async fn model(&self, group: &str, topic: &str) -> Result<Option<MessageModel>> {
        let stored: Option<String> = self
            .redis
            .query(
                "reading a subscription",
                ::redis::cmd("GET")
                    .arg(self.keys.subscription(group, topic))
                    .clone(),
            )
            .await?;
        Ok(stored.and_then(|s| match s.rsplit('|').nth(1) {
            Some("Clustering") => Some(MessageModel::Clustering),
            Some("Broadcasting") => Some(MessageModel::Broadcasting),
            _ => None,
        }))
    }

    /// Live members of a group on a topic, sorted.
    async fn live_members(&self, group: &str, topic: &str) -> Result<Vec<String>> {
        let since = self.clock.now_ms().saturating_sub(self.liveness_ms());
        let mut live: Vec<String> = self
            .redis
            .query(
                "reading live members",
                ::redis::cmd("ZRANGEBYSCORE")
                    .arg(self.keys.members(group, topic))
                    .arg(since)
                    .arg("+inf")
                    .clone(),
            )
            .await?;
        live.sort();
        Ok(live)
    }

    /// The figures of a group on every topic it subscribed to.
    pub(crate) async fn group_stats(&self, group: &str) -> Result<GroupStats> {
        let topics = self.subscriptions(Some(group)).await?;
        if topics.is_empty() {
            return Err(BrokerError::GroupNotFound {
                group: group.to_owned(),
                topic: None,
            });
        }
        let mut stats = GroupStats {
            group: group.to_owned(),
            model: None,
            members: Vec::new(),
            queues: Vec::new(),
        };
        let member_prefix = format!("{group}@");
        for (_, topic) in topics {
            let model = self.model(group, &topic).await?;
            stats.model = stats.model.or(model);
            let live = self.live_members(group, &topic).await?;
            let Some(queues) = self.queue_count(&topic).await? else {
                continue;
            };
            let retry = retry_topic(group, &topic);
            let mut sources: Vec<(String, u32, bool)> =
                (0..queues).map(|q| (topic.clone(), q, true)).collect();
            sources.push((retry, 0, false));
            for (t, q, real) in sources {
                let max: Option<u64> = self
                    .redis
                    .query(
                        "reading a queue counter",
                        ::redis::cmd("GET").arg(self.keys.counter(&t, q)).clone(),
                    )
                    .await?;
                let max = max.unwrap_or(0);
                for (name, committed, unsettled) in groups(self, &self.keys.stream(&t, q)).await? {
                    let instance = if name == group {
                        None
                    } else if let Some(i) = name.strip_prefix(&member_prefix) {
                        Some(i.to_owned())
                    } else {
                        continue;
                    };
                    let owner = match (real, &instance, model) {
                        (true, None, Some(MessageModel::Clustering) | None) => live
                            .iter()
                            .find(|m| {
                                assign(MessageModel::Clustering, queues, &live, m).contains(&q)
                            })
                            .cloned(),
                        _ => None,
                    };
                    stats.queues.push(GroupQueueStats {
                        topic: t.clone(),
                        queue_id: q,
                        instance,
                        committed: committed.min(max),
                        max_offset: max,
                        lag: unsettled,
                        owner,
                    });
                }
            }
            stats.members.extend(live);
        }
        Ok(stats.sorted())
    }

    /// Moves a group's progress on every queue of `topic` and tells its live members.
    pub(crate) async fn reset_offset(
        &self,
        group: &str,
        topic: &str,
        to: ResetTo,
    ) -> Result<Vec<QueueOffset>> {
        self.check_open()?;
        let queues = self
            .queue_count(topic)
            .await?
            .ok_or_else(|| BrokerError::TopicNotFound(topic.to_owned()))?;
        if self
            .subscriptions(Some(group))
            .await?
            .iter()
            .all(|(_, t)| t != topic)
        {
            return Err(BrokerError::GroupNotFound {
                group: group.to_owned(),
                topic: Some(topic.to_owned()),
            });
        }
        let model = self.model(group, topic).await?;
        let member_prefix = format!("{group}@");
        let (mode, ms) = match to {
            ResetTo::First => ("first", 0),
            ResetTo::Last => ("last", 0),
            ResetTo::Timestamp(ms) => ("time", ms),
        };
        let mut out = Vec::with_capacity(queues as usize);
        for q in 0..queues {
            let stream = self.keys.stream(topic, q);
            let mut names: Vec<String> = groups(self, &stream)
                .await?
                .into_iter()
                .map(|g| g.0)
                .filter(|n| n == group || n.starts_with(&member_prefix))
                .collect();
            if names.is_empty() && model != Some(MessageModel::Broadcasting) {
                names.push(group.to_owned());
            }
            let mut keys = vec![stream, self.keys.counter(topic, q)];
            keys.extend(names.iter().map(|n| self.keys.attempts(topic, q, n)));
            let mut args = vec![mode.as_bytes().to_vec(), ms.to_string().into_bytes()];
            args.extend(names.iter().map(|n| n.as_bytes().to_vec()));
            let offset: u64 = self
                .redis
                .script("resetting a group's offset", &RESET, keys, args)
                .await?;
            out.push(QueueOffset {
                queue_id: q,
                offset,
            });
        }
        let _: u64 = self
            .redis
            .query(
                "announcing an offset reset",
                ::redis::cmd("INCR")
                    .arg(self.keys.reset_epoch(group, topic))
                    .clone(),
            )
            .await?;
        tracing::info!(group, topic, ?to, ?out, "consumer offsets reset");
        Ok(out)
    }
}

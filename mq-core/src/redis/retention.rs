//! Stream retention: a queue's stream is trimmed (`XTRIM MINID`) below the first entry some
//! group still needs: its oldest unacknowledged entry, or the first it has not read. The
//! queue's lookup index (by id and key) loses the buckets wholly below that entry with it.

use std::sync::Arc;

use ::redis::Value;

use crate::error::Result;

use super::keys::{entry_id, lookup_of, offset_of};
use super::{scripts, Shared};

/// What one trim pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrimReport {
    /// Streams looked at.
    pub streams: u64,
    /// Entries removed.
    pub removed: u64,
}

/// Reads `name` from an `XINFO GROUPS` entry.
fn field<'a>(group: &'a Value, name: &str) -> Option<&'a Value> {
    match group {
        Value::Map(pairs) => pairs.iter().find_map(|(k, v)| match k {
            Value::BulkString(b) if b == name.as_bytes() => Some(v),
            Value::SimpleString(s) if s == name => Some(v),
            _ => None,
        }),
        Value::Array(items) => items.chunks(2).find_map(|kv| match kv {
            [Value::BulkString(b), v] if b == name.as_bytes() => Some(v),
            [Value::SimpleString(s), v] if s == name => Some(v),
            _ => None,
        }),
        _ => None,
    }
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn int(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Int(i) => Some(*i),
        Value::Nil => None,
        other => text(Some(other))?.parse().ok(),
    }
}

/// The first offset a group has not read, from its last-delivered id: entries are `<offset>-1`,
/// and a group placed before an entry (`0-0`, or `<offset>-0` when it started at a time) has
/// not read that offset.
fn next_unread(last_delivered: &str) -> Option<u64> {
    let (offset, seq) = last_delivered.split_once('-')?;
    let offset: u64 = offset.parse().ok()?;
    Some(if seq == "0" { offset } else { offset + 1 })
}

/// Per group of a stream: (name, first offset it still needs, entries it has not settled).
pub(crate) async fn groups(shared: &Shared, stream: &str) -> Result<Vec<(String, u64, u64)>> {
    let info: Value = match shared
        .redis
        .query(
            "reading stream groups",
            ::redis::cmd("XINFO").arg("GROUPS").arg(stream).clone(),
        )
        .await
    {
        Ok(v) => v,
        // No such stream yet.
        Err(_) => return Ok(Vec::new()),
    };
    let Value::Array(list) = info else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for g in &list {
        let Some(name) = text(field(g, "name")) else {
            continue;
        };
        let next = text(field(g, "last-delivered-id"))
            .and_then(|id| next_unread(&id))
            .unwrap_or(0);
        let pending = int(field(g, "pending")).unwrap_or(0).max(0) as u64;
        let lag = int(field(g, "lag")).unwrap_or(0).max(0) as u64;
        let first = if pending > 0 {
            let summary: Value = shared
                .redis
                .query(
                    "reading pending entries",
                    ::redis::cmd("XPENDING").arg(stream).arg(&name).clone(),
                )
                .await?;
            match summary {
                Value::Array(parts) => text(parts.get(1))
                    .and_then(|id| offset_of(&id))
                    .unwrap_or(next),
                _ => next,
            }
        } else {
            next
        };
        out.push((name, first, pending + lag));
    }
    Ok(out)
}

/// Whether a broadcasting member's own group (`group@instance`; mq group names cannot hold
/// `@`) belongs to a member whose last heartbeat is older than the reserve: it is gone, and
/// its group would keep every later message of the stream forever.
async fn abandoned(shared: &Shared, group: &str) -> Result<bool> {
    let Some((group, instance)) = group.split_once('@') else {
        return Ok(false);
    };
    let seen: Option<u64> = shared
        .redis
        .query(
            "reading when a member was last seen",
            ::redis::cmd("HGET")
                .arg(shared.keys.seen(group))
                .arg(instance)
                .clone(),
        )
        .await?;
    let reserve = shared.config.broadcast_reserve.as_millis() as u64;
    Ok(seen.is_some_and(|ms| ms.saturating_add(reserve) < shared.clock.now_ms()))
}

/// Trims one stream; returns the entries removed.
async fn trim(shared: &Shared, stream: &str) -> Result<u64> {
    let mut keep = Vec::new();
    for g in groups(shared, stream).await? {
        if abandoned(shared, &g.0).await? {
            tracing::info!(stream, group = %g.0, "removing the group of a broadcasting member gone longer than the reserve");
            let _: i64 = shared
                .redis
                .query(
                    "removing an abandoned group",
                    ::redis::cmd("XGROUP")
                        .arg("DESTROY")
                        .arg(stream)
                        .arg(&g.0)
                        .clone(),
                )
                .await?;
        } else {
            keep.push(g);
        }
    }
    let Some(min) = keep.iter().map(|g| g.1).min() else {
        return Ok(0);
    };
    let removed = shared
        .redis
        .query(
            "trimming a stream",
            ::redis::cmd("XTRIM")
                .arg(stream)
                .arg("MINID")
                .arg(entry_id(min))
                .clone(),
        )
        .await?;
    // The lookup index goes with the entries: the buckets wholly below what is kept.
    let _: u64 = shared
        .redis
        .script(
            "trimming the lookup index",
            &scripts::TRIM_LOOKUP,
            vec![lookup_of(stream)],
            vec![min.to_string().into_bytes()],
        )
        .await?;
    Ok(removed)
}

/// Trims every queue of every topic.
pub(crate) async fn trim_all(shared: &Shared) -> Result<TrimReport> {
    let topics: Vec<(String, u32)> = shared
        .redis
        .query(
            "listing topics",
            ::redis::cmd("HGETALL").arg(shared.keys.topics()).clone(),
        )
        .await?;
    let mut report = TrimReport::default();
    for (topic, queues) in topics {
        if topic.starts_with("%DLQ%") {
            // Dead letters stay until resent or deleted.
            continue;
        }
        for q in 0..queues {
            report.streams += 1;
            report.removed += trim(shared, &shared.keys.stream(&topic, q)).await?;
        }
    }
    Ok(report)
}

/// Messages of `topic` a group has not settled, its retry stream included, as on the embedded
/// broker (the largest over members, broadcasting).
pub(crate) async fn lag(shared: &Shared, group: &str, topic: &str) -> Result<u64> {
    let Some(queues) = shared.queue_count(topic).await? else {
        return Ok(0);
    };
    let member_prefix = format!("{group}@");
    let mut per_group = std::collections::HashMap::<String, u64>::new();
    let retry = shared
        .keys
        .stream(&crate::system_topics::retry_topic(group, topic), 0);
    let streams = (0..queues)
        .map(|q| shared.keys.stream(topic, q))
        .chain(std::iter::once(retry));
    for stream in streams {
        for (name, _, unsettled) in groups(shared, &stream).await? {
            if name == group || name.starts_with(&member_prefix) {
                *per_group.entry(name).or_default() += unsettled;
            }
        }
    }
    Ok(per_group.into_values().max().unwrap_or(0))
}

/// The trim loop.
pub(crate) async fn run(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(shared.config.trim_interval).await;
        match trim_all(&shared).await {
            Ok(r) if r.removed > 0 => {
                tracing::debug!(streams = r.streams, removed = r.removed, "streams trimmed")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "stream trimming failed; retrying later"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::next_unread;

    #[test]
    fn a_group_before_an_entry_has_not_read_it() {
        assert_eq!(next_unread("0-0"), Some(0));
        assert_eq!(next_unread("0-1"), Some(1));
        assert_eq!(next_unread("41-1"), Some(42));
        assert_eq!(next_unread("7-0"), Some(7));
        assert_eq!(next_unread("junk"), None);
    }
}

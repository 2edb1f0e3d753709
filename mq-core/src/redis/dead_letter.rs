//! Dead letters on Redis: one stream per group (`%DLQ%<group>`), whose queue offsets are the
//! dead letters' sequence numbers.

use std::collections::HashMap;

use ::redis::streams::StreamRangeReply;
use ::redis::Value;

use crate::dead_letter::{Burial, DeadLetter};
use crate::error::Result;
use crate::message::MessageView;
use crate::system_topics::{dlq_topic, retry_topic};

use super::envelope::Envelope;
use super::keys::{entry_id, offset_of};
use super::Shared;

/// Decodes a stream entry (`m` = message, `t` = store time) into a view, or says why not.
/// Takes the entry, so that the body is a slice of the reply's blob rather than a copy.
pub(crate) fn decode_entry(
    mut map: HashMap<String, Value>,
    queue_id: u32,
    offset: u64,
    extra_attempts: u32,
) -> std::result::Result<MessageView, String> {
    let Some(Value::BulkString(blob)) = map.remove("m") else {
        return Err("entry has no message field".into());
    };
    let stored = match map.get("t") {
        Some(Value::BulkString(t)) => std::str::from_utf8(t)
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(0),
        _ => 0,
    };
    Ok(Envelope::decode_owned(blob)?.view(queue_id, offset, stored, extra_attempts))
}

/// Writes a delivery to its group's dead-letter stream with why and how often it failed.
pub(crate) async fn bury(
    shared: &Shared,
    group: &str,
    view: &MessageView,
    attempts: u32,
    first_failure_ms: Option<u64>,
    reason: &str,
) -> Result<()> {
    let now_ms = shared.clock.now_ms();
    let mut envelope = Envelope::from_view(view, view.reconsume_times);
    Burial {
        origin_topic: &view.topic,
        group,
        attempts,
        first_failure_ms,
        now_ms,
        reason,
    }
    .mark(&mut envelope.properties);
    shared
        .append(&dlq_topic(group), 0, vec![envelope.encode()?])
        .await?;
    let _: () = shared
        .redis
        .query(
            "recording a dead-letter queue",
            ::redis::cmd("SADD")
                .arg(shared.keys.dead_letter_groups())
                .arg(group)
                .clone(),
        )
        .await?;
    tracing::warn!(group, topic = %view.topic, attempts, reason, "message dead-lettered");
    Ok(())
}

async fn range(
    shared: &Shared,
    group: &str,
    from: u64,
    to: Option<u64>,
    limit: usize,
) -> Result<StreamRangeReply> {
    let key = shared.keys.stream(&dlq_topic(group), 0);
    let end = to.map(entry_id).unwrap_or_else(|| "+".into());
    shared
        .redis
        .query(
            "reading dead letters",
            ::redis::cmd("XRANGE")
                .arg(key)
                .arg(format!("{from}-0"))
                .arg(end)
                .arg("COUNT")
                .arg(limit)
                .clone(),
        )
        .await
}

fn dead_letters(group: &str, reply: StreamRangeReply) -> Vec<DeadLetter> {
    reply
        .ids
        .into_iter()
        .filter_map(|entry| {
            let seq = offset_of(&entry.id)?;
            match decode_entry(entry.map, 0, seq, 0) {
                Ok(view) => Some(DeadLetter::from_stored(seq, group, view)),
                Err(e) => {
                    tracing::error!(group, seq, error = %e, "unreadable dead letter skipped");
                    None
                }
            }
        })
        .collect()
}

pub(crate) async fn list(
    shared: &Shared,
    group: &str,
    from: u64,
    limit: usize,
) -> Result<Vec<DeadLetter>> {
    Ok(dead_letters(
        group,
        range(shared, group, from, None, limit.max(1)).await?,
    ))
}

pub(crate) async fn counts(shared: &Shared) -> Result<Vec<(String, u64)>> {
    let mut groups: Vec<String> = shared
        .redis
        .query(
            "listing dead-letter queues",
            ::redis::cmd("SMEMBERS")
                .arg(shared.keys.dead_letter_groups())
                .clone(),
        )
        .await?;
    groups.sort();
    let mut out = Vec::with_capacity(groups.len());
    for g in groups {
        let n: u64 = shared
            .redis
            .query(
                "counting dead letters",
                ::redis::cmd("XLEN")
                    .arg(shared.keys.stream(&dlq_topic(&g), 0))
                    .clone(),
            )
            .await?;
        out.push((g, n));
    }
    Ok(out)
}

pub(crate) async fn delete(shared: &Shared, group: &str, seq: u64) -> Result<bool> {
    let n: u64 = shared
        .redis
        .query(
            "deleting a dead letter",
            ::redis::cmd("XDEL")
                .arg(shared.keys.stream(&dlq_topic(group), 0))
                .arg(entry_id(seq))
                .clone(),
        )
        .await?;
    Ok(n > 0)
}

/// Sends a dead letter back to its group's retry stream as a fresh message, then removes it.
pub(crate) async fn resend(shared: &Shared, group: &str, seq: u64) -> Result<bool> {
    let Some(dead) = dead_letters(group, range(shared, group, seq, Some(seq), 1).await?)
        .into_iter()
        .next()
    else {
        return Ok(false);
    };
    let view = dead.into_resend();
    let envelope = Envelope::from_view(&view, 0);
    let retry = retry_topic(group, &view.topic);
    shared.append(&retry, 0, vec![envelope.encode()?]).await?;
    delete(shared, group, seq).await
}

//! The delay scheduler: delayed messages and retries wait in a sorted set per queue, scored by
//! due time, and a Lua script moves the due ones into the queue's stream atomically. Every
//! broker runs the loop; the script makes two brokers moving the same queue harmless.

use std::sync::Arc;
use std::time::Duration;

use crate::error::Result;

use super::keys::{index_member, parse_index_member};
use super::{scripts, Shared};

/// Members moved per script call: bounds how long one call blocks the server.
const MOVE_BATCH: usize = 256;

/// Stores encoded messages to enter `topic`/`queue` at `due_ms`. Returns their places in the
/// queue's delay set.
pub(crate) async fn put(
    shared: &Shared,
    topic: &str,
    queue: u32,
    due_ms: u64,
    blobs: Vec<Vec<u8>>,
) -> Result<Vec<u64>> {
    let count = blobs.len() as u64;
    let mut args = Vec::with_capacity(blobs.len() + 2);
    args.push(due_ms.to_string().into_bytes());
    args.push(shared.clock.now_ms().to_string().into_bytes());
    args.extend(blobs);
    let size: u64 = shared
        .redis
        .script(
            "storing delayed messages",
            &scripts::PUT_DELAYED,
            vec![
                shared.keys.delays(topic, queue),
                shared.keys.delay_seq(topic, queue),
                shared.keys.waiting(topic, queue),
            ],
            args,
        )
        .await?;
    // The index names the queue after its set holds the message, so a scheduler that reads
    // the index finds it (see `reindex`).
    lower_index(shared, &index_member(topic, queue), due_ms).await?;
    shared.scheduler_wake.notify_waiters();
    let first = size.saturating_sub(count);
    Ok((first..size).collect())
}

/// Adds to `pipe` the command that lowers a queue's index score to `due` (or adds it).
fn lower_index_cmd(pipe: &mut ::redis::Pipeline, shared: &Shared, member: &str, due: u64) {
    pipe.cmd("ZADD")
        .arg(shared.keys.delay_index())
        .arg("LT")
        .arg(due)
        .arg(member)
        .ignore();
}

/// Lowers a queue's index score to `due` (or adds it).
async fn lower_index(shared: &Shared, member: &str, due: u64) -> Result<()> {
    let mut pipe = ::redis::pipe();
    lower_index_cmd(&mut pipe, shared, member, due);
    shared.redis.pipe::<()>("indexing delays", pipe).await
}

/// Messages waiting in every delay set.
pub(crate) async fn pending(shared: &Shared) -> Result<u64> {
    let members: Vec<String> = shared
        .redis
        .query(
            "reading the delay index",
            ::redis::cmd("ZRANGE")
                .arg(shared.keys.delay_index())
                .arg(0)
                .arg(-1)
                .clone(),
        )
        .await?;
    let mut total = 0;
    for m in members {
        if let Some((topic, queue)) = parse_index_member(&m) {
            let n: u64 = shared
                .redis
                .query(
                    "counting delayed messages",
                    ::redis::cmd("ZCARD")
                        .arg(shared.keys.delays(&topic, queue))
                        .clone(),
                )
                .await?;
            total += n;
        }
    }
    Ok(total)
}

/// Moves what is due in one queue; returns how many moved.
async fn move_due(shared: &Shared, topic: &str, queue: u32, now: u64) -> Result<u64> {
    let delays = shared.keys.delays(topic, queue);
    let (moved, next): (u64, i64) = shared
        .redis
        .script(
            "moving due messages",
            &scripts::MOVE_DUE,
            vec![
                delays.clone(),
                shared.keys.stream(topic, queue),
                shared.keys.counter(topic, queue),
                shared.keys.lookup(topic, queue),
                shared.keys.waiting(topic, queue),
            ],
            vec![
                now.to_string().into_bytes(),
                MOVE_BATCH.to_string().into_bytes(),
            ],
        )
        .await?;
    reindex(shared, topic, queue, next).await?;
    if moved > 0 {
        shared.signal(topic).notify_waiters();
    }
    Ok(moved)
}

/// Sets the queue's index score to its earliest due time. A message stored meanwhile has
/// already lowered the score, or is seen by the second look at the set, so none is forgotten.
async fn reindex(shared: &Shared, topic: &str, queue: u32, next: i64) -> Result<()> {
    let member = index_member(topic, queue);
    let score = if next < 0 {
        "+inf".to_owned()
    } else {
        next.to_string()
    };
    let mut pipe = ::redis::pipe();
    pipe.cmd("ZADD")
        .arg(shared.keys.delay_index())
        .arg(&score)
        .arg(&member)
        .ignore()
        .cmd("ZRANGE")
        .arg(shared.keys.delays(topic, queue))
        .arg(0)
        .arg(0)
        .arg("WITHSCORES");
    let (head,): (Vec<(Vec<u8>, f64)>,) = shared.redis.pipe("indexing delays", pipe).await?;
    if let Some((_, due)) = head.first() {
        lower_index(shared, &member, *due as u64).await?;
    }
    Ok(())
}

/// One pass: moves everything due. Returns the earliest due time left, if any.
async fn tick(shared: &Shared) -> Result<Option<u64>> {
    loop {
        let now = shared.clock.now_ms();
        let due: Vec<String> = shared
            .redis
            .query(
                "reading the delay index",
                ::redis::cmd("ZRANGEBYSCORE")
                    .arg(shared.keys.delay_index())
                    .arg("-inf")
                    .arg(now)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(64)
                    .clone(),
            )
            .await?;
        if due.is_empty() {
            break;
        }
        for member in &due {
            if let Some((topic, queue)) = parse_index_member(member) {
                while move_due(shared, &topic, queue, now).await? == MOVE_BATCH as u64 {}
            }
        }
    }
    let head: Vec<(String, f64)> = shared
        .redis
        .query(
            "reading the delay index",
            ::redis::cmd("ZRANGE")
                .arg(shared.keys.delay_index())
                .arg(0)
                .arg(0)
                .arg("WITHSCORES")
                .clone(),
        )
        .await?;
    Ok(head
        .first()
        .map(|(_, s)| *s)
        .filter(|s| s.is_finite())
        .map(|s| s as u64))
}

/// Puts every queue with delayed messages back in the index. The index can miss one only if a
/// scheduler stopped between its two steps of `reindex`; this pass, at start and every
/// `trim-interval`, bounds how long such a message waits.
async fn reconcile(shared: &Shared) -> Result<()> {
    let topics: Vec<(String, u32)> = shared
        .redis
        .query(
            "listing topics",
            ::redis::cmd("HGETALL").arg(shared.keys.topics()).clone(),
        )
        .await?;
    let queues: Vec<(String, u32)> = topics
        .into_iter()
        .flat_map(|(t, n)| (0..n).map(move |q| (t.clone(), q)))
        .collect();
    for chunk in queues.chunks(256) {
        let mut pipe = ::redis::pipe();
        for (t, q) in chunk {
            pipe.cmd("ZRANGE")
                .arg(shared.keys.delays(t, *q))
                .arg(0)
                .arg(0)
                .arg("WITHSCORES");
        }
        let heads: Vec<Vec<(Vec<u8>, f64)>> = shared.redis.pipe("reading delay sets", pipe).await?;
        let mut fix = ::redis::pipe();
        let mut any = false;
        for ((t, q), head) in chunk.iter().zip(heads) {
            if let Some((_, due)) = head.first() {
                any = true;
                lower_index_cmd(&mut fix, shared, &index_member(t, *q), *due as u64);
            }
        }
        if any {
            shared.redis.pipe::<()>("indexing delays", fix).await?;
        }
    }
    Ok(())
}

/// The scheduler loop: sleeps until the next due time, a local delayed send, or the poll
/// interval (for sends of other processes).
pub(crate) async fn run(shared: Arc<Shared>) {
    let mut next_reconcile = tokio::time::Instant::now();
    loop {
        if tokio::time::Instant::now() >= next_reconcile {
            if let Err(e) = reconcile(&shared).await {
                tracing::warn!(error = %e, "delay scheduler: reconciling the index failed");
            }
            next_reconcile = tokio::time::Instant::now() + shared.config.trim_interval;
        }
        let wake = shared.scheduler_wake.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        let poll = shared.config.poll_interval;
        let sleep = match tick(&shared).await {
            Ok(Some(next)) => {
                let until = shared.clock.instant_at(next);
                until.min(tokio::time::Instant::now() + poll.max(Duration::from_millis(1)))
            }
            Ok(None) => tokio::time::Instant::now() + poll,
            Err(e) => {
                tracing::warn!(error = %e, "delay scheduler: redis unavailable, retrying");
                tokio::time::Instant::now() + poll.max(Duration::from_millis(500))
            }
        };
        tokio::select! {
            _ = &mut wake => {}
            _ = tokio::time::sleep_until(sleep) => {}
        }
    }
}

//! Transactional (half) messages on Redis: kept in a hash until their transaction ends, and
//! checked back by any live broker that has the producer's checker. A short lock per
//! transaction keeps an ending and a check from delivering one message twice.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::broker::{Prepared, SendOptions, SendResult, TransactionId};
use crate::error::{BackendErrorKind, BrokerError, Result};
use crate::message::{Message, MessageId};
use crate::transaction::TxState;

use super::envelope::Envelope;
use super::Shared;

/// How long a transaction lock lives if its holder dies.
const LOCK_TTL: Duration = Duration::from_secs(30);

/// A stored half message.
#[derive(Debug, Serialize, Deserialize)]
struct Half {
    producer: String,
    topic: String,
    queue: u32,
    checks: u32,
    #[serde(with = "serde_bytes")]
    message: Vec<u8>,
}

fn encode(half: &Half) -> Result<Vec<u8>> {
    rmp_serde::to_vec(half).map_err(|e| {
        super::io::backend_error("encoding a half message", BackendErrorKind::Malformed, e)
    })
}

pub(crate) async fn prepare(
    shared: &Shared,
    message: Message,
    options: SendOptions,
    producer: &str,
) -> Result<Prepared> {
    message.validate(shared.config.common.max_message_size)?;
    let topic = message.topic().to_owned();
    let queue = shared.select_queue(&topic, &options.queue).await?;
    let message_id = message.id();
    let id = MessageId::new().to_string();
    let half = Half {
        producer: producer.to_owned(),
        topic,
        queue,
        checks: 0,
        message: Envelope::from_message(message).encode()?,
    };
    let due = shared.clock.now_ms() + shared.config.common.check.timeout.as_millis() as u64;
    store(shared, &id, &half, due).await?;
    shared.checker_wake.notify_waiters();
    Ok(Prepared {
        transaction: TransactionId(id),
        message_id,
    })
}

/// Holds a transaction's lock while it is ended or checked.
struct Lock<'a> {
    shared: &'a Shared,
    key: String,
    owner: String,
}

impl<'a> Lock<'a> {
    async fn try_take(shared: &'a Shared, id: &str) -> Result<Option<Lock<'a>>> {
        let key = shared.keys.half_lock(id);
        let owner = MessageId::new().to_string();
        let taken: Option<String> = shared
            .redis
            .query(
                "locking a transaction",
                ::redis::cmd("SET")
                    .arg(&key)
                    .arg(&owner)
                    .arg("NX")
                    .arg("PX")
                    .arg(LOCK_TTL.as_millis() as u64)
                    .clone(),
            )
            .await?;
        Ok(taken.map(|_| Lock { shared, key, owner }))
    }

    async fn release(self) -> Result<()> {
        self.shared.release(&self.key, &self.owner).await
    }
}

async fn read(shared: &Shared, id: &str) -> Result<Option<Half>> {
    let blob: Option<Vec<u8>> = shared
        .redis
        .query(
            "reading a half message",
            ::redis::cmd("HGET").arg(shared.keys.half()).arg(id).clone(),
        )
        .await?;
    match blob {
        None => Ok(None),
        Some(b) => rmp_serde::from_slice(&b).map(Some).map_err(|e| {
            super::io::backend_error(
                format!("half message {id} is unreadable"),
                BackendErrorKind::Malformed,
                e,
            )
        }),
    }
}

async fn forget(shared: &Shared, id: &str) -> Result<()> {
    let mut pipe = ::redis::pipe();
    pipe.atomic()
        .cmd("HDEL")
        .arg(shared.keys.half())
        .arg(id)
        .ignore()
        .cmd("ZREM")
        .arg(shared.keys.half_due())
        .arg(id)
        .ignore();
    shared.redis.pipe::<()>("ending a transaction", pipe).await
}

/// Delivers a half message to its queue.
async fn commit(shared: &Shared, half: &Half) -> Result<SendResult> {
    let envelope = Envelope::decode(&half.message).map_err(|e| {
        super::io::backend_error("half message is unreadable", BackendErrorKind::Malformed, e)
    })?;
    let message_id = envelope.id;
    let offsets = shared
        .append(&half.topic, half.queue, vec![half.message.clone()])
        .await?;
    Ok(SendResult {
        message_id,
        queue_id: half.queue,
        queue_offset: offsets.first().copied().unwrap_or(0),
    })
}

pub(crate) async fn end(
    shared: &Shared,
    transaction: &TransactionId,
    state: TxState,
) -> Result<Option<SendResult>> {
    let id = transaction.0.as_str();
    let unknown = || BrokerError::UnknownTransaction(id.to_owned());
    if state == TxState::Unknown {
        return match read(shared, id).await? {
            Some(_) => Ok(None),
            None => Err(unknown()),
        };
    }
    // A check-back may hold the lock for a moment.
    let deadline = tokio::time::Instant::now() + shared.config.command_timeout;
    let lock = loop {
        if let Some(lock) = Lock::try_take(shared, id).await? {
            break lock;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(BrokerError::backend(
                "redis",
                BackendErrorKind::Unavailable,
                format!("ending a transaction: transaction {id} is being checked back"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let outcome = async {
        let Some(half) = read(shared, id).await? else {
            return Err(unknown());
        };
        let sent = match state {
            TxState::Commit => Some(commit(shared, &half).await?),
            _ => None,
        };
        forget(shared, id).await?;
        Ok(sent)
    }
    .await;
    lock.release().await?;
    outcome
}

/// Checks one due transaction if this broker has its producer's checker. Returns whether it
/// was handled here.
async fn check(shared: &Shared, id: &str) -> Result<bool> {
    // A look without the lock first: most due halves of other producers are skipped cheaply.
    match read(shared, id).await {
        Ok(Some(half)) if !shared.checkers.lock().contains_key(&half.producer) => return Ok(false),
        Ok(_) => {}
        Err(e) => {
            discard_unreadable(shared, id, &e).await?;
            return Ok(true);
        }
    }
    let Some(lock) = Lock::try_take(shared, id).await? else {
        return Ok(false);
    };
    let outcome = async {
        let Some(mut half) = read(shared, id).await? else {
            let _: () = shared
                .redis
                .query(
                    "ending a transaction",
                    ::redis::cmd("ZREM")
                        .arg(shared.keys.half_due())
                        .arg(id)
                        .clone(),
                )
                .await?;
            return Ok(true);
        };
        let checker = shared.checkers.lock().get(&half.producer).cloned();
        let Some(checker) = checker else {
            return Ok(false);
        };
        let envelope = Envelope::decode(&half.message)
            .map_err(|e| super::io::backend_error("half message is unreadable", BackendErrorKind::Malformed, e))?;
        let view = envelope.view(half.queue, 0, shared.clock.now_ms(), 0);
        // The answer must come while the lock is held, or the producer's own ending could
        // race it.
        let state = match tokio::time::timeout(LOCK_TTL / 2, checker.check(&view)).await {
            Ok(state) => state,
            Err(_) => {
                tracing::warn!(transaction = id, producer = %half.producer, "check-back did not answer in time; treated as unknown");
                TxState::Unknown
            }
        };
        half.checks += 1;
        match state {
            TxState::Commit => {
                commit(shared, &half).await?;
                forget(shared, id).await?;
            }
            TxState::Rollback => forget(shared, id).await?,
            TxState::Unknown if half.checks >= shared.config.common.check.max_checks => {
                tracing::warn!(
                    transaction = id,
                    producer = %half.producer,
                    topic = %half.topic,
                    checks = half.checks,
                    "transaction still unknown after the last check-back: half message discarded"
                );
                let note = serde_json::json!({
                    "transaction": id,
                    "producer": half.producer,
                    "topic": half.topic,
                    "message_id": view.id.to_string(),
                    "checks": half.checks,
                    "discarded_at_ms": shared.clock.now_ms(),
                });
                discard(shared, id, note).await?;
            }
            TxState::Unknown => {
                let due = shared.clock.now_ms() + shared.config.common.check.interval.as_millis() as u64;
                store(shared, id, &half, due).await?;
            }
        }
        Ok(true)
    }
    .await;
    lock.release().await?;
    outcome
}

/// A half message that cannot be decoded is not a message: it is reported and moved out of
/// the way, so that it does not stop the check-back of every other transaction.
async fn discard_unreadable(shared: &Shared, id: &str, error: &BrokerError) -> Result<()> {
    tracing::error!(transaction = id, %error, "unreadable half message discarded");
    let note = serde_json::json!({
        "transaction": id,
        "reason": format!("unreadable: {error}"),
        "discarded_at_ms": shared.clock.now_ms(),
    });
    discard(shared, id, note).await
}

/// Removes a half message, leaving `note` in the list of discarded transactions.
async fn discard(shared: &Shared, id: &str, note: serde_json::Value) -> Result<()> {
    let _: () = shared
        .redis
        .query(
            "recording a discarded transaction",
            ::redis::cmd("RPUSH")
                .arg(shared.keys.half_discarded())
                .arg(note.to_string())
                .clone(),
        )
        .await?;
    forget(shared, id).await
}

/// Stores (or updates) a half message and its next check time, together.
async fn store(shared: &Shared, id: &str, half: &Half, due: u64) -> Result<()> {
    let mut pipe = ::redis::pipe();
    pipe.atomic()
        .cmd("HSET")
        .arg(shared.keys.half())
        .arg(id)
        .arg(encode(half)?)
        .ignore()
        .cmd("ZADD")
        .arg(shared.keys.half_due())
        .arg(due)
        .arg(id)
        .ignore();
    shared
        .redis
        .pipe::<()>("storing a half message", pipe)
        .await
}

/// Due transactions read per page.
const PAGE: usize = 128;

/// One pass over the due transactions, paging past those of producers this broker has no
/// checker for. Returns the next due time, if it knows one.
async fn tick(shared: &Shared) -> Result<Option<u64>> {
    if shared.checkers.lock().is_empty() {
        return Ok(None);
    }
    let now = shared.clock.now_ms();
    let mut skipped = 0;
    loop {
        let due: Vec<(String, f64)> = shared
            .redis
            .query(
                "reading due transactions",
                ::redis::cmd("ZRANGE")
                    .arg(shared.keys.half_due())
                    .arg("-inf")
                    .arg("+inf")
                    .arg("BYSCORE")
                    .arg("LIMIT")
                    .arg(skipped)
                    .arg(PAGE)
                    .arg("WITHSCORES")
                    .clone(),
            )
            .await?;
        let page = due.len();
        for (id, score) in due {
            let score = score as u64;
            if score > now {
                return Ok(Some(score));
            }
            match check(shared, &id).await {
                Ok(true) => {}
                Ok(false) => skipped += 1,
                Err(e) => {
                    tracing::warn!(transaction = %id, error = %e, "check-back failed; retrying later");
                    skipped += 1;
                }
            }
        }
        if page < PAGE {
            return Ok(None);
        }
    }
}

/// The check-back loop.
pub(crate) async fn run(shared: Arc<Shared>) {
    loop {
        let wake = shared.checker_wake.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        let poll = tokio::time::Instant::now() + shared.config.poll_interval;
        let sleep = match tick(&shared).await {
            Ok(Some(next)) => shared.clock.instant_at(next).min(poll),
            Ok(None) => poll,
            Err(e) => {
                tracing::warn!(error = %e, "transaction checker: redis unavailable, retrying");
                poll.max(tokio::time::Instant::now() + Duration::from_millis(500))
            }
        };
        tokio::select! {
            _ = &mut wake => {}
            _ = tokio::time::sleep_until(sleep) => {}
        }
    }
}

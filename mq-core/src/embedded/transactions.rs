//! Transactional (half) messages and the check-back that resolves the ones whose producer
//! never answered.
//!
//! A half message is stored in the `%HALF%` topic, invisible to consumers. Its outcome, and
//! every unanswered check, is an op record in `%HALF_OP%` (a small JSON body), so that after a
//! restart the pending half messages and their check counts are rebuilt from the log. Commit
//! writes a copy of the message, with its id, to its real queue.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::consume_queue::ConsumeQueue;
use super::offsets::{OffsetStore, ProgressKey};
use super::store::{MessageStore, Outgoing};
use super::system_topics::{
    HALF_OP_TOPIC, HALF_TOPIC, PRODUCER, REAL_QID, REAL_TOPIC, TRANSACTION_GROUP,
};
use crate::broker::{Prepared, SendResult, TransactionId};
use crate::clock::Clock;
use crate::error::{BackendErrorKind, BrokerError, Result};
use crate::message::{MessageId, MessageParts, MessageView};
use crate::transaction::{CheckPolicy, TransactionChecker, TxState};

/// An op record: what became of a half message, or how often it was checked.
#[derive(Debug, Serialize, Deserialize)]
struct Op {
    half: u64,
    state: TxState,
    checks: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

#[derive(Debug, Clone)]
struct Half {
    producer: String,
    checks: u32,
    next_check_ms: u64,
    /// Being committed, rolled back or checked right now.
    busy: bool,
}

/// A half message discarded after its last check-back went unanswered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscardedTransaction {
    /// The message id.
    pub message_id: MessageId,
    /// Its producer.
    pub producer: String,
    /// How many check-backs went unanswered.
    pub checks: u32,
}

/// Half messages waiting for an outcome, and the checkers that answer for them.
pub(crate) struct Transactions {
    store: Arc<MessageStore>,
    offsets: Arc<OffsetStore>,
    clock: Clock,
    policy: CheckPolicy,
    half: Arc<ConsumeQueue>,
    op: Arc<ConsumeQueue>,
    pending: Mutex<BTreeMap<u64, Half>>,
    checkers: RwLock<HashMap<String, Arc<dyn TransactionChecker>>>,
    discarded: Mutex<VecDeque<DiscardedTransaction>>,
    wake: Notify,
    /// Prepares between their append and their entry in `pending`: progress must not move
    /// past them meanwhile.
    preparing: AtomicUsize,
}

impl std::fmt::Debug for Transactions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transactions")
            .field("pending", &self.pending.lock().len())
            .finish_non_exhaustive()
    }
}

const DISCARDED_KEPT: usize = 1000;

impl Transactions {
    /// Opens the half and op topics and rebuilds the pending half messages.
    pub fn open(
        store: Arc<MessageStore>,
        offsets: Arc<OffsetStore>,
        clock: Clock,
        policy: CheckPolicy,
    ) -> Result<Self> {
        let half = store.create_topic(HALF_TOPIC, 1)?.queues[0].clone();
        let op = store.create_topic(HALF_OP_TOPIC, 1)?.queues[0].clone();
        let tx = Transactions {
            store,
            offsets,
            clock,
            policy,
            half,
            op,
            pending: Mutex::new(BTreeMap::new()),
            checkers: RwLock::new(HashMap::new()),
            discarded: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            preparing: AtomicUsize::new(0),
        };
        tx.rebuild()?;
        Ok(tx)
    }

    fn rebuild(&self) -> Result<()> {
        // Outcomes and check counts first.
        let mut ops: HashMap<u64, (bool, u32)> = HashMap::new();
        let mut at = self.op.min_offset();
        while at < self.op.max_offset() {
            let entries = self.op.read(at, 256)?;
            if entries.is_empty() {
                break;
            }
            for rec in self.store.read_records(&entries).into_iter().flatten() {
                let Ok(op) = serde_json::from_slice::<Op>(&rec.message.body) else {
                    continue;
                };
                let e = ops.entry(op.half).or_insert((false, 0));
                e.0 |= op.state != TxState::Unknown;
                e.1 = e.1.max(op.checks);
            }
            at += entries.len() as u64;
        }
        let base = self
            .offsets
            .get(&progress_key())
            .unwrap_or_else(|| self.half.min_offset())
            .clamp(self.half.min_offset(), self.half.max_offset());
        let now = self.clock.now_ms();
        let mut pending = self.pending.lock();
        let mut at = base;
        while at < self.half.max_offset() {
            let entries = self.half.read(at, 256)?;
            if entries.is_empty() {
                break;
            }
            let records = self.store.read_records(&entries);
            for (i, (entry, rec)) in entries.iter().zip(records).enumerate() {
                let offset = at + i as u64;
                let (resolved, checks) = ops.get(&offset).copied().unwrap_or((false, 0));
                let Ok(rec) = rec else { continue };
                if resolved {
                    continue;
                }
                let producer = rec
                    .message
                    .properties
                    .get(PRODUCER)
                    .cloned()
                    .unwrap_or_default();
                let first = entry.store_timestamp + self.policy.timeout.as_millis() as u64;
                let next = first + u64::from(checks) * self.policy.interval.as_millis() as u64;
                pending.insert(
                    offset,
                    Half {
                        producer,
                        checks,
                        next_check_ms: next.max(now),
                        busy: false,
                    },
                );
            }
            at += entries.len() as u64;
        }
        if !pending.is_empty() {
            tracing::info!(
                pending = pending.len(),
                "half messages awaiting their outcome"
            );
        }
        drop(pending);
        self.save_progress();
        Ok(())
    }

    fn save_progress(&self) {
        if self.preparing.load(Ordering::Acquire) > 0 {
            return;
        }
        let base = self
            .pending
            .lock()
            .keys()
            .next()
            .copied()
            .unwrap_or_else(|| self.half.max_offset());
        self.offsets.set(progress_key(), base);
    }

    /// Stores a half message bound for `queue` of `topic`.
    pub async fn prepare(
        &self,
        mut parts: MessageParts,
        topic: &str,
        queue: &ConsumeQueue,
        producer: &str,
    ) -> Result<Prepared> {
        let message_id = parts.id;
        parts.properties.insert(REAL_TOPIC.into(), topic.to_owned());
        parts
            .properties
            .insert(REAL_QID.into(), queue.queue_id.to_string());
        parts
            .properties
            .insert(PRODUCER.into(), producer.to_owned());
        parts.topic = HALF_TOPIC.into();
        self.preparing.fetch_add(1, Ordering::AcqRel);
        let _preparing = Decrement(&self.preparing);
        let r = self
            .store
            .append(self.half.clone(), vec![Outgoing::from(parts)])
            .await?;
        let offset = r.first().ok_or(BrokerError::Closed)?.queue_offset;
        self.pending.lock().insert(
            offset,
            Half {
                producer: producer.to_owned(),
                checks: 0,
                next_check_ms: self.clock.now_ms() + self.policy.timeout.as_millis() as u64,
                busy: false,
            },
        );
        self.wake.notify_one();
        Ok(Prepared {
            transaction: TransactionId(offset.to_string()),
            message_id,
        })
    }

    /// Commits or rolls back; `Unknown` leaves the message to check-back. The outcome is
    /// written by a task of its own, so that a caller that gives up half-way cannot leave the
    /// half message marked busy forever.
    pub async fn end(
        self: &Arc<Self>,
        id: &TransactionId,
        state: TxState,
    ) -> Result<Option<SendResult>> {
        let offset: u64 =
            id.0.parse()
                .map_err(|_| BrokerError::UnknownTransaction(id.to_string()))?;
        {
            let mut pending = self.pending.lock();
            match pending.get_mut(&offset) {
                Some(h) if !h.busy => {
                    if state == TxState::Unknown {
                        return Ok(None);
                    }
                    h.busy = true;
                }
                _ => return Err(BrokerError::UnknownTransaction(id.to_string())),
            }
        }
        let this = self.clone();
        tokio::spawn(async move {
            let result = this.resolve(offset, state, None).await;
            if result.is_err() {
                if let Some(h) = this.pending.lock().get_mut(&offset) {
                    h.busy = false;
                }
            }
            result
        })
        .await
        .map_err(|e| {
            BrokerError::backend_caused(
                "embedded",
                BackendErrorKind::Failed,
                format!("ending transaction {offset}"),
                e,
            )
        })?
    }

    /// Writes the outcome of a busy half message and forgets it.
    async fn resolve(
        &self,
        offset: u64,
        state: TxState,
        reason: Option<String>,
    ) -> Result<Option<SendResult>> {
        let checks = self.pending.lock().get(&offset).map_or(0, |h| h.checks);
        let mut sent = None;
        if state == TxState::Commit {
            if let Some((view, topic, qid)) = self.read_half(offset)? {
                let queue = self
                    .store
                    .topic_for_send(&topic)?
                    .queue(&crate::QueueSelector::Queue(qid))?;
                let mut parts = MessageParts::from(view);
                parts.topic = topic;
                let mut r = self
                    .store
                    .append(queue, vec![Outgoing::from(parts)])
                    .await?;
                sent = r.pop();
            }
        }
        self.write_op(Op {
            half: offset,
            state,
            checks,
            reason,
        })
        .await?;
        self.pending.lock().remove(&offset);
        self.save_progress();
        Ok(sent)
    }

    async fn write_op(&self, op: Op) -> Result<()> {
        let body = serde_json::to_vec(&op)
            .map_err(|e| BrokerError::io("encode", "op record", std::io::Error::other(e)))?;
        let parts = crate::Message::new(HALF_OP_TOPIC, body).into_parts();
        self.store
            .append(self.op.clone(), vec![Outgoing::from(parts)])
            .await?;
        Ok(())
    }

    /// The half message as its consumers will see it, its topic and queue.
    fn read_half(&self, offset: u64) -> Result<Option<(MessageView, String, u32)>> {
        let Some(entry) = self.half.entry(offset)? else {
            return Ok(None);
        };
        let Some(Ok(rec)) = self.store.read_records(&[entry]).pop() else {
            return Ok(None);
        };
        let mut view = rec.message;
        let topic = view.properties.remove(REAL_TOPIC).unwrap_or_default();
        let qid = view
            .properties
            .remove(REAL_QID)
            .and_then(|q| q.parse().ok())
            .unwrap_or(0);
        view.properties.remove(PRODUCER);
        view.topic = topic.clone();
        Ok(Some((view, topic, qid)))
    }

    /// Registers the checker of `producer`.
    pub fn register(&self, producer: &str, checker: Arc<dyn TransactionChecker>) {
        self.checkers.write().insert(producer.to_owned(), checker);
        self.wake.notify_one();
    }

    /// Half messages without an outcome.
    pub fn pending(&self) -> usize {
        self.pending.lock().len()
    }

    /// Half messages discarded after their last check (the latest thousand).
    pub fn discarded(&self) -> Vec<DiscardedTransaction> {
        self.discarded.lock().iter().cloned().collect()
    }

    /// One round of check-back: asks the checker of every half message whose check is due.
    async fn check_due(&self) {
        let now = self.clock.now_ms();
        let due: Vec<(u64, String)> = {
            let mut pending = self.pending.lock();
            pending
                .iter_mut()
                .filter(|(_, h)| !h.busy && h.next_check_ms <= now)
                .map(|(o, h)| {
                    h.busy = true;
                    (*o, h.producer.clone())
                })
                .collect()
        };
        for (offset, producer) in due {
            if let Err(e) = self.check_one(offset, &producer).await {
                tracing::error!(error = %e, offset, producer, "transaction check-back failed");
                if let Some(h) = self.pending.lock().get_mut(&offset) {
                    h.busy = false;
                    h.next_check_ms = self.clock.now_ms() + self.policy.interval.as_millis() as u64;
                }
            }
        }
    }

    async fn check_one(&self, offset: u64, producer: &str) -> Result<()> {
        let interval = self.policy.interval.as_millis() as u64;
        let checker = self.checkers.read().get(producer).cloned();
        let Some(checker) = checker else {
            // Nobody can answer yet: wait for a checker without spending a check.
            tracing::debug!(producer, offset, "no transaction checker registered yet");
            if let Some(h) = self.pending.lock().get_mut(&offset) {
                h.busy = false;
                h.next_check_ms = self.clock.now_ms() + interval;
            }
            return Ok(());
        };
        let Some((view, _, _)) = self.read_half(offset)? else {
            self.resolve(
                offset,
                TxState::Rollback,
                Some("half message unreadable".into()),
            )
            .await?;
            return Ok(());
        };
        let message_id = view.id;
        // A panicking or hanging checker is an unanswered check, not a dead check-back loop.
        let task = tokio::spawn(async move { checker.check(&view).await });
        let abort = task.abort_handle();
        let state = match tokio::time::timeout(self.policy.interval, task).await {
            Ok(Ok(state)) => state,
            Ok(Err(_)) => TxState::Unknown,
            Err(_) => {
                abort.abort();
                tracing::warn!(producer, %message_id, "transaction checker did not answer in time");
                TxState::Unknown
            }
        };
        match state {
            TxState::Commit | TxState::Rollback => {
                tracing::info!(producer, %message_id, ?state, "transaction resolved by check-back");
                self.resolve(offset, state, Some("check-back".into()))
                    .await?;
            }
            TxState::Unknown => {
                let checks = {
                    let mut pending = self.pending.lock();
                    let Some(h) = pending.get_mut(&offset) else {
                        return Ok(());
                    };
                    h.checks += 1;
                    h.checks
                };
                if checks >= self.policy.max_checks {
                    tracing::warn!(
                        producer,
                        %message_id,
                        checks,
                        "transaction still unknown after its last check-back; discarded as rolled back"
                    );
                    self.resolve(
                        offset,
                        TxState::Rollback,
                        Some(format!("discarded after {checks} unanswered check-backs")),
                    )
                    .await?;
                    let mut discarded = self.discarded.lock();
                    if discarded.len() >= DISCARDED_KEPT {
                        discarded.pop_front();
                    }
                    discarded.push_back(DiscardedTransaction {
                        message_id,
                        producer: producer.to_owned(),
                        checks,
                    });
                } else {
                    self.write_op(Op {
                        half: offset,
                        state: TxState::Unknown,
                        checks,
                        reason: None,
                    })
                    .await?;
                    if let Some(h) = self.pending.lock().get_mut(&offset) {
                        h.busy = false;
                        h.next_check_ms = self.clock.now_ms() + interval;
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs check-back until `closing` is cancelled.
    pub async fn run(self: Arc<Self>, closing: CancellationToken) {
        loop {
            if closing.is_cancelled() {
                return;
            }
            self.check_due().await;
            let next = self
                .pending
                .lock()
                .values()
                .filter(|h| !h.busy)
                .map(|h| h.next_check_ms)
                .min();
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(self.clock.instant_at(at)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = closing.cancelled() => return,
                _ = sleep => {}
            }
        }
    }
}

/// Decrements a counter when dropped, also when the future holding it is cancelled.
struct Decrement<'a>(&'a AtomicUsize);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn progress_key() -> ProgressKey {
    ProgressKey {
        topic: HALF_TOPIC.into(),
        group: TRANSACTION_GROUP.into(),
        instance: None,
        queue: 0,
    }
}

//! Failed deliveries: retries (through the schedule to the group's retry queue, or in place
//! for orderly and broadcasting consumers) and dead letters. A retry through the retry queue
//! does not wait for its copy to be written: the slot waits instead (see `retry_later`).

use std::sync::Arc;

use tokio::time::Instant;

use super::group::Group;
use super::progress::{FailureNote, QueueProgress};
use super::Groups;
use crate::broker::{ConsumerOptions, Disposition, Failure, Receipt};
use crate::dead_letter::{self, Burial};
use crate::embedded::store::{Outgoing, Queued};
use crate::embedded::system_topics::ORIGIN_TOPIC;
use crate::error::{BrokerError, Result};
use crate::message::{MessageParts, MessageView};
use crate::retry::{FailedDelivery, Retry, Verdict};
use crate::subscription::{ConsumeMode, MessageModel};
use crate::system_topics::dlq_topic;

/// A nacked slot whose retry copy is on its way to the log.
#[derive(Debug)]
pub(super) struct Move {
    group: Arc<Group>,
    instance: String,
    receipt: Receipt,
    retry: Retry,
    queued: Queued,
}

/// What a nack found in the slot of a delivery.
struct Nacked {
    model: MessageModel,
    mode: ConsumeMode,
    options: ConsumerOptions,
    reconsume: u32,
    note: Option<FailureNote>,
}

impl Groups {
    /// The slot of a live delivery, with what a nack needs to know.
    fn nacked(
        &self,
        group: &Group,
        instance: &str,
        id: u64,
        receipt: &Receipt,
    ) -> Result<Option<Nacked>> {
        let mut guard = group.inner.lock();
        let inner = &mut *guard;
        let options = match inner.members.get(instance) {
            Some(m) if m.id == id => m.options.clone(),
            _ => return Err(BrokerError::Closed),
        };
        let (model, mode) = (inner.subscription.model, inner.subscription.mode);
        let progress = inner.progress_mut(instance).ok_or(BrokerError::Closed)?;
        let p = progress
            .get_mut(receipt.queue_id as usize)
            .ok_or_else(|| BrokerError::UnknownReceipt(format!("{receipt:?}")))?;
        let note = p.failure_note(receipt.offset);
        Ok(p.in_flight_reconsume(receipt.offset, receipt.token)
            .map(|reconsume| Nacked {
                model,
                mode,
                options,
                reconsume,
                note,
            }))
    }

    /// The stored message of a delivery, reserved properties included.
    fn stored(&self, group: &Group, receipt: &Receipt) -> Result<Option<MessageView>> {
        let Some(cq) = group.sources.get(receipt.queue_id as usize) else {
            return Ok(None);
        };
        let Some(entry) = cq.entry(receipt.offset)?.filter(|e| e.size > 0) else {
            return Ok(None);
        };
        Ok(self
            .store
            .read_records(&[entry])
            .pop()
            .and_then(|r| r.ok())
            .map(|r| r.message))
    }

    /// Settles a slot whatever its state (the message went to retry or dead letters).
    fn settle(&self, group: &Group, instance: &str, receipt: &Receipt) {
        let mut guard = group.inner.lock();
        let progress = guard.progress_mut(instance);
        if let Some(p) = progress.and_then(|p| p.get_mut(receipt.queue_id as usize)) {
            p.settle(receipt.offset);
        }
        drop(guard);
        group.bump();
    }

    pub(super) async fn nack(
        self: &Arc<Self>,
        group: &Arc<Group>,
        instance: &str,
        id: u64,
        receipt: &Receipt,
        failure: Failure,
    ) -> Result<Disposition> {
        let Some(n) = self.nacked(group, instance, id, receipt)? else {
            return Ok(Disposition::Stale);
        };
        let now_ms = self.clock.now_ms();
        // A group's retry queue is assigned to one member like any queue: nothing here is
        // read by several members at once.
        let failed = FailedDelivery {
            reconsume_times: n.reconsume,
            model: n.model,
            mode: n.mode,
            shared_source: false,
        };
        match failed.verdict(&n.options, &failure) {
            Verdict::DeadLetter { .. } => {
                self.bury(group, receipt, &failure.reason, n.reconsume, n.note, now_ms)
                    .await?;
                self.settle(group, instance, receipt);
                Ok(Disposition::DeadLettered)
            }
            Verdict::InPlace(r) => {
                self.retry_in_place(group, instance, receipt, r, failure, now_ms);
                Ok(Disposition::Retry {
                    retry: r.retry,
                    after: r.after,
                })
            }
            Verdict::RetryQueue(r) => {
                self.retry_later(group, instance, receipt, r, &failure, now_ms)
            }
        }
    }

    /// Puts a delivery back in its slot, due after `after` (orderly, broadcasting).
    fn retry_in_place(
        &self,
        group: &Group,
        instance: &str,
        receipt: &Receipt,
        Retry { retry, after }: Retry,
        failure: Failure,
        now_ms: u64,
    ) {
        let mut guard = group.inner.lock();
        let progress = guard.progress_mut(instance);
        if let Some(p) = progress.and_then(|p| p.get_mut(receipt.queue_id as usize)) {
            p.retry_in_place(
                receipt.offset,
                receipt.token,
                Instant::now() + after,
                retry,
                now_ms,
                failure.reason,
            );
        }
        drop(guard);
        group.bump();
    }

    /// Concurrent clustering: a copy waits in the schedule for the group's retry queue, and
    /// the queue's progress moves on once the copy is stored.
    ///
    /// Returns once the copy is deferred (every later append is stored after it), without
    /// waiting for the write: the slot stays unsettled
    /// ([`start_move`](super::progress::QueueProgress::start_move)) until the copy is stored,
    /// so the committed offset cannot pass the original before then and a crash redelivers
    /// it. Waiting here cost a handler one writer round trip per failed message.
    fn retry_later(
        self: &Arc<Self>,
        group: &Arc<Group>,
        instance: &str,
        receipt: &Receipt,
        retry: Retry,
        failure: &Failure,
        now_ms: u64,
    ) -> Result<Disposition> {
        if !self.in_window(group, instance, receipt, |p| {
            p.start_move(receipt.offset, receipt.token)
        }) {
            return Ok(Disposition::Stale);
        }
        let queued = match self.queue_copy(group, receipt, retry, failure, now_ms) {
            Ok(Some(queued)) => queued,
            Ok(None) => {
                self.in_window(group, instance, receipt, |p| {
                    p.finish_move(receipt.offset, receipt.token, None)
                });
                group.bump();
                return Ok(Disposition::Stale);
            }
            Err(e) => {
                self.in_window(group, instance, receipt, |p| {
                    p.abort_move(receipt.offset, receipt.token)
                });
                return Err(e);
            }
        };
        let first = {
            let mut moves = self.moves.lock();
            moves.push(Move {
                group: group.clone(),
                instance: instance.to_owned(),
                receipt: receipt.clone(),
                retry,
                queued,
            });
            moves.len() == 1
        };
        if first {
            // One task settles the moves of a whole run of nacks (they are answered by one
            // writer batch): one wake-up for all, not one task each. Later moves find the list
            // not empty; this task, or one under way, takes them along.
            let groups = self.clone();
            self.settlers
                .spawn(async move { groups.settle_moves().await });
        }
        Ok(Disposition::Retry {
            retry: retry.retry,
            after: retry.after,
        })
    }

    /// Settles moved slots as the writer answers, until no move is left.
    async fn settle_moves(&self) {
        loop {
            let taken = std::mem::take(&mut *self.moves.lock());
            if taken.is_empty() {
                return;
            }
            for m in taken {
                let again = match m.queued.stored().await {
                    Ok(_) => None,
                    Err(e) => {
                        // The slot becomes ready again where it is: the message is not lost.
                        tracing::error!(error = %e, retry = m.retry.retry, "a retry copy was not stored; retrying in place");
                        Some((Instant::now() + m.retry.after, m.retry.retry))
                    }
                };
                let settled = self.in_window(&m.group, &m.instance, &m.receipt, |p| {
                    p.finish_move(m.receipt.offset, m.receipt.token, again)
                });
                if settled && m.group.has_waiters() {
                    m.group.bump();
                }
            }
        }
    }

    /// Runs `f` on the window of a receipt's queue; false if there is none.
    fn in_window(
        &self,
        group: &Group,
        instance: &str,
        receipt: &Receipt,
        f: impl FnOnce(&mut QueueProgress) -> bool,
    ) -> bool {
        let mut guard = group.inner.lock();
        guard
            .progress_mut(instance)
            .and_then(|p| p.get_mut(receipt.queue_id as usize))
            .is_some_and(f)
    }

    /// Defers the append of the retry copy of a delivery, bound for the schedule; `None` if
    /// the record is gone.
    fn queue_copy(
        &self,
        group: &Group,
        receipt: &Receipt,
        Retry { retry, after }: Retry,
        failure: &Failure,
        now_ms: u64,
    ) -> Result<Option<Queued>> {
        let Some(mut view) = self.stored(group, receipt)? else {
            return Ok(None);
        };
        let origin = view
            .properties
            .get(ORIGIN_TOPIC)
            .cloned()
            .unwrap_or_else(|| view.topic.clone());
        view.properties.insert(ORIGIN_TOPIC.into(), origin);
        dead_letter::note_retry(&mut view.properties, now_ms, &failure.reason);
        view.topic = group.retry_topic.clone();
        let retry_queue = &group.sources[group.real_queues as usize];
        Ok(Some(self.scheduler.defer(
            Outgoing {
                parts: MessageParts::from(view),
                reconsume_times: retry,
                index_time: None,
            },
            &group.retry_topic,
            retry_queue,
            // Rounded up: `now_ms` rounds down, and a retry must not come before its back-off.
            self.clock.due_after(after),
        )))
    }

    /// Waits until every retry copy handed to the writer is stored or refused and its slot
    /// settled accordingly; called once the writer has stopped, before progress is saved.
    pub(crate) async fn moves_done(&self) {
        self.settlers.close();
        self.settlers.wait().await;
    }

    pub(super) async fn dead_letter(
        &self,
        group: &Group,
        instance: &str,
        id: u64,
        receipt: &Receipt,
        reason: &str,
    ) -> Result<()> {
        let Some(n) = self.nacked(group, instance, id, receipt)? else {
            return Ok(());
        };
        self.bury(
            group,
            receipt,
            reason,
            n.reconsume,
            n.note,
            self.clock.now_ms(),
        )
        .await?;
        self.settle(group, instance, receipt);
        Ok(())
    }

    /// Writes a delivery to the group's dead-letter queue.
    async fn bury(
        &self,
        group: &Group,
        receipt: &Receipt,
        reason: &str,
        reconsume: u32,
        note: Option<FailureNote>,
        now_ms: u64,
    ) -> Result<()> {
        let Some(mut view) = self.stored(group, receipt)? else {
            return Ok(());
        };
        let group_name = group.inner.lock().subscription.group.clone();
        let origin = view
            .properties
            .remove(ORIGIN_TOPIC)
            .unwrap_or_else(|| view.topic.clone());
        view.properties.retain(|k, _| !k.starts_with('%'));
        Burial {
            origin_topic: &origin,
            group: &group_name,
            attempts: reconsume + 1,
            first_failure_ms: note.map(|n| n.first_ms),
            now_ms,
            reason,
        }
        .mark(&mut view.properties);
        let dlq = dlq_topic(&group_name);
        view.topic = dlq.clone();
        let topic = self.store.create_topic(&dlq, 1)?;
        self.store
            .append(
                topic.queues[0].clone(),
                vec![Outgoing {
                    parts: MessageParts::from(view),
                    reconsume_times: reconsume,
                    index_time: None,
                }],
            )
            .await?;
        tracing::warn!(group = %group_name, topic = %origin, attempts = reconsume + 1, reason, "message dead-lettered");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::Duration;

    use tokio::time::Instant;

    use crate::broker::{Broker, ConsumerOptions, Disposition, Failure, SendOptions};
    use crate::delay::{Backoff, Delay};
    use crate::embedded::{EmbeddedBroker, EmbeddedConfig};
    use crate::message::Message;
    use crate::subscription::{ConsumeFrom, Subscription};

    /// A retry is not due a nanosecond before its back-off has passed, whatever the
    /// sub-millisecond phase of the clock at the nack. The cause of the flake of
    /// `short_backoff_in_real_time` ("retry 1 came after 99.94ms"): the due time was
    /// `now_ms() + back-off`, and `now_ms` rounds down, so the retry fell due up to 1 ms early.
    ///
    /// Timers cannot show it (tokio rounds them up to whole milliseconds), so the clock is
    /// stopped 1 ns short of the back-off and a delayed sentinel, due by then, makes the
    /// scheduler look: everything due at that instant fires in the sentinel's round, so once
    /// the sentinel is delivered the retry must still be pending. Two rounds half a
    /// millisecond apart in phase, so that one of them has the clock off a millisecond
    /// boundary (on one, the rounding loses nothing).
    #[tokio::test(start_paused = true)]
    async fn retry_is_not_due_before_its_backoff() {
        let dir = tempfile::tempdir().unwrap();
        let broker = EmbeddedBroker::open(EmbeddedConfig::new(dir.path()))
            .await
            .unwrap();
        let backoff = Duration::from_millis(100);
        let opts = ConsumerOptions::new()
            .consume_from(ConsumeFrom::First)
            .max_reconsume_times(100)
            .backoff(Backoff {
                steps: vec![backoff],
            });
        let consumer = broker
            .subscribe(Subscription::new("phase", "g"), opts.clone())
            .await
            .unwrap();
        let sentinel = broker
            .subscribe(Subscription::new("sentinel", "g"), opts)
            .await
            .unwrap();
        broker
            .send(Message::new("phase", "x"), SendOptions::new())
            .await
            .unwrap();
        let mut d = consumer.receive(1, Duration::from_secs(5)).await.unwrap();
        assert_eq!(d.len(), 1);
        for shift in [Duration::ZERO, Duration::from_micros(500)] {
            tokio::time::advance(shift).await;
            let t0 = Instant::now();
            consumer
                .nack(&d[0].receipt, Failure::new("fail"))
                .await
                .unwrap();
            broker
                .send(
                    Message::new("sentinel", "s"),
                    SendOptions::new().delayed(Delay::After(backoff / 2)),
                )
                .await
                .unwrap();
            assert_eq!(broker.pending_delays(), 2);
            tokio::time::advance(backoff - Duration::from_nanos(1)).await;
            let s = sentinel.receive(1, Duration::from_secs(5)).await.unwrap();
            assert_eq!(s.len(), 1, "the sentinel is due");
            sentinel.ack(&[s[0].receipt.clone()]).await.unwrap();
            assert_eq!(
                broker.pending_delays(),
                1,
                "shifted {shift:?}: the retry fell due {:?} after the nack, before its back-off",
                t0.elapsed()
            );
            d = consumer.receive(1, Duration::from_secs(5)).await.unwrap();
            assert_eq!(d.len(), 1, "the retry comes when due");
            assert!(t0.elapsed() >= backoff, "{:?}", t0.elapsed());
        }
        broker.shutdown().await.unwrap();
    }

    fn retry_options(backoff: Duration) -> ConsumerOptions {
        ConsumerOptions::new()
            .consume_from(ConsumeFrom::First)
            .instance("m")
            .backoff(Backoff {
                steps: vec![backoff],
            })
    }

    /// A nack returns before its retry copy is written; a shutdown right after the nacks
    /// still stores every copy and saves the originals as settled: after the restart every
    /// message comes back once, as its retry, never as the original again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nacks_then_a_shutdown_keep_every_retry_and_no_original() {
        let dir = tempfile::tempdir().unwrap();
        let opts = retry_options(Duration::from_millis(50));
        let sent: Vec<_> = {
            let broker = EmbeddedBroker::open(EmbeddedConfig::new(dir.path()))
                .await
                .unwrap();
            let consumer = broker
                .subscribe(Subscription::new("moved", "g"), opts.clone())
                .await
                .unwrap();
            let mut ids = Vec::new();
            for i in 0..40 {
                let r = broker
                    .send(Message::new("moved", format!("m{i}")), SendOptions::new())
                    .await
                    .unwrap();
                ids.push(r.message_id);
            }
            let mut got = Vec::new();
            while got.len() < 40 {
                got.extend(consumer.receive(40, Duration::from_secs(5)).await.unwrap());
            }
            for d in &got {
                let disposition = consumer.nack(&d.receipt, Failure::new("no")).await.unwrap();
                assert!(matches!(disposition, Disposition::Retry { retry: 1, .. }));
            }
            broker.shutdown().await.unwrap();
            ids
        };
        let broker = EmbeddedBroker::open(EmbeddedConfig::new(dir.path()))
            .await
            .unwrap();
        let consumer = broker
            .subscribe(Subscription::new("moved", "g"), opts)
            .await
            .unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            for d in consumer
                .receive(64, Duration::from_millis(100))
                .await
                .unwrap()
            {
                assert_eq!(d.message.reconsume_times, 1, "only retries come back");
                consumer
                    .ack(std::slice::from_ref(&d.receipt))
                    .await
                    .unwrap();
                got.push(d.message.id);
            }
        }
        got.sort();
        let mut want = sent;
        want.sort();
        assert_eq!(got, want, "each message once");
        broker.shutdown().await.unwrap();
    }

    /// A retry copy the store refuses (here: a failure reason too long for a record) is not
    /// lost with it: the original becomes ready again in place after the back-off, its
    /// attempt counted, and nothing else is delivered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_retry_copy_retries_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let broker = EmbeddedBroker::open(EmbeddedConfig::new(dir.path()).max_message_size(4096))
            .await
            .unwrap();
        let backoff = Duration::from_millis(100);
        let consumer = broker
            .subscribe(Subscription::new("refused", "g"), retry_options(backoff))
            .await
            .unwrap();
        broker
            .send(Message::new("refused", "x"), SendOptions::new())
            .await
            .unwrap();
        let d = consumer.receive(1, Duration::from_secs(5)).await.unwrap();
        let t0 = Instant::now();
        let huge = "r".repeat(100 * 1024);
        let disposition = consumer
            .nack(&d[0].receipt, Failure::new(huge))
            .await
            .unwrap();
        assert!(matches!(disposition, Disposition::Retry { retry: 1, .. }));
        let again = consumer.receive(1, Duration::from_secs(5)).await.unwrap();
        assert_eq!(again.len(), 1);
        assert!(t0.elapsed() >= backoff, "{:?}", t0.elapsed());
        assert_eq!(again[0].message.id, d[0].message.id);
        assert_eq!(again[0].message.reconsume_times, 1);
        consumer.ack(&[again[0].receipt.clone()]).await.unwrap();
        let more = consumer
            .receive(1, Duration::from_millis(500))
            .await
            .unwrap();
        assert!(more.is_empty(), "{more:?}");
        assert_eq!(broker.lag("g", "refused").await.unwrap(), Some(0));
        broker.shutdown().await.unwrap();
    }
}

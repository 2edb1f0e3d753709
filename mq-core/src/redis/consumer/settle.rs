//! Settling deliveries: `XACK`, and what the retry rule says of a failed one (in place, a
//! copy in the retry stream, or the dead-letter queue).

use std::time::Duration;

use crate::broker::{Disposition, Failure, Receipt};
use crate::dead_letter;
use crate::error::Result;
use crate::retry::{FailedDelivery, Retry, Verdict};
use crate::subscription::MessageModel;

use super::super::dead_letter::bury;
use super::super::envelope::Envelope;
use super::super::keys::entry_id;
use super::super::scheduler;
use super::state::{Flow, InFlight, State};
use super::RedisConsumer;

impl RedisConsumer {
    /// Adds the commands that settle `offsets` of source `i` to `pipe`; `failed` are those
    /// that may have counted attempts to forget.
    pub(super) fn ack_commands(
        &self,
        pipe: &mut ::redis::Pipeline,
        i: usize,
        offsets: &[u64],
        failed: &[u64],
    ) {
        let source = &self.sources[i];
        pipe.cmd("XACK").arg(&source.stream).arg(&self.rgroup);
        for o in offsets {
            pipe.arg(entry_id(*o));
        }
        pipe.ignore();
        if !failed.is_empty() {
            pipe.cmd("HDEL").arg(&source.attempts);
            for o in failed {
                pipe.arg(*o);
            }
            pipe.ignore();
        }
    }

    /// Acknowledges settled entries of one source and forgets their attempts.
    pub(super) async fn acknowledge(&self, i: usize, offsets: &[u64]) -> Result<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        let mut pipe = ::redis::pipe();
        self.ack_commands(&mut pipe, i, offsets, offsets);
        self.shared.redis.pipe::<()>("acknowledging", pipe).await
    }

    pub(super) async fn release_place(&self, i: usize, offset: u64) {
        self.state.lock().await.release_place(i, offset);
        self.wake.notify_waiters();
    }

    /// The rule's verdict on a delivery of source `i` just taken out of flight.
    pub(super) fn verdict(&self, i: usize, flight: &InFlight, failure: &Failure) -> Verdict {
        // A broadcasting member's retry stream is its own (its Redis group); a clustering
        // group's retry stream is read by every member at once.
        let shared_source =
            i == self.retry_source() && self.subscription.model != MessageModel::Broadcasting;
        FailedDelivery {
            reconsume_times: flight.view.reconsume_times,
            model: self.subscription.model,
            mode: self.subscription.mode,
            shared_source,
        }
        .verdict(&self.options, failure)
    }

    /// Queues an in-place retry of a delivery just taken out of flight.
    pub(super) fn retry_in_place(
        &self,
        st: &mut State,
        i: usize,
        offset: u64,
        flight: &InFlight,
        retry: u32,
        after: Duration,
    ) {
        st.retry_in_place(i, offset, flight, retry, after, self.shared.clock.now_ms());
    }

    /// Records a failed delivery already taken out of flight: the attempt of an in-place
    /// retry (queued already), or a copy in the retry stream, or the dead-letter queue.
    pub(super) async fn fail(
        &self,
        i: usize,
        receipt: &Receipt,
        flight: InFlight,
        failure: Failure,
        verdict: Verdict,
    ) -> Result<Disposition> {
        let now_ms = self.shared.clock.now_ms();
        let first_failure = flight.first_failure_ms.unwrap_or(now_ms);
        let (retry, after) = match verdict {
            Verdict::DeadLetter { attempts } => {
                bury(
                    &self.shared,
                    &self.subscription.group,
                    &flight.view,
                    attempts,
                    Some(first_failure),
                    &failure.reason,
                )
                .await?;
                self.acknowledge(i, &[receipt.offset]).await?;
                self.wake.notify_waiters();
                return Ok(Disposition::DeadLettered);
            }
            Verdict::InPlace(Retry { retry, after }) => {
                let _: i64 = self
                    .shared
                    .redis
                    .query(
                        "counting a failed attempt",
                        ::redis::cmd("HINCRBY")
                            .arg(&self.sources[i].attempts)
                            .arg(receipt.offset)
                            .arg(1)
                            .clone(),
                    )
                    .await?;
                self.wake.notify_waiters();
                return Ok(Disposition::Retry { retry, after });
            }
            Verdict::RetryQueue(Retry { retry, after }) => (retry, after),
        };
        // A copy waits in the retry stream's delay set, the original is settled.
        let mut envelope = Envelope::from_view(&flight.view, retry);
        dead_letter::note_retry(&mut envelope.properties, first_failure, &failure.reason);
        let retry_stream = &self.sources[self.retry_source()];
        // Rounded up: `now_ms` rounds down, and a retry must not come before its back-off.
        let due = self.shared.clock.due_after(after);
        if after.is_zero() {
            self.shared
                .append(&retry_stream.topic, 0, vec![envelope.encode()?])
                .await?;
        } else {
            scheduler::put(
                &self.shared,
                &retry_stream.topic,
                0,
                due,
                vec![envelope.encode()?],
            )
            .await?;
        }
        self.acknowledge(i, &[receipt.offset]).await?;
        Ok(Disposition::Retry { retry, after })
    }

    /// Puts deliveries back in flight after their settlement failed in Redis, so that the
    /// caller can settle them again (unless a timeout scan redelivered them meanwhile).
    pub(super) async fn restore(&self, flights: Vec<(usize, u64, InFlight)>) {
        self.state.lock().await.restore(flights);
    }

    /// Keeps an orderly queue's place while its delivery is being dead-lettered or copied to
    /// the retry stream, so that nothing later of the queue is handed out meanwhile.
    pub(super) fn hold_place(&self, st: &mut State, i: usize, offset: u64, flight: &InFlight) {
        if self.flow(i) == Flow::Orderly {
            st.hold_place(i, offset, flight);
        }
    }
}

//! The delivery loop of one listener on one topic: fetch, run handlers up to the concurrency
//! limit, settle each message by its outcome, and stop gracefully.
//!
//! What one fetch returns runs as a few tasks, not one task per message: each task runs its
//! deliveries concurrently and acknowledges those that finished together in one call. A task
//! and an acknowledgement per message cost more than the broker's own work for it (see
//! BENCHMARKS.md, "Application path"). A handler must therefore not block its thread: one that
//! does holds up the deliveries sharing its task (`tokio::task::spawn_blocking` is for that).

mod control;
mod idempotency;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use mq_core::trace::DeliveryOutcome;
use mq_core::{BrokerError, Consumer, Delivery, Disposition, Failure, MessageView, Receipt};
use tokio::sync::{OwnedSemaphorePermit, TryAcquireError};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub(crate) use self::control::{ListenerControl, ListenerInfo};
pub(crate) use self::idempotency::Idempotency;
use self::idempotency::{acquire, complete, keep_lease};
use crate::context::{AppContext, DeliveryContext};
use crate::handler::{BoxedHandler, Outcome};
use crate::idempotency::Lease;
use crate::metrics::Series;
use crate::registry::IdempotencyKey;
use crate::template::ReplyAddress;
use crate::trace::{Seen, Tap};

/// Shortest wait of a duplicate while another delivery holds its key. The wait is a quarter of
/// the lease at least: if the holder died, its lease must run out before the retries do, or
/// the message would reach the dead-letter queue without ever being processed.
const BUSY_RETRY: Duration = Duration::from_secs(1);
/// Most units (messages, or batches of a batch listener) one task runs.
const MAX_PER_TASK: usize = 64;

/// The units of one fetch handed to one task, each with the permit it holds until settled.
type Work = Vec<(Vec<Delivery>, OwnedSemaphorePermit)>;

/// A unit whose handler succeeded (or that was a duplicate), left for its task to acknowledge
/// with others; with its trace, when tracing, which waits for the acknowledgement's result.
struct ToAck {
    receipts: Vec<Receipt>,
    traced: Option<Traced>,
}

/// The trace of a unit settled by acknowledgement.
struct Traced {
    seen: Vec<Seen>,
    started: Instant,
    outcome: DeliveryOutcome,
    duration: Duration,
}

/// What the trace of a unit settled here (nack, dead letter) needs besides the outcome.
#[derive(Clone, Copy)]
struct Note<'a> {
    seen: &'a [Seen],
    started: Instant,
    duration: Duration,
}

impl<'a> Note<'a> {
    /// For a unit settled without running the handler.
    fn untimed(seen: &'a [Seen]) -> Self {
        Note {
            seen,
            started: Instant::now(),
            duration: Duration::ZERO,
        }
    }
}

/// One listener on one topic, resolved and running.
pub(crate) struct ListenerLoop {
    pub name: String,
    pub group: String,
    pub topic: String,
    pub batch: Option<usize>,
    pub handler: BoxedHandler,
    pub app: Arc<AppContext>,
    pub series: Arc<Series>,
    pub idempotency: Option<Idempotency>,
    pub shutdown_timeout: Duration,
    pub consume_timeout: Duration,
    /// Where settled deliveries are traced; `None` with `mq.trace.enabled: false`.
    pub trace: Option<Tap>,
    /// Its permits and pause switch, shared with the admin API.
    pub control: Arc<ListenerControl>,
}

impl ListenerLoop {
    pub async fn run(self: Arc<Self>, consumer: Arc<dyn Consumer>, stop: CancellationToken) {
        if let Some(tap) = &self.trace {
            tap.joined(consumer.instance());
        }
        let permits = self.control.permits.clone();
        // Tasks per fetch: two per worker thread, so that every thread has some to take and
        // one slow task does not leave a thread idle.
        let spread = 2 * tokio::runtime::Handle::current()
            .metrics()
            .num_workers()
            .max(1);
        let mut tasks = JoinSet::new();
        'fetch: loop {
            if stop.is_cancelled() || !self.control.wait_while_paused(&stop).await {
                break;
            }
            let want = match self.batch {
                Some(b) => b * permits.available_permits().max(1),
                None => permits.available_permits().max(1),
            };
            let deliveries = tokio::select! {
                _ = stop.cancelled() => break,
                r = consumer.receive(want, Duration::from_millis(500)) => r,
            };
            let deliveries = match deliveries {
                Ok(d) => d,
                Err(BrokerError::Closed) => break,
                Err(e) => {
                    tracing::warn!(listener = %self.name, topic = %self.topic, error = %e, "receive failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let units: Vec<Vec<Delivery>> = match self.batch {
                Some(b) => chunks(deliveries, b),
                None => deliveries.into_iter().map(|d| vec![d]).collect(),
            };
            let mut work: Work = Vec::with_capacity(units.len());
            for unit in units {
                let permit = match permits.clone().try_acquire_owned() {
                    Ok(p) => p,
                    Err(TryAcquireError::Closed) => break 'fetch,
                    Err(TryAcquireError::NoPermits) => {
                        // Start what holds a permit before waiting for the next one.
                        self.start(&mut tasks, &consumer, std::mem::take(&mut work), spread);
                        tokio::select! {
                            _ = stop.cancelled() => break 'fetch,
                            p = permits.clone().acquire_owned() => match p {
                                Ok(p) => p,
                                Err(_) => break 'fetch,
                            },
                        }
                    }
                };
                work.push((unit, permit));
            }
            self.start(&mut tasks, &consumer, work, spread);
            while tasks.try_join_next().is_some() {}
        }
        // Graceful stop: nothing new is fetched; handlers in flight may finish.
        let drained = tokio::time::timeout(self.shutdown_timeout, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                listener = %self.name,
                running = tasks.len(),
                "handlers still running at shutdown; their messages will be delivered again"
            );
            tasks.abort_all();
        }
        if let Err(e) = consumer.close().await {
            tracing::warn!(listener = %self.name, error = %e, "closing the consumer failed");
        }
    }

    /// Spawns `work` as tasks of at most [`MAX_PER_TASK`] units, about `spread` of them.
    fn start(
        self: &Arc<Self>,
        tasks: &mut JoinSet<()>,
        consumer: &Arc<dyn Consumer>,
        mut work: Work,
        spread: usize,
    ) {
        let per_task = work.len().div_ceil(spread).clamp(1, MAX_PER_TASK);
        while !work.is_empty() {
            let rest = work.split_off(per_task.min(work.len()));
            let part = std::mem::replace(&mut work, rest);
            tasks.spawn(self.clone().run_part(consumer.clone(), part));
        }
    }

    /// Runs the units of `work` concurrently; what they leave to acknowledge is acknowledged
    /// as they finish, together with whatever else finished by then.
    ///
    /// The units still running are polled while an acknowledgement waits. They must be: the
    /// consumer's own lock, released by a receive, goes to the first waiter, and when that is
    /// a unit of this task (settling a failure) it takes the lock only when polled. Awaiting
    /// the acknowledgement alone then waits for that lock forever, and so does every later
    /// receive of the listener (a "futurelock"; a demo-shop run on Redis stopped so).
    async fn run_part(self: Arc<Self>, consumer: Arc<dyn Consumer>, work: Work) {
        let this = &*self;
        let consumer = &*consumer;
        let mut running: FuturesUnordered<_> = work
            .into_iter()
            .map(|(unit, permit)| async move { (this.process(consumer, unit).await, permit) })
            .collect();
        // Finished units waiting for the next acknowledgement, with their permits: a unit is
        // in flight until it is settled.
        let mut done: Vec<Receipt> = Vec::new();
        let mut traced: Vec<Traced> = Vec::new();
        let mut settled: Vec<OwnedSemaphorePermit> = Vec::new();
        let mut acking = None;
        loop {
            if acking.is_none() && !done.is_empty() {
                let receipts = std::mem::take(&mut done);
                let traced = std::mem::take(&mut traced);
                let permits = std::mem::take(&mut settled);
                acking = Some(Box::pin(async move {
                    let acked = this.ack(consumer, &receipts).await;
                    this.trace_acked(traced, &acked);
                    drop(permits);
                }));
            }
            tokio::select! {
                next = running.next(), if !running.is_empty() => {
                    if let Some((to_ack, permit)) = next {
                        if to_ack.receipts.is_empty() {
                            // Settled by the unit itself: its permit goes back now.
                            drop(permit);
                        } else {
                            done.extend(to_ack.receipts);
                            traced.extend(to_ack.traced);
                            settled.push(permit);
                        }
                    }
                }
                () = until_done(&mut acking), if acking.is_some() => acking = None,
                else => break,
            }
        }
    }

    /// Traces the units of one acknowledgement with its result.
    fn trace_acked(&self, traced: Vec<Traced>, acked: &Result<(), BrokerError>) {
        let Some(tap) = &self.trace else {
            return;
        };
        for t in traced {
            let (outcome, error) = match acked {
                Ok(()) => (t.outcome, None),
                Err(e) => (DeliveryOutcome::Failed, Some(format!("ack failed: {e}"))),
            };
            for seen in t.seen {
                tap.delivered(seen, t.started, outcome, error.clone(), t.duration);
            }
        }
    }

    fn key_of(&self, msg: &MessageView, key: IdempotencyKey) -> String {
        let part = match key {
            IdempotencyKey::Key => msg.key().map(str::to_owned),
            IdempotencyKey::Id => None,
        }
        .unwrap_or_else(|| msg.id.to_string());
        let prefix = self.idempotency.as_ref().map_or("", |i| i.prefix.as_str());
        // The topic belongs in the key: one listener may take several topics whose messages
        // share business keys.
        format!("{prefix}:{}:{}:{}", self.group, msg.topic, part)
    }

    /// Runs the handler on one unit (a message, or a batch) and settles it: a failure here;
    /// a success is returned, for the caller to acknowledge with others.
    async fn process(&self, consumer: &dyn Consumer, unit: Vec<Delivery>) -> ToAck {
        let Some(first) = unit.first() else {
            return ToAck {
                receipts: Vec::new(),
                traced: None,
            };
        };
        let span = tracing::info_span!(
            "mq.delivery",
            listener = %self.name,
            topic = %first.message.topic,
            group = %self.group,
            message_id = %first.message.id,
            attempt = first.message.attempt(),
            batch = unit.len(),
        );
        async {
            let mut receipts = Vec::with_capacity(unit.len());
            let mut views = Vec::with_capacity(unit.len());
            // Taken before the handler owns the messages; nothing is allocated untraced.
            let seen: Vec<Seen> = match self.trace {
                Some(_) => unit.iter().map(|d| Seen::of(&d.message)).collect(),
                None => Vec::new(),
            };
            for d in unit {
                self.series.delivered();
                receipts.push(d.receipt);
                views.push(d.message);
            }
            let mut key = None;
            if let Some(idem) = &self.idempotency {
                let k = self.key_of(&views[0], idem.key);
                match Box::pin(acquire(idem, &k, self.consume_timeout)).await {
                    Ok(Lease::Acquired(token)) => key = Some((k, token)),
                    Ok(Lease::Done) => {
                        tracing::debug!(key = %k, "duplicate of a processed message; acknowledged");
                        let traced = self.trace.as_ref().map(|_| Traced {
                            seen,
                            started: Instant::now(),
                            outcome: DeliveryOutcome::Duplicate,
                            duration: Duration::ZERO,
                        });
                        return ToAck { receipts, traced };
                    }
                    Ok(Lease::Busy) => {
                        self.settle(
                            consumer,
                            &receipts,
                            Failure::retry_after(
                                "another delivery holds the key",
                                (idem.lease / 4).max(BUSY_RETRY),
                            ),
                            Note::untimed(&seen),
                        )
                        .await;
                        return ToAck { receipts: Vec::new(), traced: None };
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "idempotency store still unavailable; the message will be retried");
                        self.settle(consumer, &receipts, Failure::new(e.to_string()), Note::untimed(&seen))
                            .await;
                        return ToAck { receipts: Vec::new(), traced: None };
                    }
                }
            }
            let reply_to = ReplyAddress::of(&views[0]);
            let started = Instant::now();
            let ctx = DeliveryContext {
                messages: views,
                app: self.app.clone(),
            };
            // A panic is a failed delivery, not a dead task. Unwind safety: the handler's
            // future is dropped after a panic and nothing it touched is used again here.
            let handler = AssertUnwindSafe(self.handler.call(ctx)).catch_unwind();
            let ran = match key.as_ref().zip(self.idempotency.as_ref()) {
                None => handler.await,
                Some(held) => tokio::select! {
                    ran = handler => ran,
                    never = Box::pin(keep_lease(held)) => match never {},
                },
            };
            let outcome = ran.unwrap_or_else(|panic| {
                Outcome::retry(format!("handler panicked: {}", panic_message(&*panic)))
            });
            let took = started.elapsed();
            self.series.observe(took);
            let note = Note {
                seen: &seen,
                started,
                duration: took,
            };
            match outcome {
                Outcome::Ack(reply) => {
                    if let Some(((k, token), idem)) = key.as_ref().zip(self.idempotency.as_ref()) {
                        Box::pin(complete(idem, k, token)).await;
                    }
                    if let (Some(body), Some(to)) = (reply, reply_to) {
                        if let Err(e) = Box::pin(self.app.template.reply(to, body)).await {
                            tracing::warn!(error = %e, "reply could not be sent");
                        }
                    }
                    let traced = self.trace.as_ref().map(|_| Traced {
                        seen,
                        started,
                        outcome: DeliveryOutcome::Acked,
                        duration: took,
                    });
                    ToAck { receipts, traced }
                }
                Outcome::Retry { reason, after } => {
                    if let Some(((k, token), idem)) = key.as_ref().zip(self.idempotency.as_ref()) {
                        if let Err(e) = idem.store.release(k, token).await {
                            tracing::warn!(error = %e, "idempotency lease not released; it expires by itself");
                        }
                    }
                    tracing::warn!(%reason, "handler failed");
                    self.settle(
                        consumer,
                        &receipts,
                        Failure {
                            reason,
                            retry_after: after,
                        },
                        note,
                    )
                    .await;
                    ToAck { receipts: Vec::new(), traced: None }
                }
                Outcome::DeadLetter(reason) => {
                    if let Some(((k, token), idem)) = key.as_ref().zip(self.idempotency.as_ref()) {
                        let _ = idem.store.release(k, token).await;
                    }
                    for (i, r) in receipts.iter().enumerate() {
                        let outcome = match consumer.dead_letter(r, &reason).await {
                            Ok(()) => {
                                self.series.dead_lettered();
                                DeliveryOutcome::DeadLettered
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "dead-lettering failed");
                                DeliveryOutcome::Failed
                            }
                        };
                        self.traced(note, i, outcome, &reason);
                    }
                    ToAck { receipts: Vec::new(), traced: None }
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn ack(&self, consumer: &dyn Consumer, receipts: &[Receipt]) -> Result<(), BrokerError> {
        let acked = consumer.ack(receipts).await;
        match &acked {
            Ok(()) => self.series.acked_many(receipts.len() as u64),
            Err(e) => tracing::warn!(
                listener = %self.name,
                topic = %self.topic,
                messages = receipts.len(),
                error = %e,
                "ack failed; the messages will come again"
            ),
        }
        acked
    }

    async fn settle(
        &self,
        consumer: &dyn Consumer,
        receipts: &[Receipt],
        failure: Failure,
        note: Note<'_>,
    ) {
        for (i, r) in receipts.iter().enumerate() {
            let outcome = match consumer.nack(r, failure.clone()).await {
                Ok(Disposition::Retry { retry, after }) => {
                    self.series.retried();
                    DeliveryOutcome::Retried {
                        retry,
                        after_ms: after.as_millis() as u64,
                    }
                }
                Ok(Disposition::DeadLettered) => {
                    self.series.dead_lettered();
                    DeliveryOutcome::DeadLettered
                }
                Ok(Disposition::Stale) => DeliveryOutcome::Stale,
                Err(e) => {
                    tracing::warn!(error = %e, "nack failed; the message will come again");
                    DeliveryOutcome::Failed
                }
            };
            self.traced(note, i, outcome, &failure.reason);
        }
    }

    /// Traces the settling of the `i`th message of a unit that failed with `reason`.
    fn traced(&self, note: Note<'_>, i: usize, outcome: DeliveryOutcome, reason: &str) {
        if let (Some(tap), Some(seen)) = (&self.trace, note.seen.get(i)) {
            tap.delivered(
                *seen,
                note.started,
                outcome,
                Some(reason.to_owned()),
                note.duration,
            );
        }
    }
}

/// The text of a panic's payload (what `panic!` was given, when it was text).
/// Awaits the future in `slot`; never finishes for an empty slot.
async fn until_done<F: std::future::Future<Output = ()> + Unpin>(slot: &mut Option<F>) {
    match slot {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a payload that is not text")
}

fn chunks(deliveries: Vec<Delivery>, size: usize) -> Vec<Vec<Delivery>> {
    let mut out = Vec::new();
    let mut current = Vec::with_capacity(size);
    for d in deliveries {
        current.push(d);
        if current.len() == size.max(1) {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

//! The trace recorder: a bounded queue of trace events and one task that stores them in
//! batches (up to [`MAX_BATCH`] events, or whatever came within [`FLUSH_EVERY`] of the first)
//! through [`Broker::record_trace`].
//!
//! Delivery never waits on tracing: an event that finds the queue full is dropped and counted
//! (`mq_trace_dropped_total{reason="queue_full"}`), and a batch the broker refuses is dropped
//! and counted too (`reason="store_failed"`); messages are never affected. At shutdown the
//! queue is drained into the broker before it shuts down (for at most [`CLOSE_TIMEOUT`]).

use std::sync::Arc;
use std::time::Duration;

use mq_core::message::now_millis;
use mq_core::trace::{clip_error, DeliveryOutcome, TraceEvent, TraceKind};
use mq_core::{Broker, MessageId, MessageView};
use parking_lot::Mutex;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Most events one trace record holds.
pub const MAX_BATCH: usize = 256;
/// Longest an event waits in the queue for others to share its record.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Longest shutdown waits for the last events to be stored.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where one listener's deliveries come from: shared by its events, so that queueing one
/// copies no text.
#[derive(Debug)]
pub(crate) struct Origin {
    pub group: String,
    pub topic: String,
    pub instance: String,
}

/// What a delivery's event needs of its message, taken before the handler gets the message.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seen {
    pub id: MessageId,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub attempt: u32,
}

impl Seen {
    pub fn of(view: &MessageView) -> Self {
        Seen {
            id: view.id,
            queue_id: view.queue_id,
            queue_offset: view.queue_offset,
            attempt: view.attempt(),
        }
    }
}

/// A queued event: a settled delivery, turned into a [`TraceEvent`] by the task (off the
/// delivery path), or a ready event.
#[derive(Debug)]
enum Item {
    Delivery {
        origin: Arc<Origin>,
        seen: Seen,
        started: Instant,
        outcome: DeliveryOutcome,
        error: Option<String>,
        duration: Duration,
    },
    Event(TraceEvent),
}

/// The wall clock and tokio's at one moment: a batch's events get their times from one
/// reading of both, not two clock reads each.
#[derive(Clone, Copy)]
struct Now {
    ms: u64,
    instant: Instant,
}

impl Now {
    fn read() -> Self {
        Now {
            ms: now_millis(),
            instant: Instant::now(),
        }
    }

    /// The wall-clock time of `then`.
    fn ms_of(&self, then: Instant) -> u64 {
        self.ms
            .saturating_sub(self.instant.saturating_duration_since(then).as_millis() as u64)
    }
}

impl Item {
    fn into_event(self, now: Now) -> TraceEvent {
        match self {
            Item::Event(e) => e,
            Item::Delivery {
                origin,
                seen,
                started,
                outcome,
                error,
                duration,
            } => TraceEvent {
                message_id: seen.id,
                at_ms: now.ms_of(started),
                kind: TraceKind::Delivered {
                    group: origin.group.clone(),
                    topic: origin.topic.clone(),
                    queue_id: seen.queue_id,
                    queue_offset: seen.queue_offset,
                    instance: origin.instance.clone(),
                    attempt: seen.attempt,
                    outcome,
                    error: error.map(clip_error),
                    duration_ms: duration.as_millis() as u64,
                },
            },
        }
    }
}

/// Records trace events of an application into its broker. Cheap to clone; every clone feeds
/// the same queue and task.
#[derive(Clone)]
pub struct TraceRecorder {
    inner: Arc<Inner>,
}

struct Inner {
    tx: mpsc::Sender<Item>,
    /// Tells the task that a batch is full; it otherwise sleeps until its batch is due, so
    /// that queueing an event does not wake it.
    full: Arc<Notify>,
    /// Queued events that make a batch full: [`MAX_BATCH`], or half the queue if that is
    /// smaller, so that a small queue is emptied before it overflows.
    batch: usize,
    metrics: Arc<Metrics>,
    closing: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for TraceRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceRecorder")
            .field(
                "queued",
                &(self.inner.tx.max_capacity() - self.inner.tx.capacity()),
            )
            .finish_non_exhaustive()
    }
}

impl TraceRecorder {
    /// Starts the task that stores events into `broker`, with a queue of `capacity` events
    /// (at least 1). Must be called inside a tokio runtime.
    pub fn start(broker: Arc<dyn Broker>, capacity: usize, metrics: Arc<Metrics>) -> Self {
        let capacity = capacity.max(1);
        let batch = MAX_BATCH.min(capacity.div_ceil(2));
        let (tx, rx) = mpsc::channel(capacity);
        let closing = CancellationToken::new();
        let full = Arc::new(Notify::new());
        let task = tokio::spawn(run(
            rx,
            broker,
            metrics.clone(),
            closing.clone(),
            full.clone(),
            batch,
        ));
        TraceRecorder {
            inner: Arc::new(Inner {
                tx,
                full,
                batch,
                metrics,
                closing,
                task: Mutex::new(Some(task)),
            }),
        }
    }

    /// Queues an event without waiting: when the queue is full (or the recorder closed) the
    /// event is dropped and counted.
    pub fn record(&self, event: TraceEvent) {
        self.push(Item::Event(event));
    }

    /// Queues the event of one settled delivery.
    pub(crate) fn delivery(
        &self,
        origin: &Arc<Origin>,
        seen: Seen,
        started: Instant,
        outcome: DeliveryOutcome,
        error: Option<String>,
        duration: Duration,
    ) {
        self.push(Item::Delivery {
            origin: origin.clone(),
            seen,
            started,
            outcome,
            error,
            duration,
        });
    }

    fn push(&self, item: Item) {
        let tx = &self.inner.tx;
        match tx.try_send(item) {
            Ok(()) => {
                if tx.max_capacity() - tx.capacity() >= self.inner.batch {
                    self.inner.full.notify_one();
                }
            }
            Err(TrySendError::Full(_) | TrySendError::Closed(_)) => {
                self.inner.metrics.trace().dropped_full(1)
            }
        }
    }

    /// Stores what is queued, then stops the task; events recorded after this are dropped.
    /// Waits at most [`CLOSE_TIMEOUT`].
    pub async fn close(&self) {
        self.inner.closing.cancel();
        let task = self.inner.task.lock().take();
        let Some(task) = task else {
            return;
        };
        let abort = task.abort_handle();
        match tokio::time::timeout(CLOSE_TIMEOUT, task).await {
            Ok(_) => {}
            Err(_) => {
                abort.abort();
                tracing::warn!(
                    "trace events not stored within {CLOSE_TIMEOUT:?} at shutdown; they are lost (messages are not)"
                );
            }
        }
    }
}

/// The task: batches queued events into trace records until closed, then drains the queue.
/// It waits for the first event of a batch, then sleeps until the batch is due
/// ([`FLUSH_EVERY`]) or full, and takes what is queued.
async fn run(
    mut rx: mpsc::Receiver<Item>,
    broker: Arc<dyn Broker>,
    metrics: Arc<Metrics>,
    closing: CancellationToken,
    full: Arc<Notify>,
    full_at: usize,
) {
    let mut batch: Vec<TraceEvent> = Vec::with_capacity(MAX_BATCH);
    loop {
        let first = tokio::select! {
            biased;
            item = rx.recv() => item,
            _ = closing.cancelled() => None,
        };
        let Some(first) = first else {
            // Closed (or every sender gone): refuse new events, store what is left.
            rx.close();
            let now = Now::read();
            while let Ok(item) = rx.try_recv() {
                batch.push(item.into_event(now));
                if batch.len() == MAX_BATCH {
                    store(&*broker, &mut batch, &metrics).await;
                }
            }
            store(&*broker, &mut batch, &metrics).await;
            return;
        };
        if rx.len() + 1 < full_at {
            tokio::select! {
                _ = tokio::time::sleep(FLUSH_EVERY) => {}
                _ = full.notified() => {}
                _ = closing.cancelled() => {}
            }
        }
        let now = Now::read();
        batch.push(first.into_event(now));
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item.into_event(now)),
                Err(_) => break,
            }
        }
        store(&*broker, &mut batch, &metrics).await;
    }
}

/// Stores one batch as a trace record; a failure drops it (trace is diagnostic) and counts it.
async fn store(broker: &dyn Broker, batch: &mut Vec<TraceEvent>, metrics: &Metrics) {
    if batch.is_empty() {
        return;
    }
    let n = batch.len() as u64;
    match broker.record_trace(std::mem::take(batch)).await {
        Ok(()) => metrics.trace().recorded(n),
        Err(e) => {
            metrics.trace().dropped_failed(n);
            tracing::warn!(events = n, error = %e, "trace events could not be stored; dropped (messages are not affected)");
        }
    }
    batch.reserve(MAX_BATCH);
}

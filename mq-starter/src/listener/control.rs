//! What the application keeps of each running (listener, topic): what it is, how busy it is,
//! and the switch that pauses its fetching (RocketMQ's `suspend`), for the admin API.
//!
//! A paused loop fetches nothing more; deliveries it already holds finish and are settled,
//! and its consumer stays a member of the group, so its queues are not handed to others.

// What only the admin API reads is unused in builds without it.
#![cfg_attr(not(feature = "admin"), allow(dead_code))]

use std::sync::Arc;
use std::time::Duration;

use mq_core::{ConsumeMode, Consumer, MessageModel};
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;

/// How long [`ListenerControl::pause`] waits for the loop to stop fetching: a fetch under
/// way ends within its wait (500 ms) unless every permit is held by a slow handler.
const PARK_WAIT: Duration = Duration::from_secs(2);

/// What a running (listener, topic) is.
pub(crate) struct ListenerInfo {
    pub name: String,
    pub topic: String,
    pub group: String,
    pub model: MessageModel,
    pub mode: ConsumeMode,
    /// Deliveries (or batches) handled at once, at most; at least 1.
    pub concurrency: usize,
    pub batch: Option<usize>,
}

/// One (listener, topic) as it runs.
pub(crate) struct ListenerControl {
    pub info: ListenerInfo,
    /// The loop's permits: one per delivery (or batch) in flight.
    pub permits: Arc<Semaphore>,
    pub consumer: Arc<dyn Consumer>,
    /// The switch: `true` asks the loop not to fetch.
    paused: watch::Sender<bool>,
    /// Whether the loop has seen the switch and stopped fetching.
    parked: watch::Sender<bool>,
}

impl ListenerControl {
    pub fn new(mut info: ListenerInfo, consumer: Arc<dyn Consumer>) -> Self {
        info.concurrency = info.concurrency.max(1);
        ListenerControl {
            permits: Arc::new(Semaphore::new(info.concurrency)),
            info,
            consumer,
            paused: watch::Sender::new(false),
            parked: watch::Sender::new(false),
        }
    }

    /// Deliveries (or batches) being handled now.
    pub fn in_flight(&self) -> usize {
        self.info
            .concurrency
            .saturating_sub(self.permits.available_permits())
    }

    /// Whether the switch says paused.
    pub fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    /// Asks the loop to stop fetching and waits (a little) until it has: once this returns
    /// the loop normally fetches nothing more.
    pub async fn pause(&self) {
        self.paused.send_replace(true);
        let mut parked = self.parked.subscribe();
        let _ = tokio::time::timeout(PARK_WAIT, parked.wait_for(|p| *p)).await;
    }

    /// Lets the loop fetch again.
    pub fn resume(&self) {
        self.paused.send_replace(false);
    }

    /// Called by the loop before each fetch: while paused, waits for resume or `stop`.
    /// Returns `false` when the loop is to stop.
    pub async fn wait_while_paused(&self, stop: &CancellationToken) -> bool {
        // The common case costs one read of the switch: this runs before every fetch.
        if !self.is_paused() {
            return true;
        }
        let mut switch = self.paused.subscribe();
        self.parked.send_replace(true);
        tracing::info!(listener = %self.info.name, topic = %self.info.topic, "listener paused");
        let go_on = tokio::select! {
            _ = stop.cancelled() => false,
            // The sender lives as long as this control: an error cannot happen while the loop
            // holds it, and stopping is the safe answer if it did.
            resumed = switch.wait_for(|p| !*p) => resumed.is_ok(),
        };
        self.parked.send_replace(false);
        if go_on {
            tracing::info!(listener = %self.info.name, topic = %self.info.topic, "listener resumed");
        }
        go_on
    }
}

//! Settling deliveries when the consumer guards its state with an async lock, as the Redis
//! consumer does (held while it fetches, taken by every ack and nack): a unit that fails waits
//! for the lock inside its listener task while another unit of the same task finishes. The
//! listener must keep polling the failing unit while it acknowledges the other; before it did,
//! the lock went to the unpolled unit and the acknowledgement, and every receive after it,
//! waited forever (a demo-shop run on Redis stopped so).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use mq_starter::core::embedded::{EmbeddedBroker, EmbeddedConfig};
use mq_starter::core::{
    Broker, Consumer, ConsumerOptions, Delivery, Disposition, Failure, MessageView, Receipt,
    Subscription,
};
use mq_starter::prelude::*;
use support::wrapped::{Hooks, Wrapped, R};
use support::{config, eventually};

/// Messages whose body starts with "fail" fail once; the rest succeed. Records who ran.
static HANDLED: Mutex<Option<HashSet<String>>> = Mutex::new(None);
static FAILED: AtomicU64 = AtomicU64::new(0);

#[mq_listener(topic = "t-lock", group = "g-lock", enabled = "${test.lock:false}")]
async fn some_fail(msg: MessageView) -> Outcome {
    let body = String::from_utf8_lossy(&msg.body).into_owned();
    // Varied run times, so that units of one task finish while others still settle.
    tokio::time::sleep(Duration::from_millis(u64::from(msg.id.as_u128() as u8 % 5))).await;
    if body.starts_with("fail") && msg.reconsume_times == 0 {
        FAILED.fetch_add(1, Ordering::Relaxed);
        return Outcome::retry_after("fails once", Duration::from_millis(50));
    }
    HANDLED
        .lock()
        .unwrap()
        .get_or_insert_with(HashSet::new)
        .insert(body);
    Outcome::ack()
}

/// Consumers wrapped in [`LockingConsumer`].
struct LockConsumers;

#[async_trait]
impl Hooks for LockConsumers {
    async fn subscribe(
        &self,
        inner: &dyn Broker,
        s: Subscription,
        o: ConsumerOptions,
    ) -> R<Box<dyn Consumer>> {
        Ok(Box::new(LockingConsumer {
            inner: inner.subscribe(s, o).await?,
            state: tokio::sync::Mutex::new(()),
        }))
    }
}

/// A consumer that holds an async lock while it receives (up to the receive's wait when
/// nothing comes) and takes it to acknowledge or fail a delivery, like the Redis consumer.
struct LockingConsumer {
    inner: Box<dyn Consumer>,
    state: tokio::sync::Mutex<()>,
}

#[async_trait]
impl Consumer for LockingConsumer {
    fn subscription(&self) -> &Subscription {
        self.inner.subscription()
    }
    fn instance(&self) -> &str {
        self.inner.instance()
    }
    async fn receive(&self, max: usize, wait: Duration) -> R<Vec<Delivery>> {
        let _state = self.state.lock().await;
        self.inner.receive(max, wait).await
    }
    async fn ack(&self, receipts: &[Receipt]) -> R<()> {
        let _state = self.state.lock().await;
        self.inner.ack(receipts).await
    }
    async fn nack(&self, receipt: &Receipt, failure: Failure) -> R<Disposition> {
        let _state = self.state.lock().await;
        self.inner.nack(receipt, failure).await
    }
    async fn dead_letter(&self, receipt: &Receipt, reason: &str) -> R<()> {
        let _state = self.state.lock().await;
        self.inner.dead_letter(receipt, reason).await
    }
    async fn assignment(&self) -> R<Vec<u32>> {
        self.inner.assignment().await
    }
    async fn close(&self) -> R<()> {
        self.inner.close().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_settle_while_their_neighbours_are_acknowledged() {
    let (cfg, dir) = config(&["lock"], "");
    let inner = EmbeddedBroker::open(EmbeddedConfig::new(dir.path().join("mq")))
        .await
        .unwrap();
    let running = MqApplication::new(cfg)
        .unwrap()
        .with_broker(Arc::new(Wrapped {
            inner,
            hooks: LockConsumers,
        }))
        .start()
        .await
        .unwrap();
    let template = running.template();
    const ROUNDS: usize = 20;
    const PER_ROUND: usize = 40;
    for round in 0..ROUNDS {
        // Bursts, so that one receive hands out many units and each task runs several.
        for i in 0..PER_ROUND {
            let body = if i % 3 == 0 { "fail" } else { "ok" };
            template
                .message("t-lock")
                .bytes(format!("{body}-{round}-{i}"))
                .send()
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let total = ROUNDS * PER_ROUND;
    eventually(
        "every message handled, the failed ones on their retry",
        Duration::from_secs(60),
        || HANDLED.lock().unwrap().as_ref().map_or(0, HashSet::len) == total,
    )
    .await;
    assert!(FAILED.load(Ordering::Relaxed) > 0);
    running.shutdown().await.unwrap();
}

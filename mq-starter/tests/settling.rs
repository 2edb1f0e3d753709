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
use mq_starter::core::dead_letter::DeadLetter;
use mq_starter::core::embedded::{EmbeddedBroker, EmbeddedConfig};
use mq_starter::core::stats::{GroupStats, QueueOffset, ResetTo, TopicStats};
use mq_starter::core::trace::TraceEvent;
use mq_starter::core::transaction::{TransactionChecker, TxState};
use mq_starter::core::{
    Broker, BrokerError, Consumer, ConsumerOptions, Delivery, Disposition, Failure, Message,
    MessageId, MessageView, Prepared, Receipt, ScheduledMessage, SendOptions, SendResult,
    Subscription, TransactionId,
};
use mq_starter::prelude::*;
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

/// The embedded broker, its consumers wrapped in [`LockingConsumer`].
struct Locking {
    inner: Arc<dyn Broker>,
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

type R<T> = Result<T, BrokerError>;

#[async_trait]
impl Broker for Locking {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn create_topic(&self, t: &str, n: u32) -> R<()> {
        self.inner.create_topic(t, n).await
    }
    async fn queue_count(&self, t: &str) -> R<Option<u32>> {
        self.inner.queue_count(t).await
    }
    async fn send(&self, m: Message, o: SendOptions) -> R<SendResult> {
        self.inner.send(m, o).await
    }
    async fn send_batch(&self, m: Vec<Message>, o: SendOptions) -> R<Vec<SendResult>> {
        self.inner.send_batch(m, o).await
    }
    async fn subscribe(&self, s: Subscription, o: ConsumerOptions) -> R<Box<dyn Consumer>> {
        Ok(Box::new(LockingConsumer {
            inner: self.inner.subscribe(s, o).await?,
            state: tokio::sync::Mutex::new(()),
        }))
    }
    async fn prepare(&self, m: Message, o: SendOptions, p: &str) -> R<Prepared> {
        self.inner.prepare(m, o, p).await
    }
    async fn end_transaction(&self, t: &TransactionId, s: TxState) -> R<Option<SendResult>> {
        self.inner.end_transaction(t, s).await
    }
    async fn register_checker(&self, p: &str, c: Arc<dyn TransactionChecker>) -> R<()> {
        self.inner.register_checker(p, c).await
    }
    async fn dead_letters(&self, g: &str, from: u64, limit: usize) -> R<Vec<DeadLetter>> {
        self.inner.dead_letters(g, from, limit).await
    }
    async fn dead_letter_counts(&self) -> R<Vec<(String, u64)>> {
        self.inner.dead_letter_counts().await
    }
    async fn resend_dead_letter(&self, g: &str, seq: u64) -> R<bool> {
        self.inner.resend_dead_letter(g, seq).await
    }
    async fn delete_dead_letter(&self, g: &str, seq: u64) -> R<bool> {
        self.inner.delete_dead_letter(g, seq).await
    }
    async fn lag(&self, g: &str, t: &str) -> R<Option<u64>> {
        self.inner.lag(g, t).await
    }
    async fn topics(&self) -> R<Vec<String>> {
        self.inner.topics().await
    }
    async fn topic_stats(&self, t: &str) -> R<TopicStats> {
        self.inner.topic_stats(t).await
    }
    async fn groups(&self) -> R<Vec<String>> {
        self.inner.groups().await
    }
    async fn group_stats(&self, g: &str) -> R<GroupStats> {
        self.inner.group_stats(g).await
    }
    async fn reset_offset(&self, g: &str, t: &str, to: ResetTo) -> R<Vec<QueueOffset>> {
        self.inner.reset_offset(g, t, to).await
    }
    async fn messages_by_id(&self, id: MessageId) -> R<Vec<MessageView>> {
        self.inner.messages_by_id(id).await
    }
    async fn messages_by_key(&self, k: &str, t: Option<&str>, limit: usize) -> R<Vec<MessageView>> {
        self.inner.messages_by_key(k, t, limit).await
    }
    async fn scheduled_by_id(&self, id: MessageId) -> R<Vec<ScheduledMessage>> {
        self.inner.scheduled_by_id(id).await
    }
    async fn scheduled_by_key(
        &self,
        k: &str,
        t: Option<&str>,
        limit: usize,
    ) -> R<Vec<ScheduledMessage>> {
        self.inner.scheduled_by_key(k, t, limit).await
    }
    async fn record_trace(&self, events: Vec<TraceEvent>) -> R<()> {
        self.inner.record_trace(events).await
    }
    async fn health(&self) -> R<()> {
        self.inner.health().await
    }
    async fn flush(&self) -> R<()> {
        self.inner.flush().await
    }
    async fn shutdown(&self) -> R<()> {
        self.inner.shutdown().await
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
        .with_broker(Arc::new(Locking { inner }))
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

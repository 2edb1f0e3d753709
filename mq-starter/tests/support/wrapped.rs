//! A broker that is another broker with a step or two replaced ([`Hooks`]): a test that
//! injects faults into trace storage or wraps consumers writes only those steps.

use std::sync::Arc;

use async_trait::async_trait;
use mq_starter::core::dead_letter::DeadLetter;
use mq_starter::core::stats::{GroupStats, QueueOffset, ResetTo, TopicStats};
use mq_starter::core::trace::TraceEvent;
use mq_starter::core::transaction::{TransactionChecker, TxState};
use mq_starter::core::{
    Broker, BrokerError, Consumer, ConsumerOptions, Message, MessageId, MessageView, Prepared,
    ScheduledMessage, SendOptions, SendResult, Subscription, TransactionId,
};

pub type R<T> = Result<T, BrokerError>;

/// The steps a [`Wrapped`] broker may do differently; by default, the inner broker's.
#[async_trait]
pub trait Hooks: Send + Sync + 'static {
    async fn subscribe(
        &self,
        inner: &dyn Broker,
        s: Subscription,
        o: ConsumerOptions,
    ) -> R<Box<dyn Consumer>> {
        inner.subscribe(s, o).await
    }

    async fn record_trace(&self, inner: &dyn Broker, events: Vec<TraceEvent>) -> R<()> {
        inner.record_trace(events).await
    }
}

/// `inner`, with the steps of `hooks`.
pub struct Wrapped<H> {
    pub inner: Arc<dyn Broker>,
    pub hooks: H,
}

#[async_trait]
impl<H: Hooks> Broker for Wrapped<H> {
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
        self.hooks.subscribe(&*self.inner, s, o).await
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
        self.hooks.record_trace(&*self.inner, events).await
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

//! `mq.producer.request-timeout` bounds a whole template send, retries included, and
//! `mq.producer.send-timeout` each attempt: against a broker that never answers, on a paused
//! clock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mq_starter::config::Configuration;
use mq_starter::core::{
    Broker, BrokerError, Consumer, ConsumerOptions, DeadLetter, GroupStats, Message, MessageId,
    MessageView, Prepared, QueueOffset, ResetTo, ScheduledMessage, SendOptions, SendResult,
    Subscription, TopicStats, TransactionChecker, TransactionId, TxState,
};
use mq_starter::{Metrics, MqTemplate, SendError};

/// A broker whose sends never answer; it counts them.
#[derive(Default)]
struct Silent {
    sends: AtomicU32,
}

type R<T> = Result<T, BrokerError>;

#[async_trait]
impl Broker for Silent {
    fn backend(&self) -> &'static str {
        "silent"
    }
    async fn create_topic(&self, _: &str, _: u32) -> R<()> {
        Ok(())
    }
    async fn queue_count(&self, _: &str) -> R<Option<u32>> {
        Ok(None)
    }
    async fn send(&self, _: Message, _: SendOptions) -> R<SendResult> {
        self.sends.fetch_add(1, Ordering::SeqCst);
        std::future::pending().await
    }
    async fn send_batch(&self, _: Vec<Message>, _: SendOptions) -> R<Vec<SendResult>> {
        self.sends.fetch_add(1, Ordering::SeqCst);
        std::future::pending().await
    }
    async fn subscribe(&self, _: Subscription, _: ConsumerOptions) -> R<Box<dyn Consumer>> {
        Err(BrokerError::Closed)
    }
    async fn prepare(&self, _: Message, _: SendOptions, _: &str) -> R<Prepared> {
        std::future::pending().await
    }
    async fn end_transaction(&self, _: &TransactionId, _: TxState) -> R<Option<SendResult>> {
        Err(BrokerError::Closed)
    }
    async fn register_checker(&self, _: &str, _: Arc<dyn TransactionChecker>) -> R<()> {
        Ok(())
    }
    async fn dead_letters(&self, _: &str, _: u64, _: usize) -> R<Vec<DeadLetter>> {
        Ok(Vec::new())
    }
    async fn dead_letter_counts(&self) -> R<Vec<(String, u64)>> {
        Ok(Vec::new())
    }
    async fn resend_dead_letter(&self, _: &str, _: u64) -> R<bool> {
        Ok(false)
    }
    async fn delete_dead_letter(&self, _: &str, _: u64) -> R<bool> {
        Ok(false)
    }
    async fn topics(&self) -> R<Vec<String>> {
        Ok(Vec::new())
    }
    async fn topic_stats(&self, topic: &str) -> R<TopicStats> {
        Err(BrokerError::TopicNotFound(topic.into()))
    }
    async fn groups(&self) -> R<Vec<String>> {
        Ok(Vec::new())
    }
    async fn group_stats(&self, group: &str) -> R<GroupStats> {
        Err(BrokerError::GroupNotFound {
            group: group.into(),
            topic: None,
        })
    }
    async fn reset_offset(&self, _: &str, topic: &str, _: ResetTo) -> R<Vec<QueueOffset>> {
        Err(BrokerError::TopicNotFound(topic.into()))
    }
    async fn record_trace(&self, _: Vec<mq_core::trace::TraceEvent>) -> R<()> {
        Ok(())
    }
    async fn messages_by_id(&self, _: MessageId) -> R<Vec<MessageView>> {
        Ok(Vec::new())
    }
    async fn messages_by_key(&self, _: &str, _: Option<&str>, _: usize) -> R<Vec<MessageView>> {
        Ok(Vec::new())
    }
    async fn scheduled_by_id(&self, _: MessageId) -> R<Vec<ScheduledMessage>> {
        Ok(Vec::new())
    }
    async fn scheduled_by_key(
        &self,
        _: &str,
        _: Option<&str>,
        _: usize,
    ) -> R<Vec<ScheduledMessage>> {
        Ok(Vec::new())
    }
    async fn health(&self) -> R<()> {
        Ok(())
    }
    async fn flush(&self) -> R<()> {
        Ok(())
    }
    async fn shutdown(&self) -> R<()> {
        Ok(())
    }
}

/// A template over a silent broker with the `mq.producer` section `producer` (YAML).
fn template(producer: &str) -> (MqTemplate, Arc<Silent>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("application.yaml"),
        format!("mq:\n  producer:\n{producer}"),
    )
    .unwrap();
    let settings = Configuration::load_with_env(dir.path(), &[], &[])
        .unwrap()
        .mq()
        .unwrap()
        .producer;
    let broker = Arc::new(Silent::default());
    let template = MqTemplate::new(broker.clone(), settings, Arc::new(Metrics::default()));
    (template, broker)
}

#[tokio::test(start_paused = true)]
async fn a_send_fails_at_the_request_timeout_whatever_the_retries() {
    let (t, broker) = template("    request-timeout: 5s\n    send-timeout: 2s\n    retries: 9\n");
    let started = tokio::time::Instant::now();
    let err = t.send("orders", &1).await.unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    match err {
        SendError::RequestTimeout {
            timeout, attempts, ..
        } => {
            assert_eq!(timeout, Duration::from_secs(5));
            assert_eq!(attempts, 3);
        }
        other => panic!("expected RequestTimeout, got {other}"),
    }
    assert_eq!(broker.sends.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn with_the_defaults_a_silent_broker_fails_a_send_after_three_seconds() {
    let (t, _) = template("    {}\n");
    let started = tokio::time::Instant::now();
    let err = t
        .message("orders")
        .key("k")
        .bytes("x")
        .send()
        .await
        .unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_secs(3));
    assert!(matches!(err, SendError::RequestTimeout { .. }), "{err}");
}

#[tokio::test(start_paused = true)]
async fn attempts_time_out_by_the_send_timeout_while_the_request_timeout_leaves_room() {
    let (t, broker) = template("    request-timeout: 1m\n    send-timeout: 2s\n    retries: 2\n");
    let started = tokio::time::Instant::now();
    let err = t.send("orders", &1).await.unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_secs(6));
    assert!(
        matches!(err, SendError::Timeout(d) if d == Duration::from_secs(2)),
        "{err}"
    );
    assert_eq!(broker.sends.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn batches_are_bounded_too() {
    let (t, broker) = template("    request-timeout: 1s\n");
    let err = t.send_batch("orders", &[1, 2, 3]).await.unwrap_err();
    assert!(matches!(err, SendError::RequestTimeout { .. }), "{err}");
    assert_eq!(broker.sends.load(Ordering::SeqCst), 1);
}

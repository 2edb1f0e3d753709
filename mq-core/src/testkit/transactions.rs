//! Conformance cases for transactional (half) messages and check-back.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::{assert_quiet, body, drain, first, unique, Harness};
use crate::broker::SendOptions;
use crate::message::{Message, MessageView};
use crate::subscription::Subscription;
use crate::transaction::{TransactionChecker, TxState, DEFAULT_TRANSACTION_CHECK_MAX};
use crate::BrokerError;

/// A checker that answers from a script and records when it was asked.
pub struct ScriptedChecker {
    answers: Mutex<Vec<TxState>>,
    then: TxState,
    /// When each check came, and for which message body.
    pub calls: Mutex<Vec<(Instant, String)>>,
}

impl ScriptedChecker {
    /// Answers `answers` in turn, then `then` forever.
    pub fn new(answers: Vec<TxState>, then: TxState) -> Arc<Self> {
        Arc::new(ScriptedChecker {
            answers: Mutex::new(answers.into_iter().rev().collect()),
            then,
            calls: Mutex::new(Vec::new()),
        })
    }
}

#[async_trait]
impl TransactionChecker for ScriptedChecker {
    async fn check(&self, half: &MessageView) -> TxState {
        self.calls.lock().push((
            Instant::now(),
            String::from_utf8_lossy(&half.body).into_owned(),
        ));
        self.answers.lock().pop().unwrap_or(self.then)
    }
}

/// A half message is invisible until committed; a rolled-back one never shows; ending a
/// transaction twice is an error.
pub async fn transactions_commit_and_rollback(h: &dyn Harness) {
    let broker = h.open().await;
    let topic = unique("tx");
    let consumer = broker
        .subscribe(Subscription::new(&topic, unique("g")), first())
        .await
        .expect("subscribe");
    let producer = unique("producer");
    let commit = broker
        .prepare(
            Message::new(&topic, "paid").with_key("order-1"),
            SendOptions::new(),
            &producer,
        )
        .await
        .expect("prepare");
    let rollback = broker
        .prepare(
            Message::new(&topic, "rolled back"),
            SendOptions::new(),
            &producer,
        )
        .await
        .expect("prepare");
    assert_quiet(&*consumer, Duration::from_millis(300)).await;
    let sent = broker
        .end_transaction(&commit.transaction, TxState::Commit)
        .await
        .expect("commit")
        .expect("stored");
    assert_eq!(sent.message_id, commit.message_id);
    assert_eq!(
        broker
            .end_transaction(&rollback.transaction, TxState::Rollback)
            .await
            .expect("rollback"),
        None
    );
    let got = drain(&*consumer, 1, Duration::from_secs(5), true).await;
    assert_eq!(got.len(), 1);
    assert_eq!(body(&got[0]), "paid");
    assert_eq!(got[0].message.id, commit.message_id);
    assert_eq!(got[0].message.topic, topic);
    assert_eq!(got[0].message.key(), Some("order-1"));
    assert!(
        got[0].message.properties.is_empty(),
        "{:?}",
        got[0].message.properties
    );
    assert_quiet(&*consumer, Duration::from_millis(300)).await;
    let err = broker
        .end_transaction(&commit.transaction, TxState::Commit)
        .await
        .expect_err("already ended");
    assert!(matches!(err, BrokerError::UnknownTransaction(_)), "{err}");
    broker.shutdown().await.expect("shutdown");
}

/// (paused) An unknown outcome is checked back after the transaction timeout, then every check
/// interval, through the checker registered for the producer; commit delivers.
pub async fn unknown_transactions_are_checked_back(h: &dyn Harness) {
    let broker = h.open().await;
    let topic = unique("tx-check");
    let consumer = broker
        .subscribe(Subscription::new(&topic, unique("g")), first())
        .await
        .expect("subscribe");
    let producer = unique("producer");
    let other = unique("other-producer");
    let checker = ScriptedChecker::new(vec![TxState::Unknown, TxState::Unknown], TxState::Commit);
    let other_checker = ScriptedChecker::new(vec![], TxState::Rollback);
    broker
        .register_checker(&producer, checker.clone())
        .await
        .expect("register");
    broker
        .register_checker(&other, other_checker.clone())
        .await
        .expect("register");
    let t0 = Instant::now();
    let prepared = broker
        .prepare(Message::new(&topic, "maybe"), SendOptions::new(), &producer)
        .await
        .expect("prepare");
    assert_eq!(
        broker
            .end_transaction(&prepared.transaction, TxState::Unknown)
            .await
            .expect("unknown"),
        None
    );
    broker
        .prepare(Message::new(&topic, "never"), SendOptions::new(), &other)
        .await
        .expect("prepare");
    let got = drain(&*consumer, 1, Duration::from_secs(600), true).await;
    assert_eq!(got.len(), 1);
    assert_eq!(body(&got[0]), "maybe");
    let calls: Vec<Duration> = checker.calls.lock().iter().map(|(t, _)| *t - t0).collect();
    let policy = crate::transaction::CheckPolicy::default();
    assert_eq!(calls.len(), 3, "{calls:?}");
    for (i, at) in calls.iter().enumerate() {
        let want = policy.timeout + policy.interval * i as u32;
        assert!(
            *at >= want && *at <= want + Duration::from_secs(1),
            "check {i} at {at:?}, expected {want:?}"
        );
    }
    // Each producer's checker answered only for its own messages.
    assert!(checker.calls.lock().iter().all(|(_, b)| b == "maybe"));
    let other_calls = other_checker.calls.lock().clone();
    assert_eq!(other_calls.len(), 1);
    assert_eq!(other_calls[0].1, "never");
    assert_quiet(&*consumer, Duration::from_secs(120)).await;
    broker.shutdown().await.expect("shutdown");
}

/// (paused) A transaction still unknown after the last check-back is discarded.
pub async fn unanswered_transactions_are_discarded(h: &dyn Harness) {
    let broker = h.open().await;
    let topic = unique("tx-discard");
    let consumer = broker
        .subscribe(Subscription::new(&topic, unique("g")), first())
        .await
        .expect("subscribe");
    let producer = unique("producer");
    let checker = ScriptedChecker::new(vec![], TxState::Unknown);
    broker
        .register_checker(&producer, checker.clone())
        .await
        .expect("register");
    let prepared = broker
        .prepare(Message::new(&topic, "lost"), SendOptions::new(), &producer)
        .await
        .expect("prepare");
    let policy = crate::transaction::CheckPolicy::default();
    let all_checks = policy.timeout + policy.interval * (DEFAULT_TRANSACTION_CHECK_MAX - 1);
    assert_quiet(&*consumer, all_checks + Duration::from_secs(120)).await;
    assert_eq!(
        checker.calls.lock().len(),
        DEFAULT_TRANSACTION_CHECK_MAX as usize
    );
    let err = broker
        .end_transaction(&prepared.transaction, TxState::Commit)
        .await
        .expect_err("discarded");
    assert!(matches!(err, BrokerError::UnknownTransaction(_)), "{err}");
    broker.shutdown().await.expect("shutdown");
}

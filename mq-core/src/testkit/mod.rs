//! The conformance suite every [`Broker`] backend must pass (feature `testkit`).
//!
//! A backend's test crate implements [`Harness`] and expands
//! [`conformance_suite!`](crate::conformance_suite):
//!
//! ```ignore
//! struct Embedded(tempfile::TempDir);
//! #[async_trait::async_trait]
//! impl mq_core::testkit::Harness for Embedded { /* open the broker on self.0 */ }
//! mq_core::conformance_suite!(Embedded::new());
//! ```
//!
//! Every case uses fresh topic and group names, so harnesses may share one server.

// Test support: a failed step is a failed test, so panicking is the point.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod admin;
mod delivery;
mod health;
mod lookup;
mod scheduled_lookup;
mod scheduling;
mod trace;
mod transactions;

pub use admin::*;
pub use delivery::*;
pub use health::*;
pub use lookup::*;
pub use scheduled_lookup::*;
pub use scheduling::*;
pub use trace::*;
pub use transactions::*;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::broker::{Broker, Consumer, ConsumerOptions, Delivery, SendOptions};
use crate::message::Message;
use crate::subscription::ConsumeFrom;

/// How the suite gets a broker.
#[async_trait]
pub trait Harness: Send + Sync {
    /// Opens a broker on this harness's storage. After the previous broker's `shutdown`, a new
    /// call must see the same data (a restart).
    async fn open(&self) -> Arc<dyn Broker>;
}

/// A name no other case uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", crate::MessageId::new())
}

/// Receives until `count` deliveries arrived or `timeout` passed; acknowledges them if `ack`.
pub async fn drain(
    consumer: &dyn Consumer,
    count: usize,
    timeout: Duration,
    ack: bool,
) -> Vec<Delivery> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut got = Vec::new();
    while got.len() < count {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        let batch = consumer
            .receive(count - got.len(), left)
            .await
            .expect("receive");
        if ack && !batch.is_empty() {
            let receipts: Vec<_> = batch.iter().map(|d| d.receipt.clone()).collect();
            consumer.ack(&receipts).await.expect("ack");
        }
        got.extend(batch);
    }
    got
}

/// Asserts that nothing arrives within `wait`.
pub async fn assert_quiet(consumer: &dyn Consumer, wait: Duration) {
    let got = consumer.receive(16, wait).await.expect("receive");
    assert!(
        got.is_empty(),
        "expected no delivery, got {:?}",
        got.iter().map(body).collect::<Vec<_>>()
    );
}

/// The body as text.
pub fn body(d: &Delivery) -> String {
    String::from_utf8_lossy(&d.message.body).into_owned()
}

pub(crate) const WAIT: Duration = Duration::from_secs(5);
pub(crate) const QUIET: Duration = Duration::from_millis(300);

pub(crate) fn first() -> ConsumerOptions {
    ConsumerOptions::new().consume_from(ConsumeFrom::First)
}

pub(crate) async fn send_n(
    broker: &dyn Broker,
    topic: &str,
    n: usize,
    opts: SendOptions,
) -> Vec<String> {
    let mut bodies = Vec::new();
    for i in 0..n {
        let b = format!("m{i}");
        broker
            .send(Message::new(topic, b.clone()), opts.clone())
            .await
            .expect("send");
        bodies.push(b);
    }
    bodies
}

/// Expands to one `#[tokio::test]` per conformance case, each with a fresh harness from
/// `$harness` (an expression evaluated per test). Cases on the paused clock run on a
/// current-thread runtime with `start_paused`. With `, if guard`, a case whose `guard`
/// expression is false returns at once (a backend whose server is not there; the guard says
/// why).
#[macro_export]
macro_rules! conformance_suite {
    ($harness:expr) => {
        $crate::conformance_suite!($harness, if true);
    };
    ($harness:expr, if $guard:expr) => {
        $crate::conformance_suite!(@real $harness, $guard;
            send_assigns_offsets,
            order_within_queue,
            tag_filtering,
            every_group_gets_every_message,
            clustering_balances_and_rebalances,
            dropped_member_messages_are_redelivered,
            broadcasting_reaches_every_member,
            orderly_one_at_a_time_per_queue,
            in_flight_limit_per_queue,
            nack_retries_after_delay,
            consume_timeout_redelivers,
            progress_never_skips_unacked,
            redelivery_after_restart,
            consume_from_last_and_first,
            invalid_input_is_rejected,
            dead_letters_can_be_resent_and_deleted,
            broadcasting_retries_per_member,
            short_backoff_in_real_time,
            delays_due_while_down_come_in_order,
            fired_delays_do_not_fire_again_after_restart,
            transactions_commit_and_rollback,
            topic_stats_after_sends,
            group_stats_after_acks,
            group_owners_follow_assignment,
            reset_to_first_redelivers_everything,
            reset_to_last_skips_backlog,
            reset_to_timestamp_redelivers_from_it,
            reset_survives_restart,
            trace_of_a_message_retried_twice_then_acked,
            trace_of_a_dead_letter_resent,
            trace_records_hold_many_messages,
            lookup_by_id_after_send,
            lookup_by_id_finds_retry_and_dead_letter_copies,
            lookup_by_key_with_several_keys,
            lookup_by_key_topic_filter_and_limit,
            lookup_after_restart,
            scheduled_lookup_finds_delays_until_they_are_due,
            scheduled_lookup_finds_waiting_retries,
            scheduled_lookup_after_restart,
            health_follows_the_broker_lifecycle,
        );
        $crate::conformance_suite!(@paused $harness, $guard;
            delayed_messages_arrive_when_due,
            retries_follow_backoff_then_dead_letter,
            orderly_retries_in_place_then_dead_letters,
            unknown_transactions_are_checked_back,
            unanswered_transactions_are_discarded,
        );
    };
    (@real $harness:expr, $guard:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if !$guard {
                    return;
                }
                let harness = $harness;
                $crate::testkit::$case(&harness).await;
            }
        )*
    };
    (@paused $harness:expr, $guard:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(start_paused = true)]
            async fn $case() {
                if !$guard {
                    return;
                }
                let harness = $harness;
                $crate::testkit::$case(&harness).await;
            }
        )*
    };
}

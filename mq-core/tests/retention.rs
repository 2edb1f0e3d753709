//! Retention of the embedded broker: old segments go once every group is past them.

// A failed step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use mq_core::embedded::{EmbeddedBroker, EmbeddedConfig};
use mq_core::testkit::drain;
use mq_core::{Broker, ConsumeFrom, ConsumerOptions, Message, SendOptions, Subscription};

fn config(dir: &std::path::Path, reserved: Duration) -> EmbeddedConfig {
    EmbeddedConfig::new(dir)
        .max_message_size(8 * 1024)
        .segment_size(80 * 1024)
        .consume_queue_entries(32)
        // Retention runs only when asked in these tests.
        .retention(reserved, Duration::from_secs(3600))
}

async fn fill(broker: &EmbeddedBroker, n: usize) {
    for i in 0..n {
        broker
            .send(
                Message::new("ret", format!("{i:05}-{}", "z".repeat(1000))),
                SendOptions::queue(0),
            )
            .await
            .expect("send");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_go_only_when_consumed_and_old() {
    let dir = tempfile::tempdir().unwrap();
    let broker = EmbeddedBroker::open(config(dir.path(), Duration::ZERO))
        .await
        .unwrap();
    let opts = ConsumerOptions::new().consume_from(ConsumeFrom::First);
    let slow = broker
        .subscribe(Subscription::new("ret", "slow"), opts.clone())
        .await
        .unwrap();
    let fast = broker
        .subscribe(Subscription::new("ret", "fast"), opts.clone())
        .await
        .unwrap();
    fill(&broker, 600).await;
    let segments = broker.commit_log_segments().len();
    assert!(segments >= 7, "{segments} segments");

    // One group has consumed nothing: nothing may go.
    assert_eq!(
        drain(&*fast, 600, Duration::from_secs(10), true)
            .await
            .len(),
        600
    );
    assert_eq!(broker.run_retention().unwrap().segments_deleted, 0);

    // The slow group gets half way: the segments wholly below its position go.
    let half = drain(&*slow, 300, Duration::from_secs(10), true).await;
    assert_eq!(half.len(), 300);
    let report = broker.run_retention().unwrap();
    assert!(report.segments_deleted >= 2, "{report:?}");
    assert!(report.segments_deleted < segments - 1, "{report:?}");

    // What the slow group has not consumed is still there, in order.
    let rest = drain(&*slow, 300, Duration::from_secs(10), true).await;
    let bodies: Vec<String> = rest
        .iter()
        .map(|d| String::from_utf8_lossy(&d.message.body)[..5].to_owned())
        .collect();
    let want: Vec<String> = (300..600).map(|i| format!("{i:05}")).collect();
    assert_eq!(bodies, want);

    // Everything consumed: all but the active segment go.
    let report = broker.run_retention().unwrap();
    assert_eq!(broker.commit_log_segments().len(), 1, "{report:?}");
    assert!(broker.corruptions().is_empty());

    // A late group that starts from the first offset sees only what is left; new sends work.
    let late = broker
        .subscribe(Subscription::new("ret", "late"), opts)
        .await
        .unwrap();
    fill(&broker, 3).await;
    let got = drain(&*late, 1000, Duration::from_millis(800), true).await;
    assert!(got.len() >= 3 && got.len() < 600, "{}", got.len());
    broker.shutdown().await.unwrap();

    // And it all reopens.
    let broker = EmbeddedBroker::open(config(dir.path(), Duration::ZERO))
        .await
        .unwrap();
    assert!(broker.corruptions().is_empty());
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn young_segments_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let broker = EmbeddedBroker::open(config(dir.path(), Duration::from_secs(3600)))
        .await
        .unwrap();
    let c = broker
        .subscribe(
            Subscription::new("ret", "g"),
            ConsumerOptions::new().consume_from(ConsumeFrom::First),
        )
        .await
        .unwrap();
    fill(&broker, 300).await;
    assert_eq!(
        drain(&*c, 300, Duration::from_secs(10), true).await.len(),
        300
    );
    assert_eq!(broker.run_retention().unwrap().segments_deleted, 0);
    broker.shutdown().await.unwrap();
}

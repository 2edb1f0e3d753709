//! Conformance cases for storage and delivery: offsets, order, tags, groups, clustering,
//! broadcasting, orderly queues and at-least-once redelivery.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use super::{assert_quiet, body, drain, first, send_n, unique, Harness, QUIET, WAIT};
use crate::broker::{Consumer, ConsumerOptions, Disposition, Failure, SendOptions};
use crate::message::Message;
use crate::subscription::{ConsumeMode, MessageModel, Subscription};
use crate::BrokerError;

/// Offsets of one queue grow by one per message, and ids are unique.
pub async fn send_assigns_offsets(h: &dyn Harness) {
    let broker = h.open().await;
    let topic = unique("offsets");
    let mut ids = HashSet::new();
    for i in 0..20u64 {
        let r = broker
            .send(Message::new(&topic, format!("m{i}")), SendOptions::queue(1))
            .await
            .expect("send");
        assert_eq!(r.queue_id, 1);
        assert_eq!(r.queue_offset, i);
        assert!(ids.insert(r.message_id));
    }
    let batch: Vec<Message> = (0..5)
        .map(|i| Message::new(&topic, format!("b{i}")))
        .collect();
    let results = broker
        .send_batch(batch, SendOptions::queue(2))
        .await
        .expect("batch");
    let offsets: Vec<u64> = results.iter().map(|r| r.queue_offset).collect();
    assert_eq!(offsets, vec![0, 1, 2, 3, 4]);
    assert!(results.iter().all(|r| r.queue_id == 2));
    broker.shutdown().await.expect("shutdown");
}

/// A queue's messages come in offset order, and a sharding key keeps to one queue.
pub async fn order_within_queue(h: &dyn Harness) {
    let broker = h.open().await;
    let topic = unique("order");
    let consumer = broker
        .subscribe(Subscription::new(&topic, unique("g")), first())
        .await
        .expect("subscribe");
    for i in 0..30 {
        for key in ["k1", "k2", "k3"] {
            broker
                .send(
                    Message::new(&topic, format!("{key}:{i}")),
                    SendOptions::sharding_key(key),
                )
                .await
                .expect("send");
        }
    }
    let got = drain(&*consumer, 90, WAIT, true).await;
    assert_eq!(got.len(), 90);
    let mut per_key: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let mut queue_of: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    let mut last_offset: BTreeMap<u32, u64> = BTreeMap::new();
    for d in &got {
        let b = body(d);
        let (key, n) = b.split_once(':').expect("key:n");
        per_key
            .entry(key.into())
            .or_default()
            .push(n.parse().expect("n"));
        queue_of
            .entry(key.into())
            .or_default()
            .insert(d.message.queue_id);
        if let Some(prev) = last_offset.insert(d.message.queue_id, d.message.queue_offset) {
            assert!(prev < d.message.queue_offset, "queue offsets out of order");
        }
    }
    for (key, seq) in per_key {
        assert_eq!(seq, (0..30).collect::<Vec<_>>(), "order of {key}");
        assert_eq!(queue_of[&key].len(), 1, "{key} spread over queues");
    }
    broker.shutdown().await.expect("shutdown");
}

/// Only tags the filter names are delivered.
pub async fn tag_filtering(h: &dyn Harness) {
    let broker = h.open().await;
    let topic = unique("tags");
    let consumer = broker
        .subscribe(
            Subscription::new(&topic, unique("g"))
                .tags("a || c")
                .expect("tags"),
            first(),
        )
        .await
        .expect("subscribe");
    let all = broker
        .subscribe(Subscription::new(&topic, unique("all")), first())
        .await
        .expect("subscribe");
    for (i, tag) in ["a", "b", "c", "", "a", "ab"].iter().enumerate() {
        let mut m = Message::new(&topic, format!("{i}"));
        if !tag.is_empty() {
            m = m.with_tag(*tag);
        }
        broker.send(m, SendOptions::queue(0)).await.expect("send");
    }
    let got: Vec<String> = drain(&*consumer, 3, WAIT, true)
        .await
        .iter()
        .map(body)
        .collect();
    assert_eq!(got, vec!["0", "2", "4"]);
    assert_quiet(&*consumer, QUIET).await;
    assert_eq!(drain(&*all, 6, WAIT, true).await.len(), 6);
    broker.shutdown().await.expect("shutdown");
}

/// Every group receives every message.
pub async fn every_group_gets_every_message(h: &dyn Harness) {
    let broker = h.open().await;
    let topic = unique("fanout");
    let g1 = broker
        .subscribe(Subscription::new(&topic, unique("g1")), first())
        .await
        .expect("subscribe");
    let g2 = broker
        .subscribe(Subscription::new(&topic, unique("g2")), first())
        .await
        .expect("subscribe");
    let sent = send_n(&*broker, &topic, 12, SendOptions::new()).await;
    for g in [&g1, &g2] {
        let mut got: Vec<String> = drain(&**g, 12, WAIT, true).await.iter().map(body).collect();
        got.sort();
        let mut want = sent.clone();
        want.sort();
        assert_eq!(got, want);
    }
    broker.shutdown().await.expect("shutdown");
}

/// Clustering shares the queues among members, each message goes to one member, and the
/// queues are shared again when a member leaves.
pub async fn clustering_balances_and_rebalances(h: &dyn Harness) {
    let broker = h.open().await;
    let topic = unique("cluster");
    broker.create_topic(&topic, 4).await.expect("topic");
    let group = unique("g");
    let a = broker
        .subscribe(Subscription::new(&topic, &group), first().instance("a"))
        .await
        .expect("a");
    assert_eq!(a.assignment().await.expect("assignment"), vec![0, 1, 2, 3]);
    let b = broker
        .subscribe(Subscription::new(&topic, &group), first().instance("b"))
        .await
        .expect("b");
    let (qa, qb) = eventually_split(&*a, &*b).await;
    assert_eq!(qa.len() + qb.len(), 4);
    assert!(qa.iter().all(|q| !qb.contains(q)));

    let sent = send_n(&*broker, &topic, 40, SendOptions::new()).await;
    let got_a = drain(&*a, 20, WAIT, true).await;
    let got_b = drain(&*b, 20, WAIT, true).await;
    assert!(got_a.iter().all(|d| qa.contains(&d.message.queue_id)));
    assert!(got_b.iter().all(|d| qb.contains(&d.message.queue_id)));
    let mut all: Vec<String> = got_a.iter().chain(&got_b).map(body).collect();
    all.sort();
    let mut want = sent;
    want.sort();
    assert_eq!(all, want, "each message exactly once across the group");

    b.close().await.expect("close");
    drop(b);
    let deadline = tokio::time::Instant::now() + WAIT;
    while a.assignment().await.expect("assignment").len() != 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no rebalance after leave"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let more = send_n(&*broker, &topic, 8, SendOptions::new()).await;
    let got: Vec<String> = drain(&*a, 8, WAIT, true).await.iter().map(body).collect();
    assert_eq!(got.len(), more.len());
    broker.shutdown().await.expect("shutdown");
}

async fn eventually_split(a: &dyn Consumer, b: &dyn Consumer) -> (Vec<u32>, Vec<u32>) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let qa = a.assignment().await.expect("assignment");
        let qb = b.assignment().await.expect("assignment");
        if qa.len() == 2 && qb.len() == 2 {
            return (qa, qb);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "queues not split: {qa:?} / {qb:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Messages a member held unacknowledged when it left go to the other members.
pub async fn dropped_member_messages_are_redelivered(h: &dyn Harness) {
    let broker = h.open().await;
    let topic = unique("dropped");
    broker.create_topic(&topic, 2).await.expect("topic");
    let group = unique("g");
    let a = broker
        .subscribe(Subscription::new(&topic, &group), first().instance("a"))
        .await
        .expect("a");
    let b = broker
        .subscribe(Subscription::new(&topic, &group), first().instance("b"))
        .await
        .expect("b");
    send_n(&*broker, &topic, 10, SendOptions::new()).await;
    let held = drain(&*b, 5, WAIT, false).await;
    assert_eq!(held.len(), 5);
    let got_a = drain(&*a, 5, WAIT, true).await;
    assert_eq!(got_a.len(), 5);
    drop(b);
    let again = drain(&*a, 5, WAIT, true).await;
    let mut held: Vec<String> = held.iter().map(body).collect();
    let mut again_bodies: Vec<String> = again.iter().map(body).collect();
    held.sort();
    again_bodies.sort();
    assert_eq!(again_bodies, held);
    // Leaving is not a failed attempt: the count is unchanged, as after a RocketMQ rebalance.
    assert!(again.iter().all(|d| d.message.reconsume_times == 0));
    broker.shutdown().await.expect("shutdown");
}

/// Broadcasting gives every member every message.
pub async fn broadcasting_reaches_every_member(h: &dyn Harness) {
    let broker = h.open().await;
    let topic = unique("bcast");
    let group = unique("g");
    let sub = Subscription::new(&topic, &group).model(MessageModel::Broadcasting);
    let a = broker
        .subscribe(sub.clone(), first().instance("a"))
        .await
        .expect("a");
    let b = broker
        .subscribe(sub, first().instance("b"))
        .await
        .expect("b");
    send_n(&*broker, &topic, 10, SendOptions::new()).await;
    assert_eq!(drain(&*a, 10, WAIT, true).await.len(), 10);
    assert_eq!(drain(&*b, 10, WAIT, true).await.len(), 10);
    assert_quiet(&*a, QUIET).await;
    broker.shutdown().await.expect("shutdown");
}

/// Orderly: one message of a queue out at a time; a handed-back message comes again before
/// any later one.
pub async fn orderly_one_at_a_time_per_queue(h: &dyn Harness) {
    let broker = h.open().await;
    let topic = unique("orderly");
    let consumer = broker
        .subscribe(
            Subscription::new(&topic, unique("g")).mode(ConsumeMode::Orderly),
            first(),
        )
        .await
        .expect("subscribe");
    for i in 0..4 {
        broker
            .send(
                Message::new(&topic, format!("{i}")),
                SendOptions::sharding_key("order-1"),
            )
            .await
            .expect("send");
    }
    let one = consumer.receive(10, WAIT).await.expect("receive");
    assert_eq!(one.len(), 1);
    assert_eq!(body(&one[0]), "0");
    assert_quiet(&*consumer, QUIET).await;
    let d = consumer
        .nack(
            &one[0].receipt,
            Failure::retry_after("again", Duration::ZERO),
        )
        .await
        .expect("nack");
    assert!(matches!(d, Disposition::Retry { retry: 1, .. }), "{d:?}");
    let again = consumer.receive(10, WAIT).await.expect("receive");
    assert_eq!(again.len(), 1);
    assert_eq!(body(&again[0]), "0");
    assert_eq!(again[0].message.reconsume_times, 1);
    consumer
        .ack(&[again[0].receipt.clone()])
        .await
        .expect("ack");
    let mut seen = Vec::new();
    for _ in 0..3 {
        let d = consumer.receive(10, WAIT).await.expect("receive");
        assert_eq!(d.len(), 1);
        seen.push(body(&d[0]));
        consumer.ack(&[d[0].receipt.clone()]).await.expect("ack");
    }
    assert_eq!(seen, vec!["1", "2", "3"]);
    broker.shutdown().await.expect("shutdown");
}

/// Concurrent mode: a queue has at most `max_in_flight_per_queue` unacknowledged deliveries.
pub async fn in_flight_limit_per_queue(h: &dyn Harness) {
    let broker = h.open().await;
    let topic = unique("inflight");
    let consumer = broker
        .subscribe(
            Subscription::new(&topic, unique("g")),
            first().max_in_flight_per_queue(3),
        )
        .await
        .expect("subscribe");
    send_n(&*broker, &topic, 10, SendOptions::queue(0)).await;
    let got = drain(&*consumer, 10, Duration::from_secs(1), false).await;
    assert_eq!(got.len(), 3, "the limit holds");
    consumer.ack(&[got[1].receipt.clone()]).await.expect("ack");
    let more = drain(&*consumer, 10, Duration::from_secs(1), false).await;
    assert_eq!(more.len(), 1, "one slot freed, one more delivery");
    assert_eq!(body(&more[0]), "m3");
    broker.shutdown().await.expect("shutdown");
}

/// A failed message comes again after the delay asked for, counting the attempt.
pub async fn nack_retries_after_delay(h: &dyn Harness) {
    let broker = h.open().await;
    let topic = unique("nack");
    let consumer = broker
        .subscribe(Subscription::new(&topic, unique("g")), first())
        .await
        .expect("subscribe");
    send_n(&*broker, &topic, 1, SendOptions::new()).await;
    let d = drain(&*consumer, 1, WAIT, false).await;
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].message.reconsume_times, 0);
    let disposition = consumer
        .nack(
            &d[0].receipt,
            Failure::retry_after("busy", Duration::from_millis(400)),
        )
        .await
        .expect("nack");
    assert_eq!(
        disposition,
        Disposition::Retry {
            retry: 1,
            after: Duration::from_millis(400)
        }
    );
    assert_quiet(&*consumer, Duration::from_millis(100)).await;
    let again = drain(&*consumer, 1, WAIT, true).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].message.id, d[0].message.id);
    assert_eq!(again[0].message.reconsume_times, 1);
    assert_quiet(&*consumer, QUIET).await;
    broker.shutdown().await.expect("shutdown");
}

/// A delivery not acknowledged within the consume timeout comes again.
pub async fn consume_timeout_redelivers(h: &dyn Harness) {
    let broker = h.open().await;
    let topic = unique("timeout");
    let consumer = broker
        .subscribe(
            Subscription::new(&topic, unique("g")),
            first().consume_timeout(Duration::from_millis(300)),
        )
        .await
        .expect("subscribe");
    send_n(&*broker, &topic, 1, SendOptions::new()).await;
    let d = drain(&*consumer, 1, WAIT, false).await;
    assert_eq!(d.len(), 1);
    let again = drain(&*consumer, 1, WAIT, true).await;
    assert_eq!(again.len(), 1, "not redelivered after the consume timeout");
    assert_eq!(again[0].message.id, d[0].message.id);
    assert!(again[0].message.reconsume_times >= 1);
    // Acknowledging the stale first delivery is harmless.
    consumer.ack(&[d[0].receipt.clone()]).await.expect("ack");
    assert_quiet(&*consumer, QUIET).await;
    broker.shutdown().await.expect("shutdown");
}

/// Committed progress never passes an unacknowledged message, even when later ones are
/// acknowledged, also across a restart of the broker.
pub async fn progress_never_skips_unacked(h: &dyn Harness) {
    let topic = unique("progress");
    let group = unique("g");
    let unacked;
    {
        let broker = h.open().await;
        broker.create_topic(&topic, 1).await.expect("topic");
        let consumer = broker
            .subscribe(Subscription::new(&topic, &group), first())
            .await
            .expect("subscribe");
        send_n(&*broker, &topic, 10, SendOptions::new()).await;
        let got = drain(&*consumer, 10, WAIT, false).await;
        assert_eq!(got.len(), 10);
        unacked = got[3].message.id;
        let receipts: Vec<_> = got
            .iter()
            .filter(|d| d.message.id != unacked)
            .map(|d| d.receipt.clone())
            .collect();
        consumer.ack(&receipts).await.expect("ack");
        consumer.close().await.expect("close");
        drop(consumer);
        broker.shutdown().await.expect("shutdown");
    }
    let broker = h.open().await;
    let consumer = broker
        .subscribe(Subscription::new(&topic, &group), first())
        .await
        .expect("subscribe");
    let again = drain(&*consumer, 1, WAIT, true).await;
    assert_eq!(again.len(), 1);
    assert_eq!(
        again[0].message.id, unacked,
        "the unacknowledged message comes first"
    );
    // At least once: later messages may come again, but the group must finish.
    let _ = drain(&*consumer, 100, QUIET, true).await;
    assert_quiet(&*consumer, QUIET).await;
    broker.shutdown().await.expect("shutdown");
}

/// Messages received but not acknowledged before a restart are delivered after it; acknowledged
/// ones are not.
pub async fn redelivery_after_restart(h: &dyn Harness) {
    let topic = unique("restart");
    let group = unique("g");
    let (acked, unacked) = {
        let broker = h.open().await;
        let consumer = broker
            .subscribe(Subscription::new(&topic, &group), first())
            .await
            .expect("subscribe");
        send_n(&*broker, &topic, 8, SendOptions::queue(0)).await;
        let got = drain(&*consumer, 8, WAIT, false).await;
        assert_eq!(got.len(), 8);
        let (ack, keep) = got.split_at(4);
        consumer
            .ack(&ack.iter().map(|d| d.receipt.clone()).collect::<Vec<_>>())
            .await
            .expect("ack");
        broker.flush().await.expect("flush");
        broker.shutdown().await.expect("shutdown");
        (
            ack.iter().map(body).collect::<Vec<_>>(),
            keep.iter().map(body).collect::<Vec<_>>(),
        )
    };
    let broker = h.open().await;
    let consumer = broker
        .subscribe(Subscription::new(&topic, &group), first())
        .await
        .expect("subscribe");
    let got: Vec<String> = drain(&*consumer, 4, WAIT, true)
        .await
        .iter()
        .map(body)
        .collect();
    assert_eq!(got, unacked);
    assert!(got.iter().all(|b| !acked.contains(b)));
    assert_quiet(&*consumer, QUIET).await;
    broker.shutdown().await.expect("shutdown");
}

/// A new group starts at the end by default, or at the beginning when asked.
pub async fn consume_from_last_and_first(h: &dyn Harness) {
    let broker = h.open().await;
    let topic = unique("from");
    send_n(&*broker, &topic, 3, SendOptions::new()).await;
    let last = broker
        .subscribe(
            Subscription::new(&topic, unique("last")),
            ConsumerOptions::new(),
        )
        .await
        .expect("subscribe");
    let from_first = broker
        .subscribe(Subscription::new(&topic, unique("first")), first())
        .await
        .expect("subscribe");
    broker
        .send(Message::new(&topic, "after"), SendOptions::new())
        .await
        .expect("send");
    let got: Vec<String> = drain(&*last, 1, WAIT, true)
        .await
        .iter()
        .map(body)
        .collect();
    assert_eq!(got, vec!["after"]);
    assert_quiet(&*last, QUIET).await;
    assert_eq!(drain(&*from_first, 4, WAIT, true).await.len(), 4);
    broker.shutdown().await.expect("shutdown");
}

/// Bad input gets a clear error.
pub async fn invalid_input_is_rejected(h: &dyn Harness) {
    let broker = h.open().await;
    let topic = unique("invalid");
    let err = broker
        .send(Message::new("bad topic", "x"), SendOptions::new())
        .await
        .expect_err("bad topic");
    assert!(matches!(err, BrokerError::Message(_)), "{err}");
    let err = broker
        .send(
            Message::new(&topic, vec![0u8; crate::DEFAULT_MAX_MESSAGE_SIZE + 1]),
            SendOptions::new(),
        )
        .await
        .expect_err("too large");
    assert!(err.to_string().contains("max-message-size"), "{err}");
    let err = broker
        .subscribe(
            Subscription::new(&topic, unique("g"))
                .model(MessageModel::Broadcasting)
                .mode(ConsumeMode::Orderly),
            ConsumerOptions::new(),
        )
        .await
        .err()
        .expect("orderly broadcasting");
    assert!(err.to_string().contains("broadcasting"), "{err}");
    let group = unique("g");
    let _a = broker
        .subscribe(
            Subscription::new(&topic, &group),
            ConsumerOptions::new().instance("a"),
        )
        .await
        .expect("a");
    let err = broker
        .subscribe(
            Subscription::new(&topic, &group).tags("x").expect("tags"),
            ConsumerOptions::new().instance("b"),
        )
        .await
        .err()
        .expect("different filter");
    assert!(err.to_string().contains("identically"), "{err}");
    let err = broker
        .subscribe(
            Subscription::new(&topic, &group),
            ConsumerOptions::new().instance("a"),
        )
        .await
        .err()
        .expect("duplicate instance");
    assert!(err.to_string().contains("already"), "{err}");
    broker.shutdown().await.expect("shutdown");
}

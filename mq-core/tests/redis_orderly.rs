//! Orderly consumption on Redis across members: a queue is owned by one member at a time
//! (a lease), and when a member leaves, the one taking its queues over delivers what it held
//! first, so every sharding key is still consumed in send order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use mq_core::redis::{RedisBroker, RedisConfig};
use mq_core::testkit::{body, unique};
use mq_core::{
    Broker, ConsumeFrom, ConsumeMode, ConsumerOptions, Message, SendOptions, Subscription,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orderly_queues_move_between_members_in_order() {
    let Some(url) = support::redis_url() else {
        return;
    };
    let ns = support::Namespace::new(&url);
    let broker = RedisBroker::connect(
        RedisConfig::new(&url)
            .prefix(&ns.prefix)
            .heartbeat_interval(Duration::from_millis(200)),
    )
    .await
    .unwrap();
    let topic = unique("orderly");
    broker.create_topic(&topic, 4).await.unwrap();
    let sub = Subscription::new(&topic, unique("g")).mode(ConsumeMode::Orderly);
    let opts = |name: &str| {
        ConsumerOptions::new()
            .instance(name)
            .consume_from(ConsumeFrom::First)
    };
    let a = broker.subscribe(sub.clone(), opts("a")).await.unwrap();
    let b = broker.subscribe(sub, opts("b")).await.unwrap();
    const KEYS: usize = 8;
    const PER_KEY: usize = 30;
    for i in 0..PER_KEY {
        for k in 0..KEYS {
            broker
                .send(
                    Message::new(&topic, format!("k{k}:{i}")),
                    SendOptions::sharding_key(format!("k{k}")),
                )
                .await
                .unwrap();
        }
    }

    // Per key, the order in which messages were first seen.
    let mut seen: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    fn record(seen: &mut BTreeMap<String, Vec<usize>>, d: &mq_core::Delivery) {
        let text = body(d);
        let (key, n) = text.split_once(':').unwrap();
        let n: usize = n.parse().unwrap();
        let list = seen.entry(key.to_owned()).or_default();
        if !list.contains(&n) {
            list.push(n);
        }
    }
    let total = KEYS * PER_KEY;
    let mut b_open = Some(b);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut delivered = 0;
    while seen.values().map(Vec::len).sum::<usize>() < total {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {total} delivered",
            seen.values().map(Vec::len).sum::<usize>()
        );
        for d in a.receive(16, Duration::from_millis(50)).await.unwrap() {
            record(&mut seen, &d);
            a.ack(&[d.receipt]).await.unwrap();
            delivered += 1;
        }
        if let Some(b) = &b_open {
            let got = b.receive(16, Duration::from_millis(50)).await.unwrap();
            if delivered > total / 3 && !got.is_empty() {
                // b leaves holding a delivery it never acknowledges.
                b.close().await.unwrap();
                b_open = None;
                continue;
            }
            for d in got {
                record(&mut seen, &d);
                b.ack(&[d.receipt]).await.unwrap();
                delivered += 1;
            }
        }
    }
    assert!(b_open.is_none(), "b never left");
    for (key, order) in &seen {
        assert_eq!(
            order,
            &(0..PER_KEY).collect::<Vec<_>>(),
            "{key} out of order"
        );
    }
    assert_eq!(a.assignment().await.unwrap(), vec![0, 1, 2, 3]);
    broker.shutdown().await.unwrap();
}

/// A member that joins while another holds an orderly message does not overtake it: the
/// holder keeps the queue until the message is settled (here after a retry in place).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_member_does_not_overtake_a_held_message() {
    let Some(url) = support::redis_url() else {
        return;
    };
    let ns = support::Namespace::new(&url);
    let broker = RedisBroker::connect(
        RedisConfig::new(&url)
            .prefix(&ns.prefix)
            .heartbeat_interval(Duration::from_millis(100)),
    )
    .await
    .unwrap();
    let topic = unique("handover");
    broker.create_topic(&topic, 2).await.unwrap();
    let sub = Subscription::new(&topic, unique("g")).mode(ConsumeMode::Orderly);
    let opts = |name: &str| {
        ConsumerOptions::new()
            .instance(name)
            .consume_from(ConsumeFrom::First)
            .suspend_current_queue_time(Duration::from_millis(300))
    };
    let a = broker.subscribe(sub.clone(), opts("a")).await.unwrap();
    // Queue 1 goes to "b" once it joins (averagely: a gets 0, b gets 1).
    for m in ["m0", "m1", "m2"] {
        broker
            .send(Message::new(&topic, m), SendOptions::queue(1))
            .await
            .unwrap();
    }
    let held = a.receive(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(held.iter().map(body).collect::<Vec<_>>(), vec!["m0"]);
    let b = broker.subscribe(sub, opts("b")).await.unwrap();
    // a's next refresh sees b; b must not deliver m1 while a holds m0.
    let early = b.receive(10, Duration::from_millis(600)).await.unwrap();
    assert!(
        early.is_empty(),
        "b overtook m0: {:?}",
        early.iter().map(body).collect::<Vec<_>>()
    );
    a.nack(&held[0].receipt, mq_core::Failure::new("not yet"))
        .await
        .unwrap();
    let again = a.receive(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(again.iter().map(body).collect::<Vec<_>>(), vec!["m0"]);
    assert!(b
        .receive(10, Duration::from_millis(200))
        .await
        .unwrap()
        .is_empty());
    a.ack(&[again[0].receipt.clone()]).await.unwrap();
    // Now the queue moves to b, which goes on in order.
    let mut rest = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while rest.len() < 2 && tokio::time::Instant::now() < deadline {
        for d in b.receive(10, Duration::from_millis(200)).await.unwrap() {
            rest.push(body(&d));
            b.ack(&[d.receipt]).await.unwrap();
        }
        assert!(a
            .receive(10, Duration::from_millis(10))
            .await
            .unwrap()
            .is_empty());
    }
    assert_eq!(rest, vec!["m1", "m2"]);
    broker.shutdown().await.unwrap();
}

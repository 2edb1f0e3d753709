//! Conformance cases for operations: topic and group figures, owners, and offset resets on
//! live groups and across a restart.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{assert_quiet, body, drain, first, send_n, unique, Harness, QUIET, WAIT};
use crate::broker::{ConsumerOptions, SendOptions};
use crate::message::Message;
use crate::stats::ResetTo;
use crate::subscription::{ConsumeFrom, MessageModel, Subscription};
use crate::system_topics::{retry_topic, topic_kind, TopicKind};
use crate::BrokerError;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn bodies(got: &[crate::broker::Delivery]) -> BTreeSet<String> {
    got.iter().map(body).collect()
}

/// Topics are listed with their retry topics told apart; a topic's queues show their offsets,
/// counts and last store time.
pub async fn topic_stats_after_sends(h: &dyn Harness) {
    let broker = h.open().await;
    let topic = unique("tstats");
    let group = unique("g");
    broker.create_topic(&topic, 2).await.expect("create");
    let before = now_ms();
    send_n(&*broker, &topic, 3, SendOptions::queue(0)).await;
    send_n(&*broker, &topic, 2, SendOptions::queue(1)).await;
    let _consumer = broker
        .subscribe(Subscription::new(&topic, &group), first())
        .await
        .expect("subscribe");

    let topics = broker.topics().await.expect("topics");
    assert!(topics.contains(&topic), "{topics:?}");
    let retry = retry_topic(&group, &topic);
    assert!(
        topics.contains(&retry),
        "retry topics are listed: {topics:?}"
    );
    assert_eq!(topic_kind(&topic), TopicKind::User);
    assert_eq!(topic_kind(&retry), TopicKind::Retry);
    assert!(
        topics.iter().all(|t| topic_kind(t) != TopicKind::Internal),
        "{topics:?}"
    );
    let mut sorted = topics.clone();
    sorted.sort();
    assert_eq!(topics, sorted);

    let stats = broker.topic_stats(&topic).await.expect("stats");
    assert_eq!(stats.topic, topic);
    assert_eq!(stats.queues.len(), 2);
    let q: Vec<(u32, u64, u64, u64)> = stats
        .queues
        .iter()
        .map(|q| (q.queue_id, q.min_offset, q.max_offset, q.messages))
        .collect();
    assert_eq!(q, vec![(0, 0, 3, 3), (1, 0, 2, 2)]);
    assert_eq!(stats.messages(), 5);
    for q in &stats.queues {
        let last = q
            .last_store_ms
            .expect("a queue with messages has a last store time");
        assert!(last + 1000 >= before && last <= now_ms() + 1000, "{last}");
    }
    let empty = broker.topic_stats(&retry).await.expect("retry stats");
    assert_eq!(empty.queues[0].messages, 0);
    assert_eq!(empty.queues[0].last_store_ms, None);

    let missing = broker.topic_stats(&unique("nope")).await;
    assert!(
        matches!(missing, Err(BrokerError::TopicNotFound(_))),
        "{missing:?}"
    );
    broker.shutdown().await.expect("shutdown");
}

/// A group's progress per queue follows its acknowledgements, and its lag agrees with
/// `Broker::lag`.
pub async fn group_stats_after_acks(h: &dyn Harness) {
    let broker = h.open().await;
    let topic = unique("gstats");
    let group = unique("g");
    broker.create_topic(&topic, 2).await.expect("create");
    let consumer = broker
        .subscribe(Subscription::new(&topic, &group), first().instance("only"))
        .await
        .expect("subscribe");
    send_n(&*broker, &topic, 5, SendOptions::queue(0)).await;
    send_n(&*broker, &topic, 5, SendOptions::queue(1)).await;
    let got = drain(&*consumer, 10, WAIT, false).await;
    assert_eq!(got.len(), 10);
    let q0: Vec<_> = got
        .iter()
        .filter(|d| d.message.queue_id == 0)
        .map(|d| d.receipt.clone())
        .collect();
    consumer.ack(&q0).await.expect("ack");

    let groups = broker.groups().await.expect("groups");
    assert!(groups.contains(&group), "{groups:?}");
    let stats = broker.group_stats(&group).await.expect("group stats");
    assert_eq!(stats.group, group);
    assert_eq!(stats.model, Some(MessageModel::Clustering));
    assert_eq!(stats.members, vec!["only".to_owned()]);
    let rows: Vec<_> = stats
        .queues
        .iter()
        .filter(|r| r.topic == topic)
        .map(|r| {
            (
                r.queue_id,
                r.committed,
                r.max_offset,
                r.lag,
                r.owner.clone(),
            )
        })
        .collect();
    let only = Some("only".to_owned());
    assert_eq!(
        rows,
        vec![(0, 5, 5, 0, only.clone()), (1, 0, 5, 5, only.clone())]
    );
    assert!(
        stats
            .queues
            .iter()
            .any(|r| r.topic == retry_topic(&group, &topic)),
        "the retry topic has a row: {:?}",
        stats.queues
    );
    let lag = broker.lag(&group, &topic).await.expect("lag");
    assert_eq!(lag, Some(stats.lag(&topic)));
    assert_eq!(stats.lag(&topic), 5);

    let missing = broker.group_stats(&unique("nobody")).await;
    assert!(
        matches!(missing, Err(BrokerError::GroupNotFound { .. })),
        "{missing:?}"
    );
    broker.shutdown().await.expect("shutdown");
}

/// With two members, each queue's owner is the member it is assigned to.
pub async fn group_owners_follow_assignment(h: &dyn Harness) {
    let broker = h.open().await;
    let topic = unique("owners");
    let group = unique("g");
    broker.create_topic(&topic, 4).await.expect("create");
    let sub = Subscription::new(&topic, &group);
    let a = broker
        .subscribe(sub.clone(), first().instance("a"))
        .await
        .expect("a");
    let b = broker
        .subscribe(sub, first().instance("b"))
        .await
        .expect("b");
    let (qa, qb) = (
        a.assignment().await.expect("a"),
        b.assignment().await.expect("b"),
    );
    assert_eq!(qa.len() + qb.len(), 4, "{qa:?} {qb:?}");
    let stats = broker.group_stats(&group).await.expect("stats");
    assert_eq!(stats.members, vec!["a".to_owned(), "b".to_owned()]);
    for row in stats.queues.iter().filter(|r| r.topic == topic) {
        let expected = if qa.contains(&row.queue_id) {
            "a"
        } else if qb.contains(&row.queue_id) {
            "b"
        } else {
            panic!("queue {} is nobody's", row.queue_id)
        };
        assert_eq!(row.owner.as_deref(), Some(expected), "{row:?}");
    }
    broker.shutdown().await.expect("shutdown");
}

/// A reset to the first offset delivers everything again to the live member.
pub async fn reset_to_first_redelivers_everything(h: &dyn Harness) {
    let broker = h.open().await;
    let topic = unique("rfirst");
    let group = unique("g");
    broker.create_topic(&topic, 2).await.expect("create");
    let consumer = broker
        .subscribe(Subscription::new(&topic, &group), first())
        .await
        .expect("subscribe");
    let sent: BTreeSet<String> = send_n(&*broker, &topic, 6, SendOptions::new())
        .await
        .into_iter()
        .collect();
    assert_eq!(bodies(&drain(&*consumer, 6, WAIT, true).await), sent);
    assert_quiet(&*consumer, QUIET).await;

    let offsets = broker
        .reset_offset(&group, &topic, ResetTo::First)
        .await
        .expect("reset");
    assert_eq!(
        offsets
            .iter()
            .map(|o| (o.queue_id, o.offset))
            .collect::<Vec<_>>(),
        vec![(0, 0), (1, 0)]
    );
    let again = drain(&*consumer, 6, WAIT + WAIT, true).await;
    assert_eq!(bodies(&again), sent);
    assert_eq!(again.len(), 6, "each message once more");

    let missing = broker
        .reset_offset(&unique("nobody"), &topic, ResetTo::First)
        .await;
    assert!(
        matches!(missing, Err(BrokerError::GroupNotFound { .. })),
        "{missing:?}"
    );
    let missing = broker
        .reset_offset(&group, &unique("nope"), ResetTo::First)
        .await;
    assert!(
        matches!(missing, Err(BrokerError::TopicNotFound(_))),
        "{missing:?}"
    );
    broker.shutdown().await.expect("shutdown");
}

/// A reset to the last offset skips the backlog: only later messages come.
pub async fn reset_to_last_skips_backlog(h: &dyn Harness) {
    let broker = h.open().await;
    let topic = unique("rlast");
    let group = unique("g");
    broker.create_topic(&topic, 2).await.expect("create");
    let consumer = broker
        .subscribe(Subscription::new(&topic, &group), first())
        .await
        .expect("subscribe");
    send_n(&*broker, &topic, 6, SendOptions::new()).await;
    let offsets = broker
        .reset_offset(&group, &topic, ResetTo::Last)
        .await
        .expect("reset");
    assert_eq!(
        offsets
            .iter()
            .map(|o| (o.queue_id, o.offset))
            .collect::<Vec<_>>(),
        vec![(0, 3), (1, 3)]
    );
    let stats = broker.group_stats(&group).await.expect("stats");
    assert_eq!(stats.lag(&topic), 0, "{:?}", stats.queues);
    assert_quiet(&*consumer, QUIET).await;
    for b in ["later-1", "later-2"] {
        broker
            .send(Message::new(&topic, b), SendOptions::new())
            .await
            .expect("send");
    }
    let got = drain(&*consumer, 2, WAIT, true).await;
    assert_eq!(
        bodies(&got),
        ["later-1", "later-2"].map(String::from).into()
    );
    assert_quiet(&*consumer, QUIET).await;
    broker.shutdown().await.expect("shutdown");
}

/// A reset to a time delivers again exactly the messages stored at or after it.
pub async fn reset_to_timestamp_redelivers_from_it(h: &dyn Harness) {
    let broker = h.open().await;
    let topic = unique("rtime");
    let group = unique("g");
    broker.create_topic(&topic, 2).await.expect("create");
    let consumer = broker
        .subscribe(Subscription::new(&topic, &group), first())
        .await
        .expect("subscribe");
    for i in 0..4 {
        broker
            .send(Message::new(&topic, format!("old-{i}")), SendOptions::new())
            .await
            .expect("send");
    }
    // Well apart from both batches, so that store times are on either side.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let at = now_ms();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut new = BTreeSet::new();
    for i in 0..5 {
        let b = format!("new-{i}");
        broker
            .send(Message::new(&topic, b.clone()), SendOptions::new())
            .await
            .expect("send");
        new.insert(b);
    }
    assert_eq!(drain(&*consumer, 9, WAIT, true).await.len(), 9);
    let offsets = broker
        .reset_offset(&group, &topic, ResetTo::Timestamp(at))
        .await
        .expect("reset");
    assert_eq!(
        offsets.iter().map(|o| o.offset).sum::<u64>(),
        4,
        "{offsets:?}"
    );
    let again = drain(&*consumer, 5, WAIT + WAIT, true).await;
    assert_eq!(bodies(&again), new);
    assert_quiet(&*consumer, QUIET).await;
    broker.shutdown().await.expect("shutdown");
}

/// A reset is persisted: after reopening the broker the group resumes at the reset position.
pub async fn reset_survives_restart(h: &dyn Harness) {
    let topic = unique("rrestart");
    let group = unique("g");
    let sent: BTreeSet<String> = {
        let broker = h.open().await;
        broker.create_topic(&topic, 2).await.expect("create");
        let consumer = broker
            .subscribe(Subscription::new(&topic, &group), first())
            .await
            .expect("subscribe");
        let sent = send_n(&*broker, &topic, 4, SendOptions::new()).await;
        assert_eq!(drain(&*consumer, 4, WAIT, true).await.len(), 4);
        consumer.close().await.expect("close");
        broker
            .reset_offset(&group, &topic, ResetTo::First)
            .await
            .expect("reset");
        broker.shutdown().await.expect("shutdown");
        sent.into_iter().collect()
    };
    let broker = h.open().await;
    let stats = broker
        .group_stats(&group)
        .await
        .expect("stats after reopen");
    let committed: Vec<u64> = stats
        .queues
        .iter()
        .filter(|r| r.topic == topic)
        .map(|r| r.committed)
        .collect();
    assert_eq!(committed, vec![0, 0], "{:?}", stats.queues);
    assert_eq!(stats.lag(&topic), 4);
    // Stored progress wins over where a new group would start.
    let consumer = broker
        .subscribe(
            Subscription::new(&topic, &group),
            ConsumerOptions::new().consume_from(ConsumeFrom::Last),
        )
        .await
        .expect("subscribe");
    assert_eq!(bodies(&drain(&*consumer, 4, WAIT, true).await), sent);
    broker.shutdown().await.expect("shutdown");
}

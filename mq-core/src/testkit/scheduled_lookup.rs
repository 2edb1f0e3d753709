//! Cases for finding messages that wait in the schedule ([`Broker::scheduled_by_id`],
//! [`Broker::scheduled_by_key`]): delayed messages before they are due, retries waiting for
//! their back-off.

use std::time::Duration;

use super::{drain, first, unique, Harness, WAIT};
use crate::broker::{Broker, Failure, SendOptions};
use crate::delay::Delay;
use crate::message::{now_millis, Message, MessageId, ScheduledMessage};
use crate::subscription::Subscription;
use crate::system_topics::retry_topic;
use crate::trace::{self, TraceKind};

/// How far the broker's clock may be from the wall clock the cases read.
const SKEW_MS: u64 = 50;

fn bodies(found: &[ScheduledMessage]) -> Vec<String> {
    found
        .iter()
        .map(|s| String::from_utf8_lossy(&s.message.body).into_owned())
        .collect()
}

async fn waiting(broker: &dyn Broker, key: &str, topic: Option<&str>, limit: usize) -> Vec<String> {
    bodies(
        &broker
            .scheduled_by_key(key, topic, limit)
            .await
            .expect("scheduled by key"),
    )
}

/// Polls until message `id` no longer waits: the backend moves a due copy a moment after its
/// due time, and may show it in both answers for that moment.
async fn until_not_waiting(broker: &dyn Broker, id: MessageId) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = broker.scheduled_by_id(id).await.expect("scheduled by id");
        if left.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} still waits after it was delivered: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A delayed message is found in the schedule, under the topic and queue it will enter and
/// with its due time, until it is due; then among the stored messages. Its trace says so.
pub async fn scheduled_lookup_finds_delays_until_they_are_due(h: &dyn Harness) {
    let broker = h.open().await;
    let topic = unique("waiting");
    let key = unique("k");
    broker.create_topic(&topic, 2).await.expect("create");
    let consumer = broker
        .subscribe(Subscription::new(&topic, unique("g")), first())
        .await
        .expect("subscribe");
    let before = now_millis();
    let soon = broker
        .send(
            Message::new(&topic, "soon")
                .with_key(&key)
                .with_key("second-key")
                .with_tag("t")
                .with_property("p", "v"),
            SendOptions::queue(1).delayed(Delay::After(Duration::from_millis(1500))),
        )
        .await
        .expect("send soon");
    let later = broker
        .send(
            Message::new(&topic, "later").with_key(&key),
            SendOptions::queue(0).delayed(Delay::After(Duration::from_secs(3600))),
        )
        .await
        .expect("send later");
    broker
        .send(
            Message::new(&topic, "now").with_key(&key),
            SendOptions::new(),
        )
        .await
        .expect("send now");
    let after = now_millis();

    let stored: Vec<String> = broker
        .messages_by_key(&key, None, 10)
        .await
        .expect("by key")
        .iter()
        .map(|v| String::from_utf8_lossy(&v.body).into_owned())
        .collect();
    assert_eq!(stored, vec!["now"], "a waiting message is not stored yet");
    let found = broker
        .scheduled_by_key(&key, None, 10)
        .await
        .expect("scheduled by key");
    assert_eq!(bodies(&found), vec!["soon", "later"], "soonest due first");
    let s = &found[0];
    assert_eq!(s.message.id, soon.message_id);
    assert_eq!(s.message.topic, topic);
    assert_eq!(s.message.queue_id, 1);
    assert_eq!(s.message.queue_offset, 0);
    assert_eq!(s.message.tag.as_deref(), Some("t"));
    assert_eq!(s.message.keys, vec![key.clone(), "second-key".to_owned()]);
    assert_eq!(s.message.properties.len(), 1, "{:?}", s.message.properties);
    assert_eq!(s.message.properties.get("p").map(String::as_str), Some("v"));
    assert_eq!(s.message.reconsume_times, 0);
    // The broker's clock may read a few ms off the wall clock read here.
    let (before, after) = (before - SKEW_MS, after + SKEW_MS);
    assert!(
        (before + 1500..=after + 1500).contains(&s.due_ms),
        "due {} for a send between {before} and {after}",
        s.due_ms
    );
    assert!(
        (before..=after).contains(&s.message.store_timestamp),
        "scheduled at {}",
        s.message.store_timestamp
    );
    assert_eq!(found[1].message.queue_id, 0);

    assert_eq!(waiting(&*broker, &key, None, 1).await, vec!["soon"]);
    assert_eq!(waiting(&*broker, &key, None, 0).await, Vec::<String>::new());
    assert_eq!(waiting(&*broker, &key, Some(&topic), 10).await.len(), 2);
    assert!(waiting(&*broker, &key, Some(&unique("other")), 10)
        .await
        .is_empty());
    assert_eq!(
        waiting(&*broker, "second-key", Some(&topic), 10).await,
        vec!["soon"]
    );
    assert!(waiting(&*broker, &unique("absent"), None, 10)
        .await
        .is_empty());
    let by_id = broker
        .scheduled_by_id(later.message_id)
        .await
        .expect("scheduled by id");
    assert_eq!(bodies(&by_id), vec!["later"]);
    assert!(broker
        .messages_by_id(later.message_id)
        .await
        .expect("by id")
        .is_empty());
    assert!(broker
        .scheduled_by_id(MessageId::new())
        .await
        .expect("unknown id")
        .is_empty());

    let t = trace::trace(&*broker, later.message_id)
        .await
        .expect("trace");
    assert_eq!(t.events.len(), 1, "{t:?}");
    match &t.events[0].kind {
        TraceKind::Scheduled {
            topic: to,
            queue_id,
            reconsume_times,
            due_ms,
            ..
        } => {
            assert_eq!((to, *queue_id, *reconsume_times), (&topic, 0, 0));
            assert_eq!(*due_ms, by_id[0].due_ms);
        }
        other => panic!("expected a scheduled event, got {other:?}"),
    }

    // "now" at once, then "soon" when due; it then is stored and waits no longer.
    let got = drain(&*consumer, 2, Duration::from_secs(10), true).await;
    assert_eq!(got.len(), 2, "both arrived");
    until_not_waiting(&*broker, soon.message_id).await;
    let stored = broker.messages_by_id(soon.message_id).await.expect("by id");
    assert_eq!(stored.len(), 1);
    assert_eq!(
        (stored[0].topic.as_str(), stored[0].queue_id),
        (topic.as_str(), 1)
    );
    assert_eq!(waiting(&*broker, &key, None, 10).await, vec!["later"]);
    broker.shutdown().await.expect("shutdown");
}

/// A retry waiting for its back-off is found under the group's retry topic, with the failed
/// deliveries before it; the trace shows it after the delivery that scheduled it.
pub async fn scheduled_lookup_finds_waiting_retries(h: &dyn Harness) {
    let broker = h.open().await;
    let topic = unique("retry-wait");
    let group = unique("g");
    let key = unique("k");
    let consumer = broker
        .subscribe(Subscription::new(&topic, &group), first())
        .await
        .expect("subscribe");
    let sent = broker
        .send(
            Message::new(&topic, "fragile").with_key(&key),
            SendOptions::new(),
        )
        .await
        .expect("send");
    let d = drain(&*consumer, 1, WAIT, false).await;
    assert_eq!(d.len(), 1);
    let failed_at = now_millis();
    consumer
        .nack(
            &d[0].receipt,
            Failure::retry_after("later", Duration::from_secs(3600)),
        )
        .await
        .expect("nack");
    let retry = retry_topic(&group, &topic);
    // A nack may return before its retry copy is written (it is written before anything
    // appended after the nack).
    let deadline = tokio::time::Instant::now() + WAIT;
    let found = loop {
        let found = broker
            .scheduled_by_id(sent.message_id)
            .await
            .expect("scheduled by id");
        if !found.is_empty() || tokio::time::Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].message.topic, retry);
    assert_eq!(found[0].message.reconsume_times, 1);
    assert_eq!(&found[0].message.body[..], b"fragile");
    assert!(
        found[0].due_ms + SKEW_MS >= failed_at + 3_600_000,
        "{found:?}"
    );
    assert_eq!(
        waiting(&*broker, &key, Some(&retry), 10).await,
        vec!["fragile"]
    );
    assert_eq!(waiting(&*broker, &key, None, 10).await, vec!["fragile"]);
    assert!(waiting(&*broker, &key, Some(&topic), 10).await.is_empty());
    // Only the original is stored.
    assert_eq!(
        broker
            .messages_by_id(sent.message_id)
            .await
            .expect("by id")
            .len(),
        1
    );
    broker.shutdown().await.expect("shutdown");
}

/// After a restart a waiting message still waits, and one that fired before it does not.
pub async fn scheduled_lookup_after_restart(h: &dyn Harness) {
    let topic = unique("waiting-restart");
    let group = unique("g");
    let key = unique("k");
    let (short, long) = {
        let broker = h.open().await;
        let consumer = broker
            .subscribe(Subscription::new(&topic, &group), first())
            .await
            .expect("subscribe");
        let mut ids = Vec::new();
        for (b, delay) in [
            ("long", Duration::from_secs(3600)),
            ("short", Duration::from_millis(100)),
        ] {
            ids.push(
                broker
                    .send(
                        Message::new(&topic, b).with_key(&key),
                        SendOptions::queue(0).delayed(Delay::After(delay)),
                    )
                    .await
                    .expect("send")
                    .message_id,
            );
        }
        let got = drain(&*consumer, 1, Duration::from_secs(5), true).await;
        assert_eq!(got.len(), 1, "the short delay fired");
        until_not_waiting(&*broker, ids[1]).await;
        drop(consumer);
        broker.shutdown().await.expect("shutdown");
        (ids[1], ids[0])
    };
    let broker = h.open().await;
    assert_eq!(waiting(&*broker, &key, None, 10).await, vec!["long"]);
    assert!(broker
        .scheduled_by_id(short)
        .await
        .expect("scheduled by id")
        .is_empty());
    assert_eq!(
        broker
            .scheduled_by_id(long)
            .await
            .expect("scheduled by id")
            .len(),
        1
    );
    broker.shutdown().await.expect("shutdown");
}

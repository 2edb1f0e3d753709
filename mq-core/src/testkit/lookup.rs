//! Cases for message lookup by id and by key ([`Broker::messages_by_id`],
//! [`Broker::messages_by_key`]).

use std::time::Duration;

use super::{drain, first, unique, Harness, WAIT};
use crate::broker::{Broker, Failure, SendOptions};
use crate::message::{Message, MessageId, MessageView};
use crate::subscription::Subscription;
use crate::system_topics::{dlq_topic, retry_topic};

fn bodies(views: &[MessageView]) -> Vec<String> {
    views
        .iter()
        .map(|v| String::from_utf8_lossy(&v.body).into_owned())
        .collect()
}

async fn by_key(broker: &dyn Broker, key: &str, topic: Option<&str>, limit: usize) -> Vec<String> {
    bodies(
        &broker
            .messages_by_key(key, topic, limit)
            .await
            .expect("messages by key"),
    )
}

/// A sent message is found by its id, once, with what was sent and where it was stored.
pub async fn lookup_by_id_after_send(h: &dyn Harness) {
    let broker = h.open().await;
    let topic = unique("byid");
    broker.create_topic(&topic, 2).await.expect("create");
    let mut sent = Vec::new();
    for i in 0..5 {
        let m = Message::new(&topic, format!("m{i}"))
            .with_tag("t")
            .with_key(format!("k{i}"))
            .with_property("p", "v");
        sent.push(broker.send(m, SendOptions::new()).await.expect("send"));
    }
    for (i, s) in sent.iter().enumerate() {
        let found = broker.messages_by_id(s.message_id).await.expect("by id");
        assert_eq!(found.len(), 1, "{found:?}");
        let v = &found[0];
        assert_eq!(v.id, s.message_id);
        assert_eq!(v.topic, topic);
        assert_eq!((v.queue_id, v.queue_offset), (s.queue_id, s.queue_offset));
        assert_eq!(&v.body[..], format!("m{i}").as_bytes());
        assert_eq!(v.tag.as_deref(), Some("t"));
        assert_eq!(v.keys, vec![format!("k{i}")]);
        assert_eq!(v.properties.get("p").map(String::as_str), Some("v"));
        assert_eq!(v.reconsume_times, 0);
    }
    assert!(broker
        .messages_by_id(MessageId::new())
        .await
        .expect("unknown id")
        .is_empty());
    broker.shutdown().await.expect("shutdown");
}

/// After a retry and then dead-lettering, every copy is found by the id, oldest first: the
/// original, the retry copy (higher reconsume count), the dead letter.
pub async fn lookup_by_id_finds_retry_and_dead_letter_copies(h: &dyn Harness) {
    let broker = h.open().await;
    let topic = unique("copies");
    let group = unique("g");
    let consumer = broker
        .subscribe(
            Subscription::new(&topic, &group),
            first().max_reconsume_times(1),
        )
        .await
        .expect("subscribe");
    let sent = broker
        .send(
            Message::new(&topic, "fragile").with_key("fragile-key"),
            SendOptions::new(),
        )
        .await
        .expect("send");
    let d = drain(&*consumer, 1, WAIT, false).await;
    assert_eq!(d.len(), 1);
    consumer
        .nack(
            &d[0].receipt,
            Failure::retry_after("first", Duration::from_millis(100)),
        )
        .await
        .expect("nack");
    let again = drain(&*consumer, 1, WAIT, false).await;
    assert_eq!(again.len(), 1, "the retry came");
    let found = broker.messages_by_id(sent.message_id).await.expect("by id");
    let topics: Vec<&str> = found.iter().map(|v| v.topic.as_str()).collect();
    assert_eq!(topics, vec![topic.clone(), retry_topic(&group, &topic)]);
    assert_eq!(found[0].reconsume_times, 0);
    assert_eq!(found[1].reconsume_times, 1);
    consumer
        .nack(&again[0].receipt, Failure::new("second"))
        .await
        .expect("nack to the dead-letter queue");
    let found = broker.messages_by_id(sent.message_id).await.expect("by id");
    // The retry copy and the dead letter may share a millisecond: compared as a set, with
    // the order checked on the store times below.
    let mut topics: Vec<&str> = found.iter().map(|v| v.topic.as_str()).collect();
    topics.sort_unstable();
    let mut expected = vec![
        topic.clone(),
        retry_topic(&group, &topic),
        dlq_topic(&group),
    ];
    expected.sort_unstable();
    assert_eq!(topics, expected);
    assert_eq!(found[0].topic, topic);
    assert!(found
        .iter()
        .all(|v| v.id == sent.message_id && &v.body[..] == b"fragile"));
    assert!(found
        .iter()
        .all(|v| v.keys == vec!["fragile-key".to_owned()]));
    assert!(found
        .windows(2)
        .all(|w| w[0].store_timestamp <= w[1].store_timestamp));
    // A system topic is searched when named: the dead-letter topic holds one copy.
    assert_eq!(
        by_key(&*broker, "fragile-key", Some(&dlq_topic(&group)), 10).await,
        vec!["fragile"]
    );
    assert_eq!(by_key(&*broker, "fragile-key", None, 10).await.len(), 3);
    // The dead letter gone, its copy is no longer found.
    let dead = broker.dead_letters(&group, 0, 10).await.expect("list");
    assert_eq!(dead.len(), 1);
    assert!(broker
        .delete_dead_letter(&group, dead[0].seq)
        .await
        .expect("delete"));
    let found = broker.messages_by_id(sent.message_id).await.expect("by id");
    assert_eq!(found.len(), 2, "{found:?}");
    broker.shutdown().await.expect("shutdown");
}

/// A message with several keys is found by each; keys are compared exactly; oldest first.
pub async fn lookup_by_key_with_several_keys(h: &dyn Harness) {
    let broker = h.open().await;
    let topic = unique("keys");
    // One queue: sends in one millisecond keep their order (store time, then offset).
    broker.create_topic(&topic, 1).await.expect("create");
    let (a, b) = (unique("order"), unique("customer"));
    for (body, keys) in [
        ("one", vec![a.clone(), b.clone()]),
        ("two", vec![b.clone()]),
        ("three", vec![a.clone()]),
        ("four", vec![format!("{a}x")]),
    ] {
        let mut m = Message::new(&topic, body);
        for k in keys {
            m = m.with_key(k);
        }
        broker.send(m, SendOptions::new()).await.expect("send");
    }
    assert_eq!(by_key(&*broker, &a, None, 10).await, vec!["one", "three"]);
    assert_eq!(by_key(&*broker, &b, None, 10).await, vec!["one", "two"]);
    assert_eq!(
        by_key(&*broker, &format!("{a}x"), None, 10).await,
        vec!["four"]
    );
    assert!(by_key(&*broker, &unique("nobody"), None, 10)
        .await
        .is_empty());
    assert!(by_key(&*broker, &a, None, 0).await.is_empty());
    broker.shutdown().await.expect("shutdown");
}

/// `topic` restricts a key lookup to one topic; `limit` keeps the oldest that many.
pub async fn lookup_by_key_topic_filter_and_limit(h: &dyn Harness) {
    let broker = h.open().await;
    let (t1, t2) = (unique("left"), unique("right"));
    for t in [&t1, &t2] {
        broker.create_topic(t, 1).await.expect("create");
    }
    let key = unique("shared");
    for i in 0..6 {
        let topic = if i % 2 == 0 { &t1 } else { &t2 };
        broker
            .send(
                Message::new(topic, format!("m{i}")).with_key(&key),
                SendOptions::new(),
            )
            .await
            .expect("send");
    }
    let mut everywhere = by_key(&*broker, &key, None, 100).await;
    everywhere.sort_unstable();
    assert_eq!(everywhere, vec!["m0", "m1", "m2", "m3", "m4", "m5"]);
    assert_eq!(
        by_key(&*broker, &key, Some(&t1), 100).await,
        vec!["m0", "m2", "m4"]
    );
    assert_eq!(by_key(&*broker, &key, Some(&t2), 2).await, vec!["m1", "m3"]);
    assert_eq!(by_key(&*broker, &key, None, 4).await.len(), 4);
    assert!(by_key(&*broker, &key, Some(&unique("absent")), 10)
        .await
        .is_empty());
    broker.shutdown().await.expect("shutdown");
}

/// Lookups answer the same after the broker is shut down and opened again.
pub async fn lookup_after_restart(h: &dyn Harness) {
    let topic = unique("restart");
    let key = unique("k");
    let ids: Vec<MessageId> = {
        let broker = h.open().await;
        broker.create_topic(&topic, 1).await.expect("create");
        let mut ids = Vec::new();
        for i in 0..20 {
            let m = Message::new(&topic, format!("m{i}")).with_key(&key);
            ids.push(
                broker
                    .send(m, SendOptions::new())
                    .await
                    .expect("send")
                    .message_id,
            );
        }
        broker.shutdown().await.expect("shutdown");
        ids
    };
    let broker = h.open().await;
    for id in &ids {
        let found = broker.messages_by_id(*id).await.expect("by id");
        assert_eq!(found.len(), 1, "{id} after the restart");
        assert_eq!(found[0].id, *id);
    }
    let found = broker
        .messages_by_key(&key, Some(&topic), 100)
        .await
        .expect("by key");
    assert_eq!(found.iter().map(|v| v.id).collect::<Vec<_>>(), ids);
    // What is sent after the restart is found too.
    let late = broker
        .send(
            Message::new(&topic, "late").with_key(&key),
            SendOptions::new(),
        )
        .await
        .expect("send");
    assert_eq!(
        broker
            .messages_by_id(late.message_id)
            .await
            .expect("by id")
            .len(),
        1
    );
    assert_eq!(by_key(&*broker, &key, None, 100).await.len(), 21);
    broker.shutdown().await.expect("shutdown");
}

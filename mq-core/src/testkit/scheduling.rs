//! Conformance cases for delays, retries with back-off and dead letters. The cases marked
//! "paused" run on a paused tokio clock: minutes of back-off pass in milliseconds.

use std::time::Duration;

use tokio::time::Instant;

use super::{assert_quiet, body, drain, first, unique, Harness};
use crate::broker::{ConsumerOptions, Disposition, Failure, SendOptions};
use crate::delay::{Backoff, Delay, DEFAULT_DELAY_LEVELS};
use crate::message::Message;
use crate::subscription::{ConsumeMode, MessageModel, Subscription};

/// Tolerance of due times on the paused clock: timers fire at their instant, and a write in
/// between may let the clock move to the next timer.
const SLACK: Duration = Duration::from_secs(1);

fn assert_between(elapsed: Duration, at_least: Duration, what: &str) {
    assert!(
        elapsed >= at_least && elapsed <= at_least + SLACK,
        "{what}: after {elapsed:?}, expected {at_least:?}"
    );
}

/// (paused) Delayed messages become visible at their due time: by level, by duration, at an
/// instant; a delay beyond the maximum is refused.
pub async fn delayed_messages_arrive_when_due(h: &dyn Harness) {
    let broker = h.open().await;
    let topic = unique("delay");
    let consumer = broker
        .subscribe(Subscription::new(&topic, unique("g")), first())
        .await
        .expect("subscribe");
    let t0 = Instant::now();
    let at = std::time::SystemTime::now() + Duration::from_secs(45);
    for (b, delay) in [
        ("level-3", Delay::Level(3)),
        ("after-30s", Delay::After(Duration::from_secs(30))),
        ("at-45s", Delay::At(at)),
        ("level-1", Delay::Level(1)),
    ] {
        broker
            .send(Message::new(&topic, b), SendOptions::new().delayed(delay))
            .await
            .expect("send delayed");
    }
    broker
        .send(Message::new(&topic, "now"), SendOptions::new())
        .await
        .expect("send");
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let got = drain(&*consumer, 1, Duration::from_secs(120), true).await;
        assert_eq!(got.len(), 1, "missing after {seen:?}");
        seen.push((body(&got[0]), t0.elapsed()));
    }
    let order: Vec<&str> = seen.iter().map(|(b, _)| b.as_str()).collect();
    assert_eq!(
        order,
        vec!["now", "level-1", "level-3", "after-30s", "at-45s"]
    );
    assert_between(seen[1].1, DEFAULT_DELAY_LEVELS[0], "level 1");
    assert_between(seen[2].1, DEFAULT_DELAY_LEVELS[2], "level 3");
    assert_between(seen[3].1, Duration::from_secs(30), "30 s");
    assert!(seen[4].1 <= Duration::from_secs(45) + SLACK, "at-45s late");
    let err = broker
        .send(
            Message::new(&topic, "too late"),
            SendOptions::new().delayed(Delay::After(Duration::from_secs(4 * 24 * 3600))),
        )
        .await
        .expect_err("beyond the maximum delay");
    assert!(err.to_string().contains("maximum"), "{err}");
    let err = broker
        .send(
            Message::new(&topic, "no level"),
            SendOptions::new().delayed(Delay::Level(19)),
        )
        .await
        .expect_err("no such level");
    assert!(err.to_string().contains("level"), "{err}");
    broker.shutdown().await.expect("shutdown");
}

/// (paused) A failing message follows the whole default back-off schedule, comes back to the
/// failing group only, then goes to its dead-letter queue with its history.
pub async fn retries_follow_backoff_then_dead_letter(h: &dyn Harness) {
    let broker = h.open().await;
    let topic = unique("retry");
    let group = unique("failing");
    let failing = broker
        .subscribe(
            Subscription::new(&topic, &group).tags("a").expect("tags"),
            first(),
        )
        .await
        .expect("subscribe");
    let other = broker
        .subscribe(Subscription::new(&topic, unique("other")), first())
        .await
        .expect("subscribe");
    let sent = broker
        .send(
            Message::new(&topic, "payload")
                .with_tag("a")
                .with_key("k-1")
                .with_property("p", "v"),
            SendOptions::new(),
        )
        .await
        .expect("send");
    let backoff = Backoff::default();
    let max = crate::broker::DEFAULT_MAX_RECONSUME_TIMES;
    let mut d = drain(&*failing, 1, Duration::from_secs(5), false).await;
    for retry in 1..=max {
        assert_eq!(d.len(), 1, "retry {retry} never came");
        assert_eq!(d[0].message.reconsume_times, retry - 1);
        assert_eq!(d[0].message.id, sent.message_id);
        assert_eq!(d[0].message.topic, topic);
        assert_eq!(d[0].message.tag.as_deref(), Some("a"));
        assert_eq!(
            d[0].message.properties.get("p").map(String::as_str),
            Some("v")
        );
        let disposition = failing
            .nack(&d[0].receipt, Failure::new(format!("boom {retry}")))
            .await
            .expect("nack");
        let want = backoff.delay(retry);
        assert_eq!(disposition, Disposition::Retry { retry, after: want });
        let t0 = Instant::now();
        d = drain(&*failing, 1, want + Duration::from_secs(30), false).await;
        assert_between(t0.elapsed(), want, &format!("retry {retry}"));
    }
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].message.reconsume_times, max);
    let disposition = failing
        .nack(&d[0].receipt, Failure::new("final boom"))
        .await
        .expect("nack");
    assert_eq!(disposition, Disposition::DeadLettered);
    assert_quiet(&*failing, Duration::from_secs(3 * 3600)).await;

    let dead = broker
        .dead_letters(&group, 0, 10)
        .await
        .expect("dead letters");
    assert_eq!(dead.len(), 1);
    let dl = &dead[0];
    assert_eq!(dl.message.id, sent.message_id);
    assert_eq!(dl.message.topic, topic);
    assert_eq!(dl.message.tag.as_deref(), Some("a"));
    assert_eq!(dl.message.keys, vec!["k-1".to_string()]);
    assert_eq!(
        dl.message.properties.get("p").map(String::as_str),
        Some("v")
    );
    assert_eq!(&dl.message.body[..], b"payload");
    assert_eq!(dl.attempts, max + 1);
    assert_eq!(dl.last_error, "final boom");
    assert!(dl.first_failure_ms > 0 && dl.first_failure_ms < dl.last_failure_ms);
    let counts = broker.dead_letter_counts().await.expect("counts");
    assert!(counts.contains(&(group.clone(), 1)), "{counts:?}");

    // The other group got the message once and was never disturbed.
    let got = drain(&*other, 10, Duration::from_secs(1), true).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message.reconsume_times, 0);
    broker.shutdown().await.expect("shutdown");
}

/// (paused) Orderly: a failed message is retried in place after the suspend time, later
/// messages of its queue wait, and the configured limit sends it to the dead-letter queue.
pub async fn orderly_retries_in_place_then_dead_letters(h: &dyn Harness) {
    let broker = h.open().await;
    let topic = unique("orderly-retry");
    let group = unique("g");
    let consumer = broker
        .subscribe(
            Subscription::new(&topic, &group).mode(ConsumeMode::Orderly),
            first().max_reconsume_times(2),
        )
        .await
        .expect("subscribe");
    for b in ["A", "B"] {
        broker
            .send(
                Message::new(&topic, b),
                SendOptions::sharding_key("order-7"),
            )
            .await
            .expect("send");
    }
    let suspend = crate::broker::DEFAULT_SUSPEND_CURRENT_QUEUE_TIME;
    let mut d = consumer
        .receive(10, Duration::from_secs(5))
        .await
        .expect("receive");
    for retry in 1..=2u32 {
        assert_eq!(d.len(), 1);
        assert_eq!(body(&d[0]), "A", "B overtook A");
        assert_eq!(d[0].message.reconsume_times, retry - 1);
        let disposition = consumer
            .nack(&d[0].receipt, Failure::new("not yet"))
            .await
            .expect("nack");
        assert_eq!(
            disposition,
            Disposition::Retry {
                retry,
                after: suspend
            }
        );
        let t0 = Instant::now();
        d = consumer
            .receive(10, Duration::from_secs(5))
            .await
            .expect("receive");
        assert_between(t0.elapsed(), suspend, "suspend");
    }
    assert_eq!(body(&d[0]), "A");
    let disposition = consumer
        .nack(&d[0].receipt, Failure::new("give up"))
        .await
        .expect("nack");
    assert_eq!(disposition, Disposition::DeadLettered);
    let next = drain(&*consumer, 1, Duration::from_secs(5), true).await;
    assert_eq!(next.len(), 1);
    assert_eq!(body(&next[0]), "B");
    let dead = broker.dead_letters(&group, 0, 10).await.expect("dead");
    assert_eq!(dead.len(), 1);
    assert_eq!(&dead[0].message.body[..], b"A");
    assert_eq!(dead[0].last_error, "give up");
    broker.shutdown().await.expect("shutdown");
}

/// A handler can dead-letter a poison message at once; dead letters can be listed, re-sent to
/// their group only, and deleted.
pub async fn dead_letters_can_be_resent_and_deleted(h: &dyn Harness) {
    let broker = h.open().await;
    let topic = unique("poison");
    let group = unique("g");
    let consumer = broker
        .subscribe(Subscription::new(&topic, &group), first())
        .await
        .expect("subscribe");
    let other = broker
        .subscribe(Subscription::new(&topic, unique("other")), first())
        .await
        .expect("subscribe");
    for b in ["bad-1", "bad-2"] {
        broker
            .send(Message::new(&topic, b), SendOptions::new())
            .await
            .expect("send");
    }
    let got = drain(&*consumer, 2, Duration::from_secs(5), false).await;
    assert_eq!(got.len(), 2);
    for d in &got {
        consumer
            .dead_letter(&d.receipt, "payload does not deserialize: expected `{`")
            .await
            .expect("dead letter");
    }
    assert_eq!(
        drain(&*other, 2, Duration::from_secs(5), true).await.len(),
        2
    );
    let dead = broker.dead_letters(&group, 0, 10).await.expect("list");
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].attempts, 1);
    assert!(dead[0].last_error.contains("deserialize"));
    // Paging.
    let page = broker
        .dead_letters(&group, dead[0].seq + 1, 10)
        .await
        .expect("page");
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].seq, dead[1].seq);

    let (resent, deleted) = if body_of(&dead[0]) == "bad-1" {
        (&dead[0], &dead[1])
    } else {
        (&dead[1], &dead[0])
    };
    assert!(broker
        .resend_dead_letter(&group, resent.seq)
        .await
        .expect("resend"));
    assert!(broker
        .delete_dead_letter(&group, deleted.seq)
        .await
        .expect("delete"));
    assert!(!broker
        .delete_dead_letter(&group, deleted.seq)
        .await
        .expect("delete twice"));
    assert!(!broker
        .resend_dead_letter(&group, resent.seq)
        .await
        .expect("resend twice"));
    let again = drain(&*consumer, 1, Duration::from_secs(5), true).await;
    assert_eq!(again.len(), 1);
    assert_eq!(body(&again[0]), body_of(resent));
    assert_eq!(again[0].message.topic, topic);
    assert_eq!(again[0].message.reconsume_times, 0);
    assert_quiet(&*other, Duration::from_millis(300)).await;
    assert!(broker
        .dead_letters(&group, 0, 10)
        .await
        .expect("list")
        .is_empty());
    let counts = broker.dead_letter_counts().await.expect("counts");
    assert!(counts.contains(&(group.clone(), 0)), "{counts:?}");

    // Resend all: two more poison messages come back, once each.
    for b in ["bad-3", "bad-4"] {
        broker
            .send(Message::new(&topic, b), SendOptions::new())
            .await
            .expect("send");
    }
    for d in drain(&*consumer, 2, Duration::from_secs(5), false).await {
        consumer
            .dead_letter(&d.receipt, "poison")
            .await
            .expect("dead");
    }
    assert_eq!(
        broker.resend_all_dead_letters(&group).await.expect("all"),
        2
    );
    let mut back: Vec<String> = drain(&*consumer, 2, Duration::from_secs(5), true)
        .await
        .iter()
        .map(body)
        .collect();
    back.sort();
    assert_eq!(back, vec!["bad-3", "bad-4"]);
    assert_eq!(
        broker.resend_all_dead_letters(&group).await.expect("none"),
        0
    );
    broker.shutdown().await.expect("shutdown");
}

fn body_of(d: &crate::dead_letter::DeadLetter) -> String {
    String::from_utf8_lossy(&d.message.body).into_owned()
}

/// Broadcasting members retry on their own, in place.
pub async fn broadcasting_retries_per_member(h: &dyn Harness) {
    let broker = h.open().await;
    let topic = unique("bcast-retry");
    let sub = Subscription::new(&topic, unique("g")).model(MessageModel::Broadcasting);
    let opts = |name: &str| {
        first().instance(name).backoff(Backoff {
            steps: vec![Duration::from_millis(200)],
        })
    };
    let a = broker.subscribe(sub.clone(), opts("a")).await.expect("a");
    let b = broker.subscribe(sub, opts("b")).await.expect("b");
    broker
        .send(Message::new(&topic, "x"), SendOptions::new())
        .await
        .expect("send");
    let da = drain(&*a, 1, Duration::from_secs(5), false).await;
    assert_eq!(drain(&*b, 1, Duration::from_secs(5), true).await.len(), 1);
    a.nack(&da[0].receipt, Failure::new("a failed"))
        .await
        .expect("nack");
    let again = drain(&*a, 1, Duration::from_secs(5), true).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].message.reconsume_times, 1);
    assert_quiet(&*b, Duration::from_millis(400)).await;
    broker.shutdown().await.expect("shutdown");
}

/// Real time, short delays: retries on a configured back-off of milliseconds, then the
/// dead-letter queue.
pub async fn short_backoff_in_real_time(h: &dyn Harness) {
    let broker = h.open().await;
    let topic = unique("fast-retry");
    let group = unique("g");
    let consumer = broker
        .subscribe(
            Subscription::new(&topic, &group),
            ConsumerOptions::new()
                .consume_from(crate::subscription::ConsumeFrom::First)
                .max_reconsume_times(2)
                .backoff(Backoff {
                    steps: vec![Duration::from_millis(100), Duration::from_millis(300)],
                }),
        )
        .await
        .expect("subscribe");
    broker
        .send(Message::new(&topic, "r"), SendOptions::new())
        .await
        .expect("send");
    let mut d = drain(&*consumer, 1, Duration::from_secs(5), false).await;
    for (retry, at_least) in [(1, 100), (2, 300)] {
        let t0 = std::time::Instant::now();
        consumer
            .nack(&d[0].receipt, Failure::new("fail"))
            .await
            .expect("nack");
        d = drain(&*consumer, 1, Duration::from_secs(5), false).await;
        assert_eq!(d.len(), 1, "retry {retry}");
        assert!(
            t0.elapsed() >= Duration::from_millis(at_least),
            "retry {retry} came after {:?}",
            t0.elapsed()
        );
    }
    let disposition = consumer
        .nack(&d[0].receipt, Failure::new("fail"))
        .await
        .expect("nack");
    assert_eq!(disposition, Disposition::DeadLettered);
    assert_eq!(
        broker
            .dead_letters(&group, 0, 10)
            .await
            .expect("dead")
            .len(),
        1
    );
    broker.shutdown().await.expect("shutdown");
}

/// Delayed messages that fell due while the broker was down come promptly after it opens, in
/// due order.
pub async fn delays_due_while_down_come_in_order(h: &dyn Harness) {
    let topic = unique("down");
    let group = unique("g");
    {
        let broker = h.open().await;
        let c = broker
            .subscribe(Subscription::new(&topic, &group), first())
            .await
            .expect("subscribe");
        // One queue, so that due order is what the consumer sees.
        for (b, ms) in [("third", 2000), ("first", 1000), ("second", 1500)] {
            broker
                .send(
                    Message::new(&topic, b),
                    SendOptions::queue(0).delayed(Delay::After(Duration::from_millis(ms))),
                )
                .await
                .expect("send");
        }
        assert_quiet(&*c, Duration::from_millis(50)).await;
        drop(c);
        broker.shutdown().await.expect("shutdown");
    }
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let broker = h.open().await;
    let c = broker
        .subscribe(Subscription::new(&topic, &group), first())
        .await
        .expect("subscribe");
    let got: Vec<String> = drain(&*c, 3, Duration::from_secs(5), true)
        .await
        .iter()
        .map(body)
        .collect();
    assert_eq!(got, vec!["first", "second", "third"]);
    broker.shutdown().await.expect("shutdown");
}

/// A short delay fired behind a long one is not delivered again after a clean restart, and the
/// long one still fires.
pub async fn fired_delays_do_not_fire_again_after_restart(h: &dyn Harness) {
    let topic = unique("refire");
    let group = unique("g");
    {
        let broker = h.open().await;
        let c = broker
            .subscribe(Subscription::new(&topic, &group), first())
            .await
            .expect("subscribe");
        for (b, ms) in [("long", 2500), ("short", 100)] {
            broker
                .send(
                    Message::new(&topic, b),
                    SendOptions::queue(0).delayed(Delay::After(Duration::from_millis(ms))),
                )
                .await
                .expect("send");
        }
        let got = drain(&*c, 1, Duration::from_secs(5), true).await;
        assert_eq!(got.iter().map(body).collect::<Vec<_>>(), vec!["short"]);
        drop(c);
        broker.shutdown().await.expect("shutdown");
    }
    let broker = h.open().await;
    let c = broker
        .subscribe(Subscription::new(&topic, &group), first())
        .await
        .expect("subscribe");
    let got: Vec<String> = drain(&*c, 2, Duration::from_secs(4), true)
        .await
        .iter()
        .map(body)
        .collect();
    assert_eq!(got, vec!["long"], "the short delay fired twice");
    broker.shutdown().await.expect("shutdown");
}

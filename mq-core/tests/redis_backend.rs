//! Behaviour of the Redis Streams backend beyond the conformance suite: outages, AUTH URLs,
//! stream retention, unreadable entries and sharing among the members of one group.

// A failed step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mq_core::redis::{RedisBroker, RedisConfig};
use mq_core::testkit::{body, drain};
use mq_core::{
    BackendErrorKind, Broker, BrokerError, ConsumeFrom, Consumer, ConsumerOptions, Delivery,
    Message, SendOptions, Subscription,
};

fn first() -> ConsumerOptions {
    ConsumerOptions::new().consume_from(ConsumeFrom::First)
}

fn bodies(deliveries: &[Delivery]) -> Vec<String> {
    deliveries.iter().map(body).collect()
}

fn receipts(deliveries: &[Delivery]) -> Vec<mq_core::Receipt> {
    deliveries.iter().map(|d| d.receipt.clone()).collect()
}

/// A plain connection for looking at the keys behind the broker's back.
fn plain(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(2))
        .unwrap()
}

/// The stream of a queue (`mq-core/src/redis/keys.rs`).
fn stream_key(prefix: &str, topic: &str, queue: u32) -> String {
    format!("{prefix}:{{{topic}:{queue}}}")
}

fn xlen(conn: &mut redis::Connection, key: &str) -> u64 {
    redis::cmd("XLEN").arg(key).query(conn).unwrap()
}

/// The entry ids of a stream, oldest first.
fn ids(conn: &mut redis::Connection, key: &str) -> Vec<String> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query(conn)
        .unwrap();
    reply.ids.into_iter().map(|e| e.id).collect()
}

async fn send_all(broker: &RedisBroker, topic: &str, bodies: &[&str]) {
    for b in bodies {
        broker
            .send(Message::new(topic, b.to_string()), SendOptions::new())
            .await
            .expect("send");
    }
}

/// Sends, subscribes, receives and acknowledges through `url`.
async fn round_trip(url: &str, prefix: &str) {
    let broker = RedisBroker::connect(RedisConfig::new(url).prefix(prefix))
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    broker.create_topic("rt", 1).await.unwrap();
    let consumer = broker
        .subscribe(Subscription::new("rt", "g"), first())
        .await
        .unwrap();
    send_all(&broker, "rt", &["r0", "r1", "r2"]).await;
    let got = drain(&*consumer, 3, Duration::from_secs(10), true).await;
    assert_eq!(bodies(&got), ["r0", "r1", "r2"], "through {url}");
    assert_eq!(
        broker.lag("g", "rt").await.unwrap(),
        Some(0),
        "acked through {url}"
    );
    drop(consumer);
    broker.shutdown().await.unwrap();
}

/// A Redis outage: sends fail promptly with an error naming the server (not its password);
/// after the server restarts on its AOF, sends work again and the consumer gets exactly what it
/// had not acknowledged or not read, and what was sent after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_fails_clearly_and_delivery_resumes_after_it() {
    const PASSWORD: &str = "outage-pw-6b1f0c";
    let Some(mut server) = support::OwnRedis::start(Some(PASSWORD), None) else {
        return;
    };
    let timeout = Duration::from_secs(1);
    let broker = RedisBroker::connect(
        RedisConfig::new(server.url())
            .prefix("outage")
            .command_timeout(timeout),
    )
    .await
    .unwrap();
    broker.create_topic("t", 1).await.unwrap();
    // a2 is received and left unacknowledged: it comes back after the consume timeout.
    let consumer = broker
        .subscribe(
            Subscription::new("t", "g"),
            first().consume_timeout(Duration::from_secs(3)),
        )
        .await
        .unwrap();
    send_all(&broker, "t", &["a0", "a1", "a2", "a3"]).await;
    let got = drain(&*consumer, 3, Duration::from_secs(10), false).await;
    assert_eq!(bodies(&got), ["a0", "a1", "a2"]);
    consumer.ack(&receipts(&got[..2])).await.unwrap();

    server.kill();
    let started = Instant::now();
    let err = broker
        .send(Message::new("t", "lost"), SendOptions::new())
        .await
        .expect_err("a send while Redis is down must fail");
    let took = started.elapsed();
    eprintln!("send while down, after {took:?}: {err}");
    let shown = format!("redis://:***@127.0.0.1:{}", server.port);
    match &err {
        BrokerError::Backend {
            backend,
            kind,
            message,
            ..
        } => {
            assert_eq!(*backend, "redis");
            assert_eq!(*kind, BackendErrorKind::Unavailable, "{err}");
            assert!(err.is_transient());
            assert!(message.contains(&shown), "names {shown}: {message}");
        }
        other => panic!("expected a backend error, got {other:?}"),
    }
    for text in [err.to_string(), format!("{err:?}")] {
        assert!(!text.contains(PASSWORD), "shows the password: {text}");
    }
    assert!(
        took < timeout * 4,
        "a send to a dead server took {took:?} (command timeout {timeout:?})"
    );

    // Receiving during the outage fails or finds nothing, and does not hang.
    let started = Instant::now();
    let outcome = consumer.receive(16, Duration::from_millis(500)).await;
    eprintln!(
        "receive while down, after {:?}: {:?}",
        started.elapsed(),
        outcome.as_ref().map(|d| bodies(d))
    );
    match outcome {
        Ok(d) => assert!(d.is_empty(), "delivered while down: {:?}", bodies(&d)),
        Err(e) => {
            assert!(matches!(e, BrokerError::Backend { .. }), "{e:?}");
            assert!(!e.to_string().contains(PASSWORD), "{e}");
        }
    }
    assert!(
        started.elapsed() < timeout * 6,
        "receive while down took {:?}",
        started.elapsed()
    );

    server.restart();
    broker
        .send(Message::new("t", "b0"), SendOptions::new())
        .await
        .expect("the first send after the restart");
    send_all(&broker, "t", &["b1"]).await;

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut after = Vec::new();
    let mut errors = 0;
    while after.len() < 4 && Instant::now() < deadline {
        match consumer.receive(16, Duration::from_millis(500)).await {
            Ok(batch) => {
                if !batch.is_empty() {
                    consumer.ack(&receipts(&batch)).await.unwrap();
                }
                after.extend(bodies(&batch));
            }
            Err(e) => {
                errors += 1;
                eprintln!("receive after the restart failed ({errors}): {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // Nothing else comes back: not the acknowledged ones, not the one whose send failed.
    let quiet_until = Instant::now() + Duration::from_millis(3500);
    while Instant::now() < quiet_until {
        let batch = consumer
            .receive(16, Duration::from_millis(500))
            .await
            .expect("receive once Redis is back");
        if !batch.is_empty() {
            consumer.ack(&receipts(&batch)).await.unwrap();
        }
        after.extend(bodies(&batch));
    }
    after.sort();
    assert_eq!(
        after,
        ["a2", "a3", "b0", "b1"],
        "delivered after the outage"
    );
    drop(consumer);
    broker.shutdown().await.unwrap();
}

/// An acknowledgement that failed because Redis was down can be retried once it is back, and
/// then holds: the message is not delivered again (here after its consume timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_that_failed_during_an_outage_can_be_retried() {
    let Some(mut server) = support::OwnRedis::start(None, None) else {
        return;
    };
    let consume_timeout = Duration::from_secs(2);
    let broker = RedisBroker::connect(
        RedisConfig::new(server.url())
            .prefix("ack-outage")
            .command_timeout(Duration::from_secs(1)),
    )
    .await
    .unwrap();
    broker.create_topic("t", 1).await.unwrap();
    let consumer = broker
        .subscribe(
            Subscription::new("t", "g"),
            first().consume_timeout(consume_timeout),
        )
        .await
        .unwrap();
    send_all(&broker, "t", &["x0"]).await;
    let got = drain(&*consumer, 1, Duration::from_secs(10), false).await;
    assert_eq!(bodies(&got), ["x0"]);

    server.kill();
    let during = consumer.ack(&receipts(&got)).await;
    assert!(
        during.is_err(),
        "an ack that cannot reach Redis must not report success"
    );
    server.restart();
    consumer
        .ack(&receipts(&got))
        .await
        .expect("the same ack once Redis is back");

    // Well past the consume timeout: an acknowledged message does not come back.
    let until = Instant::now() + consume_timeout * 2 + Duration::from_secs(1);
    let mut again = Vec::new();
    while Instant::now() < until {
        match consumer.receive(16, Duration::from_millis(500)).await {
            Ok(batch) => again.extend(bodies(&batch)),
            Err(e) => panic!("receive once Redis is back: {e}"),
        }
    }
    assert!(
        again.is_empty(),
        "acknowledged (on retry) but delivered again: {again:?}"
    );
    drop(consumer);
    broker.shutdown().await.unwrap();
}

/// `connect` to an address where no Redis listens fails within a bounded time, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_without_a_server_fails_promptly_naming_it() {
    let url = format!("redis://:pw-never-shown@127.0.0.1:{}", support::free_port());
    let started = Instant::now();
    let err = RedisBroker::connect(
        RedisConfig::new(&url)
            .prefix("nobody")
            .command_timeout(Duration::from_secs(1)),
    )
    .await
    .expect_err("nobody listens there");
    let took = started.elapsed();
    let text = err.to_string();
    assert_eq!(
        err.backend_kind(),
        Some(BackendErrorKind::Unavailable),
        "{err:?}"
    );
    assert!(
        text.contains(&url.replace("pw-never-shown", "***")),
        "{text}"
    );
    assert!(!text.contains("pw-never-shown"), "{text}");
    assert!(took < Duration::from_secs(5), "took {took:?}: {text}");
}

/// `redis://:password@` and `redis://user:password@` work end to end; a wrong or missing
/// password fails at `connect` with an error that names the server but not the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_urls_work_and_bad_credentials_fail_at_connect() {
    const PASSWORD: &str = "auth-pw-93c2e1";
    const USER_PASSWORD: &str = "user-pw-77aa40";
    const WRONG: &str = "wrong-pw-5d1e88";
    let Some(server) = support::OwnRedis::start(Some(PASSWORD), None) else {
        return;
    };
    let port = server.port;
    round_trip(&server.url(), "auth").await;

    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("mq")
        .arg("on")
        .arg(format!(">{USER_PASSWORD}"))
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .query(&mut plain(&server.url()))
        .unwrap();
    round_trip(
        &format!("redis://mq:{USER_PASSWORD}@127.0.0.1:{port}"),
        "acl",
    )
    .await;

    for url in [
        format!("redis://:{WRONG}@127.0.0.1:{port}"),
        format!("redis://mq:{WRONG}@127.0.0.1:{port}"),
    ] {
        let started = Instant::now();
        let err = RedisBroker::connect(
            RedisConfig::new(&url)
                .prefix("auth")
                .command_timeout(Duration::from_secs(1)),
        )
        .await
        .expect_err("bad credentials must fail at connect");
        let took = started.elapsed();
        let text = err.to_string();
        for shown in [text.clone(), format!("{err:?}")] {
            assert!(!shown.contains(WRONG), "shows the password: {shown}");
        }
        assert!(
            text.contains(&format!("127.0.0.1:{port}")),
            "{url}: the error should name the server: {text}"
        );
        let lower = text.to_lowercase();
        assert!(
            lower.contains("auth") || lower.contains("pass"),
            "{url}: the error should say it is about authentication: {text}"
        );
        assert_eq!(
            err.backend_kind(),
            Some(BackendErrorKind::Unauthorized),
            "{url}: {err:?}"
        );
        assert!(took < Duration::from_secs(10), "{url}: took {took:?}");
        eprintln!("{url}: {text}");
    }
}

/// A URL without the password the server wants fails at `connect` with an error that names
/// the server, as every other connect failure does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_password_fails_at_connect_naming_the_server() {
    let Some(server) = support::OwnRedis::start(Some("auth-pw-0f3a9b"), None) else {
        return;
    };
    let url = format!("redis://127.0.0.1:{}", server.port);
    let err = RedisBroker::connect(
        RedisConfig::new(&url)
            .prefix("auth")
            .command_timeout(Duration::from_secs(1)),
    )
    .await
    .expect_err("a missing password must fail at connect");
    let text = err.to_string();
    assert!(text.contains("NOAUTH"), "{text}");
    assert_eq!(
        err.backend_kind(),
        Some(BackendErrorKind::Unauthorized),
        "{err:?}"
    );
    assert!(
        text.contains(&url),
        "the error should name the server it could not use: {text}"
    );
}

/// `trim` removes what every group has acknowledged, keeps what a group has not read or not
/// acknowledged (also below later acknowledged entries), and leaves streams without groups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trim_keeps_what_some_group_still_needs() {
    let Some(url) = support::redis_url() else {
        return;
    };
    let ns = support::Namespace::new(&url);
    let broker = RedisBroker::connect(
        RedisConfig::new(&url)
            .prefix(&ns.prefix)
            .trim_interval(Duration::from_secs(3600)),
    )
    .await
    .unwrap();
    let mut conn = plain(&url);
    let ten: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    let ten: Vec<&str> = ten.iter().map(String::as_str).collect();
    for topic in ["shared", "idle", "lonely"] {
        broker.create_topic(topic, 1).await.unwrap();
    }
    let fast = broker
        .subscribe(Subscription::new("shared", "fast"), first())
        .await
        .unwrap();
    let slow = broker
        .subscribe(Subscription::new("shared", "slow"), first())
        .await
        .unwrap();
    let done = broker
        .subscribe(Subscription::new("idle", "done"), first())
        .await
        .unwrap();
    // A group that has read nothing of "idle".
    let idle = broker
        .subscribe(Subscription::new("idle", "idle"), first())
        .await
        .unwrap();
    for topic in ["shared", "idle", "lonely"] {
        send_all(&broker, topic, &ten).await;
    }
    let shared = stream_key(&ns.prefix, "shared", 0);
    let idle_key = stream_key(&ns.prefix, "idle", 0);
    let lonely = stream_key(&ns.prefix, "lonely", 0);

    assert_eq!(
        drain(&*fast, 10, Duration::from_secs(10), true).await.len(),
        10
    );
    assert_eq!(
        drain(&*done, 10, Duration::from_secs(10), true).await.len(),
        10
    );
    // "slow" reads m0..m5, acknowledges all but m4, and has not read m6..m9.
    let got = drain(&*slow, 6, Duration::from_secs(10), false).await;
    assert_eq!(bodies(&got), ten[..6]);
    let mut acked = receipts(&got);
    let m4 = acked.remove(4);
    slow.ack(&acked).await.unwrap();

    let report = broker.trim().await.unwrap();
    assert_eq!(xlen(&mut conn, &idle_key), 10, "a group read nothing of it");
    assert_eq!(xlen(&mut conn, &lonely), 10, "a stream without groups");
    assert_eq!(
        ids(&mut conn, &shared),
        ["4-1", "5-1", "6-1", "7-1", "8-1", "9-1"],
        "m4 is unacknowledged, m6.. unread by \"slow\""
    );
    assert_eq!(report.removed, 4, "{report:?}");

    // Nothing changed: nothing more goes, and the lag still counts what is left.
    assert_eq!(broker.trim().await.unwrap().removed, 0);
    assert_eq!(xlen(&mut conn, &shared), 6);
    assert_eq!(broker.lag("slow", "shared").await.unwrap(), Some(5));
    assert_eq!(broker.lag("fast", "shared").await.unwrap(), Some(0));
    assert_eq!(broker.lag("idle", "idle").await.unwrap(), Some(10));

    slow.ack(&[m4]).await.unwrap();
    broker.trim().await.unwrap();
    assert_eq!(ids(&mut conn, &shared), ["6-1", "7-1", "8-1", "9-1"]);
    assert_eq!(broker.lag("slow", "shared").await.unwrap(), Some(4));

    let rest = drain(&*slow, 4, Duration::from_secs(10), true).await;
    assert_eq!(bodies(&rest), ten[6..]);
    broker.trim().await.unwrap();
    assert_eq!(
        xlen(&mut conn, &shared),
        0,
        "every group settled everything"
    );
    assert_eq!(xlen(&mut conn, &idle_key), 10);
    assert_eq!(xlen(&mut conn, &lonely), 10);

    // A trimmed stream goes on with the next offsets, and both groups get what comes next.
    let sent = broker
        .send(Message::new("shared", "next"), SendOptions::new())
        .await
        .unwrap();
    assert_eq!(sent.queue_offset, 10);
    for c in [&fast, &slow] {
        let got = drain(&**c, 1, Duration::from_secs(10), true).await;
        assert_eq!(bodies(&got), ["next"]);
        assert_eq!(got[0].message.queue_offset, 10);
    }
    broker.trim().await.unwrap();
    assert_eq!(xlen(&mut conn, &shared), 0);

    // The idle group still gets everything of its stream.
    assert_eq!(
        bodies(&drain(&*idle, 10, Duration::from_secs(10), true).await),
        ten
    );
    drop((fast, slow, done, idle));
    broker.shutdown().await.unwrap();
}

/// Error and warning events of the current thread, as text.
#[derive(Clone, Default)]
struct Recorder(Arc<parking_lot::Mutex<Vec<String>>>);

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={value:?}", field.name()));
    }
}

impl tracing::Subscriber for Recorder {
    fn enabled(&self, meta: &tracing::Metadata<'_>) -> bool {
        *meta.level() <= tracing::Level::WARN
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut text = format!("{}", event.metadata().level());
        event.record(&mut Fields(&mut text));
        self.0.lock().push(text);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Stream entries that are not messages (garbage in `m`, no `m` at all) are skipped and
/// reported; the messages around them are delivered and nothing stays pending.
#[tokio::test]
async fn unreadable_entries_are_skipped_and_reported() {
    let Some(url) = support::redis_url() else {
        return;
    };
    let recorder = Recorder::default();
    // The consumer logs on the task that calls `receive`: this test's thread.
    let _guard = tracing::subscriber::set_default(recorder.clone());
    let ns = support::Namespace::new(&url);
    let broker = RedisBroker::connect(RedisConfig::new(&url).prefix(&ns.prefix))
        .await
        .unwrap();
    broker.create_topic("bad", 1).await.unwrap();
    let consumer = broker
        .subscribe(Subscription::new("bad", "g"), first())
        .await
        .unwrap();
    let before = broker
        .send(Message::new("bad", "before"), SendOptions::new())
        .await
        .unwrap();
    assert_eq!(before.queue_offset, 0);
    let key = stream_key(&ns.prefix, "bad", 0);
    let mut conn = plain(&url);
    let _: String = redis::cmd("XADD")
        .arg(&key)
        .arg("1-1")
        .arg("m")
        .arg(&b"\xc1garbage"[..])
        .arg("t")
        .arg(mq_core::message::now_millis())
        .query(&mut conn)
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg(&key)
        .arg("2-1")
        .arg("x")
        .arg("no message field")
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("{key}:n"))
        .arg(3)
        .query(&mut conn)
        .unwrap();
    let after = broker
        .send(Message::new("bad", "after"), SendOptions::new())
        .await
        .unwrap();
    assert_eq!(after.queue_offset, 3);

    let got = drain(&*consumer, 2, Duration::from_secs(10), true).await;
    assert_eq!(bodies(&got), ["before", "after"]);
    let offsets: Vec<u64> = got.iter().map(|d| d.message.queue_offset).collect();
    assert_eq!(offsets, [0, 3]);
    mq_core::testkit::assert_quiet(&*consumer, Duration::from_millis(500)).await;

    let pending: redis::streams::StreamPendingReply = redis::cmd("XPENDING")
        .arg(&key)
        .arg("g")
        .query(&mut conn)
        .unwrap();
    assert_eq!(pending.count(), 0, "the unreadable entries were settled");
    assert_eq!(broker.lag("g", "bad").await.unwrap(), Some(0));

    let events = recorder.0.lock().clone();
    for id in ["1-1", "2-1"] {
        assert!(
            events
                .iter()
                .any(|e| e.starts_with("ERROR") && e.contains(id) && e.contains(&key)),
            "entry {id} of {key} should be reported as an error; events: {events:#?}"
        );
    }
    drop(consumer);
    broker.shutdown().await.unwrap();
}

/// Receives from every consumer until `count` deliveries arrived in all (or `timeout`);
/// acknowledges them if `ack`. Returns per consumer what it got.
async fn gather(
    consumers: &[&dyn Consumer],
    count: usize,
    timeout: Duration,
    ack: bool,
) -> Vec<Vec<Delivery>> {
    let deadline = Instant::now() + timeout;
    let mut got: Vec<Vec<Delivery>> = consumers.iter().map(|_| Vec::new()).collect();
    while got.iter().map(Vec::len).sum::<usize>() < count && Instant::now() < deadline {
        for (c, mine) in consumers.iter().zip(got.iter_mut()) {
            let batch = c.receive(64, Duration::from_millis(100)).await.unwrap();
            if ack && !batch.is_empty() {
                c.ack(&receipts(&batch)).await.unwrap();
            }
            mine.extend(batch);
        }
    }
    got
}

/// Three members of one clustering group on one broker share the queues; when one closes, the
/// others get what it had not acknowledged, as first deliveries (reconsume times 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_member_hands_its_unacknowledged_messages_to_the_others() {
    let Some(url) = support::redis_url() else {
        return;
    };
    let ns = support::Namespace::new(&url);
    let broker = RedisBroker::connect(
        RedisConfig::new(&url)
            .prefix(&ns.prefix)
            .heartbeat_interval(Duration::from_millis(300)),
    )
    .await
    .unwrap();
    broker.create_topic("share", 6).await.unwrap();
    let mut members = Vec::new();
    for name in ["a", "b", "c"] {
        members.push(
            broker
                .subscribe(Subscription::new("share", "g"), first().instance(name))
                .await
                .unwrap(),
        );
    }
    let mut assigned = Vec::new();
    for m in &members {
        assigned.push(m.assignment().await.unwrap());
    }
    assert_eq!(assigned, [vec![0, 1], vec![2, 3], vec![4, 5]]);

    let mut sent = BTreeMap::new();
    for i in 0..30u32 {
        let b = format!("s{i:02}");
        let r = broker
            .send(Message::new("share", b.clone()), SendOptions::queue(i % 6))
            .await
            .unwrap();
        sent.insert(b, r.queue_id);
    }
    let [a, b, c] = [&*members[0], &*members[1], &*members[2]];
    // "b" keeps its deliveries unacknowledged for now.
    let got = gather(&[a, c], 20, Duration::from_secs(20), true).await;
    let got_b = drain(b, 10, Duration::from_secs(10), false).await;
    for (name, mine, queues) in [
        ("a", &got[0], &assigned[0]),
        ("b", &got_b, &assigned[1]),
        ("c", &got[1], &assigned[2]),
    ] {
        assert_eq!(mine.len(), 10, "{name} got {:?}", bodies(mine));
        for d in mine {
            assert_eq!(sent[&body(d)], d.message.queue_id);
            assert!(
                queues.contains(&d.message.queue_id),
                "{name} got {} of queue {}",
                body(d),
                d.message.queue_id
            );
        }
    }
    // "b" acknowledges two messages of each of its queues and leaves the other six.
    let (mut ack, mut keep): (Vec<&Delivery>, Vec<String>) = (Vec::new(), Vec::new());
    for d in &got_b {
        let acked_of_queue = ack
            .iter()
            .filter(|a| a.message.queue_id == d.message.queue_id)
            .count();
        if acked_of_queue < 2 {
            ack.push(d);
        } else {
            keep.push(body(d));
        }
    }
    b.ack(&ack.iter().map(|d| d.receipt.clone()).collect::<Vec<_>>())
        .await
        .unwrap();
    let mut expected = keep;
    expected.sort();

    b.close().await.unwrap();
    let handed = gather(&[a, c], expected.len(), Duration::from_secs(20), true).await;
    // Anything more would be a duplicate.
    let extra = gather(&[a, c], 1, Duration::from_secs(2), true).await;
    let mut all: Vec<&Delivery> = handed.iter().chain(&extra).flatten().collect();
    all.sort_by_key(|d| body(d));
    assert_eq!(
        all.iter().map(|d| body(d)).collect::<Vec<_>>(),
        expected,
        "the others get exactly what b left unacknowledged"
    );
    for d in &all {
        assert_eq!(
            d.message.reconsume_times,
            0,
            "{} was handed over, not retried",
            body(d)
        );
    }
    assert!(
        handed.iter().all(|h| !h.is_empty()),
        "both remaining members take part: a got {:?}, c got {:?}",
        bodies(&handed[0]),
        bodies(&handed[1])
    );
    assert_eq!(a.assignment().await.unwrap(), [0, 1, 2]);
    assert_eq!(c.assignment().await.unwrap(), [3, 4, 5]);
    drop(members);
    broker.shutdown().await.unwrap();
}

async fn shared_broker() -> Option<(support::Namespace, Arc<RedisBroker>)> {
    let url = support::redis_url()?;
    let ns = support::Namespace::new(&url);
    let broker = RedisBroker::connect(RedisConfig::new(&url).prefix(&ns.prefix))
        .await
        .unwrap();
    Some((ns, broker))
}

/// One group may subscribe to several topics (as `#[mq_listener(topic = [..])]` does): its
/// members and subscription are kept per topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_group_on_two_topics() {
    let Some((_ns, broker)) = shared_broker().await else {
        return;
    };
    let group = mq_core::testkit::unique("g");
    let opts = ConsumerOptions::new()
        .instance("same-instance")
        .consume_from(mq_core::ConsumeFrom::First);
    let orders = broker
        .subscribe(Subscription::new("orders", &group), opts.clone())
        .await
        .unwrap();
    let refunds = broker
        .subscribe(Subscription::new("refunds", &group), opts)
        .await
        .unwrap();
    send_all(&broker, "orders", &["o1"]).await;
    send_all(&broker, "refunds", &["r1"]).await;
    assert_eq!(
        bodies(&drain(&*orders, 1, Duration::from_secs(5), true).await),
        ["o1"]
    );
    assert_eq!(
        bodies(&drain(&*refunds, 1, Duration::from_secs(5), true).await),
        ["r1"]
    );
    assert_eq!(orders.assignment().await.unwrap(), vec![0, 1, 2, 3]);
    broker.shutdown().await.unwrap();
}

/// A delayed batch comes out in the order it was sent, though every member is due at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_batch_keeps_its_order() {
    let Some((_ns, broker)) = shared_broker().await else {
        return;
    };
    let topic = mq_core::testkit::unique("delayed-batch");
    let consumer = broker
        .subscribe(Subscription::new(&topic, "g"), first())
        .await
        .unwrap();
    let sent: Vec<String> = (0..12).rev().map(|i| format!("step{i}")).collect();
    let batch = sent
        .iter()
        .map(|b| Message::new(&topic, b.clone()))
        .collect();
    broker
        .send_batch(
            batch,
            SendOptions::queue(0).delayed(mq_core::Delay::After(Duration::from_millis(300))),
        )
        .await
        .unwrap();
    let got = bodies(&drain(&*consumer, 12, Duration::from_secs(5), true).await);
    assert_eq!(got, sent);
    broker.shutdown().await.unwrap();
}

/// Half messages of producers this broker has no checker for do not hold back the check-back
/// of the ones it can answer, however many there are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_back_is_not_blocked_by_other_producers() {
    let Some(url) = support::redis_url() else {
        return;
    };
    let ns = support::Namespace::new(&url);
    let policy = mq_core::CheckPolicy {
        timeout: Duration::from_millis(100),
        interval: Duration::from_millis(200),
        max_checks: 5,
    };
    let broker = RedisBroker::connect(
        RedisConfig::new(&url)
            .prefix(&ns.prefix)
            .check_policy(policy)
            .poll_interval(Duration::from_millis(50)),
    )
    .await
    .unwrap();
    let topic = mq_core::testkit::unique("tx");
    let consumer = broker
        .subscribe(Subscription::new(&topic, "g"), first())
        .await
        .unwrap();
    for i in 0..300 {
        broker
            .prepare(
                Message::new(&topic, format!("orphan {i}")),
                SendOptions::new(),
                "retired-app",
            )
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    broker
        .prepare(Message::new(&topic, "paid"), SendOptions::new(), "shop")
        .await
        .unwrap();
    broker
        .register_checker(
            "shop",
            mq_core::testkit::ScriptedChecker::new(vec![], mq_core::TxState::Commit),
        )
        .await
        .unwrap();
    let got = bodies(&drain(&*consumer, 1, Duration::from_secs(10), true).await);
    assert_eq!(got, ["paid"]);
    assert_eq!(broker.pending_transactions().await.unwrap(), 300);
    broker.shutdown().await.unwrap();
}

/// A broadcasting member gone longer than the reserve loses its progress, so that it does not
/// keep every later message in Redis; a member still around keeps its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_broadcasting_members_do_not_pin_the_stream() {
    let Some(url) = support::redis_url() else {
        return;
    };
    let ns = support::Namespace::new(&url);
    let broker = RedisBroker::connect(
        RedisConfig::new(&url)
            .prefix(&ns.prefix)
            .heartbeat_interval(Duration::from_millis(100))
            .broadcast_reserve(Duration::from_millis(500)),
    )
    .await
    .unwrap();
    let topic = mq_core::testkit::unique("bcast");
    broker.create_topic(&topic, 1).await.unwrap();
    let sub = Subscription::new(&topic, "g").model(mq_core::MessageModel::Broadcasting);
    let gone = broker
        .subscribe(sub.clone(), first().instance("gone"))
        .await
        .unwrap();
    let stays = broker
        .subscribe(sub, first().instance("stays"))
        .await
        .unwrap();
    gone.close().await.unwrap();
    drop(gone);
    send_all(&broker, &topic, &["a", "b", "c"]).await;
    assert_eq!(
        drain(&*stays, 3, Duration::from_secs(5), true).await.len(),
        3
    );
    // Nothing may go while the member that left could still come back.
    broker.trim().await.unwrap();
    let mut conn = plain(&url);
    let key = stream_key(&ns.prefix, &topic, 0);
    assert_eq!(xlen(&mut conn, &key), 3);
    tokio::time::sleep(Duration::from_millis(700)).await;
    // The member still around has just been active.
    assert!(stays
        .receive(1, Duration::from_millis(10))
        .await
        .unwrap()
        .is_empty());
    let report = broker.trim().await.unwrap();
    assert_eq!(xlen(&mut conn, &key), 0, "{report:?}");
    let groups: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(&key)
        .query(&mut conn)
        .unwrap();
    assert_eq!(
        groups.len(),
        1,
        "only the member still around keeps its group"
    );
    send_all(&broker, &topic, &["d"]).await;
    assert_eq!(
        bodies(&drain(&*stays, 1, Duration::from_secs(5), true).await),
        ["d"]
    );
    broker.shutdown().await.unwrap();
}

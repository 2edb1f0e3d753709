//! Broadcasting listeners keep their progress across restarts (a stable instance name), and
//! `consume-from: timestamp` starts a new group at the right message.
//!
//! Each test keeps one directory across the runs of its application: the configuration and,
//! on the embedded broker, the data directory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mq_core::embedded::{EmbeddedBroker, EmbeddedConfig};
#[cfg(feature = "redis")]
use mq_core::redis::{RedisBroker, RedisConfig};
use mq_core::{Broker, Message, SendOptions};
use mq_starter::config::Configuration;
use mq_starter::prelude::*;
use mq_starter::Running;
use parking_lot::Mutex;
use support::eventually;

const WAIT: Duration = Duration::from_secs(20);
const TOPIC: &str = "br-news";

/// What the listeners saw: (listener, body).
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(&'static str, String)>>>);

impl Seen {
    fn push(&self, listener: &'static str, msg: &MessageView) {
        let body = String::from_utf8_lossy(&msg.body).into_owned();
        self.0.lock().push((listener, body));
    }

    /// The bodies `listener` saw, without repeats.
    fn of(&self, listener: &str) -> BTreeSet<String> {
        self.0
            .lock()
            .iter()
            .filter(|(l, _)| *l == listener)
            .map(|(_, b)| b.clone())
            .collect()
    }
}

#[mq_listener(topic = "br-news", group = "br-readers", model = broadcasting, enabled = "${test.news:false}")]
async fn news(State(seen): State<Seen>, msg: MessageView) {
    seen.push("news", &msg);
}

/// A second member of the same broadcasting group in the same application.
#[mq_listener(topic = "br-news", group = "br-readers", model = broadcasting, enabled = "${test.news-copy:false}")]
async fn news_copy(State(seen): State<Seen>, msg: MessageView) {
    seen.push("news_copy", &msg);
}

#[mq_listener(
    topic = "br-since",
    group = "br-since",
    enabled = "${test.since:false}"
)]
async fn since(State(seen): State<Seen>, msg: MessageView) {
    seen.push("since", &msg);
}

#[mq_listener(
    topic = "br-since",
    group = "br-since-hour",
    enabled = "${test.since:false}"
)]
async fn since_hour(State(seen): State<Seen>, msg: MessageView) {
    seen.push("since_hour", &msg);
}

/// Prints what it receives, for the parent of a child process.
#[mq_listener(topic = "br-crash", group = "br-crash", model = broadcasting, enabled = "${test.crash:false}")]
async fn crash_news(msg: MessageView) {
    println!("GOT {}", String::from_utf8_lossy(&msg.body));
}

/// Writes `application.yaml` into `dir` and loads it.
fn configure(dir: &Path, yaml: &str) -> Configuration {
    std::fs::write(dir.join("application.yaml"), yaml).unwrap();
    Configuration::load_with_env(dir, &[], &[]).unwrap()
}

/// The embedded broker in `dir/mq`, new groups at the end (so a restart under a new name
/// would miss what was sent while the application was down), plus `extra` YAML under `mq:`.
fn embedded_yaml(dir: &Path, extra: &str, enable: &[&str]) -> String {
    let mut yaml = format!(
        "mq:\n  broker:\n    data-dir: {}\n  consumer:\n    consume-from: last\n    backoff: 100ms\n  shutdown-timeout: 5s\n{extra}test:\n",
        dir.join("mq").display()
    );
    for name in enable {
        yaml.push_str(&format!("  {name}: true\n"));
    }
    yaml
}

async fn start(config: Configuration, seen: &Seen) -> Running {
    MqApplication::new(config)
        .unwrap()
        .with_state(seen.clone())
        .start()
        .await
        .unwrap()
}

fn bodies(prefix: &str, n: usize) -> BTreeSet<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

async fn send_all(broker: &dyn Broker, topic: &str, prefix: &str, n: usize) {
    for i in 0..n {
        broker
            .send(
                Message::new(topic, format!("{prefix}-{i}")),
                SendOptions::new(),
            )
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broadcasting_listeners_get_what_was_sent_while_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = |extra: &str| {
        embedded_yaml(
            dir.path(),
            &format!("  listeners:\n    news_copy:\n      instance-name: second\n{extra}"),
            &["news", "news-copy"],
        )
    };

    // First run: both members read what is sent while they run.
    let seen = Seen::default();
    let running = start(configure(dir.path(), &yaml("")), &seen).await;
    send_all(&*running.broker(), TOPIC, "up", 3).await;
    eventually("the first run's deliveries", WAIT, || {
        seen.of("news").len() == 3 && seen.of("news_copy").len() == 3
    })
    .await;
    running.shutdown().await.unwrap();

    // While the application is down, another process sends on the same data directory.
    let broker = EmbeddedBroker::open(EmbeddedConfig::new(dir.path().join("mq")))
        .await
        .unwrap();
    send_all(&*broker, TOPIC, "down", 5).await;
    broker.shutdown().await.unwrap();
    drop(broker);

    // Second run: each member resumes where it stopped, under its own name.
    let seen = Seen::default();
    let running = start(configure(dir.path(), &yaml("")), &seen).await;
    send_all(&*running.broker(), TOPIC, "again", 2).await;
    let want: BTreeSet<String> = bodies("down", 5)
        .into_iter()
        .chain(bodies("again", 2))
        .collect();
    eventually("what was sent while stopped", WAIT, || {
        seen.of("news") == want && seen.of("news_copy") == want
    })
    .await;
    running.shutdown().await.unwrap();

    // The name is what keeps the progress: under another application-wide name `news` is a
    // new member and starts at the end (`consume-from: last`); `news_copy` keeps its own name.
    let broker = EmbeddedBroker::open(EmbeddedConfig::new(dir.path().join("mq")))
        .await
        .unwrap();
    send_all(&*broker, TOPIC, "gap", 2).await;
    broker.shutdown().await.unwrap();
    drop(broker);
    let seen = Seen::default();
    let running = start(
        configure(dir.path(), &yaml("  instance-name: renamed\n")),
        &seen,
    )
    .await;
    send_all(&*running.broker(), TOPIC, "last", 1).await;
    eventually("the renamed run's deliveries", WAIT, || {
        seen.of("news").contains("last-0") && seen.of("news_copy").contains("last-0")
    })
    .await;
    assert_eq!(
        seen.of("news"),
        bodies("last", 1),
        "a new name is a new member"
    );
    let kept: BTreeSet<String> = bodies("gap", 2)
        .into_iter()
        .chain(bodies("last", 1))
        .collect();
    assert_eq!(seen.of("news_copy"), kept);
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_broadcasting_members_of_one_group_need_names_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let config = configure(
        dir.path(),
        &embedded_yaml(dir.path(), "", &["news", "news-copy"]),
    );
    let err = MqApplication::new(config)
        .unwrap()
        .with_state(Seen::default())
        .start()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("already a live member"), "{err}");
    assert!(err.contains("mq.instance-name"), "{err}");
    assert!(err.contains("instance-name) a name of its own"), "{err}");
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_broadcasting_listeners_get_what_was_sent_while_stopped() {
    let Some(url) = support::redis::shared().await else {
        return;
    };
    let prefix = format!("mqtest-br-{}", mq_core::MessageId::new());
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "mq:\n  broker:\n    kind: redis\n    redis:\n      url: {url}\n      prefix: {prefix}\n      heartbeat-interval: 200ms\n  consumer:\n    consume-from: last\n  listeners:\n    news_copy:\n      instance-name: second\n  shutdown-timeout: 5s\ntest:\n  news: true\n  news-copy: true\n"
    );
    let seen = Seen::default();
    let running = start(configure(dir.path(), &yaml), &seen).await;
    send_all(&*running.broker(), TOPIC, "up", 3).await;
    eventually("the first run's deliveries", WAIT, || {
        seen.of("news").len() == 3 && seen.of("news_copy").len() == 3
    })
    .await;
    running.shutdown().await.unwrap();

    let broker = RedisBroker::connect(RedisConfig::new(&url).prefix(&prefix))
        .await
        .unwrap();
    send_all(&*broker, TOPIC, "down", 5).await;

    let seen = Seen::default();
    let running = start(configure(dir.path(), &yaml), &seen).await;
    send_all(&*running.broker(), TOPIC, "again", 2).await;
    let want: BTreeSet<String> = bodies("down", 5)
        .into_iter()
        .chain(bodies("again", 2))
        .collect();
    eventually("what was sent while stopped", WAIT, || {
        seen.of("news") == want && seen.of("news_copy") == want
    })
    .await;
    running.shutdown().await.unwrap();
    broker.shutdown().await.unwrap();
    drop_keys(&url, &prefix).await;
}

#[cfg(feature = "redis")]
async fn drop_keys(url: &str, prefix: &str) {
    use redis::AsyncCommands;
    let mut conn = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = conn.keys(format!("{prefix}*")).await.unwrap();
    if !keys.is_empty() {
        let _: () = conn.del(keys).await.unwrap();
    }
}

// --- a process killed and restarted at once (Redis) ------------------------------------------

/// One run of the application (a child process of `redis_sigkill_then_restart_resumes`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a child process of redis_sigkill_then_restart_resumes"]
async fn crash_worker() {
    let running = MqApplication::from_config()
        .expect("configuration")
        .start()
        .await
        .expect("start");
    println!("READY");
    mq_starter::shutdown_signal().await;
    running.shutdown().await.expect("shutdown");
}

struct Worker {
    child: Child,
    got: Arc<Mutex<BTreeSet<String>>>,
}

impl Worker {
    fn spawn(config_dir: &Path) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash_worker",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("MQ_CONFIG_DIR", config_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let got = Arc::new(Mutex::new(BTreeSet::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let seen = got.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // The harness prints `test crash_worker ... ` before the first line.
                if line.ends_with("READY") {
                    let _ = ready_tx.send(());
                } else if let Some(at) = line.find("GOT ") {
                    seen.lock().insert(line[at + 4..].to_owned());
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the worker did not start");
        Worker { child, got }
    }

    fn got(&self) -> BTreeSet<String> {
        self.got.lock().clone()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sigkill_then_restart_resumes() {
    let Some(url) = support::redis::shared().await else {
        return;
    };
    let prefix = format!("mqtest-brk-{}", mq_core::MessageId::new());
    let dir = tempfile::tempdir().unwrap();
    // A long heartbeat: the restarted process comes back while its killed predecessor still
    // counts as live, and has to wait that out rather than fail or take a new name.
    std::fs::write(
        dir.path().join("application.yaml"),
        format!(
            "mq:\n  broker:\n    kind: redis\n    redis:\n      url: {url}\n      prefix: {prefix}\n      heartbeat-interval: 1s\n  consumer:\n    consume-from: last\n  shutdown-timeout: 5s\ntest:\n  crash: true\n"
        ),
    )
    .unwrap();
    let broker = RedisBroker::connect(RedisConfig::new(&url).prefix(&prefix))
        .await
        .unwrap();

    let mut first = Worker::spawn(dir.path());
    send_all(&*broker, "br-crash", "up", 5).await;
    eventually("the first process's deliveries", WAIT, || {
        first.got() == bodies("up", 5)
    })
    .await;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    std::mem::forget(first);

    send_all(&*broker, "br-crash", "down", 10).await;
    let killed_at = std::time::Instant::now();
    let second = Worker::spawn(dir.path());
    eprintln!(
        "the restarted process was ready {:?} after the kill",
        killed_at.elapsed()
    );
    eventually("what was sent while the process was dead", WAIT, || {
        bodies("down", 10).is_subset(&second.got())
    })
    .await;
    drop(second);
    broker.shutdown().await.unwrap();
    drop_keys(&url, &prefix).await;
}

/// Runs the embedded application of `dir` as child processes: a first run stopped as `first`
/// says, a second one SIGKILLed after it got messages, messages sent while it is dead, and a
/// third run that must get them.
async fn embedded_kill_and_restart(dir: &Path, first_stops_cleanly: bool) {
    std::fs::write(
        dir.join("application.yaml"),
        embedded_yaml(dir, "", &["crash"]),
    )
    .unwrap();
    let send = |prefix: &'static str, n: usize| async move {
        let broker = EmbeddedBroker::open(EmbeddedConfig::new(dir.join("mq")))
            .await
            .unwrap();
        send_all(&*broker, "br-crash", prefix, n).await;
        broker.shutdown().await.unwrap();
    };
    let mut first = Worker::spawn(dir);
    if first_stops_cleanly {
        drop(first); // SIGTERM: progress saved at shutdown
        send("between", 3).await;
        first = Worker::spawn(dir);
        eventually("the messages sent between the runs", WAIT, || {
            first.got() == bodies("between", 3)
        })
        .await;
    }
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    std::mem::forget(first);
    send("down", 10).await;
    let second = Worker::spawn(dir);
    eventually("what was sent while the process was dead", WAIT, || {
        bodies("down", 10).is_subset(&second.got())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_sigkill_then_restart_resumes() {
    let dir = tempfile::tempdir().unwrap();
    embedded_kill_and_restart(dir.path(), true).await;
}

/// The first run of a broadcasting member killed before any progress was saved: its start
/// point must be durable before `subscribe` returns (issue 10, deliverable 2, in the embedded
/// store), or the restart starts over at `consume-from: last` and misses what was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_sigkill_of_a_first_run_then_restart_resumes() {
    let dir = tempfile::tempdir().unwrap();
    embedded_kill_and_restart(dir.path(), false).await;
}

// --- consume-from: timestamp ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_from_timestamp_starts_at_the_first_message_stored_since() {
    let dir = tempfile::tempdir().unwrap();
    let broker = EmbeddedBroker::open(EmbeddedConfig::new(dir.path().join("mq")))
        .await
        .unwrap();
    send_all(&*broker, "br-since", "old", 8).await;
    // Store times are in milliseconds: a gap on either side of the start time.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let from = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    send_all(&*broker, "br-since", "new", 8).await;
    broker.shutdown().await.unwrap();
    drop(broker);

    let from = humantime::format_rfc3339_millis(from).to_string();
    let extra = format!(
        "  listeners:\n    since:\n      consume-from: timestamp\n      consume-timestamp: {from}\n    since_hour:\n      consume-from: timestamp\n      consume-timestamp: 1h\n"
    );
    let seen = Seen::default();
    let running = start(
        configure(dir.path(), &embedded_yaml(dir.path(), &extra, &["since"])),
        &seen,
    )
    .await;
    let all: BTreeSet<String> = bodies("old", 8)
        .into_iter()
        .chain(bodies("new", 8))
        .collect();
    eventually("both groups' deliveries", WAIT, || {
        seen.of("since") == bodies("new", 8) && seen.of("since_hour") == all
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(seen.of("since"), bodies("new", 8), "from {from}");
    running.shutdown().await.unwrap();
}

// --- bad values name the key -----------------------------------------------------------------

fn mq_error(yaml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let err = MqApplication::new(configure(dir.path(), yaml))
        .err()
        .expect("the configuration is refused")
        .to_string();
    assert!(err.contains("application.yaml"), "{err}");
    err
}

#[test]
fn bad_timestamps_and_names_name_the_key() {
    let err = mq_error(
        "mq:\n  consumer:\n    consume-from: timestamp\n    consume-timestamp: yesterday\n",
    );
    assert!(err.contains("mq.consumer.consume-timestamp"), "{err}");
    assert!(err.contains("RFC 3339"), "{err}");
    let err =
        mq_error("mq:\n  listeners:\n    since:\n      consume-timestamp: 2026-02-30T10:00:00Z\n");
    assert!(
        err.contains("mq.listeners.since.consume-timestamp"),
        "{err}"
    );
    let err = mq_error("mq:\n  consumer:\n    consume-from: stamp\n");
    assert!(err.contains("mq.consumer.consume-from"), "{err}");
    assert!(err.contains("timestamp"), "{err}");
    let err = mq_error("mq:\n  instance-name: two words\n");
    assert!(err.contains("mq.instance-name"), "{err}");
    let err = mq_error("mq:\n  listeners:\n    news:\n      instance-name: ''\n");
    assert!(err.contains("mq.listeners.news.instance-name"), "{err}");
}

#[test]
fn timestamps_from_yaml_in_every_form() {
    use mq_starter::config::ConsumeTimestamp;
    let dir = tempfile::tempdir().unwrap();
    let c = configure(
        dir.path(),
        "mq:\n  consumer:\n    consume-from: timestamp\n    consume-timestamp: 1796119200000\n  listeners:\n    a:\n      consume-timestamp: 2026-12-01T11:00:00+01:00\n    b:\n      consume-timestamp: 45m\n",
    );
    let mq = c.mq().unwrap();
    let at = ConsumeTimestamp::At(SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_119_200));
    assert_eq!(mq.consumer.consume_timestamp, Some(at));
    assert_eq!(mq.listeners["a"].consume_timestamp, Some(at));
    assert_eq!(
        mq.listeners["b"].consume_timestamp,
        Some(ConsumeTimestamp::Ago(Duration::from_secs(45 * 60)))
    );
}

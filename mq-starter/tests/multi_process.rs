//! Three processes of one application share a Redis broker; one is killed with SIGKILL in the
//! middle of the load. Every message is processed at least once, and the idempotent listener
//! has one effect per message: only a message whose handler was running in the killed process
//! at that instant may have had its effect twice (its idempotency lease was never completed),
//! and there can be no more of those than the killed process had handlers running.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mq_core::redis::{RedisBroker, RedisConfig};
use mq_core::{Broker, Message, SendOptions};
use mq_starter::prelude::*;
use redis::AsyncCommands;

const TOPIC: &str = "mp-orders";
const MESSAGES: usize = 3000;
/// Handlers of one listener running at once in one process.
const CONCURRENCY: usize = 4;

/// Where the handlers record what they did.
#[derive(Clone)]
struct Effects {
    conn: redis::aio::MultiplexedConnection,
    prefix: String,
}

#[mq_listener(topic = "mp-orders", group = "mp-audit")]
async fn audit(State(fx): State<Effects>, msg: MessageView) -> Result<(), String> {
    let key = msg.key().unwrap_or_default().to_owned();
    // Some work, so that the killed process dies with deliveries in hand.
    tokio::time::sleep(Duration::from_millis(3)).await;
    let mut conn = fx.conn.clone();
    conn.hincr::<_, _, _, ()>(format!("{}:seen", fx.prefix), key, 1)
        .await
        .map_err(|e| e.to_string())
}

#[mq_listener(topic = "mp-orders", group = "mp-billing", idempotent = key)]
async fn bill(State(fx): State<Effects>, msg: MessageView) -> Result<(), String> {
    let key = msg.key().unwrap_or_default().to_owned();
    println!("START {key}");
    tokio::time::sleep(Duration::from_millis(3)).await;
    let mut conn = fx.conn.clone();
    conn.hincr::<_, _, _, ()>(format!("{}:effects", fx.prefix), key, 1)
        .await
        .map_err(|e| e.to_string())
}

/// One process of the application (run by the test below as a child).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a child process of three_processes_one_killed"]
async fn worker() {
    let url = std::env::var("MP_REDIS_URL").expect("MP_REDIS_URL");
    let prefix = std::env::var("MP_PREFIX").expect("MP_PREFIX");
    let conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let running = MqApplication::from_config()
        .expect("configuration")
        .with_state(Effects { conn, prefix })
        .start()
        .await
        .expect("start");
    println!("READY");
    mq_starter::shutdown_signal().await;
    running.shutdown().await.expect("shutdown");
}

struct Worker {
    child: Child,
    starts: Arc<Mutex<Vec<String>>>,
}

impl Worker {
    fn spawn(config_dir: &std::path::Path, url: &str, prefix: &str) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "worker",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("MQ_CONFIG_DIR", config_dir)
            .env("MP_REDIS_URL", url)
            .env("MP_PREFIX", prefix)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let starts = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let seen = starts.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // The test harness prints `test worker ... ` before the first line.
                if line.ends_with("READY") {
                    let _ = ready_tx.send(());
                } else if let Some(at) = line.find("START ") {
                    seen.lock().unwrap().push(line[at + 6..].to_owned());
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("worker did not start");
        Worker { child, starts }
    }

    fn started(&self) -> Vec<String> {
        self.starts.lock().unwrap().clone()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_one_killed() {
    let Some(url) = support::redis::shared().await else {
        return;
    };
    let prefix = format!("mqtest-mp-{}", mq_core::MessageId::new());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("application.yaml"),
        format!(
            "mq:\n  broker:\n    kind: redis\n    redis:\n      url: {url}\n      prefix: {prefix}\n      heartbeat-interval: 500ms\n  consumer:\n    concurrency: {CONCURRENCY}\n    consume-timeout: 3s\n    consume-from: first\n    backoff: 200ms\n  idempotency:\n    store: redis\n    redis-url: {url}\n    prefix: {prefix}-idem\n    lease: 3s\n  shutdown-timeout: 5s\n"
        ),
    )
    .unwrap();

    let workers: Vec<Worker> = (0..3)
        .map(|_| Worker::spawn(dir.path(), &url, &prefix))
        .collect();
    let broker = RedisBroker::connect(RedisConfig::new(&url).prefix(&prefix))
        .await
        .unwrap();
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();

    // Load over about three seconds; the third worker dies once it is busy.
    let mut victim = Some(workers.into_iter().collect::<Vec<_>>());
    let mut survivors = Vec::new();
    let mut killed_starts: Vec<String> = Vec::new();
    for chunk in 0..30 {
        for i in 0..MESSAGES / 30 {
            let n = chunk * (MESSAGES / 30) + i;
            broker
                .send(
                    Message::new(TOPIC, format!("order {n}")).with_key(format!("k{n}")),
                    SendOptions::new(),
                )
                .await
                .unwrap();
        }
        if let Some(mut all) = victim.take() {
            if all[2].started().len() >= 100 || chunk == 20 {
                let mut dead = all.pop().unwrap();
                dead.child.kill().unwrap();
                dead.child.wait().unwrap();
                // Let its reader thread take the last lines the pipe held.
                tokio::time::sleep(Duration::from_millis(200)).await;
                killed_starts = dead.started();
                std::mem::forget(dead);
                survivors = all;
            } else {
                victim = Some(all);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !killed_starts.is_empty(),
        "the victim processed nothing before it was killed"
    );

    let seen_key = format!("{prefix}:seen");
    let effects_key = format!("{prefix}:effects");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let seen: usize = conn.hlen(&seen_key).await.unwrap();
        let effects: usize = conn.hlen(&effects_key).await.unwrap();
        if seen == MESSAGES && effects == MESSAGES {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every message was processed: audit saw {seen}, billing {effects} of {MESSAGES}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Late duplicates have time to show.
    tokio::time::sleep(Duration::from_secs(4)).await;

    let seen: HashMap<String, u64> = conn.hgetall(&seen_key).await.unwrap();
    let effects: HashMap<String, u64> = conn.hgetall(&effects_key).await.unwrap();
    let want: HashSet<String> = (0..MESSAGES).map(|n| format!("k{n}")).collect();
    assert_eq!(seen.keys().cloned().collect::<HashSet<_>>(), want);
    assert_eq!(effects.keys().cloned().collect::<HashSet<_>>(), want);
    let killed: HashSet<&String> = killed_starts.iter().collect();
    let doubled: Vec<(&String, &u64)> = effects.iter().filter(|(_, n)| **n > 1).collect();
    for (key, n) in &doubled {
        assert_eq!(**n, 2, "{key} had {n} effects");
        assert!(
            killed.contains(key),
            "{key} had two effects but its handler was not running in the killed process"
        );
    }
    assert!(
        doubled.len() <= CONCURRENCY,
        "{} messages had two effects; the killed process ran at most {CONCURRENCY} handlers at once: {doubled:?}",
        doubled.len()
    );
    // The work was shared: every survivor processed some of it.
    for w in &survivors {
        assert!(!w.started().is_empty(), "a survivor processed nothing");
    }
    eprintln!(
        "victim started {} handlers before SIGKILL; audit redeliveries {}; double effects {}",
        killed_starts.len(),
        seen.values().filter(|n| **n > 1).count(),
        doubled.len()
    );
    drop(survivors);
    let _ = broker.shutdown().await;
    let keys: Vec<String> = conn.keys(format!("{prefix}*")).await.unwrap();
    if !keys.is_empty() {
        let _: () = conn.del(keys).await.unwrap();
    }
}

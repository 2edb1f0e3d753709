//! The built `mqctl` binary against a real application (embedded broker in a temporary
//! directory) serving the admin router on a free port: tables, --json, pause and resume, dead
//! letters, offset resets, and the errors scripts rely on (401, 404, unreachable) with their
//! exit codes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mq_starter::config::Configuration;
use mq_starter::prelude::*;
use mq_starter::Running;
use serde_json::Value;
use tokio::sync::watch;

const TOKEN: &str = "cli-test-token";
const TOPIC: &str = "cli-orders";
const GROUP: &str = "cli-orders-group";
const LISTENER: &str = "cli_orders";
const WAIT: Duration = Duration::from_secs(20);

/// Acknowledges everything but a body of `poison`, which it dead-letters at once.
#[mq_listener(
    topic = "cli-orders",
    group = "cli-orders-group",
    enabled = "${test.cli:false}"
)]
async fn cli_orders(msg: MessageView) -> Outcome {
    if &msg.body[..] == b"poison" {
        Outcome::dead_letter("cannot handle poison")
    } else {
        Outcome::ack()
    }
}

/// Holds back `cli-slow` deliveries until set: they stay unsettled, and count as lag.
#[derive(Clone)]
struct Gate(Arc<watch::Sender<bool>>);

#[mq_listener(
    topic = "cli-slow",
    group = "cli-slow-group",
    enabled = "${test.cli:false}"
)]
async fn cli_slow(State(gate): State<Gate>) {
    let mut open = gate.0.subscribe();
    // A dropped gate (the test ended) lets the delivery finish too.
    let _ = open.wait_for(|open| *open).await;
}

/// A running application and the URL of its admin API.
struct App {
    running: Running,
    gate: Gate,
    url: String,
    _dir: tempfile::TempDir,
}

/// What one run of mqctl did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> Self {
        assert_eq!(self.code, 0, "mqctl failed: {self:?}");
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("--json printed no JSON ({e}): {:?}", self.stdout))
    }

    /// The value of the `key: value` line of `key`.
    fn field(&self, key: &str) -> String {
        let prefix = format!("{key}:");
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no field {key:?} in\n{}", self.stdout))
            .trim()
            .to_owned()
    }

    /// The cells of the table line whose first cell is `first`.
    fn row(&self, first: &str) -> Vec<String> {
        self.stdout
            .lines()
            .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .find(|cells| cells.first().map(String::as_str) == Some(first))
            .unwrap_or_else(|| panic!("no row {first:?} in\n{}", self.stdout))
    }
}

impl App {
    /// An application whose admin API wants [`TOKEN`].
    async fn start() -> App {
        App::start_with(&format!("  admin:\n    token: {TOKEN}\n")).await
    }

    /// An application with `admin` as its `mq.admin` settings.
    async fn start_with(admin: &str) -> App {
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            "mq:\n  broker:\n    data-dir: {}\n  consumer:\n    consume-from: first\n{admin}  shutdown-timeout: 5s\ntest:\n  cli: true\n",
            dir.path().join("mq").display()
        );
        std::fs::write(dir.path().join("application.yaml"), yaml).unwrap();
        let config = Configuration::load_with_env(dir.path(), &[], &[]).unwrap();
        let gate = Gate(Arc::new(watch::channel(false).0));
        let running = MqApplication::new(config)
            .unwrap()
            .with_state(gate.clone())
            .start()
            .await
            .unwrap();
        let router = running.admin_router();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(
                listener,
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
        });
        App {
            running,
            gate,
            url: format!("http://{addr}"),
            _dir: dir,
        }
    }

    /// mqctl with the right token.
    async fn ctl(&self, args: &[&str]) -> Run {
        mqctl(&self.url, Some(TOKEN), args).await
    }

    async fn send(&self, body: &'static str, key: &str) {
        self.running
            .template()
            .message(TOPIC)
            .key(key)
            .bytes(body)
            .send()
            .await
            .unwrap();
    }

    /// Waits until the group has settled everything of the topic.
    async fn settled(&self) {
        let broker = self.running.broker();
        let deadline = tokio::time::Instant::now() + WAIT;
        while broker.lag(GROUP, TOPIC).await.unwrap() != Some(0) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the group never caught up"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the group's dead letters are `n`, and answers their seqs.
    async fn dead_letters(&self, n: usize) -> Vec<u64> {
        let broker = self.running.broker();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let seqs: Vec<u64> = broker
                .dead_letters(GROUP, 0, 100)
                .await
                .unwrap()
                .iter()
                .map(|d| d.seq)
                .collect();
            if seqs.len() == n {
                return seqs;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never {n} dead letters: {seqs:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the group's only dead letter is a new one (not `old`), and answers it.
    async fn dead_lettered_again(&self, old: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let seqs = self.dead_letters(1).await;
            if seqs[0].to_string() != old {
                return seqs[0].to_string();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{old} was never dead-lettered again"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) {
        self.gate.0.send_replace(true);
        self.running.shutdown().await.unwrap();
    }
}

/// Runs the built binary, with the environment it would read cleared first.
async fn mqctl(url: &str, token: Option<&str>, args: &[&str]) -> Run {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mqctl"));
    cmd.env_remove("MQ_ADMIN_TOKEN")
        .env_remove("MQ_ADMIN_URL")
        .arg("--url")
        .arg(url)
        .args(args);
    if let Some(token) = token {
        cmd.env("MQ_ADMIN_TOKEN", token);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shows_health_topics_groups_lag_and_listeners() {
    let app = App::start().await;
    for i in 0..3 {
        app.send("fine", &format!("order-{i}")).await;
    }
    app.settled().await;

    let health = app.ctl(&["health"]).await.ok();
    assert!(health.stdout.starts_with("status: UP\n"), "{health:?}");
    assert_eq!(health.row("broker")[1..], ["UP", "embedded", "-"]);
    assert_eq!(
        app.ctl(&["health", "--json"]).await.ok().json()["status"],
        "UP"
    );

    let topics = app.ctl(&["topics"]).await.ok();
    let row = topics.row(TOPIC);
    assert_eq!(
        (row[1].as_str(), row[3].as_str()),
        ("user", "3"),
        "{topics:?}"
    );
    let json = app.ctl(&["topics", "--json"]).await.ok().json();
    let topic = json
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == TOPIC)
        .unwrap();
    assert_eq!(topic["messages"], 3);

    let detail = app.ctl(&["topic", TOPIC]).await.ok();
    assert_eq!(detail.row("messages:"), ["messages:", "3"]);
    let queues = app.ctl(&["topic", TOPIC, "--json"]).await.ok().json();
    let stored: u64 = queues["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["messages"].as_u64().unwrap())
        .sum();
    assert_eq!(stored, 3);

    let groups = app.ctl(&["groups"]).await.ok();
    let row = groups.row(GROUP);
    assert_eq!(
        (row[1].as_str(), row[3].as_str()),
        ("clustering", "0"),
        "{groups:?}"
    );
    let group = app.ctl(&["group", GROUP]).await.ok();
    assert_eq!(group.row("lag:"), ["lag:", "0"]);
    let committed: u64 = group
        .stdout
        .lines()
        .filter(|l| l.starts_with(&format!("{TOPIC} ")))
        .map(|l| l.split_whitespace().nth(3).unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(committed, 3, "{group:?}");

    assert_eq!(app.ctl(&["lag"]).await.ok().row(GROUP), [GROUP, "0"]);
    assert_eq!(
        app.ctl(&["lag", "--group", GROUP]).await.ok().row(TOPIC),
        [TOPIC, "-", "0"]
    );
    let lag = app
        .ctl(&["lag", "--group", GROUP, "--json"])
        .await
        .ok()
        .json();
    assert_eq!(lag["group"], GROUP);

    // Two held-back deliveries: lag the group has not settled.
    for i in 0..2 {
        app.running
            .template()
            .send_bytes("cli-slow", format!("slow {i}"))
            .await
            .unwrap();
    }
    assert_eq!(
        app.ctl(&["lag"]).await.ok().row("cli-slow-group"),
        ["cli-slow-group", "2"]
    );
    assert_eq!(
        app.ctl(&["lag", "--group", "cli-slow-group"])
            .await
            .ok()
            .row("cli-slow"),
        ["cli-slow", "-", "2"]
    );
    let slow = app.ctl(&["group", "cli-slow-group"]).await.ok();
    assert_eq!(slow.field("lag"), "2", "{slow:?}");
    assert_eq!(
        app.ctl(&["groups"]).await.ok().row("cli-slow-group")[3],
        "2"
    );

    let listeners = app.ctl(&["listeners"]).await.ok();
    let row = listeners.row(LISTENER);
    assert_eq!(row[1..5], [TOPIC, GROUP, "clustering", "concurrently"]);
    assert_eq!(row.last().unwrap(), "running");
    let json = app.ctl(&["listeners", "--json"]).await.ok().json();
    assert_eq!(json[0]["name"], LISTENER);
    // The held-back deliveries are in flight, once the listener has fetched them.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let slow = app.ctl(&["listeners"]).await.ok().row("cli_slow");
        if slow[7] == "2" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{slow:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pauses_and_resumes_listeners() {
    let app = App::start().await;
    let paused = app.ctl(&["pause", LISTENER]).await.ok();
    assert_eq!(paused.row(LISTENER).last().unwrap(), "paused", "{paused:?}");
    let json = app.ctl(&["listeners", "--json"]).await.ok().json();
    assert_eq!(json[0]["state"], "paused");

    let resumed = app.ctl(&["resume", LISTENER, "--json"]).await.ok().json();
    assert_eq!(resumed[0]["state"], "running");
    // Still consuming after the resume.
    app.send("fine", "after-resume").await;
    app.settled().await;

    let unknown = app.ctl(&["pause", "no_such_listener"]).await;
    assert_eq!(unknown.code, 5, "{unknown:?}");
    assert!(
        unknown.stderr.starts_with("mqctl: not found: "),
        "{unknown:?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_shows_resends_and_deletes_dead_letters() {
    let app = App::start().await;
    app.send("poison", "bad-1").await;
    app.dead_letters(1).await;

    assert_eq!(
        app.ctl(&["dlq", "list"]).await.ok().row(GROUP),
        [GROUP, "1"]
    );
    let page = app.ctl(&["dlq", "list", GROUP, "--json"]).await.ok().json();
    assert_eq!(page["next"], Value::Null);
    let seq = page["items"][0]["seq"].as_u64().unwrap().to_string();
    let list = app.ctl(&["dlq", "list", GROUP]).await.ok();
    let row = list.row(&seq);
    assert_eq!(row[1], TOPIC);
    assert_eq!(row[3], "bad-1");

    let show = app.ctl(&["dlq", "show", GROUP, &seq]).await.ok();
    assert_eq!(show.field("last error"), "cannot handle poison", "{show:?}");
    assert_eq!(show.field("body"), "poison", "{show:?}");
    assert_eq!(show.field("attempts"), "1", "{show:?}");
    assert_eq!(show.field("  mq.origin-topic"), TOPIC, "{show:?}");
    assert_eq!(
        app.ctl(&["dlq", "show", GROUP, &seq, "--json"])
            .await
            .ok()
            .json()["body"],
        "poison"
    );

    // A resent dead letter leaves the queue; the listener dead-letters it again, under a new seq.
    let resent = app.ctl(&["dlq", "resend", GROUP, &seq]).await.ok();
    assert_eq!(
        resent.stdout,
        format!("resent 1 dead letter(s) of {GROUP}\n")
    );
    let second = app.dead_lettered_again(&seq).await;
    // The resend went through the group's retry topic, a name with `%` in it.
    let retry = format!("%RETRY%{GROUP}%{TOPIC}");
    let stats = app.ctl(&["topic", &retry]).await.ok();
    assert_eq!(stats.field("topic"), retry, "{stats:?}");
    assert_eq!(stats.field("messages"), "1", "{stats:?}");
    let gone = app.ctl(&["dlq", "show", GROUP, &seq]).await;
    assert_eq!(gone.code, 5, "{gone:?}");
    assert!(gone.stderr.starts_with("mqctl: not found: "), "{gone:?}");
    let all = app
        .ctl(&["dlq", "resend", GROUP, "--all", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(all["resent"], 1);
    let third = app.dead_lettered_again(&second).await;

    let deleted = app.ctl(&["dlq", "delete", GROUP, &third]).await.ok();
    assert_eq!(
        deleted.stdout,
        format!("deleted 1 dead letter(s) of {GROUP}\n")
    );
    app.dead_letters(0).await;
    let again = app.ctl(&["dlq", "delete", GROUP, &third]).await;
    assert_eq!(again.code, 5, "{again:?}");

    app.send("poison", "bad-2").await;
    app.send("poison", "bad-3").await;
    app.dead_letters(2).await;
    let paged = app.ctl(&["dlq", "list", GROUP, "--limit", "1"]).await.ok();
    assert!(
        paged
            .stdout
            .lines()
            .last()
            .unwrap()
            .starts_with("more: --from "),
        "{paged:?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_group_offsets() {
    let app = App::start().await;
    for i in 0..4 {
        app.send("fine", &format!("order-{i}")).await;
    }
    app.settled().await;
    let stats = app.ctl(&["topic", TOPIC, "--json"]).await.ok().json();
    let max: Vec<(u64, u64)> = stats["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| {
            (
                q["queue_id"].as_u64().unwrap(),
                q["max_offset"].as_u64().unwrap(),
            )
        })
        .collect();

    let last = app
        .ctl(&[
            "offset", "reset", GROUP, "--topic", TOPIC, "--last", "--json",
        ])
        .await
        .ok()
        .json();
    let moved: Vec<(u64, u64)> = last
        .as_array()
        .unwrap()
        .iter()
        .map(|q| {
            (
                q["queue_id"].as_u64().unwrap(),
                q["offset"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(moved, max);

    // A time before every message: the first offsets, re-delivering all four.
    let early = app
        .ctl(&[
            "offset",
            "reset",
            GROUP,
            "--topic",
            TOPIC,
            "--timestamp",
            "2000-01-01T01:00:00+01:00",
        ])
        .await
        .ok();
    for (queue, _) in &max {
        assert_eq!(early.row(&queue.to_string())[1], "0", "{early:?}");
    }
    app.settled().await;
    let first = app
        .ctl(&["offset", "reset", GROUP, "--topic", TOPIC, "--first"])
        .await
        .ok();
    assert_eq!(
        first
            .stdout
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["QUEUE", "OFFSET"]
    );

    let unknown = app
        .ctl(&[
            "offset",
            "reset",
            "no-such-group",
            "--topic",
            TOPIC,
            "--first",
        ])
        .await;
    assert_eq!(unknown.code, 5, "{unknown:?}");
    let usage = app.ctl(&["offset", "reset", GROUP, "--topic", TOPIC]).await;
    assert_eq!(usage.code, 2, "{usage:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_token_is_unauthorized() {
    let app = App::start().await;
    for token in [Some("wrong-token"), None] {
        let run = mqctl(&app.url, token, &["topics"]).await;
        assert_eq!(run.code, 4, "{run:?}");
        assert!(
            run.stderr
                .starts_with("mqctl: unauthorized: set MQ_ADMIN_TOKEN"),
            "{run:?}"
        );
        assert!(run.stdout.is_empty());
    }
    let flag = mqctl(&app.url, None, &["topics", "--token", TOKEN]).await;
    assert_eq!(flag.code, 0, "{flag:?}");
    let missing = app.ctl(&["group", "no-such-group"]).await;
    assert_eq!(missing.code, 5, "{missing:?}");
    assert!(
        missing.stderr.starts_with("mqctl: not found: "),
        "{missing:?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finds_messages_by_id_and_key_with_their_trace() {
    let app = App::start().await;
    let sent = app
        .running
        .template()
        .message(TOPIC)
        .key("order-77")
        .bytes("poison")
        .send()
        .await
        .unwrap();
    let id = sent.message_id.to_string();
    app.dead_letters(1).await;

    // The original and its dead-letter copy.
    let by_id = app.ctl(&["message", &id]).await.ok();
    let copies: Vec<&str> = by_id
        .stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert!(copies.contains(&TOPIC), "{by_id:?}");
    assert_eq!(copies.len(), 2, "{by_id:?}");
    let json = app.ctl(&["message", &id, "--json"]).await.ok().json();
    assert_eq!(json[0]["keys"], serde_json::json!(["order-77"]));
    assert_eq!(json[0]["body"], "poison");

    let by_key = app.ctl(&["messages", "--key", "order-77"]).await.ok();
    assert_eq!(by_key.row(&id)[1], TOPIC, "{by_key:?}");
    let elsewhere = app
        .ctl(&[
            "messages",
            "--key",
            "order-77",
            "--topic",
            "elsewhere",
            "--json",
        ])
        .await
        .ok()
        .json();
    assert_eq!(elsewhere, serde_json::json!([]));

    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let trace = app.ctl(&["trace", &id]).await.ok();
        assert_eq!(trace.field("message"), id, "{trace:?}");
        let delivered = trace.stdout.lines().any(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            cells.get(1) == Some(&"delivered") && cells.contains(&"dead_lettered")
        });
        if delivered {
            break;
        }
        // The listener stores its trace events in batches, a moment after the delivery.
        assert!(tokio::time::Instant::now() < deadline, "{trace:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let trace = app.ctl(&["trace", &id, "--json"]).await.ok().json();
    assert_eq!(trace["message_id"], id.as_str());

    let unknown = app
        .ctl(&["message", "0123456789abcdef0123456789abcdef"])
        .await;
    assert_eq!(unknown.code, 5, "{unknown:?}");
    let malformed = app.ctl(&["message", "not-an-id"]).await;
    assert_eq!(malformed.code, 6, "{malformed:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_which_component_is_down() {
    let app = App::start().await;
    app.running.broker().shutdown().await.unwrap();
    let down = app.ctl(&["health"]).await;
    assert_eq!(down.code, 7, "{down:?}");
    assert!(down.stdout.starts_with("status: DOWN\n"), "{down:?}");
    let broker = down.row("broker");
    assert_eq!(broker[1..3], ["DOWN", "embedded"], "{down:?}");
    assert!(
        broker.len() > 3 && broker[3] != "-",
        "no error shown: {down:?}"
    );
    let json = app.ctl(&["health", "--json"]).await;
    assert_eq!(json.code, 7, "{json:?}");
    assert_eq!(json.json()["components"]["broker"]["status"], "DOWN");
    // The broker is closed already; what the application says of it is not this test's.
    let _ = app.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_configured_token_loopback_needs_none() {
    let app = App::start_with("").await;
    let groups = mqctl(&app.url, None, &["groups", "--json"])
        .await
        .ok()
        .json();
    assert!(groups
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g["group"] == GROUP));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_is_a_clear_error() {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let run = mqctl(&url, Some(TOKEN), &["topics"]).await;
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr
            .starts_with(&format!("mqctl: cannot reach the admin API at {url}/: ")),
        "{run:?}"
    );
    let bad = mqctl("127.0.0.1:8080", None, &["topics"]).await;
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(
        bad.stderr.contains("is not an http:// or https:// URL"),
        "{bad:?}"
    );
}

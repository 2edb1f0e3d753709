//! What the demo shop's behaviour tests share: the shop binary started as a child process on
//! an ephemeral port, and waiting for what happens eventually.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

const CONFIG_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config");

/// Lines of a shop's log kept to show when a test fails while the shop runs.
const LOG_TAIL: usize = 1000;

/// A running shop process.
pub struct Shop {
    child: Child,
    /// `http://host:port` of the running process.
    pub base: String,
    lines: mpsc::Receiver<String>,
    /// The last [`LOG_TAIL`] lines of its log (stdout), shown if the test fails.
    tail: Arc<Mutex<VecDeque<String>>>,
    /// A client for requests of the test's own.
    pub http: reqwest::Client,
}

impl Shop {
    pub fn start(data: &Path, extra_env: &[(&str, &str)]) -> Shop {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_demo-shop"));
        cmd.env("MQ_CONFIG_DIR", CONFIG_DIR)
            .env("MQ__SERVER__ADDR", "127.0.0.1:0")
            .env("MQ__BROKER__DATA_DIR", data.join("mq"))
            .env("MQ__SHOP__ORDER__CANCEL_AFTER", "2s")
            .env("MQ__BROKER__TRANSACTION__TIMEOUT", "500ms")
            .env("MQ__BROKER__TRANSACTION__CHECK_INTERVAL", "500ms")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start demo-shop");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(LOG_TAIL)));
        let kept = tail.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                {
                    let mut kept = kept.lock().unwrap_or_else(|p| p.into_inner());
                    if kept.len() == LOG_TAIL {
                        kept.pop_front();
                    }
                    kept.push_back(line.clone());
                }
                // The test stops listening once the shop is up; its log is still kept.
                let _ = tx.send(line);
            }
        });
        let addr = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("demo-shop did not say where it listens");
            if let Some(a) = line.strip_prefix("listening on ") {
                break a.to_owned();
            }
        };
        Shop {
            child,
            base: addr,
            lines: rx,
            tail,
            http: reqwest::Client::new(),
        }
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let url = format!("{}{}", self.base, path);
        let req = match method {
            "POST" => self.http.post(url),
            _ => self.http.get(url),
        };
        let req = match body {
            Some(b) => req.json(&b),
            None => req,
        };
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str) -> Value {
        let (status, body) = self.call("GET", path, None).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call("POST", path, Some(body)).await
    }

    /// Waits for a line on stdout that contains `text`.
    pub fn wait_line(&self, text: &str) {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("no line with {text:?}"));
            if line.contains(text) {
                return;
            }
        }
    }

    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM: the shop stops serving, lets handlers finish, commits and exits cleanly.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "demo-shop did not stop cleanly: {status}");
    }
}

/// A test that fails half-way must not leave its shop running (holding the test's output
/// pipe open and its data directory busy).
impl Drop for Shop {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
            eprintln!(
                "--- the last {} log lines of the shop at {} ---",
                tail.len(),
                self.base
            );
            for line in tail.iter() {
                eprintln!("{line}");
            }
            eprintln!("--- end of the log of {} ---", self.base);
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `check` every 50 ms until it holds; fails the test after 15 s.
pub async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..300 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Whether Redis answers on 127.0.0.1:6379; says so loudly when not (and fails under
/// `MQ_REQUIRE_REDIS=1`, as in CI).
pub fn redis_answers() -> bool {
    use std::io::{Read, Write};
    let ok = std::net::TcpStream::connect("127.0.0.1:6379")
        .and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"PING\r\n")?;
            let mut buf = [0u8; 7];
            s.read_exact(&mut buf)?;
            Ok(&buf == b"+PONG\r\n")
        })
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var("MQ_REQUIRE_REDIS").map_or(true, |v| v != "1"),
            "MQ_REQUIRE_REDIS=1 but no Redis answers on 127.0.0.1:6379"
        );
        eprintln!("\n*** SKIPPED: no Redis on 127.0.0.1:6379 for the redis profile ***\n");
    }
    ok
}

/// A PostgreSQL database of the test's own, created on the server of `DATABASE_URL` (default
/// `postgres://postgres@127.0.0.1:5432/test`) and dropped when this is dropped.
pub struct PgDatabase {
    /// The URL of the new database.
    pub url: String,
    admin: String,
    name: String,
}

impl PgDatabase {
    /// Creates the database; `None` (said loudly, and a failure under `MQ_REQUIRE_POSTGRES=1`)
    /// when no server answers.
    pub async fn create() -> Option<PgDatabase> {
        use sqlx::{Connection, Executor};
        let admin = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let conn =
            tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(&admin)).await;
        let mut conn = match conn {
            Ok(Ok(c)) => c,
            other => {
                let why = match other {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".into(),
                };
                assert!(
                    std::env::var("MQ_REQUIRE_POSTGRES").map_or(true, |v| v != "1"),
                    "MQ_REQUIRE_POSTGRES=1 but PostgreSQL at {admin} does not answer: {why}"
                );
                eprintln!("\n*** SKIPPED: no PostgreSQL at {admin} ({why}) ***\n");
                return None;
            }
        };
        let name = format!(
            "shop_test_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
        let (base, query) = match admin.split_once('?') {
            Some((b, q)) => (b, format!("?{q}")),
            None => (admin.as_str(), String::new()),
        };
        let server = base.rsplit_once('/').map_or(base, |(s, _)| s);
        Some(PgDatabase {
            url: format!("{server}/{name}{query}"),
            admin,
            name,
        })
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Drop runs outside async code: a runtime of its own, on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                use sqlx::{Connection, Executor};
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let _ = conn
                        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                        .await;
                }
            });
        })
        .join();
    }
}

/// Deletes the Redis keys under `prefix` (a test's own), with `redis-cli`.
pub fn redis_cleanup(prefix: &str) {
    let keys = Command::new("redis-cli")
        .args(["--scan", "--pattern", &format!("{prefix}*")])
        .output();
    if let Ok(out) = keys {
        let keys: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        for chunk in keys.chunks(500) {
            let _ = Command::new("redis-cli")
                .arg("del")
                .args(chunk)
                .stdout(Stdio::null())
                .status();
        }
    }
}

//! Redis for the backend's tests: the server of `REDIS_URL` (default 127.0.0.1:6379), a
//! namespace per test, removed afterwards. Without Redis the tests say so loudly and skip,
//! unless `MQ_REQUIRE_REDIS=1` (as in CI), where they fail.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

/// The URL of the shared server, if one answers.
pub fn redis_url() -> Option<String> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let ok = redis::Client::open(url.as_str())
        .ok()
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)).ok())
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c).ok());
    if ok.is_some() {
        return Some(url);
    }
    let why = format!("no Redis answers at {url}");
    if std::env::var("MQ_REQUIRE_REDIS").is_ok_and(|v| v == "1") {
        panic!("MQ_REQUIRE_REDIS=1 but {why}");
    }
    eprintln!("\n*** SKIPPED: {why}. Set REDIS_URL or start redis-server to run this test. ***\n");
    None
}

/// A key prefix no other test uses; its keys are deleted on drop.
pub struct Namespace {
    pub url: String,
    pub prefix: String,
}

impl Namespace {
    pub fn new(url: &str) -> Self {
        Namespace {
            url: url.to_owned(),
            prefix: format!("mqtest-{}", mq_core::MessageId::new()),
        }
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if std::env::var_os("MQ_KEEP_KEYS").is_some() {
            eprintln!("keys kept under {}:*", self.prefix);
            return;
        }
        let Ok(client) = redis::Client::open(self.url.as_str()) else {
            return;
        };
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(2)) else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.prefix))
            .query(&mut conn)
            .unwrap_or_default();
        for chunk in keys.chunks(500) {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(chunk).query(&mut conn);
        }
    }
}

//! The Redis idempotency store, shared by every process of an application.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;

use super::{IdempotencyError, IdempotencyStore, Lease, LeaseToken};

/// A held lease is `processing:<token>`; a processed key is `done`.
const PROCESSING: &str = "processing:";
const DONE: &str = "done";

/// `PEXPIRE` the key if it still holds `ARGV[1]`.
const RENEW: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";
/// `SET key done PX retention` unless another lease or `done` is there.
const COMPLETE: &str = "local v = redis.call('GET', KEYS[1]) \
if v == false or v == ARGV[1] then redis.call('SET', KEYS[1], 'done', 'PX', ARGV[2]) return 1 else return 0 end";
/// `DEL` the key if it still holds `ARGV[1]`.
const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

/// The longest a health check waits for `PING`: the connection's own response timeout.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

fn held(token: &LeaseToken) -> String {
    format!("{PROCESSING}{}", token.as_str())
}

fn millis(d: Duration) -> u64 {
    d.as_millis().clamp(1, u128::from(u64::MAX)) as u64
}

/// Keys in Redis: `SET key processing:<token> NX PX lease` to take a lease, and scripts that
/// renew, complete (`SET key done PX retention`) or release (`DEL`) it only while the key
/// still holds that token.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisStore")
    }
}

fn unavailable(e: redis::RedisError) -> IdempotencyError {
    IdempotencyError(e.to_string())
}

impl RedisStore {
    /// Connects to `url` (`redis://` or `rediss://`); reconnects by itself after failures.
    pub async fn connect(url: &str) -> Result<Self, IdempotencyError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(unavailable)?;
        Ok(RedisStore { conn })
    }
}

impl RedisStore {
    async fn script(
        &self,
        script: &str,
        key: &str,
        args: &[String],
    ) -> Result<bool, IdempotencyError> {
        let mut conn = self.conn.clone();
        let script = redis::Script::new(script);
        let mut invocation = script.prepare_invoke();
        invocation.key(key);
        for a in args {
            invocation.arg(a);
        }
        let n: i64 = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(n == 1)
    }
}

#[async_trait]
impl IdempotencyStore for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn health(&self) -> Result<(), IdempotencyError> {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        match tokio::time::timeout(HEALTH_TIMEOUT, ping).await {
            Ok(pong) => pong.map(|_| ()).map_err(unavailable),
            Err(_) => Err(IdempotencyError(format!(
                "PING not answered within {HEALTH_TIMEOUT:?}"
            ))),
        }
    }

    async fn acquire(&self, key: &str, lease: Duration) -> Result<Lease, IdempotencyError> {
        let mut conn = self.conn.clone();
        let token = LeaseToken::new();
        let set: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(held(&token))
            .arg("NX")
            .arg("PX")
            .arg(millis(lease))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if set.is_some() {
            return Ok(Lease::Acquired(token));
        }
        let now: Option<String> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(match now.as_deref() {
            Some(DONE) => Lease::Done,
            Some(_) => Lease::Busy,
            // Expired between the two commands: take it.
            None => return Box::pin(self.acquire(key, lease)).await,
        })
    }

    async fn renew(
        &self,
        key: &str,
        token: &LeaseToken,
        lease: Duration,
    ) -> Result<bool, IdempotencyError> {
        self.script(RENEW, key, &[held(token), millis(lease).to_string()])
            .await
    }

    async fn complete(
        &self,
        key: &str,
        token: &LeaseToken,
        retention: Duration,
    ) -> Result<bool, IdempotencyError> {
        self.script(COMPLETE, key, &[held(token), millis(retention).to_string()])
            .await
    }

    async fn release(&self, key: &str, token: &LeaseToken) -> Result<bool, IdempotencyError> {
        self.script(RELEASE, key, &[held(token)]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The store's protocol against the Redis of `REDIS_URL` (default `127.0.0.1:6379`);
    /// skipped, loudly, when none answers, unless `MQ_REQUIRE_REDIS=1`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn follows_the_contract() {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let store = match RedisStore::connect(&url).await {
            Ok(s) => s,
            Err(e) => {
                assert!(
                    std::env::var("MQ_REQUIRE_REDIS").map_or(true, |v| v != "1"),
                    "MQ_REQUIRE_REDIS=1 but Redis at {url} does not answer: {e}"
                );
                eprintln!("\n*** SKIPPED: no Redis at {url} ({e}) ***\n");
                return;
            }
        };
        let prefix = format!("mq-test:idem:{}", LeaseToken::new().as_str());
        super::super::contract::check(&store, &prefix).await;
        let mut conn = store.conn.clone();
        for k in ["k1", "k2", "k3"] {
            let _: Result<i64, _> = redis::cmd("DEL")
                .arg(format!("{prefix}:{k}"))
                .query_async(&mut conn)
                .await;
        }
    }
}

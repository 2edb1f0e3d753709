//! The Redis idempotency store, shared by every process of an application.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;

use super::{IdempotencyError, IdempotencyStore, Lease};

const PROCESSING: &str = "processing";
const DONE: &str = "done";

/// Keys in Redis: `SET key processing NX PX lease`, `SET key done PX retention`, and a release
/// that deletes the key only while it still says `processing`.
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

#[async_trait]
impl IdempotencyStore for RedisStore {
    async fn acquire(&self, key: &str, lease: Duration) -> Result<Lease, IdempotencyError> {
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(PROCESSING)
            .arg("NX")
            .arg("PX")
            .arg(lease.as_millis().max(1) as u64)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if set.is_some() {
            return Ok(Lease::Acquired);
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

    async fn complete(&self, key: &str, retention: Duration) -> Result<(), IdempotencyError> {
        let mut conn = self.conn.clone();
        redis::cmd("SET")
            .arg(key)
            .arg(DONE)
            .arg("PX")
            .arg(retention.as_millis().max(1) as u64)
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)
    }

    async fn release(&self, key: &str) -> Result<(), IdempotencyError> {
        let mut conn = self.conn.clone();
        redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end",
        )
        .key(key)
        .arg(PROCESSING)
        .invoke_async::<i64>(&mut conn)
        .await
        .map(|_| ())
        .map_err(unavailable)
    }
}

//! Idempotent consumption: each (group, key) is processed once.
//!
//! Before the handler the runtime takes a lease on the key (`SET key processing NX PX lease`);
//! after success it marks the key done for the retention time; after a failure it releases the
//! lease so that the retry runs. A duplicate of a done key is acknowledged without running the
//! handler; a duplicate that arrives while the lease is held is retried later, never run at the
//! same time.

mod memory;
mod redis;

use std::time::Duration;

use async_trait::async_trait;

pub use self::memory::MemoryStore;
pub use self::redis::RedisStore;

/// What taking a lease found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// The key was free: run the handler.
    Acquired,
    /// The key was processed before: acknowledge without running.
    Done,
    /// Another delivery holds the key right now: try again later.
    Busy,
}

/// The store could not answer.
#[derive(Debug, thiserror::Error)]
#[error("idempotency store unavailable: {0}")]
pub struct IdempotencyError(pub String);

/// Where idempotent listeners remember what they processed.
#[async_trait]
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Takes the lease on `key` for `lease`, unless it is held or done.
    async fn acquire(&self, key: &str, lease: Duration) -> Result<Lease, IdempotencyError>;

    /// Marks `key` done for `retention`.
    async fn complete(&self, key: &str, retention: Duration) -> Result<(), IdempotencyError>;

    /// Gives the lease on `key` back, so that a retry can run.
    async fn release(&self, key: &str) -> Result<(), IdempotencyError>;
}

#[cfg(test)]
pub(crate) mod contract {
    //! Behaviour every store must have.
    use super::*;

    pub async fn check(store: &dyn IdempotencyStore, prefix: &str) {
        let key = format!("{prefix}:k1");
        let lease = Duration::from_secs(30);
        assert_eq!(store.acquire(&key, lease).await.unwrap(), Lease::Acquired);
        assert_eq!(store.acquire(&key, lease).await.unwrap(), Lease::Busy);
        store.release(&key).await.unwrap();
        assert_eq!(store.acquire(&key, lease).await.unwrap(), Lease::Acquired);
        store.complete(&key, Duration::from_secs(60)).await.unwrap();
        assert_eq!(store.acquire(&key, lease).await.unwrap(), Lease::Done);
        // A lease that runs out frees the key.
        let short = format!("{prefix}:k2");
        assert_eq!(
            store
                .acquire(&short, Duration::from_millis(50))
                .await
                .unwrap(),
            Lease::Acquired
        );
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(store.acquire(&short, lease).await.unwrap(), Lease::Acquired);
    }
}

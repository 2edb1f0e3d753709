//! Idempotent consumption: each (group, key) is processed once.
//!
//! Before the handler the runtime takes a lease on the key, under a token of its own
//! (`SET key processing:<token> NX PX lease`), and renews it while the handler runs, so that a
//! handler slower than the lease is never run twice at once. After success it marks the key
//! done for the retention time; after a failure it releases the lease so that the retry runs.
//! Renewing, completing and releasing name the token: a holder whose lease ran out and was
//! taken by another delivery can neither complete nor release that delivery's lease. A
//! duplicate of a done key is acknowledged without running the handler; a duplicate that
//! arrives while the lease is held is retried later, never run at the same time.

mod memory;
#[cfg(feature = "redis")]
mod redis;

use std::time::Duration;

use async_trait::async_trait;

pub use self::memory::MemoryStore;
#[cfg(feature = "redis")]
pub use self::redis::RedisStore;

/// Names the holder of a lease: what [`IdempotencyStore::acquire`] handed out, asked back by
/// every later call about that lease.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeaseToken(String);

impl LeaseToken {
    /// A token no other lease has.
    pub fn new() -> Self {
        LeaseToken(uuid::Uuid::now_v7().simple().to_string())
    }

    /// The token as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for LeaseToken {
    fn default() -> Self {
        Self::new()
    }
}

/// What taking a lease found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lease {
    /// The key was free: run the handler, holding the lease under this token.
    Acquired(LeaseToken),
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

    /// Extends the lease on `key` to `lease` from now if `token` still holds it. Returns
    /// whether it did (`false`: the lease ran out, and may be another's now).
    async fn renew(
        &self,
        key: &str,
        token: &LeaseToken,
        lease: Duration,
    ) -> Result<bool, IdempotencyError>;

    /// Marks `key` done for `retention`, unless another token holds its lease (a holder whose
    /// lease ran out may still mark a free key done). Returns whether it did.
    async fn complete(
        &self,
        key: &str,
        token: &LeaseToken,
        retention: Duration,
    ) -> Result<bool, IdempotencyError>;

    /// Gives the lease on `key` back, so that a retry can run, if `token` holds it. Returns
    /// whether it did.
    async fn release(&self, key: &str, token: &LeaseToken) -> Result<bool, IdempotencyError>;

    /// A short name of the store (`"memory"`, `"redis"`), shown by the health check.
    fn kind(&self) -> &'static str;

    /// Whether the store answers now (a round trip to a remote store, within a short
    /// timeout); what the admin API's health check reports.
    async fn health(&self) -> Result<(), IdempotencyError>;
}

#[cfg(test)]
pub(crate) mod contract {
    //! Behaviour every store must have.
    use super::*;

    pub fn token(lease: Lease) -> LeaseToken {
        match lease {
            Lease::Acquired(t) => t,
            other => panic!("expected the lease, got {other:?}"),
        }
    }

    /// The protocol, in real time (short leases run out by the wall clock).
    pub async fn check(store: &dyn IdempotencyStore, prefix: &str) {
        let key = format!("{prefix}:k1");
        let lease = Duration::from_secs(30);
        let t1 = token(store.acquire(&key, lease).await.unwrap());
        assert_eq!(store.acquire(&key, lease).await.unwrap(), Lease::Busy);
        // Another token can neither release nor complete it.
        let stranger = LeaseToken::new();
        assert!(!store.release(&key, &stranger).await.unwrap());
        assert!(!store
            .complete(&key, &stranger, Duration::from_secs(60))
            .await
            .unwrap());
        assert!(!store.renew(&key, &stranger, lease).await.unwrap());
        assert_eq!(store.acquire(&key, lease).await.unwrap(), Lease::Busy);
        assert!(store.release(&key, &t1).await.unwrap());
        let t2 = token(store.acquire(&key, lease).await.unwrap());
        // The first holder's token is stale now.
        assert!(!store.release(&key, &t1).await.unwrap());
        assert!(!store.renew(&key, &t1, lease).await.unwrap());
        assert!(store
            .complete(&key, &t2, Duration::from_secs(60))
            .await
            .unwrap());
        assert_eq!(store.acquire(&key, lease).await.unwrap(), Lease::Done);
        // Releasing a done key keeps it done.
        assert!(!store.release(&key, &t2).await.unwrap());
        assert_eq!(store.acquire(&key, lease).await.unwrap(), Lease::Done);

        // A lease that runs out frees the key; its stale holder cannot take the new lease
        // from the next one, but renewing keeps a lease past its first term.
        let short = format!("{prefix}:k2");
        let ms = Duration::from_millis;
        let stale = token(store.acquire(&short, ms(100)).await.unwrap());
        tokio::time::sleep(ms(250)).await;
        let next = token(store.acquire(&short, ms(300)).await.unwrap());
        assert!(!store.complete(&short, &stale, ms(60_000)).await.unwrap());
        assert!(!store.release(&short, &stale).await.unwrap());
        for _ in 0..3 {
            tokio::time::sleep(ms(150)).await;
            assert!(store.renew(&short, &next, ms(300)).await.unwrap());
        }
        assert_eq!(store.acquire(&short, ms(300)).await.unwrap(), Lease::Busy);
        assert!(store.complete(&short, &next, ms(60_000)).await.unwrap());
        assert_eq!(store.acquire(&short, ms(300)).await.unwrap(), Lease::Done);

        // A holder whose lease ran out, with nobody else on the key, still marks it done.
        let late = format!("{prefix}:k3");
        let t = token(store.acquire(&late, ms(50)).await.unwrap());
        tokio::time::sleep(ms(150)).await;
        assert!(store.complete(&late, &t, ms(60_000)).await.unwrap());
        assert_eq!(store.acquire(&late, lease).await.unwrap(), Lease::Done);
    }
}

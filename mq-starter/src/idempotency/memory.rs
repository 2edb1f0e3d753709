//! The in-memory idempotency store: bounded, with expiring entries.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::{IdempotencyError, IdempotencyStore, Lease};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    Processing,
    Done,
}

#[derive(Debug, Default)]
struct Table {
    /// Key → mark, expiry and the generation of its entry in `by_expiry`.
    entries: HashMap<String, (Mark, Instant, u64)>,
    /// Entries by expiry, soonest first: what eviction takes.
    by_expiry: BTreeMap<(Instant, u64), String>,
    next_gen: u64,
}

impl Table {
    fn set(&mut self, key: &str, mark: Mark, until: Instant) {
        if let Some((_, exp, generation)) = self.entries.get(key) {
            self.by_expiry.remove(&(*exp, *generation));
        }
        self.next_gen += 1;
        let generation = self.next_gen;
        self.entries
            .insert(key.to_owned(), (mark, until, generation));
        self.by_expiry.insert((until, generation), key.to_owned());
    }

    fn remove(&mut self, key: &str) {
        if let Some((_, exp, generation)) = self.entries.remove(key) {
            self.by_expiry.remove(&(exp, generation));
        }
    }

    /// Drops expired entries, then, while over `capacity`, the ones that expire soonest.
    fn shrink(&mut self, capacity: usize, now: Instant) {
        while let Some(((exp, _), key)) = self.by_expiry.first_key_value() {
            if *exp > now && self.entries.len() <= capacity {
                break;
            }
            let key = key.clone();
            self.remove(&key);
        }
    }
}

/// Keeps keys in this process, at most `capacity` of them: expired keys go first, then, if the
/// store is still full, the ones that would expire soonest. Make `capacity` larger than the
/// messages in flight. Fine for one process; use [`RedisStore`](super::RedisStore) when several
/// share the work.
#[derive(Debug)]
pub struct MemoryStore {
    capacity: usize,
    table: Mutex<Table>,
}

impl MemoryStore {
    /// A store of at most `capacity` keys.
    pub fn new(capacity: usize) -> Self {
        MemoryStore {
            capacity: capacity.max(1),
            table: Mutex::new(Table::default()),
        }
    }

    /// Keys currently remembered.
    pub fn len(&self) -> usize {
        self.table.lock().entries.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl IdempotencyStore for MemoryStore {
    async fn acquire(&self, key: &str, lease: Duration) -> Result<Lease, IdempotencyError> {
        let mut t = self.table.lock();
        let now = Instant::now();
        match t.entries.get(key) {
            Some((Mark::Done, until, _)) if *until > now => return Ok(Lease::Done),
            Some((Mark::Processing, until, _)) if *until > now => return Ok(Lease::Busy),
            _ => {}
        }
        t.set(key, Mark::Processing, now + lease);
        t.shrink(self.capacity, now);
        Ok(Lease::Acquired)
    }

    async fn complete(&self, key: &str, retention: Duration) -> Result<(), IdempotencyError> {
        let mut t = self.table.lock();
        let now = Instant::now();
        t.set(key, Mark::Done, now + retention);
        t.shrink(self.capacity, now);
        Ok(())
    }

    async fn release(&self, key: &str) -> Result<(), IdempotencyError> {
        let mut t = self.table.lock();
        if matches!(t.entries.get(key), Some((Mark::Processing, _, _))) {
            t.remove(key);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn follows_the_contract() {
        super::super::contract::check(&MemoryStore::new(100), "mem").await;
    }

    #[tokio::test]
    async fn live_leases_outlast_expired_entries() {
        let store = MemoryStore::new(2);
        let long = Duration::from_secs(60);
        assert_eq!(store.acquire("k", long).await.unwrap(), Lease::Acquired);
        store.complete("e", Duration::from_millis(1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(store.acquire("n", long).await.unwrap(), Lease::Acquired);
        // The expired entry went, not the live lease.
        assert_eq!(store.acquire("k", long).await.unwrap(), Lease::Busy);
        // A released key re-acquired is not evicted through a stale record.
        store.release("n").await.unwrap();
        assert_eq!(store.acquire("n", long).await.unwrap(), Lease::Acquired);
        assert_eq!(store.acquire("k", long).await.unwrap(), Lease::Busy);
        assert_eq!(store.acquire("n", long).await.unwrap(), Lease::Busy);
    }

    #[tokio::test]
    async fn stays_bounded() {
        let store = MemoryStore::new(10);
        for i in 0..100 {
            store
                .complete(&format!("k{i}"), Duration::from_millis(1))
                .await
                .unwrap();
        }
        assert!(store.len() <= 10, "{}", store.len());
        assert_eq!(
            store.acquire("k99", Duration::from_secs(1)).await.unwrap(),
            Lease::Done
        );
    }
}

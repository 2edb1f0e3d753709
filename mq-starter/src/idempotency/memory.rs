//! The in-memory idempotency store: bounded, with expiring entries.

use std::collections::{HashMap, VecDeque};
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
    entries: HashMap<String, (Mark, Instant)>,
    /// Keys in insertion order, to evict the oldest when full.
    order: VecDeque<String>,
}

/// Keeps keys in this process, at most `capacity` of them (oldest evicted first). Fine for one
/// process; use [`RedisStore`](super::RedisStore) when several share the work.
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

    fn set(t: &mut Table, capacity: usize, key: &str, mark: Mark, until: Instant) {
        if t.entries.insert(key.to_owned(), (mark, until)).is_none() {
            t.order.push_back(key.to_owned());
        }
        let now = Instant::now();
        while t.entries.len() > capacity {
            let Some(oldest) = t.order.pop_front() else {
                break;
            };
            // Prefer dropping expired entries; a live one goes only when the store is full.
            if let Some((_, exp)) = t.entries.get(&oldest) {
                if *exp > now && t.entries.len() <= capacity {
                    t.order.push_back(oldest);
                    continue;
                }
            }
            t.entries.remove(&oldest);
        }
        if t.order.len() > 2 * capacity {
            let entries = &t.entries;
            t.order.retain(|k| entries.contains_key(k));
        }
    }
}

#[async_trait]
impl IdempotencyStore for MemoryStore {
    async fn acquire(&self, key: &str, lease: Duration) -> Result<Lease, IdempotencyError> {
        let mut t = self.table.lock();
        let now = Instant::now();
        match t.entries.get(key) {
            Some((Mark::Done, until)) if *until > now => return Ok(Lease::Done),
            Some((Mark::Processing, until)) if *until > now => return Ok(Lease::Busy),
            _ => {}
        }
        Self::set(&mut t, self.capacity, key, Mark::Processing, now + lease);
        Ok(Lease::Acquired)
    }

    async fn complete(&self, key: &str, retention: Duration) -> Result<(), IdempotencyError> {
        let mut t = self.table.lock();
        let until = Instant::now() + retention;
        Self::set(&mut t, self.capacity, key, Mark::Done, until);
        Ok(())
    }

    async fn release(&self, key: &str) -> Result<(), IdempotencyError> {
        let mut t = self.table.lock();
        if matches!(t.entries.get(key), Some((Mark::Processing, _))) {
            t.entries.remove(key);
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

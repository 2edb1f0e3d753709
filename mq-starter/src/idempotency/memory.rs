//! The in-memory idempotency store: bounded, with expiring entries.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::{IdempotencyError, IdempotencyStore, Lease, LeaseToken};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Mark {
    Processing(LeaseToken),
    Done,
}

impl Mark {
    fn is_done(&self) -> bool {
        matches!(self, Mark::Done)
    }
}

#[derive(Debug, Default)]
struct Table {
    /// Key → mark, expiry and the generation of its entry in `leases` or `done`.
    entries: HashMap<String, (Mark, Instant, u64)>,
    /// Live leases by expiry: never evicted for room (they are bounded by the deliveries in
    /// flight), only dropped once expired.
    leases: BTreeMap<(Instant, u64), String>,
    /// Done markers by expiry, soonest first: what eviction takes when the store is full.
    done: BTreeMap<(Instant, u64), String>,
    next_gen: u64,
}

impl Table {
    fn index(&mut self, done: bool) -> &mut BTreeMap<(Instant, u64), String> {
        if done {
            &mut self.done
        } else {
            &mut self.leases
        }
    }

    fn set(&mut self, key: &str, mark: Mark, until: Instant) {
        self.remove(key);
        self.next_gen += 1;
        let generation = self.next_gen;
        self.index(mark.is_done())
            .insert((until, generation), key.to_owned());
        self.entries
            .insert(key.to_owned(), (mark, until, generation));
    }

    fn remove(&mut self, key: &str) {
        if let Some((mark, exp, generation)) = self.entries.remove(key) {
            self.index(mark.is_done()).remove(&(exp, generation));
        }
    }

    /// The live mark of `key`.
    fn live(&self, key: &str, now: Instant) -> Option<&Mark> {
        match self.entries.get(key) {
            Some((mark, until, _)) if *until > now => Some(mark),
            _ => None,
        }
    }

    /// Whether `token` holds the live lease of `key`.
    fn holds(&self, key: &str, token: &LeaseToken, now: Instant) -> bool {
        matches!(self.live(key, now), Some(Mark::Processing(t)) if t == token)
    }

    /// Drops expired entries, then, while over `capacity`, the done markers that expire
    /// soonest. Evicting a live lease instead would let a concurrent duplicate run.
    fn shrink(&mut self, capacity: usize, now: Instant) {
        for done in [false, true] {
            while let Some(((exp, _), key)) = self.index(done).first_key_value() {
                if *exp > now {
                    break;
                }
                let key = key.clone();
                self.remove(&key);
            }
        }
        while self.entries.len() > capacity {
            let Some((_, key)) = self.done.first_key_value() else {
                break;
            };
            let key = key.clone();
            self.remove(&key);
        }
    }
}

/// Keeps keys in this process, at most `capacity` of them: expired keys go first, then, if the
/// store is still full, the done markers that would expire soonest; a live lease is never
/// evicted (leases are bounded by the deliveries in flight, so the store may hold that many
/// beyond `capacity`). Make `capacity` much larger than the messages in flight. Fine for one
/// process; use the Redis store (`RedisStore`, feature `redis`) when several share the work.
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
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn health(&self) -> Result<(), IdempotencyError> {
        // In this process: up whenever the process is.
        Ok(())
    }

    async fn acquire(&self, key: &str, lease: Duration) -> Result<Lease, IdempotencyError> {
        let mut t = self.table.lock();
        let now = Instant::now();
        match t.live(key, now) {
            Some(Mark::Done) => return Ok(Lease::Done),
            Some(Mark::Processing(_)) => return Ok(Lease::Busy),
            None => {}
        }
        let token = LeaseToken::new();
        t.set(key, Mark::Processing(token.clone()), now + lease);
        t.shrink(self.capacity, now);
        Ok(Lease::Acquired(token))
    }

    async fn renew(
        &self,
        key: &str,
        token: &LeaseToken,
        lease: Duration,
    ) -> Result<bool, IdempotencyError> {
        let mut t = self.table.lock();
        let now = Instant::now();
        if !t.holds(key, token, now) {
            return Ok(false);
        }
        t.set(key, Mark::Processing(token.clone()), now + lease);
        Ok(true)
    }

    async fn complete(
        &self,
        key: &str,
        token: &LeaseToken,
        retention: Duration,
    ) -> Result<bool, IdempotencyError> {
        let mut t = self.table.lock();
        let now = Instant::now();
        match t.live(key, now) {
            Some(Mark::Processing(holder)) if holder != token => return Ok(false),
            Some(Mark::Done) => return Ok(false),
            _ => {}
        }
        t.set(key, Mark::Done, now + retention);
        t.shrink(self.capacity, now);
        Ok(true)
    }

    async fn release(&self, key: &str, token: &LeaseToken) -> Result<bool, IdempotencyError> {
        let mut t = self.table.lock();
        if !t.holds(key, token, Instant::now()) {
            return Ok(false);
        }
        t.remove(key);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::super::contract::token;
    use super::*;

    #[tokio::test]
    async fn follows_the_contract() {
        super::super::contract::check(&MemoryStore::new(100), "mem").await;
    }

    #[tokio::test(start_paused = true)]
    async fn live_leases_outlast_expired_entries() {
        let store = MemoryStore::new(2);
        let long = Duration::from_secs(60);
        token(store.acquire("k", long).await.unwrap());
        let e = token(store.acquire("e", long).await.unwrap());
        store
            .complete("e", &e, Duration::from_millis(1))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let n = token(store.acquire("n", long).await.unwrap());
        // The expired entry went, not the live lease.
        assert_eq!(store.acquire("k", long).await.unwrap(), Lease::Busy);
        // A released key re-acquired is not evicted through a stale record.
        store.release("n", &n).await.unwrap();
        token(store.acquire("n", long).await.unwrap());
        assert_eq!(store.acquire("k", long).await.unwrap(), Lease::Busy);
        assert_eq!(store.acquire("n", long).await.unwrap(), Lease::Busy);
    }

    /// A full store evicts the done marker that expires soonest, never the lease it has just
    /// handed out (a 60 s lease expires long before a 24 h marker).
    #[tokio::test(start_paused = true)]
    async fn a_full_store_keeps_its_live_leases() {
        let store = MemoryStore::new(3);
        let day = Duration::from_secs(24 * 3600);
        let minute = Duration::from_secs(60);
        for k in ["d1", "d2", "d3"] {
            let t = token(store.acquire(k, minute).await.unwrap());
            assert!(store.complete(k, &t, day).await.unwrap());
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        // Full: the new lease stays, the oldest done marker makes room.
        let holder = token(store.acquire("busy", minute).await.unwrap());
        assert_eq!(store.acquire("busy", minute).await.unwrap(), Lease::Busy);
        assert!(matches!(
            store.acquire("d1", minute).await.unwrap(),
            Lease::Acquired(_)
        ));
        assert_eq!(store.acquire("d3", minute).await.unwrap(), Lease::Done);
        // Leases alone may exceed the capacity rather than be evicted.
        let leases = ["l1", "l2", "l3", "l4"];
        for k in leases {
            token(store.acquire(k, minute).await.unwrap());
        }
        for k in leases {
            assert_eq!(store.acquire(k, minute).await.unwrap(), Lease::Busy, "{k}");
        }
        assert_eq!(store.acquire("busy", minute).await.unwrap(), Lease::Busy);
        assert!(store.complete("busy", &holder, day).await.unwrap());
    }

    /// Renewal keeps a lease for as long as its holder renews, on a paused clock.
    #[tokio::test(start_paused = true)]
    async fn renewal_outlasts_the_first_term() {
        let store = MemoryStore::new(100);
        let lease = Duration::from_secs(60);
        let t = token(store.acquire("slow", lease).await.unwrap());
        for _ in 0..10 {
            tokio::time::advance(Duration::from_secs(40)).await;
            assert!(store.renew("slow", &t, lease).await.unwrap());
            assert_eq!(store.acquire("slow", lease).await.unwrap(), Lease::Busy);
        }
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(!store.renew("slow", &t, lease).await.unwrap());
        let next = token(store.acquire("slow", lease).await.unwrap());
        assert!(!store.release("slow", &t).await.unwrap());
        assert!(store.release("slow", &next).await.unwrap());
    }

    #[tokio::test]
    async fn stays_bounded() {
        let store = MemoryStore::new(10);
        for i in 0..100 {
            let k = format!("k{i}");
            let t = token(store.acquire(&k, Duration::from_secs(1)).await.unwrap());
            store
                .complete(&k, &t, Duration::from_secs(60))
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

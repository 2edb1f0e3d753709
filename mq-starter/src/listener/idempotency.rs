//! The idempotency of one listener: taking a message's key before its handler runs, keeping
//! the lease while it runs, and marking the key done after.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::idempotency::{IdempotencyError, IdempotencyStore, Lease, LeaseToken};
use crate::registry::IdempotencyKey;

/// Longest pause between two tries of an unreachable idempotency store.
const STORE_DOWN_PAUSE: Duration = Duration::from_secs(2);

/// Idempotency settings of a listener.
pub(crate) struct Idempotency {
    pub store: Arc<dyn IdempotencyStore>,
    pub key: IdempotencyKey,
    /// Prefix of every key, so that applications sharing a store do not collide.
    pub prefix: String,
    pub lease: Duration,
    pub retention: Duration,
}

/// Takes the lease of `key`. While the store is unreachable it keeps trying (holding this
/// delivery's permit, so the listener stops fetching), up to half the consume timeout: an
/// outage must not use up the message's retries without its handler ever running.
pub(super) async fn acquire(
    idem: &Idempotency,
    key: &str,
    consume_timeout: Duration,
) -> Result<Lease, IdempotencyError> {
    let give_up = Instant::now() + consume_timeout / 2;
    let mut pause = Duration::from_millis(100);
    loop {
        match idem.store.acquire(key, idem.lease).await {
            Err(e) if Instant::now() + pause < give_up => {
                tracing::warn!(error = %e, "idempotency store unavailable; waiting for it");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(STORE_DOWN_PAUSE);
            }
            other => return other,
        }
    }
}

/// Renews the lease of a running handler every third of its term, so that a handler slower
/// than the lease is never run twice at once. Never returns.
pub(super) async fn keep_lease(
    ((key, token), idem): (&(String, LeaseToken), &Idempotency),
) -> std::convert::Infallible {
    let every = (idem.lease / 3).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(every).await;
        match idem.store.renew(key, token, idem.lease).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::error!(key, "idempotency lease lost while the handler runs; a duplicate may run at the same time");
                return std::future::pending().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, key, "idempotency lease not renewed; trying again")
            }
        }
    }
}

/// Marks a key done, retrying while the store is down for as long as the lease still keeps
/// duplicates away.
pub(super) async fn complete(idem: &Idempotency, key: &str, token: &LeaseToken) {
    let give_up = Instant::now() + idem.lease;
    let mut wait = Duration::from_millis(100);
    loop {
        match idem.store.complete(key, token, idem.retention).await {
            Ok(true) => return,
            Ok(false) => {
                tracing::warn!(key, "key not marked done: another delivery holds it now");
                return;
            }
            Err(e) if Instant::now() + wait < give_up => {
                tracing::warn!(error = %e, "cannot mark the key done yet; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                tracing::error!(error = %e, key, "key not marked done; a duplicate may run again");
                return;
            }
        }
    }
}

//! The heartbeat of a member: it proves the member alive to the others and keeps its orderly
//! leases, on its own task, so that a busy handler does not make the member look dead.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::super::Shared;
/// What the heartbeat task keeps alive.
pub(super) struct Presence {
    pub(super) leases: parking_lot::Mutex<Vec<String>>,
}

/// Keeps a member alive and its orderly leases held while it lives.
pub(super) async fn heartbeat(
    shared: Arc<Shared>,
    members: String,
    seen: Option<String>,
    instance: String,
    presence: Arc<Presence>,
) {
    let mut tick = tokio::time::interval(shared.config.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = shared.heartbeat(&members, seen.as_deref(), &instance).await {
            tracing::warn!(members = %members, instance = %instance, error = %e, "heartbeat failed");
            continue;
        }
        let leases = presence.leases.lock().clone();
        for lease in leases {
            if let Ok(false) = shared.lease(&lease, &instance).await {
                tracing::warn!(instance = %instance, lease = %lease, "orderly lease lost");
            }
        }
    }
}

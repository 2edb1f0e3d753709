//! The `Consumer` a member holds: it waits for new records or a change of its group, takes
//! what the group hands it, and leaves the group when closed or dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::group::Group;
use super::Groups;
use crate::broker::{Consumer, Delivery, Disposition, Failure, Receipt};
use crate::error::{BrokerError, Result};
use crate::subscription::Subscription;

/// A member of a consumer group of the embedded broker.
#[derive(Debug)]
pub(crate) struct EmbeddedConsumer {
    groups: Arc<Groups>,
    group: Arc<Group>,
    subscription: Subscription,
    instance: String,
    id: u64,
    left: AtomicBool,
}

impl EmbeddedConsumer {
    /// Member `id` of `group`, which has joined it already.
    pub(super) fn new(
        groups: Arc<Groups>,
        group: Arc<Group>,
        subscription: Subscription,
        instance: String,
        id: u64,
    ) -> Self {
        EmbeddedConsumer {
            groups,
            group,
            subscription,
            instance,
            id,
            left: AtomicBool::new(false),
        }
    }

    fn leave(&self) {
        if !self.left.swap(true, Ordering::AcqRel) {
            self.groups.leave(&self.group, &self.instance, self.id);
        }
    }
}

impl Drop for EmbeddedConsumer {
    fn drop(&mut self) {
        self.leave();
    }
}

#[async_trait]
impl Consumer for EmbeddedConsumer {
    fn subscription(&self) -> &Subscription {
        &self.subscription
    }

    fn instance(&self) -> &str {
        &self.instance
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let deadline = Instant::now() + wait;
        let mut appended = self.groups.store.subscribe_appends();
        let mut changed = self.group.subscribe_changes();
        loop {
            if self.groups.closed.load(Ordering::Acquire) || self.left.load(Ordering::Acquire) {
                return Err(BrokerError::Closed);
            }
            appended.borrow_and_update();
            changed.borrow_and_update();
            let (out, wake) =
                self.groups
                    .collect(&self.group, &self.instance, self.id, max.max(1))?;
            if !out.is_empty() {
                return Ok(out);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let until = wake.map_or(deadline, |w| w.min(deadline)).max(now);
            tokio::select! {
                r = appended.changed() => if r.is_err() { return Err(BrokerError::Closed) },
                r = changed.changed() => if r.is_err() { return Err(BrokerError::Closed) },
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    async fn ack(&self, receipts: &[Receipt]) -> Result<()> {
        self.groups.ack(&self.group, &self.instance, receipts)
    }

    async fn nack(&self, receipt: &Receipt, failure: Failure) -> Result<Disposition> {
        self.groups
            .nack(&self.group, &self.instance, self.id, receipt, failure)
            .await
    }

    async fn dead_letter(&self, receipt: &Receipt, reason: &str) -> Result<()> {
        self.groups
            .dead_letter(&self.group, &self.instance, self.id, receipt, reason)
            .await
    }

    async fn assignment(&self) -> Result<Vec<u32>> {
        let inner = self.group.inner.lock();
        match inner.members.get(&self.instance) {
            Some(m) if m.id == self.id => Ok(m.assigned.clone()),
            _ => Err(BrokerError::Closed),
        }
    }

    async fn close(&self) -> Result<()> {
        self.leave();
        self.groups.persist()
    }
}

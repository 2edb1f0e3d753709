//! Delivery to consumer groups: every group of the broker, and members joining and leaving.
//! Each job has a file of its own: `progress.rs` the window of one queue (RocketMQ's process
//! queue), `group.rs` a group's members, assignment and windows, `deliver.rs` reading
//! messages into the windows and handing them out, `consumer.rs` the `Consumer` a member
//! holds, and `retry.rs` failed deliveries. Queue allocation is in `crate::rebalance`.
//!
//! Each (group, topic) keeps, per queue, a window of the offsets handed out but not yet
//! settled (RocketMQ's process queue). The committed offset is the front of the window, so it
//! never passes an unacknowledged message however many later ones are acknowledged. Because
//! every member lives in this process, the windows belong to the group, not to a member: when a
//! queue moves to another member nothing is delivered twice, and when a member leaves its
//! unacknowledged messages are handed to the others at once.

mod admin;
mod consumer;
mod deliver;
mod group;
mod progress;
mod retry;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::offsets::OffsetStore;
use super::scheduler::DelayScheduler;
use super::store::MessageStore;
use crate::broker::{ConsumerOptions, Receipt};
use crate::clock::Clock;
use crate::error::{BrokerError, Result};
use crate::subscription::{ConsumeFrom, MessageModel, Subscription};
use crate::system_topics::retry_topic;
use consumer::EmbeddedConsumer;
use group::{codes, rebalance, Group, Member};
use progress::QueueProgress;

/// Every consumer group of the broker.
#[derive(Debug)]
pub(crate) struct Groups {
    store: Arc<MessageStore>,
    offsets: Arc<OffsetStore>,
    scheduler: Arc<DelayScheduler>,
    clock: Clock,
    groups: Mutex<HashMap<(String, String), Arc<Group>>>,
    next_id: AtomicU64,
    closed: AtomicBool,
    /// Nacked slots whose retry copies are not yet stored (see `retry.rs`).
    moves: Mutex<Vec<retry::Move>>,
    /// The tasks that settle them once stored.
    settlers: TaskTracker,
}

impl Groups {
    pub fn new(
        store: Arc<MessageStore>,
        offsets: Arc<OffsetStore>,
        scheduler: Arc<DelayScheduler>,
        clock: Clock,
    ) -> Self {
        Groups {
            store,
            offsets,
            scheduler,
            clock,
            groups: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            moves: Mutex::new(Vec::new()),
            settlers: TaskTracker::new(),
        }
    }

    pub fn offsets(&self) -> &Arc<OffsetStore> {
        &self.offsets
    }

    /// Joins a member to its group and returns its consumer.
    pub fn join(
        self: &Arc<Self>,
        subscription: Subscription,
        options: ConsumerOptions,
    ) -> Result<EmbeddedConsumer> {
        if self.closed.load(Ordering::Acquire) {
            return Err(BrokerError::Closed);
        }
        subscription.validate()?;
        let topic = self.store.topic_for_send(&subscription.topic)?;
        let retry_name = retry_topic(&subscription.group, &subscription.topic);
        let retry = self.store.create_topic(&retry_name, 1)?;
        let key = (subscription.group.clone(), subscription.topic.clone());
        let group = {
            let mut groups = self.groups.lock();
            groups
                .entry(key)
                .or_insert_with(|| {
                    Arc::new(Group::new(
                        &topic.queues,
                        &retry.queues,
                        retry_name.clone(),
                        subscription.clone(),
                    ))
                })
                .clone()
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut inner = group.inner.lock();
            if inner.members.is_empty() {
                inner.codes = codes(&subscription.filter);
                inner.subscription = subscription.clone();
            } else if inner.subscription != subscription {
                return Err(BrokerError::InvalidSubscription {
                    group: subscription.group.clone(),
                    reason: format!(
                        "members of a group must subscribe identically: live members use topic {:?}, tags {:?}, {:?}, {:?}",
                        inner.subscription.topic,
                        inner.subscription.filter.to_string(),
                        inner.subscription.model,
                        inner.subscription.mode
                    ),
                });
            }
            if inner.members.contains_key(&options.instance) {
                return Err(BrokerError::InstanceTaken {
                    group: subscription.group.clone(),
                    instance: options.instance.clone(),
                });
            }
            let start = |index: usize, instance: Option<&str>| -> Result<u64> {
                let queue = &group.sources[index];
                let key = group.key(&subscription, index, instance);
                let offset = match self.offsets.get(&key) {
                    Some(stored) => stored.clamp(queue.min_offset(), queue.max_offset()),
                    None => match options.consume_from {
                        ConsumeFrom::Last => queue.max_offset(),
                        ConsumeFrom::First => queue.min_offset(),
                        ConsumeFrom::Timestamp(t) => queue.offset_for_timestamp(
                            t.duration_since(std::time::UNIX_EPOCH)
                                .map(|d| d.as_millis() as u64)
                                .unwrap_or(0),
                        )?,
                    },
                };
                // Record the group at once so that retention keeps what it has not consumed.
                self.offsets.set(key, offset);
                Ok(offset)
            };
            match subscription.model {
                MessageModel::Clustering => {
                    if inner.shared.is_empty() {
                        let mut shared = Vec::with_capacity(group.sources.len());
                        for i in 0..group.sources.len() {
                            shared.push(QueueProgress::new(start(i, None)?));
                        }
                        inner.shared = shared;
                    }
                }
                MessageModel::Broadcasting => {
                    let mut own = Vec::with_capacity(group.sources.len());
                    for i in 0..group.sources.len() {
                        own.push(QueueProgress::new(start(i, Some(&options.instance))?));
                    }
                    inner.own.insert(options.instance.clone(), own);
                }
            }
            inner.members.insert(
                options.instance.clone(),
                Member {
                    id,
                    options: options.clone(),
                    assigned: Vec::new(),
                    cursor: 0,
                },
            );
            rebalance(&mut inner, group.real_queues);
            tracing::info!(
                group = %subscription.group,
                topic = %subscription.topic,
                instance = %options.instance,
                members = inner.members.len(),
                "consumer joined"
            );
        }
        group.bump();
        Ok(EmbeddedConsumer::new(
            self.clone(),
            group,
            subscription,
            options.instance,
            id,
        ))
    }

    /// Removes a member: its unacknowledged deliveries go back to the group.
    fn leave(&self, group: &Group, instance: &str, id: u64) {
        let mut inner = group.inner.lock();
        if inner.members.get(instance).map(|m| m.id) != Some(id) {
            return;
        }
        inner.members.remove(instance);
        let now = Instant::now();
        for p in inner.shared.iter_mut() {
            p.reclaim(now, Some(id));
        }
        if let Some(own) = inner.own.remove(instance) {
            for (q, p) in own.iter().enumerate() {
                self.offsets.set(
                    group.key(&inner.subscription, q, Some(instance)),
                    p.committed(),
                );
            }
        }
        rebalance(&mut inner, group.real_queues);
        tracing::info!(
            group = %inner.subscription.group,
            topic = %inner.subscription.topic,
            instance,
            members = inner.members.len(),
            "consumer left"
        );
        drop(inner);
        group.bump();
    }

    /// Copies every group's committed offsets into the table and saves it.
    pub fn persist(&self) -> Result<()> {
        let groups: Vec<Arc<Group>> = self.groups.lock().values().cloned().collect();
        for group in groups {
            let inner = group.inner.lock();
            for (q, p) in inner.shared.iter().enumerate() {
                self.offsets
                    .set(group.key(&inner.subscription, q, None), p.committed());
            }
            for (instance, own) in &inner.own {
                for (q, p) in own.iter().enumerate() {
                    self.offsets.set(
                        group.key(&inner.subscription, q, Some(instance)),
                        p.committed(),
                    );
                }
            }
        }
        self.offsets.save()
    }

    /// Messages not yet settled by a group on a topic (retries included).
    pub fn lag(&self, group: &str, topic: &str) -> Option<u64> {
        let g = self
            .groups
            .lock()
            .get(&(group.to_owned(), topic.to_owned()))
            .cloned()?;
        let inner = g.inner.lock();
        let lag = |progress: &Vec<QueueProgress>| -> u64 {
            progress
                .iter()
                .zip(&g.sources)
                .map(|(p, cq)| cq.max_offset().saturating_sub(p.committed()))
                .sum()
        };
        Some(match inner.subscription.model {
            MessageModel::Clustering => lag(&inner.shared),
            MessageModel::Broadcasting => inner.own.values().map(lag).max().unwrap_or(0),
        })
    }

    /// Wakes every waiting consumer and makes later calls fail with `Closed`.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        for g in self.groups.lock().values() {
            g.bump();
        }
    }

    fn ack(&self, group: &Group, instance: &str, receipts: &[Receipt]) -> Result<()> {
        let freed = {
            let mut guard = group.inner.lock();
            let progress = guard.progress_mut(instance).ok_or(BrokerError::Closed)?;
            let mut freed = false;
            for r in receipts {
                let p = progress
                    .get_mut(r.queue_id as usize)
                    .ok_or_else(|| BrokerError::UnknownReceipt(format!("{r:?}")))?;
                if p.current(r.token) {
                    freed |= p.settle(r.offset);
                }
            }
            freed
        };
        if freed && group.has_waiters() {
            group.bump();
        }
        Ok(())
    }
}

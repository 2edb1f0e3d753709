//! Delivery to consumer groups: progress per queue, in-flight tracking, redelivery, orderly
//! queues and membership. Failed deliveries are in `retry.rs`, queue allocation in
//! `crate::rebalance`.
//!
//! Each (group, topic) keeps, per queue, a window of the offsets handed out but not yet
//! settled (RocketMQ's process queue). The committed offset is the front of the window, so it
//! never passes an unacknowledged message however many later ones are acknowledged. Because
//! every member lives in this process, the windows belong to the group, not to a member: when a
//! queue moves to another member nothing is delivered twice, and when a member leaves its
//! unacknowledged messages are handed to the others at once.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

use super::consume_queue::{tag_code, ConsumeQueue, CqEntry};
use super::offsets::{OffsetStore, ProgressKey};
use super::scheduler::DelayScheduler;
use super::store::MessageStore;
use super::system_topics;
use crate::broker::{Consumer, ConsumerOptions, Delivery, Disposition, Failure, Receipt};
use crate::clock::Clock;
use crate::error::{BrokerError, Result};
use crate::subscription::{ConsumeFrom, ConsumeMode, MessageModel, Subscription, TagFilter};
use crate::system_topics::retry_topic;

/// Entries read from a consume queue per look.
const READ_AHEAD: usize = 64;

/// RocketMQ's `consumeConcurrentlyMaxSpan`: a queue stops handing out messages while the
/// oldest unsettled one is this far behind the newest handed out, so that one stuck message
/// cannot make the window (and every scan of it) grow without bound.
const MAX_SPAN: usize = 2000;

/// Index entries one look may pass over (filtered out by tag) before it returns, so that a
/// consumer skipping a long backlog does not hold the group's lock for all of it.
const SCAN_BUDGET: usize = 4096;

#[derive(Debug, Clone, Copy)]
pub(super) enum Slot {
    Done,
    InFlight {
        member: u64,
        token: u64,
        deadline: Instant,
        reconsume: u32,
    },
    Ready {
        due: Instant,
        reconsume: u32,
    },
}

/// What is known of the failures of a message retried in place (orderly, broadcasting).
#[derive(Debug, Clone)]
pub(super) struct FailureNote {
    pub(super) first_ms: u64,
    pub(super) last_error: String,
}

#[derive(Debug)]
pub(super) struct QueueProgress {
    /// Every offset below is settled: this is the committed offset.
    base: u64,
    /// Slots for `base..base + window.len()`.
    window: VecDeque<Slot>,
    pub(super) in_flight: usize,
    pub(super) ready: usize,
    pub(super) failures: BTreeMap<u64, FailureNote>,
}

impl QueueProgress {
    fn new(base: u64) -> Self {
        QueueProgress {
            base,
            window: VecDeque::new(),
            in_flight: 0,
            ready: 0,
            failures: BTreeMap::new(),
        }
    }

    fn next(&self) -> u64 {
        self.base + self.window.len() as u64
    }

    pub(super) fn slot(&mut self, offset: u64) -> Option<&mut Slot> {
        offset
            .checked_sub(self.base)
            .and_then(|i| self.window.get_mut(i as usize))
    }

    fn compact(&mut self) {
        while let Some(Slot::Done) = self.window.front() {
            self.window.pop_front();
            self.base += 1;
        }
    }

    /// Settles `offset`; returns whether it was outstanding.
    pub(super) fn settle(&mut self, offset: u64) -> bool {
        let Some(slot) = self.slot(offset) else {
            return false;
        };
        let was = *slot;
        *slot = Slot::Done;
        match was {
            Slot::InFlight { .. } => self.in_flight -= 1,
            Slot::Ready { .. } => self.ready -= 1,
            Slot::Done => return false,
        }
        if !self.failures.is_empty() {
            self.failures.remove(&offset);
        }
        self.compact();
        true
    }

    /// Hands back deliveries whose consumer is gone or whose deadline passed.
    fn reclaim(&mut self, now: Instant, gone: Option<u64>) -> bool {
        if self.in_flight == 0 {
            return false;
        }
        let mut any = false;
        for slot in self.window.iter_mut() {
            if let Slot::InFlight {
                member,
                deadline,
                reconsume,
                ..
            } = *slot
            {
                let left = Some(member) == gone;
                if left || deadline <= now {
                    // A member leaving is not a failed attempt; a timeout is.
                    *slot = Slot::Ready {
                        due: now,
                        reconsume: if left {
                            reconsume
                        } else {
                            reconsume.saturating_add(1)
                        },
                    };
                    self.in_flight -= 1;
                    self.ready += 1;
                    any = true;
                }
            }
        }
        any
    }

    /// The earliest instant something in this window needs attention.
    fn next_wake(&self) -> Option<Instant> {
        if self.in_flight == 0 && self.ready == 0 {
            return None;
        }
        self.window
            .iter()
            .filter_map(|s| match *s {
                Slot::InFlight { deadline, .. } => Some(deadline),
                Slot::Ready { due, .. } => Some(due),
                Slot::Done => None,
            })
            .min()
    }
}

#[derive(Debug)]
pub(super) struct Member {
    pub(super) id: u64,
    pub(super) options: ConsumerOptions,
    assigned: Vec<u32>,
    cursor: usize,
}

#[derive(Debug)]
pub(super) struct GroupInner {
    pub(super) subscription: Subscription,
    /// Tag codes the filter accepts; `None` accepts all.
    codes: Option<Vec<u32>>,
    pub(super) members: BTreeMap<String, Member>,
    /// Clustering progress, by queue id.
    shared: Vec<QueueProgress>,
    /// Broadcasting progress, by member instance and queue id.
    own: HashMap<String, Vec<QueueProgress>>,
}

impl GroupInner {
    /// The windows `instance` works on: the group's (clustering) or its own (broadcasting).
    pub(super) fn progress_mut(&mut self, instance: &str) -> Option<&mut Vec<QueueProgress>> {
        match self.subscription.model {
            MessageModel::Clustering => Some(&mut self.shared),
            MessageModel::Broadcasting => self.own.get_mut(instance),
        }
    }
}

/// One (group, topic).
#[derive(Debug)]
pub(crate) struct Group {
    /// The topic's queues, then the group's retry queue (index `real_queues`).
    pub(super) sources: Vec<Arc<ConsumeQueue>>,
    pub(super) real_queues: u32,
    pub(super) retry_topic: String,
    pub(super) inner: Mutex<GroupInner>,
    changed: watch::Sender<u64>,
}

impl Group {
    pub(super) fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// The progress key of source `index` for `instance` (broadcasting) or the group.
    fn key(&self, sub: &Subscription, index: usize, instance: Option<&str>) -> ProgressKey {
        let (topic, queue) = if index as u32 >= self.real_queues {
            (self.retry_topic.clone(), 0)
        } else {
            (sub.topic.clone(), index as u32)
        };
        ProgressKey {
            topic,
            group: sub.group.clone(),
            instance: instance.map(str::to_owned),
            queue,
        }
    }
}

/// What a nack found in the slot of a delivery.
pub(super) struct Nacked {
    pub(super) model: MessageModel,
    pub(super) mode: ConsumeMode,
    pub(super) options: ConsumerOptions,
    pub(super) reconsume: u32,
    pub(super) note: Option<FailureNote>,
}

/// Every consumer group of the broker.
#[derive(Debug)]
pub(crate) struct Groups {
    pub(super) store: Arc<MessageStore>,
    offsets: Arc<OffsetStore>,
    pub(super) scheduler: Arc<DelayScheduler>,
    pub(super) clock: Clock,
    groups: Mutex<HashMap<(String, String), Arc<Group>>>,
    next_id: AtomicU64,
    closed: AtomicBool,
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
                    let mut sources = topic.queues.clone();
                    sources.extend(retry.queues.iter().cloned());
                    Arc::new(Group {
                        sources,
                        real_queues: topic.queues.len() as u32,
                        retry_topic: retry_name.clone(),
                        inner: Mutex::new(GroupInner {
                            subscription: subscription.clone(),
                            codes: codes(&subscription.filter),
                            members: BTreeMap::new(),
                            shared: Vec::new(),
                            own: HashMap::new(),
                        }),
                        changed: watch::channel(0).0,
                    })
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
        Ok(EmbeddedConsumer {
            groups: self.clone(),
            group,
            subscription,
            instance: options.instance,
            id,
            left: AtomicBool::new(false),
        })
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
                self.offsets
                    .set(group.key(&inner.subscription, q, Some(instance)), p.base);
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
                    .set(group.key(&inner.subscription, q, None), p.base);
            }
            for (instance, own) in &inner.own {
                for (q, p) in own.iter().enumerate() {
                    self.offsets
                        .set(group.key(&inner.subscription, q, Some(instance)), p.base);
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
                .map(|(p, cq)| cq.max_offset().saturating_sub(p.base))
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

    /// Up to `max` deliveries for one member from its queues and the group's retry queue, and
    /// when to look again if there were none.
    fn collect(
        &self,
        group: &Group,
        instance: &str,
        id: u64,
        max: usize,
    ) -> Result<(Vec<Delivery>, Option<Instant>)> {
        let mut inner = group.inner.lock();
        let GroupInner {
            subscription,
            codes,
            members,
            shared,
            own,
        } = &mut *inner;
        let member = match members.get_mut(instance) {
            Some(m) if m.id == id => m,
            _ => return Err(BrokerError::Closed),
        };
        let progress: &mut Vec<QueueProgress> = match subscription.model {
            MessageModel::Clustering => shared,
            MessageModel::Broadcasting => own.get_mut(instance).ok_or(BrokerError::Closed)?,
        };
        let now = Instant::now();
        let orderly = subscription.mode == ConsumeMode::Orderly;
        let mut out = Vec::new();
        let mut wake: Option<Instant> = None;
        let n = member.assigned.len();
        // The member's queues in turn, then the group's retry queue, which every member serves.
        for k in 0..=n {
            if out.len() >= max {
                break;
            }
            let q = if k < n {
                member.assigned[(member.cursor + k) % n]
            } else {
                group.real_queues
            };
            let Some(p) = progress.get_mut(q as usize) else {
                continue;
            };
            let cq = &group.sources[q as usize];
            p.reclaim(now, None);
            let mut plan: Vec<(u64, u32)> = Vec::new(); // (offset, reconsume) of slots to send again
            let room = max - out.len();
            let want = if orderly {
                // One message of the queue out at a time, in offset order.
                match p.window.front().copied() {
                    Some(Slot::Ready { due, reconsume }) if due <= now => {
                        plan.push((p.base, reconsume));
                        0
                    }
                    Some(_) => 0,
                    None => 1,
                }
            } else {
                if p.ready > 0 {
                    for (i, slot) in p.window.iter().enumerate() {
                        if plan.len() >= room {
                            break;
                        }
                        if let Slot::Ready { due, reconsume } = *slot {
                            if due <= now {
                                plan.push((p.base + i as u64, reconsume));
                            }
                        }
                    }
                }
                let limit = member
                    .options
                    .max_in_flight_per_queue
                    .saturating_sub(p.in_flight + p.ready)
                    .min(MAX_SPAN.saturating_sub(p.window.len()));
                (room - plan.len()).min(limit)
            };
            let mut step = Ok(());
            if want > 0 {
                let retry = q == group.real_queues;
                step = self.pull(
                    p,
                    (q, retry),
                    cq,
                    codes,
                    subscription,
                    member,
                    now,
                    want,
                    &mut out,
                );
            }
            for (offset, reconsume) in plan {
                if step.is_ok() {
                    step = self.resend(p, q, cq, member, offset, reconsume, now, &mut out);
                }
            }
            if let Err(e) = step {
                // What was already handed out must reach the consumer, or it would wait out
                // the consume timeout.
                if out.is_empty() {
                    return Err(e);
                }
                tracing::warn!(error = %e, queue = q, "reading a queue failed; returning what was read");
                break;
            }
            if let Some(w) = p.next_wake() {
                wake = Some(wake.map_or(w, |x| x.min(w)));
            }
        }
        if n > 0 {
            member.cursor = (member.cursor + 1) % n;
        }
        Ok((out, wake))
    }

    /// Reads new messages of a queue into the window.
    #[allow(clippy::too_many_arguments)]
    fn pull(
        &self,
        p: &mut QueueProgress,
        (source, retry): (u32, bool),
        cq: &ConsumeQueue,
        codes: &Option<Vec<u32>>,
        subscription: &Subscription,
        member: &Member,
        now: Instant,
        want: usize,
        out: &mut Vec<Delivery>,
    ) -> Result<()> {
        let mut taken = 0;
        let mut scanned = 0;
        let mut topic = String::new();
        let min_position = self.store.commit_log().min_position();
        while taken < want && scanned < SCAN_BUDGET {
            let from = p.next().max(cq.min_offset());
            if from > p.next() {
                // Retention removed what this group had not reached; skip the gap.
                for _ in p.next()..from {
                    p.window.push_back(Slot::Done);
                }
                p.compact();
            }
            let entries = cq.read(from, READ_AHEAD.min(want - taken + 16))?;
            if entries.is_empty() {
                break;
            }
            // Keep only what the tag codes accept; the rest is settled without a read.
            let mut wanted: Vec<(usize, CqEntry)> = Vec::new();
            let mut consumed = 0;
            for (i, e) in entries.iter().enumerate() {
                if wanted.len() + taken >= want {
                    break;
                }
                consumed = i + 1;
                // Retried messages passed the filter on their first delivery.
                let pass = e.size > 0
                    && (retry || codes.as_ref().is_none_or(|c| c.contains(&e.tag_code)))
                    && e.position >= min_position;
                if pass {
                    wanted.push((i, *e));
                }
            }
            let records = {
                if topic.is_empty() && !wanted.is_empty() {
                    // The topic a record must name; needed only when something is read.
                    topic = if retry {
                        retry_topic(&subscription.group, &subscription.topic)
                    } else {
                        subscription.topic.clone()
                    };
                }
                let list: Vec<CqEntry> = wanted.iter().map(|(_, e)| *e).collect();
                self.store.read_records(&list)
            };
            let mut records = wanted.iter().map(|(i, _)| *i).zip(records).peekable();
            for i in 0..consumed {
                let offset = from + i as u64;
                let record = match records.peek() {
                    Some((j, _)) if *j == i => records.next().map(|(_, r)| r),
                    _ => None,
                };
                let Some(record) = record else {
                    p.window.push_back(Slot::Done);
                    continue;
                };
                let rec = match self.store.check_placement(Some(&topic), cq, offset, record) {
                    Ok(rec) => rec,
                    Err(_) => {
                        // Reported by the store; a bad record is never served. The index
                        // entry may be what is damaged: the log may still hold the record.
                        match self.store.refind(&topic, cq, offset) {
                            Some(rec) => rec,
                            None => {
                                p.window.push_back(Slot::Done);
                                continue;
                            }
                        }
                    }
                };
                if !(retry || subscription.filter.matches(rec.message.tag.as_deref())) {
                    p.window.push_back(Slot::Done);
                    continue;
                }
                let token = self.next_id.fetch_add(1, Ordering::Relaxed);
                p.window.push_back(Slot::InFlight {
                    member: member.id,
                    token,
                    deadline: now + member.options.consume_timeout,
                    reconsume: rec.message.reconsume_times,
                });
                p.in_flight += 1;
                taken += 1;
                out.push(Delivery {
                    message: system_topics::user_view(rec.message),
                    receipt: Receipt {
                        queue_id: source,
                        offset,
                        token,
                    },
                });
            }
            p.compact();
            scanned += consumed;
            if consumed < entries.len() {
                break;
            }
        }
        Ok(())
    }

    /// Delivers again a slot that was handed back or timed out.
    #[allow(clippy::too_many_arguments)]
    fn resend(
        &self,
        p: &mut QueueProgress,
        source: u32,
        cq: &ConsumeQueue,
        member: &Member,
        offset: u64,
        reconsume: u32,
        now: Instant,
        out: &mut Vec<Delivery>,
    ) -> Result<()> {
        let min_position = self.store.commit_log().min_position();
        let record = match cq.entry(offset)? {
            Some(e) if e.size > 0 && e.position >= min_position => self
                .store
                .read_records(&[e])
                .pop()
                .map(|r| self.store.check_placement(None, cq, offset, r)),
            _ => None,
        };
        let token = self.next_id.fetch_add(1, Ordering::Relaxed);
        let Some(slot) = p.slot(offset) else {
            return Ok(());
        };
        match record {
            Some(Ok(rec)) => {
                *slot = Slot::InFlight {
                    member: member.id,
                    token,
                    deadline: now + member.options.consume_timeout,
                    reconsume,
                };
                p.ready -= 1;
                p.in_flight += 1;
                let mut message = system_topics::user_view(rec.message);
                message.reconsume_times = reconsume;
                out.push(Delivery {
                    message,
                    receipt: Receipt {
                        queue_id: source,
                        offset,
                        token,
                    },
                });
            }
            _ => {
                // Gone (retention) or corrupt (reported): nothing left to deliver.
                p.settle(offset);
            }
        }
        Ok(())
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
                freed |= p.settle(r.offset);
            }
            freed
        };
        if freed && self.has_waiters(group) {
            group.bump();
        }
        Ok(())
    }

    fn has_waiters(&self, group: &Group) -> bool {
        group.changed.receiver_count() > 0
    }
}

fn codes(filter: &TagFilter) -> Option<Vec<u32>> {
    match filter {
        TagFilter::All => None,
        TagFilter::Tags(tags) => Some(tags.iter().map(|t| tag_code(Some(t))).collect()),
    }
}

/// RocketMQ's `AllocateMessageQueueAveragely` over members sorted by name (clustering), or
/// every queue to every member (broadcasting).
fn rebalance(inner: &mut GroupInner, queue_count: u32) {
    let broadcasting = inner.subscription.model == MessageModel::Broadcasting;
    let m = inner.members.len() as u32;
    for (i, member) in inner.members.values_mut().enumerate() {
        member.assigned = if broadcasting {
            (0..queue_count).collect()
        } else {
            crate::rebalance::allocate(queue_count, m, i as u32)
        };
        member.cursor = 0;
    }
}

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
        let mut changed = self.group.changed.subscribe();
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

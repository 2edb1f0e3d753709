//! The delivery loop of one member on Redis: reads its queues through the group's Redis
//! consumer group, settles deliveries with `XACK`, takes over what dead members held and what
//! outlived `consume-timeout`, and retries in place (orderly, broadcasting) or through the
//! group's retry stream (concurrent clustering).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ::redis::streams::{
    StreamAutoClaimReply, StreamClaimReply, StreamPendingReply, StreamReadReply,
};
use ::redis::Value;
use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use crate::broker::{Consumer, ConsumerOptions, Delivery, Disposition, Failure, Receipt};
use crate::dead_letter;
use crate::error::{BackendErrorKind, BrokerError, Result};
use crate::message::MessageView;
use crate::retry::{FailedDelivery, Verdict};
use crate::subscription::{ConsumeFrom, ConsumeMode, MessageModel, Subscription};
use crate::system_topics::retry_topic;

use super::dead_letter::{bury, decode_entry};
use super::envelope::Envelope;
use super::group::assign;
use super::keys::{entry_id, offset_of};
use super::{scheduler, Shared};

/// Entries taken over from dead members per stream and pass.
const CLAIM_BATCH: usize = 256;

/// One stream this member reads: a queue of the topic, or the group's retry stream.
struct Source {
    topic: String,
    queue: u32,
    stream: String,
    attempts: String,
    /// The orderly lease key (orderly queues only).
    lease: Option<String>,
}

/// An entry read (or taken over) but not handed out yet.
struct Fetched {
    offset: u64,
    view: MessageView,
}

#[derive(Clone)]
struct InFlight {
    token: u64,
    view: MessageView,
    first_failure_ms: Option<u64>,
}

/// A delivery that failed and waits to be retried in place.
struct Ready {
    source: usize,
    offset: u64,
    due: Instant,
    view: MessageView,
    first_failure_ms: u64,
}

#[derive(Default)]
struct State {
    /// Per source: this member reads it now.
    owned: Vec<bool>,
    assigned: Vec<u32>,
    backlog: Vec<VecDeque<Fetched>>,
    in_flight: HashMap<(usize, u64), InFlight>,
    per_source: Vec<usize>,
    ready: Vec<Ready>,
    next_token: u64,
    next_refresh: Option<Instant>,
    next_timeout_scan: Option<Instant>,
    /// Per source: own pending entries may be missing from this state (first read after
    /// joining, or a read whose reply was lost to a cancelled or failed `receive`).
    unsure: Vec<bool>,
    /// The source the next pass starts with, so that no queue is always served last.
    rotate: usize,
    /// Per orderly source: no other member holds an entry of it (checked once after the
    /// queue was taken over, so that what the previous owner holds goes first).
    clear: Vec<bool>,
}

/// What the heartbeat task keeps alive.
struct Presence {
    leases: parking_lot::Mutex<Vec<String>>,
}

/// A member of a consumer group on Redis.
pub(crate) struct RedisConsumer {
    shared: Arc<Shared>,
    subscription: Subscription,
    options: ConsumerOptions,
    /// The Redis consumer group: the mq group, or one per member when broadcasting.
    rgroup: String,
    /// The group's members set on this topic.
    members: String,
    /// Broadcasting: where this member's last heartbeat is kept for retention.
    seen: Option<String>,
    sources: Vec<Source>,
    queue_count: u32,
    state: tokio::sync::Mutex<State>,
    presence: Arc<Presence>,
    /// Woken by stores into the topic and the retry stream, and by this member's own
    /// settlements (capacity freed, retries queued).
    signals: [Arc<Notify>; 2],
    wake: Notify,
    closed: AtomicBool,
    /// Aborted when dropped: at `leave`, or with the consumer.
    heartbeat: parking_lot::Mutex<Option<AbortOnDropHandle<()>>>,
}

fn busy_group(e: &BrokerError) -> bool {
    e.backend_kind() == Some(BackendErrorKind::AlreadyExists)
}

impl RedisConsumer {
    pub(crate) async fn join(
        shared: Arc<Shared>,
        subscription: Subscription,
        options: ConsumerOptions,
    ) -> Result<Self> {
        subscription.validate()?;
        let queue_count = shared.ensure_topic(&subscription.topic).await?;
        shared.join_group(&subscription, &options).await?;
        let group = &subscription.group;
        let rgroup = match subscription.model {
            MessageModel::Clustering => group.clone(),
            MessageModel::Broadcasting => format!("{group}@{}", options.instance),
        };
        let orderly = subscription.mode == ConsumeMode::Orderly;
        let mut sources: Vec<Source> = (0..queue_count)
            .map(|q| Source {
                topic: subscription.topic.clone(),
                queue: q,
                stream: shared.keys.stream(&subscription.topic, q),
                attempts: shared.keys.attempts(&subscription.topic, q, &rgroup),
                lease: orderly.then(|| shared.keys.lease(&subscription.topic, q, group)),
            })
            .collect();
        let retry = retry_topic(group, &subscription.topic);
        sources.push(Source {
            stream: shared.keys.stream(&retry, 0),
            attempts: shared.keys.attempts(&retry, 0, &rgroup),
            topic: retry,
            queue: 0,
            lease: None,
        });
        let start = start_id(
            &shared,
            &sources[0..queue_count as usize],
            options.consume_from,
        )
        .await?;
        for (i, s) in sources.iter().enumerate() {
            let from = if i == queue_count as usize {
                "0".to_owned()
            } else {
                start[i].clone()
            };
            let created: Result<()> = shared
                .redis
                .query(
                    "creating a consumer group",
                    ::redis::cmd("XGROUP")
                        .arg("CREATE")
                        .arg(&s.stream)
                        .arg(&rgroup)
                        .arg(from)
                        .arg("MKSTREAM")
                        .clone(),
                )
                .await;
            match created {
                Err(e) if !busy_group(&e) => return Err(e),
                _ => {}
            }
        }
        let members = shared.keys.members(group, &subscription.topic);
        let seen =
            (subscription.model == MessageModel::Broadcasting).then(|| shared.keys.seen(group));
        if let Some(seen) = &seen {
            shared
                .heartbeat(&members, Some(seen), &options.instance)
                .await?;
        }
        shared
            .members
            .lock()
            .push((members.clone(), options.instance.clone()));
        // The retry stream is a topic of one queue, so retention trims it too.
        shared
            .create_topic(&sources[queue_count as usize].topic, 1)
            .await?;
        let n = sources.len();
        let presence = Arc::new(Presence {
            leases: parking_lot::Mutex::new(Vec::new()),
        });
        let shared_signals = (
            shared.signal(&subscription.topic),
            shared.signal(&sources[queue_count as usize].topic),
        );
        let consumer = RedisConsumer {
            heartbeat: parking_lot::Mutex::new(Some(AbortOnDropHandle::new(tokio::spawn(
                heartbeat(
                    shared.clone(),
                    members.clone(),
                    seen.clone(),
                    options.instance.clone(),
                    presence.clone(),
                ),
            )))),
            shared,
            subscription,
            options,
            rgroup,
            members,
            seen,
            sources,
            queue_count,
            state: tokio::sync::Mutex::new(State {
                owned: vec![false; n],
                backlog: (0..n).map(|_| VecDeque::new()).collect(),
                per_source: vec![0; n],
                unsure: vec![true; n],
                clear: vec![false; n],
                ..State::default()
            }),
            presence,
            signals: [shared_signals.0, shared_signals.1],
            wake: Notify::new(),
            closed: AtomicBool::new(false),
        };
        Ok(consumer)
    }

    fn retry_source(&self) -> usize {
        self.queue_count as usize
    }

    fn orderly(&self) -> bool {
        self.subscription.mode == ConsumeMode::Orderly
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) || self.shared.closed.load(Ordering::Acquire) {
            Err(BrokerError::Closed)
        } else {
            Ok(())
        }
    }

    /// Recomputes the assignment, takes or gives up orderly leases, and takes over what dead
    /// members of the group left unacknowledged.
    async fn refresh(&self, st: &mut State) -> Result<()> {
        let shared = &self.shared;
        let me = &self.options.instance;
        let live = shared
            .heartbeat_and_members(&self.members, self.seen.as_deref(), me)
            .await?;
        let assigned = assign(self.subscription.model, self.queue_count, &live, me);
        let mut leases = Vec::new();
        for (i, source) in self.sources.iter().enumerate() {
            // An orderly queue stays with this member until what it holds of it is settled,
            // so that the next owner cannot overtake it.
            let wanted = i == self.retry_source()
                || assigned.contains(&(i as u32))
                || (source.lease.is_some() && st.owned[i] && Self::holds(st, i));
            let owned = match (&source.lease, wanted) {
                (Some(lease), true) => {
                    let held = shared.lease(lease, me).await?;
                    if held {
                        leases.push(lease.clone());
                    }
                    held
                }
                (Some(lease), false) => {
                    if st.owned[i] {
                        shared.release(lease, me).await?;
                    }
                    false
                }
                (None, wanted) => wanted,
            };
            if !owned {
                st.clear[i] = false;
            }
            st.owned[i] = owned;
        }
        *self.presence.leases.lock() = leases;
        st.assigned = assigned;
        if self.subscription.model == MessageModel::Clustering {
            self.take_over(st, &live).await?;
        }
        st.next_refresh = Some(Instant::now() + self.shared.config.heartbeat_interval);
        Ok(())
    }

    /// Claims the entries that members no longer alive left pending on the owned sources.
    async fn take_over(&self, st: &mut State, live: &[String]) -> Result<()> {
        let owned: Vec<usize> = (0..self.sources.len()).filter(|i| st.owned[*i]).collect();
        let mut pipe = ::redis::pipe();
        for i in &owned {
            pipe.cmd("XPENDING")
                .arg(&self.sources[*i].stream)
                .arg(&self.rgroup);
        }
        let summaries: Vec<StreamPendingReply> = self
            .shared
            .redis
            .pipe("reading pending entries", pipe)
            .await?;
        for (i, summary) in owned.into_iter().zip(summaries) {
            if let StreamPendingReply::Data(data) = summary {
                self.take_over_source(st, i, data.consumers, live).await?;
            }
        }
        Ok(())
    }

    async fn take_over_source(
        &self,
        st: &mut State,
        i: usize,
        consumers: Vec<::redis::streams::StreamInfoConsumer>,
        live: &[String],
    ) -> Result<()> {
        let source = &self.sources[i];
        let me = &self.options.instance;
        for c in consumers {
            if c.name == *me || live.contains(&c.name) {
                continue;
            }
            let pending: ::redis::streams::StreamPendingCountReply = self
                .shared
                .redis
                .query(
                    "reading a dead member's entries",
                    ::redis::cmd("XPENDING")
                        .arg(&source.stream)
                        .arg(&self.rgroup)
                        .arg("-")
                        .arg("+")
                        .arg(CLAIM_BATCH)
                        .arg(&c.name)
                        .clone(),
                )
                .await?;
            if pending.ids.is_empty() {
                continue;
            }
            let mut cmd = ::redis::cmd("XCLAIM");
            // Not idle for a heartbeat: another member has just claimed it.
            let min_idle = self.shared.config.heartbeat_interval.as_millis() as u64;
            cmd.arg(&source.stream)
                .arg(&self.rgroup)
                .arg(me)
                .arg(min_idle);
            for p in &pending.ids {
                cmd.arg(&p.id);
            }
            // Sent once, and `unsure` until its reply is in: a lost reply leaves the claimed
            // entries pending here, and only `recover` finds them.
            let was_unsure = std::mem::replace(&mut st.unsure[i], true);
            let mut pipe = ::redis::pipe();
            pipe.add_command(cmd);
            let (claimed,): (StreamClaimReply,) = self
                .shared
                .redis
                .pipe_once("taking over a dead member's entries", pipe)
                .await?;
            st.unsure[i] = was_unsure;
            tracing::info!(
                group = %self.subscription.group,
                from = %c.name,
                to = %me,
                entries = claimed.ids.len(),
                "took over the entries of a member that left"
            );
            let entries = claimed
                .ids
                .into_iter()
                .map(|e| (e.id, e.map))
                .collect::<Vec<_>>();
            self.enqueue(st, i, entries, false).await?;
        }
        Ok(())
    }

    /// Whether this member has anything of source `i` out, waiting or fetched.
    fn holds(st: &State, i: usize) -> bool {
        st.per_source[i] > 0 || !st.backlog[i].is_empty() || st.ready.iter().any(|r| r.source == i)
    }

    /// Reads back this member's own pending entries of source `i` that its state does not
    /// track: after a restart under the same instance name, or after a read whose reply was
    /// lost. They come before anything new.
    async fn recover(&self, st: &mut State, i: usize) -> Result<()> {
        let mut after = "0".to_owned();
        loop {
            let reply: Option<StreamReadReply> = self
                .shared
                .redis
                .query(
                    "reading own pending entries",
                    ::redis::cmd("XREADGROUP")
                        .arg("GROUP")
                        .arg(&self.rgroup)
                        .arg(&self.options.instance)
                        .arg("COUNT")
                        .arg(CLAIM_BATCH)
                        .arg("STREAMS")
                        .arg(&self.sources[i].stream)
                        .arg(&after)
                        .clone(),
                )
                .await?;
            let ids: Vec<_> = reply
                .into_iter()
                .flat_map(|r| r.keys)
                .flat_map(|k| k.ids)
                .collect();
            let Some(last) = ids.last().map(|e| e.id.clone()) else {
                break;
            };
            let page = ids.len();
            let entries = ids
                .into_iter()
                .filter(|e| !e.map.is_empty())
                .filter(|e| {
                    offset_of(&e.id).is_some_and(|o| {
                        !st.in_flight.contains_key(&(i, o))
                            && !st.ready.iter().any(|r| r.source == i && r.offset == o)
                    })
                })
                .map(|e| (e.id, e.map))
                .collect();
            self.enqueue(st, i, entries, false).await?;
            if page < CLAIM_BATCH {
                break;
            }
            after = last;
        }
        st.unsure[i] = false;
        Ok(())
    }

    /// Whether another member still holds entries of orderly source `i`; until it settles
    /// them this member does not read the queue.
    async fn others_hold(&self, i: usize) -> Result<bool> {
        let summary: StreamPendingReply = self
            .shared
            .redis
            .query(
                "reading pending entries",
                ::redis::cmd("XPENDING")
                    .arg(&self.sources[i].stream)
                    .arg(&self.rgroup)
                    .clone(),
            )
            .await?;
        Ok(match summary {
            StreamPendingReply::Data(data) => data
                .consumers
                .iter()
                .any(|c| c.name != self.options.instance && c.pending > 0),
            _ => false,
        })
    }

    /// Redelivers entries held longer than `consume-timeout` (by anyone), counting an attempt.
    async fn timeout_scan(&self, st: &mut State) -> Result<()> {
        let idle = self.options.consume_timeout.as_millis() as u64;
        for i in 0..self.sources.len() {
            if !st.owned[i] {
                continue;
            }
            // Sent once, as the claim of a dead member's entries (see `take_over_source`).
            let was_unsure = std::mem::replace(&mut st.unsure[i], true);
            let mut pipe = ::redis::pipe();
            pipe.cmd("XAUTOCLAIM")
                .arg(&self.sources[i].stream)
                .arg(&self.rgroup)
                .arg(&self.options.instance)
                .arg(idle)
                .arg("0-0")
                .arg("COUNT")
                .arg(CLAIM_BATCH);
            let (reply,): (StreamAutoClaimReply,) = self
                .shared
                .redis
                .pipe_once("redelivering timed-out entries", pipe)
                .await?;
            st.unsure[i] = was_unsure;
            let mut timed_out = Vec::new();
            for e in reply.claimed {
                let Some(offset) = offset_of(&e.id) else {
                    continue;
                };
                // Waiting for an in-place retry is not a timeout.
                if st.ready.iter().any(|r| r.source == i && r.offset == offset) {
                    continue;
                }
                // Fetched but not handed out yet: not an attempt, and it is still here.
                if st.backlog[i].iter().any(|f| f.offset == offset) {
                    continue;
                }
                if st.in_flight.remove(&(i, offset)).is_some() {
                    st.per_source[i] -= 1;
                }
                timed_out.push((e.id, e.map));
            }
            if !timed_out.is_empty() {
                let mut pipe = ::redis::pipe();
                for (id, _) in &timed_out {
                    pipe.cmd("HINCRBY")
                        .arg(&self.sources[i].attempts)
                        .arg(offset_of(id).unwrap_or(0))
                        .arg(1)
                        .ignore();
                }
                self.shared
                    .redis
                    .pipe::<()>("counting timed-out attempts", pipe)
                    .await?;
                tracing::info!(
                    group = %self.subscription.group,
                    entries = timed_out.len(),
                    "redelivering messages not acknowledged within consume-timeout"
                );
                self.enqueue(st, i, timed_out, false).await?;
            }
        }
        let every = (self.options.consume_timeout / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(10));
        st.next_timeout_scan = Some(Instant::now() + every);
        Ok(())
    }

    /// Decodes entries into the backlog of source `i`, in offset order; filtered-out and
    /// unreadable entries are acknowledged. `fresh` entries were never delivered before.
    async fn enqueue(
        &self,
        st: &mut State,
        i: usize,
        entries: Vec<(String, HashMap<String, Value>)>,
        fresh: bool,
    ) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let source = &self.sources[i];
        let offsets: Vec<u64> = entries
            .iter()
            .map(|(id, _)| offset_of(id).unwrap_or(0))
            .collect();
        let extra: Vec<Option<u32>> = if fresh {
            vec![None; entries.len()]
        } else {
            let mut cmd = ::redis::cmd("HMGET");
            cmd.arg(&source.attempts);
            for o in &offsets {
                cmd.arg(*o);
            }
            self.shared.redis.query("reading attempts", cmd).await?
        };
        let mut skip = Vec::new();
        for (((id, map), offset), extra) in entries.into_iter().zip(offsets).zip(extra) {
            match decode_entry(&map, source.queue, offset, extra.unwrap_or(0)) {
                Ok(view) => {
                    if i != self.retry_source()
                        && !self.subscription.filter.matches(view.tag.as_deref())
                    {
                        skip.push(id);
                        continue;
                    }
                    let backlog = &mut st.backlog[i];
                    if backlog.iter().any(|f| f.offset == offset) {
                        continue;
                    }
                    let at = backlog.partition_point(|f| f.offset < offset);
                    backlog.insert(at, Fetched { offset, view });
                }
                Err(e) => {
                    tracing::error!(
                        stream = %source.stream,
                        entry = %id,
                        error = %e,
                        "unreadable stream entry reported and skipped"
                    );
                    skip.push(id);
                }
            }
        }
        if !skip.is_empty() {
            let mut cmd = ::redis::cmd("XACK");
            cmd.arg(&source.stream).arg(&self.rgroup);
            for id in &skip {
                cmd.arg(id);
            }
            let _: u64 = self.shared.redis.query("skipping entries", cmd).await?;
        }
        Ok(())
    }

    /// How many more deliveries source `i` may have out.
    fn capacity(&self, st: &State, i: usize) -> usize {
        let waiting = st.ready.iter().filter(|r| r.source == i).count();
        let out = st.per_source[i] + waiting;
        if self.orderly() && i != self.retry_source() {
            usize::from(out == 0)
        } else {
            self.options.max_in_flight_per_queue.saturating_sub(out)
        }
    }

    fn hand_out(
        &self,
        st: &mut State,
        i: usize,
        offset: u64,
        view: MessageView,
        first_failure_ms: Option<u64>,
    ) -> Delivery {
        st.next_token += 1;
        let token = st.next_token;
        st.per_source[i] += 1;
        st.in_flight.insert(
            (i, offset),
            InFlight {
                token,
                view: view.clone(),
                first_failure_ms,
            },
        );
        Delivery {
            message: view,
            receipt: Receipt {
                queue_id: i as u32,
                offset,
                token,
            },
        }
    }

    /// One pass: due in-place retries, then taken-over and pending entries, then new ones.
    async fn fetch(&self, st: &mut State, max: usize) -> Result<Vec<Delivery>> {
        let now = Instant::now();
        if st.next_refresh.is_none_or(|t| now >= t) {
            self.refresh(st).await?;
        }
        if st.next_timeout_scan.is_none_or(|t| now >= t) {
            self.timeout_scan(st).await?;
        }
        for i in 0..self.sources.len() {
            if st.owned[i] && st.unsure[i] {
                self.recover(st, i).await?;
            }
        }
        let mut out = Vec::new();
        // In-place retries that are due, oldest first.
        st.ready.sort_by_key(|r| (r.due, r.offset));
        let mut k = 0;
        while k < st.ready.len() && out.len() < max {
            let r = &st.ready[k];
            if r.due <= now
                && st.owned[r.source]
                && (!self.orderly() || st.per_source[r.source] == 0)
            {
                let r = st.ready.remove(k);
                let d = self.hand_out(st, r.source, r.offset, r.view, Some(r.first_failure_ms));
                out.push(d);
            } else {
                k += 1;
            }
        }
        // Then the backlog, and new entries where there is room.
        let mut reads = Vec::new();
        let n = self.sources.len();
        st.rotate = (st.rotate + 1) % n;
        for k in 0..n {
            let i = (st.rotate + k) % n;
            if !st.owned[i] {
                continue;
            }
            while out.len() < max && self.capacity(st, i) > 0 {
                let Some(f) = st.backlog[i].pop_front() else {
                    break;
                };
                out.push(self.hand_out(st, i, f.offset, f.view, None));
            }
            let mine = i == self.retry_source() || st.assigned.contains(&(i as u32));
            let room = self.capacity(st, i).min(max.saturating_sub(out.len()));
            if mine && room > 0 && st.backlog[i].is_empty() {
                reads.push((i, room));
            }
        }
        if let Err(e) = self.read_new(st, reads, max, &mut out).await {
            if out.is_empty() {
                return Err(e);
            }
            // What was handed out stands; the lost reply is recovered on the next pass.
            tracing::warn!(group = %self.subscription.group, error = %e, "reading new messages failed");
        }
        Ok(out)
    }

    /// Reads new entries of the sources in `reads` (source, room) into the backlog and hands
    /// out what fits in `max`.
    async fn read_new(
        &self,
        st: &mut State,
        reads: Vec<(usize, usize)>,
        max: usize,
        out: &mut Vec<Delivery>,
    ) -> Result<()> {
        let mut ready_reads = Vec::with_capacity(reads.len());
        for (i, room) in reads {
            if self.orderly() && i != self.retry_source() && !st.clear[i] {
                if self.others_hold(i).await? {
                    continue;
                }
                st.clear[i] = true;
            }
            ready_reads.push((i, room));
        }
        if ready_reads.is_empty() {
            return Ok(());
        }
        let mut pipe = ::redis::pipe();
        for (i, room) in &ready_reads {
            // Until the reply is in this state, the entries it hands over may be lost.
            st.unsure[*i] = true;
            pipe.cmd("XREADGROUP")
                .arg("GROUP")
                .arg(&self.rgroup)
                .arg(&self.options.instance)
                .arg("COUNT")
                .arg(*room)
                .arg("STREAMS")
                .arg(&self.sources[*i].stream)
                .arg(">");
        }
        // Not repeated on a dropped connection: a second read would hand out later entries
        // while the first one's stay pending here unknown. They stay `unsure`, and the next
        // pass reads them back first (and reports an outage, if it is one).
        let replies: Vec<Value> = match self.shared.reader.pipe_once("reading messages", pipe).await
        {
            Ok(replies) => replies,
            Err(e) => {
                tracing::warn!(group = %self.subscription.group, error = %e, "a read failed; its entries are recovered on the next pass");
                return Ok(());
            }
        };
        for ((i, _), reply) in ready_reads.iter().zip(replies) {
            let entries = entries_of(reply);
            self.enqueue(st, *i, entries, true).await?;
            st.unsure[*i] = false;
            while out.len() < max && self.capacity(st, *i) > 0 {
                let Some(f) = st.backlog[*i].pop_front() else {
                    break;
                };
                out.push(self.hand_out(st, *i, f.offset, f.view, None));
            }
        }
        Ok(())
    }

    /// When the next in-place retry or housekeeping is due.
    fn next_wake(&self, st: &State) -> Option<Instant> {
        st.ready
            .iter()
            .filter(|r| st.owned[r.source])
            .map(|r| r.due)
            .chain(st.next_refresh)
            .chain(st.next_timeout_scan)
            .min()
    }

    /// Removes a live delivery; `None` if the receipt is stale.
    fn settle(&self, st: &mut State, receipt: &Receipt) -> Option<(usize, InFlight)> {
        let key = (receipt.queue_id as usize, receipt.offset);
        match st.in_flight.get(&key) {
            Some(f) if f.token == receipt.token => {
                let f = st.in_flight.remove(&key)?;
                st.per_source[key.0] -= 1;
                Some((key.0, f))
            }
            _ => None,
        }
    }

    /// Puts deliveries back in flight after their settlement failed in Redis, so that the
    /// caller can settle them again (unless a timeout scan redelivered them meanwhile).
    async fn restore(&self, flights: Vec<(usize, u64, InFlight)>) {
        let mut st = self.state.lock().await;
        for (i, offset, flight) in flights {
            let taken = st.backlog[i].iter().any(|f| f.offset == offset)
                || st.ready.iter().any(|r| r.source == i && r.offset == offset);
            if !taken && !st.in_flight.contains_key(&(i, offset)) {
                st.in_flight.insert((i, offset), flight);
                st.per_source[i] += 1;
            }
        }
    }

    /// Adds the commands that settle `offsets` of source `i` to `pipe`; `failed` are those
    /// that may have counted attempts to forget.
    fn ack_commands(
        &self,
        pipe: &mut ::redis::Pipeline,
        i: usize,
        offsets: &[u64],
        failed: &[u64],
    ) {
        let source = &self.sources[i];
        pipe.cmd("XACK").arg(&source.stream).arg(&self.rgroup);
        for o in offsets {
            pipe.arg(entry_id(*o));
        }
        pipe.ignore();
        if !failed.is_empty() {
            pipe.cmd("HDEL").arg(&source.attempts);
            for o in failed {
                pipe.arg(*o);
            }
            pipe.ignore();
        }
    }

    /// Acknowledges settled entries of one source and forgets their attempts.
    async fn acknowledge(&self, i: usize, offsets: &[u64]) -> Result<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        let mut pipe = ::redis::pipe();
        self.ack_commands(&mut pipe, i, offsets, offsets);
        self.shared.redis.pipe::<()>("acknowledging", pipe).await
    }

    /// Keeps an orderly queue's place while its delivery is being dead-lettered or copied to
    /// the retry stream, so that nothing later of the queue is handed out meanwhile.
    fn hold_place(&self, st: &mut State, i: usize, offset: u64, flight: &InFlight) {
        if self.orderly() && i != self.retry_source() {
            st.ready.push(Ready {
                source: i,
                offset,
                due: Instant::now() + Duration::from_secs(365 * 24 * 3600),
                view: flight.view.clone(),
                first_failure_ms: 0,
            });
        }
    }

    async fn release_place(&self, i: usize, offset: u64) {
        let mut st = self.state.lock().await;
        st.ready.retain(|r| !(r.source == i && r.offset == offset));
        drop(st);
        self.wake.notify_waiters();
    }

    /// The rule's verdict on a delivery of source `i` just taken out of flight.
    fn verdict(&self, i: usize, flight: &InFlight, failure: &Failure) -> Verdict {
        // A broadcasting member's retry stream is its own (its Redis group); a clustering
        // group's retry stream is read by every member at once.
        let shared_source =
            i == self.retry_source() && self.subscription.model != MessageModel::Broadcasting;
        FailedDelivery {
            reconsume_times: flight.view.reconsume_times,
            model: self.subscription.model,
            mode: self.subscription.mode,
            shared_source,
        }
        .verdict(&self.options, failure)
    }

    /// Queues an in-place retry of a delivery just taken out of flight.
    fn retry_in_place(
        &self,
        st: &mut State,
        i: usize,
        offset: u64,
        flight: &InFlight,
        retry: u32,
        after: Duration,
    ) {
        let mut view = flight.view.clone();
        view.reconsume_times = retry;
        let now_ms = self.shared.clock.now_ms();
        st.ready.push(Ready {
            source: i,
            offset,
            due: Instant::now() + after,
            view,
            first_failure_ms: flight.first_failure_ms.unwrap_or(now_ms),
        });
    }

    /// Records a failed delivery already taken out of flight: the attempt of an in-place
    /// retry (queued already), or a copy in the retry stream, or the dead-letter queue.
    async fn fail(
        &self,
        i: usize,
        receipt: &Receipt,
        flight: InFlight,
        failure: Failure,
        verdict: Verdict,
    ) -> Result<Disposition> {
        let now_ms = self.shared.clock.now_ms();
        let first_failure = flight.first_failure_ms.unwrap_or(now_ms);
        let (retry, after) = match verdict {
            Verdict::DeadLetter { attempts } => {
                bury(
                    &self.shared,
                    &self.subscription.group,
                    &flight.view,
                    attempts,
                    Some(first_failure),
                    &failure.reason,
                )
                .await?;
                self.acknowledge(i, &[receipt.offset]).await?;
                self.wake.notify_waiters();
                return Ok(Disposition::DeadLettered);
            }
            Verdict::InPlace { retry, after } => {
                let _: i64 = self
                    .shared
                    .redis
                    .query(
                        "counting a failed attempt",
                        ::redis::cmd("HINCRBY")
                            .arg(&self.sources[i].attempts)
                            .arg(receipt.offset)
                            .arg(1)
                            .clone(),
                    )
                    .await?;
                self.wake.notify_waiters();
                return Ok(Disposition::Retry { retry, after });
            }
            Verdict::RetryQueue { retry, after } => (retry, after),
        };
        // A copy waits in the retry stream's delay set, the original is settled.
        let mut envelope = Envelope::from_view(&flight.view, retry);
        dead_letter::note_retry(&mut envelope.properties, first_failure, &failure.reason);
        let retry_stream = &self.sources[self.retry_source()];
        // Rounded up: `now_ms` rounds down, and a retry must not come before its back-off.
        let due = self.shared.clock.due_after(after);
        if after.is_zero() {
            self.shared
                .append(&retry_stream.topic, 0, vec![envelope.encode()?])
                .await?;
        } else {
            scheduler::put(
                &self.shared,
                &retry_stream.topic,
                0,
                due,
                vec![envelope.encode()?],
            )
            .await?;
        }
        self.acknowledge(i, &[receipt.offset]).await?;
        Ok(Disposition::Retry { retry, after })
    }

    fn leave(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        drop(self.heartbeat.lock().take());
        let shared = self.shared.clone();
        let members = self.members.clone();
        let instance = self.options.instance.clone();
        let leases = std::mem::take(&mut *self.presence.leases.lock());
        shared
            .members
            .lock()
            .retain(|(k, i)| !(*k == members && *i == instance));
        let redis = shared.redis.clone();
        redis.clone().spawn(async move {
            let _: Result<()> = redis
                .query(
                    "leaving the group",
                    ::redis::cmd("ZREM").arg(members).arg(&instance).clone(),
                )
                .await;
            for lease in leases {
                let _ = shared.release(&lease, &instance).await;
            }
        });
        self.wake.notify_waiters();
    }
}

/// Where a new group starts on each queue (`XGROUP CREATE` ids).
async fn start_id(shared: &Shared, queues: &[Source], from: ConsumeFrom) -> Result<Vec<String>> {
    let mut out = Vec::with_capacity(queues.len());
    for q in queues {
        out.push(match from {
            ConsumeFrom::Last => "$".to_owned(),
            ConsumeFrom::First => "0".to_owned(),
            ConsumeFrom::Timestamp(t) => {
                let ms = crate::clock::Clock::to_ms(t);
                first_at_or_after(shared, &q.stream, ms).await?
            }
        });
    }
    Ok(out)
}

/// The id just before the first entry stored at or after `ms`, or `$` if there is none.
async fn first_at_or_after(shared: &Shared, stream: &str, ms: u64) -> Result<String> {
    let mut from = "-".to_owned();
    loop {
        let page: ::redis::streams::StreamRangeReply = shared
            .redis
            .query(
                "finding the start of a group",
                ::redis::cmd("XRANGE")
                    .arg(stream)
                    .arg(&from)
                    .arg("+")
                    .arg("COUNT")
                    .arg(512)
                    .clone(),
            )
            .await?;
        let Some(last) = page.ids.last().map(|e| e.id.clone()) else {
            return Ok("$".into());
        };
        for e in &page.ids {
            let stored = match e.map.get("t") {
                Some(Value::BulkString(t)) => std::str::from_utf8(t)
                    .ok()
                    .and_then(|t| t.parse::<u64>().ok())
                    .unwrap_or(0),
                _ => 0,
            };
            if stored >= ms {
                let offset = offset_of(&e.id).unwrap_or(0);
                return Ok(format!("{offset}-0"));
            }
        }
        from = format!("({last}");
    }
}

/// Keeps a member alive and its orderly leases held while it lives.
async fn heartbeat(
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

#[async_trait]
impl Consumer for RedisConsumer {
    fn subscription(&self) -> &Subscription {
        &self.subscription
    }

    fn instance(&self) -> &str {
        &self.options.instance
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let deadline = Instant::now() + wait;
        let max = max.max(1);
        loop {
            self.check_open()?;
            let notified = self.shared.activity.notified();
            let stored = self.signals[0].notified();
            let retried = self.signals[1].notified();
            let settled = self.wake.notified();
            tokio::pin!(notified, stored, retried, settled);
            notified.as_mut().enable();
            stored.as_mut().enable();
            retried.as_mut().enable();
            settled.as_mut().enable();
            let (got, wake) = {
                let mut st = self.state.lock().await;
                let got = self.fetch(&mut st, max).await?;
                (got, self.next_wake(&st))
            };
            if !got.is_empty() {
                return Ok(got);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(got);
            }
            let mut until = deadline.min(now + self.shared.config.poll_interval);
            if let Some(w) = wake {
                until = until.min(w.max(now + Duration::from_millis(1)));
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = &mut stored => {}
                _ = &mut retried => {}
                _ = &mut settled => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    async fn ack(&self, receipts: &[Receipt]) -> Result<()> {
        self.check_open()?;
        let mut by_source: HashMap<usize, Vec<(u64, InFlight)>> = HashMap::new();
        {
            let mut st = self.state.lock().await;
            for r in receipts {
                if let Some((i, flight)) = self.settle(&mut st, r) {
                    by_source.entry(i).or_default().push((r.offset, flight));
                }
            }
        }
        if by_source.is_empty() {
            return Ok(());
        }
        // One round trip for the whole call, whatever queues it spans.
        let mut pipe = ::redis::pipe();
        for (i, settled) in &by_source {
            let offsets: Vec<u64> = settled.iter().map(|(o, _)| *o).collect();
            let failed: Vec<u64> = settled
                .iter()
                .filter(|(_, f)| f.first_failure_ms.is_some() || f.view.reconsume_times > 0)
                .map(|(o, _)| *o)
                .collect();
            self.ack_commands(&mut pipe, *i, &offsets, &failed);
        }
        let acked = self.shared.reader.pipe::<()>("acknowledging", pipe).await;
        self.wake.notify_waiters();
        if let Err(e) = acked {
            let unsettled = by_source
                .into_iter()
                .flat_map(|(i, s)| s.into_iter().map(move |(o, f)| (i, o, f)))
                .collect();
            self.restore(unsettled).await;
            return Err(e);
        }
        Ok(())
    }

    async fn nack(&self, receipt: &Receipt, failure: Failure) -> Result<Disposition> {
        self.check_open()?;
        let Some((i, flight, verdict)) = ({
            let mut st = self.state.lock().await;
            self.settle(&mut st, receipt).map(|(i, flight)| {
                let verdict = self.verdict(i, &flight, &failure);
                // An in-place retry takes its place at once, so that nothing later of an
                // orderly queue is handed out while the attempt is being recorded.
                if let Verdict::InPlace { retry, after } = verdict {
                    self.retry_in_place(&mut st, i, receipt.offset, &flight, retry, after);
                } else {
                    self.hold_place(&mut st, i, receipt.offset, &flight);
                }
                (i, flight, verdict)
            })
        }) else {
            return Ok(Disposition::Stale);
        };
        let in_place = matches!(verdict, Verdict::InPlace { .. });
        match self
            .fail(i, receipt, flight.clone(), failure, verdict)
            .await
        {
            Ok(d) => {
                if !in_place {
                    self.release_place(i, receipt.offset).await;
                }
                Ok(d)
            }
            Err(e) => {
                let mut st = self.state.lock().await;
                st.ready
                    .retain(|r| !(r.source == i && r.offset == receipt.offset));
                drop(st);
                self.restore(vec![(i, receipt.offset, flight)]).await;
                Err(e)
            }
        }
    }

    async fn dead_letter(&self, receipt: &Receipt, reason: &str) -> Result<()> {
        self.check_open()?;
        let Some((i, flight)) = ({
            let mut st = self.state.lock().await;
            self.settle(&mut st, receipt).inspect(|(i, flight)| {
                self.hold_place(&mut st, *i, receipt.offset, flight);
            })
        }) else {
            return Ok(());
        };
        let buried = async {
            bury(
                &self.shared,
                &self.subscription.group,
                &flight.view,
                flight.view.reconsume_times + 1,
                flight.first_failure_ms,
                reason,
            )
            .await?;
            self.acknowledge(i, &[receipt.offset]).await
        }
        .await;
        self.release_place(i, receipt.offset).await;
        if let Err(e) = buried {
            self.restore(vec![(i, receipt.offset, flight)]).await;
            return Err(e);
        }
        Ok(())
    }

    async fn assignment(&self) -> Result<Vec<u32>> {
        self.check_open()?;
        let mut st = self.state.lock().await;
        self.refresh(&mut st).await?;
        Ok(st.assigned.clone())
    }

    async fn close(&self) -> Result<()> {
        self.leave();
        Ok(())
    }
}

impl Drop for RedisConsumer {
    fn drop(&mut self) {
        self.leave();
    }
}

fn text_of(v: Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8(b).unwrap_or_default(),
        Value::SimpleString(s) => s,
        _ => String::new(),
    }
}

/// The entries of one `XREADGROUP` reply (`[[stream, [[id, [field, value, ...]], ...]]]`),
/// moved out of the reply rather than copied as the typed replies of the redis crate do.
fn entries_of(reply: Value) -> Vec<(String, HashMap<String, Value>)> {
    let mut out = Vec::new();
    let streams = match reply {
        Value::Array(streams) => streams,
        Value::Map(pairs) => pairs
            .into_iter()
            .map(|(k, v)| Value::Array(vec![k, v]))
            .collect(),
        _ => return out,
    };
    for stream in streams {
        let Value::Array(mut parts) = stream else {
            continue;
        };
        let Some(Value::Array(entries)) = parts.pop() else {
            continue;
        };
        for entry in entries {
            let Value::Array(mut id_fields) = entry else {
                continue;
            };
            let fields = id_fields.pop();
            let Some(id) = id_fields.pop() else {
                continue;
            };
            let mut map = HashMap::with_capacity(2);
            if let Some(Value::Array(fields)) = fields {
                let mut it = fields.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    map.insert(text_of(k), v);
                }
            }
            out.push((text_of(id), map));
        }
    }
    out
}

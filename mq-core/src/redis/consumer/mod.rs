//! The delivery loop of one member on Redis: reads its queues through the group's Redis
//! consumer group, settles deliveries with `XACK`, takes over what dead members held and what
//! outlived `consume-timeout`, and retries in place (orderly, broadcasting) or through the
//! group's retry stream (concurrent clustering).
//!
//! `state` holds what a member has between round trips, `read` reads and hands out,
//! `settle` acknowledges and applies the retry rule, `takeover` moves queues and entries
//! between members, `heartbeat` keeps a member alive, `reply` parses raw replies.

mod heartbeat;
mod read;
mod reply;
mod settle;
mod state;
mod takeover;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ::redis::Value;
use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use crate::broker::{Consumer, ConsumerOptions, Delivery, Disposition, Failure, Receipt};
use crate::error::{BackendErrorKind, BrokerError, Result};
use crate::retry::{Retry, Verdict};
use crate::subscription::{ConsumeFrom, ConsumeMode, MessageModel, Subscription};
use crate::system_topics::retry_topic;

use super::dead_letter::bury;
use super::keys::offset_of;
use super::Shared;

use heartbeat::{heartbeat, Presence};

/// How long a consumer step may wait before it says so in the log.
const SLOW_STEP: Duration = Duration::from_secs(10);

/// Awaits `step`, warning every [`SLOW_STEP`] while it has not finished, so that a step that
/// hangs (a lock never released, a reply that never comes) says which one it is.
pub(super) async fn watched<T>(
    group: &str,
    what: &'static str,
    step: impl std::future::Future<Output = T>,
) -> T {
    tokio::pin!(step);
    let mut waited = Duration::ZERO;
    loop {
        match tokio::time::timeout(SLOW_STEP, &mut step).await {
            Ok(v) => return v,
            Err(_) => {
                waited += SLOW_STEP;
                tracing::warn!(group, step = what, waited = ?waited, "a consumer step is taking long");
            }
        }
    }
}
use state::{Flow, InFlight, State};

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
            state: tokio::sync::Mutex::new(State::new(n)),
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

    /// How source `i` may have deliveries out: an orderly queue one at a time; the retry
    /// stream, and every queue of a concurrent consumer, up to the in-flight limit.
    fn flow(&self, i: usize) -> Flow {
        if self.orderly() && i != self.retry_source() {
            Flow::Orderly
        } else {
            Flow::Concurrent(self.options.max_in_flight_per_queue)
        }
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) || self.shared.closed.load(Ordering::Acquire) {
            Err(BrokerError::Closed)
        } else {
            Ok(())
        }
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
            let group = self.subscription.group.as_str();
            let (got, wake) = {
                let mut st =
                    watched(group, "receive: waiting for the state", self.state.lock()).await;
                let got = watched(group, "receive: fetching", self.fetch(&mut st, max)).await?;
                (got, st.next_wake())
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
        let group = self.subscription.group.as_str();
        {
            let mut st = watched(group, "ack: waiting for the state", self.state.lock()).await;
            for r in receipts {
                if let Some((i, flight)) = st.settle(r) {
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
        let acked = watched(
            group,
            "ack: acknowledging",
            self.shared.reader.pipe::<()>("acknowledging", pipe),
        )
        .await;
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
            st.settle(receipt).map(|(i, flight)| {
                let verdict = self.verdict(i, &flight, &failure);
                // An in-place retry takes its place at once, so that nothing later of an
                // orderly queue is handed out while the attempt is being recorded.
                if let Verdict::InPlace(Retry { retry, after }) = verdict {
                    self.retry_in_place(&mut st, i, receipt.offset, &flight, retry, after);
                } else {
                    self.hold_place(&mut st, i, receipt.offset, &flight);
                }
                (i, flight, verdict)
            })
        }) else {
            return Ok(Disposition::Stale);
        };
        let in_place = matches!(verdict, Verdict::InPlace(_));
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
            st.settle(receipt).inspect(|(i, flight)| {
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

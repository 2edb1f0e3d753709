//! Moving work between members: the assignment and orderly leases, entries left pending by
//! dead members, and entries that outlived `consume-timeout`.

use std::time::Duration;

use ::redis::streams::{
    StreamAutoClaimReply, StreamClaimReply, StreamPendingReply, StreamReadReply,
};
use tokio::time::Instant;

use crate::error::Result;
use crate::subscription::MessageModel;

use super::super::group::assign;
use super::super::keys::offset_of;
use super::state::State;
use super::{RedisConsumer, CLAIM_BATCH};

impl RedisConsumer {
    /// Recomputes the assignment, takes or gives up orderly leases, and takes over what dead
    /// members of the group left unacknowledged.
    pub(super) async fn refresh(&self, st: &mut State) -> Result<()> {
        let shared = &self.shared;
        let me = &self.options.instance;
        let live = shared
            .heartbeat_and_members(&self.members, self.seen.as_deref(), me)
            .await?;
        let assigned = assign(self.subscription.model, self.queue_count, &live, me);
        let epoch: Option<u64> = shared
            .redis
            .query(
                "reading the offset-reset counter",
                ::redis::cmd("GET")
                    .arg(
                        shared
                            .keys
                            .reset_epoch(&self.subscription.group, &self.subscription.topic),
                    )
                    .clone(),
            )
            .await?;
        let epoch = epoch.unwrap_or(0);
        if st.reset_epoch.is_some_and(|seen| seen != epoch) {
            tracing::info!(group = %self.subscription.group, topic = %self.subscription.topic, "the group's offset was reset; continuing from the new position");
            st.forget_before_reset(self.queue_count as usize);
        }
        st.reset_epoch = Some(epoch);
        let mut leases = Vec::new();
        for (i, source) in self.sources.iter().enumerate() {
            // An orderly queue stays with this member until what it holds of it is settled,
            // so that the next owner cannot overtake it.
            let wanted = i == self.retry_source()
                || assigned.contains(&(i as u32))
                || (source.lease.is_some() && st.sources[i].owned && st.holds(i));
            let owned = match (&source.lease, wanted) {
                (Some(lease), true) => {
                    let held = shared.lease(lease, me).await?;
                    if held {
                        leases.push(lease.clone());
                    }
                    held
                }
                (Some(lease), false) => {
                    if st.sources[i].owned {
                        shared.release(lease, me).await?;
                    }
                    false
                }
                (None, wanted) => wanted,
            };
            if !owned {
                st.sources[i].clear = false;
            }
            st.sources[i].owned = owned;
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
    pub(super) async fn take_over(&self, st: &mut State, live: &[String]) -> Result<()> {
        let owned: Vec<usize> = (0..self.sources.len())
            .filter(|i| st.sources[*i].owned)
            .collect();
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

    pub(super) async fn take_over_source(
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
            let was_unsure = std::mem::replace(&mut st.sources[i].unsure, true);
            let mut pipe = ::redis::pipe();
            pipe.add_command(cmd);
            let (claimed,): (StreamClaimReply,) = self
                .shared
                .redis
                .pipe_once("taking over a dead member's entries", pipe)
                .await?;
            st.sources[i].unsure = was_unsure;
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

    /// Reads back this member's own pending entries of source `i` that its state does not
    /// track: after a restart under the same instance name, or after a read whose reply was
    /// lost. They come before anything new.
    pub(super) async fn recover(&self, st: &mut State, i: usize) -> Result<()> {
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
        st.sources[i].unsure = false;
        Ok(())
    }

    /// Whether another member still holds entries of orderly source `i`; until it settles
    /// them this member does not read the queue.
    pub(super) async fn others_hold(&self, i: usize) -> Result<bool> {
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
    pub(super) async fn timeout_scan(&self, st: &mut State) -> Result<()> {
        let idle = self.options.consume_timeout.as_millis() as u64;
        for i in 0..self.sources.len() {
            if !st.sources[i].owned {
                continue;
            }
            // Sent once, as the claim of a dead member's entries (see `take_over_source`).
            let was_unsure = std::mem::replace(&mut st.sources[i].unsure, true);
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
            st.sources[i].unsure = was_unsure;
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
                if st.sources[i].backlog.iter().any(|f| f.offset == offset) {
                    continue;
                }
                if st.in_flight.remove(&(i, offset)).is_some() {
                    st.sources[i].in_flight -= 1;
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
}

//! Handing messages out: for one member, each assigned queue in turn and then the group's
//! retry queue, slots due again first, then new messages read from the consume queue into
//! the window (filtered by tag, checked against the log). The window's rules are in
//! `progress.rs`; this file does the reading around them.

use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::group::{Group, GroupInner, Member};
use super::progress::QueueProgress;
use super::Groups;
use crate::broker::{Delivery, Receipt};
use crate::embedded::consume_queue::{ConsumeQueue, CqEntry};
use crate::embedded::system_topics;
use crate::error::{BrokerError, Result};
use crate::subscription::{ConsumeMode, MessageModel, Subscription};
use crate::system_topics::retry_topic;

/// Entries read from a consume queue per look.
const READ_AHEAD: usize = 64;

/// Index entries one look may pass over (filtered out by tag) before it returns, so that a
/// consumer skipping a long backlog does not hold the group's lock for all of it.
const SCAN_BUDGET: usize = 4096;

impl Groups {
    /// Up to `max` deliveries for one member from its queues and the group's retry queue, and
    /// when to look again if there were none.
    pub(super) fn collect(
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
            // (offset, reconsume) of slots to send again, and how many new ones to read.
            let (plan, want) = p.plan(
                now,
                orderly,
                max - out.len(),
                member.options.max_in_flight_per_queue,
            );
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
            // Retention may have removed what this group had not reached; skip the gap.
            p.skip_to(from);
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
                    p.pass();
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
                                p.pass();
                                continue;
                            }
                        }
                    }
                };
                if !(retry || subscription.filter.matches(rec.message.tag.as_deref())) {
                    p.pass();
                    continue;
                }
                let token = self.next_id.fetch_add(1, Ordering::Relaxed);
                p.hand_out(
                    member.id,
                    token,
                    now + member.options.consume_timeout,
                    rec.message.reconsume_times,
                );
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
        match record {
            Some(Ok(rec)) => {
                let deadline = now + member.options.consume_timeout;
                if !p.redeliver(offset, member.id, token, deadline, reconsume) {
                    return Ok(());
                }
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
}

//! Reading a member's sources and handing out deliveries: in-place retries when due, then
//! taken-over and pending entries, then new ones, within each source's room.

use std::collections::HashMap;

use ::redis::Value;
use tokio::time::Instant;

use crate::broker::Delivery;
use crate::error::Result;

use super::super::dead_letter::decode_entry;
use super::super::keys::offset_of;
use super::reply::entries_of;
use super::state::{Fetched, State};
use super::{watched, RedisConsumer};

impl RedisConsumer {
    /// Decodes entries into the backlog of source `i`, in offset order; filtered-out and
    /// unreadable entries are acknowledged. `fresh` entries were never delivered before.
    pub(super) async fn enqueue(
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
            match decode_entry(map, source.queue, offset, extra.unwrap_or(0)) {
                Ok(view) => {
                    if i != self.retry_source()
                        && !self.subscription.filter.matches(view.tag.as_deref())
                    {
                        skip.push(id);
                        continue;
                    }
                    // The backlog is in offset order: a binary search finds a duplicate and
                    // the place (a scan per entry cost O(backlog) on every read).
                    let backlog = &mut st.sources[i].backlog;
                    if let Err(at) = backlog.binary_search_by_key(&offset, |f| f.offset) {
                        backlog.insert(at, Fetched { offset, view });
                    }
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

    /// One pass: due in-place retries, then taken-over and pending entries, then new ones.
    pub(super) async fn fetch(&self, st: &mut State, max: usize) -> Result<Vec<Delivery>> {
        let now = Instant::now();
        let group = self.subscription.group.as_str();
        if st.next_refresh.is_none_or(|t| now >= t) {
            watched(group, "fetch: refreshing the group", self.refresh(st)).await?;
        }
        if st.next_timeout_scan.is_none_or(|t| now >= t) {
            watched(group, "fetch: scanning for timeouts", self.timeout_scan(st)).await?;
        }
        for i in 0..self.sources.len() {
            if st.sources[i].owned && st.sources[i].unsure {
                watched(group, "fetch: recovering own entries", self.recover(st, i)).await?;
            }
        }
        let mut out = Vec::new();
        // In-place retries that are due, oldest first.
        st.ready.sort_by_key(|r| (r.due, r.offset));
        let mut k = 0;
        while k < st.ready.len() && out.len() < max {
            let r = &st.ready[k];
            if r.due <= now
                && st.sources[r.source].owned
                && (!self.orderly() || st.sources[r.source].in_flight == 0)
            {
                let r = st.ready.remove(k);
                let d = st.hand_out(r.source, r.offset, r.view, Some(r.first_failure_ms));
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
            if !st.sources[i].owned {
                continue;
            }
            while out.len() < max && st.capacity(i, self.flow(i)) > 0 {
                let Some(f) = st.sources[i].backlog.pop_front() else {
                    break;
                };
                out.push(st.hand_out(i, f.offset, f.view, None));
            }
            let mine = i == self.retry_source() || st.assigned.contains(&(i as u32));
            let room = st
                .capacity(i, self.flow(i))
                .min(max.saturating_sub(out.len()));
            if mine && room > 0 && st.sources[i].backlog.is_empty() {
                reads.push((i, room));
            }
        }
        if let Err(e) = watched(
            group,
            "fetch: reading new entries",
            self.read_new(st, reads, max, &mut out),
        )
        .await
        {
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
    pub(super) async fn read_new(
        &self,
        st: &mut State,
        reads: Vec<(usize, usize)>,
        max: usize,
        out: &mut Vec<Delivery>,
    ) -> Result<()> {
        let mut ready_reads = Vec::with_capacity(reads.len());
        for (i, room) in reads {
            if self.orderly() && i != self.retry_source() && !st.sources[i].clear {
                if self.others_hold(i).await? {
                    continue;
                }
                st.sources[i].clear = true;
            }
            ready_reads.push((i, room));
        }
        if ready_reads.is_empty() {
            return Ok(());
        }
        let mut pipe = ::redis::pipe();
        for (i, room) in &ready_reads {
            // Until the reply is in this state, the entries it hands over may be lost.
            st.sources[*i].unsure = true;
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
            st.sources[*i].unsure = false;
            while out.len() < max && st.capacity(*i, self.flow(*i)) > 0 {
                let Some(f) = st.sources[*i].backlog.pop_front() else {
                    break;
                };
                out.push(st.hand_out(*i, f.offset, f.view, None));
            }
        }
        Ok(())
    }
}

//! What one member holds of its sources between Redis round trips: entries read but not
//! handed out, deliveries in flight, in-place retries waiting to be due. No Redis here: the
//! rules of handing out and settling, testable on their own.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::broker::{Delivery, Receipt};
use crate::message::MessageView;

/// An entry read (or taken over) but not handed out yet.
pub(super) struct Fetched {
    pub(super) offset: u64,
    pub(super) view: MessageView,
}

/// A delivery handed out and not settled yet.
#[derive(Clone)]
pub(super) struct InFlight {
    pub(super) token: u64,
    pub(super) view: MessageView,
    pub(super) first_failure_ms: Option<u64>,
}

/// A delivery that failed and waits to be retried in place (or an orderly queue's place kept
/// while its failed delivery is being recorded).
pub(super) struct Ready {
    pub(super) source: usize,
    pub(super) offset: u64,
    pub(super) due: Instant,
    pub(super) view: MessageView,
    pub(super) first_failure_ms: u64,
}

/// The state of one source (a queue of the topic, or the retry stream).
#[derive(Default)]
pub(super) struct SourceState {
    /// This member reads the source now.
    pub(super) owned: bool,
    /// Read or taken over, not handed out yet, in offset order.
    pub(super) backlog: VecDeque<Fetched>,
    /// Deliveries of this source in flight.
    pub(super) in_flight: usize,
    /// Own pending entries may be missing from this state (first read after joining, or a
    /// read whose reply was lost to a cancelled or failed `receive`).
    pub(super) unsure: bool,
    /// Orderly: no other member holds an entry of it (checked once after the queue was
    /// taken over, so that what the previous owner holds goes first).
    pub(super) clear: bool,
}

/// How a source may have deliveries out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flow {
    /// One at a time, in order (an orderly queue).
    Orderly,
    /// Up to this many at once.
    Concurrent(usize),
}

/// Everything a member holds between round trips.
#[derive(Default)]
pub(super) struct State {
    pub(super) sources: Vec<SourceState>,
    /// Queue ids assigned to this member.
    pub(super) assigned: Vec<u32>,
    pub(super) in_flight: HashMap<(usize, u64), InFlight>,
    pub(super) ready: Vec<Ready>,
    pub(super) next_token: u64,
    pub(super) next_refresh: Option<Instant>,
    pub(super) next_timeout_scan: Option<Instant>,
    /// The source the next pass starts with, so that no queue is always served last.
    pub(super) rotate: usize,
    /// The group's offset-reset counter as last seen; `None` before the first refresh.
    pub(super) reset_epoch: Option<u64>,
}

/// An orderly queue's place is kept this long at most while its failed delivery is recorded:
/// in effect until `release`.
const HELD: Duration = Duration::from_secs(365 * 24 * 3600);

impl State {
    /// A state for `count` sources, none owned yet.
    pub(super) fn new(count: usize) -> Self {
        State {
            sources: (0..count)
                .map(|_| SourceState {
                    // Whatever this instance name left pending before is read back first.
                    unsure: true,
                    ..SourceState::default()
                })
                .collect(),
            ..State::default()
        }
    }

    /// Forgets what was read, handed out or queued for retry from the first `sources`
    /// sources (the topic's queues) after the group's offset was reset: the new position is
    /// read afresh, and receipts from before are stale.
    pub(super) fn forget_before_reset(&mut self, sources: usize) {
        for s in self.sources.iter_mut().take(sources) {
            s.backlog.clear();
            s.in_flight = 0;
            // Entries read between the reset and now are pending here: read them back.
            s.unsure = true;
        }
        self.in_flight.retain(|(i, _), _| *i >= sources);
        self.ready.retain(|r| r.source >= sources);
    }

    /// Whether this member has anything of source `i` out, waiting or fetched.
    pub(super) fn holds(&self, i: usize) -> bool {
        let s = &self.sources[i];
        s.in_flight > 0 || !s.backlog.is_empty() || self.ready.iter().any(|r| r.source == i)
    }

    /// How many more deliveries source `i` may have out.
    pub(super) fn capacity(&self, i: usize, flow: Flow) -> usize {
        let waiting = self.ready.iter().filter(|r| r.source == i).count();
        let out = self.sources[i].in_flight + waiting;
        match flow {
            Flow::Orderly => usize::from(out == 0),
            Flow::Concurrent(limit) => limit.saturating_sub(out),
        }
    }

    /// Hands out the entry at `offset` of source `i` under a fresh token.
    pub(super) fn hand_out(
        &mut self,
        i: usize,
        offset: u64,
        view: MessageView,
        first_failure_ms: Option<u64>,
    ) -> Delivery {
        self.next_token += 1;
        let token = self.next_token;
        self.sources[i].in_flight += 1;
        self.in_flight.insert(
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

    /// When the next in-place retry of an owned source or housekeeping is due.
    pub(super) fn next_wake(&self) -> Option<Instant> {
        self.ready
            .iter()
            .filter(|r| self.sources[r.source].owned)
            .map(|r| r.due)
            .chain(self.next_refresh)
            .chain(self.next_timeout_scan)
            .min()
    }

    /// Removes a live delivery; `None` if the receipt is stale (another token, or settled).
    pub(super) fn settle(&mut self, receipt: &Receipt) -> Option<(usize, InFlight)> {
        let key = (receipt.queue_id as usize, receipt.offset);
        match self.in_flight.get(&key) {
            Some(f) if f.token == receipt.token => {
                let f = self.in_flight.remove(&key)?;
                self.sources[key.0].in_flight -= 1;
                Some((key.0, f))
            }
            _ => None,
        }
    }

    /// Puts deliveries back in flight after their settlement failed in Redis, so that the
    /// caller can settle them again, unless they were fetched or queued again meanwhile.
    pub(super) fn restore(&mut self, flights: Vec<(usize, u64, InFlight)>) {
        for (i, offset, flight) in flights {
            let taken = self.sources[i].backlog.iter().any(|f| f.offset == offset)
                || self
                    .ready
                    .iter()
                    .any(|r| r.source == i && r.offset == offset);
            if !taken && !self.in_flight.contains_key(&(i, offset)) {
                self.in_flight.insert((i, offset), flight);
                self.sources[i].in_flight += 1;
            }
        }
    }

    /// Queues an in-place retry of a delivery taken out of flight, due after `after`.
    pub(super) fn retry_in_place(
        &mut self,
        i: usize,
        offset: u64,
        flight: &InFlight,
        retry: u32,
        after: Duration,
        now_ms: u64,
    ) {
        let mut view = flight.view.clone();
        view.reconsume_times = retry;
        self.ready.push(Ready {
            source: i,
            offset,
            due: Instant::now() + after,
            view,
            first_failure_ms: flight.first_failure_ms.unwrap_or(now_ms),
        });
    }

    /// Keeps an orderly queue's place while its delivery is being dead-lettered or copied to
    /// the retry stream, so that nothing later of the queue is handed out meanwhile.
    pub(super) fn hold_place(&mut self, i: usize, offset: u64, flight: &InFlight) {
        self.ready.push(Ready {
            source: i,
            offset,
            due: Instant::now() + HELD,
            view: flight.view.clone(),
            first_failure_ms: 0,
        });
    }

    /// Gives up a place kept by `hold_place` or a queued retry.
    pub(super) fn release_place(&mut self, i: usize, offset: u64) {
        self.ready
            .retain(|r| !(r.source == i && r.offset == offset));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::message::{Message, MessageParts};

    fn view(offset: u64) -> MessageView {
        let MessageParts {
            id,
            topic,
            tag,
            keys,
            properties,
            body,
            born_timestamp,
        } = Message::new("t", format!("m{offset}")).into_parts();
        MessageView {
            id,
            topic,
            tag,
            keys,
            properties,
            body,
            queue_id: 0,
            queue_offset: offset,
            born_timestamp,
            store_timestamp: born_timestamp,
            reconsume_times: 0,
        }
    }

    fn fetched(st: &mut State, i: usize, offset: u64) {
        st.sources[i].backlog.push_back(Fetched {
            offset,
            view: view(offset),
        });
    }

    #[test]
    fn a_receipt_settles_once_and_a_stale_token_settles_nothing() {
        let mut st = State::new(2);
        let d = st.hand_out(0, 5, view(5), None);
        assert!(st.holds(0));
        assert!(!st.holds(1));
        let stale = Receipt {
            token: d.receipt.token + 1,
            ..d.receipt.clone()
        };
        assert!(st.settle(&stale).is_none(), "another token");
        let (i, flight) = st.settle(&d.receipt).unwrap();
        assert_eq!((i, flight.token), (0, d.receipt.token));
        assert!(st.settle(&d.receipt).is_none(), "settled twice");
        assert_eq!(st.sources[0].in_flight, 0);
        assert!(!st.holds(0));
    }

    #[test]
    fn tokens_are_fresh_for_every_delivery_of_one_entry() {
        let mut st = State::new(1);
        let first = st.hand_out(0, 1, view(1), None);
        st.settle(&first.receipt).unwrap();
        let again = st.hand_out(0, 1, view(1), Some(10));
        assert_ne!(first.receipt.token, again.receipt.token);
        assert!(
            st.settle(&first.receipt).is_none(),
            "the old receipt is stale"
        );
    }

    #[test]
    fn an_orderly_queue_has_one_delivery_out_and_a_held_place_blocks_it() {
        let mut st = State::new(1);
        assert_eq!(st.capacity(0, Flow::Orderly), 1);
        let d = st.hand_out(0, 1, view(1), None);
        assert_eq!(st.capacity(0, Flow::Orderly), 0);
        let (i, flight) = st.settle(&d.receipt).unwrap();
        assert_eq!(st.capacity(0, Flow::Orderly), 1);
        st.hold_place(i, 1, &flight);
        assert_eq!(st.capacity(0, Flow::Orderly), 0, "held while recorded");
        st.release_place(i, 1);
        assert_eq!(st.capacity(0, Flow::Orderly), 1);
    }

    #[test]
    fn concurrent_capacity_counts_in_flight_and_waiting_retries() {
        let mut st = State::new(1);
        let flow = Flow::Concurrent(3);
        let a = st.hand_out(0, 1, view(1), None);
        st.hand_out(0, 2, view(2), None);
        assert_eq!(st.capacity(0, flow), 1);
        let (i, flight) = st.settle(&a.receipt).unwrap();
        st.retry_in_place(i, 1, &flight, 1, Duration::from_secs(1), 99);
        assert_eq!(st.capacity(0, flow), 1, "a waiting retry still takes room");
        assert_eq!(st.ready[0].view.reconsume_times, 1);
        assert_eq!(st.ready[0].first_failure_ms, 99);
        st.release_place(0, 1);
        assert_eq!(st.capacity(0, flow), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_next_wake_is_the_earliest_retry_of_an_owned_source_or_housekeeping() {
        let mut st = State::new(2);
        let a = st.hand_out(0, 1, view(1), None);
        let b = st.hand_out(1, 1, view(1), None);
        let (i, fa) = st.settle(&a.receipt).unwrap();
        st.retry_in_place(i, 1, &fa, 1, Duration::from_secs(5), 0);
        let (j, fb) = st.settle(&b.receipt).unwrap();
        st.retry_in_place(j, 1, &fb, 1, Duration::from_secs(1), 0);
        assert_eq!(st.next_wake(), None, "nothing owned, nothing scheduled");
        st.sources[0].owned = true;
        assert_eq!(
            st.next_wake(),
            Some(Instant::now() + Duration::from_secs(5))
        );
        st.next_refresh = Some(Instant::now() + Duration::from_secs(2));
        assert_eq!(
            st.next_wake(),
            Some(Instant::now() + Duration::from_secs(2))
        );
    }

    #[test]
    fn a_failed_settlement_is_restored_unless_fetched_again_meanwhile() {
        let mut st = State::new(1);
        let a = st.hand_out(0, 1, view(1), None);
        let b = st.hand_out(0, 2, view(2), None);
        let fa = st.settle(&a.receipt).unwrap().1;
        let fb = st.settle(&b.receipt).unwrap().1;
        // A timeout scan took entry 2 back meanwhile: it is delivered from there, not twice.
        fetched(&mut st, 0, 2);
        st.restore(vec![(0, 1, fa), (0, 2, fb)]);
        assert_eq!(st.sources[0].in_flight, 1);
        assert!(
            st.settle(&a.receipt).is_some(),
            "entry 1 can be settled again"
        );
        assert!(st.settle(&b.receipt).is_none());
    }
}

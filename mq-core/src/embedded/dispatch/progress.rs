//! The window of one queue for one group (RocketMQ's process queue): a slot for every offset
//! handed out and not yet settled. It is a state machine of its own, kept apart from the
//! reading and the locking around it so that its rules can be tested alone: the committed
//! offset is the window's front, so it never passes an unsettled message however many later
//! ones are acknowledged, and a window spans at most [`MAX_SPAN`] offsets.

use std::collections::{BTreeMap, VecDeque};

use tokio::time::Instant;

/// RocketMQ's `consumeConcurrentlyMaxSpan`: a queue stops handing out messages while the
/// oldest unsettled one is this far behind the newest handed out, so that one stuck message
/// cannot make the window (and every scan of it) grow without bound.
pub(super) const MAX_SPAN: usize = 2000;

/// The state of one offset of the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
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
    /// Nacked, its retry copy on the way to the log: neither handed out nor timed out again,
    /// and not settled until the copy is stored, so that a crash before then redelivers the
    /// original. Keeps the delivery it was, to go back to should the copy not be queued.
    Moving {
        member: u64,
        token: u64,
        deadline: Instant,
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
    in_flight: usize,
    ready: usize,
    /// Slots in [`Slot::Moving`].
    moving: usize,
    failures: BTreeMap<u64, FailureNote>,
    /// Delivery tokens below this were handed out before an offset reset: stale.
    floor: u64,
}

impl QueueProgress {
    pub(super) fn new(base: u64) -> Self {
        QueueProgress {
            base,
            window: VecDeque::new(),
            in_flight: 0,
            ready: 0,
            moving: 0,
            failures: BTreeMap::new(),
            floor: 0,
        }
    }

    /// An empty window at `base` after an offset reset: deliveries with tokens below `floor`
    /// were handed out before it, and settling them must not settle the new window's slots.
    pub(super) fn reset(base: u64, floor: u64) -> Self {
        QueueProgress {
            floor,
            ..QueueProgress::new(base)
        }
    }

    /// Whether delivery `token` was handed out after the last reset of this window.
    pub(super) fn current(&self, token: u64) -> bool {
        token >= self.floor
    }

    /// The committed offset: every offset below it is settled.
    pub(super) fn committed(&self) -> u64 {
        self.base
    }

    /// The first offset not yet read into the window.
    pub(super) fn next(&self) -> u64 {
        self.base + self.window.len() as u64
    }

    fn slot(&mut self, offset: u64) -> Option<&mut Slot> {
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

    /// What a member may take now, up to `room` deliveries: the ready slots that are due, to
    /// send again as (offset, reconsume count), and how many new offsets to read. An orderly
    /// queue serves only its front, one message at a time; otherwise new reads stop at
    /// `max_in_flight` outstanding and at [`MAX_SPAN`].
    pub(super) fn plan(
        &self,
        now: Instant,
        orderly: bool,
        room: usize,
        max_in_flight: usize,
    ) -> (Vec<(u64, u32)>, usize) {
        let mut again = Vec::new();
        let want = if orderly {
            // One message of the queue out at a time, in offset order.
            match self.window.front().copied() {
                Some(Slot::Ready { due, reconsume }) if due <= now => {
                    again.push((self.base, reconsume));
                    0
                }
                Some(_) => 0,
                None => 1,
            }
        } else {
            if self.ready > 0 {
                for (i, slot) in self.window.iter().enumerate() {
                    if again.len() >= room {
                        break;
                    }
                    if let Slot::Ready { due, reconsume } = *slot {
                        if due <= now {
                            again.push((self.base + i as u64, reconsume));
                        }
                    }
                }
            }
            let limit = max_in_flight
                .saturating_sub(self.in_flight + self.ready + self.moving)
                .min(MAX_SPAN.saturating_sub(self.window.len()));
            (room - again.len()).min(limit)
        };
        (again, want)
    }

    /// Settles, unread, the offsets below `from`: retention removed them before the group
    /// got there.
    pub(super) fn skip_to(&mut self, from: u64) {
        if from <= self.next() {
            return;
        }
        for _ in self.next()..from {
            self.window.push_back(Slot::Done);
        }
        self.compact();
    }

    /// Settles the next offset without handing it out (filtered out, lost or damaged).
    pub(super) fn pass(&mut self) {
        self.window.push_back(Slot::Done);
        self.compact();
    }

    /// Hands the next offset out to `member` as delivery `token`; returns the offset.
    pub(super) fn hand_out(
        &mut self,
        member: u64,
        token: u64,
        deadline: Instant,
        reconsume: u32,
    ) -> u64 {
        let offset = self.next();
        self.window.push_back(Slot::InFlight {
            member,
            token,
            deadline,
            reconsume,
        });
        self.in_flight += 1;
        offset
    }

    /// Hands a ready slot out again as delivery `token`; returns whether `offset` was ready.
    pub(super) fn redeliver(
        &mut self,
        offset: u64,
        member: u64,
        token: u64,
        deadline: Instant,
        reconsume: u32,
    ) -> bool {
        let Some(slot) = self.slot(offset) else {
            return false;
        };
        if !matches!(slot, Slot::Ready { .. }) {
            return false;
        }
        *slot = Slot::InFlight {
            member,
            token,
            deadline,
            reconsume,
        };
        self.ready -= 1;
        self.in_flight += 1;
        true
    }

    /// The reconsume count of delivery `token` of `offset`, if that delivery is still out: a
    /// receipt of an earlier delivery is stale.
    pub(super) fn in_flight_reconsume(&self, offset: u64, token: u64) -> Option<u32> {
        let i = offset.checked_sub(self.base)?;
        match self.window.get(i as usize)? {
            Slot::InFlight {
                token: t,
                reconsume,
                ..
            } if *t == token => Some(*reconsume),
            _ => None,
        }
    }

    /// The failures noted for `offset` by [`retry_in_place`](Self::retry_in_place).
    pub(super) fn failure_note(&self, offset: u64) -> Option<FailureNote> {
        self.failures.get(&offset).cloned()
    }

    /// Puts delivery `token` of `offset` back in its slot, ready again at `due` with
    /// `reconsume` failed attempts, and notes the failure; returns whether that delivery was
    /// still out.
    pub(super) fn retry_in_place(
        &mut self,
        offset: u64,
        token: u64,
        due: Instant,
        reconsume: u32,
        now_ms: u64,
        error: String,
    ) -> bool {
        let Some(slot) = self.slot(offset) else {
            return false;
        };
        match *slot {
            Slot::InFlight { token: t, .. } if t == token => {}
            _ => return false,
        }
        *slot = Slot::Ready { due, reconsume };
        self.in_flight -= 1;
        self.ready += 1;
        let note = self.failures.entry(offset).or_insert(FailureNote {
            first_ms: now_ms,
            last_error: String::new(),
        });
        note.last_error = error;
        true
    }

    /// Takes delivery `token` of `offset` out of reach while its retry copy is written (see
    /// [`Slot::Moving`]); returns whether that delivery was still out.
    pub(super) fn start_move(&mut self, offset: u64, token: u64) -> bool {
        let Some(slot) = self.slot(offset) else {
            return false;
        };
        let Slot::InFlight {
            member,
            token: t,
            deadline,
            reconsume,
        } = *slot
        else {
            return false;
        };
        if t != token {
            return false;
        }
        *slot = Slot::Moving {
            member,
            token,
            deadline,
            reconsume,
        };
        self.in_flight -= 1;
        self.moving += 1;
        true
    }

    /// Gives a moving slot back to its delivery: the copy was never queued, so the nack
    /// failed and the delivery is out as before. Returns whether the slot was moving.
    pub(super) fn abort_move(&mut self, offset: u64, token: u64) -> bool {
        let Some(slot) = self.slot(offset) else {
            return false;
        };
        let Slot::Moving {
            member,
            token: t,
            deadline,
            reconsume,
        } = *slot
        else {
            return false;
        };
        if t != token {
            return false;
        }
        *slot = Slot::InFlight {
            member,
            token,
            deadline,
            reconsume,
        };
        self.moving -= 1;
        self.in_flight += 1;
        true
    }

    /// Ends the move of `offset`: settled once its copy is stored (`again` is `None`), or,
    /// when the copy could not be stored, ready again in place at `again`'s (due, reconsume
    /// count), so the message is not lost. Returns whether the slot was moving.
    pub(super) fn finish_move(
        &mut self,
        offset: u64,
        token: u64,
        again: Option<(Instant, u32)>,
    ) -> bool {
        let Some(slot) = self.slot(offset) else {
            return false;
        };
        match *slot {
            Slot::Moving { token: t, .. } if t == token => {}
            _ => return false,
        }
        *slot = match again {
            Some((due, reconsume)) => Slot::Ready { due, reconsume },
            None => Slot::Done,
        };
        self.moving -= 1;
        match again {
            Some(_) => self.ready += 1,
            None => {
                if !self.failures.is_empty() {
                    self.failures.remove(&offset);
                }
                self.compact();
            }
        }
        true
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
            Slot::Moving { .. } => self.moving -= 1,
            Slot::Done => return false,
        }
        if !self.failures.is_empty() {
            self.failures.remove(&offset);
        }
        self.compact();
        true
    }

    /// Hands back deliveries whose consumer is gone or whose deadline passed.
    pub(super) fn reclaim(&mut self, now: Instant, gone: Option<u64>) -> bool {
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
    pub(super) fn next_wake(&self) -> Option<Instant> {
        if self.in_flight == 0 && self.ready == 0 {
            return None;
        }
        self.window
            .iter()
            .filter_map(|s| match *s {
                Slot::InFlight { deadline, .. } => Some(deadline),
                Slot::Ready { due, .. } => Some(due),
                Slot::Done | Slot::Moving { .. } => None,
            })
            .min()
    }
}

#[cfg(test)]
mod tests;

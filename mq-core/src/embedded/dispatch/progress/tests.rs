//! Unit tests of the window: handing out, settling in any order, redelivery after a timeout
//! or a member leaving, retries in place, stale receipts, orderly queues and the span limit.

use std::time::Duration;

use tokio::time::Instant;

use super::*;

const M1: u64 = 1;
const M2: u64 = 2;
const ROOM: usize = 32;
const MAX_IN_FLIGHT: usize = 1000;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A window from `base` with `n` offsets handed out to `M1` (tokens `base..`, deadline
/// `at + 10 s`).
fn handed(base: u64, n: u64, at: Instant) -> QueueProgress {
    let mut p = QueueProgress::new(base);
    for token in base..base + n {
        p.hand_out(M1, token, at + secs(10), 0);
    }
    p
}

fn counts(p: &QueueProgress) -> (usize, usize) {
    (p.in_flight, p.ready)
}

#[test]
fn offsets_are_handed_out_in_order_from_the_committed_one() {
    let now = Instant::now();
    let mut p = QueueProgress::new(10);
    assert_eq!(p.hand_out(M1, 1, now, 0), 10);
    assert_eq!(p.hand_out(M1, 2, now, 0), 11);
    assert_eq!((p.committed(), p.next()), (10, 12));
    assert_eq!(counts(&p), (2, 0));
}

#[test]
fn the_committed_offset_never_passes_an_unsettled_message() {
    let now = Instant::now();
    let mut p = handed(0, 5, now);
    // Acknowledged out of order: the front stays until offset 0 is settled.
    assert!(p.settle(2));
    assert!(p.settle(4));
    assert_eq!(p.committed(), 0);
    assert!(p.settle(0));
    assert_eq!(p.committed(), 1);
    assert!(p.settle(1));
    assert_eq!(p.committed(), 3, "2 was settled already");
    assert_eq!(counts(&p), (1, 0));
    assert!(p.settle(3));
    assert_eq!((p.committed(), p.next()), (5, 5));
    assert_eq!(counts(&p), (0, 0));
    assert_eq!(p.next_wake(), None);
}

#[test]
fn settling_again_or_outside_the_window_changes_nothing() {
    let now = Instant::now();
    let mut p = handed(5, 3, now);
    assert!(p.settle(6));
    assert!(!p.settle(6), "settled twice");
    assert!(!p.settle(4), "below the window");
    assert!(!p.settle(8), "not handed out yet");
    assert_eq!((p.committed(), p.next()), (5, 8));
    assert_eq!(counts(&p), (2, 0));
}

#[test]
fn a_stale_receipt_cannot_retry_and_its_ack_is_harmless() {
    let now = Instant::now();
    let mut p = handed(0, 1, now);
    assert_eq!(p.in_flight_reconsume(0, 0), Some(0));
    // The first delivery (token 0) times out and goes out again as token 7.
    assert!(p.reclaim(now + secs(10), None));
    assert!(p.redeliver(0, M2, 7, now + secs(20), 1));
    assert_eq!(p.in_flight_reconsume(0, 0), None, "token 0 is stale");
    assert!(!p.retry_in_place(0, 0, now, 1, 0, "late".into()));
    assert_eq!(p.failure_note(0).map(|n| n.last_error), None);
    assert_eq!(p.in_flight_reconsume(0, 7), Some(1));
    assert_eq!(counts(&p), (1, 0));
    // Acknowledging settles the offset whichever delivery it came from; the live one's ack
    // that follows finds nothing to do.
    assert!(p.settle(0));
    assert!(!p.settle(0));
    assert_eq!(p.committed(), 1);
    assert_eq!(p.in_flight_reconsume(0, 7), None);
}

#[test]
fn a_retry_in_place_waits_in_its_slot_until_due() {
    let now = Instant::now();
    let mut p = handed(0, 2, now);
    assert!(p.retry_in_place(0, 0, now + secs(5), 1, 1_000, "first".into()));
    assert_eq!(counts(&p), (1, 1));
    assert_eq!(p.in_flight_reconsume(0, 0), None, "no longer out");
    // Not due yet: nothing to send again, and the front holds the committed offset.
    let (again, _) = p.plan(now + secs(4), false, ROOM, MAX_IN_FLIGHT);
    assert!(again.is_empty());
    assert_eq!(p.committed(), 0);
    let (again, _) = p.plan(now + secs(5), false, ROOM, MAX_IN_FLIGHT);
    assert_eq!(again, [(0, 1)]);
    assert_eq!(p.next_wake(), Some(now + secs(5)));

    assert!(p.redeliver(0, M1, 9, now + secs(15), 1));
    assert!(!p.redeliver(0, M1, 10, now + secs(15), 1), "already out");
    assert_eq!(counts(&p), (2, 0));
    assert!(p.retry_in_place(0, 9, now + secs(20), 2, 2_000, "second".into()));
    let note = p.failure_note(0).unwrap();
    assert_eq!((note.first_ms, note.last_error.as_str()), (1_000, "second"));
    // Settling forgets the failures.
    assert!(p.settle(0));
    assert!(p.failure_note(0).is_none());
}

#[test]
fn a_timeout_makes_a_delivery_ready_again_with_one_more_attempt() {
    let now = Instant::now();
    let mut p = QueueProgress::new(0);
    p.hand_out(M1, 1, now + secs(10), 2);
    p.hand_out(M1, 2, now + secs(30), 0);
    assert_eq!(p.next_wake(), Some(now + secs(10)));
    assert!(!p.reclaim(now + secs(9), None));
    assert!(p.reclaim(now + secs(10), None));
    assert_eq!(counts(&p), (1, 1));
    let (again, want) = p.plan(now + secs(10), false, ROOM, MAX_IN_FLIGHT);
    assert_eq!(again, [(0, 3)]);
    assert_eq!(want, ROOM - 1);
    assert_eq!(p.next_wake(), Some(now + secs(10)), "ready now");
    assert_eq!(p.committed(), 0);
}

#[test]
fn a_member_leaving_hands_back_its_deliveries_as_no_failed_attempt() {
    let now = Instant::now();
    let mut p = QueueProgress::new(0);
    p.hand_out(M1, 1, now + secs(10), 4);
    p.hand_out(M2, 2, now + secs(10), 0);
    p.hand_out(M1, 3, now + secs(10), 0);
    assert!(p.reclaim(now, Some(M1)));
    assert_eq!(counts(&p), (1, 2));
    assert_eq!(
        p.in_flight_reconsume(1, 2),
        Some(0),
        "the other member's stays"
    );
    let (again, _) = p.plan(now, false, ROOM, MAX_IN_FLIGHT);
    assert_eq!(again, [(0, 4), (2, 0)]);
    assert!(!p.reclaim(now, Some(M1)), "nothing of M1 is left out");
}

#[test]
fn redelivery_takes_no_more_than_the_room_left() {
    let now = Instant::now();
    let mut p = handed(0, 5, now);
    p.reclaim(now + secs(10), None);
    let (again, want) = p.plan(now + secs(10), false, 3, MAX_IN_FLIGHT);
    assert_eq!(again, [(0, 1), (1, 1), (2, 1)]);
    assert_eq!(want, 0);
}

#[test]
fn an_orderly_queue_serves_only_its_front() {
    let now = Instant::now();
    let mut p = QueueProgress::new(3);
    assert_eq!(p.plan(now, true, ROOM, MAX_IN_FLIGHT), (vec![], 1));
    p.hand_out(M1, 1, now + secs(10), 0);
    assert_eq!(p.plan(now, true, ROOM, MAX_IN_FLIGHT), (vec![], 0));
    // A later slot ready again waits while the front is out.
    p.hand_out(M1, 2, now + secs(10), 0);
    assert!(p.retry_in_place(4, 2, now, 1, 0, "x".into()));
    assert_eq!(p.plan(now, true, ROOM, MAX_IN_FLIGHT), (vec![], 0));
    // The front retried: it alone comes again, once due.
    assert!(p.retry_in_place(3, 1, now + secs(1), 1, 0, "x".into()));
    assert_eq!(p.plan(now, true, ROOM, MAX_IN_FLIGHT), (vec![], 0));
    assert_eq!(
        p.plan(now + secs(1), true, ROOM, MAX_IN_FLIGHT),
        (vec![(3, 1)], 0)
    );
}

#[test]
fn a_stuck_front_stops_new_reads_at_max_span() {
    let now = Instant::now();
    let mut p = handed(0, MAX_SPAN as u64 - 5, now);
    for offset in 1..p.next() {
        assert!(p.settle(offset));
    }
    assert_eq!(counts(&p), (1, 0));
    assert_eq!(p.plan(now, false, ROOM, MAX_IN_FLIGHT), (vec![], 5));
    for token in 0..5 {
        p.hand_out(M1, 10_000 + token, now + secs(10), 0);
        assert!(p.settle(p.next() - 1));
    }
    // One in flight, yet the window spans MAX_SPAN offsets: nothing new is read.
    assert_eq!(p.plan(now, false, ROOM, MAX_IN_FLIGHT), (vec![], 0));
    assert_eq!(p.committed(), 0);
    assert!(p.settle(0));
    assert_eq!(p.committed(), MAX_SPAN as u64);
    assert_eq!(p.plan(now, false, ROOM, MAX_IN_FLIGHT), (vec![], ROOM));
}

#[test]
fn new_reads_stop_at_the_members_in_flight_limit() {
    let now = Instant::now();
    let mut p = handed(0, 4, now);
    assert!(p.retry_in_place(0, 0, now + secs(60), 1, 0, "x".into()));
    // Three out and one waiting count against a limit of five.
    assert_eq!(p.plan(now, false, ROOM, 5), (vec![], 1));
    assert_eq!(p.plan(now, false, ROOM, 4), (vec![], 0));
}

#[test]
fn skipped_and_passed_offsets_settle_without_a_delivery() {
    let now = Instant::now();
    let mut p = QueueProgress::new(0);
    p.skip_to(3);
    assert_eq!((p.committed(), p.next()), (3, 3));
    p.skip_to(2);
    assert_eq!((p.committed(), p.next()), (3, 3), "never backwards");
    p.hand_out(M1, 1, now + secs(10), 0);
    p.pass();
    p.skip_to(8);
    assert_eq!(
        (p.committed(), p.next()),
        (3, 8),
        "the delivery at 3 holds the front"
    );
    assert_eq!(counts(&p), (1, 0));
    assert!(p.settle(3));
    assert_eq!(p.committed(), 8);
}

#[test]
fn a_moving_slot_holds_the_committed_offset_until_its_copy_is_stored() {
    let now = Instant::now();
    let mut p = handed(0, 3, now);
    assert!(p.start_move(0, 0));
    assert!(!p.start_move(0, 0), "already moving");
    assert!(!p.start_move(1, 7), "a stale token moves nothing");
    assert_eq!(p.in_flight_reconsume(0, 0), None, "no longer out");
    assert_eq!(p.moving, 1);
    // Later ones settle; the front still holds the committed offset.
    assert!(p.settle(1));
    assert!(p.settle(2));
    assert_eq!(p.committed(), 0);
    // Neither a timeout nor its member leaving hands it out again, nor does a plan.
    assert!(!p.reclaim(now + secs(60), Some(M1)));
    assert_eq!(p.plan(now + secs(60), false, ROOM, MAX_IN_FLIGHT).0, vec![]);
    assert_eq!(
        p.next_wake(),
        None,
        "nothing to wait for: the store's answer wakes it"
    );
    // The moving slot counts against the in-flight limit like an outstanding one.
    assert_eq!(p.plan(now, false, ROOM, 1), (vec![], 0));
    assert!(!p.finish_move(0, 9, None), "another delivery's answer");
    assert!(p.finish_move(0, 0, None));
    assert_eq!((p.committed(), p.moving), (3, 0));
    assert!(!p.finish_move(0, 0, None), "answered once");
}

#[test]
fn a_copy_not_stored_makes_the_slot_ready_again_in_place() {
    let now = Instant::now();
    let mut p = handed(0, 2, now);
    assert!(p.start_move(0, 0));
    assert!(p.finish_move(0, 0, Some((now + secs(5), 1))));
    assert_eq!((counts(&p), p.moving), ((1, 1), 0));
    assert_eq!(p.plan(now + secs(4), false, ROOM, MAX_IN_FLIGHT).0, vec![]);
    assert_eq!(
        p.plan(now + secs(5), false, ROOM, MAX_IN_FLIGHT).0,
        [(0, 1)],
        "due after the back-off, with the attempt counted"
    );
    assert_eq!(p.committed(), 0);
}

#[test]
fn a_move_never_queued_gives_the_delivery_back() {
    let now = Instant::now();
    let mut p = handed(0, 1, now);
    assert!(p.start_move(0, 0));
    assert!(!p.abort_move(0, 5), "another delivery");
    assert!(p.abort_move(0, 0));
    assert_eq!((counts(&p), p.moving), ((1, 0), 0));
    assert_eq!(p.in_flight_reconsume(0, 0), Some(0), "out as before");
    // An ack of a moving slot settles it: the answer then finds nothing to do.
    assert!(p.start_move(0, 0));
    assert!(p.settle(0));
    assert_eq!((p.committed(), p.moving), (1, 0));
    assert!(!p.finish_move(0, 0, Some((now, 1))));
}

#[test]
fn a_reset_window_ignores_receipts_from_before_it() {
    let now = Instant::now();
    let mut p = QueueProgress::new(0);
    p.hand_out(1, 5, now, 0);
    let mut p = QueueProgress::reset(0, 6);
    assert!(!p.current(5), "a token from before the reset is stale");
    let offset = p.hand_out(1, 6, now, 0);
    assert_eq!(offset, 0);
    assert!(p.current(6));
    assert!(p.settle(offset));
    assert_eq!(p.committed(), 1);
}

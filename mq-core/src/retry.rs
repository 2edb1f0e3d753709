//! What becomes of a failed delivery: the one rule every backend applies.
//!
//! As in RocketMQ: a message is retried until it has been reconsumed `max_reconsume_times`
//! times, then it goes to the group's dead-letter queue. An orderly queue retries in place
//! after `suspend_current_queue_time`, so that nothing behind it overtakes it; a broadcasting
//! member retries in place on the back-off schedule, since its progress is its own; a
//! concurrent clustering group sends a copy to its retry queue, due after the back-off, and
//! moves on.

use std::time::Duration;

use crate::broker::{ConsumerOptions, Failure};
use crate::subscription::{ConsumeMode, MessageModel};

/// A failed delivery, as the rule sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FailedDelivery {
    /// How often the message was delivered and not acknowledged before this delivery.
    pub reconsume_times: u32,
    /// The group's message model.
    pub model: MessageModel,
    /// The group's consume mode.
    pub mode: ConsumeMode,
    /// The delivery came from a queue that several members read at once (a backend's shared
    /// retry queue): it cannot be retried in place, since another member would not wait.
    pub shared_source: bool,
}

/// The verdict on a failed delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Every attempt is used: the message goes to the group's dead-letter queue.
    DeadLetter {
        /// Deliveries made, this one included.
        attempts: u32,
    },
    /// Delivered again from where it is.
    InPlace(Retry),
    /// A copy goes to the group's retry queue; the original is settled.
    RetryQueue(Retry),
}

/// A retry the verdict schedules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Retry {
    /// 1 for the first retry.
    pub retry: u32,
    /// How long until it is due.
    pub after: Duration,
}

impl FailedDelivery {
    /// Applies the rule. A failure's own `retry_after` overrides the back-off and the
    /// orderly pause.
    pub(crate) fn verdict(&self, options: &ConsumerOptions, failure: &Failure) -> Verdict {
        let retry = self.reconsume_times.saturating_add(1);
        if retry > options.max_reconsume_times {
            return Verdict::DeadLetter { attempts: retry };
        }
        let orderly = self.mode == ConsumeMode::Orderly;
        let in_place = (orderly || self.model == MessageModel::Broadcasting) && !self.shared_source;
        let scheduled = if orderly && in_place {
            options.suspend_current_queue_time
        } else {
            options.backoff.delay(retry)
        };
        let after = failure.retry_after.unwrap_or(scheduled);
        if in_place {
            Verdict::InPlace(Retry { retry, after })
        } else {
            Verdict::RetryQueue(Retry { retry, after })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delay::Backoff;

    fn options() -> ConsumerOptions {
        ConsumerOptions::new()
            .max_reconsume_times(2)
            .backoff(Backoff {
                steps: vec![Duration::from_secs(10), Duration::from_secs(30)],
            })
            .suspend_current_queue_time(Duration::from_millis(1500))
    }

    fn failed(reconsume_times: u32, model: MessageModel, mode: ConsumeMode) -> FailedDelivery {
        FailedDelivery {
            reconsume_times,
            model,
            mode,
            shared_source: false,
        }
    }

    #[test]
    fn concurrent_clustering_retries_through_the_retry_queue_on_the_backoff() {
        let f = failed(0, MessageModel::Clustering, ConsumeMode::Concurrently);
        assert_eq!(
            f.verdict(&options(), &Failure::new("x")),
            Verdict::RetryQueue(Retry {
                retry: 1,
                after: Duration::from_secs(10)
            })
        );
        let f = failed(1, MessageModel::Clustering, ConsumeMode::Concurrently);
        assert_eq!(
            f.verdict(&options(), &Failure::new("x")),
            Verdict::RetryQueue(Retry {
                retry: 2,
                after: Duration::from_secs(30)
            })
        );
    }

    #[test]
    fn attempts_used_up_go_to_the_dead_letter_queue_whatever_the_mode() {
        for (model, mode) in [
            (MessageModel::Clustering, ConsumeMode::Concurrently),
            (MessageModel::Clustering, ConsumeMode::Orderly),
            (MessageModel::Broadcasting, ConsumeMode::Concurrently),
        ] {
            let f = failed(2, model, mode);
            let why = Failure::retry_after("x", Duration::from_secs(1));
            assert_eq!(
                f.verdict(&options(), &why),
                Verdict::DeadLetter { attempts: 3 },
                "{model:?} {mode:?}"
            );
        }
    }

    #[test]
    fn orderly_queues_pause_and_retry_in_place() {
        let f = failed(0, MessageModel::Clustering, ConsumeMode::Orderly);
        assert_eq!(
            f.verdict(&options(), &Failure::new("x")),
            Verdict::InPlace(Retry {
                retry: 1,
                after: Duration::from_millis(1500)
            })
        );
    }

    #[test]
    fn broadcasting_members_retry_in_place_on_the_backoff() {
        let f = failed(0, MessageModel::Broadcasting, ConsumeMode::Concurrently);
        assert_eq!(
            f.verdict(&options(), &Failure::new("x")),
            Verdict::InPlace(Retry {
                retry: 1,
                after: Duration::from_secs(10)
            })
        );
    }

    #[test]
    fn a_shared_retry_queue_is_never_retried_in_place() {
        let mut f = failed(0, MessageModel::Clustering, ConsumeMode::Orderly);
        f.shared_source = true;
        assert_eq!(
            f.verdict(&options(), &Failure::new("x")),
            Verdict::RetryQueue(Retry {
                retry: 1,
                after: Duration::from_secs(10)
            })
        );
    }

    #[test]
    fn a_failure_may_choose_its_own_delay() {
        let why = Failure::retry_after("busy", Duration::from_millis(5));
        for (model, mode) in [
            (MessageModel::Clustering, ConsumeMode::Concurrently),
            (MessageModel::Clustering, ConsumeMode::Orderly),
            (MessageModel::Broadcasting, ConsumeMode::Concurrently),
        ] {
            let after = match failed(0, model, mode).verdict(&options(), &why) {
                Verdict::InPlace(r) | Verdict::RetryQueue(r) => r.after,
                other => panic!("{other:?}"),
            };
            assert_eq!(after, Duration::from_millis(5), "{model:?} {mode:?}");
        }
    }
}

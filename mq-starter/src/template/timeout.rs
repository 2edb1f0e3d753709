//! How long a send may take. Each attempt (one broker call) gets at most
//! `mq.producer.send-timeout`; a failure of the connection or the disk, or an attempt that
//! timed out, is tried again, with the same message id, up to `mq.producer.retries` times; and
//! the whole send, retries included, must complete within `mq.producer.request-timeout`
//! (RocketMQ's `sendMsgTimeout`), the last attempt cut short to fit.

use std::future::Future;
use std::time::Duration;

use mq_core::BrokerError;
use tokio::time::Instant;

use super::SendError;
use crate::config::ProducerSettings;

/// The time limits and retries of one send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SendPolicy {
    /// The longest one attempt may take.
    pub send_timeout: Duration,
    /// Attempts after the first.
    pub retries: u32,
    /// The longest the whole send may take.
    pub request_timeout: Duration,
}

impl SendPolicy {
    /// The policy of `mq.producer`.
    pub fn of(settings: &ProducerSettings) -> Self {
        SendPolicy {
            send_timeout: settings.send_timeout,
            retries: settings.retries,
            request_timeout: settings.request_timeout,
        }
    }

    /// The same limits without retries (batches and half messages are sent once).
    pub fn once(self) -> Self {
        SendPolicy { retries: 0, ..self }
    }

    /// Runs `attempt` until it succeeds, fails in a way a retry cannot mend, runs out of
    /// retries, or the request timeout is reached.
    pub async fn run<T, F, Fut>(&self, mut attempt: F) -> Result<T, SendError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, BrokerError>>,
    {
        let deadline = Instant::now() + self.request_timeout;
        let mut attempts = 0u32;
        let mut last_error = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(SendError::RequestTimeout {
                    timeout: self.request_timeout,
                    attempts,
                    last_error,
                });
            }
            attempts += 1;
            let exhausted = attempts > self.retries;
            match tokio::time::timeout(self.send_timeout.min(left), attempt()).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e)) if exhausted || !retriable(&e) => return Err(e.into()),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, attempt = attempts, "send failed; retrying");
                    last_error = Some(e);
                }
                // The request timeout, not the attempt's own, cut it short: the loop reports it.
                Err(_) if Instant::now() >= deadline => {}
                Err(_) if exhausted => return Err(SendError::Timeout(self.send_timeout)),
                Err(_) => tracing::warn!(attempt = attempts, "send timed out; retrying"),
            }
        }
    }
}

/// Whether another attempt may succeed: the backend was unreachable or the disk refused, not
/// the message (and not a backend that stopped working until it is reopened).
fn retriable(e: &BrokerError) -> bool {
    e.is_transient()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn policy(send: u64, retries: u32, request: u64) -> SendPolicy {
        SendPolicy {
            send_timeout: S * send as u32,
            retries,
            request_timeout: S * request as u32,
        }
    }

    fn backend() -> BrokerError {
        BrokerError::backend(
            "test",
            mq_core::BackendErrorKind::Unavailable,
            "connection refused",
        )
    }

    #[test]
    fn only_failures_that_may_pass_are_retried() {
        assert!(retriable(&backend()));
        let stopped =
            BrokerError::backend("test", mq_core::BackendErrorKind::Failed, "writer stopped");
        assert!(!retriable(&stopped), "a stopped backend stays stopped");
        assert!(!retriable(&BrokerError::TopicNotFound("t".into())));
    }

    /// An attempt that never answers.
    async fn hang() -> Result<(), BrokerError> {
        std::future::pending().await
    }

    #[tokio::test(start_paused = true)]
    async fn a_send_that_answers_in_time_succeeds() {
        let calls = AtomicU32::new(0);
        let r = policy(3, 2, 3)
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok::<_, BrokerError>(7)
            })
            .await;
        assert_eq!(r.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_send_fails_at_the_request_timeout() {
        let started = Instant::now();
        let err = policy(3, 2, 3).run(hang).await.unwrap_err();
        assert_eq!(started.elapsed(), S * 3);
        assert!(
            matches!(
                err,
                SendError::RequestTimeout {
                    attempts: 1,
                    last_error: None,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_request_timeout_cuts_the_last_attempt_short() {
        let started = Instant::now();
        let err = policy(2, 5, 5).run(hang).await.unwrap_err();
        assert_eq!(started.elapsed(), S * 5);
        assert!(
            matches!(err, SendError::RequestTimeout { timeout, attempts: 3, .. } if timeout == S * 5),
            "{err}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn timed_out_attempts_are_retried_while_time_is_left() {
        let started = Instant::now();
        let err = policy(2, 2, 10).run(hang).await.unwrap_err();
        assert_eq!(started.elapsed(), S * 6);
        assert!(matches!(err, SendError::Timeout(t) if t == S * 2), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn connection_failures_are_retried_then_returned() {
        let calls = AtomicU32::new(0);
        let err = policy(3, 2, 3)
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(backend())
            })
            .await
            .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert!(
            matches!(err, SendError::Broker(BrokerError::Backend { .. })),
            "{err}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_message_is_not_retried() {
        let calls = AtomicU32::new(0);
        let err = policy(3, 2, 3)
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(BrokerError::TopicNotFound("t".into()))
            })
            .await
            .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(
            matches!(err, SendError::Broker(BrokerError::TopicNotFound(_))),
            "{err}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_then_a_hang_reports_the_failure_with_the_timeout() {
        let calls = AtomicU32::new(0);
        let err = policy(3, 2, 3)
            .run(|| {
                let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
                async move {
                    if first {
                        tokio::time::sleep(S * 2).await;
                        Err(backend())
                    } else {
                        hang().await
                    }
                }
            })
            .await
            .unwrap_err();
        // The second attempt had one second left; the failure before it is kept as the source.
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(
            matches!(
                err,
                SendError::RequestTimeout {
                    attempts: 2,
                    last_error: Some(BrokerError::Backend { .. }),
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn batches_and_half_messages_are_sent_once() {
        assert_eq!(policy(3, 2, 3).once().retries, 0);
        assert_eq!(policy(3, 2, 3).once().request_timeout, S * 3);
    }
}

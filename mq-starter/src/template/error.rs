//! Why a send failed.

use std::time::Duration;

use mq_core::BrokerError;

/// Why a send failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The broker refused or failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The payload does not serialize to JSON.
    #[error("payload does not serialize: {0}")]
    Serialize(#[from] serde_json::Error),
    /// No attempt answered within `mq.producer.send-timeout` (each of them, retries included).
    #[error("send timed out after {0:?}")]
    Timeout(Duration),
    /// The send, retries included, did not complete within `mq.producer.request-timeout`.
    #[error("send not completed within the request timeout of {timeout:?} ({attempts} attempts)")]
    RequestTimeout {
        /// The request timeout.
        timeout: Duration,
        /// The attempts made.
        attempts: u32,
        /// What the last attempt that failed (rather than ran out of time) returned.
        #[source]
        last_error: Option<BrokerError>,
    },
    /// No transaction listener has this name.
    #[error("no transaction listener named {0:?}")]
    UnknownTransactionListener(String),
    /// The local transaction could not run.
    #[error("local transaction of {listener:?} failed: {message}")]
    LocalTransaction {
        /// The listener.
        listener: String,
        /// What went wrong.
        message: String,
    },
    /// No reply within the timeout.
    #[error("no reply within {0:?}")]
    ReplyTimeout(Duration),
    /// The reply does not deserialize.
    #[error("reply does not deserialize: {0}")]
    ReplyDecode(serde_json::Error),
}

//! Transactional (half) messages: the local transaction's answer and the check-back contract.

use std::time::Duration;

use async_trait::async_trait;

use crate::message::MessageView;

/// RocketMQ's `transactionTimeOut`: the first check-back comes this long after the half message.
pub const DEFAULT_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(6);
/// RocketMQ 5's `transactionCheckInterval`: later check-backs come this often.
pub const DEFAULT_TRANSACTION_CHECK_INTERVAL: Duration = Duration::from_secs(30);
/// RocketMQ's `transactionCheckMax`: after this many unanswered check-backs the message is
/// discarded as rolled back.
pub const DEFAULT_TRANSACTION_CHECK_MAX: u32 = 15;

/// The outcome of a local transaction, or of a check-back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TxState {
    /// The local transaction committed: deliver the message.
    Commit,
    /// The local transaction rolled back: discard the message.
    Rollback,
    /// Not known yet: ask again later.
    Unknown,
}

/// Answers the broker's check-back for half messages whose outcome it did not hear.
///
/// Registered per producer name: one application may have many.
#[async_trait]
pub trait TransactionChecker: Send + Sync + 'static {
    /// The state of the local transaction that sent `half`. Typically looks up a
    /// transaction-log row written in the same database transaction as the business change.
    async fn check(&self, half: &MessageView) -> TxState;
}

/// Timing of check-back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckPolicy {
    /// First check after this long.
    pub timeout: Duration,
    /// Then every this long.
    pub interval: Duration,
    /// At most this many checks; then the message is discarded.
    pub max_checks: u32,
}

impl Default for CheckPolicy {
    fn default() -> Self {
        CheckPolicy {
            timeout: DEFAULT_TRANSACTION_TIMEOUT,
            interval: DEFAULT_TRANSACTION_CHECK_INTERVAL,
            max_checks: DEFAULT_TRANSACTION_CHECK_MAX,
        }
    }
}

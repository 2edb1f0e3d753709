//! The settings every backend has, with the one validation they share.
//!
//! A backend's own configuration (`EmbeddedConfig`, `RedisConfig`) holds these as its
//! `common` field beside what only it has, and validates them here before its own rules.

use crate::broker::DEFAULT_QUEUE_COUNT;
use crate::delay::DelayPolicy;
use crate::error::{BrokerError, Result};
use crate::message::DEFAULT_MAX_MESSAGE_SIZE;
use crate::transaction::CheckPolicy;

/// Most queues a topic may have.
pub const MAX_QUEUES: u32 = 1024;

/// Settings shared by every backend; each has RocketMQ's default.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BrokerSettings {
    /// Queue count of topics created on first use.
    pub default_queues: u32,
    /// Largest accepted body, in bytes.
    pub max_message_size: usize,
    /// Delay levels and the longest delay.
    pub delay: DelayPolicy,
    /// Transaction check-back timing.
    pub check: CheckPolicy,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            default_queues: DEFAULT_QUEUE_COUNT,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            delay: DelayPolicy::default(),
            check: CheckPolicy::default(),
        }
    }
}

impl BrokerSettings {
    /// Checks the rules every backend needs; the first broken one is the error.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: &str| Err(BrokerError::InvalidConfig(why.to_owned()));
        if self.default_queues == 0 || self.default_queues > MAX_QUEUES {
            return bad("default queue count must be 1 to 1024");
        }
        if self.max_message_size == 0 {
            return bad("max-message-size must be at least 1 byte");
        }
        if self.delay.levels.is_empty() {
            return bad("at least one delay level is needed");
        }
        if self.check.max_checks == 0 || self.check.interval.is_zero() {
            return bad(
                "transaction check-back needs at least one check and an interval above zero",
            );
        }
        Ok(())
    }
}

/// The setters of the shared settings, for a backend configuration holding them as `common`:
/// written once, so that every backend's builder offers the same ones.
macro_rules! common_setters {
    () => {
        /// Sets the queue count of topics created on first use.
        pub fn default_queues(mut self, queues: u32) -> Self {
            self.common.default_queues = queues;
            self
        }

        /// Sets the largest accepted body.
        pub fn max_message_size(mut self, bytes: usize) -> Self {
            self.common.max_message_size = bytes;
            self
        }

        /// Sets the delay levels and the longest delay.
        pub fn delay_policy(mut self, policy: $crate::delay::DelayPolicy) -> Self {
            self.common.delay = policy;
            self
        }

        /// Sets the transaction check-back timing.
        pub fn check_policy(mut self, policy: $crate::transaction::CheckPolicy) -> Self {
            self.common.check = policy;
            self
        }

        /// Sets every shared setting at once.
        pub fn common(mut self, common: $crate::settings::BrokerSettings) -> Self {
            self.common = common;
            self
        }
    };
}
pub(crate) use common_setters;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn refused(settings: BrokerSettings) -> String {
        match settings.validate() {
            Err(BrokerError::InvalidConfig(why)) => why,
            other => panic!("accepted: {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid() {
        assert!(BrokerSettings::default().validate().is_ok());
    }

    #[test]
    fn each_rule_is_checked() {
        let base = BrokerSettings::default();
        let mut s = base.clone();
        s.default_queues = 0;
        assert!(refused(s).contains("queue count"));
        let mut s = base.clone();
        s.default_queues = MAX_QUEUES + 1;
        assert!(refused(s).contains("queue count"));
        let mut s = base.clone();
        s.max_message_size = 0;
        assert!(refused(s).contains("max-message-size"));
        let mut s = base.clone();
        s.delay.levels.clear();
        assert!(refused(s).contains("delay level"));
        let mut s = base.clone();
        s.check.max_checks = 0;
        assert!(refused(s).contains("check-back"));
        let mut s = base;
        s.check.interval = Duration::ZERO;
        assert!(refused(s).contains("check-back"));
    }
}

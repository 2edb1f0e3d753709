//! The conformance suite against the Redis Streams backend, on the server of `REDIS_URL`.

// A failed step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use mq_core::redis::{RedisBroker, RedisConfig};
use mq_core::testkit::Harness;
use mq_core::Broker;

struct Redis(support::Namespace);

impl Redis {
    fn new() -> Self {
        let url = support::redis_url().expect("guarded");
        Redis(support::Namespace::new(&url))
    }
}

#[async_trait::async_trait]
impl Harness for Redis {
    async fn open(&self) -> Arc<dyn Broker> {
        // Within one process every store wakes the consumers; a long poll and a slower
        // heartbeat keep the cases on the paused clock from spending their hours of back-off
        // on idle round trips.
        let config = RedisConfig::new(&self.0.url)
            .prefix(&self.0.prefix)
            .poll_interval(Duration::from_secs(2))
            .heartbeat_interval(Duration::from_secs(2));
        RedisBroker::connect(config).await.expect("connect")
    }
}

mq_core::conformance_suite!(Redis::new(), if support::redis_url().is_some());

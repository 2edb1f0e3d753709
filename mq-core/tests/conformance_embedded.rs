//! The conformance suite against the embedded broker.

// A failed step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use mq_core::embedded::{EmbeddedBroker, EmbeddedConfig};
use mq_core::testkit::Harness;
use mq_core::Broker;

struct Embedded(tempfile::TempDir);

impl Embedded {
    fn new() -> Self {
        Embedded(tempfile::tempdir().expect("tempdir"))
    }
}

#[async_trait::async_trait]
impl Harness for Embedded {
    async fn open(&self) -> Arc<dyn Broker> {
        // Small segments so that the suite also crosses segment boundaries.
        let config = EmbeddedConfig::new(self.0.path())
            .segment_size(8 * 1024 * 1024)
            .max_message_size(mq_core::DEFAULT_MAX_MESSAGE_SIZE)
            .consume_queue_entries(16);
        EmbeddedBroker::open(config).await.expect("open")
    }
}

mq_core::conformance_suite!(Embedded::new());

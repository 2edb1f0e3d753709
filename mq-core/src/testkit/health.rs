//! Conformance case for the health check: a live broker is healthy, a shut-down one is not.

use super::{unique, Harness};
use crate::broker::SendOptions;
use crate::message::Message;
use crate::BrokerError;

/// `health` is `Ok` on an open broker that stores and reads, and fails with
/// [`BrokerError::Closed`] once it is shut down.
pub async fn health_follows_the_broker_lifecycle(h: &dyn Harness) {
    let broker = h.open().await;
    broker
        .health()
        .await
        .expect("a freshly opened broker is healthy");
    let topic = unique("health");
    broker
        .send(Message::new(&topic, "b"), SendOptions::new())
        .await
        .expect("send");
    broker
        .health()
        .await
        .expect("a broker that has just stored a message is healthy");
    broker.shutdown().await.expect("shutdown");
    match broker.health().await {
        Err(BrokerError::Closed) => {}
        other => panic!("health after shutdown must be Closed, got {other:?}"),
    }
}

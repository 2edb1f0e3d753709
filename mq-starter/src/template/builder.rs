//! [`MessageBuilder`]: one message and how to send it.

use bytes::Bytes;
use mq_core::{BrokerError, Delay, Destination, Message, SendOptions, SendResult};
use serde::Serialize;

use super::{MqTemplate, SendError};

/// A message being built; finish with [`send`](Self::send) and friends.
pub struct MessageBuilder {
    pub(super) template: MqTemplate,
    pub(super) destination: Result<Destination, BrokerError>,
    pub(super) body: Bytes,
    pub(super) keys: Vec<String>,
    pub(super) properties: Vec<(String, String)>,
    pub(super) tag: Option<String>,
    pub(super) options: SendOptions,
}

impl MessageBuilder {
    /// Adds a business key (the default idempotency key).
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.keys.push(key.into());
        self
    }

    /// Sets the tag (overrides the destination's).
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }

    /// Sets a user property.
    pub fn property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.push((name.into(), value.into()));
        self
    }

    /// Sends to the queue of `key`, so that messages with one key stay in order.
    pub fn sharding_key(mut self, key: impl Into<String>) -> Self {
        self.options.queue = mq_core::QueueSelector::ShardingKey(key.into());
        self
    }

    /// Delays delivery.
    pub fn delay(mut self, delay: Delay) -> Self {
        self.options.delay = Some(delay);
        self
    }

    /// Sets the body to `payload` as JSON.
    pub fn json<T: Serialize + ?Sized>(mut self, payload: &T) -> Result<Self, SendError> {
        self.body = Bytes::from(serde_json::to_vec(payload)?);
        Ok(self)
    }

    /// Sets the body to raw bytes.
    pub fn bytes(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// The message, and the template and options to send it with.
    pub(super) fn build(self) -> Result<(MqTemplate, Message, SendOptions), SendError> {
        let dest = self.destination?;
        let mut msg = Message::to_destination(dest, self.body);
        if let Some(tag) = self.tag {
            msg = msg.with_tag(tag);
        }
        for k in self.keys {
            msg = msg.with_key(k);
        }
        for (k, v) in self.properties {
            msg = msg.with_property(k, v);
        }
        Ok((self.template, msg, self.options))
    }

    /// Sends and waits until the message is stored.
    pub async fn send(self) -> Result<SendResult, SendError> {
        let (template, msg, options) = self.build()?;
        template.send_message(msg, options).await
    }

    /// Sends without waiting: the returned task resolves when the message is stored.
    pub fn send_async(self) -> tokio::task::JoinHandle<Result<SendResult, SendError>> {
        tokio::spawn(self.send())
    }

    /// Sends and forgets: failures are logged, not returned.
    pub fn send_one_way(self) {
        tokio::spawn(async move {
            if let Err(e) = self.send().await {
                tracing::warn!(error = %e, "one-way send failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use mq_core::embedded::{EmbeddedBroker, EmbeddedConfig};
    use mq_core::{Broker, QueueSelector};

    use super::*;
    use crate::config::ProducerSettings;
    use crate::metrics::Metrics;

    #[tokio::test]
    async fn build_assembles_the_message_and_its_options() {
        let dir = tempfile::tempdir().unwrap();
        let broker = EmbeddedBroker::open(EmbeddedConfig::new(dir.path()))
            .await
            .unwrap();
        let template = MqTemplate::new(
            broker.clone(),
            ProducerSettings::default(),
            Arc::new(Metrics::default()),
        );
        let (_, msg, options) = template
            .message("orders:created")
            .key("a")
            .key("b")
            .tag("paid")
            .property("p", "v")
            .sharding_key("user-1")
            .json(&serde_json::json!({"id": 1}))
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(msg.topic(), "orders");
        assert_eq!(msg.tag(), Some("paid"));
        assert_eq!(msg.keys(), ["a", "b"]);
        assert_eq!(msg.properties().get("p").map(String::as_str), Some("v"));
        assert_eq!(&msg.body()[..], br#"{"id":1}"#);
        assert!(matches!(options.queue, QueueSelector::ShardingKey(ref k) if k == "user-1"));

        let err = template.message("bad topic!").bytes("x").build().err();
        assert!(matches!(err, Some(SendError::Broker(_))), "{err:?}");
        broker.shutdown().await.unwrap();
    }
}

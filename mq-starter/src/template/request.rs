//! Request-reply: a request carries the topic and correlation id of its reply; a listener
//! that returns a value answers it; every template reads replies (broadcasting) on a consumer
//! of its own and hands each to the request waiting for it.

use std::sync::Arc;
use std::time::Duration;

use mq_core::{BrokerError, Message, MessageId, MessageView, SendOptions, Subscription};
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use super::{MessageBuilder, MqTemplate, SendError};

/// Property naming the topic a reply goes to.
pub const REPLY_TO: &str = "mq.reply-to";
/// Property matching a reply with its request.
pub const CORRELATION_ID: &str = "mq.correlation-id";
/// The topic replies travel on; every instance reads it (broadcasting) and keeps its own.
pub const REPLY_TOPIC: &str = "mq-reply";

impl MqTemplate {
    async fn ensure_reply_consumer(&self) -> Result<(), SendError> {
        self.inner
            .reply_consumer
            .get_or_try_init(|| async {
                let consumer = self
                    .inner
                    .broker
                    .subscribe(
                        Subscription::new(REPLY_TOPIC, "mq-reply")
                            .model(mq_core::MessageModel::Broadcasting),
                        mq_core::ConsumerOptions::new().instance(self.inner.instance.clone()),
                    )
                    .await?;
                let inner = Arc::downgrade(&self.inner);
                tokio::spawn(async move {
                    loop {
                        let batch = match consumer.receive(64, Duration::from_secs(1)).await {
                            Ok(b) => b,
                            Err(BrokerError::Closed) => return,
                            Err(e) => {
                                tracing::warn!(error = %e, "reply consumer failed; retrying");
                                tokio::time::sleep(Duration::from_secs(1)).await;
                                continue;
                            }
                        };
                        let Some(inner) = inner.upgrade() else {
                            let _ = consumer.close().await;
                            return;
                        };
                        let receipts: Vec<_> = batch.iter().map(|d| d.receipt.clone()).collect();
                        for d in batch {
                            let waiter = d
                                .message
                                .properties
                                .get(CORRELATION_ID)
                                .and_then(|c| inner.pending_replies.lock().remove(c));
                            if let Some(tx) = waiter {
                                let _ = tx.send(d.message);
                            }
                        }
                        let _ = consumer.ack(&receipts).await;
                    }
                });
                Ok::<(), SendError>(())
            })
            .await
            .map(|_| ())
    }

    /// Answers a request (used by the runtime after a reply handler returns).
    pub(crate) async fn reply(&self, to: ReplyAddress, body: Vec<u8>) -> Result<(), SendError> {
        let msg = Message::new(to.topic, body).with_property(CORRELATION_ID, to.correlation);
        self.send_message(msg, SendOptions::new()).await.map(|_| ())
    }
}

/// Where the reply to a request goes: taken from the request before its handler runs, so
/// that the handler can have the message itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReplyAddress {
    topic: String,
    correlation: String,
}

impl ReplyAddress {
    /// The reply address of `request`, if it is a request.
    pub(crate) fn of(request: &MessageView) -> Option<Self> {
        match (
            request.properties.get(REPLY_TO),
            request.properties.get(CORRELATION_ID),
        ) {
            (Some(to), Some(correlation)) => Some(ReplyAddress {
                topic: to.clone(),
                correlation: correlation.clone(),
            }),
            _ => None,
        }
    }
}

impl MessageBuilder {
    /// Sends a request and waits up to `timeout` for the reply of a listener that returns a
    /// value, decoded from JSON.
    pub async fn request<R: DeserializeOwned>(self, timeout: Duration) -> Result<R, SendError> {
        let (template, msg, options) = self.build()?;
        template.ensure_reply_consumer().await?;
        let correlation = MessageId::new().to_string();
        let (tx, rx) = oneshot::channel();
        template
            .inner
            .pending_replies
            .lock()
            .insert(correlation.clone(), tx);
        let msg = msg
            .with_property(REPLY_TO, REPLY_TOPIC)
            .with_property(CORRELATION_ID, correlation.clone());
        if let Err(e) = template.send_message(msg, options).await {
            template.inner.pending_replies.lock().remove(&correlation);
            return Err(e);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => serde_json::from_slice(&reply.body).map_err(SendError::ReplyDecode),
            _ => {
                template.inner.pending_replies.lock().remove(&correlation);
                Err(SendError::ReplyTimeout(timeout))
            }
        }
    }
}

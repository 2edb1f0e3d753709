//! The senders' side of the writer: what a message becomes on its way into the log, and the
//! calls that queue it for the writer thread and wait for its answer.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::writer::{AppendRequest, WriterMsg};
use super::MessageStore;
use crate::broker::SendResult;
use crate::embedded::consume_queue::ConsumeQueue;
use crate::error::{BrokerError, Result};
use crate::message::MessageParts;

/// A message on its way into the log.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub parts: MessageParts,
    /// Deliveries that failed before this copy was written (retries).
    pub reconsume_times: u32,
    /// Time to put in the index entry instead of the store time (the due time of a delayed
    /// message, so that the delay schedule can be rebuilt from the index alone).
    pub index_time: Option<u64>,
}

impl From<MessageParts> for Outgoing {
    fn from(parts: MessageParts) -> Self {
        Outgoing {
            parts,
            reconsume_times: 0,
            index_time: None,
        }
    }
}

impl MessageStore {
    /// Appends messages of one topic to one queue; resolves once stored as the flush policy
    /// promises.
    pub async fn append(
        &self,
        queue: Arc<ConsumeQueue>,
        messages: Vec<Outgoing>,
    ) -> Result<Vec<SendResult>> {
        let queue_id = queue.queue_id;
        let ids: Vec<_> = messages.iter().map(|m| m.parts.id).collect();
        let first = self.append_raw(queue, messages).await?;
        Ok(ids
            .into_iter()
            .zip(first..)
            .map(|(message_id, queue_offset)| SendResult {
                message_id,
                queue_id,
                queue_offset,
            })
            .collect())
    }

    /// Appends one message.
    pub async fn append_one(
        &self,
        queue: Arc<ConsumeQueue>,
        message: Outgoing,
    ) -> Result<SendResult> {
        let queue_id = queue.queue_id;
        let message_id = message.parts.id;
        let queue_offset = self.append_raw(queue, vec![message]).await?;
        Ok(SendResult {
            message_id,
            queue_id,
            queue_offset,
        })
    }

    async fn append_raw(&self, queue: Arc<ConsumeQueue>, messages: Vec<Outgoing>) -> Result<u64> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(WriterMsg::Append(AppendRequest {
                queue,
                messages,
                reply,
            }))
            .await
            .map_err(|_| BrokerError::Closed)?;
        rx.await.map_err(|_| BrokerError::Closed)?
    }

    /// Appends many single messages, each to its queue, in one go: all requests are queued
    /// before the first answer is awaited, so they share writes.
    pub async fn append_many(
        &self,
        items: Vec<(Arc<ConsumeQueue>, Outgoing)>,
    ) -> Vec<Result<SendResult>> {
        let mut waiting = Vec::with_capacity(items.len());
        for (queue, message) in items {
            let head = (message.parts.id, queue.queue_id);
            let (reply, rx) = oneshot::channel();
            let sent = self
                .writer
                .send(WriterMsg::Append(AppendRequest {
                    queue,
                    messages: vec![message],
                    reply,
                }))
                .await;
            waiting.push((head, sent.ok().map(|()| rx)));
        }
        let mut out = Vec::with_capacity(waiting.len());
        for ((message_id, queue_id), rx) in waiting {
            let result = match rx {
                Some(rx) => match rx.await {
                    Ok(Ok(queue_offset)) => Ok(SendResult {
                        message_id,
                        queue_id,
                        queue_offset,
                    }),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(BrokerError::Closed),
                },
                None => Err(BrokerError::Closed),
            };
            out.push(result);
        }
        out
    }
}

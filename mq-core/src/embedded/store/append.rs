//! The senders' side of the writer: what a message becomes on its way into the log, and the
//! calls that queue it for the writer thread and wait for its answer, or defer it (appends
//! made in a row reach the writer together) without breaking the order of appends.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc::error::TrySendError;
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

/// An append handed to the writer and not yet answered.
#[derive(Debug)]
#[must_use = "dropping it does not cancel the append, only its answer"]
pub(crate) struct Queued(oneshot::Receiver<Result<u64>>);

impl Queued {
    /// Waits until the append is stored as the flush policy promises; returns the queue
    /// offset of its first message.
    pub async fn stored(self) -> Result<u64> {
        self.0.await.map_err(|_| BrokerError::Closed)?
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
        self.enqueue(queue, messages).await?.stored().await
    }

    /// Queues messages of one topic for one queue without waiting for the writer: once this
    /// returns, every later append is stored after them. Waits only while the inbox is full.
    pub async fn enqueue(
        &self,
        queue: Arc<ConsumeQueue>,
        messages: Vec<Outgoing>,
    ) -> Result<Queued> {
        let (reply, rx) = oneshot::channel();
        self.submit(AppendRequest {
            queue,
            messages,
            reply,
        })
        .await?;
        Ok(Queued(rx))
    }

    /// Like [`enqueue`](Self::enqueue), without waiting at all: the messages wait in memory
    /// until a task of their own, or the next append, moves them to the writer's inbox, so
    /// that appends made in a row (the nacks of a received batch) reach the writer together,
    /// as one batch, not one wake-up of the writer each. Every append made after this returns
    /// is still stored after them.
    pub fn defer(self: &Arc<Self>, queue: Arc<ConsumeQueue>, messages: Vec<Outgoing>) -> Queued {
        let (reply, rx) = oneshot::channel();
        let first = {
            let mut deferred = self.deferred.lock();
            // Counted before it can be taken, so that the drain's decrement never comes first.
            self.deferred_len.fetch_add(1, Ordering::AcqRel);
            deferred.push_back(AppendRequest {
                queue,
                messages,
                reply,
            });
            deferred.len() == 1
        };
        if first {
            // Later deferrals find the queue not empty: this task, or a drain already under
            // way (it drains until it finds the queue empty), takes them along.
            let store = self.clone();
            tokio::spawn(async move { store.drain_deferred().await });
        }
        Queued(rx)
    }

    /// Hands a request to the writer behind every deferred one.
    async fn submit(&self, req: AppendRequest) -> Result<()> {
        if self.deferred_len.load(Ordering::Acquire) == 0 {
            // Nothing deferred before this call is still outside the inbox.
            return self
                .writer
                .send(WriterMsg::Append(req))
                .await
                .map_err(|_| BrokerError::Closed);
        }
        let sent = {
            let mut deferred = self.deferred.lock();
            self.deferred_len.fetch_add(1, Ordering::AcqRel);
            deferred.push_back(req);
            self.move_deferred(&mut deferred)
        };
        if !sent {
            self.drain_deferred().await;
        }
        if self.writer.is_closed() {
            return Err(BrokerError::Closed);
        }
        Ok(())
    }

    /// Moves deferred requests to the inbox, in order, while it has room; returns whether
    /// none is left. Called under the lock of `deferred`, so that a request is taken and put
    /// in the inbox in one step and no append can overtake it in between.
    fn move_deferred(&self, deferred: &mut VecDeque<AppendRequest>) -> bool {
        while let Some(req) = deferred.pop_front() {
            // A request the closed writer refuses is dropped: its sender sees `Closed`.
            if let Err(TrySendError::Full(WriterMsg::Append(req))) =
                self.writer.try_send(WriterMsg::Append(req))
            {
                deferred.push_front(req);
                return false;
            }
            self.deferred_len.fetch_sub(1, Ordering::AcqRel);
        }
        true
    }

    /// Moves every deferred request to the writer's inbox, in order, waiting for room when
    /// the inbox is full.
    pub(super) async fn drain_deferred(&self) {
        loop {
            if self.move_deferred(&mut self.deferred.lock()) {
                return;
            }
            // Full: wait for room, then take the front while holding it.
            let Ok(permit) = self.writer.reserve().await else {
                let mut deferred = self.deferred.lock();
                self.deferred_len
                    .fetch_sub(deferred.len(), Ordering::AcqRel);
                deferred.clear();
                return;
            };
            let mut deferred = self.deferred.lock();
            if let Some(req) = deferred.pop_front() {
                permit.send(WriterMsg::Append(req));
                self.deferred_len.fetch_sub(1, Ordering::AcqRel);
            }
        }
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
                .submit(AppendRequest {
                    queue,
                    messages: vec![message],
                    reply,
                })
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::embedded::EmbeddedConfig;
    use crate::message::Message;

    fn out(body: String) -> Outgoing {
        Outgoing::from(Message::new("t", body).into_parts())
    }

    /// A deferred append is stored before every append made after it returned, also while
    /// other tasks append at the same time (they then queue behind it), and none is lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deferred_appends_are_stored_before_every_later_append() {
        let dir = tempfile::tempdir().unwrap();
        let store = MessageStore::open(EmbeddedConfig::new(dir.path())).unwrap();
        store.start_writer().unwrap();
        let q = store.create_topic("t", 1).unwrap().queues[0].clone();
        let others: Vec<_> = (0..4)
            .map(|k| {
                let (store, q) = (store.clone(), q.clone());
                tokio::spawn(async move {
                    for i in 0..300 {
                        store
                            .append_one(q.clone(), out(format!("o{k}-{i}")))
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for round in 0..300 {
            let deferred: Vec<Queued> = (0..3)
                .map(|i| store.defer(q.clone(), vec![out(format!("d{round}-{i}"))]))
                .collect();
            let after = store
                .append_one(q.clone(), out(format!("a{round}")))
                .await
                .unwrap();
            let mut last = None;
            for d in deferred {
                let offset = d.stored().await.unwrap();
                assert!(offset < after.queue_offset, "round {round}");
                assert!(last < Some(offset), "deferred ones keep their order");
                last = Some(offset);
            }
        }
        for o in others {
            o.await.unwrap();
        }
        assert_eq!(q.max_offset(), 300 * 4 + 300 * 4);
        store.stop().await.unwrap();
    }

    /// Stopping stores what was deferred before.
    #[tokio::test]
    async fn stop_stores_the_deferred_appends() {
        let dir = tempfile::tempdir().unwrap();
        let store = MessageStore::open(EmbeddedConfig::new(dir.path())).unwrap();
        store.start_writer().unwrap();
        let q = store.create_topic("t", 1).unwrap().queues[0].clone();
        let d = store.defer(q.clone(), vec![out("d".into())]);
        store.stop().await.unwrap();
        assert_eq!(d.stored().await.unwrap(), 0);
        assert_eq!(q.max_offset(), 1);
    }
}

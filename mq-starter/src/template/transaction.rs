//! Transactional sends: a half message, the local transaction, then commit or rollback.

use mq_core::{MessageId, MessageView, SendResult, TransactionId, TxState};

use super::{MessageBuilder, SendError};

/// What a transactional send returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionSendResult {
    /// The message id.
    pub message_id: MessageId,
    /// The half message's transaction.
    pub transaction: TransactionId,
    /// What the local transaction answered.
    pub state: TxState,
    /// Where the message was stored, once committed.
    pub send_result: Option<SendResult>,
}

impl MessageBuilder {
    /// Sends as a transactional (half) message, runs the local transaction of the listener
    /// registered as `listener` with `arg`, then commits or rolls back by its answer; an
    /// unknown answer (or a panic) is left to check-back.
    pub async fn send_in_transaction<A: Send + 'static>(
        self,
        listener: &str,
        arg: A,
    ) -> Result<TransactionSendResult, SendError> {
        let (template, msg, options) = self.build()?;
        let local = template
            .inner
            .transactions
            .read()
            .get(listener)
            .cloned()
            .ok_or_else(|| SendError::UnknownTransactionListener(listener.to_owned()))?;
        let view_topic = msg.topic().to_owned();
        let view = MessageView {
            id: msg.id(),
            topic: msg.topic().to_owned(),
            tag: msg.tag().map(str::to_owned),
            keys: msg.keys().to_vec(),
            properties: msg.properties().clone(),
            body: msg.body().clone(),
            queue_id: 0,
            queue_offset: 0,
            born_timestamp: msg.born_timestamp(),
            store_timestamp: 0,
            reconsume_times: 0,
        };
        // Sent once: a retry after a timeout could leave two half messages of one local
        // transaction; one stored by an attempt that timed out is settled by check-back.
        let prepared = template
            .policy()
            .once()
            .run(|| {
                template
                    .inner
                    .broker
                    .prepare(msg.clone(), options.clone(), listener)
            })
            .await?;
        let state = match local.execute(view, Box::new(arg)) {
            Ok(fut) => tokio::spawn(fut).await.unwrap_or_else(|e| {
                tracing::error!(listener, error = %e, "local transaction panicked; left to check-back");
                TxState::Unknown
            }),
            Err(message) => {
                template
                    .inner
                    .broker
                    .end_transaction(&prepared.transaction, TxState::Rollback)
                    .await?;
                return Err(SendError::LocalTransaction {
                    listener: listener.to_owned(),
                    message,
                });
            }
        };
        let topic = view_topic;
        let send_result = template
            .inner
            .broker
            .end_transaction(&prepared.transaction, state)
            .await?;
        if send_result.is_some() {
            template.inner.metrics.sent(&topic, 1);
        }
        Ok(TransactionSendResult {
            message_id: prepared.message_id,
            transaction: prepared.transaction,
            state,
            send_result,
        })
    }
}

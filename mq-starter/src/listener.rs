//! The delivery loop of one listener on one topic: fetch, run handlers up to the concurrency
//! limit, settle each message by its outcome, and stop gracefully.

use std::sync::Arc;
use std::time::Duration;

use mq_core::{BrokerError, Consumer, Delivery, Disposition, Failure, MessageView};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use crate::context::{AppContext, DeliveryContext};
use crate::handler::{BoxedHandler, Outcome};
use crate::idempotency::{IdempotencyStore, Lease, LeaseToken};
use crate::metrics::Series;
use crate::registry::IdempotencyKey;

/// Shortest wait of a duplicate while another delivery holds its key. The wait is a quarter of
/// the lease at least: if the holder died, its lease must run out before the retries do, or
/// the message would reach the dead-letter queue without ever being processed.
const BUSY_RETRY: Duration = Duration::from_secs(1);
/// Longest pause between two tries of an unreachable idempotency store.
const STORE_DOWN_PAUSE: Duration = Duration::from_secs(2);

/// Idempotency settings of a listener.
pub(crate) struct Idempotency {
    pub store: Arc<dyn IdempotencyStore>,
    pub key: IdempotencyKey,
    /// Prefix of every key, so that applications sharing a store do not collide.
    pub prefix: String,
    pub lease: Duration,
    pub retention: Duration,
}

/// One listener on one topic, resolved and running.
pub(crate) struct ListenerLoop {
    pub name: String,
    pub group: String,
    pub topic: String,
    pub concurrency: usize,
    pub batch: Option<usize>,
    pub handler: BoxedHandler,
    pub app: Arc<AppContext>,
    pub series: Arc<Series>,
    pub idempotency: Option<Idempotency>,
    pub shutdown_timeout: Duration,
    pub consume_timeout: Duration,
}

impl ListenerLoop {
    pub async fn run(self: Arc<Self>, consumer: Box<dyn Consumer>, stop: CancellationToken) {
        let consumer: Arc<dyn Consumer> = Arc::from(consumer);
        let permits = Arc::new(Semaphore::new(self.concurrency.max(1)));
        let mut tasks = JoinSet::new();
        'fetch: loop {
            if stop.is_cancelled() {
                break;
            }
            let want = match self.batch {
                Some(b) => b * permits.available_permits().max(1),
                None => permits.available_permits().max(1),
            };
            let deliveries = tokio::select! {
                _ = stop.cancelled() => break,
                r = consumer.receive(want, Duration::from_millis(500)) => r,
            };
            let deliveries = match deliveries {
                Ok(d) => d,
                Err(BrokerError::Closed) => break,
                Err(e) => {
                    tracing::warn!(listener = %self.name, topic = %self.topic, error = %e, "receive failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let units: Vec<Vec<Delivery>> = match self.batch {
                Some(b) => chunks(deliveries, b),
                None => deliveries.into_iter().map(|d| vec![d]).collect(),
            };
            for unit in units {
                let permit = tokio::select! {
                    _ = stop.cancelled() => break 'fetch,
                    p = permits.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break 'fetch,
                    },
                };
                let this = self.clone();
                let consumer = consumer.clone();
                tasks.spawn(async move {
                    this.process(&*consumer, unit).await;
                    drop(permit);
                });
            }
            while tasks.try_join_next().is_some() {}
        }
        // Graceful stop: nothing new is fetched; handlers in flight may finish.
        let drained = tokio::time::timeout(self.shutdown_timeout, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                listener = %self.name,
                running = tasks.len(),
                "handlers still running at shutdown; their messages will be delivered again"
            );
            tasks.abort_all();
        }
        if let Err(e) = consumer.close().await {
            tracing::warn!(listener = %self.name, error = %e, "closing the consumer failed");
        }
    }

    fn key_of(&self, msg: &MessageView, key: IdempotencyKey) -> String {
        let part = match key {
            IdempotencyKey::Key => msg.key().map(str::to_owned),
            IdempotencyKey::Id => None,
        }
        .unwrap_or_else(|| msg.id.to_string());
        let prefix = self.idempotency.as_ref().map_or("", |i| i.prefix.as_str());
        // The topic belongs in the key: one listener may take several topics whose messages
        // share business keys.
        format!("{prefix}:{}:{}:{}", self.group, msg.topic, part)
    }

    async fn process(&self, consumer: &dyn Consumer, unit: Vec<Delivery>) {
        let Some(first) = unit.first() else { return };
        let span = tracing::info_span!(
            "mq.delivery",
            listener = %self.name,
            topic = %first.message.topic,
            group = %self.group,
            message_id = %first.message.id,
            attempt = first.message.attempt(),
            batch = unit.len(),
        );
        async {
            for _ in &unit {
                self.series.delivered();
            }
            let receipts: Vec<_> = unit.iter().map(|d| d.receipt.clone()).collect();
            let views: Vec<MessageView> = unit.into_iter().map(|d| d.message).collect();
            let mut key = None;
            if let Some(idem) = &self.idempotency {
                let k = self.key_of(&views[0], idem.key);
                match acquire(idem, &k, self.consume_timeout).await {
                    Ok(Lease::Acquired(token)) => key = Some((k, token)),
                    Ok(Lease::Done) => {
                        tracing::debug!(key = %k, "duplicate of a processed message; acknowledged");
                        self.ack(consumer, &receipts).await;
                        return;
                    }
                    Ok(Lease::Busy) => {
                        self.settle(
                            consumer,
                            &receipts,
                            Failure::retry_after(
                                "another delivery holds the key",
                                (idem.lease / 4).max(BUSY_RETRY),
                            ),
                        )
                        .await;
                        return;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "idempotency store still unavailable; the message will be retried");
                        self.settle(consumer, &receipts, Failure::new(e.to_string())).await;
                        return;
                    }
                }
            }
            let started = Instant::now();
            let ctx = DeliveryContext {
                messages: views.clone(),
                app: self.app.clone(),
            };
            // Its own task, so that a panic is a failed delivery, not a dead loop; aborted if
            // this delivery is (at shutdown), so that no handler outlives the application.
            // The handler's own events carry this delivery's span.
            let mut task = AbortOnDropHandle::new(tokio::spawn(
                self.handler.call(ctx).instrument(tracing::Span::current()),
            ));
            let held = key.as_ref().zip(self.idempotency.as_ref());
            let outcome = tokio::select! {
                joined = &mut task => match joined {
                    Ok(o) => o,
                    Err(e) => Outcome::retry(format!("handler panicked: {e}")),
                },
                never = keep_lease(held) => match never {},
            };
            self.series.observe(started.elapsed());
            match outcome {
                Outcome::Ack(reply) => {
                    if let Some(((k, token), idem)) = key.as_ref().zip(self.idempotency.as_ref()) {
                        complete(idem, k, token).await;
                    }
                    if let Some(body) = reply {
                        if let Err(e) = self.app.template.reply(&views[0], body).await {
                            tracing::warn!(error = %e, "reply could not be sent");
                        }
                    }
                    self.ack(consumer, &receipts).await;
                }
                Outcome::Retry { reason, after } => {
                    if let Some(((k, token), idem)) = key.as_ref().zip(self.idempotency.as_ref()) {
                        if let Err(e) = idem.store.release(k, token).await {
                            tracing::warn!(error = %e, "idempotency lease not released; it expires by itself");
                        }
                    }
                    tracing::warn!(%reason, "handler failed");
                    self.settle(
                        consumer,
                        &receipts,
                        Failure {
                            reason,
                            retry_after: after,
                        },
                    )
                    .await;
                }
                Outcome::DeadLetter(reason) => {
                    if let Some(((k, token), idem)) = key.as_ref().zip(self.idempotency.as_ref()) {
                        let _ = idem.store.release(k, token).await;
                    }
                    for r in &receipts {
                        match consumer.dead_letter(r, &reason).await {
                            Ok(()) => self.series.dead_lettered(),
                            Err(e) => tracing::error!(error = %e, "dead-lettering failed"),
                        }
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn ack(&self, consumer: &dyn Consumer, receipts: &[mq_core::Receipt]) {
        match consumer.ack(receipts).await {
            Ok(()) => {
                for _ in receipts {
                    self.series.acked();
                }
            }
            Err(e) => tracing::warn!(error = %e, "ack failed; the message will come again"),
        }
    }

    async fn settle(
        &self,
        consumer: &dyn Consumer,
        receipts: &[mq_core::Receipt],
        failure: Failure,
    ) {
        for r in receipts {
            match consumer.nack(r, failure.clone()).await {
                Ok(Disposition::Retry { .. }) => self.series.retried(),
                Ok(Disposition::DeadLettered) => self.series.dead_lettered(),
                Ok(Disposition::Stale) => {}
                Err(e) => tracing::warn!(error = %e, "nack failed; the message will come again"),
            }
        }
    }
}

/// Takes the lease of `key`. While the store is unreachable it keeps trying (holding this
/// delivery's permit, so the listener stops fetching), up to half the consume timeout: an
/// outage must not use up the message's retries without its handler ever running.
async fn acquire(
    idem: &Idempotency,
    key: &str,
    consume_timeout: Duration,
) -> Result<Lease, crate::idempotency::IdempotencyError> {
    let give_up = Instant::now() + consume_timeout / 2;
    let mut pause = Duration::from_millis(100);
    loop {
        match idem.store.acquire(key, idem.lease).await {
            Err(e) if Instant::now() + pause < give_up => {
                tracing::warn!(error = %e, "idempotency store unavailable; waiting for it");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(STORE_DOWN_PAUSE);
            }
            other => return other,
        }
    }
}

/// Renews the lease of a running handler every third of its term, so that a handler slower
/// than the lease is never run twice at once. Never returns; with no lease it just waits.
async fn keep_lease(
    held: Option<(&(String, LeaseToken), &Idempotency)>,
) -> std::convert::Infallible {
    let Some(((key, token), idem)) = held else {
        return std::future::pending().await;
    };
    let every = (idem.lease / 3).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(every).await;
        match idem.store.renew(key, token, idem.lease).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::error!(key, "idempotency lease lost while the handler runs; a duplicate may run at the same time");
                return std::future::pending().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, key, "idempotency lease not renewed; trying again")
            }
        }
    }
}

/// Marks a key done, retrying while the store is down for as long as the lease still keeps
/// duplicates away.
async fn complete(idem: &Idempotency, key: &str, token: &LeaseToken) {
    let give_up = Instant::now() + idem.lease;
    let mut wait = Duration::from_millis(100);
    loop {
        match idem.store.complete(key, token, idem.retention).await {
            Ok(true) => return,
            Ok(false) => {
                tracing::warn!(key, "key not marked done: another delivery holds it now");
                return;
            }
            Err(e) if Instant::now() + wait < give_up => {
                tracing::warn!(error = %e, "cannot mark the key done yet; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                tracing::error!(error = %e, key, "key not marked done; a duplicate may run again");
                return;
            }
        }
    }
}

fn chunks(deliveries: Vec<Delivery>, size: usize) -> Vec<Vec<Delivery>> {
    let mut out = Vec::new();
    let mut current = Vec::with_capacity(size);
    for d in deliveries {
        current.push(d);
        if current.len() == size.max(1) {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

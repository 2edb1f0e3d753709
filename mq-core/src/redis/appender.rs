//! Group commit of sends: concurrent appends to one queue share one `APPEND` script call,
//! as the embedded broker's writer shares one write among waiting sends. One task per queue
//! in use takes whatever is waiting (up to `MAX_GROUP` messages) and stores it in one call,
//! in arrival order. Used by callers on multi-thread runtimes; a current-thread caller stores
//! directly, so that a paused test clock never waits on another runtime.

use tokio::sync::{mpsc, oneshot};

use crate::clock::Clock;
use crate::error::{BackendErrorKind, BrokerError, Result};

use super::io::Redis;
use super::scripts;

/// Messages stored by one script call at most: bounds how long one call blocks the server.
const MAX_GROUP: usize = 1024;

type Request = (Vec<Vec<u8>>, oneshot::Sender<Result<Vec<u64>>>);

/// The sending side of one queue's appender.
#[derive(Clone)]
pub(crate) struct Appender(mpsc::UnboundedSender<Request>);

impl Appender {
    /// Starts the appender of the queue whose stream, counter and lookup keys are `keys`.
    pub(crate) fn start(redis: Redis, clock: Clock, keys: [String; 3]) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        // On the broker's I/O runtime, so that it outlives any caller's runtime.
        redis.clone().spawn(run(redis, clock, keys, rx));
        Appender(tx)
    }

    /// Stores encoded messages; returns their offsets.
    pub(crate) async fn append(&self, blobs: Vec<Vec<u8>>) -> Result<Vec<u64>> {
        let (done, wait) = oneshot::channel();
        self.0.send((blobs, done)).map_err(|_| stopped())?;
        wait.await.map_err(|_| stopped())?
    }
}

/// Stores encoded messages in one `APPEND` call; returns their offsets.
pub(crate) async fn append_now(
    redis: &Redis,
    clock: &Clock,
    keys: &[String; 3],
    blobs: Vec<Vec<u8>>,
) -> Result<Vec<u64>> {
    let mut args = Vec::with_capacity(blobs.len() + 1);
    args.push(clock.now_ms().to_string().into_bytes());
    args.extend(blobs);
    redis
        .script("storing messages", &scripts::APPEND, keys.to_vec(), args)
        .await
}

async fn run(
    redis: Redis,
    clock: Clock,
    keys: [String; 3],
    mut rx: mpsc::UnboundedReceiver<Request>,
) {
    while let Some(first) = rx.recv().await {
        let mut count = first.0.len();
        let mut group = vec![first];
        while count < MAX_GROUP {
            match rx.try_recv() {
                Ok(request) => {
                    count += request.0.len();
                    group.push(request);
                }
                Err(_) => break,
            }
        }
        let mut blobs = Vec::with_capacity(count);
        let mut waiters = Vec::with_capacity(group.len());
        for (request, done) in group {
            waiters.push((request.len(), done));
            blobs.extend(request);
        }
        let stored = append_now(&redis, &clock, &keys, blobs).await;
        match stored {
            Ok(offsets) => {
                let mut offsets = offsets.into_iter();
                for (n, done) in waiters {
                    let _ = done.send(Ok(offsets.by_ref().take(n).collect()));
                }
            }
            Err(e) => {
                // One failure, told to every waiter of the batch with its kind.
                let kind = e.backend_kind().unwrap_or(BackendErrorKind::Failed);
                let why = e.to_string();
                for (_, done) in waiters {
                    let _ = done.send(Err(BrokerError::backend(
                        "redis",
                        kind,
                        format!("storing messages: {why}"),
                    )));
                }
            }
        }
    }
}

fn stopped() -> BrokerError {
    BrokerError::backend(
        "redis",
        BackendErrorKind::Failed,
        "storing messages: the queue's appender stopped",
    )
}

//! The connection to Redis and the runtime its I/O runs on.
//!
//! The connection's task runs on the broker's own I/O runtime. A caller on a current-thread
//! runtime has its commands run there too and waits for them in a blocking task, which keeps a paused test clock
//! from jumping ahead while Redis answers (tokio does not auto-advance time while a blocking
//! task runs). Delays, back-off and check-back are timed on the caller's clock
//! ([`Clock`](crate::clock::Clock)), so the conformance cases on a paused clock run in
//! milliseconds against a real server.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, ErrorKind, FromRedisValue, RedisError};
use tokio::runtime::{Handle, Runtime, RuntimeFlavor};

use crate::error::{BackendErrorKind, BoxError, BrokerError, Result};

/// Owns the I/O runtime; shuts it down without blocking when the last handle goes.
struct IoRuntime(Option<Runtime>);

impl Drop for IoRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// A shared, reconnecting connection to Redis with its own I/O thread.
#[derive(Clone)]
pub(crate) struct Redis {
    conn: ConnectionManager,
    io: Handle,
    _runtime: Arc<IoRuntime>,
    /// How long a command may keep failing on a lost connection before its error is returned.
    timeout: Duration,
    url: Arc<str>,
}

/// A failure of this backend that no Redis error caused.
pub(crate) fn backend_error(
    what: impl Into<String>,
    kind: BackendErrorKind,
    source: impl Into<BoxError>,
) -> BrokerError {
    BrokerError::backend_caused("redis", kind, what, source)
}

/// A Redis error, with what was being done and its kind.
pub(crate) fn redis_error(what: impl Into<String>, e: RedisError) -> BrokerError {
    BrokerError::backend_caused("redis", kind_of(&e), what, e)
}

/// The kind of a Redis error, from its error code and class (never from its text).
fn kind_of(e: &RedisError) -> BackendErrorKind {
    if is_transient(e) {
        return BackendErrorKind::Unavailable;
    }
    match (e.kind(), e.code()) {
        (ErrorKind::AuthenticationFailed, _) | (_, Some("NOAUTH" | "WRONGPASS" | "NOPERM")) => {
            BackendErrorKind::Unauthorized
        }
        (_, Some("BUSYGROUP")) => BackendErrorKind::AlreadyExists,
        (ErrorKind::Parse | ErrorKind::UnexpectedReturnType, _) => BackendErrorKind::Malformed,
        _ => BackendErrorKind::Rejected,
    }
}

/// Whether an error says the command never ran, so that even a command that is not safe to
/// repeat may be sent again.
fn never_ran(e: &RedisError) -> bool {
    e.is_connection_refusal() || e.code() == Some("LOADING") || e.code() == Some("TRYAGAIN")
}

/// Whether an error means "not reachable right now" rather than "the command is wrong".
fn is_transient(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.code() == Some("LOADING")
        || e.code() == Some("TRYAGAIN")
}

impl Redis {
    /// Connects to `url` (`redis://` or `rediss://`, with credentials if the server wants them).
    pub(crate) async fn connect(url: &str, timeout: Duration) -> Result<Self> {
        // `rediss://` needs a process-wide TLS provider; an application may have installed
        // one already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = Client::open(url)
            .map_err(|e| BrokerError::InvalidConfig(format!("redis url {:?}: {e}", redact(url))))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("mq-redis-io")
            .enable_all()
            .build()
            .map_err(|e| backend_error("starting the I/O thread", BackendErrorKind::Failed, e))?;
        let io = runtime.handle().clone();
        let runtime = Arc::new(IoRuntime(Some(runtime)));
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let shown = redact(url);
        let conn = on_io(&io, async move {
            ConnectionManager::new_with_config(client, config).await
        })
        .await?
        .map_err(|e| redis_error(format!("connecting to {shown}"), e))?;
        Ok(Redis {
            conn,
            io,
            _runtime: runtime,
            timeout,
            url: redact(url).into(),
        })
    }

    /// Runs `f` on a connection, retrying while Redis is unreachable, up to the timeout.
    pub(crate) async fn run<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(ConnectionManager) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<T, RedisError>> + Send + 'static,
    {
        self.run_retrying(what, f, is_transient).await
    }

    /// Runs `f`, retrying the errors `retry` accepts while the timeout lasts.
    async fn run_retrying<T, F, Fut>(
        &self,
        what: &'static str,
        f: F,
        retry: fn(&RedisError) -> bool,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(ConnectionManager) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<T, RedisError>> + Send + 'static,
    {
        let conn = self.conn.clone();
        let timeout = self.timeout;
        let url = self.url.clone();
        on_io(&self.io, async move {
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                match f(conn.clone()).await {
                    Ok(v) => return Ok(v),
                    Err(e) if retry(&e) && tokio::time::Instant::now() < deadline => {
                        tracing::debug!(error = %e, what, "redis unreachable, retrying");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => {
                        return Err(if is_transient(&e) {
                            redis_error(format!("{what} (redis at {url} unreachable)"), e)
                        } else {
                            redis_error(what, e)
                        })
                    }
                }
            }
        })
        .await?
    }

    /// Runs one command.
    pub(crate) async fn query<T>(&self, what: &'static str, cmd: ::redis::Cmd) -> Result<T>
    where
        T: FromRedisValue + Send + 'static,
    {
        let cmd = Arc::new(cmd);
        self.run(what, move |mut c| {
            let cmd = cmd.clone();
            async move { cmd.query_async(&mut c).await }
        })
        .await
    }

    /// Runs a pipeline that must not run twice, such as `XREADGROUP ... >` or `XCLAIM`, which
    /// hand entries to the caller: retried only when it certainly did not run, so a reply lost
    /// on a dropped connection is an error the caller recovers from (by reading its own
    /// pending entries) instead of a second read that hands out later entries in its place.
    pub(crate) async fn pipe_once<T>(
        &self,
        what: &'static str,
        pipe: ::redis::Pipeline,
    ) -> Result<T>
    where
        T: FromRedisValue + Send + 'static,
    {
        let pipe = Arc::new(pipe);
        self.run_retrying(
            what,
            move |mut c| {
                let pipe = pipe.clone();
                async move { pipe.query_async(&mut c).await }
            },
            never_ran,
        )
        .await
    }

    /// Runs a pipeline (atomic if built with `.atomic()`).
    pub(crate) async fn pipe<T>(&self, what: &'static str, pipe: ::redis::Pipeline) -> Result<T>
    where
        T: FromRedisValue + Send + 'static,
    {
        let pipe = Arc::new(pipe);
        self.run(what, move |mut c| {
            let pipe = pipe.clone();
            async move { pipe.query_async(&mut c).await }
        })
        .await
    }

    /// Runs a Lua script by its hash, loading it first if the server does not know it.
    ///
    /// The `EVALSHA` command is built once, here: the crate's `ScriptInvocation` keeps a copy
    /// of every argument and copies them again into the command on each attempt, which for
    /// the messages of an `APPEND` was two more copies of every body.
    pub(crate) async fn script<T>(
        &self,
        what: &'static str,
        script: &'static ::redis::Script,
        keys: Vec<String>,
        args: Vec<Vec<u8>>,
    ) -> Result<T>
    where
        T: FromRedisValue + Send + 'static,
    {
        let mut cmd = ::redis::cmd("EVALSHA");
        cmd.arg(script.get_hash()).arg(keys.len());
        for k in &keys {
            cmd.arg(k);
        }
        for a in &args {
            cmd.arg(a.as_slice());
        }
        drop(args);
        let cmd = Arc::new(cmd);
        self.run(what, move |mut c| {
            let cmd = cmd.clone();
            async move {
                match cmd.query_async(&mut c).await {
                    // A restarted or flushed server has forgotten the script.
                    Err(e) if e.code() == Some("NOSCRIPT") => {
                        script.prepare_invoke().load_async(&mut c).await?;
                        cmd.query_async(&mut c).await
                    }
                    other => other,
                }
            }
        })
        .await
    }

    /// Spawns a fire-and-forget task on the I/O runtime (used where no caller can wait, as in
    /// `Drop`).
    pub(crate) fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.io.spawn(fut);
    }
}

/// Runs `fut` on the I/O runtime and waits for it without letting a paused clock advance.
async fn on_io<T, Fut>(io: &Handle, fut: Fut) -> Result<T>
where
    T: Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
{
    let current = Handle::try_current().map(|h| h.runtime_flavor()).ok();
    match current {
        Some(RuntimeFlavor::CurrentThread) => {
            let io = io.clone();
            tokio::task::spawn_blocking(move || io.block_on(fut))
                .await
                .map_err(|e| backend_error("redis I/O task", BackendErrorKind::Failed, e))
        }
        // A multi-thread runtime has no paused clock: the command runs where it is awaited
        // (the connection's own task lives on the I/O runtime).
        Some(RuntimeFlavor::MultiThread) => Ok(fut.await),
        _ => io
            .spawn(fut)
            .await
            .map_err(|e| backend_error("redis I/O task", BackendErrorKind::Failed, e)),
    }
}

/// The URL without its password, for messages and logs.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redact("redis://user:secret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact("rediss://:pw@h"), "rediss://:***@h");
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}

//! Typed errors of the model and of every broker backend.

use std::path::PathBuf;

/// A message or destination that breaks a rule of the model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// The topic is empty, too long or uses a character outside `[%|a-zA-Z0-9_-]`.
    #[error("invalid topic {topic:?}: {reason}")]
    InvalidTopic {
        /// The rejected topic.
        topic: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The consumer group name breaks the same rules as a topic.
    #[error("invalid consumer group {group:?}: {reason}")]
    InvalidGroup {
        /// The rejected group.
        group: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The tag is empty, has surrounding blanks or contains `||`.
    #[error("invalid tag {tag:?}: {reason}")]
    InvalidTag {
        /// The rejected tag.
        tag: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A tag expression such as `a || b` that cannot be parsed.
    #[error("invalid tag expression {expression:?}: {reason}")]
    InvalidTagExpression {
        /// The rejected expression.
        expression: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The body is larger than `max-message-size`.
    #[error("message body of {size} bytes exceeds max-message-size of {max} bytes")]
    BodyTooLarge {
        /// Size of the rejected body.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// A delay level outside the table, or a delay longer than the maximum.
    #[error("invalid delay: {reason}")]
    InvalidDelay {
        /// Why it is refused.
        reason: String,
    },
    /// A key, property name or property value that cannot be stored.
    #[error("invalid {what}: {reason}")]
    InvalidField {
        /// Which field.
        what: &'static str,
        /// Which rule it breaks.
        reason: &'static str,
    },
}

/// Why a stored record cannot be read as a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Fewer bytes than the record needs (a torn write or a truncated file).
    #[error("record truncated: {needed} bytes needed, {available} available")]
    Truncated {
        /// Bytes the record claims or needs.
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// The record does not start with the record magic number.
    #[error("bad magic number {found:#010x}")]
    BadMagic {
        /// The four bytes found instead.
        found: u32,
    },
    /// The CRC32C stored in the record does not match its contents.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// The checksum written with the record.
        stored: u32,
        /// The checksum of the bytes read.
        computed: u32,
    },
    /// The record is intact but is not the one the index points at, or a field is malformed.
    #[error("malformed record: {0}")]
    Malformed(&'static str),
}

/// Any failure of a [`Broker`](crate::Broker) or [`Consumer`](crate::Consumer).
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The message or destination breaks a rule of the model.
    #[error(transparent)]
    Message(#[from] MessageError),
    /// The topic does not exist and automatic creation is off.
    #[error("topic {0:?} does not exist")]
    TopicNotFound(String),
    /// No consumer group of this name is known to the broker (on this topic, where one is
    /// given): it never subscribed, or its progress is gone.
    #[error("consumer group {group:?} is not known{}", on_topic(topic))]
    GroupNotFound {
        /// The group.
        group: String,
        /// The topic asked about, if any.
        topic: Option<String>,
    },
    /// The topic exists but has no queue with this id.
    #[error("topic {topic:?} has no queue {queue_id}")]
    QueueNotFound {
        /// The topic.
        topic: String,
        /// The queue id asked for.
        queue_id: u32,
    },
    /// A subscription the broker refuses (orderly with broadcasting, a member that subscribes
    /// differently from its group, a duplicate instance name...).
    #[error("invalid subscription for group {group:?}: {reason}")]
    InvalidSubscription {
        /// The consumer group.
        group: String,
        /// Why it is refused.
        reason: String,
    },
    /// A member with this instance name is live in the group already (a second process
    /// under the same name, or a dead one whose liveness has not yet run out).
    #[error(
        "invalid subscription for group {group:?}: instance {instance:?} is already a live member"
    )]
    InstanceTaken {
        /// The consumer group.
        group: String,
        /// The instance name.
        instance: String,
    },
    /// A configuration value that the broker cannot work with.
    #[error("invalid broker configuration: {0}")]
    InvalidConfig(String),
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What the broker was doing.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Stored bytes failed their checksum or framing; the record is not served.
    #[error("corrupt record in {segment} at offset {offset}: {source}")]
    Corrupt {
        /// The segment file.
        segment: PathBuf,
        /// Byte offset of the record inside the segment.
        offset: u64,
        /// What is wrong with it.
        #[source]
        source: RecordError,
    },
    /// Another process holds the data directory.
    #[error("data directory {0} is locked by another process")]
    Locked(PathBuf),
    /// No half message waits under this transaction id (unknown, or already ended).
    #[error("no pending transaction {0:?} (unknown or already ended)")]
    UnknownTransaction(String),
    /// The broker or consumer was shut down.
    #[error("broker is shut down")]
    Closed,
    /// The receipt does not belong to this consumer or is malformed.
    #[error("unknown receipt: {0}")]
    UnknownReceipt(String),
    /// A failure inside a backend (connection lost, credentials refused, a task that died...);
    /// `kind` says which, for callers that decide what to do next.
    #[error("{backend} backend: {message}{}", caused_by(source))]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// What kind of failure it is.
        kind: BackendErrorKind,
        /// What the backend was doing and what went wrong.
        message: String,
        /// The underlying error, if there is one.
        #[source]
        source: Option<BoxError>,
    },
}

/// An underlying error of any type.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

fn on_topic(topic: &Option<String>) -> String {
    topic
        .as_ref()
        .map(|t| format!(" on topic {t:?}"))
        .unwrap_or_default()
}

fn caused_by(source: &Option<BoxError>) -> String {
    source
        .as_ref()
        .map(|e| format!(": {e}"))
        .unwrap_or_default()
}

/// What kind of failure a [`BrokerError::Backend`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendErrorKind {
    /// The backend cannot be reached or did not answer in time: trying again later may work.
    Unavailable,
    /// The backend refused the credentials, or they lack a permission.
    Unauthorized,
    /// What was to be created exists already.
    AlreadyExists,
    /// The backend refused the command itself (a protocol or script error).
    Rejected,
    /// Stored data could not be decoded, or data could not be encoded for storing.
    Malformed,
    /// The backend stopped working: a task or thread of it failed, or it refuses writes after
    /// an earlier write failure until it is reopened.
    Failed,
}

impl BrokerError {
    /// A backend failure without an underlying error.
    pub fn backend(
        backend: &'static str,
        kind: BackendErrorKind,
        message: impl Into<String>,
    ) -> Self {
        BrokerError::Backend {
            backend,
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// A backend failure caused by `source`.
    pub fn backend_caused(
        backend: &'static str,
        kind: BackendErrorKind,
        message: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        BrokerError::Backend {
            backend,
            kind,
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// The kind of a backend failure; `None` for every other error.
    pub fn backend_kind(&self) -> Option<BackendErrorKind> {
        match self {
            BrokerError::Backend { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// Whether the same call may succeed later: the backend was unreachable, or the disk
    /// refused an operation.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            BrokerError::Backend {
                kind: BackendErrorKind::Unavailable,
                ..
            } | BrokerError::Io { .. }
        )
    }

    /// Wraps an I/O error with what was being done and where.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        BrokerError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Short name for results of broker operations.
pub type Result<T, E = BrokerError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_error_shows_its_cause_and_keeps_it_as_source() {
        let cause = std::io::Error::other("connection refused");
        let e =
            BrokerError::backend_caused("redis", BackendErrorKind::Unavailable, "sending", cause);
        assert_eq!(e.to_string(), "redis backend: sending: connection refused");
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(e.backend_kind(), Some(BackendErrorKind::Unavailable));
        assert!(e.is_transient());
        let e = BrokerError::backend("embedded", BackendErrorKind::Failed, "writer stopped");
        assert_eq!(e.to_string(), "embedded backend: writer stopped");
        assert!(std::error::Error::source(&e).is_none());
        assert!(!e.is_transient());
    }
}

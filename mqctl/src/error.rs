//! Why a command failed, and the exit code each kind of failure gets, so that scripts can tell
//! "the application is down" from "the token is wrong" from "no such group".

use std::process::ExitCode;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No answer: refused connection, unknown host, time-out, TLS failure.
    #[error("cannot reach the admin API at {url}: {cause}")]
    Unreachable {
        /// The URL asked.
        url: String,
        /// The transport's reason, outermost first.
        cause: String,
    },
    /// 401: no token, or the wrong one.
    #[error("unauthorized: set MQ_ADMIN_TOKEN (or --token) to the application's mq.admin.token ({message})")]
    Unauthorized {
        /// The API's message.
        message: String,
    },
    /// 404: no such topic, group, listener, dead letter or message.
    #[error("not found: {message}")]
    NotFound {
        /// The API's message.
        message: String,
    },
    /// Another 4xx: the API refused the request.
    #[error("refused ({status} {code}): {message}")]
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The API's error code.
        code: String,
        /// The API's message.
        message: String,
    },
    /// 5xx: the application failed, or a component is down.
    #[error("the application failed ({status} {code}): {message}")]
    Server {
        /// The HTTP status.
        status: u16,
        /// The API's error code.
        code: String,
        /// The API's message.
        message: String,
    },
    /// A 2xx answer that is not the document mqctl expects: another program on that port, or
    /// an API of another version.
    #[error("unexpected answer from {url}: {cause}")]
    BadResponse {
        /// The URL asked.
        url: String,
        /// What did not fit.
        cause: String,
    },
    /// `--url` is not an http(s) URL.
    #[error("--url {url:?} is not an http:// or https:// URL: {cause}")]
    BadUrl {
        /// What was given.
        url: String,
        /// What is wrong with it.
        cause: String,
    },
}

/// Exit codes, as `mqctl --help` lists them.
pub mod exit {
    /// The command did what it was asked.
    pub const OK: u8 = 0;
    /// Bad `--url`, or an answer mqctl cannot read.
    pub const OTHER: u8 = 1;
    /// Bad arguments (clap's usage errors).
    pub const USAGE: u8 = 2;
    /// The admin API cannot be reached.
    pub const UNREACHABLE: u8 = 3;
    /// 401: token missing or wrong.
    pub const UNAUTHORIZED: u8 = 4;
    /// 404: no such thing.
    pub const NOT_FOUND: u8 = 5;
    /// Another 4xx: the request was refused.
    pub const REJECTED: u8 = 6;
    /// 5xx: the application failed, or `health` found a component down.
    pub const SERVER: u8 = 7;
}

impl Error {
    /// The exit code of this failure (see [`exit`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Unreachable { .. } => exit::UNREACHABLE,
            Error::Unauthorized { .. } => exit::UNAUTHORIZED,
            Error::NotFound { .. } => exit::NOT_FOUND,
            Error::Rejected { .. } => exit::REJECTED,
            Error::Server { .. } => exit::SERVER,
            Error::BadResponse { .. } | Error::BadUrl { .. } => exit::OTHER,
        }
    }
}

impl From<&Error> for ExitCode {
    fn from(e: &Error) -> Self {
        ExitCode::from(e.exit_code())
    }
}

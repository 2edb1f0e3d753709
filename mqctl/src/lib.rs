//! `mqctl`, the command line of mq's admin API: what an operator asks of a running mq
//! application (topics, consumer groups and their lag, listeners, dead letters, offsets,
//! message lookup and trace) over the HTTP routes that `running.admin_router()` serves under
//! `/mq/api/`. The binary is `src/main.rs`; this library holds the parts so they can be tested.
//!
//! - [`cli`]: the command line (clap).
//! - [`client`]: the HTTP requests and how answers become errors.
//! - [`api`]: the API's documents.
//! - [`commands`]: what each subcommand asks and prints.
//! - [`table`]: the aligned tables.
//! - [`timestamp`]: times as milliseconds and RFC 3339.
//! - [`error`]: failures and their exit codes.

pub mod api;
pub mod cli;
pub mod client;
pub mod commands;
pub mod error;
pub mod table;
pub mod timestamp;

pub use cli::Cli;
pub use commands::{run, Output};
pub use error::Error;

//! The command line: global flags and one subcommand per admin API route (clap derive; the doc
//! comments are the help text).

use clap::{Args, Parser, Subcommand};

use crate::timestamp;

/// What `mqctl --help` ends with.
const AFTER_HELP: &str = "\
The application serves the admin API with `app.merge(running.admin_router())`; its token is
`mq.admin.token`. Without a token configured the API answers loopback clients only.

Exit codes: 0 done; 1 bad --url or an answer mqctl cannot read; 2 bad arguments;
3 the admin API cannot be reached; 4 unauthorized (401); 5 not found (404);
6 refused (other 4xx); 7 the application failed (5xx) or `health` found a component DOWN.";

/// mqctl: operate an mq application through its admin API (topics, consumer groups and lag,
/// listeners, dead letters, offsets, message lookup and trace).
///
/// Output is an aligned table; --json prints the API's JSON instead, for scripts.
#[derive(Debug, Clone, Parser)]
#[command(name = "mqctl", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// Base URL of the application serving the admin router (routes are under URL/mq/api/).
    #[arg(
        long,
        global = true,
        env = "MQ_ADMIN_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,

    /// Bearer token: the application's mq.admin.token.
    #[arg(long, global = true, env = "MQ_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Print the API's JSON answer instead of a table.
    #[arg(long, global = true)]
    pub json: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// The application's health: the broker and the idempotency store (exit code 7 when DOWN).
    Health,
    /// Every topic: kind (user, retry, dead_letter), queues and messages stored.
    Topics,
    /// One topic's queues: min and max offset, messages, last store time.
    Topic {
        /// The topic name.
        name: String,
    },
    /// Every consumer group: model, live members and lag.
    Groups,
    /// One group's progress per topic and queue: committed, max offset, lag, owner.
    Group {
        /// The group name.
        name: String,
    },
    /// Lag: per group, or with --group per topic (and member, when broadcasting).
    Lag {
        /// Only this group, per topic.
        #[arg(long)]
        group: Option<String>,
    },
    /// Every listener on every topic: group, mode, concurrency, in flight, queues, state.
    Listeners,
    /// Pauses a listener: it stops fetching, lets in-flight deliveries finish and stays a
    /// group member.
    Pause {
        /// The listener (handler function) name.
        listener: String,
    },
    /// Resumes a paused listener.
    Resume {
        /// The listener (handler function) name.
        listener: String,
    },
    /// Consumer offsets.
    #[command(subcommand)]
    Offset(OffsetCommand),
    /// Dead letters: list, show, resend, delete.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Every stored copy of a message (original, retries, dead letter) by its id.
    Message {
        /// The message id (32 hex digits).
        id: String,
    },
    /// Messages by key.
    Messages {
        /// The key to look up.
        #[arg(long)]
        key: String,
        /// Only copies stored in this topic.
        #[arg(long)]
        topic: Option<String>,
        /// At most this many messages.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=500))]
        limit: Option<u32>,
    },
    /// A message's trace: where it was sent, stored, delivered, retried.
    Trace {
        /// The message id (32 hex digits).
        id: String,
    },
}

/// `mqctl offset ...`
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum OffsetCommand {
    /// Moves a group's committed offset on every queue of a topic (live members continue
    /// from there).
    Reset {
        /// The consumer group.
        group: String,
        /// The topic whose queues move.
        #[arg(long)]
        topic: String,
        /// Where to.
        #[command(flatten)]
        to: ResetTarget,
    },
}

/// Where `offset reset` moves the group: exactly one of the three.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
#[group(required = true, multiple = false)]
pub struct ResetTarget {
    /// To the first message still stored: everything is delivered again.
    #[arg(long)]
    pub first: bool,
    /// To the end: the backlog is skipped.
    #[arg(long)]
    pub last: bool,
    /// To the first message stored at or after this time: milliseconds since the Unix epoch,
    /// or RFC 3339 (2026-12-04T18:00:00Z, 2026-12-04T19:00:00+01:00).
    #[arg(long, value_name = "MS|RFC3339", value_parser = parse_timestamp)]
    pub timestamp: Option<u64>,
}

/// `mqctl dlq ...`
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum DlqCommand {
    /// Dead-letter counts per group, or with a group one page of its dead letters.
    List {
        /// The group whose dead letters to list.
        group: Option<String>,
        /// The position (seq) to start from.
        #[arg(long, default_value_t = 0, requires = "group")]
        from: u64,
        /// At most this many (1 to 500).
        #[arg(long, default_value_t = 50, requires = "group",
              value_parser = clap::value_parser!(u32).range(1..=500))]
        limit: u32,
    },
    /// One dead letter in full: error, attempts, properties and body.
    Show {
        /// The group.
        group: String,
        /// Its position in the group's dead-letter queue.
        seq: u64,
    },
    /// Delivers a dead letter (or with --all every one of the group) to the group again.
    Resend {
        /// The group.
        group: String,
        /// Its position in the group's dead-letter queue.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        seq: Option<u64>,
        /// Every dead letter of the group.
        #[arg(long)]
        all: bool,
    },
    /// Removes a dead letter for good.
    Delete {
        /// The group.
        group: String,
        /// Its position in the group's dead-letter queue.
        seq: u64,
    },
}

fn parse_timestamp(value: &str) -> Result<u64, timestamp::TimestampError> {
    timestamp::parse(value)
}

#[cfg(test)]
mod tests {
    use clap::error::ErrorKind;
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("mqctl").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = parse(&["topics", "--json", "--url", "http://h:1", "--token", "s"]).unwrap();
        assert!(cli.json);
        assert_eq!(cli.url, "http://h:1");
        assert_eq!(cli.token.as_deref(), Some("s"));
        assert_eq!(cli.command, Command::Topics);
    }

    #[test]
    fn offset_reset_takes_exactly_one_target() {
        let cli = parse(&[
            "offset",
            "reset",
            "g",
            "--topic",
            "t",
            "--timestamp",
            "1970-01-01T00:00:02Z",
        ])
        .unwrap();
        assert_eq!(
            cli.command,
            Command::Offset(OffsetCommand::Reset {
                group: "g".into(),
                topic: "t".into(),
                to: ResetTarget {
                    first: false,
                    last: false,
                    timestamp: Some(2000)
                }
            })
        );
        let none = parse(&["offset", "reset", "g", "--topic", "t"]).unwrap_err();
        assert_eq!(none.kind(), ErrorKind::MissingRequiredArgument);
        let two =
            parse(&["offset", "reset", "g", "--topic", "t", "--first", "--last"]).unwrap_err();
        assert_eq!(two.kind(), ErrorKind::ArgumentConflict);
        let bad = parse(&[
            "offset",
            "reset",
            "g",
            "--topic",
            "t",
            "--timestamp",
            "soon",
        ])
        .unwrap_err();
        assert_eq!(bad.kind(), ErrorKind::ValueValidation);
    }

    #[test]
    fn dlq_resend_takes_a_seq_or_all() {
        let one = parse(&["dlq", "resend", "g", "7"]).unwrap();
        assert_eq!(
            one.command,
            Command::Dlq(DlqCommand::Resend {
                group: "g".into(),
                seq: Some(7),
                all: false
            })
        );
        let all = parse(&["dlq", "resend", "g", "--all"]).unwrap();
        assert_eq!(
            all.command,
            Command::Dlq(DlqCommand::Resend {
                group: "g".into(),
                seq: None,
                all: true
            })
        );
        assert_eq!(
            parse(&["dlq", "resend", "g"]).unwrap_err().kind(),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            parse(&["dlq", "resend", "g", "7", "--all"])
                .unwrap_err()
                .kind(),
            ErrorKind::ArgumentConflict
        );
    }

    #[test]
    fn dlq_list_pages_only_a_group() {
        let cli = parse(&["dlq", "list", "g", "--from", "10", "--limit", "5"]).unwrap();
        assert_eq!(
            cli.command,
            Command::Dlq(DlqCommand::List {
                group: Some("g".into()),
                from: 10,
                limit: 5
            })
        );
        assert!(parse(&["dlq", "list", "--from", "3"]).is_err());
        assert!(parse(&["dlq", "list", "g", "--limit", "0"]).is_err());
        assert!(parse(&["dlq", "list", "g", "--limit", "501"]).is_err());
    }

    #[test]
    fn messages_needs_a_key() {
        assert!(parse(&["messages"]).is_err());
        let cli = parse(&["messages", "--key", "order-1", "--limit", "3"]).unwrap();
        assert_eq!(
            cli.command,
            Command::Messages {
                key: "order-1".into(),
                topic: None,
                limit: Some(3)
            }
        );
    }
}

//! What each subcommand asks the admin API, and how its answer is shown: a table (or
//! `key: value` block) by default, the API's JSON with `--json`.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::api::{
    DeadLetter, DeadLetterCount, DeadLetterPage, Deleted, GroupRow, GroupStats, Health,
    ListenerRow, OffsetReset, QueueOffset, Resent, ResetTo, StoredMessage, TopicRow, TopicStats,
};
use crate::cli::{Cli, Command, DlqCommand, OffsetCommand, ResetTarget};
use crate::client::{Answer, Client};
use crate::error::{exit, Error};
use crate::table::{fields, Table};
use crate::timestamp;

/// How many characters of a body a table shows.
const BODY_PREVIEW: usize = 60;

/// What a command prints, and the exit code it ends with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Standard output.
    pub text: String,
    /// The exit code (see [`exit`]); not 0 only for `health` finding a component down.
    pub code: u8,
}

impl Output {
    fn ok(text: String) -> Self {
        Output {
            text,
            code: exit::OK,
        }
    }
}

/// Runs the command line's subcommand against its `--url`.
pub fn run(cli: &Cli) -> Result<Output, Error> {
    let client = Client::new(&cli.url, cli.token.clone())?;
    let json = cli.json;
    // With --json, the body as the API sent it.
    let show = |answer: Answer, table: &dyn Fn(&Answer) -> Result<String, Error>| {
        if json {
            Ok(Output::ok(raw(&answer.body)))
        } else {
            table(&answer).map(Output::ok)
        }
    };
    match &cli.command {
        Command::Health => {
            let answer = client.get_accepting(&["health"], &[503])?;
            let health: Health = answer.json()?;
            let code = if health.status == "UP" {
                exit::OK
            } else {
                exit::SERVER
            };
            let text = if json {
                raw(&answer.body)
            } else {
                health_table(&health)
            };
            Ok(Output { text, code })
        }
        Command::Topics => show(client.get(&["topics"], &[])?, &|a| {
            Ok(topics_table(&a.json::<Vec<_>>()?))
        }),
        Command::Topic { name } => show(client.get(&["topics", name], &[])?, &|a| {
            Ok(topic_table(&a.json()?))
        }),
        Command::Groups => show(client.get(&["groups"], &[])?, &|a| {
            Ok(groups_table(&a.json::<Vec<_>>()?))
        }),
        Command::Group { name } => show(client.get(&["groups", name], &[])?, &|a| {
            Ok(group_table(&a.json()?))
        }),
        Command::Lag { group: None } => show(client.get(&["groups"], &[])?, &|a| {
            Ok(lag_table(&a.json::<Vec<_>>()?))
        }),
        Command::Lag { group: Some(g) } => show(client.get(&["groups", g], &[])?, &|a| {
            Ok(group_lag_table(&a.json()?))
        }),
        Command::Listeners => show(client.get(&["listeners"], &[])?, &|a| {
            Ok(listeners_table(&a.json::<Vec<_>>()?))
        }),
        Command::Pause { listener } => show(
            client.post(&["listeners", listener, "pause"], None)?,
            &|a| Ok(listeners_table(&a.json::<Vec<_>>()?)),
        ),
        Command::Resume { listener } => show(
            client.post(&["listeners", listener, "resume"], None)?,
            &|a| Ok(listeners_table(&a.json::<Vec<_>>()?)),
        ),
        Command::Offset(OffsetCommand::Reset { group, topic, to }) => {
            let body = OffsetReset {
                topic: topic.clone(),
                to: reset_to(to),
            };
            let body = serde_json::to_value(body).map_err(|e| Error::BadResponse {
                url: cli.url.clone(),
                cause: e.to_string(),
            })?;
            show(
                client.post(&["groups", group, "offset"], Some(body))?,
                &|a| Ok(offsets_table(&a.json::<Vec<_>>()?)),
            )
        }
        Command::Dlq(DlqCommand::List { group: None, .. }) => {
            show(client.get(&["dead-letters"], &[])?, &|a| {
                Ok(dead_letter_counts_table(&a.json::<Vec<_>>()?))
            })
        }
        Command::Dlq(DlqCommand::List {
            group: Some(g),
            from,
            limit,
        }) => {
            let query = [("from", from.to_string()), ("limit", limit.to_string())];
            show(client.get(&["dead-letters", g], &query)?, &|a| {
                Ok(dead_letters_table(&a.json()?))
            })
        }
        Command::Dlq(DlqCommand::Show { group, seq }) => {
            let seq = seq.to_string();
            show(client.get(&["dead-letters", group, &seq], &[])?, &|a| {
                Ok(dead_letter_fields(&a.json()?))
            })
        }
        Command::Dlq(DlqCommand::Resend { group, seq, .. }) => {
            let answer = match seq {
                Some(seq) => {
                    client.post(&["dead-letters", group, &seq.to_string(), "resend"], None)?
                }
                None => client.post(&["dead-letters", group, "resend"], None)?,
            };
            show(answer, &|a| {
                let r: Resent = a.json()?;
                Ok(format!("resent {} dead letter(s) of {group}\n", r.resent))
            })
        }
        Command::Dlq(DlqCommand::Delete { group, seq }) => show(
            client.delete(&["dead-letters", group, &seq.to_string()])?,
            &|a| {
                let d: Deleted = a.json()?;
                Ok(format!("deleted {} dead letter(s) of {group}\n", d.deleted))
            },
        ),
        Command::Message { id } => show(client.get(&["messages", id], &[])?, &|a| {
            Ok(messages_table(&a.json::<Vec<_>>()?))
        }),
        Command::Messages { key, topic, limit } => {
            let mut query = vec![("key", key.clone())];
            if let Some(limit) = limit {
                query.push(("limit", limit.to_string()));
            }
            if let Some(topic) = topic {
                query.push(("topic", topic.clone()));
            }
            let answer = client.get(&["messages"], &query)?;
            match topic {
                // The API's specification names `key` and `limit` only: an API that ignores
                // `topic` answers every topic's copies, so they are picked here as well.
                Some(topic) => {
                    let all: Vec<Value> = answer.json()?;
                    let picked: Vec<Value> = all
                        .into_iter()
                        .filter(|m| m.get("topic").and_then(Value::as_str) == Some(topic))
                        .collect();
                    if json {
                        Ok(Output::ok(pretty(&Value::Array(picked))))
                    } else {
                        let messages: Vec<StoredMessage> =
                            serde_json::from_value(Value::Array(picked)).map_err(|e| {
                                Error::BadResponse {
                                    url: answer.url.clone(),
                                    cause: e.to_string(),
                                }
                            })?;
                        Ok(Output::ok(messages_table(&messages)))
                    }
                }
                None => show(answer, &|a| Ok(messages_table(&a.json::<Vec<_>>()?))),
            }
        }
        Command::Trace { id } => show(client.get(&["messages", id, "trace"], &[])?, &|a| {
            Ok(trace_text(&a.json()?))
        }),
    }
}

fn reset_to(target: &ResetTarget) -> ResetTo {
    match (target.first, target.last, target.timestamp) {
        (_, _, Some(timestamp_ms)) => ResetTo::Timestamp { timestamp_ms },
        (true, _, None) => ResetTo::First,
        // clap requires exactly one of the three.
        _ => ResetTo::Last,
    }
}

/// The API's body as sent, ending in one newline.
fn raw(body: &str) -> String {
    let mut text = body.trim_end().to_owned();
    text.push('\n');
    text
}

fn pretty(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    text.push('\n');
    text
}

fn opt(value: &Option<impl ToString>) -> String {
    value
        .as_ref()
        .map_or_else(|| "-".to_owned(), ToString::to_string)
}

fn list<T: ToString>(items: &[T]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn preview(body: &str) -> String {
    if body.chars().count() <= BODY_PREVIEW {
        body.to_owned()
    } else {
        let mut cut: String = body.chars().take(BODY_PREVIEW - 1).collect();
        cut.push('…');
        cut
    }
}

/// `health`.
pub fn health_table(health: &Health) -> String {
    let mut t = Table::new(["COMPONENT", "STATUS", "DETAIL", "ERROR"]);
    for (name, c) in &health.components {
        let detail = c.backend.as_deref().or(c.store.as_deref()).unwrap_or("-");
        t.row([
            name.as_str(),
            c.status.as_str(),
            detail,
            c.error.as_deref().unwrap_or("-"),
        ]);
    }
    format!("status: {}\n{}", health.status, t.render())
}

/// `topics`.
pub fn topics_table(topics: &[TopicRow]) -> String {
    let mut t = Table::new(["TOPIC", "KIND", "QUEUES", "MESSAGES"]).right(&[2, 3]);
    for r in topics {
        t.row([
            r.topic.clone(),
            r.kind.clone(),
            r.queues.to_string(),
            r.messages.to_string(),
        ]);
    }
    t.render()
}

/// `topic <name>`.
pub fn topic_table(stats: &TopicStats) -> String {
    let mut t = Table::new([
        "QUEUE",
        "MIN OFFSET",
        "MAX OFFSET",
        "MESSAGES",
        "LAST STORED",
    ])
    .right(&[0, 1, 2, 3]);
    for q in &stats.queues {
        t.row([
            q.queue_id.to_string(),
            q.min_offset.to_string(),
            q.max_offset.to_string(),
            q.messages.to_string(),
            q.last_store_ms
                .map_or_else(|| "-".to_owned(), timestamp::format),
        ]);
    }
    let total: u64 = stats.queues.iter().map(|q| q.messages).sum();
    format!(
        "{}\n{}",
        fields([
            ("topic", stats.topic.clone()),
            ("queues", stats.queues.len().to_string()),
            ("messages", total.to_string()),
        ]),
        t.render()
    )
}

/// `groups`.
pub fn groups_table(groups: &[GroupRow]) -> String {
    let mut t = Table::new(["GROUP", "MODEL", "MEMBERS", "LAG"]).right(&[3]);
    for g in groups {
        t.row([
            g.group.clone(),
            opt(&g.model),
            list(&g.members),
            g.lag.to_string(),
        ]);
    }
    t.render()
}

/// `group <name>`.
pub fn group_table(stats: &GroupStats) -> String {
    let mut t = Table::new([
        "TOPIC",
        "QUEUE",
        "INSTANCE",
        "COMMITTED",
        "MAX OFFSET",
        "LAG",
        "OWNER",
    ])
    .right(&[1, 3, 4, 5]);
    for q in &stats.queues {
        t.row([
            q.topic.clone(),
            q.queue_id.to_string(),
            opt(&q.instance),
            q.committed.to_string(),
            q.max_offset.to_string(),
            q.lag.to_string(),
            opt(&q.owner),
        ]);
    }
    let lag: u64 = stats.queues.iter().map(|q| q.lag).sum();
    format!(
        "{}\n{}",
        fields([
            ("group", stats.group.clone()),
            ("model", opt(&stats.model)),
            ("members", list(&stats.members)),
            ("lag", lag.to_string()),
        ]),
        t.render()
    )
}

/// `lag`: per group.
pub fn lag_table(groups: &[GroupRow]) -> String {
    let mut t = Table::new(["GROUP", "LAG"]).right(&[1]);
    for g in groups {
        t.row([g.group.clone(), g.lag.to_string()]);
    }
    t.render()
}

/// `lag --group G`: per topic (retry topics on rows of their own) and member.
pub fn group_lag_table(stats: &GroupStats) -> String {
    let mut sums: BTreeMap<(&str, Option<&str>), u64> = BTreeMap::new();
    for q in &stats.queues {
        *sums.entry((&q.topic, q.instance.as_deref())).or_default() += q.lag;
    }
    let mut t = Table::new(["TOPIC", "INSTANCE", "LAG"]).right(&[2]);
    for ((topic, instance), lag) in sums {
        t.row([topic, instance.unwrap_or("-"), &lag.to_string()]);
    }
    t.render()
}

/// `listeners`, `pause`, `resume`.
pub fn listeners_table(rows: &[ListenerRow]) -> String {
    let mut t = Table::new([
        "NAME",
        "TOPIC",
        "GROUP",
        "MODEL",
        "MODE",
        "CONCURRENCY",
        "BATCH",
        "IN FLIGHT",
        "QUEUES",
        "STATE",
    ])
    .right(&[5, 6, 7]);
    for l in rows {
        t.row([
            l.name.clone(),
            l.topic.clone(),
            l.group.clone(),
            l.model.clone(),
            l.mode.clone(),
            l.concurrency.to_string(),
            opt(&l.batch),
            l.in_flight.to_string(),
            list(&l.assignment),
            l.state.clone(),
        ]);
    }
    t.render()
}

/// `offset reset`.
pub fn offsets_table(offsets: &[QueueOffset]) -> String {
    let mut t = Table::new(["QUEUE", "OFFSET"]).right(&[0, 1]);
    for o in offsets {
        t.row([o.queue_id.to_string(), o.offset.to_string()]);
    }
    t.render()
}

/// `dlq list`.
pub fn dead_letter_counts_table(counts: &[DeadLetterCount]) -> String {
    let mut t = Table::new(["GROUP", "DEAD LETTERS"]).right(&[1]);
    for c in counts {
        t.row([c.group.clone(), c.count.to_string()]);
    }
    t.render()
}

/// `dlq list <group>`.
pub fn dead_letters_table(page: &DeadLetterPage) -> String {
    let mut t = Table::new([
        "SEQ",
        "TOPIC",
        "MESSAGE ID",
        "KEYS",
        "TAG",
        "ATTEMPTS",
        "LAST FAILURE",
        "LAST ERROR",
    ])
    .right(&[0, 5]);
    for d in &page.items {
        t.row([
            d.seq.to_string(),
            d.topic.clone(),
            d.message_id.clone(),
            list(&d.keys),
            opt(&d.tag),
            d.attempts.to_string(),
            timestamp::format(d.last_failure_ms),
            d.last_error.clone(),
        ]);
    }
    let mut text = t.render();
    if let Some(next) = page.next {
        text.push_str(&format!("more: --from {next}\n"));
    }
    text
}

/// `dlq show`.
pub fn dead_letter_fields(d: &DeadLetter) -> String {
    let mut pairs = vec![
        ("group".to_owned(), d.group.clone()),
        ("seq".to_owned(), d.seq.to_string()),
        ("topic".to_owned(), d.topic.clone()),
        ("message id".to_owned(), d.message_id.clone()),
        ("keys".to_owned(), list(&d.keys)),
        ("tag".to_owned(), opt(&d.tag)),
        ("attempts".to_owned(), d.attempts.to_string()),
        (
            "first failure".to_owned(),
            timestamp::format(d.first_failure_ms),
        ),
        (
            "last failure".to_owned(),
            timestamp::format(d.last_failure_ms),
        ),
        ("last error".to_owned(), d.last_error.clone()),
    ];
    pairs.push(("body".to_owned(), d.body.clone()));
    let mut text = fields(pairs);
    if !d.properties.is_empty() {
        text.push_str("properties:\n");
        for line in fields(&d.properties).lines() {
            text.push_str(&format!("  {line}\n"));
        }
    }
    text
}

/// `message <id>`, `messages --key`. A copy waiting in the schedule has no offset yet and
/// shows its due time as `due <time>` in STORED.
pub fn messages_table(messages: &[StoredMessage]) -> String {
    let mut t = Table::new([
        "MESSAGE ID",
        "TOPIC",
        "QUEUE",
        "OFFSET",
        "TAG",
        "KEYS",
        "RECONSUMED",
        "STORED",
        "BODY",
    ])
    .right(&[2, 3, 6]);
    for m in messages {
        t.row([
            m.message_id.clone(),
            m.topic.clone(),
            m.queue_id.to_string(),
            match m.due_ms {
                Some(_) => "-".to_owned(),
                None => m.queue_offset.to_string(),
            },
            opt(&m.tag),
            list(&m.keys),
            m.reconsume_times.to_string(),
            match m.due_ms {
                Some(due) => format!("due {}", timestamp::format(due)),
                None => timestamp::format(m.store_timestamp),
            },
            preview(&m.body),
        ]);
    }
    t.render()
}

/// The members of a trace event that have columns of their own in [`trace_text`].
const TRACE_COLUMNS: [&str; 10] = [
    "message_id",
    "at_ms",
    "kind",
    "topic",
    "queue_id",
    "queue_offset",
    "group",
    "attempt",
    "outcome",
    "copy",
];

/// `trace`: one row per event, oldest first (`{"message_id","events":[..]}`, mq_core's
/// `Trace`); members without a column of their own go to DETAIL as `key=value`, so that an
/// event kind this build does not know still shows everything. Anything else is shown as by
/// [`value_text`].
pub fn trace_text(trace: &Value) -> String {
    let Some(events) = trace.get("events").and_then(Value::as_array) else {
        return value_text(trace);
    };
    let cell = |e: &Value, k: &str| e.get(k).map_or_else(|| "-".to_owned(), |v| scalar(k, v));
    let mut t = Table::new([
        "TIME", "EVENT", "TOPIC", "QUEUE", "OFFSET", "GROUP", "ATTEMPT", "OUTCOME", "DETAIL",
    ])
    .right(&[3, 4, 6]);
    for e in events {
        // A delivery's outcome, or which copy a store made.
        let outcome = match (e.get("outcome"), e.get("copy")) {
            (Some(Value::Object(o)), _) => {
                let kind = o.get("type").map_or_else(String::new, |v| scalar("", v));
                let rest: Vec<String> = o
                    .iter()
                    .filter(|(k, _)| k.as_str() != "type")
                    .map(|(k, v)| format!("{k}={}", scalar(k, v)))
                    .collect();
                if rest.is_empty() {
                    kind
                } else {
                    format!("{kind} ({})", rest.join(", "))
                }
            }
            (Some(other), _) => scalar("outcome", other),
            (None, Some(copy)) => scalar("copy", copy),
            (None, None) => "-".to_owned(),
        };
        let detail: Vec<String> = e
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| !TRACE_COLUMNS.contains(&k.as_str()))
            .map(|(k, v)| format!("{k}={}", scalar(k, v)))
            .collect();
        t.row([
            cell(e, "at_ms"),
            cell(e, "kind"),
            cell(e, "topic"),
            cell(e, "queue_id"),
            cell(e, "queue_offset"),
            cell(e, "group"),
            cell(e, "attempt"),
            outcome,
            detail.join(" "),
        ]);
    }
    let id = trace
        .get("message_id")
        .map_or_else(|| "-".to_owned(), |v| scalar("", v));
    format!("{}\n{}", fields([("message", id)]), t.render())
}

/// Any JSON document: an array of objects as a table, an object's plain members as
/// `key: value` lines and its arrays and objects below, under their name.
pub fn value_text(value: &Value) -> String {
    match value {
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_object) => {
            let mut columns: Vec<&str> = Vec::new();
            for item in items.iter().filter_map(Value::as_object) {
                for k in item.keys() {
                    if !columns.contains(&k.as_str()) {
                        columns.push(k);
                    }
                }
            }
            let mut t = Table::new(columns.iter().map(|c| c.to_uppercase()));
            for item in items.iter().filter_map(Value::as_object) {
                t.row(
                    columns
                        .iter()
                        .map(|c| item.get(*c).map_or_else(String::new, |v| scalar(c, v))),
                );
            }
            t.render()
        }
        Value::Object(members) => {
            let plain = members
                .iter()
                .filter(|(_, v)| !is_nested(v))
                .map(|(k, v)| (k.clone(), scalar(k, v)));
            let mut text = fields(plain);
            for (k, v) in members.iter().filter(|(_, v)| is_nested(v)) {
                text.push_str(&format!("\n{k}:\n{}", value_text(v)));
            }
            text
        }
        other => format!("{}\n", scalar("", other)),
    }
}

fn is_nested(v: &Value) -> bool {
    match v {
        Value::Object(_) => true,
        Value::Array(items) => items.iter().any(|i| i.is_object() || i.is_array()),
        _ => false,
    }
}

/// A plain value as text; milliseconds in a field named like a time as RFC 3339.
fn scalar(key: &str, v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_u64() {
            Some(ms)
                if (key.ends_with("_ms") || key.ends_with("timestamp")) && ms > 100_000_000_000 =>
            {
                timestamp::format(ms)
            }
            _ => n.to_string(),
        },
        Value::Array(items) => items
            .iter()
            .map(|i| scalar("", i))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn group_lag_sums_queues_per_topic_and_member() {
        let stats: GroupStats = serde_json::from_value(json!({
            "group": "g", "model": "clustering", "members": ["a"],
            "queues": [
                {"topic": "t", "queue_id": 0, "instance": null, "committed": 1, "max_offset": 4, "lag": 3, "owner": "a"},
                {"topic": "t", "queue_id": 1, "instance": null, "committed": 0, "max_offset": 2, "lag": 2, "owner": "a"},
                {"topic": "%RETRY%g%t", "queue_id": 0, "instance": null, "committed": 0, "max_offset": 1, "lag": 1, "owner": null}
            ]
        }))
        .unwrap();
        assert_eq!(
            group_lag_table(&stats),
            "TOPIC       INSTANCE  LAG\n%RETRY%g%t  -           1\nt           -           5\n"
        );
    }

    #[test]
    fn a_dead_letter_page_says_where_the_next_starts() {
        let page: DeadLetterPage = serde_json::from_value(json!({
            "items": [{
                "group": "g", "seq": 4, "topic": "t", "message_id": "0123456789abcdef0123456789abcdef",
                "keys": ["k1", "k2"], "tag": null, "attempts": 3, "first_failure_ms": 0,
                "last_failure_ms": 1000, "last_error": "boom\nagain", "body": "{}", "properties": {}
            }],
            "next": 5
        }))
        .unwrap();
        let text = dead_letters_table(&page);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[1].contains("k1,k2") && lines[1].contains("1970-01-01T00:00:01.000Z"));
        assert!(lines[1].ends_with("boom\\nagain"), "{text}");
        assert_eq!(lines[2], "more: --from 5");
    }

    #[test]
    fn any_document_is_shown_as_tables_and_fields() {
        let trace = json!({
            "message_id": "ab",
            "events": [
                {"kind": "sent", "at_ms": 1_733_300_000_000_u64},
                {"kind": "delivered", "group": "g", "at_ms": 1_733_300_000_100_u64}
            ]
        });
        assert_eq!(
            value_text(&trace),
            "message_id: ab\n\nevents:\nAT_MS                     KIND       GROUP\n\
             2024-12-04T08:13:20.000Z  sent\n\
             2024-12-04T08:13:20.100Z  delivered  g\n"
        );
    }

    #[test]
    fn a_trace_is_one_row_per_event() {
        let trace = json!({"message_id": "01A2", "events": [
            {"message_id": "01A2", "at_ms": 1_733_300_000_000_u64, "kind": "stored", "topic": "order",
             "copy": "original", "queue_id": 0, "queue_offset": 41, "reconsume_times": 0,
             "born_ms": 1_733_300_000_000_u64},
            {"message_id": "01A2", "at_ms": 1_733_300_000_001_u64, "kind": "delivered", "group": "points",
             "topic": "order", "queue_id": 0, "queue_offset": 41, "instance": "i@1", "attempt": 1,
             "outcome": {"type": "retried", "retry": 1, "after_ms": 10000},
             "error": "inventory locked", "duration_ms": 3},
            {"message_id": "01A2", "at_ms": 1_733_300_000_002_u64, "kind": "resent", "group": "points"}
        ]});
        let text = trace_text(&trace);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "message: 01A2");
        assert_eq!(lines[1], "");
        let cells = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            cells(lines[2]),
            [
                "TIME", "EVENT", "TOPIC", "QUEUE", "OFFSET", "GROUP", "ATTEMPT", "OUTCOME",
                "DETAIL"
            ]
        );
        assert_eq!(
            cells(lines[3]),
            [
                "2024-12-04T08:13:20.000Z",
                "stored",
                "order",
                "0",
                "41",
                "-",
                "-",
                "original",
                "born_ms=2024-12-04T08:13:20.000Z",
                "reconsume_times=0"
            ]
        );
        assert!(
            lines[4].contains("retried (after_ms=10000, retry=1)")
                && lines[4].ends_with("duration_ms=3 error=inventory locked instance=i@1"),
            "{text}"
        );
        assert_eq!(
            cells(lines[5])[1..],
            ["resent", "-", "-", "-", "points", "-", "-"]
        );
    }

    #[test]
    fn a_waiting_copy_shows_its_due_time_and_no_offset() {
        let messages: Vec<StoredMessage> = serde_json::from_value(json!([
            {"message_id": "01A2", "topic": "order-timeout", "tag": null, "keys": ["r-1"],
             "properties": {}, "queue_id": 2, "queue_offset": 7, "born_timestamp": 1,
             "store_timestamp": 1_733_300_000_000_u64, "reconsume_times": 0, "body": "{}"},
            {"message_id": "01A3", "topic": "order-timeout", "tag": null, "keys": ["r-1"],
             "properties": {}, "queue_id": 1, "queue_offset": 0, "born_timestamp": 1,
             "store_timestamp": 1_733_300_000_000_u64, "due_ms": 1_733_301_800_000_u64,
             "reconsume_times": 0, "body": "{}"}
        ]))
        .unwrap();
        let text = messages_table(&messages);
        let rows: Vec<Vec<&str>> = text
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(rows[0][3], "7");
        assert_eq!(rows[0][7], "2024-12-04T08:13:20.000Z");
        assert_eq!(rows[1][3], "-");
        assert_eq!(rows[1][7..9], ["due", "2024-12-04T08:43:20.000Z"]);
    }

    #[test]
    fn a_document_without_events_is_shown_whole() {
        assert_eq!(trace_text(&json!({"note": "n"})), "note: n\n");
    }

    #[test]
    fn long_bodies_are_cut_in_tables() {
        let long = "x".repeat(100);
        let cut = preview(&long);
        assert_eq!(cut.chars().count(), BODY_PREVIEW);
        assert!(cut.ends_with('…'));
        assert_eq!(preview("short"), "short");
    }
}

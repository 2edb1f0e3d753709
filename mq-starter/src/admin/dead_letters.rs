//! The dead-letter routes: counts per group, a group's dead letters page by page, one by its
//! position, resend (one or all) and delete.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use mq_core::DeadLetter;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{check_group, check_int64, AdminError, AdminErrorBody, PathParam, QueryParam};
use super::AdminState;

/// Most dead letters one page holds.
const MAX_LIMIT: usize = 500;
/// Dead letters per page when the query does not say.
const DEFAULT_LIMIT: usize = 50;

/// A group's dead-letter count.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterCount {
    /// The group.
    pub group: String,
    /// Its dead letters.
    pub count: u64,
}

/// A message a group gave up on.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterView {
    /// The group that gave up on it.
    pub group: String,
    /// Its position in the group's dead-letter queue: what show, resend and delete take.
    pub seq: u64,
    /// The topic it was sent to.
    pub topic: String,
    /// Its message id (32 hex digits).
    pub message_id: String,
    /// Its business keys.
    pub keys: Vec<String>,
    /// Its tag.
    pub tag: Option<String>,
    /// Deliveries that failed.
    pub attempts: u32,
    /// When the first delivery failed (ms since the Unix epoch).
    pub first_failure_ms: u64,
    /// When the last delivery failed (ms since the Unix epoch).
    pub last_failure_ms: u64,
    /// What the last failure said.
    pub last_error: String,
    /// The body as UTF-8 (bytes that are not UTF-8 become U+FFFD).
    pub body: String,
    /// Its properties, the `mq.*` ones of the dead letter included.
    pub properties: BTreeMap<String, String>,
}

impl From<DeadLetter> for DeadLetterView {
    fn from(d: DeadLetter) -> Self {
        DeadLetterView {
            seq: d.seq,
            topic: d.message.topic,
            message_id: d.message.id.to_string(),
            keys: d.message.keys,
            tag: d.message.tag,
            attempts: d.attempts,
            first_failure_ms: d.first_failure_ms,
            last_failure_ms: d.last_failure_ms,
            last_error: d.last_error,
            body: String::from_utf8_lossy(&d.message.body).into_owned(),
            properties: d.message.properties,
            group: d.group,
        }
    }
}

/// One page of a group's dead letters.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterPage {
    /// Oldest first.
    pub items: Vec<DeadLetterView>,
    /// The `from` of the next page; `null` when this page is the last.
    pub next: Option<u64>,
}

/// Where a page starts and how long it is.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// The first position (seq) to show.
    #[param(minimum = 0)]
    #[serde(default)]
    pub from: u64,
    /// Dead letters per page, 1 to 500 (50 when not given).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
}

/// `{"resent": N}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Resent {
    /// Dead letters sent again.
    pub resent: u64,
}

/// `{"deleted": 1}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Deleted {
    /// Dead letters removed.
    pub deleted: u64,
}

/// A group and a position in its dead-letter queue.
#[derive(Debug, Deserialize)]
pub struct Position {
    group: String,
    seq: u64,
}

fn gone(group: &str, seq: u64) -> AdminError {
    AdminError::not_found(format!("group {group:?} has no dead letter {seq}"))
}

/// How many dead letters each group has.
#[utoipa::path(get, path = "/mq/api/dead-letters", tag = "mq", security(("bearer" = [])),
    responses(
        (status = 200, description = "the count of every group that has dead letters", body = Vec<DeadLetterCount>),
        (status = 401, description = "no or a wrong bearer token", body = AdminErrorBody),
        (status = 500, description = "the broker failed", body = AdminErrorBody),
        (status = 503, description = "the broker is shut down or unreachable", body = AdminErrorBody),
    ))]
pub async fn counts(State(s): State<AdminState>) -> Result<Json<Vec<DeadLetterCount>>, AdminError> {
    let mut counts = s.broker.dead_letter_counts().await?;
    counts.sort();
    Ok(Json(
        counts
            .into_iter()
            .map(|(group, count)| DeadLetterCount { group, count })
            .collect(),
    ))
}

/// A page of a group's dead letters, oldest first.
#[utoipa::path(get, path = "/mq/api/dead-letters/{group}", tag = "mq", security(("bearer" = [])),
    params(("group" = String, Path, description = "the consumer group", pattern = r"^[A-Za-z0-9|_-]{1,127}$"), PageQuery),
    responses(
        (status = 200, description = "the page", body = DeadLetterPage),
        (status = 400, description = "a malformed group name or query string", body = AdminErrorBody),
        (status = 401, description = "no or a wrong bearer token", body = AdminErrorBody),
        (status = 500, description = "the broker failed", body = AdminErrorBody),
        (status = 503, description = "the broker is shut down or unreachable", body = AdminErrorBody),
    ))]
pub async fn page(
    State(s): State<AdminState>,
    PathParam(group): PathParam<String>,
    QueryParam(q): QueryParam<PageQuery>,
) -> Result<Json<DeadLetterPage>, AdminError> {
    check_group(&group)?;
    check_int64("from", q.from)?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(AdminError::bad_request(format!(
            "limit must be 1 to {MAX_LIMIT}, not {limit}"
        )));
    }
    // One more than asked for tells whether another page follows, and where.
    let mut items = s.broker.dead_letters(&group, q.from, limit + 1).await?;
    let next = if items.len() > limit {
        items.pop().map(|d| d.seq)
    } else {
        None
    };
    Ok(Json(DeadLetterPage {
        items: items.into_iter().map(Into::into).collect(),
        next,
    }))
}

/// One dead letter.
#[utoipa::path(get, path = "/mq/api/dead-letters/{group}/{seq}", tag = "mq", security(("bearer" = [])),
    params(
        ("group" = String, Path, description = "the consumer group", pattern = r"^[A-Za-z0-9|_-]{1,127}$"),
        ("seq" = u64, Path, description = "its position in the group's dead-letter queue", minimum = 0),
    ),
    responses(
        (status = 200, description = "the dead letter", body = DeadLetterView),
        (status = 400, description = "a malformed group name or position", body = AdminErrorBody),
        (status = 401, description = "no or a wrong bearer token", body = AdminErrorBody),
        (status = 404, description = "no such dead letter", body = AdminErrorBody),
        (status = 500, description = "the broker failed", body = AdminErrorBody),
        (status = 503, description = "the broker is shut down or unreachable", body = AdminErrorBody),
    ))]
pub async fn show(
    State(s): State<AdminState>,
    PathParam(Position { group, seq }): PathParam<Position>,
) -> Result<Json<DeadLetterView>, AdminError> {
    check_group(&group)?;
    check_int64("seq", seq)?;
    // The page from `seq` starts with it if it is there, else with a later one.
    match s.broker.dead_letters(&group, seq, 1).await?.pop() {
        Some(d) if d.seq == seq => Ok(Json(d.into())),
        _ => Err(gone(&group, seq)),
    }
}

/// Delivers a dead letter again to its group (only), as a fresh message.
#[utoipa::path(post, path = "/mq/api/dead-letters/{group}/{seq}/resend", tag = "mq", security(("bearer" = [])),
    params(
        ("group" = String, Path, description = "the consumer group", pattern = r"^[A-Za-z0-9|_-]{1,127}$"),
        ("seq" = u64, Path, description = "its position in the group's dead-letter queue", minimum = 0),
    ),
    responses(
        (status = 200, description = "sent again", body = Resent),
        (status = 400, description = "a malformed group name or position", body = AdminErrorBody),
        (status = 401, description = "no or a wrong bearer token", body = AdminErrorBody),
        (status = 404, description = "no such dead letter", body = AdminErrorBody),
        (status = 500, description = "the broker failed", body = AdminErrorBody),
        (status = 503, description = "the broker is shut down or unreachable", body = AdminErrorBody),
    ))]
pub async fn resend(
    State(s): State<AdminState>,
    PathParam(Position { group, seq }): PathParam<Position>,
) -> Result<Json<Resent>, AdminError> {
    check_group(&group)?;
    check_int64("seq", seq)?;
    // Through the trace's resend, so that the message's trace shows it.
    if crate::trace::resend_dead_letter(&*s.broker, s.trace.as_ref(), &group, seq).await? {
        tracing::info!(%group, seq, "dead letter resent through the admin API");
        Ok(Json(Resent { resent: 1 }))
    } else {
        Err(gone(&group, seq))
    }
}

/// Delivers every dead letter of a group again.
#[utoipa::path(post, path = "/mq/api/dead-letters/{group}/resend", tag = "mq", security(("bearer" = [])),
    params(("group" = String, Path, description = "the consumer group", pattern = r"^[A-Za-z0-9|_-]{1,127}$")),
    responses(
        (status = 200, description = "how many were sent again", body = Resent),
        (status = 400, description = "a malformed group name", body = AdminErrorBody),
        (status = 401, description = "no or a wrong bearer token", body = AdminErrorBody),
        (status = 500, description = "the broker failed", body = AdminErrorBody),
        (status = 503, description = "the broker is shut down or unreachable", body = AdminErrorBody),
    ))]
pub async fn resend_all(
    State(s): State<AdminState>,
    PathParam(group): PathParam<String>,
) -> Result<Json<Resent>, AdminError> {
    check_group(&group)?;
    let resent =
        crate::trace::resend_all_dead_letters(&*s.broker, s.trace.as_ref(), &group).await?;
    tracing::info!(%group, resent, "dead letters resent through the admin API");
    Ok(Json(Resent { resent }))
}

/// Removes a dead letter.
#[utoipa::path(delete, path = "/mq/api/dead-letters/{group}/{seq}", tag = "mq", security(("bearer" = [])),
    params(
        ("group" = String, Path, description = "the consumer group", pattern = r"^[A-Za-z0-9|_-]{1,127}$"),
        ("seq" = u64, Path, description = "its position in the group's dead-letter queue", minimum = 0),
    ),
    responses(
        (status = 200, description = "removed", body = Deleted),
        (status = 400, description = "a malformed group name or position", body = AdminErrorBody),
        (status = 401, description = "no or a wrong bearer token", body = AdminErrorBody),
        (status = 404, description = "no such dead letter", body = AdminErrorBody),
        (status = 500, description = "the broker failed", body = AdminErrorBody),
        (status = 503, description = "the broker is shut down or unreachable", body = AdminErrorBody),
    ))]
pub async fn delete(
    State(s): State<AdminState>,
    PathParam(Position { group, seq }): PathParam<Position>,
) -> Result<Json<Deleted>, AdminError> {
    check_group(&group)?;
    check_int64("seq", seq)?;
    if s.broker.delete_dead_letter(&group, seq).await? {
        tracing::info!(%group, seq, "dead letter deleted through the admin API");
        Ok(Json(Deleted { deleted: 1 }))
    } else {
        Err(gone(&group, seq))
    }
}

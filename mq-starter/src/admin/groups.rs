//! `GET /mq/api/groups`, `GET /mq/api/groups/{group}` and the offset reset: consumer groups,
//! their members and progress, and moving a group on a topic (RocketMQ's `consumerProgress`
//! and `resetOffsetByTime`).

use std::collections::BTreeSet;

use axum::extract::State;
use axum::Json;
use mq_core::stats::{GroupQueueStats, GroupStats, QueueOffset, ResetTo};
use mq_core::system_topics::{topic_kind, TopicKind};
use mq_core::{BrokerError, MessageModel};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{check_group, AdminError, AdminErrorBody, Body, ErrorCode, PathParam};
use super::AdminState;

/// One group, in the list.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupRow {
    /// The group.
    pub group: String,
    /// `clustering` or `broadcasting`; `null` when the broker knows the group only by its
    /// stored progress.
    #[schema(value_type = Option<String>, pattern = "^(clustering|broadcasting)$")]
    pub model: Option<MessageModel>,
    /// The live members' instance names, sorted.
    pub members: Vec<String>,
    /// Messages stored and not yet settled by the group, over all its topics (retry topics
    /// included).
    pub lag: u64,
}

/// A group's model, members and progress: `mq_core::stats::GroupStats` as serde writes it.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupStatsView {
    /// The group.
    pub group: String,
    /// `clustering`, `broadcasting` or `null` (known only by its stored progress).
    #[schema(value_type = Option<String>, pattern = "^(clustering|broadcasting)$")]
    pub model: Option<MessageModel>,
    /// The live members' instance names, sorted.
    pub members: Vec<String>,
    /// Progress per (topic, queue, member), sorted.
    pub queues: Vec<GroupQueueView>,
}

/// A group's progress on one queue: `mq_core::stats::GroupQueueStats`.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupQueueView {
    /// A subscribed topic or its retry topic.
    pub topic: String,
    /// The queue id.
    pub queue_id: u32,
    /// Broadcasting: the member whose progress this is; `null` for the group's.
    pub instance: Option<String>,
    /// Every message below it is settled.
    pub committed: u64,
    /// The offset the next message will get.
    pub max_offset: u64,
    /// Messages stored and not yet settled.
    pub lag: u64,
    /// Clustering: the live member the queue is assigned to; `null` when none is live.
    pub owner: Option<String>,
}

impl From<GroupStats> for GroupStatsView {
    fn from(g: GroupStats) -> Self {
        GroupStatsView {
            group: g.group,
            model: g.model,
            members: g.members,
            queues: g.queues.into_iter().map(GroupQueueView::from).collect(),
        }
    }
}

impl From<GroupQueueStats> for GroupQueueView {
    fn from(q: GroupQueueStats) -> Self {
        GroupQueueView {
            topic: q.topic,
            queue_id: q.queue_id,
            instance: q.instance,
            committed: q.committed,
            max_offset: q.max_offset,
            lag: q.lag,
            owner: q.owner,
        }
    }
}

/// The group's lag over every topic it subscribed to (each with its retry topic).
fn total_lag(stats: &GroupStats) -> u64 {
    let topics: BTreeSet<&str> = stats
        .queues
        .iter()
        .filter(|r| topic_kind(&r.topic) == TopicKind::User)
        .map(|r| r.topic.as_str())
        .collect();
    topics.into_iter().map(|t| stats.lag(t)).sum()
}

/// Every group the broker knows, with its lag.
#[utoipa::path(get, path = "/mq/api/groups", tag = "mq", security(("bearer" = [])),
    responses(
        (status = 200, description = "the groups", body = Vec<GroupRow>),
        (status = 401, description = "no or a wrong bearer token", body = AdminErrorBody),
        (status = 500, description = "the broker failed", body = AdminErrorBody),
        (status = 503, description = "the broker is shut down or unreachable", body = AdminErrorBody),
    ))]
pub async fn list(State(s): State<AdminState>) -> Result<Json<Vec<GroupRow>>, AdminError> {
    let mut out = Vec::new();
    for group in s.broker.groups().await? {
        let stats = match s.broker.group_stats(&group).await {
            Ok(stats) => stats,
            // Forgotten since the list was read.
            Err(BrokerError::GroupNotFound { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        out.push(GroupRow {
            lag: total_lag(&stats),
            group: stats.group,
            model: stats.model,
            members: stats.members,
        });
    }
    Ok(Json(out))
}

/// One group's members and its progress on every queue it reads.
#[utoipa::path(get, path = "/mq/api/groups/{group}", tag = "mq", security(("bearer" = [])),
    params(("group" = String, Path, description = "the consumer group", pattern = r"^[A-Za-z0-9|_-]{1,127}$")),
    responses(
        (status = 200, description = "the group's progress", body = GroupStatsView),
        (status = 400, description = "a malformed group name", body = AdminErrorBody),
        (status = 401, description = "no or a wrong bearer token", body = AdminErrorBody),
        (status = 404, description = "no such group", body = AdminErrorBody),
        (status = 500, description = "the broker failed", body = AdminErrorBody),
        (status = 503, description = "the broker is shut down or unreachable", body = AdminErrorBody),
    ))]
pub async fn get(
    State(s): State<AdminState>,
    PathParam(group): PathParam<String>,
) -> Result<Json<GroupStatsView>, AdminError> {
    check_group(&group)?;
    Ok(Json(s.broker.group_stats(&group).await?.into()))
}

/// Where a reset moves a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResetEdge {
    /// The first message still stored: everything is delivered again.
    First,
    /// The end: the backlog is skipped.
    Last,
}

/// A point in time to reset to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetAt {
    /// The first message stored at or after this time (ms since the Unix epoch), per queue.
    #[schema(minimum = 0, value_type = i64)]
    #[serde(deserialize_with = "json_integer")]
    pub timestamp_ms: u64,
}

/// A JSON integer as JSON Schema counts them (`2`, and `2.0`, which serde's `u64` refuses) in
/// `0..=i64::MAX`, the `int64` the document declares.
fn json_integer<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct Integer;

    impl serde::de::Visitor<'_> for Integer {
        type Value = u64;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an integer from 0 to 2^63 - 1")
        }

        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom(format!("{v} is negative")))
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u64, E> {
            match i64::try_from(v) {
                Ok(_) => Ok(v),
                Err(_) => Err(E::custom(format!("{v} is above 2^63 - 1"))),
            }
        }

        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<u64, E> {
            // Exactly representable integers only: 0 <= v < 2^63.
            if v.fract() == 0.0 && (0.0..9_223_372_036_854_775_808.0).contains(&v) {
                Ok(v as u64)
            } else {
                Err(E::custom(format!(
                    "{v} is not an integer from 0 to 2^63 - 1"
                )))
            }
        }
    }

    d.deserialize_any(Integer)
}

/// `"first"`, `"last"` or `{"timestamp_ms": N}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ResetTarget {
    /// `"first"` or `"last"`.
    Edge(ResetEdge),
    /// `{"timestamp_ms": N}`.
    At(ResetAt),
}

/// The body of an offset reset.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    /// A topic the group subscribed to (not a retry topic).
    #[schema(pattern = r"^[A-Za-z0-9|_-][A-Za-z0-9%|_-]{0,126}$")]
    pub topic: String,
    /// Where to.
    pub to: ResetTarget,
}

/// Where a reset moved one queue.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueOffsetView {
    /// The queue id.
    pub queue_id: u32,
    /// The group's new committed offset on it.
    pub offset: u64,
}

impl From<QueueOffset> for QueueOffsetView {
    fn from(q: QueueOffset) -> Self {
        QueueOffsetView {
            queue_id: q.queue_id,
            offset: q.offset,
        }
    }
}

/// Moves the group's committed offset on every queue of a topic; live members continue from
/// there. Retries already queued for the group are kept.
#[utoipa::path(post, path = "/mq/api/groups/{group}/offset", tag = "mq", security(("bearer" = [])),
    params(("group" = String, Path, description = "the consumer group", pattern = r"^[A-Za-z0-9|_-]{1,127}$")),
    request_body = ResetRequest,
    responses(
        (status = 200, description = "the new offset of each queue", body = Vec<QueueOffsetView>),
        (status = 400, description = "a malformed group name, or a body that is not JSON", body = AdminErrorBody),
        (status = 401, description = "no or a wrong bearer token", body = AdminErrorBody),
        (status = 404, description = "no such group, or it never subscribed to the topic", body = AdminErrorBody),
        (status = 422, description = "a body that does not say a topic and where to", body = AdminErrorBody),
        (status = 500, description = "the broker failed", body = AdminErrorBody),
        (status = 503, description = "the broker is shut down or unreachable", body = AdminErrorBody),
    ))]
pub async fn reset_offset(
    State(s): State<AdminState>,
    PathParam(group): PathParam<String>,
    Body(req): Body<ResetRequest>,
) -> Result<Json<Vec<QueueOffsetView>>, AdminError> {
    check_group(&group)?;
    mq_core::message::validate_topic(&req.topic)
        .map_err(|e| AdminError::new(ErrorCode::Invalid, e.to_string()))?;
    let to = match req.to {
        ResetTarget::Edge(ResetEdge::First) => ResetTo::First,
        ResetTarget::Edge(ResetEdge::Last) => ResetTo::Last,
        ResetTarget::At(ResetAt { timestamp_ms }) => ResetTo::Timestamp(timestamp_ms),
    };
    let offsets = s.broker.reset_offset(&group, &req.topic, to).await?;
    tracing::info!(%group, topic = %req.topic, ?to, "offset reset through the admin API");
    Ok(Json(offsets.into_iter().map(Into::into).collect()))
}

//! `GET /mq/api/listeners` and pausing or resuming one: every (listener, topic) the
//! application runs, with its settings, what it is doing and the queues it holds.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use mq_core::{ConsumeMode, MessageModel};
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{AdminError, AdminErrorBody, PathParam};
use super::AdminState;
use crate::listener::ListenerControl;

/// Whether a listener fetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ListenerState {
    /// Fetching and handling.
    Running,
    /// Fetching nothing; still a member of its group.
    Paused,
}

/// One listener on one topic.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListenerRow {
    /// The listener (its handler function's name).
    pub name: String,
    /// The topic.
    pub topic: String,
    /// Its consumer group.
    pub group: String,
    /// `clustering` or `broadcasting`.
    #[schema(value_type = String, pattern = "^(clustering|broadcasting)$")]
    pub model: MessageModel,
    /// `concurrently` or `orderly`.
    #[schema(value_type = String, pattern = "^(concurrently|orderly)$")]
    pub mode: ConsumeMode,
    /// Deliveries (batches) handled at once, at most.
    pub concurrency: usize,
    /// Messages per call of a batch listener; `null` for one at a time.
    pub batch: Option<usize>,
    /// Deliveries (batches) being handled now.
    pub in_flight: usize,
    /// The queue ids its consumer holds now.
    pub assignment: Vec<u32>,
    /// `running` or `paused`.
    pub state: ListenerState,
}

async fn row(c: &ListenerControl) -> ListenerRow {
    // A consumer that has left (the application is stopping) holds no queue.
    let mut assignment = c.consumer.assignment().await.unwrap_or_default();
    assignment.sort_unstable();
    let info = &c.info;
    ListenerRow {
        name: info.name.clone(),
        topic: info.topic.clone(),
        group: info.group.clone(),
        model: info.model,
        mode: info.mode,
        concurrency: info.concurrency,
        batch: info.batch,
        in_flight: c.in_flight(),
        assignment,
        state: if c.is_paused() {
            ListenerState::Paused
        } else {
            ListenerState::Running
        },
    }
}

async fn rows<'a>(controls: impl Iterator<Item = &'a Arc<ListenerControl>>) -> Vec<ListenerRow> {
    let mut out = Vec::new();
    for c in controls {
        out.push(row(c).await);
    }
    out.sort_by(|a, b| (&a.name, &a.topic).cmp(&(&b.name, &b.topic)));
    out
}

/// The controls of listener `name`; 404 if it runs on no topic.
fn named<'a>(s: &'a AdminState, name: &str) -> Result<Vec<&'a Arc<ListenerControl>>, AdminError> {
    let found: Vec<_> = s.listeners.iter().filter(|c| c.info.name == name).collect();
    if found.is_empty() {
        return Err(AdminError::not_found(format!(
            "no listener {name:?} runs in this application"
        )));
    }
    Ok(found)
}

/// Every listener on every topic, sorted by name, then topic.
#[utoipa::path(get, path = "/mq/api/listeners", tag = "mq", security(("bearer" = [])),
    responses(
        (status = 200, description = "one row per (listener, topic)", body = Vec<ListenerRow>),
        (status = 401, description = "no or a wrong bearer token", body = AdminErrorBody),
    ))]
pub async fn list(State(s): State<AdminState>) -> Json<Vec<ListenerRow>> {
    Json(rows(s.listeners.iter()).await)
}

/// Pauses a listener on all its topics (RocketMQ's suspend): it fetches nothing more,
/// deliveries in flight finish, it stays a member of its group. Messages pile up as lag.
#[utoipa::path(post, path = "/mq/api/listeners/{name}/pause", tag = "mq", security(("bearer" = [])),
    params(("name" = String, Path, description = "the listener (its handler function's name)")),
    responses(
        (status = 200, description = "the listener's rows, paused", body = Vec<ListenerRow>),
        (status = 400, description = "a malformed path", body = AdminErrorBody),
        (status = 401, description = "no or a wrong bearer token", body = AdminErrorBody),
        (status = 404, description = "no such listener", body = AdminErrorBody),
    ))]
pub async fn pause(
    State(s): State<AdminState>,
    PathParam(name): PathParam<String>,
) -> Result<Json<Vec<ListenerRow>>, AdminError> {
    let controls = named(&s, &name)?;
    futures_util::future::join_all(controls.iter().map(|c| c.pause())).await;
    Ok(Json(rows(controls.into_iter()).await))
}

/// Resumes a paused listener on all its topics.
#[utoipa::path(post, path = "/mq/api/listeners/{name}/resume", tag = "mq", security(("bearer" = [])),
    params(("name" = String, Path, description = "the listener (its handler function's name)")),
    responses(
        (status = 200, description = "the listener's rows, running", body = Vec<ListenerRow>),
        (status = 400, description = "a malformed path", body = AdminErrorBody),
        (status = 401, description = "no or a wrong bearer token", body = AdminErrorBody),
        (status = 404, description = "no such listener", body = AdminErrorBody),
    ))]
pub async fn resume(
    State(s): State<AdminState>,
    PathParam(name): PathParam<String>,
) -> Result<Json<Vec<ListenerRow>>, AdminError> {
    let controls = named(&s, &name)?;
    for c in &controls {
        c.resume();
    }
    Ok(Json(rows(controls.into_iter()).await))
}

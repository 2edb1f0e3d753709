//! Health, metrics and dead letters; the dead-letter routes only for an administrator.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody, PathParam};
use super::ApiState;

/// Liveness.
#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub broker: String,
}

/// Whether the shop is up, and on which broker.
#[utoipa::path(get, path = "/health", responses((status = 200, description = "up", body = Health)))]
pub async fn health(State(s): State<ApiState>) -> Json<Health> {
    Json(Health {
        status: "UP".into(),
        broker: s.broker.backend().into(),
    })
}

/// Prometheus metrics of mq.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text", body = String, content_type = "text/plain")))]
pub async fn metrics(State(s): State<ApiState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

/// An administrator: the request carries `Authorization: Bearer <shop.admin.token>`. With no
/// token configured, only clients on the loopback interface are administrators.
pub struct Admin;

impl FromRequestParts<ApiState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &ApiState) -> Result<Self, ApiError> {
        let refused =
            |message: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
        match s.shop.admin_token.as_deref() {
            Some(token) => {
                let given = parts
                    .headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "));
                match given {
                    Some(g) if g.as_bytes() == token.as_bytes() => Ok(Admin),
                    Some(_) => Err(refused("wrong bearer token")),
                    None => Err(refused(
                        "an admin route: send Authorization: Bearer <token>",
                    )),
                }
            }
            None => {
                let loopback = parts
                    .extensions
                    .get::<ConnectInfo<SocketAddr>>()
                    .is_some_and(|ConnectInfo(peer)| peer.ip().is_loopback());
                if loopback {
                    Ok(Admin)
                } else {
                    Err(refused("no shop.admin.token is configured: admin routes answer loopback clients only"))
                }
            }
        }
    }
}

/// A dead letter, as the admin API shows it.
#[derive(Serialize, ToSchema)]
pub struct DeadLetterView {
    /// `group:seq`, what resend takes.
    pub id: String,
    pub group: String,
    pub topic: String,
    pub message_id: String,
    pub keys: Vec<String>,
    pub attempts: u32,
    pub last_error: String,
    pub body: String,
}

/// Every group's dead letters (the oldest 100 of each).
#[utoipa::path(get, path = "/api/mq/dead-letters", security(("bearer" = [])),
    responses((status = 200, description = "the dead letters", body = Vec<DeadLetterView>), (status = 401, description = "no or a wrong bearer token", body = ErrorBody)))]
pub async fn dead_letters(
    _: Admin,
    State(s): State<ApiState>,
) -> Result<Json<Vec<DeadLetterView>>, ApiError> {
    let mut out = Vec::new();
    let groups = s
        .broker
        .dead_letter_counts()
        .await
        .map_err(ApiError::internal)?;
    for (group, count) in groups {
        if count == 0 {
            continue;
        }
        for d in s
            .broker
            .dead_letters(&group, 0, 100)
            .await
            .map_err(ApiError::internal)?
        {
            out.push(DeadLetterView {
                id: format!("{group}:{}", d.seq),
                group: group.clone(),
                topic: d.message.topic.clone(),
                message_id: d.message.id.to_string(),
                keys: d.message.keys.clone(),
                attempts: d.attempts,
                last_error: d.last_error.clone(),
                body: String::from_utf8_lossy(&d.message.body).into_owned(),
            });
        }
    }
    Ok(Json(out))
}

/// Delivers a dead letter again to its group.
#[utoipa::path(post, path = "/api/mq/dead-letters/{id}/resend", params(("id" = String, Path, description = "group:seq", pattern = r"^.+:[0-9]{1,19}$")),
    security(("bearer" = [])),
    responses((status = 204, description = "sent again"), (status = 400, description = "a malformed path, query string or JSON body", body = ErrorBody), (status = 401, description = "no or a wrong bearer token", body = ErrorBody), (status = 404, description = "no such dead letter", body = ErrorBody)))]
pub async fn resend_dead_letter(
    _: Admin,
    State(s): State<ApiState>,
    PathParam(id): PathParam<String>,
) -> Result<axum::http::StatusCode, ApiError> {
    let (group, seq) = id
        .rsplit_once(':')
        .and_then(|(g, n)| n.parse::<u64>().ok().map(|n| (g.to_owned(), n)))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_path",
                format!("dead-letter id {id:?} is not group:seq"),
            )
        })?;
    if s.broker
        .resend_dead_letter(&group, seq)
        .await
        .map_err(ApiError::internal)?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("dead letter {id} not found")))
    }
}

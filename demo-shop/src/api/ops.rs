//! Health and metrics. Dead letters, groups and the rest are mq's admin API, under `/mq/api`.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::ApiState;

/// Liveness.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `UP`, or `DOWN` when the broker does not work.
    pub status: String,
    /// The broker's backend.
    pub broker: String,
    /// Why the broker is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Whether the shop is up: its broker answers (`Broker::health`), and on which backend.
/// `/mq/api/health` says the same about every mq component, to an administrator.
#[utoipa::path(get, path = "/health", responses(
    (status = 200, description = "up", body = Health),
    (status = 503, description = "the broker is down", body = Health)))]
pub async fn health(State(s): State<ApiState>) -> (StatusCode, Json<Health>) {
    let broker = s.broker.backend().to_owned();
    match s.broker.health().await {
        Ok(()) => (
            StatusCode::OK,
            Json(Health {
                status: "UP".into(),
                broker,
                error: None,
            }),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "health: the broker is down");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(Health {
                    status: "DOWN".into(),
                    broker,
                    error: Some(e.to_string()),
                }),
            )
        }
    }
}

/// Prometheus metrics of mq.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text", body = String, content_type = "text/plain")))]
pub async fn metrics(State(s): State<ApiState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

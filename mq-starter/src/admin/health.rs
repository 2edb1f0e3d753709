//! `GET /mq/api/health`: the broker and the idempotency store, each checked for real
//! (`Broker::health`, `IdempotencyStore::health`); 503 when one is down.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::AdminErrorBody;
use super::AdminState;

/// `UP` or `DOWN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub enum HealthStatus {
    /// Working.
    #[serde(rename = "UP")]
    Up,
    /// Not working; the component says why.
    #[serde(rename = "DOWN")]
    Down,
}

/// The application's health.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthReport {
    /// `DOWN` when any component is.
    pub status: HealthStatus,
    /// `broker`, and `idempotency` when some listener is idempotent.
    pub components: BTreeMap<String, HealthComponent>,
}

/// One checked part.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthComponent {
    /// Its state.
    pub status: HealthStatus,
    /// The broker's backend (`embedded`, `redis`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// The idempotency store (`memory`, `redis`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// Why it is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl HealthComponent {
    fn of<E: std::fmt::Display>(checked: Result<(), E>) -> Self {
        let (status, error) = match checked {
            Ok(()) => (HealthStatus::Up, None),
            Err(e) => (HealthStatus::Down, Some(e.to_string())),
        };
        HealthComponent {
            status,
            backend: None,
            store: None,
            error,
        }
    }
}

/// Whether the broker and the idempotency store work.
#[utoipa::path(get, path = "/mq/api/health", tag = "mq", security(("bearer" = [])),
    responses(
        (status = 200, description = "every component is up", body = HealthReport),
        (status = 401, description = "no or a wrong bearer token", body = AdminErrorBody),
        (status = 503, description = "a component is down; it carries the error", body = HealthReport),
    ))]
pub async fn health(State(s): State<AdminState>) -> (StatusCode, Json<HealthReport>) {
    let mut components = BTreeMap::new();
    let broker = HealthComponent {
        backend: Some(s.broker.backend().into()),
        ..HealthComponent::of(s.broker.health().await)
    };
    if let Some(e) = &broker.error {
        tracing::warn!(error = %e, "health: the broker is down");
    }
    components.insert("broker".to_owned(), broker);
    if let Some(store) = &s.idempotency {
        let idempotency = HealthComponent {
            store: Some(store.kind().into()),
            ..HealthComponent::of(store.health().await)
        };
        if let Some(e) = &idempotency.error {
            tracing::warn!(error = %e, "health: the idempotency store is down");
        }
        components.insert("idempotency".to_owned(), idempotency);
    }
    let status = if components.values().all(|c| c.status == HealthStatus::Up) {
        HealthStatus::Up
    } else {
        HealthStatus::Down
    };
    let code = match status {
        HealthStatus::Up => StatusCode::OK,
        HealthStatus::Down => StatusCode::SERVICE_UNAVAILABLE,
    };
    (code, Json(HealthReport { status, components }))
}

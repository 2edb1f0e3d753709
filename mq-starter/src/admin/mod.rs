//! The admin API (cargo feature `admin`, on by default): JSON routes under `/mq/api/` over
//! the broker and the running listeners, documented in OpenAPI, and the web console at
//! `/mq/`. An application mounts it with [`Running::admin_router`]:
//!
//! ```no_run
//! # async fn run(running: mq_starter::Running) -> std::io::Result<()> {
//! let app = axum::Router::new().merge(running.admin_router());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! // The client's address decides who is served when no token is configured.
//! axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>()).await
//! # }
//! ```
//!
//! Every `/mq/api/*` route wants `Authorization: Bearer <mq.admin.token>`; without a
//! configured token only loopback clients are served. Errors are
//! `{"error":{"code":"...","message":"..."}}`. [`openapi`] returns the document, for an
//! application to merge into its own; the router serves it at `/mq/api/openapi.json`.
//! Routes: `health.rs`, `listeners.rs`, `topics.rs`, `groups.rs`, `dead_letters.rs`,
//! `messages.rs` (lookup by id or key, and a message's trace);
//! `auth.rs` decides who is served, `console.rs` serves the console's files.

mod auth;
mod console;
mod dead_letters;
mod error;
mod groups;
mod health;
mod listeners;
mod messages;
mod topics;

use std::sync::Arc;

use axum::routing::any;
use axum::Router;
use mq_core::Broker;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use self::error::{AdminError, AdminErrorBody};
use crate::idempotency::IdempotencyStore;
use crate::listener::ListenerControl;
use crate::Running;

/// What the admin routes share.
#[derive(Clone)]
pub(crate) struct AdminState {
    broker: Arc<dyn Broker>,
    idempotency: Option<Arc<dyn IdempotencyStore>>,
    listeners: Arc<Vec<Arc<ListenerControl>>>,
    /// Records resends in the message trace; `None` with `mq.trace.enabled: false`.
    trace: Option<crate::trace::TraceRecorder>,
    /// `mq.admin.token`; `None`: loopback clients only.
    token: Option<Arc<str>>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "mq admin API",
        description = "Topics, consumer groups and their lag, listeners, dead letters and offset resets of an mq application"
    ),
    tags((name = "mq", description = "The mq admin API")),
    modifiers(&BearerAuth)
)]
struct AdminDoc;

/// Announces the bearer token every route wants.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
    }
}

/// The API's routes with their OpenAPI document.
fn api() -> OpenApiRouter<AdminState> {
    OpenApiRouter::with_openapi(AdminDoc::openapi())
        .routes(routes!(health::health))
        .routes(routes!(listeners::list))
        .routes(routes!(listeners::pause))
        .routes(routes!(listeners::resume))
        .routes(routes!(topics::list))
        .routes(routes!(topics::get))
        .routes(routes!(groups::list))
        .routes(routes!(groups::get))
        .routes(routes!(groups::reset_offset))
        .routes(routes!(dead_letters::counts))
        .routes(routes!(dead_letters::page))
        .routes(routes!(dead_letters::show, dead_letters::delete))
        .routes(routes!(dead_letters::resend))
        .routes(routes!(dead_letters::resend_all))
        .routes(routes!(messages::by_key))
        .routes(routes!(messages::by_id))
        .routes(routes!(messages::trace))
        .routes(routes!(openapi_json))
}

/// The admin API's OpenAPI document (every `/mq/api/` route, its error bodies and the
/// `bearer` security scheme), to merge into an application's own
/// (`doc.merge(mq_starter::admin::openapi())`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().into_openapi()
}

/// This document.
#[utoipa::path(get, path = "/mq/api/openapi.json", tag = "mq", security(("bearer" = [])),
    responses(
        (status = 200, description = "the admin API's OpenAPI document", body = Object),
        (status = 401, description = "no or a wrong bearer token", body = AdminErrorBody),
    ))]
async fn openapi_json() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(openapi())
}

impl Running {
    /// The admin API and web console, under `/mq` (see [`crate::admin`]): merge it at the
    /// root of the application's router and serve with
    /// `into_make_service_with_connect_info::<SocketAddr>()`. Without `mq.admin.token` it
    /// logs a warning that it answers loopback clients only.
    pub fn admin_router(&self) -> Router {
        let token: Option<Arc<str>> = self.admin.token().map(Arc::from);
        if token.is_none() {
            tracing::warn!(
                "no mq.admin.token is configured: the admin API (/mq/api) answers loopback clients only"
            );
        }
        let state = AdminState {
            broker: self.broker(),
            idempotency: self.idempotency.clone(),
            listeners: self.listeners.clone(),
            trace: self.trace_recorder(),
            token,
        };
        let (api, _doc) = api().split_for_parts();
        api
            // Unknown API paths answer in JSON too, and to authorized clients only.
            .route(
                "/mq/api/{*rest}",
                any(|| async { AdminError::not_found("no such admin route") }),
            )
            .route_layer(axum::middleware::from_extractor_with_state::<
                auth::Admin,
                AdminState,
            >(state.clone()))
            .with_state(state)
            .merge(console::routes())
    }
}

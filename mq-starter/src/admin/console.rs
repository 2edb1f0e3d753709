//! The web console's static files, embedded in the binary: `/mq/` (and `/mq`, redirected
//! there), `/mq/console.js`, `/mq/console.css`. They hold no data, so they are served to
//! anyone; the page calls the API, which asks for the token.

use axum::http::header;
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

/// A file with its content type; `no-cache` so that a new build's console is used at once.
fn file(content_type: &'static str, text: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        text,
    )
}

/// The console's routes.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/mq", get(|| async { Redirect::permanent("/mq/") }))
        .route(
            "/mq/",
            get(|| async { file("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/mq/console.js",
            get(|| async { file("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/mq/console.css",
            get(|| async { file("text/css; charset=utf-8", STYLE) }),
        )
}

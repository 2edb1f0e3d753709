//! Who may use the admin API: a request with `Authorization: Bearer <mq.admin.token>`, or,
//! when no token is configured, a client on the loopback interface (as axum's
//! `ConnectInfo<SocketAddr>` tells; a request without it is refused, so an application must
//! serve with `into_make_service_with_connect_info::<SocketAddr>()`).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;
use subtle::ConstantTimeEq;

use super::error::{AdminError, ErrorCode};
use super::AdminState;

/// A request allowed to use the admin API.
pub struct Admin;

impl FromRequestParts<AdminState> for Admin {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, s: &AdminState) -> Result<Self, AdminError> {
        let refused = |message: &str| AdminError::new(ErrorCode::Unauthorized, message);
        match s.token.as_deref() {
            Some(token) => match bearer(parts) {
                // Constant time, so that the answer's timing does not tell how much of a
                // guess was right.
                Some(given) if bool::from(given.as_bytes().ct_eq(token.as_bytes())) => Ok(Admin),
                Some(_) => Err(refused("wrong bearer token")),
                None => Err(refused(
                    "the admin API wants Authorization: Bearer <mq.admin.token>",
                )),
            },
            None => match parts.extensions.get::<ConnectInfo<SocketAddr>>() {
                Some(ConnectInfo(peer)) if peer.ip().is_loopback() => Ok(Admin),
                Some(_) => Err(refused(
                    "no mq.admin.token is configured: the admin API answers loopback clients only",
                )),
                None => Err(refused(
                    "no mq.admin.token is configured and the client's address is unknown (serve with into_make_service_with_connect_info::<SocketAddr>())",
                )),
            },
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme in any case).
fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

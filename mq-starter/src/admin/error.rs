//! The admin API's error answer, `{"error":{"code":"...","message":"..."}}`, and the
//! extractors whose rejections are such answers (axum's own answer in plain text).

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use mq_core::{BackendErrorKind, BrokerError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::ToSchema;

/// What kind of error an answer is: its `code` and its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 401: no token, a wrong one, or (without a configured token) a client not on loopback.
    Unauthorized,
    /// 404: no such listener, topic, group, dead letter or route.
    NotFound,
    /// 400: a malformed path or query string, or a body that is not JSON.
    BadRequest,
    /// 422: a JSON body that does not say what the route takes.
    Invalid,
    /// 503: the broker is shut down or cannot be reached.
    Unavailable,
    /// 500: anything else.
    Internal,
}

impl ErrorCode {
    fn status(self) -> StatusCode {
        match self {
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn word(self) -> &'static str {
        match self {
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotFound => "not_found",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Invalid => "invalid",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

/// An error answer of the admin API.
#[derive(Debug)]
pub struct AdminError {
    code: ErrorCode,
    message: String,
}

impl AdminError {
    /// An answer of kind `code` saying `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        AdminError {
            code,
            message: message.into(),
        }
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
}

impl From<BrokerError> for AdminError {
    fn from(e: BrokerError) -> Self {
        let code = match &e {
            BrokerError::TopicNotFound(_)
            | BrokerError::GroupNotFound { .. }
            | BrokerError::QueueNotFound { .. } => ErrorCode::NotFound,
            BrokerError::Message(_) => ErrorCode::Invalid,
            BrokerError::Closed => ErrorCode::Unavailable,
            _ if e.backend_kind() == Some(BackendErrorKind::Unavailable) => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        };
        if matches!(code, ErrorCode::Internal | ErrorCode::Unavailable) {
            tracing::warn!(error = %e, "admin request failed");
        }
        AdminError::new(code, e.to_string())
    }
}

/// The body of an error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct AdminErrorBody {
    /// What went wrong.
    pub error: AdminErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct AdminErrorDetail {
    /// `unauthorized`, `not_found`, `bad_request`, `invalid`, `unavailable` or `internal`.
    pub code: String,
    /// For a person.
    pub message: String,
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let body = AdminErrorBody {
            error: AdminErrorDetail {
                code: self.code.word().into(),
                message: self.message,
            },
        };
        let mut response = (self.code.status(), axum::Json(body)).into_response();
        if self.code == ErrorCode::Unauthorized {
            // RFC 6750: a 401 names the scheme the client should use.
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// A JSON body whose rejections are admin errors: 422 for JSON that does not fit, 400 for
/// the rest (not JSON, no JSON content type, too large).
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = AdminError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Body(v)),
            Err(JsonRejection::JsonDataError(e)) => {
                Err(AdminError::new(ErrorCode::Invalid, e.body_text()))
            }
            Err(e) => Err(AdminError::bad_request(e.body_text())),
        }
    }
}

/// Path parameters whose rejections are 400 admin errors.
pub struct PathParam<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParam<T> {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| PathParam(v))
            .map_err(|e: PathRejection| AdminError::bad_request(e.body_text()))
    }
}

/// A query string whose rejections are 400 admin errors.
pub struct QueryParam<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParam<T> {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| QueryParam(v))
            .map_err(|e: QueryRejection| AdminError::bad_request(e.body_text()))
    }
}

/// Checks a group name of a path (the broker's rule), so that a name no group can have is a
/// 400, as the OpenAPI document's pattern `^[A-Za-z0-9|_-]{1,127}$` says, and not a 404.
pub fn check_group(group: &str) -> Result<(), AdminError> {
    mq_core::message::validate_group(group).map_err(|e| AdminError::bad_request(e.to_string()))
}

/// Checks a position or time from a path or query against the OpenAPI document, which
/// declares integers as `int64`: what lies above `i64::MAX` is a 400.
pub fn check_int64(what: &str, n: u64) -> Result<u64, AdminError> {
    if i64::try_from(n).is_ok() {
        Ok(n)
    } else {
        Err(AdminError::bad_request(format!(
            "{what} must be at most {}, not {n}",
            i64::MAX
        )))
    }
}

//! Errors as HTTP answers: `{"error": "..."}` with the right status, and
//! nothing internal in the text.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    /// The tenant named in the URL, when it is a valid name (anything
    /// else is not echoed).
    #[error("unknown tenant{}", .0.as_deref().map(|t| format!(" `{t}`")).unwrap_or_default())]
    UnknownTenant(Option<String>),
    /// What was asked for and is not there.
    #[error("{0}")]
    NotFound(String),
    #[error("the admin API is off: set [admin] token to turn it on")]
    AdminOff,
    /// A path no route serves.
    #[error("no such path (webhooks are received at POST /webhook and /webhook/{{tenant}})")]
    NoRoute,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("request timed out")]
    Timeout,
    #[error("body too large (limit {0} bytes)")]
    TooLarge(usize),
    #[error("rate limit exceeded")]
    RateLimited { retry_after_s: u64 },
    #[error("store unavailable, retry later")]
    StoreUnavailable,
    #[error("server busy, retry later")]
    Busy,
    #[error("internal error")]
    Internal,
}

impl AppError {
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AppError::UnknownTenant(_)
            | AppError::NotFound(_)
            | AppError::AdminOff
            | AppError::NoRoute => StatusCode::NOT_FOUND,
            AppError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            AppError::Timeout => StatusCode::REQUEST_TIMEOUT,
            AppError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            AppError::StoreUnavailable | AppError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status(),
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response();
        match self {
            AppError::RateLimited { retry_after_s } => {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
            }
            AppError::StoreUnavailable | AppError::Busy => {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        r
    }
}

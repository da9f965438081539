//! `ApiError`: every failure an HTTP handler can return, rendered as the v1 error body.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use magpie_protocol::{ErrorBody, ErrorCode, ErrorDetail};
use magpie_store::StoreError;

/// An error with a protocol code and a human message.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The machine-readable code; also decides the HTTP status.
    pub code: ErrorCode,
    /// Text for humans.
    pub message: String,
}

impl ApiError {
    /// Builds an error from a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// 400 `invalid_request`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    /// 403 `forbidden`.
    pub fn forbidden() -> Self {
        Self::new(
            ErrorCode::Forbidden,
            "you are not a member of this conversation",
        )
    }

    /// 404 `not_found`.
    pub fn not_found(what: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("{what} not found"))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UsernameTaken => Self::new(ErrorCode::UsernameTaken, "username is taken"),
            StoreError::NotFound(what) => Self::not_found(what),
            StoreError::Closed => Self::new(ErrorCode::Unavailable, "server is shutting down"),
            StoreError::Stalled(ms) => {
                tracing::error!(ms, "request refused: a commit is stuck on the disk");
                Self::new(
                    ErrorCode::Unavailable,
                    "storage is not answering; try again later",
                )
            }
            StoreError::Poisoned => {
                tracing::error!("request refused: the store is poisoned");
                Self::new(
                    ErrorCode::Unavailable,
                    "storage failed; the server refuses writes until it is restarted",
                )
            }
            other => {
                tracing::error!(error = %other, "store failure");
                Self::new(ErrorCode::Internal, "storage failure")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
        (status, Json(body)).into_response()
    }
}

//! The API's errors: a status code and a clear JSON message for the client, and never the text of
//! an internal error (that is logged once, here).

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The client sent something wrong; the message says what.
    #[error("{message}")]
    Client { status: StatusCode, message: String },
    #[error("not found: {0}")]
    NotFound(String),
    /// The saga is not in a state that allows the request; the body carries its status.
    #[error("{message}")]
    Conflict {
        message: String,
        status: crate::saga::SagaStatus,
    },
    #[error("method not allowed")]
    MethodNotAllowed,
    /// No valid bearer token.
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    /// A valid token whose scope does not cover the request.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// A bounded resource (long polls) is full; the client may retry.
    #[error("busy: {0}")]
    Busy(String),
    /// The request took longer than the API allows.
    #[error("request timed out")]
    Timeout,
    /// The database is away for now; the client may retry.
    #[error("unavailable: {0}")]
    Unavailable(crate::Error),
    #[error("internal: {0}")]
    Internal(crate::Error),
}

impl ApiError {
    pub fn unprocessable(message: impl Into<String>) -> Self {
        ApiError::Client {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::Client {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> Self {
        if e.is_transient() {
            ApiError::Unavailable(e)
        } else {
            ApiError::Internal(e)
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let message = match &r {
            JsonRejection::MissingJsonContentType(_) => {
                "expected Content-Type: application/json".to_string()
            }
            JsonRejection::JsonSyntaxError(_) => format!("malformed JSON: {}", r.body_text()),
            JsonRejection::JsonDataError(_) => format!("invalid request: {}", r.body_text()),
            _ => r.body_text(),
        };
        ApiError::Client {
            status: r.status(),
            message,
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::bad_request(format!("invalid path: {}", r.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::bad_request(format!("invalid query: {}", r.body_text()))
    }
}

/// What every refusal answers: `success: false` as CampusG's errors carry it, and what went
/// wrong in words.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Always `false`.
    pub success: bool,
    pub error: String,
}

/// A refusal because of the saga's status (409), with that status.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConflictBody {
    /// Always `false`.
    pub success: bool,
    pub error: String,
    pub status: crate::saga::SagaStatus,
}

fn body(error: String) -> Json<ErrorBody> {
    Json(ErrorBody {
        success: false,
        error,
    })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Conflict { message, status } = &self {
            return (
                StatusCode::CONFLICT,
                Json(ConflictBody {
                    success: false,
                    error: message.clone(),
                    status: *status,
                }),
            )
                .into_response();
        }
        if let ApiError::Unauthorized(message) = &self {
            return (
                StatusCode::UNAUTHORIZED,
                [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
                body(message.to_string()),
            )
                .into_response();
        }
        let (status, message) = match self {
            ApiError::Client { status, message } => (status, message),
            ApiError::Unauthorized(message) => (StatusCode::UNAUTHORIZED, message.to_string()),
            ApiError::Forbidden(message) => (StatusCode::FORBIDDEN, message),
            ApiError::Busy(message) => (StatusCode::SERVICE_UNAVAILABLE, message),
            ApiError::NotFound(what) => (StatusCode::NOT_FOUND, what),
            ApiError::Conflict { message, .. } => (StatusCode::CONFLICT, message),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route".to_string(),
            ),
            ApiError::Timeout => (
                StatusCode::SERVICE_UNAVAILABLE,
                "the request timed out; retry later".to_string(),
            ),
            ApiError::Unavailable(e) => {
                tracing::warn!(error = %e, "request failed: storage unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily unavailable; retry later".to_string(),
                )
            }
            ApiError::Internal(e) => {
                tracing::error!(error = %e, "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error".to_string(),
                )
            }
        };
        (status, body(message)).into_response()
    }
}

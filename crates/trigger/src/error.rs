//! The two kinds of failure. [`ApiError`] is how a request fails: an HTTP status, a stable
//! machine-readable `status` word and a sentence for a person, always rendered as the same JSON
//! shape so the Next.js route, curl and an uptime check never get an HTML page, an empty body or
//! a dropped connection. [`StartupError`] is what stops the daemon before it serves; each
//! variant knows whether it is the operator's configuration (exit 2) or the machine (exit 1).

use std::io;
use std::path::PathBuf;

use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use quantlens_runs::RunsError;
use serde::Serialize;

use crate::api::json;

/// A request that cannot be served, as the client will see it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    status: &'a str,
    error: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }

    /// A request body axum could not read: too large (413) or cut off by the client.
    pub fn from_body(rejection: BytesRejection) -> ApiError {
        let status = rejection.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "payload_too_large"
        } else {
            "bad_request"
        };
        ApiError::new(status, code, rejection.body_text())
    }

    /// A path segment that is not valid percent-encoded UTF-8.
    pub fn from_path(rejection: PathRejection) -> ApiError {
        ApiError::bad_request("bad_request", rejection.body_text())
    }

    /// Run-state errors while answering a request. A run id that names nothing is the client's
    /// 404; everything else is ours.
    pub fn from_runs(err: RunsError) -> ApiError {
        match err {
            RunsError::NotFound { run_id } => ApiError::not_found(format!("no run {run_id}")),
            RunsError::InvalidRunId { .. } => {
                ApiError::bad_request("invalid_run_id", err.to_string())
            }
            other => ApiError::internal(chain(&other)),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            status: self.code,
            error: &self.message,
        };
        let mut response = json(self.status, &body);
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// Everything that keeps the daemon from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{0}\nSee `quantlens-trigger --help`.")]
    Usage(String),
    #[error("cannot find this program's own path (to locate the worker beside it); pass --worker")]
    OwnExecutable(#[source] io::Error),
    #[error("worker {}: {reason} (set --worker or QUANTLENS_WORKER)", path.display())]
    Worker { path: PathBuf, reason: String },
    #[error("cannot read the token file {}", path.display())]
    TokenFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the bearer token from {source_name} is empty")]
    EmptyToken { source_name: String },
    #[error("both --token-file and QUANTLENS_TRIGGER_TOKEN are set; use one")]
    TwoTokens,
    #[error("socket activation: {0}")]
    Activation(String),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot prepare the state directory")]
    State(#[from] RunsError),
    #[error("cannot start the async runtime")]
    Runtime(#[source] io::Error),
    #[error("the server failed")]
    Serve(#[source] io::Error),
}

impl StartupError {
    /// 2 for what the operator configured wrong, 1 for what the machine refused.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartupError::Usage(_)
            | StartupError::Worker { .. }
            | StartupError::TokenFile { .. }
            | StartupError::EmptyToken { .. }
            | StartupError::TwoTokens
            | StartupError::Activation(_)
            | StartupError::OwnExecutable(_) => 2,
            StartupError::Bind { .. }
            | StartupError::State(_)
            | StartupError::Runtime(_)
            | StartupError::Serve(_) => 1,
        }
    }
}

/// `err` and its sources, joined by ": " (shared with the runs crate).
pub use quantlens_runs::chain;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_prints_every_cause_once() {
        let err = StartupError::TokenFile {
            path: "/etc/token".into(),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        };
        assert_eq!(
            chain(&err),
            "cannot read the token file /etc/token: permission denied"
        );
    }

    #[test]
    fn run_errors_map_to_client_or_server_statuses() {
        let e = ApiError::from_runs(RunsError::NotFound {
            run_id: "r1".into(),
        });
        assert_eq!((e.status, e.code), (StatusCode::NOT_FOUND, "not_found"));
        let e = ApiError::from_runs(RunsError::InvalidRunId {
            value: "../x".into(),
        });
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let e = ApiError::from_runs(RunsError::Io {
            path: "/state/runs".into(),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        });
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(e.message.contains("/state/runs"), "{}", e.message);
    }
}

//! Errors as `application/problem+json` (RFC 9457), the one error format of every endpoint.
//!
//! # Layout
//! - This file: [`Problem`], the answer, and the [`ProblemCause`] a server error's response
//!   carries to the request log ([`crate::requests`]), which logs it once.
//! - `conversions`: `From` the errors the handlers meet, so that they use `?`: which error is
//!   which status, in one place.

mod conversions;

use std::{error::Error, sync::Arc};

use axum::{
    BoxError,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

/// An error: `application/problem+json` (RFC 9457).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"type": "about:blank", "title": "Bad Request", "status": 400,
    "detail": "to.user.tenantId: is empty"}))]
pub struct Problem {
    #[serde(rename = "type")]
    #[schema(value_type = String)]
    pub kind: &'static str,
    #[schema(value_type = String)]
    pub title: &'static str,
    pub status: u16,
    /// What was wrong, naming the field where there is one.
    pub detail: String,
    /// The error behind the answer, for the log; never sent.
    #[serde(skip)]
    cause: Option<ProblemCause>,
}

/// The error behind a problem, put in its response's extensions for the request log: the
/// handlers answer errors, and [`crate::requests`] logs the cause of each 5xx once.
#[derive(Debug, Clone)]
pub struct ProblemCause(Arc<dyn Error + Send + Sync>);

impl ProblemCause {
    pub fn error(&self) -> &(dyn Error + 'static) {
        self.0.as_ref()
    }
}

impl Problem {
    pub fn new(status: StatusCode, title: &'static str, detail: impl Into<String>) -> Self {
        Self {
            kind: "about:blank",
            title,
            status: status.as_u16(),
            detail: detail.into(),
            cause: None,
        }
    }

    /// Keeps the error this problem answers, for the request log.
    pub fn caused_by(mut self, cause: impl Into<BoxError>) -> Self {
        self.cause = Some(ProblemCause(Arc::from(cause.into())));
        self
    }

    pub fn cause(&self) -> Option<&ProblemCause> {
        self.cause.as_ref()
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "Bad Request", detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Unauthorized", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "Forbidden", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "Not Found", detail)
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "Conflict", detail)
    }

    pub fn unprocessable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Unprocessable Content",
            detail,
        )
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
            detail,
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        if let Some(cause) = self.cause {
            response.extensions_mut().insert(cause);
        }
        response
    }
}

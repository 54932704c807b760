//! Graph's error answers: `{"error": {"code", "message", "innerError": {"request-id", "date",
//! "client-request-id"}}}`, with `request-id` and `client-request-id` headers too. Clients are
//! meant to branch on `code`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::faults::Fault;

/// The content type Graph answers JSON with.
pub(crate) const GRAPH_JSON: &str = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8";

/// A refused Graph call.
#[derive(Debug, Clone)]
pub(crate) struct GraphError {
    pub(crate) status: StatusCode,
    pub(crate) code: String,
    pub(crate) message: String,
    /// `Retry-After`, verbatim.
    pub(crate) retry_after: Option<String>,
    /// A body to send verbatim (an injected fault's).
    pub(crate) raw_body: Option<String>,
}

impl GraphError {
    pub(crate) fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        GraphError {
            status,
            code: code.to_owned(),
            message: message.into(),
            retry_after: None,
            raw_body: None,
        }
    }

    /// 401 `InvalidAuthenticationToken`.
    pub(crate) fn unauthenticated(message: &str) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            message,
        )
    }

    /// 403 `Authorization_RequestDenied`: the tenant did not grant a permission the call
    /// needs. Graph's message does not name it.
    pub(crate) fn insufficient_privileges() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        )
    }

    /// 404 `Request_ResourceNotFound`: no such user or group in the token's tenant.
    pub(crate) fn resource_not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "Request_ResourceNotFound",
            format!(
                "Resource '{id}' does not exist or one of its queried reference-property objects are not present."
            ),
        )
    }

    /// 404 `NotFound`, as the Teams part of Graph says it.
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NotFound", message)
    }

    /// 400 `BadRequest`.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    /// 400 `Request_UnsupportedQuery`: a query option the directory does not take.
    pub(crate) fn unsupported_query(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "Request_UnsupportedQuery", message)
    }

    /// 429 `TooManyRequests` with `Retry-After` in seconds.
    pub(crate) fn throttled(retry_after_secs: u64) -> Self {
        GraphError {
            retry_after: Some(retry_after_secs.to_string()),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "Too many requests. Please retry after the time given in the Retry-After header.",
            )
        }
    }

    /// An injected fault, answered in Graph's shape (its code unless the fault names one).
    pub(crate) fn injected(fault: &Fault) -> Self {
        let status =
            StatusCode::from_u16(fault.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let code = fault
            .code
            .clone()
            .unwrap_or_else(|| default_code(status).to_owned());
        GraphError {
            retry_after: fault.retry_after.clone(),
            raw_body: fault.raw_body.clone(),
            ..Self::new(
                status,
                &code,
                format!("Injected fault: {} {code}", fault.status),
            )
        }
    }

    /// The answer, stamped with the request's ids.
    pub(crate) fn into_response(self, request_id: &str, client_request_id: &str) -> Response {
        let date = OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .ok()
            .and_then(|date| date.format(&Rfc3339).ok())
            .unwrap_or_default();
        let body = self.raw_body.clone().unwrap_or_else(|| {
            json!({
                "error": {
                    "code": self.code,
                    "message": self.message,
                    "innerError": {
                        "date": date,
                        "request-id": request_id,
                        "client-request-id": client_request_id,
                    }
                }
            })
            .to_string()
        });
        let mut response =
            (self.status, [(header::CONTENT_TYPE, GRAPH_JSON)], body).into_response();
        if let Some(value) = self
            .retry_after
            .as_deref()
            .and_then(|value| HeaderValue::from_str(value).ok())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

/// Graph's usual `error.code` for a status (`concepts/errors.md`, and the codes the directory
/// and Teams parts of Graph answer).
fn default_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "BadRequest",
        401 => "InvalidAuthenticationToken",
        403 => "Authorization_RequestDenied",
        404 => "Request_ResourceNotFound",
        409 => "Conflict",
        429 => "TooManyRequests",
        503 => "serviceNotAvailable",
        504 => "gatewayTimeout",
        _ => "generalException",
    }
}

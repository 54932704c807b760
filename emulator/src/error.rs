//! The Bot Connector's error answers, shaped as Teams shapes them.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::faults::Fault;

/// The size above which Teams refuses a message (about 28 KB).
pub(crate) const MAX_ACTIVITY_BYTES: usize = 28_000;

/// Why the Bot Connector refused a call.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum ConnectorError {
    #[error("Authorization has been denied for this request: {0}")]
    Unauthorized(String),
    #[error("{0}")]
    BadArgument(String),
    #[error("No such Bot Connector API: {0}")]
    NotFound(String),
    #[error("Conversation not found: {0}")]
    ConversationNotFound(String),
    #[error("The activity {activity} was not found in conversation {conversation}")]
    ActivityNotFound {
        conversation: String,
        activity: String,
    },
    #[error("The bot is not part of the conversation roster.")]
    BotNotInConversationRoster,
    #[error("Message size too big: {0} bytes (at most {MAX_ACTIVITY_BYTES})")]
    MessageSizeTooBig(usize),
    #[error("Too many requests; retry after {retry_after_secs} s")]
    Throttled { retry_after_secs: u64 },
    /// An answer injected by a test through [`Fault`].
    #[error("injected fault: {}", .0.status)]
    Injected(Box<Fault>),
}

impl ConnectorError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ConnectorError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ConnectorError::BadArgument(_) => StatusCode::BAD_REQUEST,
            ConnectorError::NotFound(_)
            | ConnectorError::ConversationNotFound(_)
            | ConnectorError::ActivityNotFound { .. } => StatusCode::NOT_FOUND,
            ConnectorError::BotNotInConversationRoster => StatusCode::FORBIDDEN,
            ConnectorError::MessageSizeTooBig(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ConnectorError::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
            ConnectorError::Injected(fault) => {
                StatusCode::from_u16(fault.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
        }
    }

    /// The `error.code` of the body (for injected raw bodies, the `errorCode` they carry).
    pub(crate) fn code(&self) -> Option<String> {
        let code = match self {
            ConnectorError::Unauthorized(_) => "Unauthorized",
            ConnectorError::BadArgument(_) => "BadArgument",
            ConnectorError::NotFound(_) => "NotFound",
            ConnectorError::ConversationNotFound(_) => "ConversationNotFound",
            ConnectorError::ActivityNotFound { .. } => "ActivityNotFoundInConversation",
            ConnectorError::BotNotInConversationRoster => "BotNotInConversationRoster",
            ConnectorError::MessageSizeTooBig(_) => "MessageSizeTooBig",
            ConnectorError::Throttled { .. } => "Throttled",
            ConnectorError::Injected(fault) => return fault.error_code(),
        };
        Some(code.to_owned())
    }
}

impl IntoResponse for ConnectorError {
    fn into_response(self) -> Response {
        let status = self.status();
        let (body, retry_after) = match &self {
            ConnectorError::Injected(fault) => (fault.body(), fault.retry_after.clone()),
            ConnectorError::Throttled { retry_after_secs } => (
                error_body("Throttled", &self.to_string()),
                Some(retry_after_secs.to_string()),
            ),
            other => (
                error_body(
                    other.code().as_deref().unwrap_or("Error"),
                    &other.to_string(),
                ),
                None,
            ),
        };
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
            body,
        )
            .into_response();
        if let Some(value) = retry_after.and_then(|value| HeaderValue::from_str(&value).ok()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

/// `{"error":{"code":…,"message":…}}`.
pub(crate) fn error_body(code: &str, message: &str) -> String {
    json!({ "error": { "code": code, "message": message } }).to_string()
}

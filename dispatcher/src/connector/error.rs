//! Teams' answers, read: the status, Teams' error code and message (from either of its two
//! error body shapes) and `Retry-After`. What each answer means for a delivery is decided in
//! the dispatcher (`delivery::failure`).

use std::time::Duration;

use super::token::TokenError;

#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error("serviceUrl {0:?} is not in the allowlist; the bot token is never sent there")]
    ServiceUrlNotAllowed(String),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("calling Teams failed")]
    Transport(#[source] reqwest::Error),
    #[error("Teams answered {status}{}: {message}", code.as_deref().map(|c| format!(" {c}")).unwrap_or_default())]
    Teams {
        status: u16,
        code: Option<String>,
        message: String,
        retry_after: Option<Duration>,
    },
}

impl ConnectorError {
    /// The reason recorded on the job: this error with its causes.
    pub fn reason(&self) -> String {
        herald_shared::error::Chain(self).to_string()
    }

    /// Whether Teams answered the call: only then did the request arrive before the call
    /// ended. A call that timed out or lost its connection may still arrive later.
    pub fn was_answered(&self) -> bool {
        matches!(self, Self::Teams { .. })
    }
}

/// Reads Teams' error body: `{"error":{"code","message"}}`, or the blocked-thread shape
/// `{"errorCode":209,"message":"{…\"subCode\":\"MessageWritesBlocked\"…}"}`.
pub(crate) fn parse_error_body(body: &str) -> (Option<String>, String) {
    let Ok(json) = serde_json::from_str::<serde_json::Value>(body) else {
        return (None, crate::entra::truncate(body, 300));
    };
    if let Some(error) = json.get("error") {
        let code = error
            .get("code")
            .and_then(|c| c.as_str())
            .map(str::to_owned);
        let message = error
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or_default()
            .to_owned();
        return (code, message);
    }
    let message = json
        .get("message")
        .and_then(|m| m.as_str())
        .unwrap_or_default()
        .to_owned();
    let sub_code = serde_json::from_str::<serde_json::Value>(&message)
        .ok()
        .and_then(|inner| {
            inner
                .get("subCode")
                .and_then(|c| c.as_str())
                .map(str::to_owned)
        });
    let code = sub_code.or_else(|| json.get("errorCode").map(|c| c.to_string()));
    (code, message)
}

/// `Retry-After` as seconds or an HTTP date.
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_of_both_shapes_are_read() {
        let (code, message) =
            parse_error_body(r#"{"error":{"code":"ConversationNotFound","message":"gone"}}"#);
        assert_eq!(
            (code.as_deref(), message.as_str()),
            (Some("ConversationNotFound"), "gone")
        );
        let blocked = r#"{"errorCode":209,"message":"{\"message\":\"Message writes blocked\",\"subCode\":\"MessageWritesBlocked\"}"}"#;
        assert_eq!(
            parse_error_body(blocked).0.as_deref(),
            Some("MessageWritesBlocked")
        );
    }

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        let later = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(30));
        let parsed = parse_retry_after(&later).unwrap();
        assert!(parsed > Duration::from_secs(25) && parsed <= Duration::from_secs(30));
        assert_eq!(parse_retry_after("soon"), None);
    }
}

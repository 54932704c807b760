//! Teams' answers, classified by TEAMS.md §3: what is worth retrying, what is final, and what
//! means the conversation is gone.

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

/// What the sender does about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Worth another attempt, no sooner than `retry_after` when Teams said so.
    Transient { retry_after: Option<Duration> },
    /// Final for this job.
    Permanent,
    /// Final, and the conversation is gone (uninstalled, blocked, deleted): mark the reference
    /// so later jobs fail without calling Teams.
    Gone,
    /// A GCC tenant reached on the public host (403 InvalidBotApiHost): try the GCC host.
    WrongHost,
}

/// 403 codes that mean the app is removed, blocked or not installed there.
const GONE_403_CODES: &[&str] = &[
    "BotDisabledByAdmin",
    "BotNotInConversationRoster",
    "ConversationBlockedByUser",
    "ForbiddenOperationException",
    "NotEnoughPermissions",
    "MessageWritesBlocked",
];

impl ConnectorError {
    pub fn class(&self) -> ErrorClass {
        match self {
            ConnectorError::ServiceUrlNotAllowed(_) => ErrorClass::Permanent,
            ConnectorError::Token(e) if e.is_transient() => {
                ErrorClass::Transient { retry_after: None }
            }
            ConnectorError::Token(_) => ErrorClass::Permanent,
            // Timeouts and connection failures: Teams may or may not have the message.
            ConnectorError::Transport(_) => ErrorClass::Transient { retry_after: None },
            ConnectorError::Teams {
                status,
                code,
                retry_after,
                ..
            } => {
                let code = code.as_deref().unwrap_or_default();
                match status {
                    403 if GONE_403_CODES.contains(&code) => ErrorClass::Gone,
                    403 if code == "InvalidBotApiHost" => ErrorClass::WrongHost,
                    404 if code == "ConversationNotFound" => ErrorClass::Gone,
                    412 | 429 | 502 | 503 | 504 | 408 => ErrorClass::Transient {
                        retry_after: *retry_after,
                    },
                    // Microsoft says a 500 ServiceError is not to be retried.
                    _ => ErrorClass::Permanent,
                }
            }
        }
    }

    /// The reason recorded on the job: this error with its causes.
    pub fn reason(&self) -> String {
        crate::error::Chain(self).to_string()
    }
}

/// Reads Teams' error body: `{"error":{"code","message"}}`, or the blocked-thread shape
/// `{"errorCode":209,"message":"{…\"subCode\":\"MessageWritesBlocked\"…}"}`.
pub(crate) fn parse_error_body(body: &str) -> (Option<String>, String) {
    let Ok(json) = serde_json::from_str::<serde_json::Value>(body) else {
        return (None, super::token::truncate(body, 300));
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

    fn teams(status: u16, code: &str) -> ConnectorError {
        ConnectorError::Teams {
            status,
            code: Some(code.into()),
            message: String::new(),
            retry_after: None,
        }
    }

    #[test]
    fn classes_follow_the_teams_table() {
        assert_eq!(teams(400, "BadArgument").class(), ErrorClass::Permanent);
        assert_eq!(
            teams(401, "BotNotRegistered").class(),
            ErrorClass::Permanent
        );
        assert_eq!(
            teams(403, "BotNotInConversationRoster").class(),
            ErrorClass::Gone
        );
        assert_eq!(teams(403, "MessageWritesBlocked").class(), ErrorClass::Gone);
        assert_eq!(teams(404, "ConversationNotFound").class(), ErrorClass::Gone);
        assert_eq!(
            teams(403, "InvalidBotApiHost").class(),
            ErrorClass::WrongHost
        );
        assert_eq!(
            teams(404, "ActivityNotFoundInConversation").class(),
            ErrorClass::Permanent
        );
        assert_eq!(
            teams(413, "MessageSizeTooBig").class(),
            ErrorClass::Permanent
        );
        assert_eq!(teams(500, "ServiceError").class(), ErrorClass::Permanent);
        for status in [412, 429, 502, 503, 504] {
            assert!(
                matches!(teams(status, "x").class(), ErrorClass::Transient { .. }),
                "{status}"
            );
        }
    }

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

//! Fault injection: answers a test wants the Bot Connector to give instead of the real one.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::error_body;
use crate::recorder::Operation;

/// One fault rule. Matchers left `None` match anything; a rule with no `operation` matches
/// Bot Connector calls only (a token-endpoint or Graph fault must name its operation, e.g.
/// `Operation::Token` or `Operation::GraphInstallApp`, so that a "fail the next send" rule
/// does not hit the bot's token fetch or a Graph lookup first). A matching request gets this
/// answer, is not delivered, and uses up one of `times` (`0` = until cleared). For Graph the
/// tenant matched is the token's, and the body is Graph's error shape (see `graph`).
///
/// Over HTTP the fields are camelCase and `latency` is `latencyMs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Fault {
    /// Only requests to this conversation (decoded id).
    pub conversation_id: Option<String>,
    /// Only requests for this tenant.
    pub tenant_id: Option<String>,
    /// Only this kind of request.
    pub operation: Option<Operation>,
    /// The HTTP status to answer.
    pub status: u16,
    /// `error.code` of the body; `None` picks Teams' usual code for the status.
    pub code: Option<String>,
    /// The `Retry-After` header, verbatim (so tests can send odd values).
    pub retry_after: Option<String>,
    /// A body to send verbatim instead of `{"error":…}` (e.g. the 209 blocked-thread body).
    pub raw_body: Option<String>,
    /// Extra delay before answering.
    #[serde(rename = "latencyMs", with = "millis")]
    pub latency: Option<Duration>,
    /// How many matching requests it applies to; `0` means every one until cleared.
    pub times: u32,
}

impl Default for Fault {
    fn default() -> Self {
        Fault {
            conversation_id: None,
            tenant_id: None,
            operation: None,
            status: 500,
            code: None,
            retry_after: None,
            raw_body: None,
            latency: None,
            times: 1,
        }
    }
}

/// The body Teams sends when a thread is blocked from message writes (verbatim from
/// Microsoft's documentation).
pub const MESSAGE_WRITES_BLOCKED_BODY: &str = "{\"errorCode\":209,\"message\":\"{\\r\\n  \\\"subCode\\\": \\\"MessageWritesBlocked\\\",\\r\\n  \\\"details\\\": \\\"Thread is blocked from message writes.\\\",\\r\\n  \\\"errorCode\\\": null,\\r\\n  \\\"errorSubCode\\\": null\\r\\n}\"}";

impl Fault {
    /// A fault answering `status` once, with the usual code for it.
    pub fn new(status: u16) -> Self {
        Fault {
            status,
            ..Fault::default()
        }
    }

    /// 429 `Throttled` with the given `Retry-After`.
    pub fn throttled(retry_after: impl Into<String>) -> Self {
        Fault::new(429).retry_after(retry_after)
    }

    /// The 403 blocked-thread answer (`errorCode` 209, `MessageWritesBlocked`).
    pub fn message_writes_blocked() -> Self {
        Fault {
            raw_body: Some(MESSAGE_WRITES_BLOCKED_BODY.to_owned()),
            ..Fault::new(403)
        }
    }

    /// Only for this conversation.
    pub fn conversation(mut self, id: impl Into<String>) -> Self {
        self.conversation_id = Some(id.into());
        self
    }

    /// Only for this tenant.
    pub fn tenant(mut self, id: impl Into<String>) -> Self {
        self.tenant_id = Some(id.into());
        self
    }

    /// Only for this operation.
    pub fn operation(mut self, operation: Operation) -> Self {
        self.operation = Some(operation);
        self
    }

    /// With this `error.code`.
    pub fn code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    /// With this `Retry-After` header.
    pub fn retry_after(mut self, value: impl Into<String>) -> Self {
        self.retry_after = Some(value.into());
        self
    }

    /// After this extra delay.
    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = Some(latency);
        self
    }

    /// For this many matching requests (`0` = until cleared).
    pub fn times(mut self, times: u32) -> Self {
        self.times = times;
        self
    }

    fn matches(
        &self,
        operation: Operation,
        conversation: Option<&str>,
        tenant: Option<&str>,
    ) -> bool {
        let operation_matches = match self.operation {
            Some(wanted) => wanted == operation,
            None => !operation.is_token() && !operation.is_graph(),
        };
        let conversation_matches = self
            .conversation_id
            .as_deref()
            .is_none_or(|wanted| Some(wanted) == conversation);
        let tenant_matches = self
            .tenant_id
            .as_deref()
            .is_none_or(|wanted| tenant.is_some_and(|tenant| tenant.eq_ignore_ascii_case(wanted)));
        operation_matches && conversation_matches && tenant_matches
    }

    /// The code recorded for this answer.
    pub(crate) fn error_code(&self) -> Option<String> {
        if let Some(code) = &self.code {
            return Some(code.clone());
        }
        if let Some(raw) = &self.raw_body {
            // The 209 body has no `error.code`; record its number so logs still say why.
            let parsed: Value = serde_json::from_str(raw).ok()?;
            return parsed
                .get("errorCode")
                .map(|code| code.to_string().trim_matches('"').to_owned())
                .or_else(|| {
                    parsed
                        .pointer("/error/code")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                });
        }
        default_code(self.status).map(str::to_owned)
    }

    /// The body to answer with.
    pub(crate) fn body(&self) -> String {
        if let Some(raw) = &self.raw_body {
            return raw.clone();
        }
        let code = self.error_code().unwrap_or_else(|| "Error".to_owned());
        error_body(&code, &format!("Injected fault: {} {code}", self.status))
    }
}

/// Teams' usual `error.code` for a status.
fn default_code(status: u16) -> Option<&'static str> {
    Some(match status {
        400 => "BadArgument",
        401 => "BotNotRegistered",
        403 => "ConversationBlockedByUser",
        404 => "ConversationNotFound",
        412 => "PreconditionFailed",
        413 => "MessageSizeTooBig",
        429 => "Throttled",
        500 => "ServiceError",
        502 => "BadGateway",
        503 => "ServiceUnavailable",
        504 => "GatewayTimeout",
        _ => return None,
    })
}

/// The pending fault rules, in the order they were injected.
#[derive(Debug, Default)]
pub(crate) struct FaultList {
    rules: Vec<Fault>,
}

impl FaultList {
    pub(crate) fn push(&mut self, fault: Fault) {
        self.rules.push(fault);
    }

    pub(crate) fn clear(&mut self) {
        self.rules.clear();
    }

    pub(crate) fn pending(&self) -> Vec<Fault> {
        self.rules.clone()
    }

    /// The first rule matching the request, used up by one.
    pub(crate) fn take(
        &mut self,
        operation: Operation,
        conversation: Option<&str>,
        tenant: Option<&str>,
    ) -> Option<Fault> {
        let index = self
            .rules
            .iter()
            .position(|rule| rule.matches(operation, conversation, tenant))?;
        let rule = &mut self.rules[index];
        let fault = rule.clone();
        match rule.times {
            0 => {}
            1 => {
                self.rules.remove(index);
            }
            _ => rule.times -= 1,
        }
        Some(fault)
    }
}

/// `Option<Duration>` as whole milliseconds.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(duration) => {
                serializer.serialize_u64(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
            }
            None => serializer.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(deserializer)?.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_used_up_and_matched_by_conversation() {
        let mut faults = FaultList::default();
        faults.push(Fault::new(503).conversation("a:1").times(2));
        let send = Operation::SendToConversation;
        assert!(faults.take(send, Some("a:2"), None).is_none());
        assert_eq!(faults.take(send, Some("a:1"), None).unwrap().status, 503);
        assert_eq!(faults.take(send, Some("a:1"), None).unwrap().status, 503);
        assert!(faults.take(send, Some("a:1"), None).is_none());
    }

    #[test]
    fn unscoped_rules_leave_the_token_endpoint_alone() {
        let mut faults = FaultList::default();
        faults.push(Fault::new(500));
        assert!(faults.take(Operation::Token, None, None).is_none());
        assert!(faults.take(Operation::GraphGetUser, None, None).is_none());
        faults.push(Fault::new(500).operation(Operation::Token));
        assert!(faults.take(Operation::Token, None, None).is_some());
        faults.push(Fault::new(503).operation(Operation::GraphGetUser));
        assert!(faults.take(Operation::GraphGetUser, None, None).is_some());
    }

    #[test]
    fn http_shape_uses_camel_case_and_milliseconds() {
        let fault: Fault = serde_json::from_str(
            r#"{"status":429,"retryAfter":"3","latencyMs":250,"operation":"SendToConversation"}"#,
        )
        .unwrap();
        assert_eq!(fault.latency, Some(Duration::from_millis(250)));
        assert_eq!(fault.times, 1);
        assert_eq!(fault.operation, Some(Operation::SendToConversation));
        assert_eq!(
            Fault::message_writes_blocked().error_code().as_deref(),
            Some("209")
        );
        let body: Value = serde_json::from_str(MESSAGE_WRITES_BLOCKED_BODY).unwrap();
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("MessageWritesBlocked")
        );
    }
}

//! Graph's answers, read into what they mean for a job: throttled or unavailable (try again,
//! after `Retry-After` when given), a permission the tenant has not granted (named, so the
//! admin knows what to consent to), the app missing from the tenant's catalog, or a refusal.
//! Graph's error body is `{"error":{"code","message","innerError":{…}}}`; callers branch on
//! `code`, as Graph asks.

use std::time::Duration;

use reqwest::StatusCode;

use herald_shared::store::StoreError;

use crate::{connector::parse_error_body, entra::TokenError};

/// How long a 429 without `Retry-After` holds the tenant's Graph calls.
pub(crate) const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// The URL's host is not in `HERALD_GRAPH_ALLOWLIST`: nothing was sent, no token fetched.
    #[error(
        "the Microsoft Graph host {0} is not in HERALD_GRAPH_ALLOWLIST; no Graph token is sent there"
    )]
    NotAllowed(String),
    /// A tenant id that cannot be one (it would go into the token URL and the pacer's key).
    #[error("{0:?} is not a tenant id")]
    InvalidTenant(String),
    #[error("no Microsoft Graph token for the tenant")]
    Token(#[from] TokenError),
    #[error("calling Microsoft Graph failed")]
    Transport(#[source] reqwest::Error),
    /// Graph answered 429.
    #[error("Microsoft Graph throttled this tenant's calls; retry after {retry_after:?}")]
    Throttled { retry_after: Duration },
    /// The tenant's Graph calls are paused (a 429 seen by any replica) or paced further out
    /// than a call waits: nothing was sent. Not a failure: the work waits its turn.
    #[error("the tenant's Microsoft Graph calls are held for {wait:?} (their pace, or a 429)")]
    Held { wait: Duration },
    /// 5xx or 408: Graph could not answer now.
    #[error(
        "Microsoft Graph is unavailable ({status}{}): {message}",
        code_suffix(code)
    )]
    Unavailable {
        status: u16,
        code: Option<String>,
        message: String,
        retry_after: Option<Duration>,
    },
    /// 403: the tenant has not granted (admin-consented) the application permission the
    /// call needs.
    #[error(
        "Microsoft Graph refused: the app lacks the application permission {permission} in this tenant (grant it and give admin consent)"
    )]
    PermissionMissing { permission: String, message: String },
    /// The install named an app the tenant's app catalog does not have.
    #[error(
        "Microsoft Graph could not install the app: the Teams app {teams_app_id} is not in the tenant's app catalog (publish it to the org catalog, or allow it from the Store): {message}"
    )]
    NotInCatalog {
        teams_app_id: String,
        message: String,
    },
    /// Any other 4xx.
    #[error(
        "Microsoft Graph refused the call ({status}{}): {message}",
        code_suffix(code)
    )]
    Refused {
        status: u16,
        code: Option<String>,
        message: String,
    },
    /// A success whose body does not read as the call's answer.
    #[error("Microsoft Graph's answer to {call} does not read: {reason}")]
    Malformed { call: &'static str, reason: String },
    /// The tenant's pace (shared by every replica) could not be read or taken.
    #[error("the Graph pacer could not be reached")]
    Store(#[from] StoreError),
}

fn code_suffix(code: &Option<String>) -> String {
    code.as_deref().map(|c| format!(" {c}")).unwrap_or_default()
}

impl GraphError {
    /// The reason recorded on the job (`lastError`): this error with its causes, one
    /// sentence.
    pub fn reason(&self) -> String {
        herald_shared::error::Chain(self).to_string()
    }

    /// Whether trying again later may succeed without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Token(error) => error.is_transient(),
            Self::Transport(_)
            | Self::Throttled { .. }
            | Self::Held { .. }
            | Self::Unavailable { .. } => true,
            Self::Store(_) => true,
            // The token was refused (revoked, or expired early); the next call fetches anew.
            Self::Refused { status, .. } => *status == 401,
            Self::NotAllowed(_)
            | Self::InvalidTenant(_)
            | Self::PermissionMissing { .. }
            | Self::NotInCatalog { .. }
            | Self::Malformed { .. } => false,
        }
    }

    /// How long Graph asked to wait before the next call, when it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Throttled { retry_after } => Some(*retry_after),
            Self::Held { wait } => Some(*wait),
            Self::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// What a failed answer means. `permission` is the application permission the call
    /// needs, named when Graph refuses for the lack of one.
    pub(crate) fn from_answer(
        status: StatusCode,
        body: &str,
        retry_after: Option<Duration>,
        permission: &str,
    ) -> Self {
        let (code, message) = parse_error_body(body);
        match status.as_u16() {
            429 => Self::Throttled {
                retry_after: retry_after.unwrap_or(DEFAULT_RETRY_AFTER),
            },
            403 if code.as_deref().is_some_and(is_permission_code) => Self::PermissionMissing {
                permission: permission.to_owned(),
                message,
            },
            408 | 500..=599 => Self::Unavailable {
                status: status.as_u16(),
                code,
                message,
                retry_after,
            },
            status => Self::Refused {
                status,
                code,
                message,
            },
        }
    }

    /// The metric label of a failure.
    pub(crate) fn outcome(&self) -> &'static str {
        match self {
            Self::NotAllowed(_) => "not_allowed",
            Self::InvalidTenant(_) => "invalid_tenant",
            Self::Token(_) => "token_failed",
            Self::Transport(_) => "transport",
            Self::Throttled { .. } => "throttled",
            Self::Held { .. } => "held",
            Self::Unavailable { .. } => "unavailable",
            Self::PermissionMissing { .. } => "permission_missing",
            Self::NotInCatalog { .. } => "not_in_catalog",
            Self::Refused { .. } => "refused",
            Self::Malformed { .. } => "malformed",
            Self::Store(_) => "store",
        }
    }
}

/// The codes Graph's directory (`Authorization_RequestDenied`) and its Teams and other
/// workloads (`Forbidden`, `AccessDenied`) answer a call whose token lacks the role for.
fn is_permission_code(code: &str) -> bool {
    ["Authorization_RequestDenied", "Forbidden", "AccessDenied"]
        .iter()
        .any(|known| known.eq_ignore_ascii_case(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str, retry_after: Option<u64>) -> GraphError {
        GraphError::from_answer(
            StatusCode::from_u16(status).unwrap(),
            body,
            retry_after.map(Duration::from_secs),
            "User.Read.All",
        )
    }

    fn graph_body(code: &str, message: &str) -> String {
        serde_json::json!({"error": {"code": code, "message": message, "innerError": {"request-id": "r"}}})
            .to_string()
    }

    #[test]
    fn answers_are_classified_by_status_and_code() {
        let throttled = answer(429, &graph_body("TooManyRequests", "slow down"), Some(2));
        assert_eq!(throttled.retry_after(), Some(Duration::from_secs(2)));
        assert!(throttled.is_transient());
        assert_eq!(
            answer(429, "", None).retry_after(),
            Some(DEFAULT_RETRY_AFTER),
            "a 429 without Retry-After waits a second"
        );

        let denied = answer(
            403,
            &graph_body(
                "Authorization_RequestDenied",
                "Insufficient privileges to complete the operation.",
            ),
            None,
        );
        assert!(
            matches!(&denied, GraphError::PermissionMissing { permission, .. } if permission == "User.Read.All")
        );
        assert!(!denied.is_transient());
        assert_eq!(
            denied.reason(),
            "Microsoft Graph refused: the app lacks the application permission User.Read.All in this tenant (grant it and give admin consent)"
        );
        assert!(matches!(
            answer(
                403,
                &graph_body("Forbidden", "Missing role permissions"),
                None
            ),
            GraphError::PermissionMissing { .. }
        ));
        assert!(matches!(
            answer(403, &graph_body("SomethingElse", "no"), None),
            GraphError::Refused { status: 403, .. }
        ));

        let unavailable = answer(503, &graph_body("serviceNotAvailable", "later"), Some(5));
        assert!(unavailable.is_transient());
        assert_eq!(unavailable.retry_after(), Some(Duration::from_secs(5)));
        assert!(matches!(
            answer(408, "", None),
            GraphError::Unavailable { status: 408, .. }
        ));

        let refused = answer(
            400,
            &graph_body("BadRequest", "Invalid filter clause"),
            None,
        );
        assert!(!refused.is_transient());
        assert_eq!(
            refused.reason(),
            "Microsoft Graph refused the call (400 BadRequest): Invalid filter clause"
        );
        assert!(
            answer(
                401,
                &graph_body("InvalidAuthenticationToken", "expired"),
                None
            )
            .is_transient()
        );
    }
}

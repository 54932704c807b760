//! What happens when a call to Teams fails: one pure decision from Teams' answer, the attempts
//! made and the retry policy, for sends, edits and deletions alike.
//!
//! The table it follows is Teams' own (Microsoft's "rate limits" and "build conversational
//! capability" pages):
//!
//! | Teams answers | Herald |
//! |---|---|
//! | 429 `Throttled` | pauses the whole tenant on every replica for `Retry-After` (1 s without), then retries |
//! | 408, 412 `PreconditionFailed`, 502, 503, 504; a timeout or a dropped connection | retries with jittered backoff, never sooner than `Retry-After` |
//! | 403 `BotDisabledByAdmin`, `BotNotInConversationRoster`, `ConversationBlockedByUser`, `ForbiddenOperationException`, `NotEnoughPermissions`, `MessageWritesBlocked` (209); 404 `ConversationNotFound` | fails, and marks the conversation gone (later jobs fail without calling Teams until the next install) |
//! | 403 `InvalidBotApiHost` | moves the tenant to the GCC host and retries there (fails where there is none, or it was sent there) |
//! | 404 `ActivityNotFoundInConversation` | a deletion is done (the message is gone already); anything else fails |
//! | 400, 401, 413, 500 `ServiceError` (Microsoft: do not retry), anything else | fails at once |
//!
//! A transient failure on the last allowed attempt gives up: the job fails and is dead-lettered
//! with the reason.

use std::time::Duration;

use herald_shared::config::RetrySchedule;
use rand::Rng;

use crate::{connector::ConnectorError, graph::GraphError};

/// How failures are retried (`HERALD_RETRY_SCHEDULE`, `HERALD_MAX_ATTEMPTS`) and where a GCC
/// tenant goes.
#[derive(Debug, Clone)]
pub struct Policy {
    pub retry_schedule: RetrySchedule,
    /// Calls to Teams a delivery may make before a transient failure is final.
    pub max_attempts: u32,
    /// Where a GCC tenant goes on 403 InvalidBotApiHost, if this cloud has such a host.
    pub gcc_service_url: Option<String>,
}

/// The kind of call that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// Sending a job's message (or creating the 1:1 chat it goes to).
    Send,
    /// Editing a delivered message.
    Update,
    /// Deleting a delivered message.
    Delete,
}

/// A failed call, as far as the decision needs it.
#[derive(Debug, Clone, Copy)]
pub struct Failed<'a> {
    pub call: Call,
    pub error: &'a ConnectorError,
    /// Calls this delivery has made to Teams, the failed one included.
    pub attempts: u32,
    /// The serviceUrl the call went to, when it reached a conversation (not while creating a
    /// 1:1 chat).
    pub service_url: Option<&'a str>,
    /// Whether the tenant is known (a tenant can only be moved to the GCC host by its id).
    pub tenant_known: bool,
}

/// What to do about a failed call: side effects first, then the verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Teams throttled the tenant (429): every replica holds the tenant's calls this long, so
    /// the whole tenant backs off, not only this message.
    pub pause_tenant: Option<Duration>,
    /// A GCC tenant reached on the public host: its tenant and conversation move to this host.
    pub move_to_host: Option<String>,
    /// The conversation is gone (uninstalled, blocked, deleted): mark its stored reference.
    pub conversation_gone: bool,
    /// The text recorded as the job's `lastError`.
    pub reason: String,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The goal is reached after all (deleting a message that is gone already).
    Done,
    /// Try again after this long.
    Retry { wait: Duration },
    /// Final: never worth another call.
    Fail,
    /// Transient, but the attempts are used up: final, and set aside in the dead-letter
    /// queue.
    GiveUp,
}

/// Teams' answer, sorted by what it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Meaning {
    Transient { retry_after: Option<Duration> },
    Permanent,
    Gone,
    WrongHost,
    AlreadyDone,
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

/// Whether Teams refused a call because the app is not installed there (or removed, or
/// blocked): for a 1:1 chat Herald asked to open, the user never installed the app.
pub fn means_not_installed(error: &ConnectorError) -> bool {
    matches!(
        error,
        ConnectorError::Teams { status: 403, code: Some(code), .. }
            if GONE_403_CODES.contains(&code.as_str())
    )
}

/// How long a tenant is paused on a 429 that says nothing of `Retry-After`.
const DEFAULT_THROTTLE_PAUSE: Duration = Duration::from_secs(1);

/// Decides what to do about `failed`. `jitter` (from [`jitter`], 0.75–1.25) spreads retries
/// out so that jobs failing together do not come back together; it is a parameter so that
/// the decision stays a pure function.
pub fn decide(failed: &Failed<'_>, policy: &Policy, jitter: f64) -> Decision {
    let reason = match failed.call {
        Call::Send => failed.error.reason(),
        Call::Update => format!("update failed: {}", failed.error.reason()),
        Call::Delete => format!("delete failed: {}", failed.error.reason()),
    };
    let pause_tenant = match failed.error {
        ConnectorError::Teams {
            status: 429,
            retry_after,
            ..
        } => Some(retry_after.unwrap_or(DEFAULT_THROTTLE_PAUSE)),
        _ => None,
    };
    let mut decision = Decision {
        pause_tenant,
        move_to_host: None,
        conversation_gone: false,
        reason,
        verdict: Verdict::Fail,
    };
    let retry_after = match meaning(failed.call, failed.error) {
        Meaning::AlreadyDone => {
            decision.verdict = Verdict::Done;
            return decision;
        }
        Meaning::Permanent => return decision,
        Meaning::Gone => {
            decision.conversation_gone = true;
            return decision;
        }
        Meaning::WrongHost => match gcc_host(failed, policy) {
            // Moved, it is retried like a transient failure, with no floor of Teams' own.
            Some(host) => {
                decision.move_to_host = Some(host.to_owned());
                None
            }
            None => return decision,
        },
        Meaning::Transient { retry_after } => retry_after,
    };
    decision.verdict = if failed.attempts >= policy.max_attempts {
        decision.reason = format!(
            "gave up after {} attempts; the last: {}",
            failed.attempts, decision.reason
        );
        Verdict::GiveUp
    } else {
        Verdict::Retry {
            wait: backoff(&policy.retry_schedule, failed.attempts, retry_after, jitter),
        }
    };
    decision
}

/// Decides what to do about a Microsoft Graph call that failed while reaching a user: a
/// throttled or unavailable Graph is retried like Teams (never sooner than its
/// `Retry-After`); the rest fails. (The Graph client itself holds the tenant's later Graph
/// calls for a 429's `Retry-After`.) A call the tenant's Graph pace held back is not a
/// failure: it comes back at its turn whatever the attempts.
pub fn decide_graph(error: &GraphError, attempts: u32, policy: &Policy, jitter: f64) -> Decision {
    let mut decision = Decision {
        pause_tenant: None,
        move_to_host: None,
        conversation_gone: false,
        reason: error.reason(),
        verdict: Verdict::Fail,
    };
    // Graph's pace held the call back: it never went, so it is no attempt; back at the turn.
    if let GraphError::Held { wait } = error {
        decision.verdict = Verdict::Retry { wait: *wait };
        return decision;
    }
    if !error.is_transient() {
        return decision;
    }
    decision.verdict = if attempts >= policy.max_attempts {
        decision.reason = format!(
            "gave up after {attempts} attempts; the last: {}",
            decision.reason
        );
        Verdict::GiveUp
    } else {
        Verdict::Retry {
            wait: backoff(
                &policy.retry_schedule,
                attempts,
                error.retry_after(),
                jitter,
            ),
        }
    };
    decision
}

/// A random jitter factor for [`decide`].
pub fn jitter() -> f64 {
    rand::thread_rng().gen_range(0.75..=1.25)
}

/// The wait before retry number `retry` (1-based): the schedule's step times `jitter`, and
/// never sooner than Teams' `Retry-After`.
fn backoff(
    schedule: &RetrySchedule,
    retry: u32,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Duration {
    let jittered = schedule.nominal(retry).mul_f64(jitter);
    retry_after.map_or(jittered, |floor| jittered.max(floor))
}

fn meaning(call: Call, error: &ConnectorError) -> Meaning {
    match error {
        ConnectorError::ServiceUrlNotAllowed(_) => Meaning::Permanent,
        ConnectorError::Token(e) if e.is_transient() => Meaning::Transient { retry_after: None },
        ConnectorError::Token(_) => Meaning::Permanent,
        // Timeouts and connection failures: Teams may or may not have the message.
        ConnectorError::Transport(_) => Meaning::Transient { retry_after: None },
        ConnectorError::Teams {
            status,
            code,
            retry_after,
            ..
        } => {
            let code = code.as_deref().unwrap_or_default();
            match status {
                404 if code == "ActivityNotFoundInConversation" && call == Call::Delete => {
                    Meaning::AlreadyDone
                }
                403 if GONE_403_CODES.contains(&code) => Meaning::Gone,
                403 if code == "InvalidBotApiHost" => Meaning::WrongHost,
                404 if code == "ConversationNotFound" => Meaning::Gone,
                408 | 412 | 429 | 502 | 503 | 504 => Meaning::Transient {
                    retry_after: *retry_after,
                },
                // Microsoft says a 500 ServiceError is not to be retried.
                _ => Meaning::Permanent,
            }
        }
    }
}

/// The GCC host a send that Teams says went to the wrong host moves to: only a send (a
/// delivered message lives where it was delivered), only where this cloud has a GCC host, and
/// only once (a send already made there fails).
fn gcc_host<'p>(failed: &Failed<'_>, policy: &'p Policy) -> Option<&'p str> {
    let gcc = policy.gcc_service_url.as_deref()?;
    let sent_to = failed.service_url?;
    (failed.call == Call::Send && failed.tenant_known && sent_to != gcc).then_some(gcc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::TokenError;

    const GCC: &str = "https://smba.infra.gcc.teams.microsoft.com/gcc";
    const PUBLIC: &str = "https://smba.trafficmanager.net/teams/";

    fn policy() -> Policy {
        Policy {
            retry_schedule: "4s,40s".parse().unwrap(),
            max_attempts: 3,
            gcc_service_url: Some(GCC.into()),
        }
    }

    fn teams(status: u16, code: &str, retry_after: Option<Duration>) -> ConnectorError {
        ConnectorError::Teams {
            status,
            code: Some(code.into()),
            message: "Teams' words".into(),
            retry_after,
        }
    }

    /// The decision for a first send to a known conversation, without jitter.
    fn first_send(error: &ConnectorError) -> Decision {
        send(error, 1, PUBLIC)
    }

    fn send(error: &ConnectorError, attempts: u32, service_url: &str) -> Decision {
        let failed = Failed {
            call: Call::Send,
            error,
            attempts,
            service_url: Some(service_url),
            tenant_known: true,
        };
        decide(&failed, &policy(), 1.0)
    }

    fn change(call: Call, error: &ConnectorError) -> Decision {
        let failed = Failed {
            call,
            error,
            attempts: 1,
            service_url: Some(PUBLIC),
            tenant_known: true,
        };
        decide(&failed, &policy(), 1.0)
    }

    fn fails(decision: &Decision) -> bool {
        decision.verdict == Verdict::Fail
            && !decision.conversation_gone
            && decision.pause_tenant.is_none()
            && decision.move_to_host.is_none()
    }

    #[test]
    fn a_bad_payload_a_bad_registration_a_big_message_and_a_service_error_fail_at_once() {
        for (status, code) in [
            (400, "BadArgument"),
            (401, "BotNotRegistered"),
            (413, "MessageSizeTooBig"),
            (500, "ServiceError"),
            (418, "SomethingNew"),
        ] {
            let decision = first_send(&teams(status, code, None));
            assert!(fails(&decision), "{status} {code}: {decision:?}");
            assert!(decision.reason.contains(code), "{decision:?}");
        }
    }

    #[test]
    fn an_app_removed_blocked_or_not_installed_fails_and_marks_the_conversation_gone() {
        for code in GONE_403_CODES {
            let decision = first_send(&teams(403, code, None));
            assert_eq!(decision.verdict, Verdict::Fail, "{code}");
            assert!(decision.conversation_gone, "{code}");
        }
        let deleted = first_send(&teams(404, "ConversationNotFound", None));
        assert!(deleted.conversation_gone && deleted.verdict == Verdict::Fail);
    }

    #[test]
    fn a_blocked_thread_in_its_own_error_shape_is_gone_too() {
        // The 403 for a blocked thread has `errorCode 209` and the sub-code inside its message;
        // the connector reads the sub-code as the code.
        let blocked = ConnectorError::Teams {
            status: 403,
            code: Some("MessageWritesBlocked".into()),
            message: r#"{"message":"Message writes blocked","subCode":"MessageWritesBlocked"}"#
                .into(),
            retry_after: None,
        };
        assert!(first_send(&blocked).conversation_gone);
    }

    #[test]
    fn a_throttled_tenant_is_paused_everywhere_for_retry_after_and_the_send_retried_no_sooner() {
        let decision = first_send(&teams(429, "Throttled", Some(Duration::from_secs(60))));
        assert_eq!(decision.pause_tenant, Some(Duration::from_secs(60)));
        assert_eq!(
            decision.verdict,
            Verdict::Retry {
                wait: Duration::from_secs(60)
            }
        );
        let unsaid = first_send(&teams(429, "Throttled", None));
        assert_eq!(unsaid.pause_tenant, Some(DEFAULT_THROTTLE_PAUSE));
        assert_eq!(
            unsaid.verdict,
            Verdict::Retry {
                wait: Duration::from_secs(4)
            },
            "without Retry-After, the schedule's step"
        );
    }

    #[test]
    fn a_throttled_edit_or_deletion_pauses_the_tenant_like_a_send() {
        for call in [Call::Update, Call::Delete] {
            let decision = change(call, &teams(429, "Throttled", None));
            assert!(decision.pause_tenant.is_some(), "{call:?}");
            assert!(
                matches!(decision.verdict, Verdict::Retry { .. }),
                "{call:?}"
            );
        }
    }

    #[test]
    fn busy_conversations_and_unavailable_hosts_are_retried_on_the_schedule() {
        for status in [408, 412, 502, 503, 504] {
            let decision = first_send(&teams(status, "x", None));
            assert_eq!(
                decision.verdict,
                Verdict::Retry {
                    wait: Duration::from_secs(4)
                },
                "{status}"
            );
            assert!(decision.pause_tenant.is_none() && !decision.conversation_gone);
        }
        let second = send(&teams(503, "x", None), 2, PUBLIC);
        assert_eq!(
            second.verdict,
            Verdict::Retry {
                wait: Duration::from_secs(40)
            }
        );
    }

    #[test]
    fn retries_are_jittered_around_the_schedule_and_never_before_retry_after() {
        let failed = Failed {
            call: Call::Send,
            error: &teams(503, "x", Some(Duration::from_secs(5))),
            attempts: 1,
            service_url: Some(PUBLIC),
            tenant_known: true,
        };
        let early = decide(&failed, &policy(), 0.75);
        assert_eq!(
            early.verdict,
            Verdict::Retry {
                wait: Duration::from_secs(5)
            },
            "3 s of jittered schedule, but Teams said 5"
        );
        let late = decide(&failed, &policy(), 1.25);
        assert_eq!(
            late.verdict,
            Verdict::Retry {
                wait: Duration::from_secs(5)
            }
        );
        let failed = Failed {
            error: &teams(503, "x", None),
            ..failed
        };
        assert_eq!(
            decide(&failed, &policy(), 1.25).verdict,
            Verdict::Retry {
                wait: Duration::from_secs(5)
            }
        );
        for _ in 0..100 {
            assert!((0.75..=1.25).contains(&jitter()));
        }
    }

    #[test]
    fn the_last_allowed_attempt_gives_up_with_the_count_and_the_last_answer() {
        let decision = send(&teams(502, "BadGateway", None), 3, PUBLIC);
        assert_eq!(decision.verdict, Verdict::GiveUp);
        assert!(
            decision
                .reason
                .starts_with("gave up after 3 attempts; the last: ")
                && decision.reason.contains("502"),
            "{}",
            decision.reason
        );
        let throttled = send(&teams(429, "Throttled", None), 3, PUBLIC);
        assert_eq!(throttled.verdict, Verdict::GiveUp);
        assert!(
            throttled.pause_tenant.is_some(),
            "the tenant is paused even when this message gives up"
        );
    }

    #[test]
    fn a_gcc_tenant_on_the_public_host_moves_to_the_gcc_host_once() {
        let wrong_host = teams(403, "InvalidBotApiHost", None);
        let decision = first_send(&wrong_host);
        assert_eq!(decision.move_to_host.as_deref(), Some(GCC));
        assert!(matches!(decision.verdict, Verdict::Retry { .. }));
        assert!(
            fails(&send(&wrong_host, 1, GCC)),
            "sent to the GCC host already: final"
        );
        let no_gcc = Policy {
            gcc_service_url: None,
            ..policy()
        };
        let failed = Failed {
            call: Call::Send,
            error: &wrong_host,
            attempts: 1,
            service_url: Some(PUBLIC),
            tenant_known: true,
        };
        assert!(
            fails(&decide(&failed, &no_gcc, 1.0)),
            "a cloud with no GCC host"
        );
        let unknown_tenant = Failed {
            tenant_known: false,
            ..failed
        };
        assert!(fails(&decide(&unknown_tenant, &policy(), 1.0)));
        let creating_the_chat = Failed {
            service_url: None,
            ..failed
        };
        assert!(fails(&decide(&creating_the_chat, &policy(), 1.0)));
        assert!(
            fails(&change(Call::Update, &wrong_host)),
            "an edit goes where the message is"
        );
    }

    #[test]
    fn deleting_a_message_that_is_gone_already_is_done() {
        let not_found = teams(404, "ActivityNotFoundInConversation", None);
        assert_eq!(change(Call::Delete, &not_found).verdict, Verdict::Done);
        assert!(fails(&change(Call::Update, &not_found)));
        assert!(fails(&first_send(&not_found)));
    }

    #[test]
    fn a_change_says_which_change_failed() {
        let decision = change(Call::Update, &teams(400, "BadArgument", None));
        assert!(
            decision.reason.starts_with("update failed: "),
            "{}",
            decision.reason
        );
        let decision = change(Call::Delete, &teams(400, "BadArgument", None));
        assert!(decision.reason.starts_with("delete failed: "));
    }

    #[test]
    fn a_forged_service_url_and_refused_credentials_fail_but_an_unreachable_token_endpoint_is_retried()
     {
        let forged = ConnectorError::ServiceUrlNotAllowed("https://evil.example/".into());
        assert!(fails(&first_send(&forged)));
        let refused = ConnectorError::Token(TokenError::Refused {
            status: 401,
            body: "invalid_client".into(),
        });
        assert!(fails(&first_send(&refused)));
        let overloaded = ConnectorError::Token(TokenError::Refused {
            status: 503,
            body: String::new(),
        });
        assert!(matches!(
            first_send(&overloaded).verdict,
            Verdict::Retry { .. }
        ));
    }

    #[test]
    fn graph_throttled_or_unavailable_is_retried_no_sooner_than_it_asked_and_the_rest_fails() {
        let throttled = GraphError::Throttled {
            retry_after: Duration::from_secs(10),
        };
        let decision = decide_graph(&throttled, 1, &policy(), 1.0);
        assert_eq!(
            decision.verdict,
            Verdict::Retry {
                wait: Duration::from_secs(10)
            },
            "Graph's 10 s, not the schedule's 4 s"
        );
        assert_eq!(decision.pause_tenant, None, "Teams' pace is not Graph's");
        let unavailable = GraphError::Unavailable {
            status: 503,
            code: None,
            message: "busy".into(),
            retry_after: None,
        };
        assert_eq!(
            decide_graph(&unavailable, 1, &policy(), 1.0).verdict,
            Verdict::Retry {
                wait: Duration::from_secs(4)
            }
        );
        let last = decide_graph(&unavailable, 3, &policy(), 1.0);
        assert_eq!(last.verdict, Verdict::GiveUp);
        assert!(
            last.reason.starts_with("gave up after 3 attempts"),
            "{}",
            last.reason
        );

        // Held back by the tenant's pace: back at the turn, whatever the attempts.
        let held = GraphError::Held {
            wait: Duration::from_millis(1700),
        };
        assert_eq!(
            decide_graph(&held, 3, &policy(), 1.0).verdict,
            Verdict::Retry {
                wait: Duration::from_millis(1700)
            }
        );

        let missing = GraphError::PermissionMissing {
            permission: "User.Read.All".into(),
            message: "Insufficient privileges".into(),
        };
        let decision = decide_graph(&missing, 1, &policy(), 1.0);
        assert_eq!(decision.verdict, Verdict::Fail);
        assert!(
            decision.reason.contains("User.Read.All"),
            "{}",
            decision.reason
        );
    }

    #[test]
    fn only_a_refusal_for_want_of_the_app_means_it_is_not_installed() {
        assert!(means_not_installed(&teams(
            403,
            "BotNotInConversationRoster",
            None
        )));
        assert!(!means_not_installed(&teams(403, "InvalidBotApiHost", None)));
        assert!(!means_not_installed(&teams(429, "Throttled", None)));
        assert!(!means_not_installed(&teams(
            404,
            "ConversationNotFound",
            None
        )));
    }
}

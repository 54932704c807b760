//! The job: the AMQP contract other services publish to `{ns}.jobs` (the README's "Over AMQP:
//! the job contract").
//!
//! This module owns the body's shape and its validation; internal bookkeeping (attempts, trace
//! context) travels in AMQP headers (see [`crate::amqp::headers`]), never in the body.
//!
//! A body is checked once, as it is parsed (or as code builds a job with [`Job::new`]): a
//! [`Job`] in hand is valid, so nothing downstream validates again.

mod id;
mod on_action;
pub mod openapi;
mod target;
mod timing;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::calendar::{self, NoOpening, RecipientClock};

pub use self::{
    id::{InvalidJobId, JobId},
    on_action::{ActionAnswer, Answer, DEFAULT_ANSWER, OnAction},
    target::{
        AnyUser, ChannelTarget, ConversationTarget, NamedUser, ONE_USER_NAME, Target, UserName,
        UserTarget,
    },
    timing::{SendWindow, Timing, ZoneChoice},
};

/// The AMQP `type` property naming this contract's version. A job may omit it (it is then
/// taken to be this version); any other value is refused as an unknown version.
pub const JOB_TYPE_V1: &str = "notification.v1";

/// The largest message Teams accepts, measured on the activity Herald sends; above it Teams
/// answers 413 `MessageSizeTooBig`.
pub const MAX_ACTIVITY_BYTES: usize = 28_000;

/// A notification job.
//
// (Not in the doc comment, which is the schema's description.) Valid by construction: made
// only by `Job::new` or by deserializing, which checks it the same way. The fields are public
// to read; `#[non_exhaustive]` keeps other crates from building one with a struct literal,
// around the checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", try_from = "UncheckedJob")]
#[non_exhaustive]
pub struct Job {
    pub id: JobId,
    pub to: Target,
    pub message: Message,
    /// Absent means now.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub deliver_at: Option<OffsetDateTime>,
    /// Once passed, the job ends `expired`, unsent.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub expires_at: Option<OffsetDateTime>,
    /// The recipient's clock: `deliverAtLocal`, `timeZone`, `window`, `urgent`.
    #[serde(flatten)]
    pub timing: Timing,
    /// What a user sees after pressing an `Action.Execute` button of the message's card, by
    /// verb (`*`: any other verb); absent: `Thanks, noted.`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_action: Option<OnAction>,
}

/// A Bot Framework message activity's content. It needs `text` or `attachments`; the activity
/// Herald sends (this object with `"type": "message"`, as JSON) must be at most 28,000 bytes,
/// Teams' limit.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_format: Option<TextFormat>,
    /// Adaptive Cards and other attachments, passed to Teams as given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub attachments: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Mentions and other entities, passed to Teams as given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub entities: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TextFormat {
    Plain,
    Markdown,
    Xml,
}

impl Message {
    /// Whether a card of the message has buttons that come back to the bot
    /// (`Action.Execute`, `Action.Submit`): only then is a press to be tied to it.
    pub fn has_card_actions(&self) -> bool {
        fn has(value: &serde_json::Value) -> bool {
            match value {
                serde_json::Value::Object(object) => {
                    matches!(
                        object.get("type").and_then(serde_json::Value::as_str),
                        Some("Action.Execute" | "Action.Submit")
                    ) || object.values().any(has)
                }
                serde_json::Value::Array(items) => items.iter().any(has),
                _ => false,
            }
        }
        self.attachments.iter().any(has)
    }

    /// Content present (text or attachments), attachments and entities that are objects, and
    /// small enough for Teams.
    pub fn validate(&self) -> Result<(), JobError> {
        let invalid = |reason: String| {
            Err(JobError::Invalid {
                field: "message",
                reason,
            })
        };
        if self.text.as_deref().is_none_or(str::is_empty) && self.attachments.is_empty() {
            return invalid("needs text or attachments".into());
        }
        for (field, items) in [
            ("message.attachments", &self.attachments),
            ("message.entities", &self.entities),
        ] {
            if let Some(position) = items.iter().position(|item| !item.is_object()) {
                return Err(JobError::Invalid {
                    field,
                    reason: format!("item {position} is not an object"),
                });
            }
        }
        let size = self.to_activity().to_string().len();
        if size > MAX_ACTIVITY_BYTES {
            return invalid(format!(
                "is {size} bytes; Teams accepts at most {MAX_ACTIVITY_BYTES}"
            ));
        }
        Ok(())
    }

    pub fn text(text: impl Into<String>) -> Self {
        Self {
            text: Some(text.into()),
            ..Self::default()
        }
    }

    /// The message activity Herald POSTs to the Bot Connector.
    pub fn to_activity(&self) -> serde_json::Value {
        let mut activity = serde_json::to_value(self).unwrap_or_else(|_| serde_json::json!({}));
        activity["type"] = "message".into();
        activity
    }
}

/// The AMQP `type` of an edit of a delivered message (a [`Change`] with a message).
pub const UPDATE_TYPE_V1: &str = "notification.update.v1";
/// The AMQP `type` of a deletion of a delivered message (a [`Change`] without one).
pub const DELETE_TYPE_V1: &str = "notification.delete.v1";

/// A change to a message already delivered (`DELETE`/`PATCH` on `/v1/notifications/{id}`).
///
/// Internal: it travels through `{ns}.jobs` like a job, so it is paced and retried like a
/// send, told apart from jobs by its AMQP `type` ([`ChangeKind::amqp_type`]); other services
/// never publish it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    /// The job whose message changes.
    pub id: JobId,
    /// The new content, for an edit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Message>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// PUT the activity with new content.
    Update,
    /// DELETE the activity.
    Delete,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Update => "update",
            ChangeKind::Delete => "delete",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "update" => Some(ChangeKind::Update),
            "delete" => Some(ChangeKind::Delete),
            _ => None,
        }
    }

    /// The AMQP `type` a change of this kind travels with.
    pub fn amqp_type(self) -> &'static str {
        match self {
            ChangeKind::Update => UPDATE_TYPE_V1,
            ChangeKind::Delete => DELETE_TYPE_V1,
        }
    }

    /// The kind of change an AMQP `type` names, if it names one.
    pub fn from_amqp_type(amqp_type: &str) -> Option<Self> {
        match amqp_type {
            UPDATE_TYPE_V1 => Some(ChangeKind::Update),
            DELETE_TYPE_V1 => Some(ChangeKind::Delete),
            _ => None,
        }
    }
}

/// Why a job body is not a valid job. The text is recorded as the dead-letter reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    #[error("the body is not a valid job: {0}")]
    Malformed(String),
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl From<InvalidJobId> for JobError {
    fn from(invalid: InvalidJobId) -> Self {
        JobError::Invalid {
            field: "id",
            reason: invalid.to_string(),
        }
    }
}

/// A job body as parsed, before any rule is checked: what serde reads a [`Job`] from.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UncheckedJob {
    /// A plain string here, so that a bad id is refused by the same checks, in the same order
    /// and with the same words, as the rest of the job.
    id: String,
    to: Target,
    message: Message,
    #[serde(default, with = "time::serde::rfc3339::option")]
    deliver_at: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    expires_at: Option<OffsetDateTime>,
    #[serde(flatten)]
    timing: Timing,
    #[serde(default)]
    on_action: Option<OnAction>,
}

impl TryFrom<UncheckedJob> for Job {
    type Error = JobError;

    fn try_from(job: UncheckedJob) -> Result<Self, Self::Error> {
        Job::new(
            JobId::try_from(job.id)?,
            job.to,
            job.message,
            job.deliver_at,
            job.expires_at,
        )?
        .with_timing(job.timing)?
        .with_on_action(job.on_action)
    }
}

/// The shape a serviceUrl must have to be tried at all (the dispatcher then parses it and checks
/// it against the allowlist): the documented [`openapi::SERVICE_URL_PATTERN`], checked without
/// a regular expression engine.
fn is_service_url(url: &str) -> bool {
    url.strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_graphic()))
}

impl Job {
    /// A job, if it is a valid one: a complete target, content Teams accepts, and an expiry
    /// (if any) after the delivery time (if any). `deliver_at` absent means now; a job whose
    /// `expires_at` has passed is valid (it ends `expired`, unsent).
    pub fn new(
        id: JobId,
        to: Target,
        message: Message,
        deliver_at: Option<OffsetDateTime>,
        expires_at: Option<OffsetDateTime>,
    ) -> Result<Self, JobError> {
        let invalid = |field, reason: &str| {
            Err(JobError::Invalid {
                field,
                reason: reason.to_owned(),
            })
        };
        match &to {
            Target::User(u) if u.tenant_id.is_empty() => {
                return invalid("to.user.tenantId", "is empty");
            }
            Target::User(u) if u.aad_object_id.is_empty() => {
                return invalid("to.user.aadObjectId", "is empty");
            }
            Target::NamedUser(u) if u.tenant_id.is_empty() => {
                return invalid("to.user.tenantId", "is empty");
            }
            Target::NamedUser(u) if u.name.as_str().is_empty() => {
                let field = match u.name {
                    UserName::PrincipalName(_) => "to.user.userPrincipalName",
                    UserName::Email(_) => "to.user.email",
                };
                return invalid(field, "is empty");
            }
            Target::Conversation(c) if c.id.is_empty() => {
                return invalid("to.conversation.id", "is empty");
            }
            Target::Conversation(c)
                if c.service_url
                    .as_deref()
                    .is_some_and(|url| !is_service_url(url)) =>
            {
                return invalid(
                    "to.conversation.serviceUrl",
                    "must be an http:// or https:// URL without spaces",
                );
            }
            Target::Channel(c)
                if c.tenant_id.is_empty() || c.team_id.is_empty() || c.channel_id.is_empty() =>
            {
                return invalid("to.channel", "needs tenantId, teamId and channelId");
            }
            _ => {}
        }
        message.validate()?;
        if let (Some(deliver), Some(expires)) = (deliver_at, expires_at)
            && expires <= deliver
        {
            return invalid("expiresAt", "must be after deliverAt");
        }
        Ok(Self {
            id,
            to,
            message,
            deliver_at,
            expires_at,
            timing: Timing::default(),
            on_action: None,
        })
    }

    /// The same job, answering presses of its card's buttons as `on_action` says.
    pub fn with_on_action(self, on_action: Option<OnAction>) -> Result<Self, JobError> {
        if let Some(on_action) = &on_action {
            on_action.validate()?;
        }
        Ok(Self { on_action, ..self })
    }

    /// The same job, its send decided by the recipient's clock as `timing` says. Refused
    /// when it names a local due time as well as `deliverAt`.
    pub fn with_timing(self, timing: Timing) -> Result<Self, JobError> {
        if timing.deliver_at_local.is_some() && self.deliver_at.is_some() {
            return Err(JobError::Invalid {
                field: "deliverAtLocal",
                reason: "cannot be given with deliverAt (one due time or the other)".into(),
            });
        }
        Ok(Self { timing, ..self })
    }

    /// Parses a job body (as published over AMQP), checking it.
    ///
    /// A body that is not JSON of the job's shape is [`JobError::Malformed`]; one that is, but
    /// breaks a rule, is [`JobError::Invalid`], with the same words [`Job::new`] uses.
    pub fn from_slice(body: &[u8]) -> Result<Self, JobError> {
        let job: UncheckedJob =
            serde_json::from_slice(body).map_err(|e| JobError::Malformed(e.to_string()))?;
        job.try_into()
    }

    /// A digest of what the job asks for (everything but its id), to tell a repeated request
    /// from a different one reusing the same id or idempotency key.
    pub fn content_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let content = serde_json::json!({
            "to": self.to, "message": self.message,
            "deliverAt": self.deliver_at.map(|t| t.unix_timestamp_nanos().to_string()),
            "expiresAt": self.expires_at.map(|t| t.unix_timestamp_nanos().to_string()),
        });
        // Only when there is any, so that a job without local-time fields hashes as it did
        // before they existed (a request repeated across an upgrade is still the same).
        let mut content = content;
        if self.timing != Timing::default() {
            content["timing"] = serde_json::json!(self.timing);
        }
        if let Some(on_action) = &self.on_action {
            content["onAction"] = serde_json::json!(on_action);
        }
        let digest = Sha256::digest(content.to_string().as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// When the job may be sent, by `recipient`'s clock: its due time (`deliverAt`, or
    /// `deliverAtLocal` in its zone; now when absent or past), moved to the next opening of
    /// its window and, unless it is urgent, past the recipient's quiet hours.
    pub fn send_time(
        &self,
        now: OffsetDateTime,
        recipient: &RecipientClock,
    ) -> Result<OffsetDateTime, NoOpening> {
        let due = self
            .deliver_at
            .or_else(|| self.timing.local_due(recipient.zone))
            .map_or(now, |due| due.max(now));
        let mut windows = Vec::with_capacity(2);
        windows.extend(self.timing.window_in(recipient.zone));
        if !self.timing.urgent {
            windows.extend(
                recipient
                    .quiet_hours
                    .map(|quiet| quiet.awake(recipient.zone)),
            );
        }
        calendar::first_opening(due, &windows)
    }

    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_card_with_buttons_that_come_back_has_card_actions() {
        let with = |attachments: serde_json::Value| Message {
            attachments: serde_json::from_value(attachments).unwrap(),
            ..Message::text("x")
        };
        assert!(!Message::text("plain").has_card_actions());
        let card = |action: &str| {
            serde_json::json!([{"contentType": "application/vnd.microsoft.card.adaptive", "content": {
                "type": "AdaptiveCard",
                "body": [{"type": "ActionSet", "actions": [{"type": action, "title": "Go"}]}]
            }}])
        };
        assert!(
            with(card("Action.Execute")).has_card_actions(),
            "nested in an ActionSet"
        );
        assert!(with(card("Action.Submit")).has_card_actions());
        assert!(
            !with(card("Action.OpenUrl")).has_card_actions(),
            "a link goes elsewhere"
        );
    }

    #[test]
    fn the_design_example_parses_and_round_trips() {
        let body = br#"{
          "id": "0193b6f0-7c1e-7a52-9a55-3f1d0c2f9e10",
          "to": { "user": { "tenantId": "t", "aadObjectId": "u" } },
          "message": { "text": "Build **42** is green", "textFormat": "markdown" },
          "deliverAt": "2026-11-25T09:00:00Z",
          "expiresAt": "2026-11-25T10:00:00Z",
          "someFutureField": true
        }"#;
        let job = Job::from_slice(body).unwrap();
        assert_eq!(
            job.to,
            Target::User(UserTarget {
                tenant_id: "t".into(),
                aad_object_id: "u".into()
            })
        );
        assert_eq!(job.message.text_format, Some(TextFormat::Markdown));
        let again = Job::from_slice(&serde_json::to_vec(&job).unwrap()).unwrap();
        assert_eq!(again, job);
        assert_eq!(job.message.to_activity()["type"], "message");
    }

    #[test]
    fn invalid_jobs_say_why() {
        let cases: &[(&str, &str)] = &[
            (r#"not json"#, "not a valid job"),
            (
                r#"{"id":"a","to":{"pigeon":{}},"message":{"text":"x"}}"#,
                "unknown variant",
            ),
            (
                r#"{"id":"a","to":{"user":{"tenantId":"","aadObjectId":"u"}},"message":{"text":"x"}}"#,
                "tenantId",
            ),
            (
                r#"{"id":"a","to":{"user":{"tenantId":"t","aadObjectId":"u"}},"message":{}}"#,
                "needs text",
            ),
            (
                r#"{"id":"a","to":{"user":{"tenantId":"t","aadObjectId":"u"}},"message":{"text":"x"},
                   "deliverAt":"2026-11-25T10:00:00Z","expiresAt":"2026-11-25T09:00:00Z"}"#,
                "expiresAt",
            ),
            (
                r#"{"id":"a","to":{"conversation":{"id":"c","serviceUrl":"smba.trafficmanager.net/amer/"}},"message":{"text":"x"}}"#,
                "serviceUrl: must be an http:// or https:// URL",
            ),
            (
                r#"{"id":"a","to":{"user":{"tenantId":"t","aadObjectId":"u"}},"message":{"attachments":[{},"card"]}}"#,
                "message.attachments: item 1 is not an object",
            ),
            (
                r#"{"id":"a","to":{"user":{"tenantId":"t","aadObjectId":"u"}},"message":{"text":"x","entities":[1]}}"#,
                "message.entities: item 0",
            ),
            // A target names exactly one kind of recipient: a second key is refused, not
            // ignored (the documents say `additionalProperties: false` for it).
            (
                r#"{"id":"a","to":{"user":{"tenantId":"t","aadObjectId":"u"},"note":1},"message":{"text":"x"}}"#,
                "not a valid job",
            ),
        ];
        for (body, expected) in cases {
            let err = Job::from_slice(body.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(expected), "{body}: {err}");
        }
        let big = Job::new(
            "a".parse().unwrap(),
            Target::User(UserTarget {
                tenant_id: "t".into(),
                aad_object_id: "u".into(),
            }),
            Message::text("x".repeat(MAX_ACTIVITY_BYTES)),
            None,
            None,
        );
        assert!(
            big.unwrap_err()
                .to_string()
                .contains("Teams accepts at most")
        );
    }

    fn user() -> Target {
        Target::User(UserTarget {
            tenant_id: "t".into(),
            aad_object_id: "u".into(),
        })
    }

    #[test]
    fn a_bad_id_is_refused_in_the_words_it_always_was() {
        // The dead-letter reason and the HTTP problem both carry this text.
        let body =
            r#"{"id":"two words","to":{"user":{"tenantId":"t","aadObjectId":"u"}},"message":{}}"#;
        let err = Job::from_slice(body.as_bytes()).unwrap_err();
        assert_eq!(
            err,
            JobError::Invalid {
                field: "id",
                reason: "must be 1-128 printable ASCII characters".into()
            },
            "the id is checked first, before the (also invalid) message"
        );
        assert_eq!(
            err.to_string(),
            "id: must be 1-128 printable ASCII characters"
        );
    }

    #[test]
    fn no_way_in_skips_the_checks() {
        // Deserializing a `Job` directly (not through `from_slice`) checks it too.
        let empty_message =
            r#"{"id":"a","to":{"user":{"tenantId":"t","aadObjectId":"u"}},"message":{}}"#;
        let err = serde_json::from_str::<Job>(empty_message).unwrap_err();
        assert!(err.to_string().contains("needs text"), "{err}");
        // Building one in code is refused for the same reasons, in the same words.
        let now = OffsetDateTime::now_utc();
        let backwards = Job::new(
            JobId::fresh(),
            user(),
            Message::text("x"),
            Some(now),
            Some(now - time::Duration::minutes(1)),
        );
        assert_eq!(
            backwards.unwrap_err().to_string(),
            "expiresAt: must be after deliverAt"
        );
        let nobody = Job::new(
            JobId::fresh(),
            Target::Channel(ChannelTarget {
                tenant_id: "t".into(),
                team_id: String::new(),
                channel_id: "c".into(),
            }),
            Message::text("x"),
            None,
            None,
        );
        assert!(nobody.unwrap_err().to_string().contains("teamId"));
    }

    #[test]
    fn a_job_already_expired_is_still_a_job() {
        // It is delivered as `expired`, unsent; refusing one already past is the HTTP API's
        // own rule, not the contract's.
        let past = OffsetDateTime::now_utc() - time::Duration::hours(1);
        let job = Job::new(JobId::fresh(), user(), Message::text("x"), None, Some(past)).unwrap();
        assert!(job.is_expired(OffsetDateTime::now_utc()));
    }
}

//! Broadcasts: one message to a whole audience (a list of users, every user of a tenant, a
//! team's roster, a list of channels), sent as one notification per recipient at Teams' tenant
//! limit. This module is the contract: the request (`POST /v1/broadcasts`, and the same body
//! as `broadcast.v1` on `{ns}.jobs` with routing key `broadcast`), checked once as it is read,
//! and its statuses. The store is [`crate::store::BroadcastStore`]; the fan-out runs in the
//! dispatcher.
//!
//! # Layout
//! - This file: the request, its audience, its checks, and each recipient's job.
//! - [`launch`]: creating and releasing a broadcast, and queueing its first step.
//! - [`recipient`]: one recipient, its place in the audience set and its notification id.

pub mod launch;
pub mod recipient;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::job::{AnyUser, ChannelTarget, Job, JobError, JobId, Message, Timing};

pub use self::{
    launch::{Broadcaster, LaunchError, Launched, step_message, walk_message},
    recipient::{InvalidRecipient, MAX_RECIPIENT_ID, Recipient},
};

/// The AMQP `type` of a broadcast published by another service (routing key
/// [`BROADCAST_ROUTING_KEY`] on `{ns}.jobs`).
pub const BROADCAST_TYPE_V1: &str = "broadcast.v1";

/// The routing key of broadcasts on `{ns}.jobs`.
pub const BROADCAST_ROUTING_KEY: &str = "broadcast";

/// The AMQP `type` of one step of a broadcast's fan-out (Herald's own, on the dispatch queue).
pub const STEP_TYPE_V1: &str = "broadcast-step.v1";

/// The AMQP `type` of one page of a broadcast-wide change (Herald's own, on the dispatch
/// queue): a retraction, an edit, a retry.
pub const WALK_TYPE_V1: &str = "broadcast-walk.v1";

/// The most users an inline audience may name; larger audiences are uploaded as a list.
pub const MAX_INLINE_USERS: usize = 10_000;

/// The most channels a channel audience may name.
pub const MAX_CHANNELS: usize = 1_000;

/// Who a broadcast goes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum Audience {
    /// These users, each in their personal chat (at most 10,000).
    Users(Vec<AnyUser>),
    /// Users uploaded in parts (`POST /v1/broadcasts/{id}/recipients`), then released.
    List(ListAudience),
    /// Every user of the tenant Herald holds a live personal conversation for, or (with
    /// `"source": "directory"`) every enabled user of the tenant's directory, through
    /// Microsoft Graph.
    Tenant(TenantAudience),
    /// Every user of an Entra group, members of nested groups included, through Microsoft
    /// Graph.
    Group(GroupAudience),
    /// Every member of the team's roster, each in their personal chat (created where Herald
    /// has none; the team install allows it).
    Team(TeamAudience),
    /// A new thread in each channel.
    Channels(Vec<ChannelTarget>),
}

/// An uploaded list: no settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListAudience {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantAudience {
    #[schema(min_length = 1)]
    pub tenant_id: String,
    /// Where the users come from: `installs` (the default), the users Herald holds a personal
    /// conversation for; or `directory`, every enabled user of the tenant's directory, read
    /// through Microsoft Graph (`User.Read.All`), the app installed for those who never did
    /// with `HERALD_PROACTIVE_INSTALL=on`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^(installs|directory)$")]
    pub source: Option<String>,
}

impl TenantAudience {
    /// Whether the users come from the tenant's directory (else from Herald's installs).
    pub fn from_directory(&self) -> bool {
        self.source.as_deref() == Some("directory")
    }
}

/// An Entra group's members (`GroupMember.Read.All`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupAudience {
    #[schema(min_length = 1)]
    pub tenant_id: String,
    /// The group's object id.
    #[schema(min_length = 1)]
    pub group_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TeamAudience {
    #[schema(min_length = 1)]
    pub tenant_id: String,
    /// The team's id as Teams gives it to the bot (its General channel's conversation id).
    #[schema(min_length = 1)]
    pub team_id: String,
}

impl Audience {
    /// `users`, `list`, `tenant`, `team` or `channels`.
    pub fn kind(&self) -> &'static str {
        match self {
            Audience::Users(_) => "users",
            Audience::List(_) => "list",
            Audience::Tenant(_) => "tenant",
            Audience::Team(_) => "team",
            Audience::Group(_) => "group",
            Audience::Channels(_) => "channels",
        }
    }

    /// The recipients named in the request itself (inline users, channels); the other kinds
    /// are collected later.
    pub fn named(&self) -> Vec<Recipient> {
        match self {
            Audience::Users(users) => users.iter().map(Recipient::any_user).collect(),
            Audience::Channels(channels) => channels
                .iter()
                .map(|c| Recipient::Channel {
                    tenant_id: c.tenant_id.clone(),
                    team_id: c.team_id.clone(),
                    channel_id: c.channel_id.clone(),
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// What `GET /v1/broadcasts/{id}` shows of the audience: its kind and settings, without
    /// the (possibly long) inline lists, which it counts instead.
    pub fn summary(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Audience::Users(users) => json!({"kind": "users", "count": users.len()}),
            Audience::List(_) => json!({"kind": "list"}),
            Audience::Tenant(t) => json!({"kind": "tenant", "tenantId": t.tenant_id,
                                          "source": t.source.as_deref().unwrap_or("installs")}),
            Audience::Group(g) => {
                json!({"kind": "group", "tenantId": g.tenant_id, "groupId": g.group_id})
            }
            Audience::Team(t) => {
                json!({"kind": "team", "tenantId": t.tenant_id, "teamId": t.team_id})
            }
            Audience::Channels(channels) => json!({"kind": "channels", "count": channels.len()}),
        }
    }

    fn check(&self) -> Result<(), JobError> {
        let invalid = |field: String, reason: &dyn std::fmt::Display| {
            // The field names are built at run time; the error type wants a static one.
            JobError::Invalid {
                field: "audience",
                reason: format!("{field}: {reason}"),
            }
        };
        let part = |field: String, value: &str| {
            Recipient::check_part(value).map_err(|reason| invalid(field, &reason))
        };
        match self {
            Audience::Users(users) => {
                if users.is_empty() || users.len() > MAX_INLINE_USERS {
                    return Err(invalid(
                        "users".into(),
                        &format!(
                            "must name 1 to {MAX_INLINE_USERS} users (upload a list for more)"
                        ),
                    ));
                }
                for (i, user) in users.iter().enumerate() {
                    part(format!("users[{i}].tenantId"), user.tenant_id())?;
                    let (field, name) = match user {
                        AnyUser::ById(user) => ("aadObjectId", user.aad_object_id.as_str()),
                        AnyUser::ByName(user) => (user.name.field(), user.name.as_str()),
                    };
                    part(format!("users[{i}].{field}"), name)?;
                }
            }
            Audience::List(_) => {}
            Audience::Tenant(tenant) => {
                part("tenant.tenantId".into(), &tenant.tenant_id)?;
                match tenant.source.as_deref() {
                    None | Some("installs" | "directory") => {}
                    Some(other) => {
                        return Err(invalid(
                            "tenant.source".into(),
                            &format!(
                                "unknown source {other:?} (expected `installs` or `directory`)"
                            ),
                        ));
                    }
                }
            }
            Audience::Team(team) => {
                part("team.tenantId".into(), &team.tenant_id)?;
                part("team.teamId".into(), &team.team_id)?;
            }
            Audience::Group(group) => {
                part("group.tenantId".into(), &group.tenant_id)?;
                part("group.groupId".into(), &group.group_id)?;
            }
            Audience::Channels(channels) => {
                if channels.is_empty() || channels.len() > MAX_CHANNELS {
                    return Err(invalid(
                        "channels".into(),
                        &format!("must name 1 to {MAX_CHANNELS} channels"),
                    ));
                }
                for (i, c) in channels.iter().enumerate() {
                    part(format!("channels[{i}].tenantId"), &c.tenant_id)?;
                    part(format!("channels[{i}].teamId"), &c.team_id)?;
                    part(format!("channels[{i}].channelId"), &c.channel_id)?;
                }
            }
        }
        Ok(())
    }
}

/// A broadcast as requested: over HTTP its id is optional (Herald names it, from the
/// `Idempotency-Key` when there is one); over AMQP it is required. Unknown fields are ignored.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({
    "audience": {"team": {"tenantId": "72f988bf-86f1-41af-91ab-2d7cd011db47",
                          "teamId": "19:0123456789abcdef@thread.tacv2"}},
    "message": {"text": "The office is closed on Friday", "textFormat": "markdown"}
}))]
pub struct BroadcastRequest {
    /// Your own id for the broadcast; the same id again answers the same broadcast.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 128, pattern = "^[!-~]+$")]
    pub id: Option<String>,
    pub audience: Audience,
    pub message: Message,
    /// When to start sending (RFC 3339); absent, or past, means now.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub deliver_at: Option<OffsetDateTime>,
    /// Once passed, recipients not yet sent to end `expired`.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<OffsetDateTime>,
    /// Each recipient's clock, as for a notification: `window` (their message goes only
    /// within it), `deliverAtLocal` with `timeZone` (e.g. 09:00 in each recipient's own
    /// zone), `urgent`.
    #[serde(flatten)]
    pub timing: Timing,
}

/// A checked broadcast: what is stored, and what each recipient's job is made from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Broadcast {
    pub id: JobId,
    pub audience: Audience,
    pub message: Message,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub deliver_at: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(flatten)]
    pub timing: Timing,
}

impl Broadcast {
    /// Checks a request and names it `id`: the audience's ids, the message as Teams takes it,
    /// the expiry after the delivery time.
    pub fn new(id: JobId, request: BroadcastRequest) -> Result<Self, JobError> {
        request.audience.check()?;
        let broadcast = Self {
            id,
            audience: request.audience,
            message: request.message,
            deliver_at: request.deliver_at,
            expires_at: request.expires_at,
            timing: request.timing,
        };
        // The message, times and window are checked as a recipient's job checks them.
        let example = Recipient::user("tenant", "user");
        broadcast.job_for(&example)?;
        Ok(broadcast)
    }

    /// Parses a `broadcast.v1` body (as published over AMQP, where the id is required).
    pub fn from_slice(body: &[u8]) -> Result<Self, JobError> {
        let request: BroadcastRequest =
            serde_json::from_slice(body).map_err(|e| JobError::Malformed(e.to_string()))?;
        let id = request.id.clone().ok_or(JobError::Invalid {
            field: "id",
            reason: "is required on a broadcast published over AMQP".into(),
        })?;
        Self::new(JobId::try_from(id)?, request)
    }

    /// The job that sends this broadcast's message to `recipient`.
    pub fn job_for(&self, recipient: &Recipient) -> Result<Job, JobError> {
        Job::new(
            recipient.notification_id(&self.id),
            recipient.target(),
            self.message.clone(),
            self.deliver_at,
            self.expires_at,
        )?
        .with_timing(self.timing.clone())
    }

    /// A digest of what the broadcast asks for (everything but its id), to tell a repeated
    /// request from a different one reusing the id.
    pub fn content_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let content = serde_json::json!({
            "audience": self.audience, "message": self.message,
            "deliverAt": self.deliver_at.map(|t| t.unix_timestamp_nanos().to_string()),
            "expiresAt": self.expires_at.map(|t| t.unix_timestamp_nanos().to_string()),
            "timing": self.timing,
        });
        let digest = Sha256::digest(content.to_string().as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Whether the audience is gathered by Herald after the request (a tenant's installs or
    /// directory, a team's roster, a group's members) rather than named in it or uploaded.
    pub fn is_gathered(&self) -> bool {
        matches!(
            self.audience,
            Audience::Tenant(_) | Audience::Team(_) | Audience::Group(_)
        )
    }
}

/// Where a broadcast stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BroadcastStatus {
    /// A list broadcast taking uploads; nothing is sent until it is released.
    Draft,
    /// Due later.
    Scheduled,
    /// Gathering its audience (a tenant's users, a team's roster).
    Expanding,
    Sending,
    /// Nothing is pending.
    Completed,
    /// Cancelled: nothing more is sent.
    Cancelled,
    /// Its `expiresAt` passed before every recipient was sent to.
    Expired,
}

impl BroadcastStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Scheduled => "scheduled",
            Self::Expanding => "expanding",
            Self::Sending => "sending",
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
        }
    }

    /// No more sends start: completed, cancelled or expired.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Cancelled | Self::Expired)
    }
}

impl std::str::FromStr for BroadcastStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "draft" => Self::Draft,
            "scheduled" => Self::Scheduled,
            "expanding" => Self::Expanding,
            "sending" => Self::Sending,
            "completed" => Self::Completed,
            "cancelled" => Self::Cancelled,
            "expired" => Self::Expired,
            other => return Err(format!("unknown broadcast status {other:?}")),
        })
    }
}

impl std::fmt::Display for BroadcastStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One step of a broadcast's fan-out, as it travels on the dispatch queue: the step number
/// makes a repeated or stale copy harmless (only the step the broadcast is at runs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    pub broadcast_id: String,
    pub step: u64,
    /// When the step is due (Unix ms), for the fan-out's lag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_ms: Option<i64>,
}

impl Step {
    /// The AMQP message id (and timer id): a step parked twice is one timer.
    pub fn message_id(&self) -> String {
        format!("broadcast-step:{}:{}", self.broadcast_id, self.step)
    }
}

/// One page of a change to every recipient of a broadcast, as it travels on the dispatch
/// queue. Each page queues the next (`after` its last recipient); a page done twice (a
/// redelivery) queues the same edits, deletions or sends again, which are harmless to repeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Walk {
    pub broadcast_id: String,
    pub action: WalkAction,
    /// The last audience member of the previous page ("" for the first).
    #[serde(default)]
    pub after: String,
}

/// What a walk does to each recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WalkAction {
    /// Deletes every delivered message.
    Retract,
    /// Edits every delivered message to the broadcast's message.
    Edit,
    /// Sends again to every recipient whose every attempt failed for a reason that could pass.
    Retry,
}

impl WalkAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retract => "retract",
            Self::Edit => "edit",
            Self::Retry => "retry",
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn request(body: serde_json::Value) -> BroadcastRequest {
        serde_json::from_value(body).unwrap()
    }

    fn id() -> JobId {
        "launch".parse().unwrap()
    }

    #[test]
    fn every_audience_kind_reads_from_the_contract_shape() {
        for (audience, kind) in [
            (
                json!({"users": [{"tenantId": "t", "aadObjectId": "u"}]}),
                "users",
            ),
            (json!({"list": {}}), "list"),
            (json!({"tenant": {"tenantId": "t"}}), "tenant"),
            (
                json!({"tenant": {"tenantId": "t", "source": "directory"}}),
                "tenant",
            ),
            (json!({"group": {"tenantId": "t", "groupId": "g"}}), "group"),
            (
                json!({"team": {"tenantId": "t", "teamId": "19:x@thread.tacv2"}}),
                "team",
            ),
            (
                json!({"channels": [{"tenantId": "t", "teamId": "19:x", "channelId": "19:y"}]}),
                "channels",
            ),
        ] {
            let broadcast = Broadcast::new(
                id(),
                request(json!({"audience": audience, "message": {"text": "hi"}})),
            )
            .unwrap();
            assert_eq!(broadcast.audience.kind(), kind);
        }
    }

    #[test]
    fn a_bad_audience_is_refused_naming_the_field() {
        let refused = |audience: serde_json::Value| {
            Broadcast::new(
                id(),
                request(json!({"audience": audience, "message": {"text": "hi"}})),
            )
            .unwrap_err()
            .to_string()
        };
        assert!(refused(json!({"users": []})).contains("users: must name 1 to 10000"));
        assert!(
            refused(json!({"users": [{"tenantId": "t", "aadObjectId": "a|b"}]}))
                .contains("users[0].aadObjectId")
        );
        assert!(
            refused(json!({"tenant": {"tenantId": "t", "source": "everyone"}}))
                .contains("expected `installs` or `directory`")
        );
        assert!(
            refused(json!({"users": [{"tenantId": "t", "email": "a|b"}]}))
                .contains("users[0].email")
        );
        assert!(
            refused(json!({"group": {"tenantId": "t", "groupId": ""}})).contains("group.groupId")
        );
        assert!(
            refused(json!({"channels": [{"tenantId": "t", "teamId": "", "channelId": "c"}]}))
                .contains("channels[0].teamId")
        );
    }

    #[test]
    fn the_message_and_times_are_checked_as_a_job_checks_them() {
        let error = Broadcast::new(
            id(),
            request(json!({"audience": {"list": {}}, "message": {}})),
        )
        .unwrap_err();
        assert!(error.to_string().starts_with("message"), "{error}");
        let error = Broadcast::new(
            id(),
            request(json!({"audience": {"list": {}}, "message": {"text": "hi"},
                "deliverAt": "2030-01-02T00:00:00Z", "expiresAt": "2030-01-01T00:00:00Z"})),
        )
        .unwrap_err();
        assert!(error.to_string().starts_with("expiresAt"), "{error}");
    }

    #[test]
    fn over_amqp_the_id_is_required() {
        let body = json!({"audience": {"list": {}}, "message": {"text": "hi"}}).to_string();
        let error = Broadcast::from_slice(body.as_bytes()).unwrap_err();
        assert!(error.to_string().contains("id: is required"), "{error}");
    }

    #[test]
    fn a_recipients_job_carries_the_broadcasts_message_times_and_window() {
        let broadcast = Broadcast::new(
            id(),
            request(json!({"audience": {"list": {}}, "message": {"text": "hi"},
                "expiresAt": "2030-01-01T00:00:00Z",
                "window": {"from": "09:00", "to": "17:00"}})),
        )
        .unwrap();
        let recipient = Recipient::user("t", "U");
        let job = broadcast.job_for(&recipient).unwrap();
        assert_eq!(job.id, recipient.notification_id("launch"));
        assert_eq!(job.message.text.as_deref(), Some("hi"));
        assert_eq!(job.expires_at, broadcast.expires_at);
        assert_eq!(job.timing, broadcast.timing);
        assert!(job.timing.window.is_some());
    }

    #[test]
    fn the_same_request_hashes_the_same_and_another_differently() {
        let a = Broadcast::new(
            id(),
            request(json!({"audience": {"list": {}}, "message": {"text": "hi"}})),
        )
        .unwrap();
        let mut b = a.clone();
        assert_eq!(a.content_hash(), b.content_hash());
        b.message.text = Some("bye".into());
        assert_ne!(a.content_hash(), b.content_hash());
    }
}

//! What "Teams" knows: users, teams, conversations, and the activities the bot sent into them.
//!
//! Ids are derived deterministically (like Teams, where a user's `29:` id and their personal
//! chat with a bot never change), so a test can compute a conversation id before the user
//! installs, and a reinstall lands in the same conversation.

use std::collections::{HashMap, HashSet};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;

use crate::error::ConnectorError;

/// A Teams user: a person in a tenant, known by their Entra object id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TeamsUser {
    /// The user's tenant (Entra directory) id.
    pub tenant_id: String,
    /// The user's Entra object id.
    pub aad_object_id: String,
    /// Display name.
    pub name: String,
    /// The IANA zone their Teams client is in; it rides on the activities a client sends
    /// (`localTimezone`, the `clientInfo` entity), never on install events.
    #[serde(default = "utc")]
    pub time_zone: String,
}

fn utc() -> String {
    "Etc/UTC".to_owned()
}

impl TeamsUser {
    /// A user with the given ids and name.
    pub fn new(
        tenant_id: impl Into<String>,
        aad_object_id: impl Into<String>,
        name: impl Into<String>,
    ) -> Self {
        TeamsUser {
            tenant_id: tenant_id.into(),
            aad_object_id: aad_object_id.into(),
            name: name.into(),
            time_zone: utc(),
        }
    }

    /// The same user, their client in IANA zone `zone`.
    pub fn in_time_zone(self, zone: &str) -> Self {
        Self {
            time_zone: zone.to_owned(),
            ..self
        }
    }

    /// A user in a fresh tenant with a fresh object id.
    pub fn random() -> Self {
        let aad = uuid::Uuid::new_v4().to_string();
        let name = format!("User {}", &aad[..8]);
        TeamsUser::new(uuid::Uuid::new_v4().to_string(), aad, name)
    }
}

/// A team (an Entra group with Teams), whose General channel the bot can post in once installed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TeamsTeam {
    /// The team's tenant id.
    pub tenant_id: String,
    /// The team's Entra group id.
    pub aad_group_id: String,
    /// Display name.
    pub name: String,
}

impl TeamsTeam {
    /// A team with the given ids and name.
    pub fn new(
        tenant_id: impl Into<String>,
        aad_group_id: impl Into<String>,
        name: impl Into<String>,
    ) -> Self {
        TeamsTeam {
            tenant_id: tenant_id.into(),
            aad_group_id: aad_group_id.into(),
            name: name.into(),
        }
    }

    /// A team with a fresh group id in the given tenant.
    pub fn random_in(tenant_id: impl Into<String>) -> Self {
        let group = uuid::Uuid::new_v4().to_string();
        let name = format!("Team {}", &group[..8]);
        TeamsTeam::new(tenant_id, group, name)
    }
}

/// An activity the bot sent to a conversation, as stored by the emulator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReceivedActivity {
    /// The activity id the emulator assigned.
    pub id: String,
    /// The conversation it was sent to.
    pub conversation_id: String,
    /// The current version, as received (the latest update's body once updated).
    pub activity: Value,
    /// The current `text`, if any.
    pub text: Option<String>,
    /// When the send (not a later update) was received.
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    /// The send request's `traceparent` header.
    pub traceparent: Option<String>,
    /// Whether the bot deleted it.
    pub deleted: bool,
    /// Earlier versions this one replaced through updates, oldest first.
    pub edits: Vec<Value>,
    /// The bot's answer to the last `Action.Execute` pressed on this message's card. An
    /// answer with a card has already replaced the card in `activity`, as Teams shows it to
    /// the user who pressed; a text or an error is kept here for showing under the card.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card_answer: Option<CardAnswer>,
}

/// What the bot answered to an `Action.Execute`, as [`ReceivedActivity::card_answer`] keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CardAnswer {
    /// The verb of the action pressed (empty when the action had none).
    pub verb: String,
    /// The answer's `statusCode`, else the HTTP status of the bot's response.
    pub status: u16,
    /// The answer's `type`, e.g. `application/vnd.microsoft.card.adaptive`, when it had one.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// What Teams shows under the card: the text of a message answer, or an error's message.
    pub text: Option<String>,
    /// When the answer came.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// What kind of conversation an id names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConversationKind {
    /// A user's 1:1 chat with the bot.
    Personal { aad_object_id: String },
    /// A group chat.
    Group,
    /// A team channel.
    Channel { team_id: String },
    /// A thread under a channel post (`19:…;messageid=…`).
    Thread { channel_id: String },
}

impl ConversationKind {
    pub(crate) fn label(&self) -> &'static str {
        match self {
            ConversationKind::Personal { .. } => "personal",
            ConversationKind::Group => "groupChat",
            ConversationKind::Channel { .. } => "channel",
            ConversationKind::Thread { .. } => "thread",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Conversation {
    pub(crate) id: String,
    pub(crate) tenant_id: String,
    pub(crate) kind: ConversationKind,
    /// Whether the bot is in the roster (threads defer to their channel).
    pub(crate) bot_member: bool,
    /// Creation order, for listings.
    pub(crate) seq: u64,
    pub(crate) activities: Vec<ReceivedActivity>,
    /// What "Teams" posted to the bot here, for transcripts.
    pub(crate) inbound: Vec<InboundActivity>,
}

/// An activity "Teams" posted to the bot, and the bot's answer.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct InboundActivity {
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) at: OffsetDateTime,
    pub(crate) activity: Value,
    pub(crate) status: u16,
}

#[derive(Debug, Clone)]
struct TeamEntry {
    bot_installed: bool,
    /// Object ids of the users seen acting in the team.
    members: HashSet<String>,
}

/// A summary of one conversation for the inspection API.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConversationSummary {
    pub(crate) id: String,
    pub(crate) tenant_id: String,
    pub(crate) kind: &'static str,
    pub(crate) bot_installed: bool,
    pub(crate) user: Option<TeamsUser>,
    pub(crate) activity_count: usize,
}

/// Tenants, users, teams and conversations.
#[derive(Debug)]
pub(crate) struct Directory {
    app_id: String,
    /// Keyed by (tenant, object id), both lower-cased.
    users: HashMap<(String, String), TeamsUser>,
    /// Keyed by team id (`19:…@thread.tacv2`).
    teams: HashMap<String, TeamEntry>,
    conversations: HashMap<String, Conversation>,
    next_seq: u64,
}

/// A base64url digest of `parts`, `len` characters long, for ids that look like Teams' own.
fn digest_id(parts: &[&str], len: usize) -> String {
    let mut out = String::new();
    let mut round = 0u32;
    while out.len() < len {
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update(part.to_ascii_lowercase().as_bytes());
            hasher.update([0u8]);
        }
        hasher.update(round.to_be_bytes());
        out.push_str(&URL_SAFE_NO_PAD.encode(hasher.finalize()));
        round += 1;
    }
    out.truncate(len);
    out
}

/// The user's `29:` id, which (like Teams' pairwise ids) is specific to the bot.
pub(crate) fn user_id(app_id: &str, tenant_id: &str, aad_object_id: &str) -> String {
    format!(
        "29:1{}",
        digest_id(&["user", app_id, tenant_id, aad_object_id], 85)
    )
}

/// The id of the user's personal chat with the bot.
pub(crate) fn personal_conversation_id(
    app_id: &str,
    tenant_id: &str,
    aad_object_id: &str,
) -> String {
    format!(
        "a:1{}",
        digest_id(&["personal", app_id, tenant_id, aad_object_id], 130)
    )
}

/// The team's id, which is also its General channel's id.
pub(crate) fn team_id(tenant_id: &str, aad_group_id: &str) -> String {
    let hex: String = Sha256::digest(
        format!(
            "team\0{}\0{}",
            tenant_id.to_ascii_lowercase(),
            aad_group_id.to_ascii_lowercase()
        )
        .as_bytes(),
    )[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("19:{hex}@thread.tacv2")
}

/// A string field of a JSON value, by path.
fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(value, |value, key| value.get(key))
        .and_then(Value::as_str)
}

/// Whether a `membersAdded`/`membersRemoved` list names the bot.
fn lists_bot(activity: &Value, field: &str, bot_id: &str) -> bool {
    activity
        .get(field)
        .and_then(Value::as_array)
        .is_some_and(|members| {
            members.iter().any(|member| {
                member
                    .get("id")
                    .and_then(Value::as_str)
                    .is_some_and(|id| id == bot_id)
            })
        })
}

impl Directory {
    pub(crate) fn new(app_id: &str) -> Self {
        Directory {
            app_id: app_id.to_owned(),
            users: HashMap::new(),
            teams: HashMap::new(),
            conversations: HashMap::new(),
            next_seq: 0,
        }
    }

    pub(crate) fn bot_id(&self) -> String {
        format!("28:{}", self.app_id)
    }

    pub(crate) fn user_id(&self, user: &TeamsUser) -> String {
        user_id(&self.app_id, &user.tenant_id, &user.aad_object_id)
    }

    pub(crate) fn personal_conversation_id(&self, user: &TeamsUser) -> String {
        personal_conversation_id(&self.app_id, &user.tenant_id, &user.aad_object_id)
    }

    /// Records a user (keeping the latest name).
    pub(crate) fn register_user(&mut self, user: &TeamsUser) {
        let key = (
            user.tenant_id.to_ascii_lowercase(),
            user.aad_object_id.to_ascii_lowercase(),
        );
        self.users.insert(key, user.clone());
    }

    /// Makes sure a conversation exists (without touching its roster if it does).
    fn ensure_conversation(
        &mut self,
        id: &str,
        tenant_id: &str,
        kind: ConversationKind,
        bot_member: bool,
    ) -> &mut Conversation {
        let seq = &mut self.next_seq;
        self.conversations.entry(id.to_owned()).or_insert_with(|| {
            *seq += 1;
            Conversation {
                id: id.to_owned(),
                tenant_id: tenant_id.to_owned(),
                kind,
                bot_member,
                seq: *seq,
                activities: Vec::new(),
                inbound: Vec::new(),
            }
        })
    }

    /// Registers the user and their personal conversation (the bot not yet in it unless it
    /// already was): Teams knows a user's chat before any install event is delivered.
    pub(crate) fn register_personal(&mut self, user: &TeamsUser) -> String {
        self.register_user(user);
        let id = self.personal_conversation_id(user);
        self.ensure_conversation(
            &id,
            &user.tenant_id,
            ConversationKind::Personal {
                aad_object_id: user.aad_object_id.clone(),
            },
            false,
        );
        id
    }

    /// Registers a team and its General channel.
    pub(crate) fn register_team(&mut self, team: &TeamsTeam) -> String {
        let id = team_id(&team.tenant_id, &team.aad_group_id);
        self.teams.entry(id.clone()).or_insert_with(|| TeamEntry {
            bot_installed: false,
            members: HashSet::new(),
        });
        self.ensure_conversation(
            &id,
            &team.tenant_id,
            ConversationKind::Channel {
                team_id: id.clone(),
            },
            false,
        );
        id
    }

    /// Makes a user a member of a registered team.
    pub(crate) fn add_team_member(&mut self, team: &TeamsTeam, user: &TeamsUser) {
        self.register_user(user);
        if let Some(entry) = self
            .teams
            .get_mut(&team_id(&team.tenant_id, &team.aad_group_id))
        {
            entry
                .members
                .insert(user.aad_object_id.to_ascii_lowercase());
        }
    }

    /// Takes note of an activity "Teams" sends to the bot: whoever and whatever it mentions
    /// becomes known, and install/uninstall events change the bot's membership. This happens
    /// whatever the bot answers — Teams' own state does not depend on the bot.
    pub(crate) fn apply_inbound(&mut self, activity: &Value) {
        let Some(conversation_id) = str_at(activity, &["conversation", "id"]) else {
            return;
        };
        let Some(tenant_id) = str_at(activity, &["conversation", "tenantId"])
            .or_else(|| str_at(activity, &["channelData", "tenant", "id"]))
        else {
            return;
        };
        let bot_id = str_at(activity, &["recipient", "id"])
            .map(str::to_owned)
            .unwrap_or_else(|| self.bot_id());
        let user = str_at(activity, &["from", "aadObjectId"]).map(|aad| {
            TeamsUser::new(
                tenant_id,
                aad,
                str_at(activity, &["from", "name"]).unwrap_or(""),
            )
        });
        if let Some(user) = &user {
            let known_name = self
                .users
                .get(&(
                    tenant_id.to_ascii_lowercase(),
                    user.aad_object_id.to_ascii_lowercase(),
                ))
                .map(|known| known.name.clone());
            // Install events carry no name; keep the one we had.
            let mut user = user.clone();
            if user.name.is_empty() {
                user.name = known_name.unwrap_or_default();
            }
            self.register_user(&user);
        }

        let membership = match (str_at(activity, &["type"]), str_at(activity, &["action"])) {
            (Some("installationUpdate"), Some("add" | "add-upgrade")) => Some(true),
            (Some("installationUpdate"), Some("remove" | "remove-upgrade")) => Some(false),
            (Some("conversationUpdate"), _) if lists_bot(activity, "membersAdded", &bot_id) => {
                Some(true)
            }
            (Some("conversationUpdate"), _) if lists_bot(activity, "membersRemoved", &bot_id) => {
                Some(false)
            }
            _ => None,
        };

        let conversation_type = str_at(activity, &["conversation", "conversationType"]);
        match conversation_type {
            Some("channel") => {
                let team = str_at(activity, &["channelData", "team", "id"])
                    .unwrap_or(conversation_id)
                    .to_owned();
                let entry = self.teams.entry(team.clone()).or_insert_with(|| TeamEntry {
                    bot_installed: false,
                    members: HashSet::new(),
                });
                if let Some(user) = &user {
                    entry
                        .members
                        .insert(user.aad_object_id.to_ascii_lowercase());
                }
                if let Some(installed) = membership {
                    entry.bot_installed = installed;
                }
                let installed = entry.bot_installed;
                let (channel_id, thread) = match conversation_id.split_once(";messageid=") {
                    Some((channel, _)) => (channel.to_owned(), true),
                    None => (conversation_id.to_owned(), false),
                };
                for channel in [team.as_str(), channel_id.as_str()] {
                    self.ensure_conversation(
                        channel,
                        tenant_id,
                        ConversationKind::Channel {
                            team_id: team.clone(),
                        },
                        installed,
                    );
                }
                if thread {
                    self.ensure_conversation(
                        conversation_id,
                        tenant_id,
                        ConversationKind::Thread {
                            channel_id: channel_id.clone(),
                        },
                        installed,
                    );
                }
                // Installing in a team puts the bot in every channel of it.
                for conversation in self.conversations.values_mut() {
                    if matches!(&conversation.kind, ConversationKind::Channel { team_id } if *team_id == team)
                    {
                        conversation.bot_member = installed;
                    }
                }
            }
            other => {
                let kind = match (other, &user) {
                    (Some("personal") | None, Some(user)) => ConversationKind::Personal {
                        aad_object_id: user.aad_object_id.clone(),
                    },
                    _ => ConversationKind::Group,
                };
                let conversation =
                    self.ensure_conversation(conversation_id, tenant_id, kind, false);
                if let Some(member) = membership {
                    conversation.bot_member = member;
                }
            }
        }
    }

    /// The conversation a Bot Connector call addresses, made known if it is a thread of a
    /// known channel (the bot may reply under any channel post).
    pub(crate) fn conversation_mut(
        &mut self,
        id: &str,
    ) -> Result<&mut Conversation, ConnectorError> {
        if !self.conversations.contains_key(id) {
            let Some((channel, _)) = id.split_once(";messageid=") else {
                return Err(ConnectorError::ConversationNotFound(id.to_owned()));
            };
            let Some(parent) = self.conversations.get(channel) else {
                return Err(ConnectorError::ConversationNotFound(id.to_owned()));
            };
            let tenant = parent.tenant_id.clone();
            self.ensure_conversation(
                id,
                &tenant,
                ConversationKind::Thread {
                    channel_id: channel.to_owned(),
                },
                false,
            );
        }
        let in_roster = self.bot_in_roster(id);
        let conversation = self
            .conversations
            .get_mut(id)
            .ok_or_else(|| ConnectorError::ConversationNotFound(id.to_owned()))?;
        conversation.bot_member = in_roster;
        Ok(conversation)
    }

    /// Whether the bot may write to the conversation (threads follow their channel).
    fn bot_in_roster(&self, id: &str) -> bool {
        match self.conversations.get(id) {
            Some(Conversation {
                kind: ConversationKind::Thread { channel_id },
                ..
            }) => self
                .conversations
                .get(channel_id)
                .is_some_and(|channel| channel.bot_member),
            Some(conversation) => conversation.bot_member,
            None => false,
        }
    }

    /// The tenant a conversation belongs to, if known.
    pub(crate) fn tenant_of(&self, id: &str) -> Option<String> {
        if let Some(conversation) = self.conversations.get(id) {
            return Some(conversation.tenant_id.clone());
        }
        let (channel, _) = id.split_once(";messageid=")?;
        self.conversations
            .get(channel)
            .map(|conversation| conversation.tenant_id.clone())
    }

    /// Finds a user of `tenant_id` by object id or by `29:` id.
    pub(crate) fn find_user(&self, tenant_id: &str, member_id: &str) -> Option<TeamsUser> {
        let tenant = tenant_id.to_ascii_lowercase();
        if member_id.starts_with("29:") {
            return self
                .users
                .iter()
                .filter(|((user_tenant, _), _)| *user_tenant == tenant)
                .map(|(_, user)| user)
                .find(|user| self.user_id(user) == member_id)
                .cloned();
        }
        self.users
            .get(&(tenant, member_id.to_ascii_lowercase()))
            .cloned()
    }

    /// Creates (or finds) the personal conversation of the bot with a user, as
    /// `POST v3/conversations` does. The bot may open it when the user installed the app, or
    /// when the user is in a team the bot is installed in (Teams' documented proactive path).
    pub(crate) fn create_personal(
        &mut self,
        tenant_id: &str,
        member_id: &str,
    ) -> Result<String, ConnectorError> {
        let user =
            self.find_user(tenant_id, member_id)
                .ok_or_else(|| ConnectorError::UserNotFound {
                    member: member_id.to_owned(),
                    tenant: tenant_id.to_owned(),
                })?;
        let id = self.personal_conversation_id(&user);
        let installed = self
            .conversations
            .get(&id)
            .is_some_and(|conversation| conversation.bot_member);
        let aad = user.aad_object_id.to_ascii_lowercase();
        let via_team = self
            .teams
            .values()
            .any(|team| team.bot_installed && team.members.contains(&aad));
        if !installed && !via_team {
            return Err(ConnectorError::BotNotInConversationRoster);
        }
        let conversation = self.ensure_conversation(
            &id,
            &user.tenant_id,
            ConversationKind::Personal {
                aad_object_id: user.aad_object_id.clone(),
            },
            true,
        );
        conversation.bot_member = true;
        Ok(id)
    }

    /// Checks that the bot may start a thread in `channel_id`; returns the channel's tenant.
    pub(crate) fn check_channel(&mut self, channel_id: &str) -> Result<String, ConnectorError> {
        let conversation = self.conversation_mut(channel_id)?;
        if !matches!(conversation.kind, ConversationKind::Channel { .. }) {
            return Err(ConnectorError::BadArgument(format!(
                "{channel_id} is not a channel"
            )));
        }
        if !conversation.bot_member {
            return Err(ConnectorError::BotNotInConversationRoster);
        }
        Ok(conversation.tenant_id.clone())
    }

    /// Registers a thread started by the bot under a channel post.
    pub(crate) fn create_thread(&mut self, channel_id: &str, thread_id: &str) -> &mut Conversation {
        let tenant = self.tenant_of(channel_id).unwrap_or_default();
        self.ensure_conversation(
            thread_id,
            &tenant,
            ConversationKind::Thread {
                channel_id: channel_id.to_owned(),
            },
            true,
        )
    }

    /// Whether the user's personal chat with the bot is known (the user acted in Teams).
    pub(crate) fn knows_personal(&self, user: &TeamsUser) -> bool {
        self.conversations
            .contains_key(&self.personal_conversation_id(user))
    }

    /// A message the bot sent to the user's personal chat, unless deleted.
    pub(crate) fn personal_activity_mut(
        &mut self,
        user: &TeamsUser,
        activity_id: &str,
    ) -> Option<&mut ReceivedActivity> {
        let id = self.personal_conversation_id(user);
        self.conversations
            .get_mut(&id)?
            .activities
            .iter_mut()
            .find(|stored| stored.id == activity_id && !stored.deleted)
    }

    pub(crate) fn activities(&self, conversation_id: &str) -> Vec<ReceivedActivity> {
        self.conversations
            .get(conversation_id)
            .map(|conversation| conversation.activities.clone())
            .unwrap_or_default()
    }

    /// Records what "Teams" posted to the bot in a known conversation.
    pub(crate) fn record_inbound(&mut self, conversation_id: &str, inbound: InboundActivity) {
        if let Some(conversation) = self.conversations.get_mut(conversation_id) {
            conversation.inbound.push(inbound);
        }
    }

    pub(crate) fn inbound(&self, conversation_id: &str) -> Vec<InboundActivity> {
        self.conversations
            .get(conversation_id)
            .map(|conversation| conversation.inbound.clone())
            .unwrap_or_default()
    }

    pub(crate) fn summaries(&self) -> Vec<ConversationSummary> {
        let mut conversations: Vec<&Conversation> = self.conversations.values().collect();
        conversations.sort_by_key(|conversation| conversation.seq);
        conversations
            .into_iter()
            .map(|conversation| ConversationSummary {
                id: conversation.id.clone(),
                tenant_id: conversation.tenant_id.clone(),
                kind: conversation.kind.label(),
                bot_installed: self.bot_in_roster(&conversation.id),
                user: match &conversation.kind {
                    ConversationKind::Personal { aad_object_id } => {
                        self.find_user(&conversation.tenant_id, aad_object_id)
                    }
                    _ => None,
                },
                activity_count: conversation.activities.len(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_are_stable_and_shaped_like_teams_ids() {
        let a = personal_conversation_id("app", "T", "U");
        assert_eq!(a, personal_conversation_id("app", "t", "u"));
        assert!(a.starts_with("a:1") && a.len() == 133, "{a}");
        assert_ne!(a, personal_conversation_id("other-app", "t", "u"));
        let id = user_id("app", "t", "u");
        assert!(id.starts_with("29:1") && id.len() == 89, "{id}");
        let team = team_id("t", "g");
        assert!(
            team.starts_with("19:") && team.ends_with("@thread.tacv2"),
            "{team}"
        );
    }

    #[test]
    fn install_and_uninstall_events_change_the_roster() {
        let mut directory = Directory::new("app");
        let user = TeamsUser::new("t", "u", "Ann");
        let id = directory.register_personal(&user);
        assert!(!directory.conversation_mut(&id).unwrap().bot_member);
        let event = |action: &str| {
            json!({"type": "installationUpdate", "action": action,
                   "recipient": {"id": "28:app"},
                   "from": {"id": "29:x", "aadObjectId": "u"},
                   "conversation": {"id": id, "conversationType": "personal", "tenantId": "t"}})
        };
        directory.apply_inbound(&event("add"));
        assert!(directory.conversation_mut(&id).unwrap().bot_member);
        assert_eq!(directory.find_user("t", "u").unwrap().name, "Ann");
        directory.apply_inbound(&event("remove"));
        assert!(!directory.conversation_mut(&id).unwrap().bot_member);
        assert!(matches!(
            directory.create_personal("t", "u"),
            Err(ConnectorError::BotNotInConversationRoster)
        ));
        assert!(matches!(
            directory.create_personal("t", "nobody"),
            Err(ConnectorError::UserNotFound { .. })
        ));
    }
}

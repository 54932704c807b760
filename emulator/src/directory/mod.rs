//! What "Teams" knows: users, teams, conversations, and the activities the bot sent into them.
//!
//! Ids are derived deterministically (see `ids`), so a test can compute a conversation id
//! before the user installs, and a reinstall lands in the same conversation. Users generated
//! by the thousand (see `population`) are known without being stored: a lookup that misses
//! the stored users tries the generated sets.
//!
//! - `rosters`: teams, their members and generated rosters, and tenants' generated users;
//! - `tenants`: what Graph serves: tenants' directories (users, groups), app catalogs,
//!   permissions, and how each user came to have the app;
//! - `kept`: the activities kept per conversation (bounded) and the exact counts; `stored`:
//!   the compact form they are kept in.

mod kept;
mod rosters;
mod stored;
mod tenants;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use crate::error::ConnectorError;
use crate::ids::{self, UserKey};
use crate::retention::{Kept, Limits, Retention};

pub(crate) use kept::ConversationFilter;
pub use kept::ReceivedCounts;
pub(crate) use rosters::{Roster, RosterMember};
pub(crate) use stored::StoredActivity;
use stored::StoredInbound;
pub(crate) use tenants::{
    APP_NAME, Entry, GraphInstall, InstalledApp, Listing, open_installation_id,
};
pub use tenants::{
    AppInstallation, CatalogApp, DirectoryGroup, DirectoryUser, DistributionMethod, GeneratedRange,
    GraphPermission, GroupMember, InstallSource, UserType,
};

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
    pub(crate) id: Arc<str>,
    pub(crate) tenant_id: String,
    pub(crate) kind: ConversationKind,
    /// Whether the bot is in the roster (threads defer to their channel).
    pub(crate) bot_member: bool,
    /// Creation order, for listings.
    pub(crate) seq: u64,
    /// What the bot sent here: the last few (see `retention`).
    pub(crate) activities: Kept<StoredActivity>,
    /// What "Teams" posted to the bot here, for transcripts: the last few.
    inbound: Kept<StoredInbound>,
    /// Every activity the bot sent here that Teams accepted, kept or not.
    pub(crate) received: u64,
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

/// Tenants, users, teams and conversations.
#[derive(Debug)]
pub(crate) struct Directory {
    app_id: String,
    /// The users seen or added one by one (generated ones are computed, see `rosters`).
    users: HashMap<UserKey, TeamsUser>,
    /// Keyed by team id (`19:…@thread.tacv2`).
    teams: HashMap<String, rosters::TeamEntry>,
    /// Generated sets of users, by the object-id prefix they share.
    generated: HashMap<String, rosters::Generated>,
    conversations: HashMap<Arc<str>, Conversation>,
    next_seq: u64,
    retention: Retention,
    /// Tenants' directories as Graph serves them, by lower-case tenant id.
    tenants: HashMap<String, tenants::TenantDirectory>,
    /// How users came to have the app (see `tenants`).
    installs: HashMap<UserKey, tenants::InstallRecord>,
    /// The object-id prefixes of each tenant's generated sets (by lower-case tenant id), in
    /// the order they were made.
    sets_by_tenant: HashMap<String, Vec<String>>,
    /// The bot's app's manifest id.
    manifest_id: String,
    /// Whether every tenant's catalog has the bot's app from the start.
    app_in_every_catalog: bool,
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
    pub(crate) fn new(app_id: &str, limits: Limits) -> Self {
        Directory {
            app_id: app_id.to_owned(),
            users: HashMap::new(),
            teams: HashMap::new(),
            generated: HashMap::new(),
            conversations: HashMap::new(),
            next_seq: 0,
            retention: Retention::new(limits),
            tenants: HashMap::new(),
            installs: HashMap::new(),
            sets_by_tenant: HashMap::new(),
            manifest_id: app_id.to_owned(),
            app_in_every_catalog: false,
        }
    }

    /// The id Teams stores a conversation under (see `ids::canonical_conversation_id`).
    pub(crate) fn canonical_conversation_id<'a>(&self, id: &'a str) -> Cow<'a, str> {
        ids::canonical_conversation_id(&self.app_id, id)
    }

    pub(crate) fn bot_id(&self) -> String {
        format!("28:{}", self.app_id)
    }

    pub(crate) fn user_id(&self, user: &TeamsUser) -> String {
        ids::user_id(&self.app_id, &user.tenant_id, &user.aad_object_id)
    }

    pub(crate) fn personal_conversation_id(&self, user: &TeamsUser) -> String {
        ids::personal_conversation_id(&self.app_id, &user.tenant_id, &user.aad_object_id)
    }

    /// Records a user (keeping the latest name).
    pub(crate) fn register_user(&mut self, user: &TeamsUser) {
        let key = UserKey::new(&user.tenant_id, &user.aad_object_id);
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
        self.conversations
            .entry(Arc::from(id))
            .or_insert_with_key(|key| {
                *seq += 1;
                Conversation {
                    id: key.clone(),
                    tenant_id: tenant_id.to_owned(),
                    kind,
                    bot_member,
                    seq: *seq,
                    activities: Kept::default(),
                    inbound: Kept::default(),
                    received: 0,
                }
            })
    }

    /// Registers the user and their personal conversation: Teams knows a user's chat before
    /// any install event is delivered. The bot is in it if it already was, or if the user is
    /// one of a tenant's generated users, who all have the app.
    pub(crate) fn register_personal(&mut self, user: &TeamsUser) -> String {
        self.register_user(user);
        let id = self.personal_conversation_id(user);
        let installed =
            self.installed_by_default(&UserKey::new(&user.tenant_id, &user.aad_object_id));
        self.ensure_conversation(
            &id,
            &user.tenant_id,
            ConversationKind::Personal {
                aad_object_id: user.aad_object_id.clone(),
            },
            installed,
        );
        id
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
            // Install events carry no name; keep the one we had.
            let mut user = user.clone();
            if user.name.is_empty() {
                let key = UserKey::new(tenant_id, &user.aad_object_id);
                user.name = self
                    .user_by_key(&key)
                    .map(|known| known.name)
                    .unwrap_or_default();
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
                let entry = self.team_entry(&team, tenant_id);
                if let Some(user) = &user {
                    entry.add_member(&user.aad_object_id);
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
                let installed = match &kind {
                    ConversationKind::Personal { aad_object_id } => {
                        self.installed_by_default(&UserKey::new(tenant_id, aad_object_id))
                    }
                    _ => false,
                };
                let personal = match &kind {
                    ConversationKind::Personal { aad_object_id } => {
                        Some(UserKey::new(tenant_id, aad_object_id))
                    }
                    _ => None,
                };
                let conversation =
                    self.ensure_conversation(conversation_id, tenant_id, kind, installed);
                if let Some(member) = membership {
                    conversation.bot_member = member;
                    if let Some(key) = personal {
                        self.note_install(key, member);
                    }
                }
            }
        }
    }

    /// The conversation a Bot Connector call addresses. Made known if it is a thread of a
    /// known channel (the bot may reply under any channel post), or the personal chat of a
    /// generated user who has the app (their chats exist without having been stored).
    pub(crate) fn conversation_mut(
        &mut self,
        id: &str,
    ) -> Result<&mut Conversation, ConnectorError> {
        if !self.conversations.contains_key(id) {
            self.discover(id)
                .ok_or_else(|| ConnectorError::ConversationNotFound(id.to_owned()))?;
        }
        let in_roster = self.bot_in_roster(id);
        let conversation = self
            .conversations
            .get_mut(id)
            .ok_or_else(|| ConnectorError::ConversationNotFound(id.to_owned()))?;
        conversation.bot_member = in_roster;
        Ok(conversation)
    }

    /// Stores a conversation Teams has without the emulator having stored it yet.
    fn discover(&mut self, id: &str) -> Option<()> {
        if let Some((channel, _)) = id.split_once(";messageid=") {
            let tenant = self.conversations.get(channel)?.tenant_id.clone();
            self.ensure_conversation(
                id,
                &tenant,
                ConversationKind::Thread {
                    channel_id: channel.to_owned(),
                },
                false,
            );
            return Some(());
        }
        let key = ids::open_personal_conversation_id(&self.app_id, id)?;
        if !self.installed_by_default(&key) {
            return None;
        }
        let user = self.user_by_key(&key)?;
        self.ensure_conversation(
            id,
            &user.tenant_id,
            ConversationKind::Personal {
                aad_object_id: user.aad_object_id,
            },
            true,
        );
        Some(())
    }

    /// Whether the bot may write to the conversation (threads follow their channel).
    fn bot_in_roster(&self, id: &str) -> bool {
        match self.conversations.get(id) {
            Some(Conversation {
                kind: ConversationKind::Thread { channel_id },
                ..
            }) => self
                .conversations
                .get(channel_id.as_str())
                .is_some_and(|channel| channel.bot_member),
            Some(conversation) => conversation.bot_member,
            None => false,
        }
    }

    /// The tenant a conversation belongs to, if known (a personal chat's id tells it).
    pub(crate) fn tenant_of(&self, id: &str) -> Option<String> {
        if let Some(conversation) = self.conversations.get(id) {
            return Some(conversation.tenant_id.clone());
        }
        if let Some((channel, _)) = id.split_once(";messageid=") {
            return self
                .conversations
                .get(channel)
                .map(|conversation| conversation.tenant_id.clone());
        }
        ids::open_personal_conversation_id(&self.app_id, id).map(|key| key.tenant_id)
    }

    /// The user with this key: stored, generated, or added to their tenant's directory.
    fn user_by_key(&self, key: &UserKey) -> Option<TeamsUser> {
        self.users
            .get(key)
            .cloned()
            .or_else(|| self.generated_user(key))
            .or_else(|| {
                self.stored_directory_user(key)
                    .map(DirectoryUser::teams_user)
            })
    }

    /// Finds a user of `tenant_id` by object id or by `29:` id.
    pub(crate) fn find_user(&self, tenant_id: &str, member_id: &str) -> Option<TeamsUser> {
        let key = if member_id.starts_with("29:") {
            let key = ids::open_user_id(&self.app_id, member_id)?;
            if !key.tenant_id.eq_ignore_ascii_case(tenant_id) {
                return None;
            }
            key
        } else {
            UserKey::new(tenant_id, member_id)
        };
        self.user_by_key(&key)
    }

    /// Creates (or finds) the personal conversation of the bot with a user, as
    /// `POST v3/conversations` does. The bot may open it when the user installed the app, or
    /// when the user is in a team the bot is installed in (Teams' documented proactive path).
    /// Anyone else — including an id Teams does not know, which Teams cannot tell apart from
    /// a user out of the bot's reach — is refused with 403 `BotNotInConversationRoster`.
    pub(crate) fn create_personal(
        &mut self,
        tenant_id: &str,
        member_id: &str,
    ) -> Result<String, ConnectorError> {
        let user = self
            .find_user(tenant_id, member_id)
            .ok_or(ConnectorError::BotNotInConversationRoster)?;
        let id = self.personal_conversation_id(&user);
        let key = UserKey::new(&user.tenant_id, &user.aad_object_id);
        let installed = match self.conversations.get(id.as_str()) {
            Some(conversation) => conversation.bot_member,
            None => self.installed_by_default(&key),
        };
        if !installed && !self.in_team_with_bot(&key) {
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
            .contains_key(self.personal_conversation_id(user).as_str())
    }

    /// A message the bot sent to the user's personal chat, unless deleted.
    pub(crate) fn personal_activity_mut(
        &mut self,
        user: &TeamsUser,
        activity_id: &str,
    ) -> Option<&mut StoredActivity> {
        let id = self.personal_conversation_id(user);
        self.conversations
            .get_mut(id.as_str())?
            .activities
            .iter_mut()
            .find(|stored| stored.id == activity_id && !stored.deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn directory() -> Directory {
        Directory::new(
            "app",
            Limits {
                per_conversation: 100,
                total: 1000,
            },
        )
    }

    #[test]
    fn install_and_uninstall_events_change_the_roster() {
        let mut directory = directory();
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
        // Someone Teams never heard of gets the same answer: Teams does not say who exists.
        assert!(matches!(
            directory.create_personal("t", "nobody"),
            Err(ConnectorError::BotNotInConversationRoster)
        ));
    }

    #[test]
    fn users_are_found_by_object_id_or_by_their_29_id_in_their_tenant_only() {
        let mut directory = directory();
        let user = TeamsUser::new("T", "U", "Ann");
        directory.register_user(&user);
        let id = directory.user_id(&user);
        assert_eq!(directory.find_user("t", &id), Some(user.clone()));
        assert_eq!(directory.find_user("t", "u"), Some(user));
        assert_eq!(directory.find_user("other", &id), None);
        assert_eq!(directory.find_user("t", "29:1unknown"), None);
    }
}

//! Conversation references: what Herald knows about each Teams conversation it has heard from.
//!
//! Keys:
//! - `{ns}:conv:{conversationId}`: a hash, the reference itself plus install bookkeeping;
//! - `{ns}:user:{tenantId}:{aadObjectId}`: the user's personal conversation id;
//! - `{ns}:tenant:{tenantId}`: the tenant's most recent serviceUrl (Microsoft's multi-geo
//!   guidance: use the latest one seen, not a global constant).

mod kind;

use std::sync::LazyLock;

use redis::Script;
use std::collections::HashMap;

use redis::AsyncCommands;
use time::OffsetDateTime;

use super::{Redis, StoreError, parse_rfc3339, rfc3339};

pub use self::kind::ConversationKind;

/// A stored conversation reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationRef {
    pub conversation_id: String,
    pub conversation_type: Option<ConversationKind>,
    pub service_url: String,
    pub tenant_id: Option<String>,
    /// The user, for personal conversations.
    pub user_aad_object_id: Option<String>,
    /// The user's `29:` id, for personal conversations.
    pub user_id: Option<String>,
    /// The bot's `28:` id.
    pub bot_id: Option<String>,
    pub team_id: Option<String>,
    pub channel_id: Option<String>,
    pub last_seen: OffsetDateTime,
    /// Set when the app was uninstalled, the bot removed or the team deleted (or, later, when
    /// Teams answered that the conversation is gone); cleared by the next install or message.
    pub removed_reason: Option<String>,
}

impl ConversationRef {
    pub fn is_removed(&self) -> bool {
        self.removed_reason.is_some()
    }

    pub fn is_personal(&self) -> bool {
        self.conversation_type == Some(ConversationKind::Personal)
    }

    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            ("conversationId", self.conversation_id.clone()),
            ("serviceUrl", self.service_url.clone()),
            ("lastSeen", rfc3339(self.last_seen)),
        ];
        // Only what this activity carried is written: a later activity lacking, say, the
        // team id must not erase it.
        let optional = [
            (
                "conversationType",
                self.conversation_type
                    .as_ref()
                    .map(ConversationKind::as_str),
            ),
            ("tenantId", self.tenant_id.as_deref()),
            ("userAadObjectId", self.user_aad_object_id.as_deref()),
            ("userId", self.user_id.as_deref()),
            ("botId", self.bot_id.as_deref()),
            ("teamId", self.team_id.as_deref()),
            ("channelId", self.channel_id.as_deref()),
        ];
        fields.extend(
            optional
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k, v.to_owned()))),
        );
        fields
    }

    fn from_hash(key: &str, mut h: HashMap<String, String>) -> Result<Self, StoreError> {
        let malformed = |reason: &str| StoreError::Malformed {
            key: key.to_owned(),
            reason: reason.to_owned(),
        };
        Ok(Self {
            conversation_id: h
                .remove("conversationId")
                .ok_or_else(|| malformed("no conversationId"))?,
            service_url: h
                .remove("serviceUrl")
                .ok_or_else(|| malformed("no serviceUrl"))?,
            last_seen: h
                .get("lastSeen")
                .and_then(|s| parse_rfc3339(s))
                .ok_or_else(|| malformed("no lastSeen"))?,
            conversation_type: h.remove("conversationType").map(ConversationKind::from),
            tenant_id: h.remove("tenantId"),
            user_aad_object_id: h.remove("userAadObjectId"),
            user_id: h.remove("userId"),
            bot_id: h.remove("botId"),
            team_id: h.remove("teamId"),
            channel_id: h.remove("channelId"),
            removed_reason: match h.get("state").map(String::as_str) {
                Some("removed") => Some(
                    h.remove("removedReason")
                        .unwrap_or_else(|| "removed".into()),
                ),
                _ => None,
            },
        })
    }
}

/// What a send needs to know about a stored conversation: the few fields the dispatcher reads
/// for every job, rather than the whole reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationAddress {
    pub conversation_id: String,
    pub service_url: String,
    pub tenant_id: Option<String>,
    /// Why the conversation was removed, if it was (see [`ConversationRef::removed_reason`]).
    pub removed_reason: Option<String>,
}

impl ConversationAddress {
    /// From the conversation id and the values of [`ADDRESS_FIELDS`] (`''` or absent: unset).
    fn from_fields(conversation_id: String, fields: Vec<Option<String>>) -> Option<Self> {
        let mut fields = fields
            .into_iter()
            .map(|f| f.filter(|value| !value.is_empty()));
        let mut next = || fields.next().flatten();
        let (service_url, tenant_id, state, reason) = (next()?, next(), next(), next());
        Some(Self {
            conversation_id,
            service_url,
            tenant_id,
            removed_reason: (state.as_deref() == Some("removed"))
                .then(|| reason.unwrap_or_else(|| "removed".into())),
        })
    }
}

/// What an inbound activity does to the stored reference beyond refreshing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActivityEffect {
    /// Any other activity: the reference is refreshed (and revived if it was removed).
    Refresh,
    /// The app was installed / the bot added to this personal chat.
    Install,
    /// Uninstalled, bot removed, team deleted: the reference is kept but marked removed.
    Remove { reason: String },
}

/// One inbound activity's write.
#[derive(Debug, Clone)]
pub struct RecordedActivity {
    pub reference: ConversationRef,
    pub effect: ActivityEffect,
}

/// Where an install stands after an install activity was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstallState {
    /// Counts installs of this conversation; jobs queued for an install are named by it, so
    /// the two activities Teams sends for one install (and redeliveries) share their jobs.
    pub generation: u64,
    /// True for the activity that turned "not installed" into "installed".
    pub new_install: bool,
}

/// Upserts the reference and applies the effect atomically, on the one conversation key, in
/// three commands whatever the reference holds.
static RECORD_ACTIVITY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local key = KEYS[1]
local effect = ARGV[1]
local found = redis.call('HMGET', key, 'installGeneration', 'installed')
local generation = tonumber(found[1] or '0')
local fields = {unpack(ARGV, 3)}
local function add(...) for _, v in ipairs({...}) do fields[#fields + 1] = v end end
if effect == 'remove' then
  add('state', 'removed', 'removedReason', ARGV[2], 'installed', '0')
  redis.call('HSET', key, unpack(fields))
  return {generation, 0}
end
add('state', 'active')
local new_install = 0
if effect == 'install' and found[2] ~= '1' then
  generation = generation + 1
  new_install = 1
  add('installed', '1', 'installGeneration', generation)
end
redis.call('HSET', key, unpack(fields))
redis.call('HDEL', key, 'removedReason')
return {generation, new_install}
"#,
    )
});

/// The fields a send needs, in [`ConversationAddress`] order.
const ADDRESS_FIELDS: [&str; 4] = ["serviceUrl", "tenantId", "state", "removedReason"];

/// KEYS: the user's index. ARGV: the prefix of reference keys, then [`ADDRESS_FIELDS`].
/// Answers the conversation id and those fields ('' for a missing one), or nothing if the user
/// has no personal conversation stored. Reads a key it is not given, so it runs only on a
/// single Redis server.
static PERSONAL_CONVERSATION: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local id = redis.call('GET', KEYS[1])
if not id then return {} end
local found = redis.call('HMGET', ARGV[1] .. id, unpack(ARGV, 2))
if not found[1] then return {} end
local out = {id}
for i = 1, #found do out[i + 1] = found[i] or '' end
return out
"#,
    )
});

/// Marks a reference removed without touching anything else (a "gone" answer from Teams).
/// Moves a stored reference to another serviceUrl; a missing one stays missing (HSET alone
/// would create a stub).
static MOVE_IF_STORED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'serviceUrl', ARGV[1]) end return 0",
    )
});

/// Answers {} if the reference is not stored, else its type, tenant and user ('' for unset).
static MARK_REMOVED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
redis.call('HSET', KEYS[1], 'state', 'removed', 'removedReason', ARGV[1], 'installed', '0')
local f = redis.call('HMGET', KEYS[1], 'conversationType', 'tenantId', 'userAadObjectId')
return {f[1] or '', f[2] or '', f[3] or ''}
"#,
    )
});

/// How long a team member's roster id is kept after the roster last named them.
pub const MEMBER_ID_TTL: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

#[derive(Debug, Clone)]
pub struct ConversationStore {
    redis: Redis,
}

impl ConversationStore {
    pub fn new(redis: Redis) -> Self {
        Self { redis }
    }

    /// Records an inbound activity in one round trip: the reference (with its effect), the
    /// user's personal-conversation index, the tenant's users and its latest serviceUrl.
    pub async fn record(&self, activity: &RecordedActivity) -> Result<InstallState, StoreError> {
        let reference = &activity.reference;
        let (effect, reason) = match &activity.effect {
            ActivityEffect::Refresh => ("refresh", ""),
            ActivityEffect::Install => ("install", ""),
            ActivityEffect::Remove { reason } => ("remove", reason.as_str()),
        };
        let mut eval = RECORD_ACTIVITY.prepare_invoke();
        eval.key(self.redis.key("conv", &reference.conversation_id))
            .arg(effect)
            .arg(reason);
        for (field, value) in reference.fields() {
            eval.arg(field).arg(value);
        }
        // Three keys, three commands sent at once: the multiplexed connection pipelines them
        // (one round trip), and on a cluster each goes to its own node.
        let mut user_index = None;
        let mut tenant_users = None;
        let mut tenant_url = None;
        if let Some(tenant) = &reference.tenant_id {
            if let (true, Some(user)) = (reference.is_personal(), &reference.user_aad_object_id) {
                let mut set = redis::cmd("SET");
                set.arg(self.user_key(tenant, user))
                    .arg(&reference.conversation_id);
                user_index = Some(set);
                // The tenant's users with a live personal chat (a tenant broadcast's
                // audience): in while installed, out once removed.
                let removed = matches!(activity.effect, ActivityEffect::Remove { .. });
                let mut member = redis::cmd(if removed { "SREM" } else { "SADD" });
                member
                    .arg(self.tenant_users_key(tenant))
                    .arg(user.to_ascii_lowercase());
                tenant_users = Some(member);
            }
            let mut hset = redis::cmd("HSET");
            hset.arg(self.redis.key("tenant", tenant))
                .arg("serviceUrl")
                .arg(&reference.service_url)
                .arg("lastSeen")
                .arg(rfc3339(reference.last_seen));
            tenant_url = Some(hset);
        }
        let optional = |cmd: Option<redis::Cmd>| {
            let mut conn = self.redis.conn();
            async move {
                match cmd {
                    Some(cmd) => cmd.query_async::<()>(&mut conn).await,
                    None => Ok(()),
                }
            }
        };
        let mut conn = self.redis.conn();
        let ((generation, new_install), (), (), ()) = futures_util::future::try_join4(
            eval.invoke_async::<(u64, u8)>(&mut conn),
            optional(user_index),
            optional(tenant_users),
            optional(tenant_url),
        )
        .await?;
        Ok(InstallState {
            generation,
            new_install: new_install == 1,
        })
    }

    pub async fn get(&self, conversation_id: &str) -> Result<Option<ConversationRef>, StoreError> {
        let key = self.redis.key("conv", conversation_id);
        let hash: HashMap<String, String> = self.redis.conn().hgetall(&key).await?;
        if hash.is_empty() {
            return Ok(None);
        }
        ConversationRef::from_hash(&key, hash).map(Some)
    }

    /// Where a stored conversation is, if it is stored: one small read.
    pub async fn address(
        &self,
        conversation_id: &str,
    ) -> Result<Option<ConversationAddress>, StoreError> {
        let fields: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.redis.key("conv", conversation_id))
            .arg(&ADDRESS_FIELDS[..])
            .query_async(&mut self.redis.conn())
            .await?;
        Ok(ConversationAddress::from_fields(
            conversation_id.to_owned(),
            fields,
        ))
    }

    /// Where the user's personal conversation with the bot is, if Herald has heard from it.
    pub async fn personal_conversation(
        &self,
        tenant_id: &str,
        aad_object_id: &str,
    ) -> Result<Option<ConversationAddress>, StoreError> {
        let user_key = self.user_key(tenant_id, aad_object_id);
        if !self.redis.is_cluster() {
            // One round trip: the script follows the index to the reference. (On a cluster
            // the two keys live in different slots, so it takes two.)
            let found: Vec<Option<String>> = PERSONAL_CONVERSATION
                .key(&user_key)
                .arg(self.redis.key("conv", ""))
                .arg(&ADDRESS_FIELDS[..])
                .invoke_async(&mut self.redis.conn())
                .await?;
            let mut found = found.into_iter();
            return Ok(match found.next().flatten() {
                Some(id) => ConversationAddress::from_fields(id, found.collect()),
                None => None,
            });
        }
        let id: Option<String> = self.redis.conn().get(user_key).await?;
        match id {
            Some(id) => self.address(&id).await,
            None => Ok(None),
        }
    }

    /// The serviceUrl of the tenant's most recent activity.
    pub async fn tenant_service_url(&self, tenant_id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .redis
            .conn()
            .hget(self.redis.key("tenant", tenant_id), "serviceUrl")
            .await?)
    }

    /// Moves a tenant (and one of its conversations, if stored) to another serviceUrl: Teams
    /// said the tenant lives on another host.
    pub async fn move_service_url(
        &self,
        tenant_id: &str,
        conversation_id: Option<&str>,
        service_url: &str,
    ) -> Result<(), StoreError> {
        let mut tenant = self.redis.conn();
        let tenant_key = self.redis.key("tenant", tenant_id);
        let moved_tenant = tenant.hset::<_, _, _, ()>(tenant_key, "serviceUrl", service_url);
        let mut conversation = self.redis.conn();
        let moved_conversation = async move {
            match conversation_id {
                // Only a stored reference moves; HSET would create a stub otherwise.
                Some(id) => {
                    MOVE_IF_STORED
                        .key(self.redis.key("conv", id))
                        .arg(service_url)
                        .invoke_async::<i64>(&mut conversation)
                        .await
                }
                None => Ok(0),
            }
        };
        futures_util::future::try_join(moved_tenant, moved_conversation).await?;
        Ok(())
    }

    /// Marks a reference removed (Teams said the conversation is gone); true if it existed.
    pub async fn mark_removed(
        &self,
        conversation_id: &str,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let found: Vec<String> = MARK_REMOVED
            .key(self.redis.key("conv", conversation_id))
            .arg(reason)
            .invoke_async(&mut self.redis.conn())
            .await?;
        let [kind, tenant, user] = found.as_slice() else {
            return Ok(false);
        };
        // A personal chat Teams says is gone takes its user out of the tenant's audience.
        if kind == ConversationKind::Personal.as_str() && !tenant.is_empty() && !user.is_empty() {
            self.redis
                .conn()
                .srem::<_, _, ()>(self.tenant_users_key(tenant), user.to_ascii_lowercase())
                .await?;
        }
        Ok(true)
    }

    /// A page of the tenant's users with a live personal chat (their `aadObjectId`s, in lower
    /// case), from `cursor` ("0" to start); answers the next cursor ("0" at the end) and the
    /// page. A user may appear twice across pages (SSCAN's promise); never missed.
    pub async fn tenant_users(
        &self,
        tenant_id: &str,
        cursor: &str,
        count: usize,
    ) -> Result<(String, Vec<String>), StoreError> {
        let (next, users): (String, Vec<String>) = redis::cmd("SSCAN")
            .arg(self.tenant_users_key(tenant_id))
            .arg(cursor)
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.redis.conn())
            .await?;
        Ok((next, users))
    }

    /// Notes team members' roster ids (`29:…`), by which a 1:1 chat is created with a member
    /// who never installed the app personally (a team install allows it). Kept for
    /// [`MEMBER_ID_TTL`], refreshed whenever the roster is read again.
    pub async fn remember_members(
        &self,
        tenant_id: &str,
        members: &[(String, String)],
    ) -> Result<(), StoreError> {
        if members.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (aad_object_id, member_id) in members {
            pipe.set_ex(
                self.member_key(tenant_id, aad_object_id),
                member_id,
                MEMBER_ID_TTL.as_secs(),
            )
            .ignore();
        }
        pipe.query_async::<()>(&mut self.redis.conn()).await?;
        Ok(())
    }

    /// The user's roster id, if a team roster named them.
    pub async fn member_id(
        &self,
        tenant_id: &str,
        aad_object_id: &str,
    ) -> Result<Option<String>, StoreError> {
        Ok(self
            .redis
            .conn()
            .get(self.member_key(tenant_id, aad_object_id))
            .await?)
    }

    /// Fills the tenants' user indexes from the personal conversations stored before they
    /// existed (a version without broadcasts), once per deployment: every user whose personal
    /// chat is live joins their tenant's. Walks the keyspace with SCAN, a page at a time, so
    /// Redis is never blocked; a second run (another replica, a restart midway) adds nothing
    /// new. On a Redis Cluster (whose keyspace a single SCAN does not cover) it does nothing.
    /// Answers how many users were indexed, or `None` if it had run before.
    pub async fn backfill_tenant_users(&self) -> Result<Option<u64>, StoreError> {
        let done_key = self.redis.key("migrations", "tenant-users");
        if self.redis.is_cluster() || self.redis.conn().exists(&done_key).await? {
            return Ok(None);
        }
        let pattern = self.redis.key("user", "*");
        let prefix = self.redis.key("user", "");
        let mut cursor = 0u64;
        let mut indexed = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1_000)
                .query_async(&mut self.redis.conn())
                .await?;
            for key in keys {
                // `{ns}:user:{tenant}:{aadObjectId}`, the object id in lower case.
                let Some((tenant, user)) =
                    key.strip_prefix(&prefix).and_then(|k| k.split_once(':'))
                else {
                    continue;
                };
                let live = self
                    .personal_conversation(tenant, user)
                    .await?
                    .is_some_and(|address| address.removed_reason.is_none());
                if live {
                    let _: u8 = self
                        .redis
                        .conn()
                        .sadd(self.tenant_users_key(tenant), user)
                        .await?;
                    indexed += 1;
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        self.redis.conn().set::<_, _, ()>(&done_key, "1").await?;
        Ok(Some(indexed))
    }

    fn tenant_users_key(&self, tenant_id: &str) -> String {
        self.redis.key("tenant-users", tenant_id)
    }

    fn member_key(&self, tenant_id: &str, aad_object_id: &str) -> String {
        self.redis.key(
            "member",
            &format!("{tenant_id}:{}", aad_object_id.to_ascii_lowercase()),
        )
    }

    fn user_key(&self, tenant_id: &str, aad_object_id: &str) -> String {
        // Entra object ids are GUIDs; Teams may send them in either case.
        self.redis.key(
            "user",
            &format!("{tenant_id}:{}", aad_object_id.to_ascii_lowercase()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(values: [&str; 4]) -> Vec<Option<String>> {
        values.iter().map(|v| Some((*v).to_owned())).collect()
    }

    #[test]
    fn an_address_is_read_from_its_few_fields() {
        let active = ConversationAddress::from_fields(
            "a:1".into(),
            fields(["https://smba/amer/", "tenant-1", "active", ""]),
        );
        assert_eq!(
            active,
            Some(ConversationAddress {
                conversation_id: "a:1".into(),
                service_url: "https://smba/amer/".into(),
                tenant_id: Some("tenant-1".into()),
                removed_reason: None,
            })
        );
        let removed = ConversationAddress::from_fields(
            "a:1".into(),
            fields(["https://smba/", "", "removed", "uninstalled"]),
        )
        .unwrap();
        assert_eq!(removed.tenant_id, None);
        assert_eq!(removed.removed_reason.as_deref(), Some("uninstalled"));
        // A hash without a serviceUrl is no reference at all.
        assert_eq!(
            ConversationAddress::from_fields("a:1".into(), vec![None, None, None, None]),
            None
        );
    }

    #[test]
    fn the_conversation_type_is_stored_as_teams_wrote_it() {
        for (kind, text) in [
            (ConversationKind::Personal, "personal"),
            (ConversationKind::Channel, "channel"),
            (ConversationKind::Other("meeting".into()), "meeting"),
        ] {
            let reference = ConversationRef {
                conversation_id: "a:1".into(),
                conversation_type: Some(kind.clone()),
                service_url: "https://smba/amer/".into(),
                tenant_id: None,
                user_aad_object_id: None,
                user_id: None,
                bot_id: None,
                team_id: None,
                channel_id: None,
                last_seen: time::macros::datetime!(2026-11-25 09:00 UTC),
                removed_reason: None,
            };
            let hash: HashMap<String, String> = reference
                .fields()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
            assert_eq!(hash["conversationType"], text);
            let read = ConversationRef::from_hash("herald:conv:a:1", hash).unwrap();
            assert_eq!(read, reference);
            assert_eq!(read.is_personal(), kind == ConversationKind::Personal);
        }
    }
}

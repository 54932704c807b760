//! Broadcasts in Redis: the broadcast, its audience, and which recipients' notifications have
//! ended.
//!
//! Three keys per broadcast, sharing the hash tag `{b:<id>}` so that every script below sees
//! all three on one Redis Cluster node:
//! - `{ns}:broadcast:{b:<id>}`, a hash: the definition (its message, times, window), its
//!   status and times, the fan-out's position (`step`, `cursor`, `gatherCursor`) and the
//!   counts by state;
//! - `…:audience`, a sorted set of [`Recipient::member`]s, all scored 0 (a page is the
//!   members after the last one seen, in byte order);
//! - `…:ended`, a hash of notification id → final status: a recipient's end is counted once
//!   however often it is told (a redelivered job tells its end again);
//! - `…:held`, the notification ids of recipients handed out but waiting for their own clock
//!   (a window, a local time, quiet hours): not in flight, so they do not hold back the
//!   fan-out while they wait.
//!
//! Counts always add up: `total` = pending + delivered + failed + cancelled + expired, where
//! recipients never sent (after a cancel or the expiry) are counted `cancelled` or `expired`
//! by one step of the fan-out (or by the cancel itself, before anything was handed out). The broadcast settles (`completed`, or `expired` if some recipient expired, and
//! `completedAt`) when nothing is pending and the fan-out has reached the end of the audience;
//! its keys are then kept for the status TTL, like the notifications' records.

use std::{collections::HashMap, sync::LazyLock, time::Duration};

use redis::{AsyncCommands, Script};
use time::OffsetDateTime;

use super::{Redis, StoreError, parse_rfc3339, rfc3339};
use crate::{
    broadcast::{Audience, Broadcast, BroadcastStatus, Recipient},
    store::JobStatus,
};

/// Members sent to Redis per command when adding many (a script's arguments are unpacked in
/// Lua, whose stack takes a few thousand at most); callers adding from a stream add this many
/// at a time.
pub const ADD_CHUNK: usize = 4_000;

/// The counts of a broadcast's recipients by state.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Counts {
    pub total: u64,
    pub pending: u64,
    pub delivered: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub expired: u64,
    /// Delivered messages a read receipt covered (a part of `delivered`).
    pub read: u64,
}

/// A broadcast as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct BroadcastRecord {
    /// The definition; inline lists are not kept here but in the audience set.
    pub broadcast: Broadcast,
    pub status: BroadcastStatus,
    /// The audience's kind and settings, as `GET` shows them.
    pub audience: serde_json::Value,
    pub created_at: OffsetDateTime,
    pub started_at: Option<OffsetDateTime>,
    pub completed_at: Option<OffsetDateTime>,
    pub counts: Counts,
    /// Recipients handed to the dispatch queue so far.
    pub fanned: u64,
    /// Of those, the ones waiting for their own clock (not in flight).
    pub held: u64,
    /// The fan-out's step number: only the step message with this number runs.
    pub step: u64,
    /// The last audience member handed out ("" before the first).
    pub cursor: String,
    /// Where gathering a tenant's users or a team's roster goes on ("" at the start).
    pub gather_cursor: String,
    /// The audience is complete (named, uploaded and released, or gathered).
    pub gathered: bool,
    /// The fan-out reached the end of the audience.
    pub fanned_out: bool,
    /// Its first step is known to be queued.
    pub published: bool,
    pub content_hash: String,
    /// Why gathering the audience stopped short, if it did.
    pub last_error: Option<String>,
    /// The message's version: 1, and one more at every edit.
    pub version: u64,
    /// Its delivered messages are being deleted (`DELETE ?retract=true`).
    pub retracting: bool,
}

impl BroadcastRecord {
    /// Recipients handed out whose notification has not ended yet, but for those waiting for
    /// their own clock.
    pub fn in_flight(&self) -> u64 {
        let ended_after_fan_out = self.counts.total - self.counts.pending;
        self.fanned
            .saturating_sub(ended_after_fan_out)
            .saturating_sub(self.held)
    }

    fn from_hash(key: &str, h: &HashMap<String, String>) -> Result<Self, StoreError> {
        let malformed = |reason: String| StoreError::Malformed {
            key: key.to_owned(),
            reason,
        };
        let text = |name: &str| h.get(name).map(String::as_str).unwrap_or_default();
        let number = |name: &str| h.get(name).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        let time = |name: &str| h.get(name).and_then(|s| parse_rfc3339(s));
        let broadcast: Broadcast = serde_json::from_str(text("definition"))
            .map_err(|e| malformed(format!("bad definition: {e}")))?;
        let total = number("total");
        let (delivered, failed, cancelled, expired) = (
            number("delivered"),
            number("failed"),
            number("cancelled"),
            number("expired"),
        );
        Ok(Self {
            status: text("status").parse().map_err(malformed)?,
            audience: serde_json::from_str(text("audience"))
                .map_err(|e| malformed(format!("bad audience: {e}")))?,
            created_at: time("createdAt").ok_or_else(|| malformed("no createdAt".into()))?,
            started_at: time("startedAt"),
            completed_at: time("completedAt"),
            counts: Counts {
                total,
                pending: total.saturating_sub(delivered + failed + cancelled + expired),
                delivered,
                failed,
                cancelled,
                expired,
                read: number("read"),
            },
            fanned: number("fanned"),
            held: 0,
            step: number("step"),
            cursor: text("cursor").to_owned(),
            gather_cursor: text("gatherCursor").to_owned(),
            gathered: text("gathered") == "1",
            fanned_out: text("fannedOut") == "1",
            published: text("published") == "1",
            content_hash: text("contentHash").to_owned(),
            last_error: h.get("lastError").cloned(),
            version: number("version").max(1),
            retracting: text("retract") == "1",
            broadcast,
        })
    }
}

/// Settles a broadcast whose fan-out is over and whose recipients have all ended: `completed`
/// (or `expired` if some expired; a cancelled one stays `cancelled`), `completedAt`, and every
/// key kept for the TTL from now. Answers the status it settled at ('' if it did not).
/// KEYS[1..3] of the calling script; `now` and `ttl` its own.
const SETTLE: &str = r#"
local function settle(now, ttl)
  local f = redis.call('HMGET', KEYS[1], 'status', 'fannedOut', 'total', 'delivered', 'failed',
    'cancelled', 'expired', 'completedAt')
  if f[2] ~= '1' or f[8] then return '' end
  local ended = tonumber(f[4] or '0') + tonumber(f[5] or '0') + tonumber(f[6] or '0') + tonumber(f[7] or '0')
  if ended < tonumber(f[3] or '0') then return '' end
  local final = f[1]
  if final ~= 'cancelled' then
    if tonumber(f[7] or '0') > 0 then final = 'expired' else final = 'completed' end
  end
  redis.call('HSET', KEYS[1], 'status', final, 'completedAt', now)
  for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ttl) end
  return final
end
"#;

/// KEYS: broadcast, audience. ARGV: ttl ms (0: none), n fields, the fields, then the named
/// members. Creates the broadcast with its named recipients unless it exists; answers the
/// existing hash, or nothing.
static CREATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HGETALL', KEYS[1]) end
local n = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], unpack(ARGV, 3, 2 + n))
local first = 3 + n
for i = first, #ARGV, 500 do
  local args = {}
  for j = i, math.min(i + 499, #ARGV) do args[#args + 1] = 0; args[#args + 1] = ARGV[j] end
  redis.call('ZADD', KEYS[2], 'NX', unpack(args))
end
redis.call('HSET', KEYS[1], 'total', redis.call('ZCARD', KEYS[2]))
if ARGV[1] ~= '0' then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  redis.call('PEXPIRE', KEYS[2], ARGV[1])
end
return {}
"#,
    )
});

/// KEYS: broadcast, audience. ARGV: draft ttl ms, then members. Adds to a draft's list;
/// answers {status, added, total}: status '' when it does not exist.
static ADD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'', 0, 0} end
if status ~= 'draft' then return {status, 0, 0} end
local added = 0
for i = 2, #ARGV, 500 do
  local args = {}
  for j = i, math.min(i + 499, #ARGV) do args[#args + 1] = 0; args[#args + 1] = ARGV[j] end
  added = added + redis.call('ZADD', KEYS[2], 'NX', unpack(args))
end
local total = redis.call('ZCARD', KEYS[2])
redis.call('HSET', KEYS[1], 'total', total)
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return {status, added, total}
"#,
    )
});

/// KEYS: broadcast, audience. ARGV: the status it starts at. A draft is released: it starts
/// (or is scheduled), complete, and is kept until it settles. Answers the status found.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'draft' then return status or '' end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'gathered', '1', 'total', redis.call('ZCARD', KEYS[2]))
redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[2])
return status
"#,
    )
});

/// KEYS: broadcast, audience, ended, held. ARGV: the step expected, now, ttl ms, then field/value
/// pairs to set, where a field `+name` adds the value to count `name` (values are the
/// caller's, and a roster's continuation token may start with anything). Moves the fan-out one step on if it is
/// at the step expected; answers {1 if it did, the status it settled at or ''}.
static ADVANCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        &[
            SETTLE,
            r#"
local f = redis.call('HMGET', KEYS[1], 'step', 'status')
if f[1] ~= ARGV[1] then return {0, ''} end
-- A broadcast cancelled meanwhile stays cancelled (its audience and total stay as the cancel
-- left them); the step's counts and position still apply.
local ended = f[2] == 'cancelled' or f[2] == 'completed' or f[2] == 'expired'
redis.call('HINCRBY', KEYS[1], 'step', 1)
for i = 4, #ARGV, 2 do
  local field, value = ARGV[i], ARGV[i + 1]
  if ended and (field == 'status' or field == 'total' or field == 'gathered') then
    -- kept as they are
  elseif string.sub(field, 1, 1) == '+' then
    redis.call('HINCRBY', KEYS[1], string.sub(field, 2), value)
  elseif field == 'total' and value == 'audience' then
    redis.call('HSET', KEYS[1], 'total', redis.call('ZCARD', KEYS[2]))
  else
    redis.call('HSET', KEYS[1], ARGV[i], value)
  end
end
return {1, settle(ARGV[2], ARGV[3])}
"#,
        ]
        .concat(),
    )
});

/// KEYS: broadcast, audience, ended, held. ARGV: notification id, its final status, now, ttl ms.
/// Counts a recipient's end once; answers {1 if this was the first telling, the status the
/// broadcast settled at or '', the message's version, 1 if it is being retracted}.
static RECORD_END: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        &[
            SETTLE,
            r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, '', 1, 0} end
local f = redis.call('HMGET', KEYS[1], 'version', 'retract')
local version, retract = tonumber(f[1] or '1'), tonumber(f[2] or '0')
redis.call('SREM', KEYS[4], ARGV[1])
if redis.call('HSETNX', KEYS[3], ARGV[1], ARGV[2]) == 0 then return {0, '', version, retract} end
redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
return {1, settle(ARGV[3], ARGV[4]), version, retract}
"#,
        ]
        .concat(),
    )
});

/// KEYS: broadcast, audience, ended, held. ARGV: now, ttl ms. Nothing more is handed out. Before
/// anything was handed out (a draft, scheduled, gathering), every recipient is `cancelled` at
/// once. While sending, only the status changes: the fan-out's next step (which the chain
/// always has) counts the recipients never handed out, under the step guard, so a step
/// handing out recipients at this moment is counted once; the ones in flight end `cancelled`
/// as their jobs see the broadcast's status. Answers the status found ('' when none).
static CANCEL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        &[
            SETTLE,
            r#"
local f = redis.call('HMGET', KEYS[1], 'status', 'fanned')
local status = f[1]
if not status then return '' end
if status == 'completed' or status == 'cancelled' or status == 'expired' then return status end
redis.call('HSET', KEYS[1], 'status', 'cancelled')
redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[2])
if status ~= 'sending' and tonumber(f[2] or '0') == 0 then
  local audience = redis.call('ZCARD', KEYS[2])
  redis.call('HSET', KEYS[1], 'total', audience, 'fannedOut', '1', 'gathered', '1')
  redis.call('HINCRBY', KEYS[1], 'cancelled', audience)
  settle(ARGV[1], ARGV[2])
end
return status
"#,
        ]
        .concat(),
    )
});

/// KEYS: broadcast. ARGV: the version expected, the new definition. Answers the new version,
/// or 0 if the broadcast is at another version (or gone).
static EDIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local version = tonumber(redis.call('HGET', KEYS[1], 'version') or '1')
if version ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'definition', ARGV[2], 'version', version + 1)
return version + 1
"#,
    )
});

/// KEYS: a hash. ARGV: field, value. Sets it only on a hash that exists (HSET alone would make
/// a stub of one that expired).
static SET_IF_EXISTS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) return 1",
    )
});

/// KEYS: a broadcast, a set of it. ARGV: a member. Adds it only for a broadcast that exists.
static ADD_IF_EXISTS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end return redis.call('SADD', KEYS[2], ARGV[1])",
    )
});

/// KEYS: a hash. ARGV: a field. Adds one to it only on a hash that exists.
/// KEYS: broadcast, its read set. ARGV: notification id. Counts the message read once,
/// however often it is told, and only in a broadcast that exists (HINCRBY alone would make a
/// stub of one that expired); the read set lives as long as the broadcast.
static COUNT_READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -2 then return 0 end
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return 0 end
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
return redis.call('HINCRBY', KEYS[1], 'read', 1)
"#,
    )
});

/// KEYS: broadcast, audience, ended. ARGV: notification id. A recipient counted `failed` is
/// pending again, and the broadcast with it.
static REOPEN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HGET', KEYS[3], ARGV[1]) ~= 'failed' then return 0 end
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HINCRBY', KEYS[1], 'failed', -1)
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'completed' or status == 'expired' then
  redis.call('HSET', KEYS[1], 'status', 'sending')
  redis.call('HDEL', KEYS[1], 'completedAt')
end
for i = 1, #KEYS do redis.call('PERSIST', KEYS[i]) end
return 1
"#,
    )
});

/// What adding to a list found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// `added` were new; `total` distinct recipients so far.
    Added { added: u64, total: u64 },
    /// No such broadcast.
    NotFound,
    /// It is no draft (released, or not a list).
    NotDraft(BroadcastStatus),
}

/// What a change to a broadcast's position or counts did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Told {
    /// The change applied (the step moved on; the end was counted for the first time).
    pub applied: bool,
    /// The status the broadcast settled at with this change, if it settled.
    pub settled: Option<BroadcastStatus>,
}

impl Told {
    fn read(key: &str, (applied, settled): (u8, String)) -> Result<Self, StoreError> {
        Ok(Self {
            applied: applied == 1,
            settled: status_of(key, &settled)?,
        })
    }
}

/// What counting a recipient's end found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    pub told: Told,
    /// The broadcast message's version now.
    pub version: u64,
    /// The broadcast's delivered messages are being deleted.
    pub retracting: bool,
}

/// A change the fan-out makes as it moves one step on.
#[derive(Debug, Clone, Default)]
pub struct Advance {
    pub status: Option<BroadcastStatus>,
    pub cursor: Option<String>,
    pub gather_cursor: Option<String>,
    /// The audience is complete: `total` becomes its size.
    pub gathered: bool,
    /// Recipients handed out in this step.
    pub fanned: u64,
    /// The fan-out reached the end.
    pub fanned_out: bool,
    /// Recipients never handed out that expired (the broadcast's `expiresAt` passed).
    pub expired: u64,
    /// Recipients never handed out because the broadcast was cancelled.
    pub cancelled: u64,
    pub started_at: Option<OffsetDateTime>,
    pub last_error: Option<String>,
}

/// A status as a script answered it: '' for none (no such broadcast, or it did not settle).
fn status_of(key: &str, text: &str) -> Result<Option<BroadcastStatus>, StoreError> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|reason| StoreError::Malformed {
            key: key.to_owned(),
            reason,
        })
}

/// The definition as stored: inline lists are kept in the audience set, not here.
fn stored_definition(broadcast: &Broadcast) -> Broadcast {
    Broadcast {
        audience: match &broadcast.audience {
            Audience::Users(_) => Audience::Users(Vec::new()),
            Audience::Channels(_) => Audience::Channels(Vec::new()),
            other => other.clone(),
        },
        ..broadcast.clone()
    }
}

#[derive(Debug, Clone)]
pub struct BroadcastStore {
    redis: Redis,
    ttl: Duration,
}

impl BroadcastStore {
    /// `ttl`: how long a settled broadcast (and an untouched draft) is kept.
    pub fn new(redis: Redis, ttl: Duration) -> Self {
        Self { redis, ttl }
    }

    /// The broadcast's hash, audience set and ended hash.
    fn keys(&self, id: &str) -> [String; 4] {
        let main = self.redis.key("broadcast", &format!("{{b:{id}}}"));
        let audience = format!("{main}:audience");
        let ended = format!("{main}:ended");
        let held = format!("{main}:held");
        [main, audience, ended, held]
    }

    fn ttl_ms(&self) -> u64 {
        self.ttl.as_millis() as u64
    }

    /// Creates the broadcast at `status`, with the recipients its request names, unless it
    /// exists (`Err(existing)`). A draft expires after the TTL unless it is added to.
    pub async fn create(
        &self,
        broadcast: &Broadcast,
        status: BroadcastStatus,
        now: OffsetDateTime,
    ) -> Result<Result<(), BroadcastRecord>, StoreError> {
        let [main, audience, ..] = self.keys(&broadcast.id);
        let named = broadcast.audience.named();
        let stored = stored_definition(broadcast);
        // A list is filled by its uploads; a tenant, team or group is gathered at fan-out.
        let gathered =
            !(broadcast.is_gathered() || matches!(broadcast.audience, Audience::List(_)));
        let fields: Vec<(&str, String)> = vec![
            ("id", broadcast.id.to_string()),
            ("status", status.to_string()),
            (
                "definition",
                serde_json::to_string(&stored).expect("a broadcast serializes"),
            ),
            ("audience", broadcast.audience.summary().to_string()),
            ("contentHash", broadcast.content_hash()),
            ("createdAt", rfc3339(now)),
            ("step", "0".into()),
            ("fanned", "0".into()),
            ("gathered", u8::from(gathered).to_string()),
            ("published", "0".into()),
            ("version", "1".into()),
        ];
        let mut cmd = CREATE.prepare_invoke();
        cmd.key(&main).key(&audience);
        let ttl = if status == BroadcastStatus::Draft {
            self.ttl_ms()
        } else {
            0
        };
        cmd.arg(ttl).arg(fields.len() * 2);
        for (field, value) in &fields {
            cmd.arg(*field).arg(value);
        }
        for recipient in &named {
            cmd.arg(recipient.member());
        }
        let existing: HashMap<String, String> = cmd.invoke_async(&mut self.redis.conn()).await?;
        if existing.is_empty() {
            Ok(Ok(()))
        } else {
            BroadcastRecord::from_hash(&main, &existing).map(Err)
        }
    }

    pub async fn get(&self, id: &str) -> Result<Option<BroadcastRecord>, StoreError> {
        let [main, _, _, held] = self.keys(id);
        let (hash, held): (HashMap<String, String>, u64) = redis::pipe()
            .hgetall(&main)
            .scard(&held)
            .query_async(&mut self.redis.conn())
            .await?;
        if hash.is_empty() {
            return Ok(None);
        }
        let mut record = BroadcastRecord::from_hash(&main, &hash)?;
        record.held = held;
        Ok(Some(record))
    }

    /// Notes that recipient notification `notification_id` waits for its own clock (until it
    /// ends); only in a broadcast that exists.
    pub async fn hold(&self, id: &str, notification_id: &str) -> Result<(), StoreError> {
        let [main, _, _, held] = self.keys(id);
        let _: u8 = ADD_IF_EXISTS
            .key(&main)
            .key(&held)
            .arg(notification_id)
            .invoke_async(&mut self.redis.conn())
            .await?;
        Ok(())
    }

    /// The status alone (what a recipient's job checks before it is sent).
    pub async fn status(&self, id: &str) -> Result<Option<BroadcastStatus>, StoreError> {
        let [main, ..] = self.keys(id);
        let status: Option<String> = self.redis.conn().hget(&main, "status").await?;
        status_of(&main, status.as_deref().unwrap_or_default())
    }

    /// Adds recipients to a draft list, ignoring repeats, in commands of a few thousand. A
    /// call that stops on an outage may have added some: adding them again is harmless.
    pub async fn add(&self, id: &str, recipients: &[Recipient]) -> Result<Added, StoreError> {
        let [main, audience, ..] = self.keys(id);
        let mut added = 0;
        let mut total = 0;
        // An empty upload still answers the list's state.
        let chunks: Vec<&[Recipient]> = if recipients.is_empty() {
            vec![&[]]
        } else {
            recipients.chunks(ADD_CHUNK).collect()
        };
        for chunk in chunks {
            let mut cmd = ADD.prepare_invoke();
            cmd.key(&main).key(&audience).arg(self.ttl_ms());
            for recipient in chunk {
                cmd.arg(recipient.member());
            }
            let (status, n, size): (String, u64, u64) =
                cmd.invoke_async(&mut self.redis.conn()).await?;
            match status_of(&main, &status)? {
                None => return Ok(Added::NotFound),
                Some(BroadcastStatus::Draft) => {
                    added += n;
                    total = size;
                }
                Some(other) => return Ok(Added::NotDraft(other)),
            }
        }
        Ok(Added::Added { added, total })
    }

    /// Releases a draft at `status` (`sending` or `scheduled`); answers the status found
    /// (`None`: no such broadcast).
    pub async fn release(
        &self,
        id: &str,
        status: BroadcastStatus,
    ) -> Result<Option<BroadcastStatus>, StoreError> {
        let [main, audience, ..] = self.keys(id);
        let found: String = RELEASE
            .key(&main)
            .key(&audience)
            .arg(status.as_str())
            .invoke_async(&mut self.redis.conn())
            .await?;
        status_of(&main, &found)
    }

    /// Notes that the broadcast's first step is queued.
    pub async fn mark_published(&self, id: &str) -> Result<(), StoreError> {
        let [main, ..] = self.keys(id);
        self.redis
            .conn()
            .hset::<_, _, _, ()>(&main, "published", "1")
            .await?;
        Ok(())
    }

    /// Adds gathered recipients (a tenant's users, a roster page) to the audience.
    pub async fn gather(&self, id: &str, recipients: &[Recipient]) -> Result<(), StoreError> {
        let [_, audience, ..] = self.keys(id);
        for chunk in recipients.chunks(ADD_CHUNK) {
            let members: Vec<(u8, String)> = chunk.iter().map(|r| (0, r.member())).collect();
            redis::cmd("ZADD")
                .arg(&audience)
                .arg("NX")
                .arg(&members)
                .query_async::<u64>(&mut self.redis.conn())
                .await?;
        }
        Ok(())
    }

    /// Up to `limit` audience members after `after` ("" for the first), in order.
    pub async fn page(
        &self,
        id: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let [_, audience, ..] = self.keys(id);
        let start = if after.is_empty() {
            "-".to_owned()
        } else {
            format!("({after}")
        };
        let members: Vec<String> = redis::cmd("ZRANGE")
            .arg(&audience)
            .arg(start)
            .arg("+")
            .arg("BYLEX")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut self.redis.conn())
            .await?;
        Ok(members)
    }

    /// Moves the fan-out from step `expected` to the next with `change`; `moved` is false if
    /// it is at another step (a repeated or stale step).
    pub async fn advance(
        &self,
        id: &str,
        expected: u64,
        change: &Advance,
        now: OffsetDateTime,
    ) -> Result<Told, StoreError> {
        let [main, audience, ended, held] = self.keys(id);
        let mut cmd = ADVANCE.prepare_invoke();
        cmd.key(&main)
            .key(&audience)
            .key(&ended)
            .key(&held)
            .arg(expected)
            .arg(rfc3339(now))
            .arg(self.ttl_ms());
        let mut set = |field: &str, value: String| {
            cmd.arg(field).arg(value);
        };
        if let Some(status) = change.status {
            set("status", status.to_string());
        }
        if let Some(cursor) = &change.cursor {
            set("cursor", cursor.clone());
        }
        if let Some(cursor) = &change.gather_cursor {
            set("gatherCursor", cursor.clone());
        }
        if change.gathered {
            set("gathered", "1".into());
            set("total", "audience".into());
        }
        if change.fanned > 0 {
            set("+fanned", change.fanned.to_string());
        }
        for (count, never_sent) in [
            ("+expired", change.expired),
            ("+cancelled", change.cancelled),
        ] {
            if never_sent > 0 {
                set(count, never_sent.to_string());
                set("+fanned", never_sent.to_string());
            }
        }
        if change.fanned_out {
            set("fannedOut", "1".into());
        }
        if let Some(at) = change.started_at {
            set("startedAt", rfc3339(at));
        }
        if let Some(error) = &change.last_error {
            set("lastError", error.clone());
        }
        let told: (u8, String) = cmd.invoke_async(&mut self.redis.conn()).await?;
        Told::read(&main, told)
    }

    /// Counts the end of recipient notification `notification_id` (once, however often it is
    /// told); `first` when this was the first telling.
    pub async fn record_end(
        &self,
        id: &str,
        notification_id: &str,
        status: JobStatus,
        now: OffsetDateTime,
    ) -> Result<Ended, StoreError> {
        let [main, audience, ended, held] = self.keys(id);
        let (applied, settled, version, retracting): (u8, String, u64, u8) = RECORD_END
            .key(&main)
            .key(&audience)
            .key(&ended)
            .key(&held)
            .arg(notification_id)
            .arg(status.as_str())
            .arg(rfc3339(now))
            .arg(self.ttl_ms())
            .invoke_async(&mut self.redis.conn())
            .await?;
        Ok(Ended {
            told: Told::read(&main, (applied, settled))?,
            version,
            retracting: retracting == 1,
        })
    }

    /// Puts `message` in the broadcast (in `definition`, which its later recipients' jobs are
    /// made from) as the next version, if the broadcast is at version `expected` (another edit
    /// went first otherwise); answers the new version, or `None`.
    pub async fn edit(
        &self,
        id: &str,
        expected: u64,
        broadcast: &Broadcast,
    ) -> Result<Option<u64>, StoreError> {
        let [main, ..] = self.keys(id);
        let stored = stored_definition(broadcast);
        let version: u64 = EDIT
            .key(&main)
            .arg(expected)
            .arg(serde_json::to_string(&stored).expect("a broadcast serializes"))
            .invoke_async(&mut self.redis.conn())
            .await?;
        Ok((version > 0).then_some(version))
    }

    /// Marks the broadcast as having its delivered messages deleted: a message that reaches
    /// Teams after this is deleted as it is recorded.
    pub async fn mark_retracting(&self, id: &str) -> Result<(), StoreError> {
        let [main, ..] = self.keys(id);
        let _: u8 = SET_IF_EXISTS
            .key(&main)
            .arg("retract")
            .arg("1")
            .invoke_async(&mut self.redis.conn())
            .await?;
        Ok(())
    }

    /// A recipient whose notification failed is sent to again: its end no longer counts (it
    /// is counted again when it ends), and a settled broadcast is `sending` again. True if it
    /// had been counted failed.
    pub async fn reopen(&self, id: &str, notification_id: &str) -> Result<bool, StoreError> {
        let [main, audience, ended, held] = self.keys(id);
        let reopened: u8 = REOPEN
            .key(&main)
            .key(&audience)
            .key(&ended)
            .key(&held)
            .arg(notification_id)
            .invoke_async(&mut self.redis.conn())
            .await?;
        Ok(reopened == 1)
    }

    /// Counts broadcast `id`'s message `notification_id` read, once however often it is told:
    /// a receipt handled again after a failure counts nothing twice, and one whose count
    /// failed the first time counts when it is handled again.
    pub async fn count_read(&self, id: &str, notification_id: &str) -> Result<(), StoreError> {
        let [main, ..] = self.keys(id);
        let _: i64 = COUNT_READ
            .key(&main)
            .key(format!("{main}:read"))
            .arg(notification_id)
            .invoke_async(&mut self.redis.conn())
            .await?;
        Ok(())
    }

    /// Cancels the broadcast; answers the status it had (`None`: no such broadcast). A final
    /// one is left as it is.
    pub async fn cancel(
        &self,
        id: &str,
        now: OffsetDateTime,
    ) -> Result<Option<BroadcastStatus>, StoreError> {
        let [main, audience, ended, held] = self.keys(id);
        let found: String = CANCEL
            .key(&main)
            .key(&audience)
            .key(&ended)
            .key(&held)
            .arg(rfc3339(now))
            .arg(self.ttl_ms())
            .invoke_async(&mut self.redis.conn())
            .await?;
        status_of(&main, &found)
    }
}

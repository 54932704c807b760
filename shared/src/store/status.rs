//! Job status records: the answer to "what happened to notification N?", and the guard that
//! makes at-least-once delivery effectively-once per job id.
//!
//! Key `{ns}:job:{id}`, a hash. A send is guarded by a *lease*: the dispatcher that claims a
//! job marks it `sending` until a deadline; another copy of the same job (a redelivery, a
//! duplicate publish) that arrives meanwhile waits, and one that arrives after the deadline
//! takes over — that takeover after a crashed send is the only window for a duplicate message.

use std::sync::LazyLock;

use redis::Script;
use std::{collections::HashMap, fmt, str::FromStr, time::Duration};

use redis::AsyncCommands;
use serde::{Serialize, Serializer};
use time::OffsetDateTime;

use super::{Redis, StoreError, parse_rfc3339, rfc3339, unix_ms};
use crate::job::{JobId, Target};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Due later (first delivery, or a retry after a transient failure).
    Scheduled,
    /// Due now, waiting for a dispatcher.
    Queued,
    /// A dispatcher holds the send lease.
    Sending,
    Delivered,
    Failed,
    Cancelled,
    Expired,
}

impl JobStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Delivered | Self::Failed | Self::Cancelled | Self::Expired
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Queued => "queued",
            Self::Sending => "sending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
        }
    }
}

impl FromStr for JobStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "scheduled" => Self::Scheduled,
            "queued" => Self::Queued,
            "sending" => Self::Sending,
            "delivered" => Self::Delivered,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            "expired" => Self::Expired,
            other => return Err(format!("unknown status {other:?}")),
        })
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job's status record, as `GET /v1/notifications/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusRecord {
    pub id: JobId,
    pub status: JobStatus,
    /// Calls made to Teams for this job.
    pub attempts: u32,
    #[serde(serialize_with = "serialize_sorted")]
    pub to: Target,
    pub conversation_id: Option<String>,
    pub activity_id: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub deliver_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    pub last_error: Option<String>,
    /// The broadcast this notification is one recipient's message of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcast_id: Option<String>,
    /// When a read receipt first covered the delivered message.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub read_at: Option<OffsetDateTime>,
    /// Whether the job is known to be in the broker (its publish was confirmed).
    #[serde(skip)]
    pub published: bool,
    /// [`Job::content_hash`](crate::job::Job::content_hash) of the request that created it.
    #[serde(skip)]
    pub content_hash: Option<String>,
    /// Where the message was delivered, for later edits and deletions.
    #[serde(skip)]
    pub service_url: Option<String>,
    /// A failed job's every attempt failed for a reason that could pass (a broadcast's retry
    /// sends it again); false for one Teams refused for good (gone, blocked).
    #[serde(skip)]
    pub failed_transiently: bool,
}

impl StatusRecord {
    /// A fresh record for a job first seen now.
    pub fn new(
        id: &JobId,
        to: Target,
        deliver_at: Option<OffsetDateTime>,
        now: OffsetDateTime,
    ) -> Self {
        let due_later = deliver_at.is_some_and(|at| at > now);
        Self {
            id: id.clone(),
            status: if due_later {
                JobStatus::Scheduled
            } else {
                JobStatus::Queued
            },
            attempts: 0,
            to,
            conversation_id: None,
            activity_id: None,
            deliver_at,
            created_at: now,
            updated_at: now,
            last_error: None,
            broadcast_id: None,
            read_at: None,
            published: false,
            content_hash: None,
            service_url: None,
            failed_transiently: false,
        }
    }

    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            ("id", self.id.to_string()),
            ("status", self.status.to_string()),
            ("attempts", self.attempts.to_string()),
            ("to", sorted_json(&self.to).to_string()),
            ("createdAt", rfc3339(self.created_at)),
            ("updatedAt", rfc3339(self.updated_at)),
            ("published", u8::from(self.published).to_string()),
        ];
        if let Some(at) = self.deliver_at {
            fields.push(("deliverAt", rfc3339(at)));
        }
        if let Some(hash) = &self.content_hash {
            fields.push(("contentHash", hash.clone()));
        }
        if let Some(broadcast) = &self.broadcast_id {
            fields.push(("broadcastId", broadcast.clone()));
        }
        fields
    }

    fn from_hash(key: &str, mut h: HashMap<String, String>) -> Result<Self, StoreError> {
        let malformed = |reason: String| StoreError::Malformed {
            key: key.to_owned(),
            reason,
        };
        let time_field = |h: &HashMap<String, String>, name: &str| {
            h.get(name)
                .and_then(|s| parse_rfc3339(s))
                .ok_or_else(|| malformed(format!("bad {name}")))
        };
        Ok(Self {
            status: h
                .get("status")
                .ok_or_else(|| malformed("no status".into()))?
                .parse()
                .map_err(malformed)?,
            attempts: h.get("attempts").and_then(|a| a.parse().ok()).unwrap_or(0),
            to: serde_json::from_str(h.get("to").ok_or_else(|| malformed("no to".into()))?)
                .map_err(|e| malformed(format!("bad to: {e}")))?,
            deliver_at: h.get("deliverAt").and_then(|s| parse_rfc3339(s)),
            read_at: h.get("readAt").and_then(|s| parse_rfc3339(s)),
            created_at: time_field(&h, "createdAt")?,
            updated_at: time_field(&h, "updatedAt")?,
            published: h.get("published").is_some_and(|p| p == "1"),
            id: h
                .remove("id")
                .ok_or_else(|| malformed("no id".into()))?
                .try_into()
                .map_err(|e| malformed(format!("bad id: {e}")))?,
            conversation_id: h.remove("conversationId"),
            activity_id: h.remove("activityId"),
            last_error: h.remove("lastError"),
            broadcast_id: h.remove("broadcastId"),
            content_hash: h.remove("contentHash"),
            service_url: h.remove("serviceUrl"),
            failed_transiently: h.get("failedFor").is_some_and(|f| f == "transient"),
        })
    }
}

/// The target as records have always held it, in Redis and in answers: its JSON with the keys
/// of every object in sorted order (as `serde_json::Value` writes them), not in field order.
fn sorted_json(target: &Target) -> serde_json::Value {
    // A target is strings in structs and enums: it has no map with non-string keys, nor a
    // `Serialize` of its own that could fail.
    serde_json::to_value(target).expect("a target always serializes")
}

fn serialize_sorted<S: Serializer>(target: &Target, serializer: S) -> Result<S::Ok, S::Error> {
    sorted_json(target).serialize(serializer)
}

/// The event a status change is told by: the change's script writes `field` = `event_id`
/// with the change itself, which is the outbox's proof that the change was recorded
/// ([`crate::events::outbox`]).
#[derive(Debug, Clone, Copy)]
pub struct Stamp<'a> {
    pub field: &'a str,
    pub event_id: &'a str,
}

/// What `begin_send` found.
#[derive(Debug, Clone, PartialEq)]
pub enum BeginSend {
    /// This dispatcher holds the lease now. `took_over` means an earlier holder's lease had
    /// lapsed mid-send (it crashed): the message may already have reached Teams once.
    Claimed { took_over: bool },
    /// Another copy of this job holds a live lease; look again after this long.
    Busy { retry_in: Duration },
    /// The job has already ended; nothing to do.
    Finished(JobStatus),
}

/// How one handling of a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered {
        service_url: String,
        conversation_id: String,
        activity_id: Option<String>,
    },
    Failed {
        reason: String,
        conversation_id: Option<String>,
        /// Every attempt failed for a reason that could pass (throttled, Teams busy or out of
        /// reach), as opposed to one that will not (gone, blocked, refused).
        transient: bool,
    },
    /// A transient failure; the job is due again at `next_attempt_at`.
    Retrying {
        reason: String,
        next_attempt_at: OffsetDateTime,
    },
    Expired,
    /// Never sent: its broadcast was cancelled first.
    Cancelled,
}

/// Creates the record unless it exists; answers the existing record's fields, or nothing.
/// (Scripts set every field with one command: each `redis.call` costs about as much as the
/// command itself.)
static CREATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local key = KEYS[1]
if redis.call('EXISTS', key) == 1 then return redis.call('HGETALL', key) end
redis.call('HSET', key, unpack(ARGV, 2))
redis.call('PEXPIRE', key, ARGV[1])
return {}
"#,
    )
});

/// ARGV: owner, now_ms, lease_ms, ttl_ms, now (rfc3339), then the fields of a fresh record,
/// used when this job was never seen (published straight to AMQP by another service).
static BEGIN_SEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local key = KEYS[1]
local owner, now_ms, lease_ms = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local found = redis.call('HMGET', key, 'status', 'leaseOwner', 'leaseUntil')
local status, holder, lease_until = found[1], found[2], tonumber(found[3] or '0')
if status == 'delivered' or status == 'failed' or status == 'cancelled' or status == 'expired' then
  return {'finished', status}
end
local took_over = 0
if status == 'sending' then
  if holder ~= owner and lease_until > now_ms then return {'busy', tostring(lease_until - now_ms)} end
  if holder ~= owner then took_over = 1 end
end
-- A job never seen gets the fresh record's fields first; the claim's fields, later in the
-- same command, win.
local fields = {}
if not status then fields = {unpack(ARGV, 6)} end
for _, v in ipairs({'status', 'sending', 'leaseOwner', owner, 'leaseUntil', now_ms + lease_ms,
  'updatedAt', ARGV[5], 'published', '1'}) do fields[#fields + 1] = v end
redis.call('HSET', key, unpack(fields))
redis.call('PEXPIRE', key, ARGV[4])
return {'claimed', tostring(took_over)}
"#,
    )
});

/// ARGV: new status, attempts made, owner, ttl_ms, then fields to set (empty value = delete).
/// A terminal status is never replaced by anything but `delivered` (the truth about a message
/// that did reach Teams, e.g. one cancelled while its send was in flight).
static FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local key = KEYS[1]
local new, owner = ARGV[1], ARGV[3]
local found = redis.call('HMGET', key, 'status', 'leaseOwner')
local current = found[1]
if current == 'delivered' then return current end
if (current == 'failed' or current == 'cancelled' or current == 'expired') and new ~= 'delivered' then
  return current
end
local set, unset = {'status', new}, {}
for i = 5, #ARGV, 2 do
  if ARGV[i + 1] == '' then unset[#unset + 1] = ARGV[i] else
    set[#set + 1] = ARGV[i]
    set[#set + 1] = ARGV[i + 1]
  end
end
if found[2] == owner then
  unset[#unset + 1] = 'leaseOwner'
  unset[#unset + 1] = 'leaseUntil'
end
redis.call('HSET', key, unpack(set))
if #unset > 0 then redis.call('HDEL', key, unpack(unset)) end
if ARGV[2] ~= '0' then redis.call('HINCRBY', key, 'attempts', ARGV[2]) end
redis.call('PEXPIRE', key, ARGV[4])
return new
"#,
    )
});

/// What a cancellation found.
#[derive(Debug, Clone, PartialEq)]
pub enum Cancel {
    /// It had not been sent: now `cancelled`, and it never will be.
    Cancelled(StatusRecord),
    /// It was cancelled already (a repeated request).
    AlreadyCancelled(StatusRecord),
    /// It reached Teams; cancelling now means deleting the message there.
    Delivered(StatusRecord),
    /// A dispatcher is sending it right now.
    Sending(StatusRecord),
    /// It ended `failed` or `expired`: nothing to cancel.
    Ended(StatusRecord),
}

/// Cancels a job not yet sent (ARGV: now, ttl ms, the event stamp's field and id or two empty
/// strings). Answers the status found (before any
/// change) and the record.
static CANCEL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local key = KEYS[1]
local status = redis.call('HGET', key, 'status')
if not status then return {} end
if status == 'scheduled' or status == 'queued' then
  redis.call('HSET', key, 'status', 'cancelled', 'updatedAt', ARGV[1])
  if ARGV[3] ~= '' then redis.call('HSET', key, ARGV[3], ARGV[4]) end
  redis.call('PEXPIRE', key, ARGV[2])
end
return {status, redis.call('HGETALL', key)}
"#,
    )
});

/// A job not yet sent waits until ARGV[1] (its window, or the recipient's quiet hours):
/// `scheduled`, with that `deliverAt` (ARGV[2]: now), kept for ARGV[3] ms.
static HOLD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'scheduled' and status ~= 'queued' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'scheduled', 'deliverAt', ARGV[1], 'updatedAt', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"#,
    )
});

/// A failed job goes back to `queued`; its history (attempts, last error) stays.
static REOPEN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HGET', KEYS[1], 'status') ~= 'failed' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued', 'updatedAt', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#,
    )
});

/// A delivered message was deleted in Teams: the job ends `cancelled`.
static RETRACTED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HGET', KEYS[1], 'status') ~= 'delivered' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'updatedAt', ARGV[1])
redis.call('HDEL', KEYS[1], 'lastError')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#,
    )
});

/// A read receipt covers a delivered message (ARGV: readAt, event stamp field, event id):
/// 1 if this is the first receipt to, 0 otherwise.
static MARK_READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local found = redis.call('HMGET', KEYS[1], 'status', 'readAt')
if found[1] ~= 'delivered' or found[2] then return 0 end
redis.call('HSET', KEYS[1], 'readAt', ARGV[1], ARGV[2], ARGV[3])
return 1
"#,
    )
});

#[derive(Debug, Clone)]
pub struct StatusStore {
    redis: Redis,
    ttl: Duration,
}

impl StatusStore {
    pub fn new(redis: Redis, ttl: Duration) -> Self {
        Self { redis, ttl }
    }

    fn key(&self, id: &str) -> String {
        self.redis.key("job", id)
    }

    /// Creates the record; if one exists already, returns it instead (`Err(existing)`).
    ///
    /// A job due later keeps its record until the TTL has run from its due time, not from
    /// now: a job scheduled a month ahead is still there to look up, cancel and guard.
    pub async fn create(
        &self,
        record: &StatusRecord,
    ) -> Result<Result<(), StatusRecord>, StoreError> {
        let key = self.key(&record.id);
        let until_due = record
            .deliver_at
            .and_then(|at| Duration::try_from(at - record.created_at).ok())
            .unwrap_or_default();
        let mut cmd = CREATE.prepare_invoke();
        cmd.key(&key).arg((self.ttl + until_due).as_millis() as u64);
        for (field, value) in record.fields() {
            cmd.arg(field).arg(value);
        }
        let existing: HashMap<String, String> = cmd.invoke_async(&mut self.redis.conn()).await?;
        if existing.is_empty() {
            Ok(Ok(()))
        } else {
            StatusRecord::from_hash(&key, existing).map(Err)
        }
    }

    /// Records that a job not yet sent waits until `until` (`scheduled`, with that
    /// `deliverAt`); false if it is being sent or has ended.
    pub async fn hold(
        &self,
        id: &str,
        until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let until_due = Duration::try_from(until - now).unwrap_or_default();
        let held: u8 = HOLD
            .key(self.key(id))
            .arg(rfc3339(until))
            .arg(rfc3339(now))
            .arg((self.ttl + until_due).as_millis() as u64)
            .invoke_async(&mut self.redis.conn())
            .await?;
        Ok(held == 1)
    }

    /// Notes that the jobs' publishes were confirmed by the broker.
    pub async fn mark_published(&self, ids: &[&str]) -> Result<(), StoreError> {
        // One command per key, sent at once (a cluster may hold them on different nodes).
        let marks = ids.iter().map(|id| {
            let mut conn = self.redis.conn();
            let key = self.key(id);
            async move { conn.hset::<_, _, _, ()>(key, "published", "1").await }
        });
        futures_util::future::try_join_all(marks).await?;
        Ok(())
    }

    /// The records of many jobs, in order (`None` for one never recorded). The reads are
    /// sent at once: the multiplexed connection pipelines them.
    pub async fn get_many(&self, ids: &[&str]) -> Result<Vec<Option<StatusRecord>>, StoreError> {
        futures_util::future::try_join_all(ids.iter().map(|id| self.get(id))).await
    }

    pub async fn get(&self, id: &str) -> Result<Option<StatusRecord>, StoreError> {
        let key = self.key(id);
        let hash: HashMap<String, String> = self.redis.conn().hgetall(&key).await?;
        if hash.is_empty() {
            return Ok(None);
        }
        StatusRecord::from_hash(&key, hash).map(Some)
    }

    /// Claims the send of a job for `owner` for `lease`, creating the record from `fresh` if
    /// the job was never seen. One round trip.
    pub async fn begin_send(
        &self,
        fresh: &StatusRecord,
        owner: &str,
        lease: Duration,
        now: OffsetDateTime,
    ) -> Result<BeginSend, StoreError> {
        let key = self.key(&fresh.id);
        let mut cmd = BEGIN_SEND.prepare_invoke();
        cmd.key(&key)
            .arg(owner)
            .arg(unix_ms(now))
            .arg(lease.as_millis() as u64)
            .arg(self.ttl.as_millis() as u64)
            .arg(rfc3339(now));
        for (field, value) in fresh.fields() {
            cmd.arg(field).arg(value);
        }
        let reply: redis::Value = cmd.invoke_async(&mut self.redis.conn()).await?;
        let malformed = |reason: &str| StoreError::Malformed {
            key: key.clone(),
            reason: reason.to_owned(),
        };
        let redis::Value::Array(parts) = reply else {
            return Err(malformed(
                "begin_send answered something other than an array",
            ));
        };
        let word = |i: usize| -> Option<String> {
            parts
                .get(i)
                .and_then(|v| redis::from_redis_value(v.clone()).ok())
        };
        match word(0).as_deref() {
            Some("finished") => {
                let status = word(1).ok_or_else(|| malformed("no status"))?;
                Ok(BeginSend::Finished(
                    status.parse().map_err(|e: String| malformed(&e))?,
                ))
            }
            Some("busy") => {
                let ms: u64 = word(1)
                    .and_then(|m| m.parse().ok())
                    .ok_or_else(|| malformed("no lease time"))?;
                Ok(BeginSend::Busy {
                    retry_in: Duration::from_millis(ms),
                })
            }
            Some("claimed") => Ok(BeginSend::Claimed {
                took_over: word(1).as_deref() == Some("1"),
            }),
            _ => Err(malformed("unknown begin_send answer")),
        }
    }

    /// Cancels the job if it has not been sent; `None` if there is no such job.
    pub async fn cancel(
        &self,
        id: &str,
        now: OffsetDateTime,
        stamp: Option<Stamp<'_>>,
    ) -> Result<Option<Cancel>, StoreError> {
        let key = self.key(id);
        let reply: redis::Value = CANCEL
            .key(&key)
            .arg(rfc3339(now))
            .arg(self.ttl.as_millis() as u64)
            .arg(stamp.map_or("", |s| s.field))
            .arg(stamp.map_or("", |s| s.event_id))
            .invoke_async(&mut self.redis.conn())
            .await?;
        let malformed = |reason: &str| StoreError::Malformed {
            key: key.clone(),
            reason: reason.to_owned(),
        };
        let redis::Value::Array(parts) = reply else {
            return Err(malformed("cancel answered something odd"));
        };
        if parts.is_empty() {
            return Ok(None);
        }
        let found: String =
            redis::from_redis_value(parts[0].clone()).map_err(|_| malformed("no status"))?;
        let hash: HashMap<String, String> = parts
            .get(1)
            .and_then(|v| redis::from_redis_value(v.clone()).ok())
            .ok_or_else(|| malformed("no record"))?;
        let record = StatusRecord::from_hash(&key, hash)?;
        Ok(Some(
            match found.parse().map_err(|e: String| malformed(&e))? {
                JobStatus::Scheduled | JobStatus::Queued => Cancel::Cancelled(record),
                JobStatus::Cancelled => Cancel::AlreadyCancelled(record),
                JobStatus::Delivered => Cancel::Delivered(record),
                JobStatus::Sending => Cancel::Sending(record),
                JobStatus::Failed | JobStatus::Expired => Cancel::Ended(record),
            },
        ))
    }

    /// Gives a `failed` job another chance (an operator redrives it from the dead-letter
    /// queue); true if it was failed. Delivered, cancelled and expired jobs stay as they are.
    pub async fn reopen(&self, id: &str, now: OffsetDateTime) -> Result<bool, StoreError> {
        self.transition(&REOPEN, id, now).await
    }

    /// The delivered message was deleted in Teams; the job ends `cancelled`.
    pub async fn mark_retracted(&self, id: &str, now: OffsetDateTime) -> Result<bool, StoreError> {
        self.transition(&RETRACTED, id, now).await
    }

    /// Runs a one-key status transition script (ARGV: now, ttl ms); true if it applied.
    async fn transition(
        &self,
        script: &Script,
        id: &str,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let done: u8 = script
            .key(self.key(id))
            .arg(rfc3339(now))
            .arg(self.ttl.as_millis() as u64)
            .invoke_async(&mut self.redis.conn())
            .await?;
        Ok(done == 1)
    }

    /// Marks a delivered message read at `read_at`, stamped with its event; true if this was
    /// the first read receipt to cover it (false: one did before, or it is not delivered, or
    /// gone).
    pub async fn mark_read(
        &self,
        id: &str,
        read_at: OffsetDateTime,
        stamp: Stamp<'_>,
    ) -> Result<bool, StoreError> {
        let first: u8 = MARK_READ
            .key(self.key(id))
            .arg(rfc3339(read_at))
            .arg(stamp.field)
            .arg(stamp.event_id)
            .invoke_async(&mut self.redis.conn())
            .await?;
        Ok(first == 1)
    }

    /// The key of job `id`'s record (where an event's proof is looked for).
    pub fn record_key(&self, id: &str) -> String {
        self.key(id)
    }

    /// Notes the result of an edit or deletion of the delivered message (`None`: it worked).
    pub async fn note_change(
        &self,
        id: &str,
        error: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let key = self.key(id);
        let mut pipe = redis::pipe();
        pipe.hset(&key, "updatedAt", rfc3339(now)).ignore();
        pipe.pexpire(&key, self.ttl.as_millis() as i64).ignore();
        match error {
            Some(reason) => pipe.hset(&key, "lastError", reason).ignore(),
            None => pipe.hdel(&key, "lastError").ignore(),
        };
        pipe.query_async::<()>(&mut self.redis.conn()).await?;
        Ok(())
    }

    /// Records how a handling ended and releases `owner`'s lease; returns the status now stored.
    /// `beside` adds other stores' writes that belong with the outcome (what a delivered
    /// message will be looked up by): they go in the same round trip and, like the outcome,
    /// are repeated when the whole is (see [`super::Redis::eval_beside`]).
    pub async fn finish(
        &self,
        id: &str,
        owner: &str,
        outcome: &Outcome,
        attempts_made: u32,
        now: OffsetDateTime,
        beside: impl FnOnce(&mut redis::Pipeline),
    ) -> Result<JobStatus, StoreError> {
        let (status, fields): (JobStatus, Vec<(&str, String)>) = match outcome {
            Outcome::Delivered {
                service_url,
                conversation_id,
                activity_id,
            } => (
                JobStatus::Delivered,
                vec![
                    ("serviceUrl", service_url.clone()),
                    ("conversationId", conversation_id.clone()),
                    ("activityId", activity_id.clone().unwrap_or_default()),
                    ("lastError", String::new()),
                ],
            ),
            Outcome::Failed {
                reason,
                conversation_id,
                transient,
            } => (
                JobStatus::Failed,
                vec![
                    ("lastError", reason.clone()),
                    (
                        "conversationId",
                        conversation_id.clone().unwrap_or_default(),
                    ),
                    (
                        "failedFor",
                        if *transient { "transient" } else { "permanent" }.to_owned(),
                    ),
                ],
            ),
            Outcome::Retrying {
                reason,
                next_attempt_at,
            } => (
                JobStatus::Scheduled,
                vec![
                    ("lastError", reason.clone()),
                    ("nextAttemptAt", rfc3339(*next_attempt_at)),
                ],
            ),
            Outcome::Expired => (JobStatus::Expired, vec![]),
            Outcome::Cancelled => (JobStatus::Cancelled, vec![]),
        };
        let key = self.key(id);
        let mut cmd = super::evalsha(&FINISH, &[&key]);
        cmd.arg(status.as_str())
            .arg(attempts_made)
            .arg(owner)
            .arg(self.ttl.as_millis() as u64)
            .arg("updatedAt")
            .arg(rfc3339(now));
        for (field, value) in fields {
            cmd.arg(field).arg(value);
        }
        let mut writes = redis::pipe();
        beside(&mut writes);
        let stored: String = self.redis.eval_beside(&FINISH, cmd, writes).await?;
        stored
            .parse()
            .map_err(|reason| StoreError::Malformed { key, reason })
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::job::{ConversationTarget, UserTarget};

    const KEY: &str = "herald:job:invoice-77";

    fn record(to: Target) -> StatusRecord {
        let now = datetime!(2026-11-25 09:00 UTC);
        StatusRecord::new(&"invoice-77".parse().unwrap(), to, None, now)
    }

    fn user() -> Target {
        Target::User(UserTarget {
            tenant_id: "t".into(),
            aad_object_id: "u".into(),
        })
    }

    fn stored(record: &StatusRecord) -> HashMap<String, String> {
        record
            .fields()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect()
    }

    #[test]
    fn the_target_is_stored_as_it_always_was_and_read_back() {
        let to_user = record(user());
        let hash = stored(&to_user);
        // Keys sorted, as the records written when `to` was a `serde_json::Value` hold them.
        assert_eq!(hash["to"], r#"{"user":{"aadObjectId":"u","tenantId":"t"}}"#);
        assert_eq!(StatusRecord::from_hash(KEY, hash).unwrap(), to_user);

        let to_conversation = record(Target::Conversation(ConversationTarget {
            id: "a:1".into(),
            tenant_id: None,
            service_url: None,
        }));
        let hash = stored(&to_conversation);
        assert_eq!(hash["to"], r#"{"conversation":{"id":"a:1"}}"#);
        assert_eq!(StatusRecord::from_hash(KEY, hash).unwrap(), to_conversation);
    }

    #[test]
    fn the_answer_shows_the_target_as_it_always_did() {
        let answer = serde_json::to_string(&record(user())).unwrap();
        assert!(
            answer.contains(r#""to":{"user":{"aadObjectId":"u","tenantId":"t"}}"#),
            "{answer}"
        );
    }

    #[test]
    fn a_record_whose_target_does_not_parse_is_malformed() {
        for to in [Some(r#"{"pigeon":{}}"#), Some("null"), None] {
            let mut hash = stored(&record(user()));
            match to {
                Some(to) => hash.insert("to".into(), to.into()),
                None => hash.remove("to"),
            };
            let err = StatusRecord::from_hash(KEY, hash).unwrap_err();
            assert!(
                matches!(&err, StoreError::Malformed { key, reason }
                    if key == KEY && reason.contains("to")),
                "{to:?}: {err}"
            );
        }
    }
}

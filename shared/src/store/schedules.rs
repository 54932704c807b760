//! Recurring schedules as stored.
//!
//! Key `{ns}:schedule:{id}`, a hash: `definition` (JSON: target, message, recurrence as given,
//! normalised), `contentHash` (to tell a repeated `POST` from a different one), `paused`,
//! `generation` (bumped by every change), `createdAt`, `updatedAt`. Key
//! `{ns}:schedule-last:{id}`, a list: the job ids of the latest occurrences, newest first.

use std::{collections::HashMap, sync::LazyLock};

use redis::{AsyncCommands, Script};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{Redis, StoreError, parse_rfc3339, rfc3339};
use crate::{
    job::{JobId, Message, Target},
    schedule::{Recurrence, RecurrenceSpec, SHOWN, Schedule},
};

/// What a schedule asks for, as stored in `definition`.
#[derive(Debug, Serialize, Deserialize)]
struct Definition {
    to: Target,
    message: Message,
    recurrence: RecurrenceSpec,
}

/// KEYS: the schedule. ARGV: field, value, … Creates it unless it exists; answers the stored
/// hash (empty when it was created).
static CREATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HGETALL', KEYS[1]) end
redis.call('HSET', KEYS[1], unpack(ARGV))
return {}
"#,
    )
});

/// KEYS: the schedule. ARGV: now, then field, value, … Changes a schedule that exists and
/// bumps its generation; answers the hash as it then is (empty: no such schedule).
static CHANGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
redis.call('HINCRBY', KEYS[1], 'generation', 1)
redis.call('HSET', KEYS[1], 'updatedAt', ARGV[1])
if #ARGV > 1 then redis.call('HSET', KEYS[1], unpack(ARGV, 2)) end
return redis.call('HGETALL', KEYS[1])
"#,
    )
});

/// A change to a schedule: what is `None` stays.
#[derive(Debug, Clone, Default)]
pub struct ScheduleChange {
    pub paused: Option<bool>,
    pub message: Option<Message>,
    pub recurrence: Option<Recurrence>,
}

#[derive(Debug, Clone)]
pub struct ScheduleStore {
    redis: Redis,
}

impl ScheduleStore {
    pub fn new(redis: Redis) -> Self {
        Self { redis }
    }

    /// Stores a new schedule, unless one with its id exists: then answers that one and its
    /// content hash, to tell a repeated request from a different one.
    pub async fn create(
        &self,
        schedule: &Schedule,
        content_hash: &str,
    ) -> Result<Result<(), (Schedule, Option<String>)>, StoreError> {
        let key = self.key(&schedule.id);
        let mut fields = fields(schedule)?;
        fields.push(("contentHash", content_hash.to_owned()));
        let mut invocation = CREATE.prepare_invoke();
        invocation.key(&key);
        for (field, value) in &fields {
            invocation.arg(*field).arg(value);
        }
        let existing: HashMap<String, String> =
            invocation.invoke_async(&mut self.redis.conn()).await?;
        if existing.is_empty() {
            return Ok(Ok(()));
        }
        let hash = existing.get("contentHash").cloned();
        Ok(Err((from_hash(&key, &schedule.id, existing)?, hash)))
    }

    pub async fn get(&self, id: &str) -> Result<Option<Schedule>, StoreError> {
        let key = self.key(id);
        let hash: HashMap<String, String> = self.redis.conn().hgetall(&key).await?;
        if hash.is_empty() {
            return Ok(None);
        }
        from_hash(&key, id, hash).map(Some)
    }

    /// Applies `change` and bumps the generation; `None` if there is no such schedule.
    pub async fn change(
        &self,
        id: &str,
        change: &ScheduleChange,
        now: OffsetDateTime,
    ) -> Result<Option<Schedule>, StoreError> {
        let key = self.key(id);
        let Some(current) = self.get(id).await? else {
            return Ok(None);
        };
        let mut invocation = CHANGE.prepare_invoke();
        invocation.key(&key).arg(rfc3339(now));
        if change.message.is_some() || change.recurrence.is_some() {
            let definition = Definition {
                to: current.to.clone(),
                message: change.message.clone().unwrap_or(current.message),
                recurrence: change
                    .recurrence
                    .as_ref()
                    .unwrap_or(&current.recurrence)
                    .spec(),
            };
            invocation
                .arg("definition")
                .arg(serde_json::to_string(&definition).map_err(|e| malformed(&key, e))?);
        }
        if let Some(paused) = change.paused {
            invocation.arg("paused").arg(u8::from(paused));
        }
        let hash: HashMap<String, String> = invocation.invoke_async(&mut self.redis.conn()).await?;
        if hash.is_empty() {
            return Ok(None);
        }
        from_hash(&key, id, hash).map(Some)
    }

    /// Deletes the schedule; false if there was none.
    pub async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        let mut conn = self.redis.conn();
        let (deleted, _): (u32, u32) = futures_util::future::try_join(
            conn.clone().del::<_, u32>(self.key(id)),
            conn.del::<_, u32>(self.last_key(id)),
        )
        .await?;
        Ok(deleted == 1)
    }

    /// Notes that an occurrence's job was queued.
    pub async fn note_occurrence(&self, id: &str, job_id: &JobId) -> Result<(), StoreError> {
        let key = self.last_key(id);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .lrem(&key, 0, job_id.as_str())
            .ignore()
            .lpush(&key, job_id.as_str())
            .ignore()
            .ltrim(&key, 0, SHOWN as isize - 1)
            .ignore();
        let () = pipe.query_async(&mut self.redis.conn()).await?;
        Ok(())
    }

    /// The job ids of the latest occurrences, newest first.
    pub async fn last_occurrences(&self, id: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .redis
            .conn()
            .lrange(self.last_key(id), 0, SHOWN as isize - 1)
            .await?)
    }

    fn key(&self, id: &str) -> String {
        self.redis.key("schedule", id)
    }

    fn last_key(&self, id: &str) -> String {
        self.redis.key("schedule-last", id)
    }
}

fn malformed(key: &str, reason: impl std::fmt::Display) -> StoreError {
    StoreError::Malformed {
        key: key.to_owned(),
        reason: reason.to_string(),
    }
}

fn fields(schedule: &Schedule) -> Result<Vec<(&'static str, String)>, StoreError> {
    let definition = Definition {
        to: schedule.to.clone(),
        message: schedule.message.clone(),
        recurrence: schedule.recurrence.spec(),
    };
    Ok(vec![
        (
            "definition",
            serde_json::to_string(&definition).map_err(|e| malformed(&schedule.id, e))?,
        ),
        ("paused", u8::from(schedule.paused).to_string()),
        ("generation", schedule.generation.to_string()),
        ("createdAt", rfc3339(schedule.created_at)),
        ("updatedAt", rfc3339(schedule.updated_at)),
    ])
}

fn from_hash(key: &str, id: &str, hash: HashMap<String, String>) -> Result<Schedule, StoreError> {
    let field = |name: &str| {
        hash.get(name)
            .ok_or_else(|| malformed(key, format!("no {name}")))
    };
    let definition: Definition =
        serde_json::from_str(field("definition")?).map_err(|e| malformed(key, e))?;
    let time = |name: &str| {
        field(name).and_then(|text| {
            parse_rfc3339(text).ok_or_else(|| malformed(key, format!("bad {name}")))
        })
    };
    Ok(Schedule {
        id: id.to_owned(),
        to: definition.to,
        message: definition.message,
        recurrence: Recurrence::from_spec(&definition.recurrence).map_err(|e| malformed(key, e))?,
        paused: field("paused")? == "1",
        generation: field("generation")?
            .parse()
            .map_err(|e| malformed(key, e))?,
        created_at: time("createdAt")?,
        updated_at: time("updatedAt")?,
    })
}

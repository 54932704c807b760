//! Timers: messages parked in Redis until they are due for the dispatch queue.
//!
//! A wait costs the same whatever its length, and nothing while it waits: a parked message is
//! one member of a sorted set (scored by its due time) and one hash field (the message), and
//! only what is due is ever read. The design is Sidekiq's scheduled set and BullMQ's delayed
//! set:
//!
//! - [`TimerStore::park`] writes both at once, on Redis' clock (one clock for every replica).
//! - [`TimerStore::claim`] takes what is due, atomically, and *leases* it: its score moves
//!   [`LEASE`] into the future, so no other claimer takes it meanwhile, and if the claimer dies
//!   before it has published, the message comes due again when the lease ends. Nothing is
//!   lost to a SIGKILL; a message whose publish outlives its lease may be published twice,
//!   which the dispatcher's send lease makes effectively once. Each claim gets a token of its
//!   own (a per-partition sequence), noted beside the timer.
//! - [`TimerStore::release`] removes it once the broker has confirmed the publish, and only
//!   if the claim's token is still the timer's (parked again, put back or claimed by another
//!   meanwhile, it stays); [`TimerStore::put_back`] makes a claimed message due again at once
//!   when its publish failed.
//!
//! Timers are spread over [`PARTITIONS`] partitions by a stable hash of their id, each a few
//! keys sharing a hash tag (`{ns}:timers:{p3}:due`, `…:parked`, `…:claims`, the token of each
//! claimed timer's claim, and `…:claim-seq`, where tokens come from), so every script touches
//! one Redis Cluster slot, the partitions spread over a cluster's masters, and replicas claim
//! from different partitions side by side. A timer's id is its message's id: parking the same
//! message again (a redelivered copy, a repeated submission) replaces it instead of adding one.
//!
//! With Redis' append-only file on, parked messages survive a Redis restart like every other
//! record Herald keeps there. On a Redis Cluster, a park waits for a replica to have it
//! (`WAIT`), since Redis replicates asynchronously and a parked message is the only copy of its
//! job: a master killed right after a park would otherwise take it along in the failover.

use std::{
    sync::{Arc, LazyLock, Mutex},
    time::{Duration, Instant},
};

use lapin::types::FieldTable;
use redis::Script;
use serde::{Deserialize, Serialize};

use super::{Redis, StoreError};
use crate::amqp::DispatchMessage;

/// How many partitions timers are spread over. Part of the stored layout: changing it strands
/// the timers parked in partitions that no longer exist.
pub const PARTITIONS: u32 = 8;

/// How long parks skip waiting for a replica of a master that had none.
const UNREPLICATED_SKIP: Duration = Duration::from_secs(30);

/// How long a claimed message is kept from other claimers while it is published. Well beyond
/// the broker's confirm timeout, so that only a claimer that died gives its messages up.
pub const LEASE: Duration = Duration::from_secs(30);

/// A message's properties, stored as one JSON line in front of its body.
#[derive(Serialize, Deserialize)]
struct Envelope<'a> {
    id: std::borrow::Cow<'a, str>,
    #[serde(rename = "type")]
    amqp_type: std::borrow::Cow<'a, str>,
    headers: FieldTable,
}

/// The stored form of a message: its properties as a JSON line (serde_json writes no raw
/// newline), then the body's bytes as they are.
fn encode(message: &DispatchMessage) -> Vec<u8> {
    let envelope = Envelope {
        id: message.id.as_str().into(),
        amqp_type: message.amqp_type.as_str().into(),
        headers: message.headers.clone(),
    };
    let mut stored = serde_json::to_vec(&envelope).expect("an envelope always serializes");
    stored.push(b'\n');
    stored.extend_from_slice(&message.body);
    stored
}

fn decode(stored: &[u8]) -> Result<DispatchMessage, String> {
    let newline = stored
        .iter()
        .position(|b| *b == b'\n')
        .ok_or("no properties line")?;
    let envelope: Envelope =
        serde_json::from_slice(&stored[..newline]).map_err(|e| e.to_string())?;
    Ok(DispatchMessage {
        id: envelope.id.into_owned(),
        amqp_type: envelope.amqp_type.into_owned(),
        headers: envelope.headers,
        body: stored[newline + 1..].to_vec(),
    })
}

/// A timer taken by a claim, leased to the claimer until it releases or puts it back.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: String,
    /// The message as stored; [`Claimed::message`] reads it.
    pub stored: Vec<u8>,
    /// How long after its due time it was claimed.
    pub lag: Duration,
    partition: u32,
    /// The claim's token: only while the timer still holds it may this claim release the
    /// timer or put it back.
    token: i64,
}

impl Claimed {
    /// The parked message, or why its stored form does not read.
    pub fn message(&self) -> Result<DispatchMessage, String> {
        decode(&self.stored)
    }
}

/// KEYS: due set, parked hash, claims hash. ARGV: id, delay ms, stored message. A timer
/// parked again belongs to no claim: a claim publishing its older message cannot remove it.
static PARK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return now + tonumber(ARGV[2])
"#,
    )
});

/// KEYS: due set, parked hash, claims hash, claim sequence. ARGV: lease ms, at most this many.
/// Answers {now, {id, …}, {due, …}, {stored, …}, {token, …}}; a timer whose message is missing
/// (only a hand-made change leaves one) is removed, as there is nothing to send.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
local ids, dues, stored, tokens = {}, {}, {}, {}
local lease_end = now + tonumber(ARGV[1])
for i = 1, #due, 2 do
  local id = due[i]
  local message = redis.call('HGET', KEYS[2], id)
  if message then
    local token = redis.call('INCR', KEYS[4])
    redis.call('ZADD', KEYS[1], lease_end, id)
    redis.call('HSET', KEYS[3], id, token)
    ids[#ids + 1] = id
    dues[#dues + 1] = due[i + 1]
    stored[#stored + 1] = message
    tokens[#tokens + 1] = token
  else
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[3], id)
  end
end
return {now, ids, dues, stored, tokens}
"#,
    )
});

/// KEYS: due set, parked hash, claims hash. ARGV: id, the claim's token. Removes the timer if
/// it is still that claim's.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HGET', KEYS[3], ARGV[1]) == ARGV[2] then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
  return 1
end
return 0
"#,
    )
});

/// KEYS: due set, claims hash. ARGV: id, the claim's token. Makes the timer due now, and no
/// claim's, if it is still that claim's.
static PUT_BACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] then
  local t = redis.call('TIME')
  redis.call('ZADD', KEYS[1], tonumber(t[1]) * 1000, ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  return 1
end
return 0
"#,
    )
});

/// Timers in Redis; see the module docs.
#[derive(Debug, Clone)]
pub struct TimerStore {
    redis: Redis,
    /// The keys' family (`timers`, `outbox`, …): each family is a store of its own, with the
    /// same layout and the same guarantees.
    family: &'static str,
    lease: Duration,
    /// Per partition: until when its master is known to have no replica to wait for.
    unreplicated: Arc<Mutex<[Option<Instant>; PARTITIONS as usize]>>,
}

impl TimerStore {
    /// The dispatch queue's timers.
    pub fn new(redis: Redis) -> Self {
        Self::family(redis, "timers")
    }

    /// Another store of parked messages under keys `{ns}:{family}:…` (the events' outbox,
    /// webhook deliveries waiting for their next attempt).
    pub fn family(redis: Redis, family: &'static str) -> Self {
        Self {
            redis,
            family,
            lease: LEASE,
            unreplicated: Arc::default(),
        }
    }

    /// The same store, leasing what it claims for `lease` instead of [`LEASE`] (tests that
    /// play a claimer that dies use a short one).
    pub fn with_lease(self, lease: Duration) -> Self {
        Self { lease, ..self }
    }

    /// Parks `message` until `delay` from now (Redis' now), replacing a timer of the same id.
    /// Answers the due time (Unix ms, Redis' clock).
    pub async fn park(
        &self,
        message: &DispatchMessage,
        delay: Duration,
    ) -> Result<i64, StoreError> {
        let partition = partition_of(&message.id);
        let due_key = self.due_key(partition);
        let due: i64 = PARK
            .key(&due_key)
            .key(self.parked_key(partition))
            .key(self.key(partition, "claims"))
            .arg(&message.id)
            .arg(delay.as_millis() as u64)
            .arg(encode(message))
            .invoke_async(&mut self.redis.conn())
            .await?;
        // A parked message is the only copy of its job (the delivery it came from is acked
        // next), so on a Redis Cluster it is on a replica before that: a master that dies
        // right after cannot take it with it. A master that has no replica (its own was
        // promoted in a failover and has none yet) is not waited for again for a while.
        let unreplicated = self
            .unreplicated
            .lock()
            .is_ok_and(|until| until[partition as usize].is_some_and(|t| t > Instant::now()));
        if !unreplicated && !self.redis.replicated(&due_key).await? {
            tracing::warn!(
                partition,
                "no replica confirmed a parked message in time; a failover now could lose what this master holds"
            );
            if let Ok(mut until) = self.unreplicated.lock() {
                until[partition as usize] = Some(Instant::now() + UNREPLICATED_SKIP);
            }
        }
        Ok(due)
    }

    /// Claims up to `limit` due timers of `partition`, earliest first, leasing each (for
    /// [`LEASE`], unless the store was made with another).
    pub async fn claim(&self, partition: u32, limit: usize) -> Result<Vec<Claimed>, StoreError> {
        type Answer = (i64, Vec<String>, Vec<f64>, Vec<Vec<u8>>, Vec<i64>);
        let (now, ids, dues, stored, tokens): Answer = CLAIM
            .key(self.due_key(partition))
            .key(self.parked_key(partition))
            .key(self.key(partition, "claims"))
            .key(self.key(partition, "claim-seq"))
            .arg(self.lease.as_millis() as u64)
            .arg(limit)
            .invoke_async(&mut self.redis.conn())
            .await?;
        Ok(ids
            .into_iter()
            .zip(dues)
            .zip(stored)
            .zip(tokens)
            .map(|(((id, due), stored), token)| Claimed {
                id,
                stored,
                lag: Duration::from_millis((now as f64 - due).max(0.0) as u64),
                partition,
                token,
            })
            .collect())
    }

    /// Removes a claimed timer, its message published (or set aside). False if it was parked again
    /// meanwhile (the new timer stays).
    pub async fn release(&self, claimed: &Claimed) -> Result<bool, StoreError> {
        let removed: i32 = RELEASE
            .key(self.due_key(claimed.partition))
            .key(self.parked_key(claimed.partition))
            .key(self.key(claimed.partition, "claims"))
            .arg(&claimed.id)
            .arg(claimed.token)
            .invoke_async(&mut self.redis.conn())
            .await?;
        Ok(removed == 1)
    }

    /// Makes a claimed timer due again at once: its publish failed.
    pub async fn put_back(&self, claimed: &Claimed) -> Result<(), StoreError> {
        let _: i32 = PUT_BACK
            .key(self.due_key(claimed.partition))
            .key(self.key(claimed.partition, "claims"))
            .arg(&claimed.id)
            .arg(claimed.token)
            .invoke_async(&mut self.redis.conn())
            .await?;
        Ok(())
    }

    /// Removes the timer of message `id`, if there is one (a cancelled job's, say).
    pub async fn forget(&self, id: &str) -> Result<(), StoreError> {
        self.forget_many(&[id]).await
    }

    /// Removes the timers of messages `ids`, in one round trip. Not atomic, and need not be: a
    /// due time whose message is gone is dropped by the next claim.
    pub async fn forget_many(&self, ids: &[&str]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            let partition = partition_of(id);
            pipe.zrem(self.due_key(partition), id)
                .ignore()
                .hdel(self.parked_key(partition), id)
                .ignore()
                .hdel(self.key(partition, "claims"), id)
                .ignore();
        }
        let () = pipe.query_async(&mut self.redis.conn()).await?;
        Ok(())
    }

    /// How many timers are parked (due or not, leased or not), over every partition.
    pub async fn waiting(&self) -> Result<u64, StoreError> {
        let counts = (0..PARTITIONS).map(|partition| {
            let mut conn = self.redis.conn();
            let key = self.due_key(partition);
            async move {
                redis::cmd("ZCARD")
                    .arg(key)
                    .query_async::<u64>(&mut conn)
                    .await
            }
        });
        Ok(futures_util::future::try_join_all(counts)
            .await?
            .into_iter()
            .sum())
    }

    /// When the earliest timer of `id`'s partition is due, if it holds `id` (for tests and
    /// operators: "is this job waiting, and until when?").
    pub async fn due_ms(&self, id: &str) -> Result<Option<i64>, StoreError> {
        let score: Option<f64> = redis::cmd("ZSCORE")
            .arg(self.due_key(partition_of(id)))
            .arg(id)
            .query_async(&mut self.redis.conn())
            .await?;
        Ok(score.map(|s| s as i64))
    }

    fn due_key(&self, partition: u32) -> String {
        self.key(partition, "due")
    }

    fn parked_key(&self, partition: u32) -> String {
        self.key(partition, "parked")
    }

    /// `{ns}:{family}:{p<partition>}:<name>`: a partition's keys share a hash tag.
    fn key(&self, partition: u32, name: &str) -> String {
        format!(
            "{}:{}:{{p{partition}}}:{name}",
            self.redis.namespace(),
            self.family
        )
    }
}

/// The partition of timer `id`: FNV-1a of its bytes, which never changes between versions
/// (the standard library's hasher may).
pub fn partition_of(id: &str) -> u32 {
    let hash = id.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    });
    hash % PARTITIONS
}

#[cfg(test)]
mod tests {
    use lapin::types::{AMQPValue, LongString};

    use super::*;

    #[test]
    fn a_stored_message_reads_back_as_it_was() {
        let mut headers = FieldTable::default();
        headers.insert("x-herald-attempts".into(), AMQPValue::LongLongInt(2));
        headers.insert(
            "traceparent".into(),
            AMQPValue::LongString(LongString::from("00-abc-def-01")),
        );
        let message = DispatchMessage {
            id: "job-1".into(),
            amqp_type: "notification.v1".into(),
            headers,
            // A body may hold newlines; only the first one ends the properties.
            body: b"{\"id\":\"job-1\",\n\"x\":1}\n".to_vec(),
        };
        assert_eq!(decode(&encode(&message)), Ok(message));
    }

    #[test]
    fn a_stored_form_without_properties_is_refused_with_a_reason() {
        assert!(decode(b"{\"id\":1}").is_err());
        assert!(decode(b"not json\n{}").is_err());
    }

    #[test]
    fn partitions_are_stable_and_spread() {
        // The layout depends on these never changing.
        assert_eq!(partition_of(""), 0x811c_9dc5 % PARTITIONS);
        assert_eq!(partition_of("job-1"), partition_of("job-1"));
        let mut used = [0u32; PARTITIONS as usize];
        for i in 0..8_000 {
            used[partition_of(&format!("job-{i}")) as usize] += 1;
        }
        assert!(used.iter().all(|n| (800..1_200).contains(n)), "{used:?}");
    }
}

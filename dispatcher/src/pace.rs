//! Pacing: Teams' per-conversation and per-tenant limits, held across every dispatcher replica
//! together, so that Teams never needs to answer 429.
//!
//! Each scope (a conversation, a tenant) keeps a log of its recent sends in a sorted set; a
//! send is admitted only if every sliding window (`7/1s`, `60/30s`, …) still has room. One
//! script does the whole decision in one round trip, on Redis' clock (the same for every
//! replica). When a send must wait, the script also *reserves* its turn in the scope's queue:
//! the k-th waiter is told to come back k intervals later (the window that held it back,
//! divided by its count), so a backlog returns spread out at the rate instead of all at once.
//!
//! The queue is binding: while turns are handed out, a newcomer queues behind them even if the
//! windows have room, and a caller whose turn has come ([`Admission::Wait`]'s `turn`, passed
//! back to [`Pacer::admit`]) goes before any newcomer, keeping its place while it waits for
//! the window. Without that, a send that happened to arrive when a slot was free took the slot
//! of the job whose turn it was, which went to the back of the queue: a tenant's backlog ran
//! at 45 a second instead of 49. A 429 from Teams pauses the whole tenant for its
//! `Retry-After`.
//!
//! Keys share a hash tag per tenant (`{ns}:pace:{t:<tenant>}:…`), so the script's keys sit in
//! one Redis Cluster slot.

use std::sync::LazyLock;

use redis::Script;
use std::time::Duration;

use herald_shared::{
    config::RateLimits,
    store::{Redis, StoreError},
};

/// The pacer's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Send now; the send is logged against the limits. Tell the pacer when it is done
    /// ([`Pacer::sent`]).
    Now(PacedSend),
    /// Come back after `wait`, and present `turn` (Redis time, Unix ms) then: the send's place
    /// in the queue.
    Wait { wait: Duration, turn: u64 },
}

/// A send the pacer admitted: where it is logged, under which member.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PacedSend {
    member: String,
    /// The logs it is counted in (none when pacing is off).
    logs: Vec<String>,
}

/// How late a caller may present its turn and still be served as the holder of it (its timer
/// was claimed late, or its dispatcher was busy); later, it queues again.
const TURN_GRACE_MS: u64 = 5_000;

/// KEYS: conversation log, conversation queue, tenant log, tenant queue, tenant pause.
/// ARGV: member, n conversation limits, then n pairs (count, window ms), m tenant limits, then
/// m pairs, the caller's turn (0: none), the turn grace (ms).
/// A queue is a hash: `next`, the next free turn, and `interval`, the spacing of turns.
/// Answers {admitted, wait ms, turn}.
static ADMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local pause = tonumber(redis.call('GET', KEYS[5]) or '0')
if pause > now then return {0, pause - now, 0} end

-- The wait a scope's log imposes, and the turn spacing of the window that imposes it.
local function wait_of(log, first, n)
  local wait, interval = 0, 0
  for i = 0, n - 1 do
    local count, window = tonumber(ARGV[first + 2 * i]), tonumber(ARGV[first + 2 * i + 1])
    local used = redis.call('ZCOUNT', log, '(' .. (now - window), '+inf')
    if used >= count then
      local oldest = redis.call('ZRANGEBYSCORE', log, '(' .. (now - window), '+inf', 'WITHSCORES', 'LIMIT', used - count, 1)
      local w = tonumber(oldest[2]) + window - now + 1
      if w > wait then wait, interval = w, window / count end
    end
  end
  return wait, interval
end

local function queue_of(key)
  local q = redis.call('HMGET', key, 'next', 'interval')
  return tonumber(q[1] or '0'), tonumber(q[2] or '0')
end

local conv_n = tonumber(ARGV[2])
local tenant_first = 3 + 2 * conv_n
local tenant_n = tonumber(ARGV[tenant_first])
local turn = tonumber(ARGV[tenant_first + 1 + 2 * tenant_n])
local grace = tonumber(ARGV[tenant_first + 2 + 2 * tenant_n])
local conv_wait, conv_interval = wait_of(KEYS[1], 3, conv_n)
local tenant_wait, tenant_interval = wait_of(KEYS[3], tenant_first + 1, tenant_n)
local conv_next, conv_spacing = queue_of(KEYS[2])
local tenant_next, tenant_spacing = 0, 0
if tenant_n > 0 then tenant_next, tenant_spacing = queue_of(KEYS[4]) end

local holder = turn > 0 and turn <= now and now - turn <= grace
local queued = not holder and (conv_next > now or tenant_next > now)

if conv_wait == 0 and tenant_wait == 0 and not queued then
  local longest = 1000
  for i = 0, conv_n - 1 do longest = math.max(longest, tonumber(ARGV[4 + 2 * i])) end
  redis.call('ZADD', KEYS[1], now, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - longest)
  redis.call('PEXPIRE', KEYS[1], longest)
  if tenant_n > 0 then
    local tenant_longest = 1000
    for i = 0, tenant_n - 1 do tenant_longest = math.max(tenant_longest, tonumber(ARGV[tenant_first + 2 + 2 * i])) end
    redis.call('ZADD', KEYS[3], now, ARGV[1])
    redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tenant_longest)
    redis.call('PEXPIRE', KEYS[3], tenant_longest)
  end
  return {1, 0, 0}
end

-- A holder keeps its place: it comes back as soon as the windows have room.
if holder then return {0, math.max(conv_wait, tenant_wait, 1), turn} end

-- Anyone else takes the next turn in the scope that holds it back (or whose queue it joins).
local queue, wait, interval, next_free = KEYS[2], conv_wait, conv_interval, conv_next
if tenant_wait > conv_wait or (tenant_wait == conv_wait and tenant_next > conv_next) then
  queue, wait, interval, next_free = KEYS[4], tenant_wait, tenant_interval, tenant_next
end
if interval == 0 then
  if queue == KEYS[2] then interval = conv_spacing else interval = tenant_spacing end
end
local at = math.max(next_free, now + wait)
redis.call('HSET', queue, 'next', at + interval, 'interval', math.max(interval, 1))
redis.call('PEXPIRE', queue, math.ceil(at + interval - now) + 1000)
return {0, math.ceil(at - now), math.ceil(at)}
"#,
    )
});

/// A send is done: its entries in the logs move to now (never earlier), and each log lives
/// that much longer. KEYS: the logs; ARGV: the member.
static SENT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #KEYS do
  local admitted = tonumber(redis.call('ZSCORE', KEYS[i], ARGV[1]) or now)
  if admitted < now then
    redis.call('ZADD', KEYS[i], 'XX', now, ARGV[1])
    local ttl = redis.call('PTTL', KEYS[i])
    if ttl > 0 then redis.call('PEXPIRE', KEYS[i], ttl + now - admitted) end
  end
end
return 0
"#,
    )
});

/// Pauses a tenant until a time, never shortening a pause already set.
static PAUSE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = now + tonumber(ARGV[1])
if until_ms > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], until_ms, 'PX', tonumber(ARGV[1]) + 1000)
end
return until_ms
"#,
    )
});

/// Added to every window. A finished send is counted from when its call ended ([`Pacer::sent`]),
/// never before Teams counted it; the margin covers what that cannot: a send still in flight,
/// and Teams' own idea of where a window starts. At 50 a second, 10 ms costs 1 %.
const SAFETY_MARGIN_MS: u64 = 10;

#[derive(Debug, Clone)]
pub struct Pacer {
    redis: Redis,
    conversation_limits: RateLimits,
    tenant_limits: RateLimits,
}

impl Pacer {
    pub fn new(redis: Redis, conversation_limits: RateLimits, tenant_limits: RateLimits) -> Self {
        Self {
            redis,
            conversation_limits,
            tenant_limits,
        }
    }

    fn key(&self, tenant: &str, rest: &str) -> String {
        self.redis.key("pace", &format!("{{t:{tenant}}}:{rest}"))
    }

    /// Asks to send to `thread` (a conversation, in `tenant` when known) now; `turn` is the
    /// one an earlier answer gave this send, if any.
    pub async fn admit(
        &self,
        tenant: Option<&str>,
        thread: &str,
        turn: Option<u64>,
    ) -> Result<Admission, StoreError> {
        if self.conversation_limits.is_off() && (self.tenant_limits.is_off() || tenant.is_none()) {
            return Ok(Admission::Now(PacedSend::default()));
        }
        // A conversation of unknown tenant is paced on its own.
        let scope = tenant.unwrap_or("-");
        let tenant_limits = if tenant.is_some() {
            &self.tenant_limits.0[..]
        } else {
            &[]
        };
        let member = uuid::Uuid::new_v4().simple().to_string();
        let conversation_log = self.key(scope, &format!("conv:{thread}"));
        let tenant_log = self.key(scope, "tenant");
        let mut cmd = ADMIT.prepare_invoke();
        cmd.key(&conversation_log)
            .key(self.key(scope, &format!("conv-queue:{thread}")))
            .key(&tenant_log)
            .key(self.key(scope, "tenant-queue"))
            .key(self.key(scope, "pause"))
            .arg(&member);
        for limits in [&self.conversation_limits.0[..], tenant_limits] {
            cmd.arg(limits.len());
            for limit in limits {
                cmd.arg(limit.count)
                    .arg(limit.window.as_millis() as u64 + SAFETY_MARGIN_MS);
            }
        }
        cmd.arg(turn.unwrap_or(0)).arg(TURN_GRACE_MS);
        let (admitted, wait_ms, turn): (u8, u64, u64) =
            cmd.invoke_async(&mut self.redis.conn()).await?;
        Ok(if admitted == 1 {
            let mut logs = vec![conversation_log];
            if !tenant_limits.is_empty() {
                logs.push(tenant_log);
            }
            Admission::Now(PacedSend { member, logs })
        } else {
            Admission::Wait {
                wait: Duration::from_millis(wait_ms),
                turn,
            }
        })
    }

    /// The send is done (answered, or failed): its log entries move from the moment it was
    /// admitted to now. Teams counts a send when it arrives, somewhere between the two, so a
    /// window that counts it from its end never lets a later send in too early, however long
    /// this one took on the way (a new connection, a slow network). Called after every call.
    pub async fn sent(&self, send: &PacedSend) -> Result<(), StoreError> {
        if send.logs.is_empty() {
            return Ok(());
        }
        let mut cmd = SENT.prepare_invoke();
        for log in &send.logs {
            cmd.key(log);
        }
        cmd.arg(&send.member)
            .invoke_async::<i64>(&mut self.redis.conn())
            .await?;
        Ok(())
    }

    /// Teams throttled this tenant: every replica holds its sends for `retry_after`.
    pub async fn pause_tenant(
        &self,
        tenant: &str,
        retry_after: Duration,
    ) -> Result<(), StoreError> {
        PAUSE
            .key(self.key(tenant, "pause"))
            .arg(retry_after.as_millis().max(1) as u64)
            .invoke_async::<i64>(&mut self.redis.conn())
            .await?;
        Ok(())
    }
}

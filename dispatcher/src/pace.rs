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
//! Broadcasts' messages are [`Class::Bulk`]: they queue for turns of their own, handed out only
//! while no priority turn (a single notification, a reminder) is waiting, so a reminder waits
//! at most about one turn behind a broadcast of its tenant however long the broadcast is, and
//! a broadcast alone still gets the whole rate.
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

/// Which sends of a tenant go first when both kinds wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Single notifications, reminders, schedules' occurrences, edits of them.
    Priority,
    /// A broadcast's messages: they take what priority sends leave of the tenant's rate.
    Bulk,
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

/// KEYS: conversation log, conversation queue, tenant log, tenant queue, tenant pause, tenant
/// bulk queue.
/// ARGV: member, n conversation limits, then n pairs (count, window ms with the margin added),
/// m tenant limits, then m pairs, the caller's turn (0: none), the turn grace (ms), bulk ('1')
/// or priority ('0'), the requests the send makes of the tenant (1, or 2 when it creates its
/// chat first: then it is logged as `member` and `member+`).
/// A queue is a hash: `next`, the next free turn, and `interval`, the spacing of turns.
/// Answers {admitted, wait ms, turn}.
static ADMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local pause = tonumber(redis.call('GET', KEYS[5]) or '0')
if pause > now then return {0, pause - now, 0} end

-- The wait a scope's log imposes on `weight` more requests, and the turn spacing of the
-- window that imposes it.
local function wait_of(log, first, n, weight)
  local wait, interval = 0, 0
  for i = 0, n - 1 do
    local count, window = tonumber(ARGV[first + 2 * i]), tonumber(ARGV[first + 2 * i + 1])
    local used = redis.call('ZCOUNT', log, '(' .. (now - window), '+inf')
    -- A window smaller than the weight takes the send once it is empty.
    local need = math.min(weight, count)
    if used + need > count then
      local oldest = redis.call('ZRANGEBYSCORE', log, '(' .. (now - window), '+inf', 'WITHSCORES', 'LIMIT', used + need - count - 1, 1)
      local w = window
      -- The oldest entry in the way leaves the window (whose start is exclusive) once it is
      -- a whole window old.
      if oldest[2] then w = tonumber(oldest[2]) + window - now end
      -- Turns are spaced by the window with its margin: in a backlog every send is in flight
      -- for a while before it ends and gives the margin back, and turns spaced by the bare
      -- window come faster than room does, so holders pile up, polling, and fill the
      -- dispatcher's deliveries.
      if w > wait then wait, interval = w, window / count end
    end
  end
  return wait, interval
end

-- The spacing a scope's limits allow `weight`-request sends, in ms: that of its strictest
-- window (with its margin, as above).
local function spacing_of(first, n, weight)
  local spacing = 0
  for i = 0, n - 1 do
    local count, window = tonumber(ARGV[first + 2 * i]), tonumber(ARGV[first + 2 * i + 1])
    spacing = math.max(spacing, window / count * weight)
  end
  return spacing
end

-- The least spacing a queue remembers, in ms: turns are fractional (a tenant at 5,000 a
-- second and two requests a send gets one every 0.4 ms), and a whole millisecond here would
-- cap every queue at 1,000 turns a second, whatever the rate.
local MIN_SPACING = 0.001

local function queue_of(key)
  local q = redis.call('HMGET', key, 'next', 'interval')
  return tonumber(q[1] or '0'), tonumber(q[2] or '0')
end

local conv_n = tonumber(ARGV[2])
local tenant_first = 3 + 2 * conv_n
local tenant_n = tonumber(ARGV[tenant_first])
local turn = tonumber(ARGV[tenant_first + 1 + 2 * tenant_n])
local grace = tonumber(ARGV[tenant_first + 2 + 2 * tenant_n])
-- A send that first creates its chat is two requests to the tenant (the chat's creation
-- and the message), one to the conversation.
local weight = tonumber(ARGV[tenant_first + 4 + 2 * tenant_n])
local conv_wait, conv_interval = wait_of(KEYS[1], 3, conv_n, 1)
local tenant_wait, tenant_interval = wait_of(KEYS[3], tenant_first + 1, tenant_n, weight)
tenant_interval = tenant_interval * weight
local conv_next, conv_spacing = queue_of(KEYS[2])
local tenant_next, tenant_spacing = 0, 0
if tenant_n > 0 then tenant_next, tenant_spacing = queue_of(KEYS[4]) end

local holder = turn > 0 and turn <= now and now - turn <= grace
-- Bulk work (a broadcast's messages) has a queue of its own and goes only when no
-- priority turn is handed out: priority work never queues behind it.
local bulk = ARGV[tenant_first + 3 + 2 * tenant_n] == '1' and tenant_n > 0
local priority_queued = conv_next > now or tenant_next > now
local bulk_next, bulk_spacing = 0, 0
if bulk then bulk_next, bulk_spacing = queue_of(KEYS[6]) end
local queued
if bulk then
  queued = priority_queued or (not holder and bulk_next > now)
else
  queued = not holder and priority_queued
end

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
    if weight > 1 then redis.call('ZADD', KEYS[3], now, ARGV[1] .. '+') end
    redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tenant_longest)
    redis.call('PEXPIRE', KEYS[3], tenant_longest)
  end
  return {1, 0, 0}
end

-- A holder keeps its place: it comes back as soon as the windows have room (and, for bulk
-- work, once the priority turns handed out have passed).
if holder then
  local wait = math.max(conv_wait, tenant_wait, 1)
  if bulk then wait = math.max(wait, conv_next - now, tenant_next - now) end
  return {0, wait, turn}
end

if bulk then
  if tenant_wait == 0 and bulk_next <= now and tenant_next <= now then
    -- Held back by its own conversation alone: it waits for that (and comes back as the
    -- holder of its turn) without holding up the tenant's other bulk work.
    local at = math.max(now + conv_wait, conv_next)
    return {0, math.ceil(at - now), math.ceil(at)}
  end
  local interval = tenant_interval
  if interval == 0 then
    interval = math.max(bulk_spacing, tenant_spacing, spacing_of(tenant_first + 1, tenant_n, weight))
  end
  local at = math.max(bulk_next, now + math.max(conv_wait, tenant_wait), conv_next, tenant_next)
  redis.call('HSET', KEYS[6], 'next', at + interval, 'interval', math.max(interval, MIN_SPACING))
  redis.call('PEXPIRE', KEYS[6], math.ceil(at + interval - now) + 1000)
  return {0, math.ceil(at - now), math.ceil(at)}
end

-- Anyone else takes the next turn in the scope that holds it back (or whose queue it joins).
local queue, wait, interval, next_free = KEYS[2], conv_wait, conv_interval, conv_next
if tenant_wait > conv_wait or (tenant_wait == conv_wait and tenant_next > conv_next) then
  queue, wait, interval, next_free = KEYS[4], tenant_wait, tenant_interval, tenant_next
end
if interval == 0 then
  if queue == KEYS[2] then interval = conv_spacing else interval = tenant_spacing end
end
local at = math.max(next_free, now + wait)
redis.call('HSET', queue, 'next', at + interval, 'interval', math.max(interval, MIN_SPACING))
redis.call('PEXPIRE', queue, math.ceil(at + interval - now) + 1000)
return {0, math.ceil(at - now), math.ceil(at)}
"#,
    )
});

/// A send is done: its entries in the logs (`member`, and `member+` for a chat it created)
/// move to its end less what it gives back of the safety margin (never earlier than they
/// were), and each log lives that much longer. The margin is for sends in flight, whose arrival
/// is unknown; a send Teams answered arrived before its end. KEYS: the logs; ARGV: the member,
/// the margin given back (ms).
static SENT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local ended = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[2])
for i = 1, #KEYS do
  for _, member in ipairs({ARGV[1], ARGV[1] .. '+'}) do
    local admitted = tonumber(redis.call('ZSCORE', KEYS[i], member) or ended)
    if admitted < ended then
      redis.call('ZADD', KEYS[i], 'XX', ended, member)
      local ttl = redis.call('PTTL', KEYS[i])
      if ttl > 0 then redis.call('PEXPIRE', KEYS[i], ttl + ended - admitted) end
    end
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

/// Added to every window, for the sends still in flight: Teams counts a send when it arrives,
/// which for a send in flight is unknown, so one admitted later (on a quicker connection) could
/// arrive within a window of it. A send Teams answered is counted from when its call ended
/// ([`Pacer::sent`]), never before Teams counted it, and gives the margin back but for
/// [`CUSHION_MS`]: in a steady backlog, where every entry in the way has ended, the margin
/// costs 0.2 % of a one-second window instead of 1 %.
const SAFETY_MARGIN_MS: u64 = 10;

/// What an answered send keeps of the margin: Teams' own clock and idea of where a window
/// starts.
const CUSHION_MS: u64 = 2;

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

    /// A tenant's sustained rate, per second; `None` when tenants are not paced.
    pub fn tenant_rate(&self) -> Option<f64> {
        self.tenant_limits.per_second()
    }

    fn key(&self, tenant: &str, rest: &str) -> String {
        self.redis.key("pace", &format!("{{t:{tenant}}}:{rest}"))
    }

    /// Asks to send to `thread` (a conversation, in `tenant` when known) now; `turn` is the
    /// one an earlier answer gave this send, if any. A [`Class::Bulk`] send goes only when no
    /// priority send of its tenant is waiting. `requests` is what the send asks of Teams: 1,
    /// or 2 when it must create the user's chat first (both count against the tenant).
    pub async fn admit(
        &self,
        tenant: Option<&str>,
        thread: &str,
        turn: Option<u64>,
        class: Class,
        requests: u32,
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
            .key(self.key(scope, "bulk-queue"))
            .arg(&member);
        for limits in [&self.conversation_limits.0[..], tenant_limits] {
            cmd.arg(limits.len());
            for limit in limits {
                cmd.arg(limit.count)
                    .arg(limit.window.as_millis() as u64 + SAFETY_MARGIN_MS);
            }
        }
        cmd.arg(turn.unwrap_or(0))
            .arg(TURN_GRACE_MS)
            .arg(if class == Class::Bulk { "1" } else { "0" })
            .arg(requests.clamp(1, 2));
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

    /// The send is done: its log entries move from the moment it was admitted to now (less
    /// the margin, but for a cushion, when Teams `answered`; a call that timed out or lost its
    /// connection may arrive later, and keeps all of it). Teams counts a send when it arrives,
    /// somewhere between the two, so a window that counts it from its end never lets a later
    /// send in too early, however long this one took on the way (a new connection, a slow
    /// network). Called after every call.
    pub async fn sent(&self, send: &PacedSend, answered: bool) -> Result<(), StoreError> {
        if send.logs.is_empty() {
            return Ok(());
        }
        let mut cmd = SENT.prepare_invoke();
        for log in &send.logs {
            cmd.key(log);
        }
        let given_back = if answered {
            SAFETY_MARGIN_MS - CUSHION_MS
        } else {
            0
        };
        cmd.arg(&send.member)
            .arg(given_back)
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

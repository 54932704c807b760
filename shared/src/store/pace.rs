//! Pacing: Teams' per-conversation and per-tenant limits, held across every dispatcher replica
//! together, so that Teams never needs to answer 429.
//!
//! Each scope (a conversation, a tenant) keeps a log of its recent sends in a sorted set; a
//! send is admitted only if every sliding window (`7/1s`, `60/30s`, …) still has room. One
//! script does the whole decision in one round trip, on Redis' clock (the same for every
//! replica). When a send must wait, the script also *reserves* its turn: the k-th waiter of a
//! scope is told to come back k intervals later, so a backlog returns spread out at the rate
//! instead of all at once. A 429 from Teams pauses the whole tenant for its `Retry-After`.
//!
//! Keys share a hash tag per tenant (`{ns}:pace:{t:<tenant>}:…`), so the script's keys sit in
//! one Redis Cluster slot.

use std::sync::LazyLock;

use redis::Script;
use std::time::Duration;

use super::{Redis, StoreError};
use crate::config::RateLimits;

/// The pacer's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Send now; the send is logged against the limits.
    Now,
    /// Come back after this long (a turn is reserved then).
    Wait(Duration),
}

/// KEYS: conversation log, conversation turns, tenant log, tenant turns, tenant pause.
/// ARGV: member, n conversation limits, then n pairs (count, window ms), m tenant limits, pairs.
static ADMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local pause = tonumber(redis.call('GET', KEYS[5]) or '0')
if pause > now then return {0, pause - now} end

-- The wait a scope's log imposes, and the interval of the window that imposes it.
local function wait_of(log, first, n)
  local wait, interval = 0, 0
  for i = 0, n - 1 do
    local count, window = tonumber(ARGV[first + 2 * i]), tonumber(ARGV[first + 2 * i + 1])
    local used = redis.call('ZCOUNT', log, '(' .. (now - window), '+inf')
    if used >= count then
      local oldest = redis.call('ZRANGEBYSCORE', log, '(' .. (now - window), '+inf', 'WITHSCORES', 'LIMIT', used - count, 1)
      local w = tonumber(oldest[2]) + window - now + 1
      if w > wait then wait, interval = w, math.ceil(window / count) end
    end
  end
  return wait, interval
end

local conv_n = tonumber(ARGV[2])
local tenant_first = 3 + 2 * conv_n
local tenant_n = tonumber(ARGV[tenant_first])
local conv_wait, conv_interval = wait_of(KEYS[1], 3, conv_n)
local tenant_wait, tenant_interval = wait_of(KEYS[3], tenant_first + 1, tenant_n)

if conv_wait == 0 and tenant_wait == 0 then
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
  return {1, 0}
end

-- Reserve a turn in the scope that holds the send back.
local turns, wait, interval = KEYS[2], conv_wait, conv_interval
if tenant_wait > conv_wait then turns, wait, interval = KEYS[4], tenant_wait, tenant_interval end
local next_turn = math.max(tonumber(redis.call('GET', turns) or '0'), now + wait)
redis.call('SET', turns, next_turn + interval, 'PX', next_turn + interval - now + 1000)
return {0, next_turn - now}
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

/// Added to every window: a send is admitted on Redis' clock but counted by Teams when it
/// arrives, and the few milliseconds between can put two sends a window apart into one window.
const SAFETY_MARGIN_MS: u64 = 20;

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

    /// Asks to send to `thread` (a conversation, in `tenant` when known) now.
    pub async fn admit(&self, tenant: Option<&str>, thread: &str) -> Result<Admission, StoreError> {
        if self.conversation_limits.is_off() && (self.tenant_limits.is_off() || tenant.is_none()) {
            return Ok(Admission::Now);
        }
        // A conversation of unknown tenant is paced on its own.
        let scope = tenant.unwrap_or("-");
        let tenant_limits = if tenant.is_some() {
            &self.tenant_limits.0[..]
        } else {
            &[]
        };
        let mut cmd = ADMIT.prepare_invoke();
        cmd.key(self.key(scope, &format!("conv:{thread}")))
            .key(self.key(scope, &format!("conv-turns:{thread}")))
            .key(self.key(scope, "tenant"))
            .key(self.key(scope, "tenant-turns"))
            .key(self.key(scope, "pause"))
            .arg(uuid::Uuid::new_v4().simple().to_string());
        for limits in [&self.conversation_limits.0[..], tenant_limits] {
            cmd.arg(limits.len());
            for limit in limits {
                cmd.arg(limit.count)
                    .arg(limit.window.as_millis() as u64 + SAFETY_MARGIN_MS);
            }
        }
        let (admitted, wait_ms): (u8, u64) = cmd.invoke_async(&mut self.redis.conn()).await?;
        Ok(if admitted == 1 {
            Admission::Now
        } else {
            Admission::Wait(Duration::from_millis(wait_ms))
        })
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

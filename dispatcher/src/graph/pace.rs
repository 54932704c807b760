//! Graph's per-tenant pace, held across every dispatcher replica: Graph limits each app in
//! each tenant (30 calls a second for installing apps and reading installations and the
//! catalog), and a 429 from it holds the whole tenant for its `Retry-After`.
//!
//! A GCRA (generic cell rate algorithm) in one script, on Redis' clock (the same for every
//! replica): the tenant's key remembers the theoretical arrival time (`tat`) of its next
//! call. A caller takes the turn at `max(tat, now)` and moves `tat` one interval on, so
//! callers that come together are handed turns spaced by the interval, in order, in one
//! round trip each; a caller whose turn is further out than it is willing to wait takes
//! nothing and is told how long. The same key holds the tenant's pause (`pause`, set on a
//! 429), during which no turn is handed out.
//!
//! No burst: turns are spaced evenly from the first. A burst of a second's worth on top of
//! the rate lets twice the rate into one second, which a limit of so many calls a second
//! (Graph's, counted over a sliding second in the emulator) answers with 429 and a pause of the
//! whole tenant, costing far more than the few milliseconds evenly spaced turns add to a
//! handful of calls. The interval carries a small margin for calls' different ways through
//! the network (a call delayed on the way arrives closer to the next).
//!
//! The key is `{ns}:graph:{t:<tenant>}:pace`: one key per script, hash-tagged per tenant like
//! the Bot Connector pacer's, so it runs unchanged on Redis Cluster.

use std::{sync::LazyLock, time::Duration};

use redis::Script;

use herald_shared::store::{Redis, StoreError};

/// Added to each second's worth of turns: a second of turns spans this much more.
const MARGIN_MS: f64 = 10.0;

/// KEYS: the tenant's pace hash (`tat`, `pause`: Unix ms on Redis' clock).
/// ARGV: the interval between turns (ms, fractional), the longest wait a caller takes (ms).
/// Answers {1, wait}: the turn is taken, go after `wait` ms; {0, wait}: nothing taken, the
/// tenant is paused or paced `wait` ms out.
static TURN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local state = redis.call('HMGET', KEYS[1], 'tat', 'pause')
local pause = tonumber(state[2] or '0')
if pause > now then return {0, math.ceil(pause - now)} end
local at = math.max(tonumber(state[1] or '0'), now)
local wait = at - now
if wait > tonumber(ARGV[2]) then return {0, math.ceil(wait)} end
local tat = at + tonumber(ARGV[1])
redis.call('HSET', KEYS[1], 'tat', string.format('%.3f', tat))
redis.call('PEXPIRE', KEYS[1], math.ceil(math.max(tat, pause) - now) + 1000)
return {1, math.ceil(wait)}
"#,
    )
});

/// Pauses the tenant for ARGV[1] ms from now, never shortening a pause already set; answers
/// the pause left (ms).
static PAUSE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local state = redis.call('HMGET', KEYS[1], 'tat', 'pause')
local pause = tonumber(state[2] or '0')
local wanted = now + tonumber(ARGV[1])
if wanted > pause then
  pause = wanted
  redis.call('HSET', KEYS[1], 'pause', string.format('%.3f', pause))
end
local tat = tonumber(state[1] or '0')
redis.call('PEXPIRE', KEYS[1], math.ceil(math.max(tat, pause) - now) + 1000)
return math.ceil(pause - now)
"#,
    )
});

/// The pacer's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// The turn is taken: call Graph after this wait.
    Go { after: Duration },
    /// Nothing taken: the tenant is paused, or its next turn is this far out.
    Held { wait: Duration },
}

#[derive(Debug, Clone)]
pub struct GraphPacer {
    redis: Redis,
    /// Between two turns of one tenant.
    interval_ms: f64,
}

impl GraphPacer {
    /// A pacer handing each tenant `rate` turns a second (a positive rate: the configuration
    /// refuses others).
    pub fn new(redis: Redis, rate: f64) -> Self {
        Self {
            redis,
            interval_ms: (1000.0 + MARGIN_MS) / rate.max(f64::MIN_POSITIVE),
        }
    }

    fn key(&self, tenant: &str) -> String {
        self.redis.key("graph", &format!("{{t:{tenant}}}:pace"))
    }

    /// Asks for the tenant's next turn, taking it only if it comes within `longest_wait`.
    pub async fn turn(&self, tenant: &str, longest_wait: Duration) -> Result<Turn, StoreError> {
        let (taken, wait_ms): (u8, u64) = TURN
            .key(self.key(tenant))
            .arg(self.interval_ms)
            .arg(longest_wait.as_millis() as u64)
            .invoke_async(&mut self.redis.conn())
            .await?;
        let wait = Duration::from_millis(wait_ms);
        Ok(if taken == 1 {
            Turn::Go { after: wait }
        } else {
            Turn::Held { wait }
        })
    }

    /// Graph throttled the tenant: every replica holds its Graph calls for `retry_after`.
    /// Answers the pause left (longer, when one was already set).
    pub async fn pause(&self, tenant: &str, retry_after: Duration) -> Result<Duration, StoreError> {
        let left: u64 = PAUSE
            .key(self.key(tenant))
            .arg(retry_after.as_millis().max(1) as u64)
            .invoke_async(&mut self.redis.conn())
            .await?;
        Ok(Duration::from_millis(left))
    }
}

//! How the dispatcher paces its sends: the backoff between retries ([`RetrySchedule`]), Teams'
//! rate limits ([`RateLimits`]) and the deliveries it works on at once ([`DEFAULT_PREFETCH`]).

use std::{str::FromStr, time::Duration};

/// Deliveries in flight per dispatcher by default. A send mostly waits on Teams, so a
/// dispatcher's throughput is in-flight sends divided by Teams' latency: 1024 at 100 ms is
/// about 10,000 a second, more than one core sends (BENCHMARKS.md), while quorum queues
/// deliver that many to one consumer without trouble.
pub const DEFAULT_PREFETCH: u16 = 1024;

/// Backoff for transient failures: one entry per retry, the last repeating; each is jittered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule(Vec<Duration>);

impl RetrySchedule {
    /// The nominal delay before retry number `retry` (1-based).
    pub fn nominal(&self, retry: u32) -> Duration {
        let index = (retry.max(1) as usize - 1).min(self.0.len() - 1);
        self.0[index]
    }

    /// How many steps it lists (the last one repeats beyond them).
    pub fn steps(&self) -> usize {
        self.0.len()
    }
}

impl FromStr for RetrySchedule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let steps = s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| humantime::parse_duration(p).map_err(|e| format!("{p:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if steps.is_empty() {
            return Err("needs at least one duration, e.g. 1s,5s,30s".into());
        }
        Ok(Self(steps))
    }
}

impl Default for RetrySchedule {
    fn default() -> Self {
        "1s,4s,15s,1m,4m,15m"
            .parse()
            .expect("the default schedule parses")
    }
}

/// Send-rate limits: each `count/window` must hold in every sliding window of that length.
/// `off` (an empty list) disables them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RateLimits(pub Vec<RateLimit>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub count: u32,
    pub window: Duration,
}

impl RateLimits {
    pub fn is_off(&self) -> bool {
        self.0.is_empty()
    }

    /// The sustained rate the limits allow, per second (the strictest window's); `None` when
    /// off.
    pub fn per_second(&self) -> Option<f64> {
        self.0
            .iter()
            .map(|l| f64::from(l.count) / l.window.as_secs_f64().max(0.001))
            .min_by(f64::total_cmp)
    }
}

impl FromStr for RateLimits {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim() == "off" {
            return Ok(Self::default());
        }
        let limits = s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|part| {
                let (count, window) = part
                    .split_once('/')
                    .ok_or_else(|| format!("{part:?} is not count/window, e.g. 7/1s"))?;
                let count: u32 = count
                    .trim()
                    .parse()
                    .map_err(|_| format!("{part:?}: the count is not a number"))?;
                let window = humantime::parse_duration(window.trim())
                    .map_err(|e| format!("{part:?}: {e}"))?;
                if count == 0 || window < Duration::from_millis(1) {
                    return Err(format!(
                        "{part:?}: the count and the window must be above zero"
                    ));
                }
                Ok(RateLimit { count, window })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if limits.is_empty() {
            return Err("expected count/window pairs like 7/1s,60/30s, or off".into());
        }
        Ok(Self(limits))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DispatcherConfig, tests::base};

    #[test]
    fn rate_limits_parse_and_can_be_turned_off() {
        let d = DispatcherConfig::from_env(&base()).unwrap();
        assert_eq!(
            d.tenant_rate.0,
            [RateLimit {
                count: 50,
                window: Duration::from_secs(1)
            }]
        );
        assert_eq!(d.conversation_rates.0.len(), 4);
        assert_eq!(
            d.conversation_rates.0[3],
            RateLimit {
                count: 1800,
                window: Duration::from_secs(3600)
            }
        );
        let mut env = base();
        env.set("HERALD_TENANT_RATE", "off")
            .set("HERALD_CONVERSATION_RATES", "3/500ms");
        let d = DispatcherConfig::from_env(&env).unwrap();
        assert!(d.tenant_rate.is_off());
        assert_eq!(d.conversation_rates.0[0].window, Duration::from_millis(500));
        for bad in ["7", "x/1s", "7/soon", "0/1s"] {
            let mut env = base();
            env.set("HERALD_TENANT_RATE", bad);
            assert_eq!(
                DispatcherConfig::from_env(&env).unwrap_err().variable,
                "HERALD_TENANT_RATE",
                "{bad}"
            );
        }
    }

    #[test]
    fn retry_schedule_repeats_its_last_step() {
        let s: RetrySchedule = "1s,5s".parse().unwrap();
        assert_eq!(s.nominal(1), Duration::from_secs(1));
        assert_eq!(s.nominal(2), Duration::from_secs(5));
        assert_eq!(s.nominal(9), Duration::from_secs(5));
    }
}

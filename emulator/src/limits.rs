//! Teams' Bot Connector rate limits, as sliding windows.
//!
//! Per bot and thread, sends and conversation creates are limited to 7 per second, 8 per
//! 2 seconds, 60 per 30 seconds and 1800 per hour; reading members to 14, 16, 120 and 3600.
//! Per tenant, 50 requests per second in all (Teams' figure; configurable, so that Herald can
//! be measured at a raised tenant rate against limits that still bite). Only admitted requests
//! count: a refused one does not push the window further out.
//!
//! A broadcast touches each of 100,000 threads once, and a thread's history must be kept
//! for an hour; so threads are keyed by a 64-bit hash rather than their 130-character ids,
//! and histories whose last request left every window are swept away now and then.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash as _, Hasher as _};
use std::time::{Duration, Instant};

use crate::config::DEFAULT_TENANT_REQUESTS_PER_SECOND;

const WRITE_WINDOWS: [(Duration, usize); 4] = [
    (Duration::from_secs(1), 7),
    (Duration::from_secs(2), 8),
    (Duration::from_secs(30), 60),
    (Duration::from_secs(3600), 1800),
];

const READ_WINDOWS: [(Duration, usize); 4] = [
    (Duration::from_secs(1), 14),
    (Duration::from_secs(2), 16),
    (Duration::from_secs(30), 120),
    (Duration::from_secs(3600), 3600),
];

/// The window of the per-tenant limit.
const TENANT_WINDOW: Duration = Duration::from_secs(1);

/// Admissions between sweeps of histories that no longer matter.
const SWEEP_EVERY: u64 = 10_000;

/// Which per-thread limits a call counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Bucket {
    /// Sends and conversation creates.
    Writes,
    /// Reading members (and conversations).
    Reads,
}

impl Bucket {
    fn windows(self) -> &'static [(Duration, usize)] {
        match self {
            Bucket::Writes => &WRITE_WINDOWS,
            Bucket::Reads => &READ_WINDOWS,
        }
    }
}

/// The longest of `windows`: older timestamps are forgotten.
fn horizon(windows: &[(Duration, usize)]) -> Duration {
    windows
        .iter()
        .map(|&(window, _)| window)
        .max()
        .unwrap_or_default()
}

/// A thread's key: its bucket and a hash of its id.
fn thread_key(bucket: Bucket, thread: &str) -> (Bucket, u64) {
    let mut hasher = DefaultHasher::new();
    thread.hash(&mut hasher);
    (bucket, hasher.finish())
}

#[derive(Debug)]
pub(crate) struct RateLimiter {
    threads: HashMap<(Bucket, u64), VecDeque<Instant>>,
    tenants: HashMap<String, VecDeque<Instant>>,
    /// Requests per tenant and second.
    tenant_windows: [(Duration, usize); 1],
    admissions: u64,
}

impl Default for RateLimiter {
    /// Teams' limits.
    fn default() -> Self {
        Self::new(DEFAULT_TENANT_REQUESTS_PER_SECOND)
    }
}

/// How long until `history` admits one more request under `windows`; `None` if it does now.
fn wait_time(
    history: &VecDeque<Instant>,
    windows: &[(Duration, usize)],
    now: Instant,
) -> Option<Duration> {
    windows
        .iter()
        .filter_map(|&(window, limit)| {
            // Histories are in admission order, so the requests that left the window are a
            // prefix: a binary search finds it, where a walk would cost a raised tenant limit
            // (thousands a second) that many steps per request.
            let left = history.partition_point(|&at| now.duration_since(at) >= window);
            let in_window = history.len() - left;
            if in_window < limit {
                return None;
            }
            // The window frees when the oldest of the last `limit` requests leaves it.
            let oldest = history[history.len() - limit];
            Some((oldest + window).saturating_duration_since(now))
        })
        .max()
}

fn prune(history: &mut VecDeque<Instant>, horizon: Duration, now: Instant) {
    while history
        .front()
        .is_some_and(|&at| now.duration_since(at) >= horizon)
    {
        history.pop_front();
    }
}

/// Whether a history still has a request inside its longest window.
fn alive(history: &VecDeque<Instant>, horizon: Duration, now: Instant) -> bool {
    history
        .back()
        .is_some_and(|&at| now.saturating_duration_since(at) < horizon)
}

impl RateLimiter {
    /// Teams' per-thread limits, and `tenant_per_second` requests a second per tenant (at
    /// least 1).
    pub(crate) fn new(tenant_per_second: usize) -> Self {
        RateLimiter {
            threads: HashMap::new(),
            tenants: HashMap::new(),
            tenant_windows: [(TENANT_WINDOW, tenant_per_second.max(1))],
            admissions: 0,
        }
    }

    /// Admits a request for `tenant` (counted against the tenant's overall limit) and, for
    /// calls limited per thread, `thread` in its bucket; or says how long to wait, in whole
    /// seconds (at least 1).
    pub(crate) fn admit(
        &mut self,
        tenant: Option<&str>,
        thread: Option<(&str, Bucket)>,
        now: Instant,
    ) -> Result<(), u64> {
        self.sweep(now);
        let tenant = tenant.map(str::to_ascii_lowercase);
        let thread = thread.map(|(id, bucket)| thread_key(bucket, id));
        let mut wait = None;
        if let Some(tenant) = &tenant {
            let history = self.tenants.entry(tenant.clone()).or_default();
            prune(history, horizon(&self.tenant_windows), now);
            wait = wait.max(wait_time(history, &self.tenant_windows, now));
        }
        if let Some(key) = thread {
            let windows = key.0.windows();
            let history = self.threads.entry(key).or_default();
            prune(history, horizon(windows), now);
            wait = wait.max(wait_time(history, windows, now));
        }
        if let Some(wait) = wait {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return Err(secs.max(1));
        }
        if let Some(tenant) = tenant {
            self.tenants.entry(tenant).or_default().push_back(now);
        }
        if let Some(key) = thread {
            self.threads.entry(key).or_default().push_back(now);
        }
        Ok(())
    }

    /// Every so often, forgets the histories that can no longer refuse anything.
    fn sweep(&mut self, now: Instant) {
        self.admissions += 1;
        if !self.admissions.is_multiple_of(SWEEP_EVERY) {
            return;
        }
        self.threads
            .retain(|(bucket, _), history| alive(history, horizon(bucket.windows()), now));
        let tenant_horizon = horizon(&self.tenant_windows);
        self.tenants
            .retain(|_, history| alive(history, tenant_horizon, now));
    }

    /// Histories held (threads and tenants), for tests of the sweep.
    #[cfg(test)]
    fn histories(&self) -> usize {
        self.threads.len() + self.tenants.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eighth_send_in_a_second_waits() {
        let mut limiter = RateLimiter::default();
        let start = Instant::now();
        for i in 0..7 {
            let at = start + Duration::from_millis(i * 10);
            assert_eq!(
                limiter.admit(None, Some(("a:1", Bucket::Writes)), at),
                Ok(())
            );
        }
        assert_eq!(
            limiter.admit(
                None,
                Some(("a:1", Bucket::Writes)),
                start + Duration::from_millis(100)
            ),
            Err(1)
        );
        // Another thread is not affected.
        assert_eq!(
            limiter.admit(
                None,
                Some(("a:2", Bucket::Writes)),
                start + Duration::from_millis(100)
            ),
            Ok(())
        );
        // After a second the 1 s window frees, but 8 per 2 s still holds the 9th.
        let later = start + Duration::from_millis(1100);
        assert_eq!(
            limiter.admit(None, Some(("a:1", Bucket::Writes)), later),
            Ok(())
        );
        assert_eq!(
            limiter.admit(None, Some(("a:1", Bucket::Writes)), later),
            Err(1)
        );
        let much_later = start + Duration::from_millis(2200);
        assert_eq!(
            limiter.admit(None, Some(("a:1", Bucket::Writes)), much_later),
            Ok(())
        );
    }

    #[test]
    fn thirty_second_window_reports_its_wait() {
        let mut limiter = RateLimiter::default();
        let start = Instant::now();
        for i in 0..60 {
            let at = start + Duration::from_millis(i * 300);
            assert_eq!(
                limiter.admit(None, Some(("a:1", Bucket::Writes)), at),
                Ok(()),
                "send {i}"
            );
        }
        let at = start + Duration::from_millis(60 * 300);
        assert_eq!(
            limiter.admit(None, Some(("a:1", Bucket::Writes)), at),
            Err(12)
        );
    }

    #[test]
    fn tenant_limit_spans_threads() {
        let mut limiter = RateLimiter::default();
        let now = Instant::now();
        for i in 0..50 {
            let thread = format!("a:{i}");
            assert_eq!(
                limiter.admit(Some("t"), Some((&thread, Bucket::Writes)), now),
                Ok(())
            );
        }
        assert_eq!(
            limiter.admit(Some("T"), Some(("a:new", Bucket::Writes)), now),
            Err(1)
        );
        assert_eq!(
            limiter.admit(Some("other"), Some(("a:new", Bucket::Writes)), now),
            Ok(())
        );
    }

    #[test]
    fn a_raised_tenant_limit_admits_that_many_a_second() {
        let mut limiter = RateLimiter::new(5_000);
        let start = Instant::now();
        // 5,000 spread over 0.9 s, each to a thread of its own.
        for i in 0..5_000u64 {
            let thread = format!("a:{i}");
            let at = start + Duration::from_micros(i * 180);
            assert_eq!(
                limiter.admit(Some("t"), Some((&thread, Bucket::Writes)), at),
                Ok(()),
                "request {i}"
            );
        }
        let full = start + Duration::from_millis(950);
        assert_eq!(
            limiter.admit(Some("t"), Some(("a:new", Bucket::Writes)), full),
            Err(1)
        );
        // The first ones leave the window a second after they came.
        let later = start + Duration::from_millis(1_001);
        assert_eq!(
            limiter.admit(Some("t"), Some(("a:new", Bucket::Writes)), later),
            Ok(())
        );
    }

    #[test]
    fn reading_members_has_its_own_higher_limits() {
        let mut limiter = RateLimiter::default();
        let now = Instant::now();
        for _ in 0..7 {
            assert_eq!(
                limiter.admit(None, Some(("19:t", Bucket::Writes)), now),
                Ok(())
            );
        }
        assert_eq!(
            limiter.admit(None, Some(("19:t", Bucket::Writes)), now),
            Err(1)
        );
        for i in 0..14 {
            assert_eq!(
                limiter.admit(None, Some(("19:t", Bucket::Reads)), now),
                Ok(()),
                "read {i}"
            );
        }
        assert_eq!(
            limiter.admit(None, Some(("19:t", Bucket::Reads)), now),
            Err(1)
        );
    }

    #[test]
    fn histories_past_every_window_are_swept_away() {
        let mut limiter = RateLimiter::default();
        let start = Instant::now();
        for i in 0..SWEEP_EVERY - 1 {
            let thread = format!("a:{i}");
            assert_eq!(
                limiter.admit(None, Some((&thread, Bucket::Writes)), start),
                Ok(())
            );
        }
        assert_eq!(limiter.histories(), SWEEP_EVERY as usize - 1);
        // An hour later, the next admission sweeps them all.
        let later = start + Duration::from_secs(3601);
        assert_eq!(
            limiter.admit(None, Some(("a:new", Bucket::Writes)), later),
            Ok(())
        );
        assert_eq!(limiter.histories(), 1);
    }
}

//! Teams' Bot Connector rate limits, as sliding windows.
//!
//! Per bot and thread, sends and conversation creates are limited to 7 per second, 8 per
//! 2 seconds, 60 per 30 seconds and 1800 per hour; per tenant, 50 requests per second in
//! all. Only admitted requests count: a refused one does not push the window further out.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

const THREAD_WINDOWS: [(Duration, usize); 4] = [
    (Duration::from_secs(1), 7),
    (Duration::from_secs(2), 8),
    (Duration::from_secs(30), 60),
    (Duration::from_secs(3600), 1800),
];

const TENANT_WINDOWS: [(Duration, usize); 1] = [(Duration::from_secs(1), 50)];

/// The longest window: older timestamps are forgotten.
const HORIZON: Duration = Duration::from_secs(3600);

#[derive(Debug, Default)]
pub(crate) struct RateLimiter {
    threads: HashMap<String, VecDeque<Instant>>,
    tenants: HashMap<String, VecDeque<Instant>>,
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
            let in_window = history
                .iter()
                .rev()
                .take_while(|&&at| now.duration_since(at) < window)
                .count();
            if in_window < limit {
                return None;
            }
            // The window frees when the oldest of the last `limit` requests leaves it.
            let oldest = history[history.len() - limit];
            Some((oldest + window).saturating_duration_since(now))
        })
        .max()
}

fn prune(history: &mut VecDeque<Instant>, now: Instant) {
    while history
        .front()
        .is_some_and(|&at| now.duration_since(at) >= HORIZON)
    {
        history.pop_front();
    }
}

impl RateLimiter {
    /// Admits a request for `tenant` (counted against the tenant's overall limit) and, for
    /// sends and creates, `thread`; or says how long to wait, in whole seconds (at least 1).
    pub(crate) fn admit(
        &mut self,
        tenant: Option<&str>,
        thread: Option<&str>,
        now: Instant,
    ) -> Result<(), u64> {
        let mut wait = None;
        if let Some(tenant) = tenant {
            let history = self.tenants.entry(tenant.to_ascii_lowercase()).or_default();
            prune(history, now);
            wait = wait.max(wait_time(history, &TENANT_WINDOWS, now));
        }
        if let Some(thread) = thread {
            let history = self.threads.entry(thread.to_owned()).or_default();
            prune(history, now);
            wait = wait.max(wait_time(history, &THREAD_WINDOWS, now));
        }
        if let Some(wait) = wait {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return Err(secs.max(1));
        }
        if let Some(tenant) = tenant {
            self.tenants
                .entry(tenant.to_ascii_lowercase())
                .or_default()
                .push_back(now);
        }
        if let Some(thread) = thread {
            self.threads
                .entry(thread.to_owned())
                .or_default()
                .push_back(now);
        }
        Ok(())
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
            assert_eq!(limiter.admit(None, Some("a:1"), at), Ok(()));
        }
        assert_eq!(
            limiter.admit(None, Some("a:1"), start + Duration::from_millis(100)),
            Err(1)
        );
        // Another thread is not affected.
        assert_eq!(
            limiter.admit(None, Some("a:2"), start + Duration::from_millis(100)),
            Ok(())
        );
        // After a second the 1 s window frees, but 8 per 2 s still holds the 9th.
        let later = start + Duration::from_millis(1100);
        assert_eq!(limiter.admit(None, Some("a:1"), later), Ok(()));
        assert_eq!(limiter.admit(None, Some("a:1"), later), Err(1));
        let much_later = start + Duration::from_millis(2200);
        assert_eq!(limiter.admit(None, Some("a:1"), much_later), Ok(()));
    }

    #[test]
    fn thirty_second_window_reports_its_wait() {
        let mut limiter = RateLimiter::default();
        let start = Instant::now();
        for i in 0..60 {
            let at = start + Duration::from_millis(i * 300);
            assert_eq!(limiter.admit(None, Some("a:1"), at), Ok(()), "send {i}");
        }
        let at = start + Duration::from_millis(60 * 300);
        assert_eq!(limiter.admit(None, Some("a:1"), at), Err(12));
    }

    #[test]
    fn tenant_limit_spans_threads() {
        let mut limiter = RateLimiter::default();
        let now = Instant::now();
        for i in 0..50 {
            let thread = format!("a:{i}");
            assert_eq!(limiter.admit(Some("t"), Some(&thread), now), Ok(()));
        }
        assert_eq!(limiter.admit(Some("T"), Some("a:new"), now), Err(1));
        assert_eq!(limiter.admit(Some("other"), Some("a:new"), now), Ok(()));
    }
}

//! What Teams received from one tenant over a run, as the emulator counts it: its per-tenant
//! totals sampled every 20 ms, from which the sending interval (first request → last) and the
//! rates within it are read. Counted at Teams' end, so the figures are what a tenant limit
//! would see, whatever Herald believes it sent.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use herald_emulator::Emulator;
use tokio::task::JoinHandle;

/// How often the emulator's counts are read: the interval's ends are known to within this.
const EVERY: Duration = Duration::from_millis(20);

/// The tenant's totals at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Since the trace started.
    pub at: Duration,
    /// Bot Connector requests answered (sends, chat creations, 429s).
    pub requests: usize,
    /// Messages accepted.
    pub sends: usize,
    pub throttled: usize,
}

/// Samples a tenant's totals until [`TenantTrace::finish`].
#[derive(Debug)]
pub struct TenantTrace {
    samples: Arc<Mutex<Vec<Sample>>>,
    sampler: JoinHandle<()>,
}

impl TenantTrace {
    pub fn start(emulator: &Emulator, tenant_id: &str) -> Self {
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
        let (emulator, tenant, shared) = (emulator.clone(), tenant_id.to_owned(), samples.clone());
        let started = Instant::now();
        let sampler = tokio::spawn(async move {
            let mut tick = tokio::time::interval(EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let stats = emulator.stats();
                let totals = stats.tenants.get(&tenant).cloned().unwrap_or_default();
                let sample = Sample {
                    at: started.elapsed(),
                    requests: totals.requests,
                    sends: totals.sends,
                    throttled: totals.throttled,
                };
                shared
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(sample);
            }
        });
        Self { samples, sampler }
    }

    /// The latest totals.
    pub fn latest(&self) -> Sample {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.last().copied().unwrap_or_default()
    }

    /// Stops sampling and reads the sending interval.
    pub fn finish(self) -> Sending {
        self.sampler.abort();
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        Sending::of(&samples)
    }
}

/// The sending interval: from the first sample that saw a request to the first that saw the
/// last one.
#[derive(Debug, Clone, Copy)]
pub struct Sending {
    pub seconds: f64,
    pub requests: usize,
    pub sends: usize,
    pub throttled: usize,
    /// Requests per second over the middle of the interval (10 % to 90 % of the requests),
    /// without the ramp at either end.
    pub steady_requests_per_second: f64,
    /// The most requests within any second.
    pub busiest_second: usize,
}

impl Sending {
    fn of(samples: &[Sample]) -> Self {
        let last = samples.last().copied().unwrap_or_default();
        let first_at = samples
            .iter()
            .find(|s| s.requests > 0)
            .map_or(Duration::ZERO, |s| s.at);
        let last_at = samples
            .iter()
            .find(|s| s.requests == last.requests)
            .map_or(Duration::ZERO, |s| s.at);
        let crossing = |share: f64| {
            let threshold = (last.requests as f64 * share).ceil() as usize;
            samples
                .iter()
                .find(|s| s.requests >= threshold)
                .copied()
                .unwrap_or_default()
        };
        let (low, high) = (crossing(0.1), crossing(0.9));
        let steady = (high.at.saturating_sub(low.at)).as_secs_f64();
        Self {
            seconds: (last_at.saturating_sub(first_at)).as_secs_f64(),
            requests: last.requests,
            sends: last.sends,
            throttled: last.throttled,
            steady_requests_per_second: if steady > 0.0 {
                (high.requests - low.requests) as f64 / steady
            } else {
                0.0
            },
            busiest_second: busiest(samples, Duration::from_secs(1)),
        }
    }

    pub fn requests_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.requests as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// The most requests between two samples at most `window` apart.
fn busiest(samples: &[Sample], window: Duration) -> usize {
    let mut best = 0;
    let mut start = 0;
    for end in 0..samples.len() {
        while samples[end].at - samples[start].at > window {
            start += 1;
        }
        best = best.max(samples[end].requests - samples[start].requests);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ms: u64, requests: usize) -> Sample {
        Sample {
            at: Duration::from_millis(ms),
            requests,
            sends: requests / 2,
            throttled: 0,
        }
    }

    #[test]
    fn the_interval_runs_from_the_first_request_seen_to_the_last() {
        // Nothing for 100 ms, then 100 requests every 20 ms for 2 s, then nothing.
        let mut samples: Vec<Sample> = (0..=5).map(|i| sample(i * 20, 0)).collect();
        samples.extend((1..=100).map(|i| sample(100 + i * 20, i as usize * 100)));
        samples.extend((1..=10).map(|i| sample(2_100 + i * 20, 10_000)));
        let sending = Sending::of(&samples);
        assert!((sending.seconds - 1.98).abs() < 1e-9, "{}", sending.seconds);
        assert_eq!(sending.requests, 10_000);
        assert!((sending.steady_requests_per_second - 5_000.0).abs() < 1e-6);
        assert_eq!(sending.busiest_second, 5_000);
    }
}

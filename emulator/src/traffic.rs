//! Per-tenant traffic: exact totals for the stats, and rates over the last few seconds for
//! the page's traffic panel, where a person watches a broadcast go at the tenant limit.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::recorder::lock;

/// Rates are averaged over this many whole seconds before the current one.
pub(crate) const RATE_WINDOW_SECS: u64 = 5;

/// Seconds a ring remembers: the window and the second being counted.
const RING_SECS: usize = RATE_WINDOW_SECS as usize + 1;

/// One tenant's totals, as `GET /_emulator/stats` serves them under `tenants`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantStats {
    /// Bot Connector requests answered (any status).
    pub requests: usize,
    /// Activities accepted by send, reply or create.
    pub sends: usize,
    /// Conversations created.
    pub creates: usize,
    /// 429 answers (limits and injected).
    pub throttled: usize,
}

/// Counts per whole second, for the last few seconds.
#[derive(Debug, Clone, Copy, Default)]
struct Ring {
    seconds: [u64; RING_SECS],
    counts: [u64; RING_SECS],
}

impl Ring {
    fn bump(&mut self, second: u64) {
        let slot = (second % RING_SECS as u64) as usize;
        if self.seconds[slot] != second {
            self.seconds[slot] = second;
            self.counts[slot] = 0;
        }
        self.counts[slot] += 1;
    }

    /// Per second, over the whole seconds of the window before `now` (fewer right after the
    /// start, so that the first seconds do not read low).
    fn rate(&self, now: u64) -> f64 {
        let window = RATE_WINDOW_SECS.min(now).max(1);
        let from = now.saturating_sub(window);
        let total: u64 = self
            .seconds
            .iter()
            .zip(&self.counts)
            .filter(|&(&second, _)| second >= from && second < now)
            .map(|(_, &count)| count)
            .sum();
        total as f64 / window as f64
    }
}

#[derive(Debug, Clone, Default)]
struct Tenant {
    /// The id as first seen (keys are lower-case).
    id: String,
    totals: TenantStats,
    requests: Ring,
    sends: Ring,
    throttled: Ring,
}

/// One tenant (or all) in `GET /_emulator/traffic`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TenantTraffic {
    pub(crate) tenant_id: String,
    pub(crate) requests: usize,
    pub(crate) sends: usize,
    pub(crate) throttled: usize,
    pub(crate) requests_per_second: f64,
    pub(crate) sends_per_second: f64,
    pub(crate) throttled_per_second: f64,
}

/// `GET /_emulator/traffic`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TrafficReport {
    pub(crate) window_seconds: u64,
    /// The limit per tenant in force (Teams': 50), to read the rates against.
    pub(crate) limit_per_second: usize,
    /// Every tenant together.
    pub(crate) total: TenantTraffic,
    /// The busiest tenants first (by send rate, then sends).
    pub(crate) tenants: Vec<TenantTraffic>,
    /// How many tenants there are, listed or not.
    pub(crate) tenant_count: usize,
}

/// The per-tenant counters.
#[derive(Debug)]
pub(crate) struct Traffic {
    started: Instant,
    tenants: Mutex<HashMap<String, Tenant>>,
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic {
            started: Instant::now(),
            tenants: Mutex::new(HashMap::new()),
        }
    }
}

impl Traffic {
    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.started).as_secs()
    }

    fn with_tenant(&self, tenant_id: &str, change: impl FnOnce(&mut Tenant)) {
        let mut tenants = lock(&self.tenants);
        let tenant = tenants
            .entry(tenant_id.to_ascii_lowercase())
            .or_insert_with(|| Tenant {
                id: tenant_id.to_owned(),
                ..Tenant::default()
            });
        change(tenant);
    }

    /// A Bot Connector request for the tenant was answered with `status`.
    pub(crate) fn request(&self, tenant_id: &str, status: u16, now: Instant) {
        let second = self.second(now);
        self.with_tenant(tenant_id, |tenant| {
            tenant.totals.requests += 1;
            tenant.requests.bump(second);
            if status == 429 {
                tenant.totals.throttled += 1;
                tenant.throttled.bump(second);
            }
        });
    }

    /// An activity for the tenant was accepted.
    pub(crate) fn sent(&self, tenant_id: &str, now: Instant) {
        let second = self.second(now);
        self.with_tenant(tenant_id, |tenant| {
            tenant.totals.sends += 1;
            tenant.sends.bump(second);
        });
    }

    /// A conversation of the tenant was created.
    pub(crate) fn created(&self, tenant_id: &str) {
        self.with_tenant(tenant_id, |tenant| tenant.totals.creates += 1);
    }

    /// Every tenant's totals, by tenant id.
    pub(crate) fn totals(&self) -> BTreeMap<String, TenantStats> {
        lock(&self.tenants)
            .values()
            .map(|tenant| (tenant.id.clone(), tenant.totals.clone()))
            .collect()
    }

    /// Totals and recent rates: all tenants together, and the `limit` busiest, to be read
    /// against `limit_per_second`, the tenant limit in force.
    pub(crate) fn report(
        &self,
        now: Instant,
        limit: usize,
        limit_per_second: usize,
    ) -> TrafficReport {
        let second = self.second(now);
        let tenants = lock(&self.tenants);
        let mut listed: Vec<TenantTraffic> = tenants
            .values()
            .map(|tenant| TenantTraffic {
                tenant_id: tenant.id.clone(),
                requests: tenant.totals.requests,
                sends: tenant.totals.sends,
                throttled: tenant.totals.throttled,
                requests_per_second: tenant.requests.rate(second),
                sends_per_second: tenant.sends.rate(second),
                throttled_per_second: tenant.throttled.rate(second),
            })
            .collect();
        drop(tenants);
        let total = listed.iter().fold(
            TenantTraffic {
                tenant_id: "*".to_owned(),
                requests: 0,
                sends: 0,
                throttled: 0,
                requests_per_second: 0.0,
                sends_per_second: 0.0,
                throttled_per_second: 0.0,
            },
            |mut total, tenant| {
                total.requests += tenant.requests;
                total.sends += tenant.sends;
                total.throttled += tenant.throttled;
                total.requests_per_second += tenant.requests_per_second;
                total.sends_per_second += tenant.sends_per_second;
                total.throttled_per_second += tenant.throttled_per_second;
                total
            },
        );
        let tenant_count = listed.len();
        listed.sort_by(|a, b| {
            b.sends_per_second
                .total_cmp(&a.sends_per_second)
                .then(b.sends.cmp(&a.sends))
                .then_with(|| a.tenant_id.cmp(&b.tenant_id))
        });
        listed.truncate(limit);
        TrafficReport {
            window_seconds: RATE_WINDOW_SECS,
            limit_per_second,
            total,
            tenants: listed,
            tenant_count,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn rates_cover_the_last_whole_seconds_and_totals_everything() {
        let traffic = Traffic::default();
        let start = traffic.started;
        let at = |ms: u64| start + Duration::from_millis(ms);
        // 50 sends a second for 10 seconds in tenant "T", one 429 in the last second.
        for second in 0..10 {
            for i in 0..50 {
                traffic.request("T", 201, at(second * 1000 + i * 20));
                traffic.sent("T", at(second * 1000 + i * 20));
            }
        }
        traffic.request("t", 429, at(9_500));
        traffic.sent("other", at(1_000));

        let report = traffic.report(at(10_200), 10, 50);
        assert_eq!(report.tenant_count, 2);
        let busy = &report.tenants[0];
        assert_eq!(busy.tenant_id, "T");
        assert_eq!((busy.requests, busy.sends, busy.throttled), (501, 500, 1));
        assert_eq!(busy.sends_per_second, 50.0);
        assert_eq!(busy.throttled_per_second, 0.2);
        // Long after, the rate is back to zero and the totals remain.
        let later = traffic.report(at(60_000), 1, 50);
        assert_eq!(later.tenants.len(), 1);
        assert_eq!(later.total.sends_per_second, 0.0);
        assert_eq!(later.total.sends, 501);
        assert_eq!(traffic.totals()["other"].sends, 1);
    }

    #[test]
    fn the_first_seconds_are_not_diluted_by_seconds_that_never_were() {
        let traffic = Traffic::default();
        let start = traffic.started;
        for i in 0..40 {
            traffic.sent("t", start + Duration::from_millis(i * 25));
        }
        let report = traffic.report(start + Duration::from_millis(1_500), 10, 50);
        assert_eq!(report.tenants[0].sends_per_second, 40.0);
    }
}

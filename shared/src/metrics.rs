//! Prometheus metrics, served by the admin listener at `/metrics` (OpenMetrics text).
//!
//! Each service builds one [`Metrics`] and hands clones (cheap: the metrics are shared
//! handles) to the parts that count; there are no globals. Names follow Prometheus
//! conventions: a `herald_` prefix, `_total` on counters, units in the name.

use std::sync::Arc;

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

/// Label pairs of a metric family.
pub type Labels = Vec<(&'static str, String)>;

/// Buckets for latencies, from 5 ms to about 40 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.005, 2.0, 14)
}

fn histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

/// The service a registry describes: each registers only what it counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Ingress,
    Dispatcher,
}

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Dispatcher: how each handling of a job ended (`delivered`, `failed`, `expired`,
    /// `retrying`, `duplicate`, `rejected`).
    pub jobs: Family<Labels, Counter>,
    /// Dispatcher: calls to Teams by operation, and how long they took.
    pub teams_request_duration: Family<Labels, Histogram>,
    pub retries: Counter,
    /// Dispatcher: 429 answers from Teams.
    pub throttled: Counter,
    /// Dispatcher: sends held back by the pacer (`slept` here, or `redelayed`).
    pub pacing_waits: Family<Labels, Counter>,
    /// Dispatcher: delivered minus due, for jobs with a `deliverAt`.
    pub delivery_lateness: Histogram,
    /// Dispatcher: messages waiting in a queue (`dispatch`, `dead`).
    pub queue_messages: Family<Labels, Gauge>,
    /// Dispatcher: messages parked in Redis until due (sampled).
    pub timers_waiting: Gauge,
    /// Dispatcher: how long after its due time a timer was claimed for publishing.
    pub timer_lag: Histogram,
    pub token_refreshes: Counter,
    /// Dispatcher: Microsoft Graph calls by call and outcome (`ok`, `not_found`, `conflict`,
    /// `held` by the tenant's pace, `throttled`, `permission_missing`, …).
    pub graph_requests: Family<Labels, Counter>,
    /// Dispatcher: Graph tokens fetched from Entra, every tenant's.
    pub graph_token_refreshes: Counter,
    /// Dispatcher: acknowledgement frames sent to RabbitMQ (`multiple`, `single`, `requeue`);
    /// deliveries per `multiple` frame is what batching saves the broker.
    pub ack_frames: Family<Labels, Counter>,
    /// Dispatcher: deliveries settled (acked or requeued).
    pub deliveries_settled: Counter,
    /// Both: broadcasts reaching a status (`created`, `started`, `completed`, `expired`,
    /// `cancelled`), counted by the service that made the change.
    pub broadcasts: Family<Labels, Counter>,
    /// Dispatcher: broadcast recipients whose notification ended, by outcome.
    pub broadcast_recipients: Family<Labels, Counter>,
    /// Dispatcher: how late a broadcast's fan-out step ran after it was due (a fan-out that
    /// keeps up stays near zero).
    pub broadcast_fanout_lag: Histogram,
    /// Ingress: requests by route and status, and their duration by route.
    pub http_requests: Family<Labels, Counter>,
    pub http_request_duration: Family<Labels, Histogram>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new(service: Service) -> Self {
        let metrics = Self {
            registry: Arc::default(),
            jobs: Family::default(),
            teams_request_duration: Family::new_with_constructor(histogram),
            retries: Counter::default(),
            throttled: Counter::default(),
            pacing_waits: Family::default(),
            delivery_lateness: histogram(),
            queue_messages: Family::default(),
            timers_waiting: Gauge::default(),
            timer_lag: histogram(),
            token_refreshes: Counter::default(),
            graph_requests: Family::default(),
            graph_token_refreshes: Counter::default(),
            ack_frames: Family::default(),
            deliveries_settled: Counter::default(),
            broadcasts: Family::default(),
            broadcast_recipients: Family::default(),
            broadcast_fanout_lag: histogram(),
            http_requests: Family::default(),
            http_request_duration: Family::new_with_constructor(histogram),
        };
        let mut registry = Registry::with_prefix("herald");
        match service {
            Service::Dispatcher => {
                let m = &metrics;
                registry.register("jobs", "Job handlings by outcome", m.jobs.clone());
                registry.register_with_unit(
                    "teams_request_duration",
                    "Calls to the Bot Connector by operation",
                    Unit::Seconds,
                    m.teams_request_duration.clone(),
                );
                registry.register(
                    "retries",
                    "Transient failures scheduled for another attempt",
                    m.retries.clone(),
                );
                registry.register(
                    "teams_throttled",
                    "429 answers from Teams",
                    m.throttled.clone(),
                );
                registry.register(
                    "pacing_waits",
                    "Sends held back by Teams' limits",
                    m.pacing_waits.clone(),
                );
                registry.register_with_unit(
                    "delivery_lateness",
                    "Delivered minus due, for jobs with a deliverAt",
                    Unit::Seconds,
                    m.delivery_lateness.clone(),
                );
                registry.register(
                    "queue_messages",
                    "Messages waiting in a queue",
                    m.queue_messages.clone(),
                );
                registry.register(
                    "timers_waiting",
                    "Messages parked in Redis until due",
                    m.timers_waiting.clone(),
                );
                registry.register_with_unit(
                    "timer_lag",
                    "Claimed minus due, for messages parked until due",
                    Unit::Seconds,
                    m.timer_lag.clone(),
                );
                registry.register(
                    "token_refreshes",
                    "Bot tokens fetched from Entra",
                    m.token_refreshes.clone(),
                );
                registry.register(
                    "graph_requests",
                    "Calls to Microsoft Graph by call and outcome",
                    m.graph_requests.clone(),
                );
                registry.register(
                    "graph_token_refreshes",
                    "Graph tokens fetched from Entra, for every tenant",
                    m.graph_token_refreshes.clone(),
                );
                registry.register(
                    "ack_frames",
                    "Acknowledgement frames sent to RabbitMQ, by kind",
                    m.ack_frames.clone(),
                );
                registry.register(
                    "deliveries_settled",
                    "Deliveries acked or handed back",
                    m.deliveries_settled.clone(),
                );
                registry.register(
                    "broadcasts",
                    "Broadcasts reaching a status",
                    m.broadcasts.clone(),
                );
                registry.register(
                    "broadcast_recipients",
                    "Broadcast recipients whose notification ended, by outcome",
                    m.broadcast_recipients.clone(),
                );
                registry.register_with_unit(
                    "broadcast_fanout_lag",
                    "Run minus due, for broadcasts' fan-out steps",
                    Unit::Seconds,
                    m.broadcast_fanout_lag.clone(),
                );
            }
            Service::Ingress => {
                let m = &metrics;
                registry.register(
                    "http_requests",
                    "HTTP requests by route and status",
                    m.http_requests.clone(),
                );
                registry.register_with_unit(
                    "http_request_duration",
                    "HTTP request duration by route",
                    Unit::Seconds,
                    m.http_request_duration.clone(),
                );
                registry.register(
                    "broadcasts",
                    "Broadcasts reaching a status",
                    m.broadcasts.clone(),
                );
            }
        }
        Self {
            registry: Arc::new(registry),
            ..metrics
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }

    /// Counts a broadcast reaching `status`.
    pub fn broadcast(&self, status: &str) {
        self.broadcasts
            .get_or_create(&vec![("status", status.to_owned())])
            .inc();
    }

    /// Counts one handling of a job.
    pub fn job(&self, outcome: &'static str) {
        self.jobs
            .get_or_create(&vec![("outcome", outcome.to_owned())])
            .inc();
    }
}

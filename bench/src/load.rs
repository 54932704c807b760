//! Load shapes shared by the scenarios: job bodies, HTTP load at a fixed concurrency with
//! per-request latency, and sliding-window counts.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use herald_emulator::TeamsUser;
use herald_shared::job::{Job, Message, Target, UserTarget};
use serde_json::json;
use time::OffsetDateTime;

use crate::{
    procs::round,
    report::{Report, quantile},
};

/// Job `i`'s id: the same on every run (the namespace is fresh each time).
pub fn job_id(i: usize) -> String {
    format!("bench-{i:07}")
}

/// A job to the user's personal chat.
pub fn job(i: usize, user: &TeamsUser, text: String, deliver_at: Option<OffsetDateTime>) -> Job {
    Job::new(
        job_id(i).parse().expect("a bench job id is valid"),
        Target::User(UserTarget {
            tenant_id: user.tenant_id.clone(),
            aad_object_id: user.aad_object_id.clone(),
        }),
        Message::text(text),
        deliver_at,
        None,
    )
    .expect("a bench job is valid")
}

pub fn body(job: &Job) -> (String, Vec<u8>) {
    (
        job.id.to_string(),
        serde_json::to_vec(job).expect("a job serializes"),
    )
}

/// One prepared HTTP request.
#[derive(Debug, Clone)]
pub struct Request {
    pub url: String,
    pub authorization: String,
    pub body: axum::body::Bytes,
    pub extra_header: Option<(&'static str, String)>,
}

/// What an HTTP load run measured.
#[derive(Debug)]
pub struct HttpRun {
    pub took: Duration,
    /// Latency of each request, in milliseconds, sorted.
    pub latencies_ms: Vec<f64>,
    /// Count per HTTP status (0: no answer).
    pub statuses: BTreeMap<u16, usize>,
}

impl HttpRun {
    pub fn ok(&self, status: u16) -> usize {
        self.statuses.get(&status).copied().unwrap_or(0)
    }

    /// Throughput and latency figures under the current section.
    pub fn report(&self, report: &mut Report, accepted_status: u16, what: &str) {
        let n = self.latencies_ms.len();
        let accepted = self.ok(accepted_status);
        report.figure(
            "requests",
            "requests",
            json!(n),
            &format!("({accepted} answered {accepted_status})"),
        );
        let others: Vec<String> = self
            .statuses
            .iter()
            .filter(|(s, _)| **s != accepted_status)
            .map(|(s, c)| format!("{c}×{s}"))
            .collect();
        if !others.is_empty() {
            report.figure(
                "otherAnswers",
                "other answers",
                json!(others.join(", ")),
                "",
            );
        }
        report.figure(
            "seconds",
            "took",
            json!(round(self.took.as_secs_f64(), 3)),
            "s",
        );
        report.figure(
            "perSecond",
            &format!("{what} per second"),
            json!(round(accepted as f64 / self.took.as_secs_f64(), 1)),
            "/s",
        );
        for (key, label, q) in [
            ("p50Ms", "latency p50", 0.5),
            ("p99Ms", "latency p99", 0.99),
            ("maxMs", "latency max", 1.0),
        ] {
            report.figure(
                key,
                label,
                json!(round(quantile(&self.latencies_ms, q), 2)),
                "ms",
            );
        }
    }
}

/// Sends every request once, `concurrency` at a time (each worker takes the next request as
/// soon as its previous one is answered).
pub async fn http_load(
    http: &reqwest::Client,
    requests: Arc<Vec<Request>>,
    concurrency: usize,
) -> HttpRun {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (http, requests, next) = (http.clone(), requests.clone(), next.clone());
        workers.spawn(async move {
            let mut latencies = Vec::new();
            let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(request) = requests.get(i) else {
                    break;
                };
                let mut builder = http
                    .post(&request.url)
                    .header("authorization", &request.authorization)
                    .header("content-type", "application/json")
                    .body(request.body.clone());
                if let Some((name, value)) = &request.extra_header {
                    builder = builder.header(*name, value);
                }
                let sent = Instant::now();
                let status = match builder.send().await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let _ = response.bytes().await;
                        status
                    }
                    Err(_) => 0,
                };
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                *statuses.entry(status).or_default() += 1;
            }
            (latencies, statuses)
        });
    }
    let mut latencies_ms = Vec::with_capacity(requests.len());
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    while let Some(Ok((latencies, counts))) = workers.join_next().await {
        latencies_ms.extend(latencies);
        for (status, count) in counts {
            *statuses.entry(status).or_default() += count;
        }
    }
    let took = started.elapsed();
    latencies_ms.sort_by(f64::total_cmp);
    HttpRun {
        took,
        latencies_ms,
        statuses,
    }
}

/// The most events in any window of `window` (times need not be sorted).
pub fn busiest(times: &[OffsetDateTime], window: Duration) -> usize {
    let mut times = times.to_vec();
    times.sort();
    let window = time::Duration::try_from(window).unwrap_or(time::Duration::MAX);
    let mut best = 0;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end] - times[start] >= window {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}

/// Seconds between two wall-clock instants.
pub fn seconds(from: OffsetDateTime, to: OffsetDateTime) -> f64 {
    (to - from).as_seconds_f64()
}

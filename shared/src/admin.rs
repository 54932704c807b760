//! The admin listener every service runs: `/healthz` (the process is alive), `/readyz`
//! (its dependencies answer) and `/metrics` (Prometheus), kept apart from the public port so probes and scrapes never
//! compete with traffic.

use std::{future::Future, pin::Pin, sync::Arc};

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use serde_json::json;

use crate::{amqp::Broker, metrics::Metrics, store::Redis};

/// Answers whether one dependency is usable right now.
pub type ReadinessCheck = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// Redis and RabbitMQ, the dependencies of both services.
#[derive(Clone)]
pub struct Readiness {
    checks: Vec<(&'static str, ReadinessCheck)>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.checks.iter().map(|(name, _)| name))
            .finish()
    }
}

impl Readiness {
    pub fn new(redis: Redis, broker: Broker) -> Self {
        let redis_check: ReadinessCheck = Arc::new(move || {
            let redis = redis.clone();
            Box::pin(async move { redis.ping().await })
        });
        let broker_check: ReadinessCheck = Arc::new(move || {
            let ready = broker.is_ready();
            Box::pin(async move { ready })
        });
        Self {
            checks: vec![("redis", redis_check), ("rabbitmq", broker_check)],
        }
    }

    /// Each dependency's state, checked concurrently.
    pub async fn check(&self) -> Vec<(&'static str, bool)> {
        let results =
            futures_util::future::join_all(self.checks.iter().map(|(_, check)| check())).await;
        self.checks
            .iter()
            .map(|(name, _)| *name)
            .zip(results)
            .collect()
    }
}

pub fn router(readiness: Readiness, metrics: Metrics) -> Router {
    let metrics_route = get(move || {
        let text = metrics.encode();
        async move {
            (
                [(
                    header::CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )],
                text,
            )
        }
    });
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .with_state(readiness)
        .route("/metrics", metrics_route)
}

async fn readyz(State(readiness): State<Readiness>) -> impl IntoResponse {
    let checks = readiness.check().await;
    let ready = checks.iter().all(|(_, ok)| *ok);
    let body = json!({
        "status": if ready { "ready" } else { "unready" },
        "checks": checks.iter().map(|(name, ok)| (name.to_string(), json!(if *ok { "up" } else { "down" })))
            .collect::<serde_json::Map<_, _>>(),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// `<binary> healthcheck`: asks this container's own admin listener whether it is ready (for
/// container healthchecks in images that have no curl or shell). True on a 200 from `/readyz`.
pub fn probe_ready(admin_addr: std::net::SocketAddr) -> bool {
    use std::io::{Read, Write};
    let target = std::net::SocketAddr::from(([127, 0, 0, 1], admin_addr.port()));
    let timeout = std::time::Duration::from_secs(2);
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&target, timeout) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(timeout));
    if stream
        .write_all(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut status_line = [0u8; 12];
    stream.read_exact(&mut status_line).is_ok() && status_line.ends_with(b" 200")
}

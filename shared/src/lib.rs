//! Herald's common parts, used by the ingress and the dispatcher.
//!
//! # Layout
//! - [`config`]: configuration from the environment, validated once; [`cloud`] presets and the
//!   serviceUrl [`allowlist`].
//! - [`calendar`]: the recipient's clock: IANA zones, wall-clock times and their DST rules,
//!   weekly windows (send windows, quiet hours).
//! - [`job`]: the job contract other services publish (the one place its shape is defined),
//!   checked once as it is parsed; job ids and their three schemes; the internal change types;
//!   its OpenAPI schemas completed with the rules derive cannot state ([`job::openapi`]).
//! - [`amqp`]: the RabbitMQ topology (every name and argument), the reconnecting broker link,
//!   the confirmed publisher, the bookkeeping headers (read once into a `Bookkeeping`) and
//!   queue depths.
//! - [`store`]: Redis stores for conversation references, job status records and timers, and
//!   the namespaced connection the dispatcher's pacer builds on.
//! - [`submit`]: submitting a job (status record, then confirmed publish or timer),
//!   idempotently: the ingress's requests and greetings, the dispatcher's schedule occurrences.
//! - [`events`]: the CloudEvents Herald publishes to `{ns}.events` after the changes they
//!   report, with a Redis outbox so a crash in between loses none.
//! - [`broadcast`]: broadcasts (one message to a whole audience): the request, its
//!   audience and each recipient's notification id.
//! - [`schedule`]: recurring schedules: RRULEs expanded on the wall clock, one job per
//!   occurrence.
//! - [`timers`]: the way into the dispatch queue, now or when due: waits parked in Redis, and
//!   the pump that publishes them when they are due.
//! - [`telemetry`]: logs (JSON lines, with their own span field formatter) and traces;
//!   [`metrics`]: the Prometheus metrics; [`error`]: an error written with its causes
//!   ([`error::Chain`]), for logs and recorded texts.
//! - [`admin`]: the admin listener (`/healthz`, `/readyz`, `/metrics`).
//! - [`webhooks`]: webhook deliveries' Standard Webhooks signatures, and the guard deciding
//!   which URLs they may be posted to (no private, loopback or link-local addresses unless
//!   allowlisted).

pub mod admin;
pub mod allowlist;
pub mod amqp;
pub mod broadcast;
pub mod calendar;
pub mod cloud;
pub mod config;
pub mod error;
pub mod events;
pub mod job;
pub mod metrics;
pub mod schedule;
pub mod store;
pub mod submit;
pub mod telemetry;
pub mod timers;
pub mod webhooks;

/// Why a service could not be wired up at start (both services build the same way).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Redis(#[from] store::StoreError),
    #[error(transparent)]
    Amqp(#[from] amqp::InvalidAmqpUrl),
    #[error("cannot read a listener's address")]
    Listener(#[from] std::io::Error),
}

/// The HTTP client every outbound call uses: one connection pool per process, rustls.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(std::time::Duration::from_secs(5))
        .pool_idle_timeout(std::time::Duration::from_secs(90))
        .build()
        .expect("the HTTP client's fixed settings are valid")
}

/// Completes on SIGTERM (Kubernetes, docker stop) or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C received; shutting down"),
        _ = terminate => tracing::info!("SIGTERM received; shutting down"),
    }
}

//! Herald's common parts, used by the ingress and the dispatcher.
//!
//! # Layout
//! - [`config`]: configuration from the environment, validated once; [`cloud`] presets and the
//!   serviceUrl [`allowlist`].
//! - [`job`]: the job contract other services publish (the one place its shape is defined),
//!   checked once as it is parsed; job ids and their three schemes; the internal change types.
//! - [`amqp`]: the RabbitMQ topology (every name and argument), the reconnecting broker link,
//!   the confirmed publisher, the bookkeeping headers (read once into a `Bookkeeping`) and
//!   queue depths.
//! - [`store`]: Redis stores for conversation references and job status records, and the
//!   namespaced connection the dispatcher's pacer builds on.
//! - [`telemetry`]: logs (JSON lines, with their own span field formatter) and traces;
//!   [`metrics`]: the Prometheus metrics; [`error`]: an error written with its causes
//!   ([`error::Chain`]), for logs and recorded texts.
//! - [`admin`]: the admin listener (`/healthz`, `/readyz`, `/metrics`).

pub mod admin;
pub mod allowlist;
pub mod amqp;
pub mod cloud;
pub mod config;
pub mod error;
pub mod job;
pub mod metrics;
pub mod store;
pub mod telemetry;

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

//! `herald-ingress`: loads the configuration, sets up logging and tracing, and runs the service until
//! SIGTERM or Ctrl-C. `herald-ingress healthcheck` exits 0 when the running service is ready.

use herald_ingress::Ingress;
use herald_shared::{
    config::{Env, IngressConfig},
    error::Chain,
    telemetry,
};
use tokio::net::TcpListener;

/// mimalloc rather than glibc's allocator: the services allocate per message, from many
/// threads, and glibc's malloc and free cost a quarter of the dispatcher's time (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = match IngressConfig::from_env(&Env::from_process()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("herald-ingress: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        let ready = herald_shared::admin::probe_ready(config.admin_addr);
        return if ready {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::FAILURE
        };
    }
    let telemetry = match telemetry::init(
        "herald-ingress",
        config.common.log_format,
        &config.common.log_filter,
        &config.common.traces,
    ) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("herald-ingress: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    tracing::info!(?config, "starting herald-ingress");
    let result = run(config).await;
    if let Err(error) = &result {
        // Each layer once, outermost first, as `{error:#}` would print it, but without the
        // repetition of libraries that also print their cause in their own message.
        tracing::error!(error = %Chain(error.as_ref()), "herald-ingress failed");
    }
    telemetry.shutdown();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(_) => std::process::ExitCode::FAILURE,
    }
}

async fn run(config: IngressConfig) -> anyhow::Result<()> {
    use anyhow::Context;
    let http = TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding {}", config.http_addr))?;
    let admin = TcpListener::bind(config.admin_addr)
        .await
        .with_context(|| format!("binding {}", config.admin_addr))?;
    let ingress = Ingress::build(config, http, admin)?;
    ingress
        .run(herald_shared::shutdown_signal())
        .await
        .context("serving")?;
    Ok(())
}

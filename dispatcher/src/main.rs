//! `herald-dispatcher`: loads the configuration, sets up logging and runs the service until
//! SIGTERM or Ctrl-C (then drains within `HERALD_SHUTDOWN_GRACE` and exits 0).

use anyhow::Context;
use herald_dispatcher::Dispatcher;
use herald_shared::{
    config::{DispatcherConfig, Env},
    telemetry,
};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = match DispatcherConfig::from_env(&Env::from_process()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("herald-dispatcher: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    telemetry::init(config.common.log_format, &config.common.log_filter);
    tracing::info!(?config, "starting herald-dispatcher");
    match run(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "herald-dispatcher failed");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(config: DispatcherConfig) -> anyhow::Result<()> {
    let admin = TcpListener::bind(config.admin_addr)
        .await
        .with_context(|| format!("binding {}", config.admin_addr))?;
    let dispatcher = Dispatcher::build(config, admin)?;
    dispatcher
        .run(herald_shared::shutdown_signal())
        .await
        .context("serving the admin port")?;
    Ok(())
}

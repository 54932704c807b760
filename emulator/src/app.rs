//! The binary's wiring: configuration from the environment, logging, serving, and a
//! graceful stop on SIGTERM or Ctrl-C.

use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

use crate::Emulator;
use crate::config::{BinaryConfig, ConfigError, LogFormat};

/// Runs the emulator binary; returns its exit code (2 for configuration errors).
pub async fn run() -> ExitCode {
    let config = match BinaryConfig::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("herald-emulator: {err}");
            return ExitCode::from(2);
        }
    };
    if let Err(err) = init_tracing(config.log_format) {
        eprintln!("herald-emulator: {err}");
        return ExitCode::from(2);
    }

    let listener = match tokio::net::TcpListener::bind(config.addr).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!(
                "herald-emulator: cannot listen on {} (HERALD_EMULATOR_ADDR): {err}",
                config.addr
            );
            return ExitCode::from(1);
        }
    };
    let bot_endpoint = config.emulator.bot_endpoint.clone().unwrap_or_default();
    let emulator = match Emulator::start(config.emulator, listener).await {
        Ok(emulator) => emulator,
        Err(err) => {
            eprintln!("herald-emulator: {err:#}");
            return ExitCode::from(1);
        }
    };
    let page = format!("{}/", emulator.base_url());
    tracing::info!(
        page = %page,
        token_url = %emulator.token_url(),
        openid_metadata_url = %emulator.openid_metadata_url(),
        default_service_url = %emulator.default_service_url(),
        bot_endpoint = %bot_endpoint,
        "Teams emulator ready"
    );
    // Logs may be JSON for machines; the person starting the stack wants the page's address.
    eprintln!("herald-emulator: open {page} to act as a Teams user");

    stop_signal().await;
    tracing::info!("stopping");
    emulator.shutdown().await;
    ExitCode::SUCCESS
}

fn init_tracing(format: LogFormat) -> Result<(), ConfigError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(value) if !value.trim().is_empty() => {
            EnvFilter::try_new(&value).map_err(|err| ConfigError::Invalid {
                var: "RUST_LOG",
                reason: err.to_string(),
                value,
            })?
        }
        _ => EnvFilter::new("info"),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
    }
    Ok(())
}

/// Resolves on Ctrl-C or (on Unix) SIGTERM.
async fn stop_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

//! `herald-dispatcher`: loads the configuration, sets up logging and tracing, and runs the service until
//! SIGTERM or Ctrl-C (then drains within `HERALD_SHUTDOWN_GRACE` and exits 0).
//!
//! ```text
//! herald-dispatcher                                  run the dispatcher
//! herald-dispatcher dead list [--limit N]            the dead-letter queue, one JSON line each
//! herald-dispatcher dead redrive (--all | ID…)       send dead jobs back to the dispatch queue
//! herald-dispatcher healthcheck                      exit 0 if the running dispatcher is ready
//! ```

use std::io::Write;

use anyhow::Context;
use herald_dispatcher::{Dispatcher, dead_letters::Tools};
use herald_shared::{
    config::{DispatcherConfig, Env},
    error::Chain,
    telemetry,
};
use tokio::net::TcpListener;

const USAGE: &str =
    "usage: herald-dispatcher [dead list [--limit N] | dead redrive (--all | ID...)]";

/// mimalloc rather than glibc's allocator: the services allocate per message, from many
/// threads, and glibc's malloc and free cost a quarter of the dispatcher's time (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match DispatcherConfig::from_env(&Env::from_process()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("herald-dispatcher: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    // The service traces its work; the operator's commands only log, to stderr.
    let telemetry = if args.is_empty() {
        match telemetry::init(
            "herald-dispatcher",
            config.common.log_format,
            &config.common.log_filter,
            &config.common.traces,
        ) {
            Ok(telemetry) => Some(telemetry),
            Err(error) => {
                eprintln!("herald-dispatcher: {error}");
                return std::process::ExitCode::from(2);
            }
        }
    } else {
        telemetry::init_for_command(config.common.log_format, "warn");
        None
    };
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => {
            tracing::info!(?config, "starting herald-dispatcher");
            run(config).await
        }
        ["dead", "list", rest @ ..] => match parse_limit(rest) {
            Some(limit) => list(config, limit).await,
            None => return usage(),
        },
        ["healthcheck"] => {
            let ready = herald_shared::admin::probe_ready(config.admin_addr);
            return if ready {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            };
        }
        ["dead", "redrive", "--all"] => redrive(config, Vec::new()).await,
        ["dead", "redrive", ids @ ..] if !ids.is_empty() && !ids.contains(&"--all") => {
            redrive(config, ids.iter().map(|id| id.to_string()).collect()).await
        }
        _ => return usage(),
    };
    if let Err(error) = &result {
        // Each layer once, outermost first, as `{error:#}` would print it, but without the
        // repetition of libraries that also print their cause in their own message.
        let error = Chain(error.as_ref());
        tracing::error!(%error, "herald-dispatcher failed");
        eprintln!("herald-dispatcher: {error}");
    }
    if let Some(telemetry) = telemetry {
        telemetry.shutdown();
    }
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(_) => std::process::ExitCode::FAILURE,
    }
}

fn usage() -> std::process::ExitCode {
    eprintln!("{USAGE}");
    std::process::ExitCode::from(2)
}

fn parse_limit(rest: &[&str]) -> Option<usize> {
    match rest {
        [] => Some(100),
        ["--limit", n] => n.parse().ok(),
        _ => None,
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

async fn list(config: DispatcherConfig, limit: usize) -> anyhow::Result<()> {
    let tools = Tools::connect(&config).await?;
    let letters = tools.list(limit).await?;
    tools.close().await;
    let mut out = std::io::stdout().lock();
    for letter in letters {
        writeln!(out, "{}", serde_json::to_string(&letter)?)?;
    }
    Ok(())
}

async fn redrive(config: DispatcherConfig, ids: Vec<String>) -> anyhow::Result<()> {
    let tools = Tools::connect(&config).await?;
    let report = tools.redrive(&ids).await?;
    tools.close().await;
    writeln!(
        std::io::stdout().lock(),
        "{}",
        serde_json::to_string(&report)?
    )?;
    Ok(())
}

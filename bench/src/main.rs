//! `herald-bench`: load scenarios against the real service binaries, Redis and RabbitMQ, with
//! the emulator standing in for Teams. Each scenario runs in a fresh namespace, removed
//! afterwards, and prints its figures as one block (or one JSON object with `--json`).
//! BENCHMARKS.md has the commands and the figures.

mod amqp;
mod args;
mod broadcasts;
mod cleanup;
mod load;
mod procs;
mod redis_stats;
mod report;
mod scenarios;
mod stack;
mod tenant_trace;

use std::path::PathBuf;

use args::Args;
use report::Report;
use stack::Common;

fn usage() -> String {
    format!(
        "usage: herald-bench SCENARIO [options] [--runs N] [--json] [--log-level info] [--bin-dir target/release]

scenarios:
  {}
  {}
  {}
  {}
  {}
  {}
  {}
  {}

--runs N runs the scenario N times and reports each run, then the median of every figure.
The services are the release binaries (cargo build --release --bins); Redis and RabbitMQ are
HERALD_TEST_REDIS_URL / HERALD_TEST_AMQP_URL, or 127.0.0.1's.",
        scenarios::dispatch::USAGE,
        scenarios::ingress::USAGE,
        scenarios::pacing::USAGE,
        scenarios::delay::USAGE,
        scenarios::park::USAGE,
        scenarios::emulator::USAGE,
        scenarios::broadcast::USAGE,
        scenarios::reach::USAGE,
    )
}

/// mimalloc rather than glibc's allocator: the services allocate per message, from many
/// threads, and glibc's malloc and free cost a quarter of the dispatcher's time (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let mut tokens: Vec<String> = std::env::args().skip(1).collect();
    if tokens.is_empty() || tokens.iter().any(|t| t == "--help" || t == "-h") {
        eprintln!("{}", usage());
        return if tokens.is_empty() {
            std::process::ExitCode::from(2)
        } else {
            std::process::ExitCode::SUCCESS
        };
    }
    let scenario = tokens.remove(0);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench")
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("herald-bench: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&scenario, Args::new(tokens))) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!(
                "herald-bench {scenario}: {}",
                herald_shared::error::Chain(error.as_ref())
            );
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(scenario: &str, mut args: Args) -> anyhow::Result<()> {
    let common = Common {
        json: args.flag("json"),
        log_level: args.value("log-level", "info".to_owned())?,
        bin_dir: args
            .value("bin-dir", Common::default_bin_dir().display().to_string())?
            .parse::<PathBuf>()?,
    };
    let runs: usize = args.value("runs", 1)?;
    anyhow::ensure!(runs > 0, "--runs must be positive");
    let mut reports = Vec::with_capacity(runs);
    for n in 1..=runs {
        if runs > 1 {
            eprintln!("run {n} of {runs}");
        }
        let report = run_once(scenario, &common, args.clone()).await?;
        if runs > 1 && !common.json {
            report.print_text()?;
        }
        reports.push(report);
    }
    if runs == 1 {
        return reports[0].print(common.json);
    }
    let medians = Report::medians(&reports);
    if common.json {
        report::print_line(&Report::runs_json(&reports, &medians).to_string())
    } else {
        medians.print_text()
    }
}

async fn run_once(scenario: &str, common: &Common, args: Args) -> anyhow::Result<Report> {
    let common = common.clone();
    let background = procs::background_load(std::time::Duration::from_secs(2)).await;
    eprintln!("machine busy before the run: {background:.2} cores");
    let mut report = match scenario {
        "dispatch" => scenarios::dispatch::run(&common, args).await?,
        "ingress" => scenarios::ingress::run(&common, args).await?,
        "pacing" => scenarios::pacing::run(&common, args).await?,
        "delay" => scenarios::delay::run(&common, args).await?,
        "park" => scenarios::park::run(&common, args).await?,
        "emulator" => scenarios::emulator::run(&common, args).await?,
        "broadcast" => scenarios::broadcast::run(&common, args).await?,
        "reach" => scenarios::reach::run(&common, args).await?,
        other => anyhow::bail!("unknown scenario {other:?}\n{}", usage()),
    };
    report.section("machine");
    report.figure(
        "busyBeforeRun",
        "cores busy before the run (2 s sample)",
        serde_json::json!(procs::round(background, 2)),
        "",
    );
    Ok(report)
}

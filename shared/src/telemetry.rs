//! Logging: JSON lines by default (for log shippers), human-readable with
//! `HERALD_LOG_FORMAT=pretty`, filtered by `RUST_LOG`.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::LogFormat;

/// Installs the global subscriber, logging to stdout (a service's output is its log);
/// later calls (tests starting several services) do nothing.
pub fn init(format: LogFormat, filter: &str) {
    install(format, filter, std::io::stdout);
}

/// The same, logging to stderr: for commands whose stdout is their answer.
pub fn init_for_command(format: LogFormat, filter: &str) {
    install(format, filter, std::io::stderr);
}

fn install<W>(format: LogFormat, filter: &str, writer: W)
where
    W: for<'a> fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(writer),
            )
            .try_init(),
        LogFormat::Pretty => registry.with(fmt::layer().with_writer(writer)).try_init(),
    };
}

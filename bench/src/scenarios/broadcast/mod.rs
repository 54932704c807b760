//! `broadcast`: `list` broadcasts through the real ingress and dispatcher, to users the
//! emulator generates (no chat stored in Herald, so each recipient is two requests to Teams:
//! the chat's creation and the message). The tenant rate is raised to `--rate` requests a
//! second in both the emulator (which answers 429 past it, as Teams does at 50) and Herald.
//!
//! - Part A, "paced" (`--recipients`): the list uploaded, released and sent to the end. How
//!   close Teams' received rate comes to the configured one, without a 429; what it costs.
//!   `--ceiling` repeats it with pacing off in Herald and the emulator: what this machine can
//!   send of the same work at all, to read the paced rate against.
//! - Part B, "fan-out" (`--list N`): a large list; the upload, how long the fan-out takes to
//!   hand every recipient to the dispatch queue, and Redis' memory per recipient;
//!   `--stop-after-fanout` ends it there.
//!
//! Each part runs in a namespace, emulator and services of its own.

mod fan_out;
mod paced;
mod redis_memory;

use std::time::Duration;

use herald_emulator::{EmulatorConfig, GeneratedUsers};
use herald_shared::{
    config::{Namespace, RedisTarget},
    store::{BroadcastStore, Redis},
};
use serde_json::json;

use self::redis_memory::RedisMemory;
use crate::{
    args::Args,
    broadcasts::BroadcastApi,
    procs::{Footprint, Subject, round},
    report::Report,
    stack::{Bench, Common},
};

pub const USAGE: &str =
    "broadcast [--recipients 100000] [--rate 5000] [--ahead max(1000, 2×rate)] [--prefetch N] [--ceiling]
           [--list 0 [--stop-after-fanout]]   (--recipients 0: the fan-out part alone)";

/// The broadcast each part sends.
const BROADCAST_ID: &str = "bench-broadcast";
const MESSAGE: &str = "The office is closed on Friday";

/// How the services and the emulator are set for a part.
#[derive(Debug, Clone, Copy)]
struct Pace {
    /// Requests per tenant and second, in Teams (the emulator) and in Herald.
    rate: u32,
    /// `HERALD_BROADCAST_AHEAD`.
    ahead: u64,
    /// Whether the rate is held (both sides); off, the part measures the machine's ceiling
    /// for the same work.
    limited: bool,
    /// `HERALD_PREFETCH`, when not the dispatcher's default.
    prefetch: Option<u16>,
}

pub async fn run(common: &Common, mut args: Args) -> anyhow::Result<Report> {
    let recipients: usize = args.value("recipients", 100_000)?;
    let rate: u32 = args.value("rate", 5_000)?;
    let list: usize = args.value("list", 0)?;
    // Twice the rate in recipients, four seconds of sends at two requests each: the fan-out
    // should then never leave the pacer without work.
    let ahead: u64 = args.value("ahead", 1_000.max(2 * u64::from(rate)))?;
    let prefetch: Option<u16> = args.optional("prefetch")?;
    let stop_after_fan_out = args.flag("stop-after-fanout");
    let ceiling = args.flag("ceiling");
    args.finish()?;
    anyhow::ensure!(rate > 0 && ahead > 0, "--rate and --ahead must be positive");
    anyhow::ensure!(
        recipients > 0 || list > 0,
        "nothing to do: --recipients and --list are both 0"
    );
    anyhow::ensure!(
        !stop_after_fan_out || list > 0,
        "--stop-after-fanout is for the fan-out part: give --list N"
    );
    anyhow::ensure!(
        !ceiling || recipients > 0,
        "--ceiling repeats the paced part: give --recipients N"
    );
    let pace = Pace {
        rate,
        ahead,
        limited: true,
        prefetch,
    };

    let mut report = Report::new(
        "broadcast",
        format!(
            "broadcast: list broadcasts to generated users of one tenant (2 requests each), tenant rate {rate}/s in Teams and Herald, limits on, {ahead} ahead; paced: {recipients}; fan-out: {list}{}",
            if stop_after_fan_out {
                ", stopped after the fan-out"
            } else {
                ""
            }
        ),
        json!({
            "recipients": recipients, "rate": rate, "ahead": ahead, "list": list,
            "prefetch": prefetch,
            "stopAfterFanOut": stop_after_fan_out, "ceiling": ceiling,
            "logLevel": common.log_level,
        }),
    );
    if recipients > 0 {
        paced::run(common, &mut report, pace, recipients).await?;
    }
    if ceiling {
        let unlimited = Pace {
            limited: false,
            ..pace
        };
        paced::run(common, &mut report, unlimited, recipients).await?;
    }
    if list > 0 {
        fan_out::run(common, &mut report, pace, list, stop_after_fan_out).await?;
    }
    Ok(report)
}

/// One part's world: the emulator with the raised tenant limit, `count` generated users of
/// one tenant, the ingress and a dispatcher paced at the same rate, and their footprint's
/// idle sample.
struct Stage {
    bench: Bench,
    api: BroadcastApi,
    users: GeneratedUsers,
    footprint: Footprint,
}

impl Stage {
    async fn start(
        common: &Common,
        name: &str,
        tenant_id: &str,
        count: usize,
        pace: Pace,
    ) -> anyhow::Result<Self> {
        let config = EmulatorConfig {
            rate_limits: pace.limited,
            tenant_requests_per_second: pace.rate as usize,
            ..EmulatorConfig::default()
        };
        let mut bench = Bench::start_with(name, common, config).await?;
        let users = bench
            .emulator
            .generate_tenant_users(tenant_id, "bench", count);
        let ingress_url = bench
            .start_service("herald-ingress", "ingress", &[])
            .await?
            .http_url
            .clone();
        let api = BroadcastApi::new(&bench.http, &ingress_url);
        let tenant_rate = if pace.limited {
            format!("{}/1s", pace.rate)
        } else {
            "off".to_owned()
        };
        let mut settings = vec![
            ("HERALD_TENANT_RATE", tenant_rate),
            ("HERALD_CONVERSATION_RATES", "off".to_owned()),
            ("HERALD_BROADCAST_AHEAD", pace.ahead.to_string()),
        ];
        if let Some(prefetch) = pace.prefetch {
            settings.push(("HERALD_PREFETCH", prefetch.to_string()));
        }
        bench
            .start_service("herald-dispatcher", "dispatcher", &settings)
            .await?;
        let services = bench
            .services()
            .iter()
            .map(|s| Subject::process(&s.name, s.pid))
            .collect();
        let footprint = Footprint::settled(services).await;
        Ok(Self {
            bench,
            api,
            users,
            footprint,
        })
    }

    fn dispatcher(&self) -> &crate::stack::Service {
        self.bench
            .services()
            .iter()
            .find(|s| s.name == "dispatcher")
            .expect("the stage runs a dispatcher")
    }

    /// The broadcast's record as the dispatcher keeps it (`fanned`: recipients handed out).
    fn store(&self) -> anyhow::Result<BroadcastStore> {
        let redis = Redis::new(
            &herald_tests::redis_url()
                .parse::<RedisTarget>()
                .map_err(anyhow::Error::msg)?,
            self.bench
                .namespace
                .parse::<Namespace>()
                .map_err(anyhow::Error::msg)?,
        )?;
        Ok(BroadcastStore::new(redis, Duration::from_secs(24 * 3600)))
    }

    /// Figures from the dispatcher's metrics: how its sends waited for the pacer, and how late
    /// the fan-out's steps ran.
    async fn report_dispatcher(&self, report: &mut Report, recipients: usize) {
        let dispatcher = self.dispatcher();
        let http = &self.bench.http;
        // `+ 0.0`: a metric with no series sums to -0.0.
        let per = |n: f64| round(n / recipients.max(1) as f64, 3) + 0.0;
        let mean_ms = |sum: f64, count: f64| round(sum * 1000.0 / count.max(1.0), 1) + 0.0;
        let slept = dispatcher
            .metric(http, "herald_pacing_waits_total", "action=\"slept\"")
            .await;
        let redelayed = dispatcher
            .metric(http, "herald_pacing_waits_total", "action=\"redelayed\"")
            .await;
        report.figure(
            "pacingWaitsPerRecipient",
            "pacer waits per recipient: slept / parked",
            json!(per(slept)),
            &format!(
                "/ {} (a wait over 250 ms is parked as a timer)",
                per(redelayed)
            ),
        );
        let lag_sum = dispatcher
            .metric(http, "herald_broadcast_fanout_lag_seconds_sum", "")
            .await;
        let steps = dispatcher
            .metric(http, "herald_broadcast_fanout_lag_seconds_count", "")
            .await;
        report.figure(
            "fanOutStepLagMs",
            "fan-out steps: mean lag behind their due time",
            json!(mean_ms(lag_sum, steps)),
            &format!("ms ({steps} steps)"),
        );
        let timer_sum = dispatcher
            .metric(http, "herald_timer_lag_seconds_sum", "")
            .await;
        let timers = dispatcher
            .metric(http, "herald_timer_lag_seconds_count", "")
            .await;
        report.figure(
            "timerLagMs",
            "parked jobs: mean lag behind their turn",
            json!(mean_ms(timer_sum, timers)),
            &format!("ms ({timers} timers)"),
        );
        let send = "operation=\"send\"";
        let send_sum = dispatcher
            .metric(http, "herald_teams_request_duration_seconds_sum", send)
            .await;
        let sends = dispatcher
            .metric(http, "herald_teams_request_duration_seconds_count", send)
            .await;
        report.figure(
            "sendCallMs",
            "Teams send call: mean duration",
            json!(mean_ms(send_sum, sends)),
            "ms (as the dispatcher times it)",
        );
    }
}

/// Seconds since `from`, on the report's scale.
fn seconds_since(from: std::time::Instant) -> f64 {
    round(from.elapsed().as_secs_f64(), 2)
}

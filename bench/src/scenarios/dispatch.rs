//! `dispatch`: jobs to users whose conversations are known, Teams' limits off, end to end
//! (first publish → last activity received by the emulator), against the broker's own
//! consume+ack rate for the same bodies.

use std::time::Duration;

use serde_json::json;

use crate::{
    amqp::Amqp,
    args::Args,
    load::{body, job, seconds},
    procs::{Footprint, Subject, round},
    redis_stats::{self, Monitor},
    report::Report,
    stack::{Bench, Common, population},
};

pub const USAGE: &str =
    "dispatch [--jobs N] [--tenants 500] [--users-per-tenant 100] [--prefetch 1024]
           [--dispatchers 1] [--latency-ms 0] [--no-ceiling] [--redis-monitor]
           [--perf FILE] [--callgrind FILE] [--massif FILE]";

/// Deliveries per `multiple` ack in the batched-ack ceiling.
const CEILING_ACK_EVERY: usize = 32;

pub async fn run(common: &Common, mut args: Args) -> anyhow::Result<Report> {
    let tenants: usize = args.value("tenants", 500)?;
    let per_tenant: usize = args.value("users-per-tenant", 100)?;
    let jobs: usize = args.value("jobs", tenants * per_tenant)?;
    let prefetch: u16 = args.value("prefetch", herald_shared::config::DEFAULT_PREFETCH)?;
    let dispatchers: usize = args.value("dispatchers", 1)?;
    let latency_ms: u64 = args.value("latency-ms", 0)?;
    let ceiling = !args.flag("no-ceiling");
    let monitor = args.flag("redis-monitor");
    let perf: Option<String> = args.optional("perf")?;
    let callgrind: Option<String> = args.optional("callgrind")?;
    let massif: Option<String> = args.optional("massif")?;
    args.finish()?;
    anyhow::ensure!(
        jobs > 0 && dispatchers > 0,
        "--jobs and --dispatchers must be positive"
    );

    // With fewer jobs than users, only as many users as jobs (one job each).
    let users_needed = jobs.min(tenants * per_tenant);
    let tenants_needed = users_needed.div_ceil(per_tenant);
    let mut people = population(tenants_needed, per_tenant, 0);
    people.truncate(users_needed);

    let mut report = Report::new(
        "dispatch",
        format!(
            "dispatch: {jobs} jobs to {} users in {tenants_needed} tenants, prefetch {prefetch}, {dispatchers} dispatcher(s), Teams latency {latency_ms} ms, limits off",
            people.len()
        ),
        json!({
            "jobs": jobs, "tenants": tenants_needed, "users": people.len(), "prefetch": prefetch,
            "dispatchers": dispatchers, "latencyMs": latency_ms, "logLevel": common.log_level,
        }),
    );

    let mut bench = Bench::start("dispatch", common, false).await?;
    bench
        .emulator
        .set_latency(Duration::from_millis(latency_ms));
    let users = bench.install(&people).await?;
    let make = |i: usize| {
        body(&job(
            i,
            &users[i % users.len()].user,
            format!("bench {i}"),
            None,
        ))
    };
    let amqp = Amqp::connect().await?;

    let ceiling_rate = if ceiling {
        eprintln!("broker ceiling: {jobs} bodies through a scratch quorum queue");
        let (publish, consume) = amqp
            .ceiling(&bench.namespace, prefetch, 1, jobs, make)
            .await?;
        let (_, consume_batched) = amqp
            .ceiling(&bench.namespace, prefetch, CEILING_ACK_EVERY, jobs, make)
            .await?;
        report.section("broker ceiling (scratch quorum queue, no work)");
        report.figure(
            "publishPerSecond",
            "confirmed publishes per second",
            json!(round(jobs as f64 / publish.as_secs_f64(), 1)),
            "/s",
        );
        let rate = jobs as f64 / consume.as_secs_f64();
        report.figure(
            "consumeAckPerSecond",
            "consume+ack per second, one ack each",
            json!(round(rate, 1)),
            "/s",
        );
        report.figure(
            "consumeBatchedAckPerSecond",
            &format!("consume+ack per second, 1 ack per {CEILING_ACK_EVERY}"),
            json!(round(jobs as f64 / consume_batched.as_secs_f64(), 1)),
            "/s",
        );
        Some(rate)
    } else {
        None
    };

    let rates = [
        ("HERALD_TENANT_RATE", "off".to_owned()),
        ("HERALD_CONVERSATION_RATES", "off".to_owned()),
        ("HERALD_PREFETCH", prefetch.to_string()),
    ];
    for n in 0..dispatchers {
        // The first dispatcher may run under valgrind: callgrind counts instructions, massif
        // samples the heap.
        let wrapper: Vec<String> = match (&callgrind, &massif, n) {
            (Some(out), _, 0) => vec![
                "valgrind".into(),
                "--tool=callgrind".into(),
                format!("--callgrind-out-file={out}"),
            ],
            (None, Some(out), 0) => vec![
                "valgrind".into(),
                "--tool=massif".into(),
                format!("--massif-out-file={out}"),
            ],
            _ => Vec::new(),
        };
        bench
            .start_wrapped(
                "herald-dispatcher",
                &format!("dispatcher-{n}"),
                &rates,
                &wrapper,
            )
            .await?;
    }
    let services = bench.services().iter();
    let mut footprint =
        Footprint::settled(services.map(|s| Subject::process(&s.name, s.pid)).collect()).await;

    let stats_before = redis_stats::commandstats().await?;
    let monitor = if monitor {
        Some(Monitor::start(&bench.namespace)?)
    } else {
        None
    };
    let profiler = match &perf {
        Some(out) => Some(Profiler::attach(bench.services()[0].pid, out)?),
        None => None,
    };
    footprint.start();
    eprintln!("publishing {jobs} jobs");
    let published = amqp.publish_jobs(&bench.namespace, jobs, make).await?;
    eprintln!(
        "published in {:.1} s; waiting for deliveries",
        published.took.as_secs_f64()
    );
    let mut within = Duration::from_secs(120) + Duration::from_millis(jobs as u64 * 2);
    if callgrind.is_some() || massif.is_some() {
        within *= 50;
    }
    bench.wait_for_sends(jobs, within).await?;
    let measured = footprint.finish();
    if let Some(profiler) = profiler {
        profiler.stop();
    }
    // Let the last acks and status writes land before reading Redis's counters.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats_after = redis_stats::commandstats().await?;

    let received = bench.received(&users);
    let first = received
        .iter()
        .map(|(_, at)| *at)
        .min()
        .expect("sends arrived");
    let last = received
        .iter()
        .map(|(_, at)| *at)
        .max()
        .expect("sends arrived");
    let mut texts: Vec<&str> = received.iter().map(|(t, _)| t.as_str()).collect();
    texts.sort_unstable();
    texts.dedup();
    let end_to_end = seconds(published.first_at, last);
    let rate = jobs as f64 / end_to_end;

    report.section("end to end");
    report.figure(
        "delivered",
        "delivered (distinct jobs)",
        json!(texts.len()),
        &format!("of {jobs}; {} activities received", received.len()),
    );
    report.figure(
        "publishSeconds",
        "publishing took",
        json!(round(published.took.as_secs_f64(), 3)),
        &format!("s ({:.0}/s)", jobs as f64 / published.took.as_secs_f64()),
    );
    report.figure(
        "firstReceivedSeconds",
        "first publish → first received",
        json!(round(seconds(published.first_at, first), 3)),
        "s",
    );
    report.figure(
        "seconds",
        "first publish → last received",
        json!(round(end_to_end, 3)),
        "s",
    );
    report.figure(
        "deliveredPerSecond",
        "delivered per second",
        json!(round(rate, 1)),
        "/s",
    );
    if let Some(ceiling) = ceiling_rate {
        report.figure(
            "ofCeiling",
            "of the broker's consume+ack (one ack each)",
            json!(round(rate / ceiling, 3)),
            "",
        );
    }
    let (mut settled, mut multiple, mut single) = (0.0, 0.0, 0.0);
    for service in bench.services() {
        settled += service
            .metric(&bench.http, "herald_deliveries_settled_total", "")
            .await;
        multiple += service
            .metric(&bench.http, "herald_ack_frames_total", "kind=\"multiple\"")
            .await;
        single += service
            .metric(&bench.http, "herald_ack_frames_total", "kind=\"single\"")
            .await;
    }
    report.figure(
        "deliveriesPerAckFrame",
        "deliveries settled per ack frame",
        json!(round(settled / (multiple + single).max(1.0), 1)),
        &format!("({multiple} multiple, {single} single)"),
    );
    let stats = bench.emulator.stats();
    report.figure(
        "teamsRequests",
        "Bot Connector requests / 429s",
        json!(stats.requests),
        &format!("/ {}", stats.throttled),
    );
    redis_stats::report_delta(&mut report, &stats_before, &stats_after, jobs);
    if let Some(monitor) = monitor {
        monitor.finish(&mut report, jobs);
    }
    measured.report(
        &mut report,
        "footprint (from first publish to last received)",
        jobs,
        "jobs",
    );

    let ready = amqp.ready(&format!("{}.dispatch", bench.namespace)).await?;
    anyhow::ensure!(ready == 0, "{ready} jobs left in the dispatch queue");
    amqp.close().await;
    bench.finish().await?;
    Ok(report)
}

/// `perf record` attached to a running process (software clock: hardware counters are often
/// unavailable in virtual machines), with DWARF call graphs since release builds keep no
/// frame pointers.
#[derive(Debug)]
struct Profiler {
    child: std::process::Child,
}

impl Profiler {
    fn attach(pid: u32, out: &str) -> anyhow::Result<Self> {
        let child = std::process::Command::new("perf")
            .args([
                "record",
                "-e",
                "cpu-clock",
                "-F",
                "499",
                "--call-graph",
                "dwarf,8192",
            ])
            .args(["-p", &pid.to_string(), "-o", out])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting perf: {e}"))?;
        // perf needs a moment to attach to every thread.
        std::thread::sleep(Duration::from_millis(500));
        Ok(Self { child })
    }

    fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

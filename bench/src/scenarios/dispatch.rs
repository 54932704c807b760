//! `dispatch`: jobs to users whose conversations are known, Teams' limits off, end to end
//! (first publish → last activity received by the emulator), against the broker's own
//! consume+ack rate for the same bodies. With `--rabbit-nodes 3` it runs on a RabbitMQ
//! cluster of its own (quorum queues replicated on every node), the dispatchers spread over
//! the nodes, and each node's CPU measured; `--kill-leader` then SIGKILLs the node leading
//! `{ns}.dispatch` once half the jobs have arrived, and reports how long sending paused.
//! `--rate N` offers the jobs at N a second instead of as fast as the broker takes them, so that
//! builds of different speeds (with and without events, say) are compared under the same load.

use std::time::Duration;

use serde_json::json;

use herald_tests::rabbit_cluster::RabbitCluster;

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
           [--dispatchers 1] [--rabbit-nodes 1 [--kill-leader]] [--latency-ms 0] [--no-ceiling]
           [--redis-monitor] [--rate JOBS_PER_SECOND]
           [--perf FILE] [--callgrind FILE] [--massif FILE]";

/// Deliveries per `multiple` ack in the batched-ack ceiling.
const CEILING_ACK_EVERY: usize = 32;

pub async fn run(common: &Common, mut args: Args) -> anyhow::Result<Report> {
    let tenants: usize = args.value("tenants", 500)?;
    let per_tenant: usize = args.value("users-per-tenant", 100)?;
    let jobs: usize = args.value("jobs", tenants * per_tenant)?;
    let prefetch: u16 = args.value("prefetch", herald_shared::config::DEFAULT_PREFETCH)?;
    let dispatchers: usize = args.value("dispatchers", 1)?;
    let rabbit_nodes: usize = args.value("rabbit-nodes", 1)?;
    let kill_leader = args.flag("kill-leader");
    let latency_ms: u64 = args.value("latency-ms", 0)?;
    let ceiling = !args.flag("no-ceiling");
    let offered: Option<u32> = args.optional("rate")?;
    let monitor = args.flag("redis-monitor");
    let perf: Option<String> = args.optional("perf")?;
    let callgrind: Option<String> = args.optional("callgrind")?;
    let massif: Option<String> = args.optional("massif")?;
    args.finish()?;
    anyhow::ensure!(
        jobs > 0 && dispatchers > 0 && rabbit_nodes > 0,
        "--jobs, --dispatchers and --rabbit-nodes must be positive"
    );
    anyhow::ensure!(
        !kill_leader || rabbit_nodes >= 3,
        "--kill-leader needs a cluster that survives a node: --rabbit-nodes 3 or more"
    );
    // One node: this machine's. More: a cluster of the bench's own, started here and removed
    // when the run ends, however it ends.
    let mut cluster = if rabbit_nodes > 1 {
        eprintln!("starting a {rabbit_nodes}-node RabbitMQ cluster");
        Some(tokio::task::spawn_blocking(move || RabbitCluster::start(rabbit_nodes)).await?)
    } else {
        None
    };

    // With fewer jobs than users, only as many users as jobs (one job each).
    let users_needed = jobs.min(tenants * per_tenant);
    let tenants_needed = users_needed.div_ceil(per_tenant);
    let mut people = population(tenants_needed, per_tenant, 0);
    people.truncate(users_needed);

    let mut report = Report::new(
        "dispatch",
        format!(
            "dispatch: {jobs} jobs to {} users in {tenants_needed} tenants{}, prefetch {prefetch}, {dispatchers} dispatcher(s), {rabbit_nodes} RabbitMQ node(s), Teams latency {latency_ms} ms, limits off",
            people.len(),
            offered.map_or(String::new(), |r| format!(", offered at {r}/s")),
        ),
        json!({
            "jobs": jobs, "tenants": tenants_needed, "users": people.len(), "prefetch": prefetch,
            "dispatchers": dispatchers, "rabbitNodes": rabbit_nodes, "latencyMs": latency_ms,
            "offeredPerSecond": offered,
            "logLevel": common.log_level,
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
    let amqp = match &cluster {
        Some(cluster) => Amqp::connect_to(&cluster.amqp_url(0)).await?,
        None => Amqp::connect().await?,
    };

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

    let events_queue = amqp.count_events(&bench.namespace).await?;
    for n in 0..dispatchers {
        let mut settings = vec![
            ("HERALD_TENANT_RATE", "off".to_owned()),
            ("HERALD_CONVERSATION_RATES", "off".to_owned()),
            ("HERALD_PREFETCH", prefetch.to_string()),
        ];
        // Dispatcher n tries node n first, so the replicas spread over the cluster.
        if let Some(cluster) = &cluster {
            settings.push(("HERALD_AMQP_URL", cluster.amqp_urls_from(n)));
        }
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
                &settings,
                &wrapper,
            )
            .await?;
    }
    let mut subjects: Vec<Subject> = bench
        .services()
        .iter()
        .map(|s| Subject::process(&s.name, s.pid))
        .collect();
    if let Some(cluster) = &cluster {
        for (k, pid) in cluster.pids().into_iter().enumerate() {
            subjects.extend(pid.map(|pid| Subject::process(format!("rabbitmq node {k}"), pid)));
        }
    }
    let mut footprint = Footprint::settled(subjects).await;

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
    // Asked before the load: rabbitmqctl takes seconds to answer.
    let leader = match (&cluster, kill_leader) {
        (Some(cluster), true) => Some(
            cluster
                .leader_of(&format!("{}.dispatch", bench.namespace))
                .ok_or_else(|| anyhow::anyhow!("the dispatch queue has no leader"))?,
        ),
        _ => None,
    };
    // The leader dies mid-load, so the jobs are published through another node meanwhile.
    let survivor = match (leader, &cluster) {
        (Some(leader), Some(cluster)) => {
            Some(Amqp::connect_to(&cluster.amqp_url(leader + 1)).await?)
        }
        _ => None,
    };
    footprint.start();
    eprintln!("publishing {jobs} jobs");
    let publishing =
        survivor
            .as_ref()
            .unwrap_or(&amqp)
            .publish_jobs_at(&bench.namespace, jobs, offered, make);
    let killing = async {
        match (leader, cluster.as_mut()) {
            (Some(leader), Some(cluster)) => {
                bench
                    .wait_for_sends(jobs / 2, Duration::from_secs(120))
                    .await?;
                cluster.kill(leader);
                eprintln!("killed RabbitMQ node {leader}, the dispatch queue's leader");
                anyhow::Ok(Some(time::OffsetDateTime::now_utc()))
            }
            _ => Ok(None),
        }
    };
    let (published, killed_at) = tokio::join!(publishing, killing);
    let (published, killed_at) = (published?, killed_at?);
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
    if let Some(killed_at) = killed_at {
        let times: Vec<_> = received.iter().map(|(_, at)| *at).collect();
        let first_after = times
            .iter()
            .filter(|at| **at >= killed_at)
            .min()
            .map_or(f64::NAN, |at| seconds(killed_at, *at));
        let longest_pause = herald_tests::longest_pause(killed_at, &times).as_seconds_f64();
        report.figure(
            "firstAfterKillSeconds",
            "leader killed → next delivery",
            json!(round(first_after, 3)),
            "s",
        );
        report.figure(
            "longestPauseAfterKillSeconds",
            "longest pause after the kill",
            json!(round(longest_pause, 3)),
            "s",
        );
    }
    // Herald's events of the run (each job's `herald.notification.delivered`, and the
    // installs'), counted in a queue of the bench's own.
    let counter = survivor.as_ref().unwrap_or(&amqp);
    let events = counter.ready(&events_queue).await.unwrap_or(0);
    counter.delete_queue(&events_queue).await?;
    report.figure(
        "eventsPerSecond",
        "events published per second",
        json!(round(f64::from(events) / end_to_end, 1)),
        &format!("/s ({events} events)"),
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

    // The first connection may have gone with the killed node: ask a survivor.
    let amqp = match survivor {
        Some(survivor) => {
            amqp.close().await;
            survivor
        }
        None => amqp,
    };
    let ready = amqp.ready(&format!("{}.dispatch", bench.namespace)).await?;
    anyhow::ensure!(ready == 0, "{ready} jobs left in the dispatch queue");
    amqp.close().await;
    bench.finish().await?;
    drop(cluster);
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

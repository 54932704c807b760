//! `park`: jobs due far ahead (30 days by default), published straight to `{ns}.jobs` as
//! another service would. The dispatcher takes each early, records it `scheduled` and parks it
//! as a timer in Redis. Measured: how fast they are taken in (from the first publish until
//! every one is parked), what a waiting job holds in Redis and RabbitMQ, and what the waiting
//! costs every process over an idle stretch (it should be about nothing, whatever the count).

use std::time::Duration;

use herald_shared::{
    config::{Namespace, RedisTarget},
    store::{Redis, TimerStore},
};
use serde_json::json;
use time::OffsetDateTime;

use crate::{
    amqp::Amqp,
    args::Args,
    load::{body, job},
    procs::{Footprint, Subject, infrastructure, round},
    redis_stats::used_memory,
    report::Report,
    stack::{Bench, Common, population},
};

pub const USAGE: &str =
    "park     [--jobs 1000000] [--days 30] [--idle-s 60] [--tenants 500] [--users-per-tenant 100]";

pub async fn run(common: &Common, mut args: Args) -> anyhow::Result<Report> {
    let jobs: usize = args.value("jobs", 1_000_000)?;
    let days: u64 = args.value("days", 30)?;
    let idle_s: u64 = args.value("idle-s", 60)?;
    let tenants: usize = args.value("tenants", 500)?;
    let per_tenant: usize = args.value("users-per-tenant", 100)?;
    args.finish()?;
    anyhow::ensure!(jobs > 0 && idle_s > 0, "needs jobs and an idle stretch");

    let users_needed = jobs.min(tenants * per_tenant);
    let mut people = population(users_needed.div_ceil(per_tenant), per_tenant, 0);
    people.truncate(users_needed);
    let mut report = Report::new(
        "park",
        format!(
            "park: {jobs} jobs due in {days} days to {} users, then {idle_s} s of waiting",
            people.len()
        ),
        json!({"jobs": jobs, "days": days, "idleSeconds": idle_s, "users": people.len(),
               "logLevel": common.log_level}),
    );
    let mut bench = Bench::start("park", common, false).await?;
    let users = bench.install(&people).await?;
    let dispatcher = bench
        .start_service("herald-dispatcher", "dispatcher", &[])
        .await?;
    let dispatcher = Subject::process("dispatcher", dispatcher.pid);
    let timers = TimerStore::new(Redis::new(
        &herald_tests::redis_url()
            .parse::<RedisTarget>()
            .map_err(anyhow::Error::msg)?,
        bench
            .namespace
            .parse::<Namespace>()
            .map_err(anyhow::Error::msg)?,
    )?);
    let mut footprint = Footprint::settled(vec![dispatcher.clone()]).await;
    let waiting_before = timers.waiting().await?;
    let redis_before = used_memory().await?;
    let amqp = Amqp::connect().await?;

    footprint.start();
    let started = std::time::Instant::now();
    let due = OffsetDateTime::now_utc() + Duration::from_secs(days * 24 * 3600);
    eprintln!("publishing {jobs} jobs due in {days} days");
    let published = amqp
        .publish_jobs(&bench.namespace, jobs, |i| {
            body(&job(
                i,
                &users[i % users.len()].user,
                format!("later #{i}"),
                Some(due),
            ))
        })
        .await?;
    eprintln!(
        "published in {:.1} s; waiting for every one to be parked",
        published.took.as_secs_f64()
    );
    let expected = waiting_before + jobs as u64;
    while timers.waiting().await? < expected {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(3600),
            "not every job was parked within an hour"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let accepted = started.elapsed();
    let taking_in = footprint.finish();
    let redis_after = used_memory().await?;

    report.section("taking them in (first publish → every one parked)");
    report.figure(
        "acceptSeconds",
        "every job parked after",
        json!(round(accepted.as_secs_f64(), 1)),
        &format!("s ({:.0}/s)", jobs as f64 / accepted.as_secs_f64()),
    );
    report.figure(
        "publishSeconds",
        "publishing took",
        json!(round(published.took.as_secs_f64(), 1)),
        "s",
    );
    report.figure(
        "redisBytesPerJob",
        "Redis memory per waiting job",
        json!(round(
            (redis_after.saturating_sub(redis_before)) as f64 / jobs as f64,
            0
        )),
        "bytes (used_memory, timer and status record)",
    );
    taking_in.report(&mut report, "footprint while taking them in", jobs, "jobs");

    // Waiting: every process over an idle stretch, the jobs parked.
    let mut subjects = vec![dispatcher];
    subjects.extend(infrastructure());
    let mut waiting = Footprint::idle(subjects);
    waiting.start();
    tokio::time::sleep(Duration::from_secs(idle_s)).await;
    let idle = waiting.finish();
    let dispatch_queue = amqp
        .ready(
            &herald_shared::amqp::Topology::new(
                bench.namespace.parse().map_err(anyhow::Error::msg)?,
            )
            .dispatch_queue(),
        )
        .await?;
    report.section("waiting");
    report.figure(
        "dispatchQueueReady",
        "messages in the dispatch queue while they wait",
        json!(dispatch_queue),
        "",
    );
    for name in ["dispatcher", "redis", "rabbitmq"] {
        report.figure(
            &format!("{name}IdleCores"),
            &format!("{name}: cores while they wait"),
            json!(round(idle.cpu_of(name) / idle.wall, 4)),
            "",
        );
    }
    idle.report(
        &mut report,
        "footprint while they wait",
        jobs,
        "waiting jobs",
    );
    amqp.close().await;
    bench.finish().await?;
    Ok(report)
}

//! `pacing`: Teams' limits on, in the emulator and the dispatcher (their defaults). First one
//! tenant's backlog to distinct users (the tenant limit, 50/s), then a burst to one
//! conversation (7/1 s, 8/2 s, 60/30 s): the rates achieved, the busiest windows, and 429s.

use std::time::Duration;

use serde_json::json;
use time::OffsetDateTime;

use crate::{
    amqp::Amqp,
    args::Args,
    load::{body, busiest, job, seconds},
    procs::{Footprint, Subject, round},
    report::Report,
    stack::{Bench, Common, population},
};

pub const USAGE: &str = "pacing   [--jobs 5000] [--burst 200]";

pub async fn run(common: &Common, mut args: Args) -> anyhow::Result<Report> {
    let jobs: usize = args.value("jobs", 5_000)?;
    let burst: usize = args.value("burst", 200)?;
    args.finish()?;
    anyhow::ensure!(
        jobs > 1 && burst > 0,
        "--jobs must be at least 2 and --burst positive"
    );

    let mut report = Report::new(
        "pacing",
        format!(
            "pacing: {jobs} jobs to distinct users of one tenant, then {burst} jobs to one conversation; Teams' limits on"
        ),
        json!({ "jobs": jobs, "burst": burst, "logLevel": common.log_level }),
    );
    let mut bench = Bench::start("pacing", common, true).await?;
    // Tenant 0: the backlog; tenant 1: the one conversation of the burst.
    let mut people = population(1, jobs, 0);
    people.extend(population(1, 1, 1));
    let users = bench.install(&people).await?;
    let (tenant_users, burst_user) = users.split_at(jobs);

    let dispatcher = bench
        .start_service("herald-dispatcher", "dispatcher", &[])
        .await?;
    let mut footprint =
        Footprint::settled(vec![Subject::process("dispatcher", dispatcher.pid)]).await;
    let amqp = Amqp::connect().await?;

    // One tenant, distinct users.
    footprint.start();
    eprintln!("{jobs} jobs to one tenant (about {} s at 50/s)", jobs / 50);
    let published = amqp
        .publish_jobs(&bench.namespace, jobs, |i| {
            body(&job(i, &tenant_users[i].user, format!("tenant {i}"), None))
        })
        .await?;
    let within = Duration::from_secs(120) + Duration::from_millis(jobs as u64 * 30);
    bench.wait_for_sends(jobs, within).await?;
    let throttled_tenant = bench.emulator.stats().throttled;
    let times: Vec<OffsetDateTime> = bench
        .received(tenant_users)
        .into_iter()
        .map(|(_, at)| at)
        .collect();
    let first = *times.iter().min().expect("sends arrived");
    let last = *times.iter().max().expect("sends arrived");
    report.section("one tenant, distinct users (limit 50/s)");
    report.figure(
        "delivered",
        "delivered",
        json!(times.len()),
        &format!("of {jobs}"),
    );
    report.figure(
        "achievedPerSecond",
        "achieved rate (first → last received)",
        json!(round((times.len() - 1) as f64 / seconds(first, last), 2)),
        "/s",
    );
    report.figure(
        "endToEndPerSecond",
        "end to end (first publish → last received)",
        json!(round(
            times.len() as f64 / seconds(published.first_at, last),
            2
        )),
        "/s",
    );
    report.figure(
        "busiest1s",
        "busiest 1 s",
        json!(busiest(&times, Duration::from_secs(1))),
        "",
    );
    report.figure("throttled", "429s from Teams", json!(throttled_tenant), "");

    // One conversation.
    eprintln!("{burst} jobs to one conversation");
    let burst_published = amqp
        .publish_jobs(&bench.namespace, burst, |i| {
            body(&job(
                jobs + i,
                &burst_user[0].user,
                format!("burst {i}"),
                None,
            ))
        })
        .await?;
    let within = Duration::from_secs(120) + Duration::from_millis(burst as u64 * 1000);
    bench.wait_for_sends(jobs + burst, within).await?;
    let measured = footprint.finish();
    let throttled_burst = bench.emulator.stats().throttled - throttled_tenant;
    let times: Vec<OffsetDateTime> = bench
        .received(burst_user)
        .into_iter()
        .map(|(_, at)| at)
        .collect();
    let last = *times.iter().max().expect("sends arrived");
    report.section("one conversation (limits 7/1 s, 8/2 s, 60/30 s)");
    report.figure(
        "delivered",
        "delivered",
        json!(times.len()),
        &format!("of {burst}"),
    );
    report.figure(
        "seconds",
        "first publish → last received",
        json!(round(seconds(burst_published.first_at, last), 2)),
        "s",
    );
    for (key, label, window) in [
        ("busiest1s", "busiest 1 s", 1),
        ("busiest2s", "busiest 2 s", 2),
        ("busiest30s", "busiest 30 s", 30),
    ] {
        report.figure(
            key,
            label,
            json!(busiest(&times, Duration::from_secs(window))),
            "",
        );
    }
    report.figure("throttled", "429s from Teams", json!(throttled_burst), "");
    measured.report(&mut report, "footprint (both parts)", jobs + burst, "jobs");
    amqp.close().await;
    bench.finish().await?;
    Ok(report)
}

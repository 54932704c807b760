//! `delay`: jobs with a `deliverAt` between 5 s and 60 s after their publish, parked as timers
//! in Redis until due; lateness is the emulator's receive time minus the due time written in
//! the text.
//! Teams' limits are off, so that only the delay machinery is measured.

use std::time::Duration;

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::json;
use time::OffsetDateTime;

use crate::{
    amqp::Amqp,
    args::Args,
    load::{body, job},
    procs::{Footprint, Subject, round},
    report::{Report, quantile},
    stack::{Bench, Common, population},
};

pub const USAGE: &str =
    "delay    [--jobs 100000] [--min-delay-s 5] [--max-delay-s 60] [--prefetch 1024]
           [--tenants 500] [--users-per-tenant 100]";

pub async fn run(common: &Common, mut args: Args) -> anyhow::Result<Report> {
    let jobs: usize = args.value("jobs", 100_000)?;
    let min_delay: u64 = args.value("min-delay-s", 5)?;
    let max_delay: u64 = args.value("max-delay-s", 60)?;
    let prefetch: u16 = args.value("prefetch", herald_shared::config::DEFAULT_PREFETCH)?;
    let tenants: usize = args.value("tenants", 500)?;
    let per_tenant: usize = args.value("users-per-tenant", 100)?;
    args.finish()?;
    anyhow::ensure!(
        jobs > 0 && min_delay <= max_delay,
        "needs jobs and min ≤ max delay"
    );

    let users_needed = jobs.min(tenants * per_tenant);
    let mut people = population(users_needed.div_ceil(per_tenant), per_tenant, 0);
    people.truncate(users_needed);
    let mut report = Report::new(
        "delay",
        format!(
            "delay: {jobs} jobs due {min_delay}–{max_delay} s after their publish, {} users, prefetch {prefetch}, limits off",
            people.len()
        ),
        json!({
            "jobs": jobs, "minDelaySeconds": min_delay, "maxDelaySeconds": max_delay,
            "users": people.len(), "prefetch": prefetch, "logLevel": common.log_level,
        }),
    );
    let mut bench = Bench::start("delay", common, false).await?;
    let users = bench.install(&people).await?;
    let dispatcher = bench
        .start_service(
            "herald-dispatcher",
            "dispatcher",
            &[
                ("HERALD_TENANT_RATE", "off".to_owned()),
                ("HERALD_CONVERSATION_RATES", "off".to_owned()),
                ("HERALD_PREFETCH", prefetch.to_string()),
            ],
        )
        .await?;
    let mut footprint =
        Footprint::settled(vec![Subject::process("dispatcher", dispatcher.pid)]).await;
    let amqp = Amqp::connect().await?;

    // The same delays on every run; each due time counts from the job's own publish.
    let mut rng = StdRng::seed_from_u64(0x4e7a1d);
    let span_ms = (max_delay - min_delay) * 1000;
    footprint.start();
    eprintln!("publishing {jobs} delayed jobs");
    let published = amqp
        .publish_jobs(&bench.namespace, jobs, |i| {
            let delay = Duration::from_millis(min_delay * 1000 + rng.gen_range(0..=span_ms));
            let now = OffsetDateTime::now_utc();
            let due = now + delay;
            let due = due
                .replace_nanosecond(due.millisecond() as u32 * 1_000_000)
                .unwrap_or(due);
            let due_ms = due.unix_timestamp_nanos() / 1_000_000;
            body(&job(
                i,
                &users[i % users.len()].user,
                format!("due {due_ms} #{i}"),
                Some(due),
            ))
        })
        .await?;
    eprintln!(
        "published in {:.1} s; waiting for deliveries",
        published.took.as_secs_f64()
    );
    let within = Duration::from_secs(max_delay + 180) + published.took;
    bench.wait_for_sends(jobs, within).await?;
    let measured = footprint.finish();

    let mut lateness: Vec<f64> = bench
        .received(&users)
        .into_iter()
        .filter_map(|(text, at)| {
            let due_ms: i128 = text.split_whitespace().nth(1)?.parse().ok()?;
            Some((at.unix_timestamp_nanos() / 1_000 - due_ms * 1_000) as f64 / 1_000.0)
        })
        .collect();
    lateness.sort_by(f64::total_cmp);
    let early = lateness.iter().filter(|l| **l < 0.0).count();
    let over_second = lateness.iter().filter(|l| **l > 1000.0).count();
    report.section("lateness (received − due)");
    report.figure(
        "delivered",
        "delivered",
        json!(lateness.len()),
        &format!("of {jobs}"),
    );
    report.figure(
        "publishSeconds",
        "publishing took",
        json!(round(published.took.as_secs_f64(), 2)),
        &format!("s ({:.0}/s)", jobs as f64 / published.took.as_secs_f64()),
    );
    for (key, label, q) in [
        ("p50Ms", "p50", 0.5),
        ("p99Ms", "p99", 0.99),
        ("p999Ms", "p99.9", 0.999),
        ("maxMs", "max", 1.0),
        ("minMs", "min", 0.0),
    ] {
        report.figure(key, label, json!(round(quantile(&lateness, q), 1)), "ms");
    }
    report.figure("early", "delivered before due", json!(early), "");
    report.figure(
        "overOneSecond",
        "more than 1 s late",
        json!(over_second),
        "",
    );
    measured.report(
        &mut report,
        "footprint (first publish → last received)",
        jobs,
        "jobs",
    );
    amqp.close().await;
    bench.finish().await?;
    Ok(report)
}

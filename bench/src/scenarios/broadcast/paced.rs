//! Part A: one list broadcast sent to the end at the raised tenant rate. The figure that
//! matters is Teams' own count: requests it received per second over the sending interval
//! (first request → last), against the configured rate, with no 429.

use std::time::{Duration, Instant};

use anyhow::Context;
use herald_emulator::GeneratedUsers;
use serde_json::{Value, json};

use super::{BROADCAST_ID, MESSAGE, Pace, RedisMemory, Stage, seconds_since};
use crate::{procs::round, report::Report, stack::Common, tenant_trace::TenantTrace};

const TENANT: &str = "7e7a0000-0000-4000-8000-00000000000a";

/// How often the broadcast's view is read while it runs.
const POLL: Duration = Duration::from_millis(100);

/// How often a single notification goes to a user of the broadcast's tenant while it runs
/// (paced parts only): each must go ahead of the broadcast's backlog.
const PROBE_EVERY: Duration = Duration::from_secs(2);

/// A single notification sent while the broadcast ran.
struct Probe {
    id: String,
    sent: time::OffsetDateTime,
}

pub(super) async fn run(
    common: &Common,
    report: &mut Report,
    pace: Pace,
    recipients: usize,
) -> anyhow::Result<()> {
    let name = if pace.limited {
        "broadcast"
    } else {
        "broadcast-ceiling"
    };
    let mut stage = Stage::start(common, name, TENANT, recipients, pace).await?;
    let namespace = stage.bench.namespace.clone();
    let before = RedisMemory::now(&namespace).await?;
    stage.footprint.start();

    stage.api.create_list(BROADCAST_ID, MESSAGE).await?;
    let upload = stage.api.upload(BROADCAST_ID, &stage.users).await?;
    anyhow::ensure!(
        upload.total == recipients as u64,
        "the list holds {} recipients, not {recipients}",
        upload.total
    );
    eprintln!(
        "{recipients} recipients uploaded in {} parts in {:.1} s; releasing",
        upload.parts,
        upload.took.as_secs_f64()
    );
    let uploaded = RedisMemory::now(&namespace).await?;
    // Users of the same tenant outside the list, for the single notifications sent beside it.
    let others = stage
        .bench
        .emulator
        .generate_tenant_users(TENANT, "others", 1_000);
    let trace = TenantTrace::start(&stage.bench.emulator, TENANT);
    let released = Instant::now();
    stage.api.release(BROADCAST_ID).await?;
    let expected = 2.0 * recipients as f64 / f64::from(pace.rate);
    let within = Duration::from_secs_f64(120.0 + 10.0 * expected);
    let mut probes = Vec::new();
    let probing = pace.limited.then_some((&others, &mut probes));
    let view = wait_until_completed(&stage, &trace, released, within, probing).await?;
    let completed_after = seconds_since(released);
    let sending = trace.finish();
    let measured = stage.footprint.finish();
    let after = RedisMemory::now(&namespace).await?;

    let counts = &view["counts"];
    let delivered = counts["delivered"].as_u64().unwrap_or(0);
    let achieved = sending.requests_per_second();
    let part = if pace.limited {
        format!("paced: {recipients} recipients at {}/s", pace.rate)
    } else {
        format!("ceiling: {recipients} recipients, pacing off in Herald and Teams")
    };
    report.section(&part);
    report.figure(
        "delivered",
        "delivered",
        json!(delivered),
        &format!(
            "of {recipients} (failed {}, Teams accepted {} messages)",
            counts["failed"], sending.sends
        ),
    );
    report.figure(
        "requestsPerSecond",
        "Teams received, requests/s (first → last)",
        json!(round(achieved, 1)),
        &format!(
            "/s ({} requests in {:.2} s)",
            sending.requests, sending.seconds
        ),
    );
    report.figure(
        "ofRate",
        "of the configured rate",
        json!(round(achieved / f64::from(pace.rate), 3)),
        if pace.limited {
            "(target ≥ 0.98)"
        } else {
            "(unpaced)"
        },
    );
    report.figure(
        "steadyRequestsPerSecond",
        "requests/s from 10 % to 90 % of them",
        json!(round(sending.steady_requests_per_second, 1)),
        "/s",
    );
    report.figure(
        "busiestSecond",
        "busiest second (sampled every 20 ms)",
        json!(sending.busiest_second),
        &format!("requests (limit {})", pace.rate),
    );
    report.figure(
        "throttled",
        "429s from Teams",
        json!(sending.throttled),
        "(target 0)",
    );
    report.figure(
        "recipientsPerSecond",
        "recipients per second (first → last request)",
        json!(round(delivered as f64 / sending.seconds.max(1e-9), 1)),
        "/s",
    );
    report.figure(
        "completedSeconds",
        "release → completed",
        json!(completed_after),
        &format!("s ({})", herald_timing(&view)),
    );
    report.figure(
        "uploadSeconds",
        "upload",
        json!(round(upload.took.as_secs_f64(), 2)),
        &format!(
            "s ({} parts, {:.1} MiB)",
            upload.parts,
            upload.bytes as f64 / 1048576.0
        ),
    );
    if pace.limited {
        report_probes(&stage, report, &probes).await?;
    }
    stage.report_dispatcher(report, recipients).await;
    uploaded.report_growth(
        &before,
        report,
        "redisBytesPerUploaded",
        "uploaded list",
        recipients,
    );
    after.report_growth(
        &before,
        report,
        "redisBytesPerRecipient",
        "after completion",
        recipients,
    );
    let section = if pace.limited {
        "paced: footprint (upload → completed)"
    } else {
        "ceiling: footprint (upload → completed)"
    };
    measured.report(report, section, recipients, "recipients");
    stage.bench.finish().await
}

/// Reads the broadcast's view until it is `completed`, telling the progress every 5 s; with
/// `probing`, sends a single notification to the next of those users every [`PROBE_EVERY`].
async fn wait_until_completed(
    stage: &Stage,
    trace: &TenantTrace,
    released: Instant,
    within: Duration,
    mut probing: Option<(&GeneratedUsers, &mut Vec<Probe>)>,
) -> anyhow::Result<Value> {
    let mut told = Instant::now();
    let mut next_probe = released + PROBE_EVERY;
    loop {
        if let Some((users, probes)) = probing.as_mut()
            && Instant::now() >= next_probe
            && probes.len() < users.count
        {
            let sent = time::OffsetDateTime::now_utc();
            let id = stage
                .api
                .notify(users, probes.len(), "Your 1:1 starts now")
                .await?;
            probes.push(Probe { id, sent });
            next_probe += PROBE_EVERY;
        }
        let view = stage.api.view(BROADCAST_ID).await?;
        match view["status"].as_str() {
            Some("completed") => return Ok(view),
            Some("sending" | "expanding") => {}
            other => anyhow::bail!("the broadcast is {other:?}: {view}"),
        }
        anyhow::ensure!(
            released.elapsed() < within,
            "not completed within {within:?}: {view}"
        );
        if told.elapsed() > Duration::from_secs(5) {
            let teams = trace.latest();
            eprintln!(
                "  … {:.0} s: {} delivered, {} pending; Teams: {} requests, {} throttled",
                released.elapsed().as_secs_f64(),
                view["counts"]["delivered"],
                view["counts"]["pending"],
                teams.requests,
                teams.throttled
            );
            told = Instant::now();
        }
        tokio::time::sleep(POLL).await;
    }
}

/// How long the single notifications sent beside the broadcast took, from their `POST` to
/// their status record's last change (`delivered`, as Herald records it).
async fn report_probes(stage: &Stage, report: &mut Report, probes: &[Probe]) -> anyhow::Result<()> {
    let mut took = Vec::with_capacity(probes.len());
    for probe in probes {
        // One sent in the broadcast's last moments may still be on its way.
        let asked = Instant::now();
        let view = loop {
            let view = stage.api.notification(&probe.id).await?;
            if view["status"] == "delivered" {
                break view;
            }
            anyhow::ensure!(
                asked.elapsed() < Duration::from_secs(10),
                "a notification sent beside the broadcast is not delivered: {view}"
            );
            tokio::time::sleep(POLL).await;
        };
        let delivered = view["updatedAt"]
            .as_str()
            .and_then(|s| {
                time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
            })
            .context("a delivered notification has no updatedAt")?;
        took.push((delivered - probe.sent).as_seconds_f64());
    }
    took.sort_by(f64::total_cmp);
    let median = took.get(took.len() / 2).copied().unwrap_or(0.0);
    let max = took.last().copied().unwrap_or(0.0);
    report.figure(
        "besideMaxSeconds",
        "single notifications of the tenant meanwhile: slowest",
        json!(round(max, 3)),
        &format!(
            "s from POST to delivered (median {median:.3} s, {} sent, one every {} s; target ≤ 2 s)",
            took.len(),
            PROBE_EVERY.as_secs()
        ),
    );
    Ok(())
}

/// Herald's own account of the run: its `startedAt` → `completedAt`.
fn herald_timing(view: &Value) -> String {
    let at = |field: &str| {
        view[field].as_str().and_then(|s| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
        })
    };
    match (at("startedAt"), at("completedAt")) {
        (Some(started), Some(completed)) => format!(
            "startedAt → completedAt {:.2} s",
            (completed - started).as_seconds_f64()
        ),
        _ => "no startedAt/completedAt".to_owned(),
    }
}

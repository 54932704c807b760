//! Part B: a large uploaded list. Measured: the upload; the fan-out, from the release until
//! the broadcast's record says every recipient was handed to the dispatch queue (its
//! `fannedOut`, read from Redis as the dispatcher reads it: `GET` shows only what ended);
//! Redis' memory per recipient; and, unless stopped after the fan-out, the sending to the end.
//!
//! Only `HERALD_BROADCAST_AHEAD` recipients may be handed out and not yet ended, so the
//! fan-out ends when all but that many have ended: its pace is the sending's, unless the
//! fan-out cannot keep up (its steps' lag then grows).

use std::time::{Duration, Instant};

use herald_shared::store::{BroadcastRecord, BroadcastStore};
use serde_json::json;

use super::{BROADCAST_ID, MESSAGE, Pace, RedisMemory, Stage, seconds_since};
use crate::{procs::round, report::Report, stack::Common, tenant_trace::TenantTrace};

const TENANT: &str = "7e7a0000-0000-4000-8000-00000000000b";

/// How often the broadcast's record is read.
const POLL: Duration = Duration::from_millis(100);

pub(super) async fn run(
    common: &Common,
    report: &mut Report,
    pace: Pace,
    list: usize,
    stop_after_fan_out: bool,
) -> anyhow::Result<()> {
    let mut stage = Stage::start(common, "broadcast-list", TENANT, list, pace).await?;
    let namespace = stage.bench.namespace.clone();
    let store = stage.store()?;
    let before = RedisMemory::now(&namespace).await?;
    stage.footprint.start();

    stage.api.create_list(BROADCAST_ID, MESSAGE).await?;
    eprintln!("uploading {list} recipients");
    let upload = stage.api.upload(BROADCAST_ID, &stage.users).await?;
    anyhow::ensure!(
        upload.total == list as u64,
        "the list holds {} recipients, not {list}",
        upload.total
    );
    let uploaded = RedisMemory::now(&namespace).await?;
    eprintln!(
        "uploaded in {} parts in {:.1} s; releasing",
        upload.parts,
        upload.took.as_secs_f64()
    );

    let trace = TenantTrace::start(&stage.bench.emulator, TENANT);
    let released = Instant::now();
    stage.api.release(BROADCAST_ID).await?;
    let expected = 2.0 * list as f64 / f64::from(pace.rate);
    let within = Duration::from_secs_f64(600.0 + 20.0 * expected);
    let at_fan_out = wait_for(&store, &trace, released, within, |r| r.fanned_out).await?;
    let fan_out_seconds = seconds_since(released);
    let teams_at_fan_out = trace.latest();
    let fanned_memory = RedisMemory::now(&namespace).await?;
    let completed = if stop_after_fan_out {
        None
    } else {
        let record = wait_for(&store, &trace, released, within, |r| r.status.is_final()).await?;
        Some((record, seconds_since(released)))
    };
    let sending = trace.finish();
    let measured = stage.footprint.finish();

    report.section(&format!("fan-out: a list of {list}"));
    report.figure(
        "uploadSeconds",
        "upload",
        json!(round(upload.took.as_secs_f64(), 2)),
        &format!(
            "s ({} parts of at most 10 MiB, {:.0} MiB, {:.0} recipients/s)",
            upload.parts,
            upload.bytes as f64 / 1048576.0,
            list as f64 / upload.took.as_secs_f64()
        ),
    );
    uploaded.report_growth(
        &before,
        report,
        "redisBytesPerUploaded",
        "uploaded list",
        list,
    );
    report.figure(
        "fanOutSeconds",
        "release → every recipient handed out",
        json!(fan_out_seconds),
        &format!(
            "s ({:.0} handed out per second)",
            at_fan_out.fanned as f64 / fan_out_seconds.max(1e-9)
        ),
    );
    let ended = at_fan_out.counts.total - at_fan_out.counts.pending;
    report.figure(
        "endedAtFanOut",
        "recipients ended when the fan-out ended",
        json!(ended),
        &format!(
            "(Teams accepted {} messages; {} may be in flight)",
            teams_at_fan_out.sends, pace.ahead
        ),
    );
    report.figure(
        "requestsPerSecond",
        "Teams received, requests/s (first → last)",
        json!(round(sending.requests_per_second(), 1)),
        &format!(
            "/s ({} requests in {:.1} s, {:.3} of the rate)",
            sending.requests,
            sending.seconds,
            sending.requests_per_second() / f64::from(pace.rate)
        ),
    );
    report.figure("throttled", "429s from Teams", json!(sending.throttled), "");
    fanned_memory.report_growth(
        &before,
        report,
        "redisBytesAtFanOut",
        "at fan-out end",
        list,
    );
    match completed {
        Some((record, seconds)) => {
            report.figure(
                "completedSeconds",
                "release → completed",
                json!(seconds),
                &format!(
                    "s ({} delivered, {} failed)",
                    record.counts.delivered, record.counts.failed
                ),
            );
            RedisMemory::now(&namespace).await?.report_growth(
                &before,
                report,
                "redisBytesPerRecipient",
                "after completion",
                list,
            );
        }
        None => {
            report.text("stopped once the fan-out ended (--stop-after-fanout): not sent to the end")
        }
    }
    stage.report_dispatcher(report, list).await;
    measured.report(
        report,
        "fan-out: footprint (upload → end)",
        list,
        "recipients",
    );
    stage.bench.finish().await
}

/// Reads the broadcast's record until `done` says so, telling the progress every 5 s.
async fn wait_for(
    store: &BroadcastStore,
    trace: &TenantTrace,
    released: Instant,
    within: Duration,
    done: impl Fn(&BroadcastRecord) -> bool,
) -> anyhow::Result<BroadcastRecord> {
    let mut told = Instant::now();
    loop {
        let record = store
            .get(BROADCAST_ID)
            .await?
            .ok_or_else(|| anyhow::anyhow!("the broadcast is gone"))?;
        if done(&record) {
            return Ok(record);
        }
        anyhow::ensure!(
            released.elapsed() < within,
            "not done within {within:?}: {} handed out, {} pending",
            record.fanned,
            record.counts.pending
        );
        if told.elapsed() > Duration::from_secs(5) {
            let teams = trace.latest();
            eprintln!(
                "  … {:.0} s: {} handed out, {} ended; Teams: {} requests, {} throttled",
                released.elapsed().as_secs_f64(),
                record.fanned,
                record.counts.total - record.counts.pending,
                teams.requests,
                teams.throttled
            );
            told = Instant::now();
        }
        tokio::time::sleep(POLL).await;
    }
}

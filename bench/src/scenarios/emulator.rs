//! `emulator`: the emulator alone, Bot Connector sends fired straight at it over many
//! connections, so that the other scenarios can tell whether it, rather than Herald, is what
//! bounds them. Its runtime's threads are timed apart from the load generator's.

use std::{sync::Arc, time::Duration};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::json;

use crate::{
    args::Args,
    load::{Request, http_load},
    procs::{Footprint, infrastructure, round},
    report::Report,
    stack::{Bench, Common, population},
};

pub const USAGE: &str =
    "emulator [--jobs 100000] [--concurrency 256] [--users 1000] [--latency-ms 0]";

const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

pub async fn run(common: &Common, mut args: Args) -> anyhow::Result<Report> {
    let sends: usize = args.value("jobs", 100_000)?;
    let concurrency: usize = args.value("concurrency", 256)?;
    let user_count: usize = args.value("users", 1_000)?;
    let latency_ms: u64 = args.value("latency-ms", 0)?;
    args.finish()?;
    anyhow::ensure!(
        sends > 0 && concurrency > 0 && user_count > 0,
        "sizes must be positive"
    );

    let mut report = Report::new(
        "emulator",
        format!(
            "emulator alone: {sends} Bot Connector sends at concurrency {concurrency} to {user_count} conversations, latency {latency_ms} ms, limits off"
        ),
        json!({ "sends": sends, "concurrency": concurrency, "users": user_count, "latencyMs": latency_ms }),
    );
    let bench = Bench::start("emulator", common, false).await?;
    bench
        .emulator
        .set_latency(Duration::from_millis(latency_ms));
    let people = population(user_count.div_ceil(100), 100.min(user_count), 0);
    let users = bench
        .install(&people[..user_count.min(people.len())])
        .await?;

    // A bot token from the emulator's token endpoint, as the dispatcher gets one.
    let app = herald_emulator::EmulatorConfig::default();
    let token: serde_json::Value = bench
        .http
        .post(bench.emulator.token_url())
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", app.app_id.as_str()),
            ("client_secret", app.app_password.as_str()),
            ("scope", "https://api.botframework.com/.default"),
        ])
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let authorization = format!(
        "Bearer {}",
        token["access_token"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no access_token in {token}"))?
    );
    let requests: Vec<Request> = (0..sends)
        .map(|i| {
            let user = &users[i % users.len()];
            let url = format!(
                "{}v3/conversations/{}/activities",
                bench.emulator.service_url(&user.user.tenant_id),
                utf8_percent_encode(&user.conversation_id, PATH_SEGMENT)
            );
            let activity = json!({"type": "message", "text": format!("direct {i}")});
            Request {
                url,
                authorization: authorization.clone(),
                body: serde_json::to_vec(&activity).expect("json").into(),
                extra_header: None,
            }
        })
        .collect();

    let mut footprint = Footprint::idle(infrastructure());
    footprint.start();
    eprintln!("{sends} sends at concurrency {concurrency}");
    let run = http_load(&bench.http, Arc::new(requests), concurrency).await;
    let measured = footprint.finish();
    let emulator_cpu = measured.cpu_of("emulator (in bench)");
    report.section("sends");
    run.report(&mut report, 201, "sends");
    report.figure(
        "emulatorCpuMsPer1000",
        "emulator CPU per 1,000 sends",
        json!(round(emulator_cpu * 1_000_000.0 / sends as f64, 2)),
        "ms",
    );
    report.figure(
        "perEmulatorCpuSecond",
        "sends per emulator CPU second",
        json!(round(run.ok(201) as f64 / emulator_cpu.max(1e-9), 0)),
        "/s",
    );
    let stats = bench.emulator.stats();
    report.figure(
        "accepted",
        "sends the emulator accepted",
        json!(stats.sends),
        "",
    );
    measured.report(&mut report, "footprint", sends, "sends");
    bench.finish().await?;
    Ok(report)
}

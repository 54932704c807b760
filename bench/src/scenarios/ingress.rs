//! `ingress`: three loads at a fixed concurrency, one after the other: signed `/api/messages`
//! message activities (token check, one Redis upsert each), signed installs (the upsert, then
//! the welcome and the reminder: a status record and a confirmed publish each), and
//! `/v1/notifications` (status record, confirmed publish). Alongside the last, users press card
//! buttons (signed `adaptiveCard/action` invokes, answered while Teams waits), and the presses'
//! latency is reported on its own.

use std::{collections::HashMap, sync::Arc};

use herald_emulator::TokenVariant;
use serde_json::json;

use herald_shared::amqp::{Topology, topology::NOTIFICATION_ROUTING_KEY};

use crate::{
    amqp::Amqp,
    args::Args,
    load::{Request, body, http_load, job},
    procs::{Footprint, Subject, infrastructure, round},
    report::Report,
    stack::{Bench, Common, population},
};

pub const USAGE: &str =
    "ingress  [--jobs 50000] [--concurrency 64] [--tenants 500] [--users-per-tenant 100]
           [--loads messages,installs,notifications]";

/// The loads, in the order they run.
const LOADS: [&str; 3] = ["messages", "installs", "notifications"];

/// One press for this many notifications, so that the presses last about as long.
const INVOKES_PER: usize = 10;

/// Presses in flight at once: users, not a service.
const INVOKE_CONCURRENCY: usize = 4;

/// Requests sent before measuring (the first fetch of the signing keys, connection set-up).
const WARM_UP: usize = 500;

pub async fn run(common: &Common, mut args: Args) -> anyhow::Result<Report> {
    let tenants: usize = args.value("tenants", 500)?;
    let per_tenant: usize = args.value("users-per-tenant", 100)?;
    let requests: usize = args.value("jobs", 50_000)?;
    let concurrency: usize = args.value("concurrency", 64)?;
    let loads: String = args.value("loads", LOADS.join(","))?;
    args.finish()?;
    let loads: Vec<&str> = loads.split(',').map(str::trim).collect();
    if let Some(unknown) = loads.iter().find(|l| !LOADS.contains(l)) {
        anyhow::bail!(
            "--loads: unknown load {unknown:?} (known: {})",
            LOADS.join(", ")
        );
    }
    anyhow::ensure!(
        requests > 0 && concurrency > 0,
        "--jobs and --concurrency must be positive"
    );

    let people = population(tenants, per_tenant, 0);
    let mut report = Report::new(
        "ingress",
        format!(
            "ingress: {requests} requests per endpoint at concurrency {concurrency}, {} users in {tenants} tenants",
            people.len()
        ),
        json!({
            "requests": requests, "concurrency": concurrency, "tenants": tenants, "loads": loads,
            "users": people.len(), "logLevel": common.log_level,
        }),
    );

    let mut bench = Bench::start("ingress", common, true).await?;
    let ingress = bench
        .start_service("herald-ingress", "ingress", &[])
        .await?;
    let base = ingress.http_url.clone();
    let subjects = vec![Subject::process("ingress", ingress.pid)];

    // Activities from many users, signed as Teams signs them. A token depends only on the
    // tenant's serviceUrl, so one per tenant is signed up front (RSA signing is expensive and
    // is Teams' work, not the ingress's). Installs go to users who sent no message before, one
    // install each, so that every one queues its welcome and reminder.
    eprintln!("preparing {} signed activities", 2 * (requests + WARM_UP));
    let mut tokens: HashMap<String, String> = HashMap::new();
    let mut signed = |activity: serde_json::Value, tenant: &str| {
        let authorization = tokens
            .entry(tenant.to_owned())
            .or_insert_with(|| {
                bench
                    .emulator
                    .authorization(&activity, TokenVariant::Valid)
                    .unwrap_or_default()
            })
            .clone();
        Request {
            url: format!("{base}/api/messages"),
            authorization,
            body: serde_json::to_vec(&activity)
                .expect("an activity serializes")
                .into(),
            extra_header: None,
        }
    };
    let activities: Vec<Request> = (0..requests + WARM_UP)
        .map(|i| {
            let user = &people[i % people.len()];
            let activity = bench.emulator.message_activity(user, &format!("hello {i}"));
            signed(activity, &user.tenant_id)
        })
        .collect();
    let installers = population(
        (requests + WARM_UP).div_ceil(per_tenant),
        per_tenant,
        tenants,
    );
    let installs: Vec<Request> = installers
        .iter()
        .take(requests + WARM_UP)
        .map(|user| signed(bench.emulator.install_activity(user), &user.tenant_id))
        .collect();
    // Presses of buttons on messages Herald has no record of (no dispatcher runs here): the
    // same lookup and event as a press on one of its own, answered with the default text.
    let invokes: Vec<Request> = (0..requests / INVOKES_PER)
        .map(|i| {
            let user = &people[i % people.len()];
            let activity = bench.emulator.card_action_activity(
                user,
                &(1_700_000_000_000_u64 + i as u64).to_string(),
                "ack",
                json!({"press": i}),
            );
            signed(activity, &user.tenant_id)
        })
        .collect();
    let notifications: Vec<Request> = (0..requests + WARM_UP)
        .map(|i| {
            let user = &people[i % people.len()];
            let body = json!({
                "to": {"user": {"tenantId": user.tenant_id, "aadObjectId": user.aad_object_id}},
                "message": {"text": format!("notification {i}")},
            });
            Request {
                url: format!("{base}/v1/notifications"),
                authorization: format!("Bearer {}", herald_tests::API_KEY),
                body: serde_json::to_vec(&body).expect("json").into(),
                extra_header: None,
            }
        })
        .collect();

    let mut footprint = Footprint::settled(subjects).await;
    let amqp = Amqp::connect().await?;

    for (load, name, all, status, what) in [
        (
            "messages",
            "/api/messages (messages)",
            activities,
            200,
            "activities",
        ),
        (
            "installs",
            "/api/messages (installs)",
            installs,
            200,
            "installs",
        ),
        (
            "notifications",
            "/v1/notifications",
            notifications,
            202,
            "notifications accepted",
        ),
    ] {
        if !loads.contains(&load) {
            continue;
        }
        // No dispatcher runs here, so the jobs each load publishes stay queued; the next load
        // starts from empty queues, as it would with a dispatcher draining them.
        amqp.purge(&bench.namespace).await?;
        let (warm, measured) = all.split_at(WARM_UP);
        let warm_run = http_load(&bench.http, Arc::new(warm.to_vec()), concurrency).await;
        anyhow::ensure!(
            warm_run.ok(status) == WARM_UP,
            "{name}: warm-up answers {:?}",
            warm_run.statuses
        );
        eprintln!(
            "{name}: {} requests at concurrency {concurrency}",
            measured.len()
        );
        footprint.start();
        let load_run = http_load(&bench.http, Arc::new(measured.to_vec()), concurrency);
        let (run, presses) = if load == "notifications" {
            let pressing = http_load(&bench.http, Arc::new(invokes.clone()), INVOKE_CONCURRENCY);
            let (run, presses) = tokio::join!(load_run, pressing);
            (run, Some(presses))
        } else {
            (load_run.await, None)
        };
        let measured_footprint = footprint.finish();
        report.section(name);
        run.report(&mut report, status, what);
        if let Some(presses) = presses {
            report.section(&format!(
                "card button presses alongside, {INVOKE_CONCURRENCY} at a time"
            ));
            presses.report(&mut report, 200, "invokes");
        }
        measured_footprint.report(
            &mut report,
            &format!("footprint during {name}"),
            measured.len(),
            "req",
        );
    }

    // The broker's own bound for the last two loads: confirmed publishes of job bodies with
    // as many in flight as the requests (the ingress publishes each request's jobs and waits
    // for their confirms before it answers).
    amqp.purge(&bench.namespace).await?;
    let users: Vec<_> = people.iter().take(requests).collect();
    let make = |i: usize| {
        body(&job(
            i,
            users[i % users.len()],
            format!("ceiling {i}"),
            None,
        ))
    };
    let mut footprint = Footprint::idle(infrastructure());
    footprint.start();
    let published = amqp
        .publish_windowed(
            &Topology::new(bench.namespace.parse().map_err(anyhow::Error::msg)?).jobs_exchange(),
            NOTIFICATION_ROUTING_KEY,
            requests,
            concurrency,
            make,
        )
        .await?;
    let measured = footprint.finish();
    report.section(&format!(
        "broker ceiling: confirmed publishes, {concurrency} in flight"
    ));
    report.figure(
        "publishPerSecond",
        "confirmed publishes per second",
        json!(round(requests as f64 / published.took.as_secs_f64(), 1)),
        "/s",
    );
    report.figure(
        "rabbitmqCpuMsPerPublish",
        "RabbitMQ CPU per publish",
        json!(round(
            measured.cpu_of("rabbitmq") * 1000.0 / requests as f64,
            4
        )),
        "ms",
    );
    amqp.close().await;
    bench.finish().await?;
    Ok(report)
}

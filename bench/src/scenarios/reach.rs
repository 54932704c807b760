//! `reach`: first contact with people who never installed the app, through Microsoft Graph.
//! One fresh tenant's directory holds `--users` generated users without the app, its catalog
//! holds the app; one notification job each is published at once, naming them by
//! `userPrincipalName` (`--by upn`) or by object id (`--by id`). For each, the dispatcher
//! (`HERALD_PROACTIVE_INSTALL=on`) asks Teams for the 1:1 chat (403: not installed), looks the
//! name up (upn only), installs the app, finds the installation, reads its chat, stores it and
//! sends. Teams' and Graph's limits are on in the emulator, at `--tenant-rate` and
//! `--graph-rate`, and Herald paces at the same rates.
//!
//! The bound is Graph's: 4 calls per user by upn (user, install, installation, chat), 3 by id,
//! plus one catalog lookup per tenant; so `graph-rate / calls` users a second, unless Teams'
//! 2 requests per user (the refused create, the send) at `tenant-rate` come lower.
//!
//! The emulator's bot endpoint is the ingress, so the installs' activities reach Herald as in
//! production; Herald made those installs, so none may be greeted (the reminder delay is cut to
//! 2 s and waited out before the messages are counted). A job whose Graph call is further out
//! than the tenant's pace lets it wait goes back to the queue for its turn, and may find, when
//! it comes back, the chat the ingress stored from that activity, and send without the rest of
//! its Graph calls. `--installs-unheard` sends the activities to a sink instead, so that every
//! chat is found by Herald's own calls (Graph's, or a create Teams accepts once the app is
//! installed). The Graph settings
//! (`HERALD_GRAPH_URL`, `HERALD_GRAPH_TOKEN_URL`, `HERALD_TEAMS_APP_ID`) come with the test
//! stack's environment, pointed at this emulator.

use std::{
    collections::BTreeMap,
    str::FromStr,
    time::{Duration, Instant},
};

use herald_emulator::{EmulatorConfig, GeneratedUsers, Operation, RecordedRequest};
use herald_shared::{
    config::{Namespace, RedisTarget},
    job::{Job, Message, NamedUser, Target, UserName, UserTarget},
    store::{JobStatus, Redis, StatusStore},
};
use serde_json::json;
use time::OffsetDateTime;

use crate::{
    amqp::Amqp,
    args::Args,
    load::{body, busiest, job_id, seconds},
    procs::{Footprint, Subject, round},
    report::Report,
    stack::{Bench, BenchUser, Common},
};

pub const USAGE: &str = "reach    [--users 300] [--by upn|id] [--graph-rate 30] [--tenant-rate 50]
           [--installs-unheard]";

const TENANT: &str = "7e7a0000-0000-4000-8000-0000000000e1";
const COHORT: &str = "reach";

/// How often the jobs' status records are read while they run.
const POLL: Duration = Duration::from_millis(200);

/// The ingress's `HERALD_REMINDER_DELAY`: a greeting of an install Herald made (there should
/// be none) would arrive within it.
const REMINDER_DELAY: Duration = Duration::from_secs(2);

/// How the jobs name their users.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum By {
    PrincipalName,
    ObjectId,
}

impl FromStr for By {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "upn" => Ok(By::PrincipalName),
            "id" => Ok(By::ObjectId),
            other => Err(format!("{other:?} is not upn or id")),
        }
    }
}

impl By {
    fn as_str(self) -> &'static str {
        match self {
            By::PrincipalName => "upn",
            By::ObjectId => "id",
        }
    }

    /// Graph calls a first contact needs once the tenant's catalog id is known: the user by
    /// name (upn only), the install, the installation's id, its chat.
    fn graph_calls_per_user(self) -> usize {
        match self {
            By::PrincipalName => 4,
            By::ObjectId => 3,
        }
    }

    fn target(self, users: &GeneratedUsers, i: usize) -> Target {
        match self {
            By::PrincipalName => Target::NamedUser(NamedUser {
                tenant_id: users.tenant_id.clone(),
                name: UserName::PrincipalName(users.directory_user(i).user_principal_name),
            }),
            By::ObjectId => Target::User(UserTarget {
                tenant_id: users.tenant_id.clone(),
                aad_object_id: users.aad_object_id(i),
            }),
        }
    }
}

/// The Graph operations a first contact makes, in order, as the report names them.
const GRAPH_OPERATIONS: [(Operation, &str, &str); 5] = [
    (Operation::GraphGetUser, "user", "GET /users/{upn}"),
    (
        Operation::GraphListCatalogApps,
        "catalog",
        "GET /appCatalogs/teamsApps",
    ),
    (
        Operation::GraphInstallApp,
        "install",
        "POST …/teamwork/installedApps",
    ),
    (
        Operation::GraphListInstalledApps,
        "installation",
        "GET …/teamwork/installedApps",
    ),
    (
        Operation::GraphGetInstallationChat,
        "chat",
        "GET …/installedApps/{id}/chat",
    ),
];

/// How the jobs stand at one moment.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    delivered: usize,
    failed: usize,
    /// Cancelled or expired: neither should happen here.
    other_end: usize,
    pending: usize,
}

impl Tally {
    fn ended(&self) -> usize {
        self.delivered + self.failed + self.other_end
    }
}

pub async fn run(common: &Common, mut args: Args) -> anyhow::Result<Report> {
    let users: usize = args.value("users", 300)?;
    let by: By = args.value("by", By::PrincipalName)?;
    let graph_rate: u32 = args.value("graph-rate", 30)?;
    let tenant_rate: u32 = args.value("tenant-rate", 50)?;
    let unheard = args.flag("installs-unheard");
    args.finish()?;
    anyhow::ensure!(
        users > 0 && graph_rate > 0 && tenant_rate > 0,
        "--users, --graph-rate and --tenant-rate must be positive"
    );
    let calls = by.graph_calls_per_user();
    let graph_bound = f64::from(graph_rate) / calls as f64;
    // Teams: the refused create and the send.
    let teams_bound = f64::from(tenant_rate) / 2.0;
    let bound = graph_bound.min(teams_bound);

    let mut report = Report::new(
        "reach",
        format!(
            "reach: first contact with {users} users of one tenant who never installed the app, named by {}, Graph {graph_rate}/s and Teams {tenant_rate}/s (limits on in both){}",
            by.as_str(),
            if unheard {
                "; the installs' activities unheard"
            } else {
                ""
            }
        ),
        json!({
            "users": users, "by": by.as_str(), "graphRate": graph_rate,
            "tenantRate": tenant_rate, "installsUnheard": unheard,
            "logLevel": common.log_level,
        }),
    );

    let config = EmulatorConfig {
        rate_limits: true,
        tenant_requests_per_second: tenant_rate as usize,
        graph_requests_per_second: graph_rate as usize,
        // Every request of the run stays in the log, to be counted by operation.
        keep_requests: 100_000.max(30 * users),
        ..EmulatorConfig::default()
    };
    let mut bench = Bench::start_with("reach", common, config).await?;
    let directory = bench
        .emulator
        .generate_directory_users(TENANT, COHORT, users);
    bench.emulator.put_app_in_catalog(TENANT);
    let people: Vec<BenchUser> = directory
        .users()
        .map(|user| BenchUser {
            conversation_id: bench.emulator.personal_conversation_id(&user),
            user,
        })
        .collect();

    let ingress_url = bench
        .start_service(
            "herald-ingress",
            "ingress",
            &[(
                "HERALD_REMINDER_DELAY",
                format!("{}s", REMINDER_DELAY.as_secs()),
            )],
        )
        .await?
        .http_url
        .clone();
    // Teams tells the bot of each install: the ingress hears it, as in production (else the
    // bench's sink does).
    if !unheard {
        bench
            .emulator
            .set_bot_endpoint(&format!("{ingress_url}/api/messages"));
    }
    bench
        .start_service(
            "herald-dispatcher",
            "dispatcher",
            &[
                ("HERALD_PROACTIVE_INSTALL", "on".to_owned()),
                ("HERALD_GRAPH_RATE", graph_rate.to_string()),
                ("HERALD_TENANT_RATE", format!("{tenant_rate}/1s")),
            ],
        )
        .await?;
    let subjects = bench
        .services()
        .iter()
        .map(|s| Subject::process(&s.name, s.pid))
        .collect();
    let mut footprint = Footprint::settled(subjects).await;
    let statuses = status_store(&bench.namespace)?;
    let ids: Vec<String> = (0..users).map(job_id).collect();
    let amqp = Amqp::connect().await?;

    footprint.start();
    eprintln!(
        "publishing {users} jobs (the bound: {bound:.1} users/s, about {:.0} s)",
        users as f64 / bound
    );
    let published = amqp
        .publish_jobs(&bench.namespace, users, |i| {
            let job = Job::new(
                ids[i].parse().expect("a bench job id is valid"),
                by.target(&directory, i),
                Message::text(format!("first contact {i}")),
                None,
                None,
            )
            .expect("a bench job is valid");
            body(&job)
        })
        .await?;
    let within = Duration::from_secs_f64(300.0 + 20.0 * users as f64 / bound);
    let tally = wait_for_ends(&bench, &statuses, &ids, within).await?;
    let measured = footprint.finish();
    // A greeting of one of Herald's installs would come now, or a reminder within the delay.
    tokio::time::sleep(REMINDER_DELAY + Duration::from_secs(1)).await;

    let records = statuses
        .get_many(&ids.iter().map(String::as_str).collect::<Vec<_>>())
        .await?;
    let received = bench.received(&people);
    let times: Vec<OffsetDateTime> = received.iter().map(|(_, at)| *at).collect();
    let first = times.iter().min().copied();
    let last = times.iter().max().copied();
    let counts = bench.emulator.received_counts(Some(TENANT));
    let stats = bench.emulator.stats();
    let requests = bench.emulator.requests();

    // Units stay the same from run to run: the medians print the first run's beside them.
    let per_user = |n: usize| round(n as f64 / users as f64, 3);
    let count = |operation: Operation, status: Option<u16>| {
        requests
            .iter()
            .filter(|r| r.operation == operation && status.is_none_or(|s| r.status == s))
            .count()
    };

    report.section("bound");
    report.figure(
        "graphCallsPerUser",
        "Graph calls per first contact (expected)",
        json!(calls),
        if by == By::PrincipalName {
            "(user, install, installation, chat) + 1 catalog lookup per tenant"
        } else {
            "(install, installation, chat) + 1 catalog lookup per tenant"
        },
    );
    report.figure(
        "graphBoundPerSecond",
        "Graph's bound: graph-rate / calls",
        json!(round(graph_bound, 2)),
        "users/s",
    );
    report.figure(
        "teamsBoundPerSecond",
        "Teams' bound: tenant-rate / 2 (create, send)",
        json!(round(teams_bound, 2)),
        "users/s",
    );

    report.section("first contact");
    report.figure(
        "delivered",
        "delivered",
        json!(tally.delivered),
        &format!("of {users}"),
    );
    report.figure("failed", "failed jobs", json!(tally.failed), "");
    report.figure(
        "unfinished",
        "cancelled, expired or never ended",
        json!(tally.other_end + tally.pending),
        "",
    );
    report.figure(
        "publishSeconds",
        "publishing took",
        json!(round(published.took.as_secs_f64(), 3)),
        "s",
    );
    report.figure(
        "firstDeliveredSeconds",
        "first publish → first delivered",
        json!(first.map_or(f64::NAN, |at| round(seconds(published.first_at, at), 2))),
        "s",
    );
    let end_to_end = last.map_or(f64::NAN, |at| seconds(published.first_at, at));
    report.figure(
        "seconds",
        "first publish → last delivered",
        json!(round(end_to_end, 2)),
        "s",
    );
    let rate = tally.delivered as f64 / end_to_end;
    report.figure(
        "sendsPerSecond",
        "first-contact sends per second",
        json!(round(rate, 2)),
        "/s",
    );
    report.figure(
        "ofBound",
        "of the bound",
        json!(round(rate / bound, 3)),
        &format!("(bound {bound:.2}/s)"),
    );
    if let (Some(first), Some(last)) = (first, last)
        && times.len() > 1
    {
        report.figure(
            "steadyPerSecond",
            "between first and last delivery",
            json!(round((times.len() - 1) as f64 / seconds(first, last), 2)),
            "/s",
        );
    }
    report.figure(
        "busiest1s",
        "deliveries in the busiest 1 s",
        json!(busiest(&times, Duration::from_secs(1))),
        "",
    );
    report.figure(
        "extraMessages",
        "messages beyond one per user (greetings)",
        json!(counts.activities.saturating_sub(tally.delivered as u64)),
        "",
    );
    let attempts = records.iter().flatten().map(|r| r.attempts).max();
    report.figure(
        "maxAttempts",
        "attempts of one job, most",
        json!(attempts.unwrap_or(0)),
        "(as its status record counts them)",
    );
    let failures: BTreeMap<String, usize> = records
        .iter()
        .flatten()
        .filter(|r| r.status == JobStatus::Failed)
        .fold(BTreeMap::new(), |mut reasons, r| {
            *reasons
                .entry(r.last_error.clone().unwrap_or_default())
                .or_default() += 1;
            reasons
        });
    for (reason, count) in &failures {
        report.text(&format!("failed ×{count}: {reason}"));
    }

    report.section("Graph");
    report.figure(
        "requests",
        "Graph calls answered",
        json!(stats.graph_requests),
        "",
    );
    report.figure(
        "perUser",
        "Graph calls per user",
        json!(per_user(stats.graph_requests)),
        &format!("(expected {calls}, + 1 per tenant)"),
    );
    for (operation, key, label) in GRAPH_OPERATIONS {
        if by == By::ObjectId && operation == Operation::GraphGetUser {
            continue;
        }
        let (value, unit) = if operation == Operation::GraphListCatalogApps {
            (json!(count(operation, None)), "calls (1 expected)")
        } else {
            (json!(per_user(count(operation, None))), "per user")
        };
        report.figure(
            &format!("{key}Calls"),
            &format!("  {key}: {label}"),
            value,
            unit,
        );
    }
    report.figure(
        "installConflicts",
        "  installs answered 409 (installed already)",
        json!(count(Operation::GraphInstallApp, Some(409))),
        "",
    );
    report.figure("throttled", "Graph 429s", json!(stats.graph_throttled), "");
    throttled_calls(&mut report, &requests, published.first_at, "Graph", |r| {
        r.operation.is_graph()
    });
    let dispatcher = bench
        .services()
        .iter()
        .find(|s| s.name == "dispatcher")
        .expect("the run has a dispatcher");
    let held = dispatcher
        .metric(
            &bench.http,
            "herald_graph_requests_total",
            "outcome=\"held\"",
        )
        .await
        // A metric with no series sums to -0.0.
        + 0.0;
    report.figure(
        "heldByPacer",
        "Graph calls held back by Herald's pace",
        json!(held),
        "(the job comes back for its turn)",
    );
    let graph_times: Vec<OffsetDateTime> = requests
        .iter()
        .filter(|r| r.operation.is_graph())
        .map(|r| r.at)
        .collect();
    report.figure(
        "busiest1s",
        "Graph calls in the busiest 1 s",
        json!(busiest(&graph_times, Duration::from_secs(1))),
        &format!("(limit {graph_rate})"),
    );
    if let (Some(first), Some(last)) = (graph_times.iter().min(), graph_times.iter().max())
        && graph_times.len() > 1
    {
        report.figure(
            "perSecond",
            "Graph calls per second, first → last call",
            json!(round(
                (graph_times.len() - 1) as f64 / seconds(*first, *last),
                2
            )),
            &format!("/s (limit {graph_rate})"),
        );
    }
    report.figure(
        "tokens",
        "Graph tokens issued",
        json!(stats.graph_token_issues),
        "",
    );

    report.section("Teams");
    report.figure(
        "requestsPerUser",
        "Bot Connector requests per user",
        json!(per_user(stats.requests)),
        "(2 expected: the refused create, the send)",
    );
    report.figure(
        "refusedCreatesPerUser",
        "1:1 chat creations refused (403), per user",
        json!(per_user(count(Operation::CreateConversation, Some(403)))),
        "(1 expected)",
    );
    report.figure(
        "acceptedCreates",
        "1:1 chat creations accepted",
        json!(stats.creates),
        "(after the install, by a job that came back)",
    );
    report.figure("throttled", "Teams 429s", json!(stats.throttled), "");
    throttled_calls(
        &mut report,
        &requests,
        published.first_at,
        "Bot Connector",
        |r| !r.operation.is_graph() && !r.operation.is_token(),
    );
    let retrying = dispatcher
        .metric(&bench.http, "herald_jobs_total", "outcome=\"retrying\"")
        .await
        + 0.0;
    report.figure(
        "retriesPerUser",
        "job handlings that ended in a retry, per user",
        json!(round(retrying / users as f64, 3)),
        "",
    );

    measured.report(
        &mut report,
        "footprint (from first publish to the last job's end)",
        users,
        "users",
    );
    amqp.close().await;
    bench.stop_services().await;
    keep_logs(&bench.namespace);
    bench.finish().await?;
    Ok(report)
}

/// The first few 429s of one API (`counted`): which call, when, and how many of its calls had
/// been admitted in the second before, as the emulator's sliding window saw them.
fn throttled_calls(
    report: &mut Report,
    requests: &[RecordedRequest],
    since: OffsetDateTime,
    api: &str,
    counted: impl Fn(&RecordedRequest) -> bool,
) {
    let admitted: Vec<OffsetDateTime> = requests
        .iter()
        .filter(|r| counted(r) && r.status != 429)
        .map(|r| r.at)
        .collect();
    for refused in requests
        .iter()
        .filter(|r| counted(r) && r.status == 429)
        .take(5)
    {
        let before = admitted
            .iter()
            .filter(|at| **at <= refused.at && refused.at - **at < time::Duration::SECOND)
            .count();
        report.text(&format!(
            "429 to {:?} {:.3} s after the first publish: {before} {api} calls admitted in the second before it",
            refused.operation,
            seconds(since, refused.at)
        ));
    }
}

/// Copies the run's service logs beside the ones the next run overwrites, named by the
/// namespace, so that every run of `--runs N` can be read afterwards.
fn keep_logs(namespace: &str) {
    let dir = Common::log_dir();
    for name in ["ingress", "dispatcher"] {
        let from = dir.join(format!("reach-{name}.log"));
        let to = dir.join(format!("{namespace}-{name}.log"));
        match std::fs::copy(&from, &to) {
            Ok(_) => eprintln!("{name}'s log kept as {}", to.display()),
            Err(error) => eprintln!("could not keep {}: {error}", from.display()),
        }
    }
}

/// Reads the jobs' records until every job has ended, or `within` has passed (then the
/// figures say how many never ended).
async fn wait_for_ends(
    bench: &Bench,
    statuses: &StatusStore,
    ids: &[String],
    within: Duration,
) -> anyhow::Result<Tally> {
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let started = Instant::now();
    let mut reported = Instant::now();
    loop {
        let mut tally = Tally::default();
        for record in statuses.get_many(&ids).await? {
            match record.map(|r| r.status) {
                Some(JobStatus::Delivered) => tally.delivered += 1,
                Some(JobStatus::Failed) => tally.failed += 1,
                Some(JobStatus::Cancelled | JobStatus::Expired) => tally.other_end += 1,
                _ => tally.pending += 1,
            }
        }
        if tally.ended() == ids.len() {
            return Ok(tally);
        }
        if started.elapsed() > within {
            eprintln!(
                "  {} of {} jobs never ended within {within:?}",
                tally.pending,
                ids.len()
            );
            return Ok(tally);
        }
        if reported.elapsed() > Duration::from_secs(5) {
            let stats = bench.emulator.stats();
            eprintln!(
                "  … {} delivered, {} failed of {} ({:.0} s; Graph {} calls, {} 429s; Teams {} 429s)",
                tally.delivered,
                tally.failed,
                ids.len(),
                started.elapsed().as_secs_f64(),
                stats.graph_requests,
                stats.graph_throttled,
                stats.throttled
            );
            reported = Instant::now();
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The jobs' status records, as the dispatcher keeps them in this run's namespace.
fn status_store(namespace: &str) -> anyhow::Result<StatusStore> {
    let redis = Redis::new(
        &herald_tests::redis_url()
            .parse::<RedisTarget>()
            .map_err(anyhow::Error::msg)?,
        namespace.parse::<Namespace>().map_err(anyhow::Error::msg)?,
    )?;
    Ok(StatusStore::new(redis, Duration::from_secs(24 * 3600)))
}

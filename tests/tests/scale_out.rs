//! Scale-out, proven on this machine: a three-node RabbitMQ cluster of the test's own
//! ([`RabbitCluster`]), several replicas of each Herald service as real processes, and a node
//! killed under load. Teams' limits hold across the replicas together, and nothing is lost.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use herald_emulator::TeamsUser;
use herald_tests::{
    StackOptions, TestStack, busiest, free_port, job_for, longest_pause, publish_to,
    rabbit_cluster::RabbitCluster, replica::Replica, wait_until,
};
use time::OffsetDateTime;

/// One cluster test at a time: three RabbitMQ nodes and a handful of Herald processes are
/// what two cores can carry without distorting the timings the tests judge by.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const TENANTS: usize = 10;
const USERS: usize = 200;
const JOBS: usize = 10_000;
const DISPATCHERS: usize = 3;
const PREFETCH: usize = 32;

/// A replica of `name` on the cluster, with the prefetch these tests count duplicates by.
fn replica(name: &str, stack: &TestStack, amqp_urls: &str, extra: &[(&str, String)]) -> Replica {
    let mut settings = vec![("HERALD_PREFETCH", PREFETCH.to_string())];
    settings.extend_from_slice(extra);
    Replica::spawn(name, stack, amqp_urls, &settings)
}

/// Watches the replicas' readiness every 25 ms and counts the answers that were not ready.
struct ReadinessWatch {
    not_ready: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl ReadinessWatch {
    fn start(admin_urls: Vec<String>) -> Self {
        let not_ready = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (counted, stopped) = (not_ready.clone(), stop.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            while !stopped.load(Ordering::Relaxed) {
                for url in &admin_urls {
                    let ready = http
                        .get(format!("{url}/readyz"))
                        .timeout(Duration::from_secs(1))
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                    if !ready {
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        });
        Self { not_ready, stop }
    }

    fn not_ready(&self) -> usize {
        self.not_ready.load(Ordering::Relaxed)
    }
}

impl Drop for ReadinessWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// How many times each `job …` text reached Teams, over the users' personal chats.
fn received(stack: &TestStack, users: &[TeamsUser]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for user in users {
        for activity in stack
            .emulator
            .activities(&stack.emulator.personal_conversation_id(user))
        {
            if let Some(text) = activity.text.filter(|t| t.starts_with("job ")) {
                *counts.entry(text).or_insert(0) += 1;
            }
        }
    }
    counts
}

/// A three-node cluster, and a stack on it (emulator and ingress in-process, no dispatcher)
/// whose services try the nodes from node `first`.
async fn cluster_and_stack(first: usize) -> (RabbitCluster, TestStack) {
    let cluster = tokio::task::spawn_blocking(|| RabbitCluster::start(3))
        .await
        .unwrap();
    let stack = TestStack::start_with(
        StackOptions {
            start_dispatcher: false,
            reminder_delay: Duration::from_secs(3600),
            ..Default::default()
        }
        .with_env("HERALD_AMQP_URL", &cluster.amqp_urls_from(first)),
    )
    .await;
    (cluster, stack)
}

#[tokio::test(flavor = "multi_thread")]
async fn three_dispatchers_keep_teams_limits_and_lose_nothing_when_the_queue_leader_dies() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let (cluster, stack) = cluster_and_stack(0).await;
    let dispatch_queue = format!("{}.dispatch", stack.namespace);
    let mut members = cluster.members_of(&dispatch_queue);
    members.sort();
    assert_eq!(
        members,
        [0, 1, 2],
        "the dispatch queue has a replica on every node"
    );

    // One dispatcher per node: replica k tries node k first.
    let dispatchers: Vec<Replica> = (0..DISPATCHERS)
        .map(|k| replica("herald-dispatcher", &stack, &cluster.amqp_urls_from(k), &[]))
        .collect();
    let http = reqwest::Client::new();
    for replica in &dispatchers {
        wait_until("a dispatcher to be ready", Duration::from_secs(30), || {
            replica.is_ready(&http)
        })
        .await;
    }

    let tenants: Vec<String> = (0..TENANTS)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    let users: Vec<TeamsUser> = (0..USERS)
        .map(|i| {
            TeamsUser::new(
                tenants[i % TENANTS].clone(),
                uuid::Uuid::new_v4().to_string(),
                format!("user {i}"),
            )
        })
        .collect();
    for batch in users.chunks(20) {
        futures_util::future::join_all(batch.iter().map(|user| stack.install(user))).await;
    }

    let bodies: Vec<(String, Vec<u8>)> = (0..JOBS)
        .map(|i| {
            let job = job_for(&users[i % USERS], &format!("job {i}"));
            (job.id.to_string(), serde_json::to_vec(&job).unwrap())
        })
        .collect();
    // Asked before the load: rabbitmqctl takes seconds to answer.
    let leader = cluster
        .leader_of(&dispatch_queue)
        .expect("the dispatch queue has a leader");
    // Published through another node while the dispatchers already send, so the kill lands
    // in the middle of both.
    let publishing = tokio::spawn({
        let (node, namespace, bodies) = (
            cluster.amqp_url(leader + 1),
            stack.namespace.clone(),
            bodies.clone(),
        );
        async move { publish_to(&node, &namespace, &bodies, None).await }
    });
    let started = Instant::now();

    // Progress from the emulator's counter of sends (the welcomes count too): reading every
    // conversation takes too long to time a kill by.
    let sends = || stack.emulator.stats().sends;
    wait_until(
        "a third of the jobs to arrive",
        Duration::from_secs(120),
        || async { sends() >= USERS + JOBS / 3 },
    )
    .await;
    let readiness =
        ReadinessWatch::start(dispatchers.iter().map(|d| d.admin_url.clone()).collect());
    let third_at = Instant::now();
    let mut cluster = cluster;
    cluster.kill(leader);
    let killed_at = Instant::now();
    let killed_wall = OffsetDateTime::now_utc();
    let sent_at_kill = sends();
    eprintln!(
        "killed {:?} after a third had arrived, at {sent_at_kill} sends",
        third_at.elapsed()
    );
    wait_until(
        "a delivery after the node's death",
        Duration::from_secs(60),
        || async { sends() > sent_at_kill },
    )
    .await;
    let first_delivery_after = killed_at.elapsed();
    publishing
        .await
        .unwrap()
        .expect("every job is published and confirmed, through the node loss");

    // Every job arrives, or the test fails once deliveries have stalled for a minute, saying
    // where the missing jobs are.
    let (mut last, mut since) = (0, Instant::now());
    loop {
        let counts = received(&stack, &users);
        if counts.len() == JOBS {
            break;
        }
        if counts.len() > last {
            (last, since) = (counts.len(), Instant::now());
        } else if since.elapsed() > Duration::from_secs(60) {
            let mut statuses: HashMap<String, usize> = HashMap::new();
            for (i, (id, _)) in bodies.iter().enumerate() {
                if !counts.contains_key(&format!("job {i}")) {
                    let status = stack.status(id).await.map(|s| s.status.to_string());
                    *statuses.entry(format!("{status:?}")).or_default() += 1;
                }
            }
            let logs: Vec<String> = dispatchers.iter().map(|d| d.log_tail(40)).collect();
            panic!(
                "{} of {JOBS} jobs arrived, none for a minute; the missing ones' statuses: \
                 {statuses:?}; the cluster's queues:\n{}\nthe dispatchers' last words:\n{}",
                counts.len(),
                cluster.queue_report(&stack.namespace),
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let took = started.elapsed();
    let not_ready = readiness.not_ready();
    drop(readiness);

    // The killed node starts again and rejoins the cluster.
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.restart(leader);
        cluster
    })
    .await
    .unwrap();
    let mut members = cluster.members_of(&dispatch_queue);
    members.sort();

    let counts = received(&stack, &users);
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    let mut per_conversation = (0, 0);
    let mut per_tenant: HashMap<&str, Vec<OffsetDateTime>> = HashMap::new();
    for user in &users {
        let times: Vec<_> = stack
            .emulator
            .activities(&stack.emulator.personal_conversation_id(user))
            .into_iter()
            .map(|a| a.received_at)
            .collect();
        per_tenant
            .entry(user.tenant_id.as_str())
            .or_default()
            .extend(&times);
        per_conversation.0 = per_conversation
            .0
            .max(busiest(&times, Duration::from_secs(1)));
        per_conversation.1 = per_conversation
            .1
            .max(busiest(&times, Duration::from_secs(2)));
    }
    let busiest_tenant = per_tenant
        .values()
        .map(|times| busiest(times, Duration::from_secs(1)))
        .max()
        .unwrap_or(0);
    // The node's loss as the recipients saw it.
    let sent: Vec<OffsetDateTime> = per_tenant.values().flatten().copied().collect();
    let longest_pause = longest_pause(killed_wall, &sent);
    eprintln!(
        "{JOBS} jobs to {USERS} users in {TENANTS} tenants through {DISPATCHERS} dispatchers on a \
         3-node cluster: {took:?} ({:.0}/s); node {leader} (the dispatch queue's leader) killed \
         after {} sends, first delivery after it in {first_delivery_after:?}, longest pause \
         between sends after it {longest_pause}; readiness answers not ready: {not_ready}; duplicates: {duplicates}; busiest conversation \
         {}/1 s, {}/2 s; busiest tenant {busiest_tenant}/1 s; 429s: {}",
        JOBS as f64 / took.as_secs_f64(),
        sent_at_kill - USERS,
        per_conversation.0,
        per_conversation.1,
        stack.emulator.throttled_count(),
    );
    assert_eq!(counts.len(), JOBS, "every job reached Teams");
    assert!(
        duplicates <= DISPATCHERS * PREFETCH,
        "{duplicates} duplicates, more than the replicas' prefetch together"
    );
    assert_eq!(
        stack.emulator.throttled_count(),
        0,
        "Teams had to answer 429"
    );
    assert!(
        per_conversation.0 <= 7 && per_conversation.1 <= 8,
        "a conversation's limits were broken: {per_conversation:?}"
    );
    assert!(
        busiest_tenant <= 50,
        "a tenant got {busiest_tenant} sends in a second"
    );
    assert!(
        not_ready > 0,
        "the dispatcher on the killed node never reported not ready"
    );
    assert_eq!(
        members,
        [0, 1, 2],
        "the restarted node holds its replica again"
    );
    for replica in &dispatchers {
        assert!(replica.is_ready(&http).await, "a dispatcher is ready again");
    }
    drop(dispatchers);
    stack.stop().await;
    drop(cluster);
}

/// What the test's client saw of one `/v1` request: the job id of its 2xx, and how many
/// answers it had to retry first.
struct Accepted {
    id: String,
    retried: usize,
}

/// Posts notification `i` through the ingress replicas, starting with replica `i % n`, until
/// one answers 2xx; a 503 or a broken connection is retried on the next replica with the same
/// `Idempotency-Key`, as the README tells clients to.
async fn post_until_accepted(
    http: &reqwest::Client,
    ingresses: &[String],
    user: &TeamsUser,
    i: usize,
) -> Accepted {
    let body = serde_json::json!({
        "to": {"user": {"tenantId": user.tenant_id, "aadObjectId": user.aad_object_id}},
        "message": {"text": format!("request {i}")},
    });
    let mut retried = 0;
    for attempt in 0.. {
        let url = &ingresses[(i + attempt) % ingresses.len()];
        let answer = http
            .post(format!("{url}/v1/notifications"))
            .bearer_auth(herald_tests::API_KEY)
            .header("Idempotency-Key", format!("request-{i}"))
            .json(&body)
            .timeout(Duration::from_secs(15))
            .send()
            .await;
        match answer {
            Ok(response) if response.status().is_success() => {
                let accepted: serde_json::Value = response.json().await.unwrap();
                return Accepted {
                    id: accepted["id"].as_str().unwrap().to_owned(),
                    retried,
                };
            }
            Ok(response) if response.status() == 503 => {}
            Ok(response) => panic!(
                "request {i}: {} {:?}",
                response.status(),
                response.text().await
            ),
            Err(_) => {}
        }
        retried += 1;
        assert!(retried < 200, "request {i} was never accepted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unreachable!()
}

/// Teams' side: installs through the ingress replicas in turn, each retried until both of its
/// activities are answered 200, as Teams retries what the bot refused. Returns the refusals.
async fn install_through(
    emulator: &herald_emulator::Emulator,
    ingresses: &[String],
    users: &[TeamsUser],
) -> usize {
    let mut refused = 0;
    for (i, user) in users.iter().enumerate() {
        for attempt in 0.. {
            let url = &ingresses[(i + attempt) % ingresses.len()];
            emulator.set_bot_endpoint(&format!("{url}/api/messages"));
            let outcome = emulator.install(user).await;
            if outcome.is_ok_and(|o| {
                o.installation_update_status == 200 && o.conversation_update_status == 200
            }) {
                break;
            }
            refused += 1;
            assert!(attempt < 200, "install {i} was never taken");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    refused
}

#[tokio::test(flavor = "multi_thread")]
async fn two_ingress_replicas_lose_no_accepted_request_when_a_node_dies() {
    const REQUESTS: usize = 600;
    const USERS: usize = 30;
    let _turn = ONE_AT_A_TIME.lock().await;
    let (cluster, stack) = cluster_and_stack(2).await;
    let http = reqwest::Client::new();
    // Ingress replica k tries node k first; the dispatcher node 2.
    let ingress_ports: Vec<u16> = (0..2).map(|_| free_port()).collect();
    let ingresses: Vec<Replica> = ingress_ports
        .iter()
        .enumerate()
        .map(|(k, port)| {
            replica(
                "herald-ingress",
                &stack,
                &cluster.amqp_urls_from(k),
                &[("HERALD_HTTP_ADDR", format!("127.0.0.1:{port}"))],
            )
        })
        .collect();
    let dispatcher = replica("herald-dispatcher", &stack, &cluster.amqp_urls_from(2), &[]);
    for replica in ingresses.iter().chain([&dispatcher]) {
        wait_until("a replica to be ready", Duration::from_secs(30), || {
            replica.is_ready(&http)
        })
        .await;
    }
    let urls: Vec<String> = ingress_ports
        .iter()
        .map(|port| format!("http://127.0.0.1:{port}"))
        .collect();
    // The users the requests go to are installed first; a second group installs while the
    // node dies.
    let users: Vec<TeamsUser> = (0..USERS).map(|_| TeamsUser::random()).collect();
    let newcomers: Vec<TeamsUser> = (0..USERS).map(|_| TeamsUser::random()).collect();
    install_through(&stack.emulator, &urls, &users).await;

    let installs = {
        let (emulator, newcomers, urls) = (stack.emulator.clone(), newcomers.clone(), urls.clone());
        tokio::spawn(async move { install_through(&emulator, &urls, &newcomers).await })
    };
    // The calling services' side: requests eight at a time, each until accepted.
    let requests = {
        let (http, urls, users) = (http.clone(), urls.clone(), users.clone());
        tokio::spawn(async move {
            use futures_util::StreamExt;
            futures_util::stream::iter(0..REQUESTS)
                .map(|i| {
                    let (http, urls, user) = (http.clone(), urls.clone(), users[i % USERS].clone());
                    async move { (i, post_until_accepted(&http, &urls, &user, i).await) }
                })
                .buffer_unordered(8)
                .collect::<Vec<_>>()
                .await
        })
    };
    // Node 0, which the first ingress replica is connected to, dies a moment in.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut cluster = cluster;
    cluster.kill(0);
    let refused_installs = installs.await.unwrap();
    let accepted = requests.await.unwrap();

    let retried: usize = accepted.iter().map(|(_, a)| a.retried).sum();
    let ids: Vec<&str> = accepted.iter().map(|(_, a)| a.id.as_str()).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut pending: HashMap<String, usize> = HashMap::new();
        for id in &ids {
            let status = stack.status(id).await.map(|s| s.status.to_string());
            if status.as_deref() != Some("delivered") {
                *pending.entry(format!("{status:?}")).or_default() += 1;
            }
        }
        if pending.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "accepted requests not delivered, by status: {pending:?}; the cluster's queues:\n{}",
            cluster.queue_report(&stack.namespace)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut texts: HashMap<String, usize> = HashMap::new();
    let mut welcomes = 0;
    for user in users.iter().chain(&newcomers) {
        for activity in stack
            .emulator
            .activities(&stack.emulator.personal_conversation_id(user))
        {
            match activity.text {
                Some(text) if text.starts_with("request ") => *texts.entry(text).or_default() += 1,
                Some(_) => welcomes += 1,
                None => {}
            }
        }
    }
    let duplicates: usize = texts.values().map(|n| n - 1).sum();
    eprintln!(
        "{REQUESTS} requests and {USERS} installs through 2 ingress replicas while node 0 died: \
         {retried} answers retried by the client, {refused_installs} install attempts refused \
         and retried; duplicates: {duplicates}; welcomes: {welcomes}"
    );
    assert_eq!(
        texts.len(),
        REQUESTS,
        "every accepted request reached Teams"
    );
    assert_eq!(duplicates, 0, "a request reached Teams twice");
    assert_eq!(welcomes, 2 * USERS, "one welcome per install");
    drop(ingresses);
    drop(dispatcher);
    stack.stop().await;
    drop(cluster);
}

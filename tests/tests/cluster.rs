//! The stores on a Redis Cluster: a cluster of the test's own, on spare ports, and the install →
//! welcome → reminder story on it (references, statuses, pacing, all of it); then a master
//! killed under load, its replica promoted by the cluster, and nothing acknowledged lost.

use std::{
    net::TcpListener,
    process::{Child, Command},
    time::Duration,
};

use herald_emulator::TeamsUser;
use herald_ingress::greeting::greeting_job_id;
use herald_shared::store::{JobStatus, Redis, TimerStore};
use herald_tests::{StackOptions, TestStack, redis_server, wait_until};

struct Cluster {
    dir: std::path::PathBuf,
    ports: Vec<u16>,
    nodes: Vec<Child>,
}

impl Cluster {
    /// Three masters on free ports whose cluster bus ports (port + 10000) are free too.
    fn start() -> Self {
        Self::start_with_replicas(0)
    }

    /// Three masters with `replicas` replicas each.
    fn start_with_replicas(replicas: usize) -> Self {
        let dir =
            std::env::temp_dir().join(format!("herald-cluster-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let free = |port: u16| {
            TcpListener::bind(("127.0.0.1", port)).is_ok()
                && TcpListener::bind(("127.0.0.1", port + 10000)).is_ok()
        };
        // A random start, so that clusters started at once (tests of one binary) do not race
        // for the same ports.
        let base = 20000 + (uuid::Uuid::new_v4().as_u128() % 8000) as u16;
        let ports: Vec<u16> = (base..base + 2000)
            .filter(|p| free(*p))
            .take(3 * (1 + replicas))
            .collect();
        let mut cluster = Cluster {
            dir,
            ports,
            nodes: Vec::new(),
        };
        for port in cluster.ports.clone() {
            let config_file = format!("nodes-{port}.conf");
            let node = redis_server(
                port,
                &[
                    "--appendonly",
                    "no",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "2000",
                    // Replicas sync at once, rather than after the default 5 s wait for others.
                    "--repl-diskless-sync-delay",
                    "0",
                    "--cluster-config-file",
                    &config_file,
                ],
                Some(&cluster.dir),
            );
            cluster.nodes.push(node);
        }
        let addresses: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            created.status.success(),
            "{}",
            String::from_utf8_lossy(&created.stdout)
        );
        // Ready once the cluster is ok and every replica has its master's data: until its
        // first sync a replica has nothing, and a failover to it would lose everything.
        for _ in 0..200 {
            let ok = cluster
                .cli(cluster.ports[0], &["cluster", "info"])
                .contains("cluster_state:ok");
            let synced = cluster
                .ports
                .iter()
                .filter(|port| {
                    cluster
                        .cli(**port, &["info", "replication"])
                        .contains("master_link_status:up")
                })
                .count();
            if ok && synced == 3 * replicas {
                return cluster;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the cluster did not become ok, with every replica in sync");
    }

    /// `redis-cli -p port args…`, its output.
    fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The ports of the masters that serve slots, as node `asked` sees them.
    fn masters(&self, asked: u16) -> Vec<u16> {
        self.cli(asked, &["cluster", "nodes"])
            .lines()
            .filter(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields.len() > 8 && fields[2].contains("master") && !fields[2].contains("fail")
            })
            .filter_map(|line| {
                let address = line.split_whitespace().nth(1)?;
                address.split(['@', ':']).nth(1)?.parse().ok()
            })
            .collect()
    }

    /// SIGKILLs the node on `port`.
    fn kill(&mut self, port: u16) {
        let index = self.ports.iter().position(|p| *p == port).unwrap();
        let _ = self.nodes[index].kill();
        let _ = self.nodes[index].wait();
    }

    fn keys_per_node(&self) -> Vec<u64> {
        self.ports
            .iter()
            .map(|port| {
                let out = Command::new("redis-cli")
                    .args(["-p", &port.to_string(), "dbsize"])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse()
                    .unwrap_or(0)
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_install_to_reminder_story_runs_on_a_redis_cluster() {
    let cluster = Cluster::start();
    let url = format!("redis+cluster://127.0.0.1:{}", cluster.ports[0]);
    let stack = TestStack::start_with(
        StackOptions {
            reminder_delay: Duration::from_secs(2),
            ..Default::default()
        }
        .with_env("HERALD_REDIS_URL", &url),
    )
    .await;
    let mut users = Vec::new();
    for _ in 0..3 {
        let user = TeamsUser::random();
        stack.emulator.install(&user).await.unwrap();
        users.push(user);
    }
    for user in &users {
        let conversation = stack.emulator.personal_conversation_id(user);
        let received = stack
            .wait_for_activities(&conversation, 2, Duration::from_secs(20))
            .await;
        assert_eq!(
            received[1].text.as_deref(),
            Some("Hey! It's been a while. How are you?")
        );
        let reminder = greeting_job_id(&stack.namespace, &conversation, 1, "reminder");
        wait_until("the reminder's status", Duration::from_secs(10), || async {
            stack
                .status(&reminder)
                .await
                .is_some_and(|s| s.status == JobStatus::Delivered)
        })
        .await;
        let reference = stack
            .conversations
            .get(&conversation)
            .await
            .unwrap()
            .expect("the reference is in the cluster");
        assert_eq!(
            reference.tenant_id.as_deref(),
            Some(user.tenant_id.as_str())
        );
    }
    let spread = cluster.keys_per_node();
    assert!(
        spread.iter().filter(|n| **n > 0).count() >= 2,
        "keys landed on one node only: {spread:?}"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_master_killed_under_load_loses_nothing_acknowledged() {
    const USERS: usize = 30;
    const JOBS: usize = 1_500;
    let mut cluster = Cluster::start_with_replicas(1);
    // Every node as a seed: the client must find the cluster whichever node dies.
    let url = cluster
        .ports
        .iter()
        .map(|p| format!("redis://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let stack = TestStack::start_with(
        StackOptions {
            reminder_delay: Duration::from_secs(3600),
            ..Default::default()
        }
        .with_env("HERALD_REDIS_URL", &url),
    )
    .await;
    // Acknowledged before the kill: the users' references and their welcomes' records.
    let mut conversations = Vec::new();
    let users: Vec<TeamsUser> = (0..USERS).map(|_| TeamsUser::random()).collect();
    for user in &users {
        conversations.push(stack.install(user).await);
    }
    let jobs: Vec<_> = (0..JOBS)
        .map(|i| herald_tests::job_for(&users[i % USERS], &format!("job {i}")))
        .collect();
    herald_tests::publish_jobs(&stack.namespace, &jobs.iter().collect::<Vec<_>>()).await;
    wait_until(
        "a third of the jobs to arrive",
        Duration::from_secs(60),
        || async { stack.emulator.stats().sends >= USERS + JOBS / 3 },
    )
    .await;
    let masters = cluster.masters(cluster.ports[0]);
    assert_eq!(masters.len(), 3, "three masters before the kill");
    let victim = masters[1];
    cluster.kill(victim);
    let killed_at = std::time::Instant::now();
    let survivor = *cluster.ports.iter().find(|p| **p != victim).unwrap();
    wait_until(
        "a replica to take over",
        Duration::from_secs(30),
        || async {
            let masters = cluster.masters(survivor);
            masters.len() == 3
                && !masters.contains(&victim)
                && cluster
                    .cli(survivor, &["cluster", "info"])
                    .contains("cluster_state:ok")
        },
    )
    .await;
    let failover = killed_at.elapsed();

    // Until every node has learned of the promotion, a command may still be redirected to
    // the dead master: the services retry such an answer, and so does this wait. If jobs stop
    // arriving for a minute, the test fails saying where they are.
    let timers = TimerStore::new(
        Redis::new(&url.parse().unwrap(), stack.namespace.parse().unwrap()).unwrap(),
    );
    let (mut last, mut since) = (0, std::time::Instant::now());
    loop {
        let mut waiting: std::collections::HashMap<String, usize> = Default::default();
        for job in &jobs {
            match stack.statuses.get(&job.id).await {
                Ok(Some(record)) if record.status == JobStatus::Delivered => {}
                other => {
                    let status = other.map(|r| r.map(|r| r.status.to_string()));
                    let timer = timers.due_ms(&job.id).await.ok().flatten().is_some();
                    *waiting
                        .entry(format!("{status:?}, timer {timer}"))
                        .or_default() += 1;
                }
            }
        }
        let left: usize = waiting.values().sum();
        if left == 0 {
            break;
        }
        if left != last {
            (last, since) = (left, std::time::Instant::now());
        } else if since.elapsed() > Duration::from_secs(60) {
            let mut reminders = 0;
            for conversation in &conversations {
                let reminder = greeting_job_id(&stack.namespace, conversation, 1, "reminder");
                reminders += usize::from(timers.due_ms(&reminder).await.ok().flatten().is_some());
            }
            let ready = herald_tests::queue_depth_of(
                &herald_shared::amqp::Topology::new(stack.namespace.parse().unwrap())
                    .dispatch_queue(),
            )
            .await;
            panic!(
                "{left} of {JOBS} jobs undelivered, none for a minute, {:?} after the kill: {waiting:?}; \
                 timers waiting: {:?}, of them the {reminders} of {USERS} reminders; dispatch queue: {ready:?}",
                killed_at.elapsed(),
                timers.waiting().await
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for (user, conversation) in users.iter().zip(&conversations) {
        let reference = stack
            .conversations
            .get(conversation)
            .await
            .unwrap()
            .expect("an acknowledged reference survives the failover");
        assert_eq!(
            reference.tenant_id.as_deref(),
            Some(user.tenant_id.as_str())
        );
        let welcome = greeting_job_id(&stack.namespace, conversation, 1, "welcome");
        assert_eq!(
            stack.status(&welcome).await.map(|s| s.status),
            Some(JobStatus::Delivered),
            "an acknowledged status record survives the failover"
        );
    }
    let mut counts = std::collections::HashMap::new();
    for conversation in &conversations {
        for text in stack
            .emulator
            .activities(conversation)
            .into_iter()
            .filter_map(|a| a.text)
            .filter(|t| t.starts_with("job "))
        {
            *counts.entry(text).or_insert(0_usize) += 1;
        }
    }
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    eprintln!(
        "{JOBS} jobs on a 3-master, 3-replica Redis Cluster, master :{victim} killed: failover \
         in {failover:?}; duplicates {duplicates}; 429s {}",
        stack.emulator.throttled_count()
    );
    assert_eq!(counts.len(), JOBS, "every job reached Teams");
    // 429s are not asserted: the pacing windows' latest entries may die with the master
    // before they reach its replica, and a send the lost entries would have held back can
    // then meet Teams' limit (Herald pauses the tenant for the Retry-After, as it must).
    stack.stop().await;
}

//! The stores on a Redis Cluster: a three-master cluster of the test's own, on spare ports, and
//! the install → welcome → reminder story on it (references, statuses, pacing, all of it).

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::Duration,
};

use herald_emulator::TeamsUser;
use herald_ingress::greeting::greeting_job_id;
use herald_shared::store::JobStatus;
use herald_tests::{StackOptions, TestStack, wait_until};

struct Cluster {
    dir: std::path::PathBuf,
    ports: Vec<u16>,
    nodes: Vec<Child>,
}

impl Cluster {
    /// Three masters on free ports whose cluster bus ports (port + 10000) are free too.
    fn start() -> Self {
        let dir =
            std::env::temp_dir().join(format!("herald-cluster-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let free = |port: u16| {
            TcpListener::bind(("127.0.0.1", port)).is_ok()
                && TcpListener::bind(("127.0.0.1", port + 10000)).is_ok()
        };
        let base = 20000 + (std::process::id() % 4000) as u16 * 2;
        let ports: Vec<u16> = (base..base + 2000).filter(|p| free(*p)).take(3).collect();
        let mut cluster = Cluster {
            dir,
            ports,
            nodes: Vec::new(),
        };
        for port in cluster.ports.clone() {
            let node = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .arg("--dir")
                .arg(&cluster.dir)
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server starts");
            cluster.nodes.push(node);
        }
        for port in &cluster.ports {
            wait_for_port(*port);
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
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            created.status.success(),
            "{}",
            String::from_utf8_lossy(&created.stdout)
        );
        for _ in 0..100 {
            let info = Command::new("redis-cli")
                .args(["-p", &cluster.ports[0].to_string(), "cluster", "info"])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                return cluster;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the cluster did not become ok");
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

fn wait_for_port(port: u16) {
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on {port}");
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

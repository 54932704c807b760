//! A RabbitMQ cluster of the test's own on this machine: nodes with their own names, ports,
//! data directories and Erlang cookie, joined into one cluster, each a process the test can
//! SIGKILL and start again. The machine's default node (5672) is never touched.
//!
//! Each node runs Debian's `rabbitmq-server` as the erl process itself (the script `exec`s
//! erl when it believes systemd runs it), so the child's pid is the node's: SIGKILL kills the
//! node, not a wrapper. Nodes find each other through the classic peer-discovery config, so a
//! restarted node rejoins on its own. Dropping the cluster kills every node and removes its
//! directory, whether the test passed or not.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

const SCRIPTS: &str = "/usr/lib/rabbitmq/bin";

/// How long a node may take to boot (and to join the cluster).
const BOOT: Duration = Duration::from_secs(90);

#[derive(Debug)]
pub struct RabbitCluster {
    dir: PathBuf,
    nodes: Vec<RabbitNode>,
}

#[derive(Debug)]
struct RabbitNode {
    name: String,
    port: u16,
    process: Option<Child>,
}

impl RabbitCluster {
    /// Starts `size` nodes and waits until they are one running cluster. Blocking: call it
    /// from `spawn_blocking` (or accept a stalled worker for the ~20 s it takes).
    pub fn start(size: usize) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let dir = std::env::temp_dir().join(format!("herald-rabbit-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        // The Erlang cookie: nodes and the CLI read `$HOME/.erlang.cookie`, owner-only.
        let cookie = dir.join(".erlang.cookie");
        std::fs::write(&cookie, format!("herald-test-cookie-{id}")).unwrap();
        set_owner_only(&cookie);
        let ports = free_port_pairs(size);
        let nodes: Vec<RabbitNode> = ports
            .into_iter()
            .enumerate()
            .map(|(i, port)| RabbitNode {
                name: format!("herald-{id}-{i}@localhost"),
                port,
                process: None,
            })
            .collect();
        let mut cluster = Self { dir, nodes };
        cluster.write_configs();
        // The first node boots alone; the others then find it running and join it.
        cluster.boot(0);
        for i in 1..size {
            cluster.boot(i);
        }
        cluster.await_clustered(size);
        cluster
    }

    /// Starts node `i` and waits until it runs. A node that exits while starting (its port
    /// taken between the check and its bind: the distribution port lies in the ephemeral
    /// range) is tried again on other ports, twice.
    fn boot(&mut self, i: usize) {
        for attempt in 0..3 {
            if attempt > 0 {
                self.nodes[i].port = free_port_pairs(1)[0];
                self.write_configs();
            }
            self.spawn(i);
            match self.await_running(i) {
                Ok(()) => return,
                Err(exited) => eprintln!("{exited}; trying other ports"),
            }
        }
        panic!("RabbitMQ node {i} would not start");
    }

    /// `HERALD_AMQP_URL` for the nodes, starting with node `first` (so replicas can be spread).
    pub fn amqp_urls_from(&self, first: usize) -> String {
        let n = self.nodes.len();
        (0..n)
            .map(|i| self.amqp_url(i + first))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn amqp_url(&self, node: usize) -> String {
        let port = self.nodes[node % self.nodes.len()].port;
        format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
    }

    /// The running nodes' process ids, by node (for measuring their CPU and memory).
    pub fn pids(&self) -> Vec<Option<u32>> {
        self.nodes
            .iter()
            .map(|n| n.process.as_ref().map(Child::id))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// SIGKILLs node `i`: no goodbye to its peers or its clients.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut process) = self.nodes[i].process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// Starts node `i` again (after [`RabbitCluster::kill`]) and waits until it is running and
    /// back in the cluster.
    pub fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].process.is_none(), "node {i} is running");
        self.boot(i);
        self.await_clustered(self.nodes.len());
    }

    /// The index of the node leading quorum queue `queue` (asked of a running node).
    pub fn leader_of(&self, queue: &str) -> Option<usize> {
        let asked = self.nodes.iter().position(|n| n.process.is_some())?;
        let output = self.ctl(
            asked,
            &[
                "list_queues",
                "name",
                "leader",
                "--formatter",
                "json",
                "--quiet",
            ],
        )?;
        let rows: Vec<serde_json::Value> = serde_json::from_str(&output).ok()?;
        let leader = rows
            .iter()
            .find(|row| row["name"] == queue)?
            .get("leader")?
            .as_str()?
            .to_owned();
        self.nodes.iter().position(|n| n.name == leader)
    }

    /// The members (replicas) of quorum queue `queue`, as node indexes.
    pub fn members_of(&self, queue: &str) -> Vec<usize> {
        let Some(asked) = self.nodes.iter().position(|n| n.process.is_some()) else {
            return Vec::new();
        };
        let Some(output) = self.ctl(
            asked,
            &[
                "list_queues",
                "name",
                "members",
                "--formatter",
                "json",
                "--quiet",
            ],
        ) else {
            return Vec::new();
        };
        let rows: Vec<serde_json::Value> = serde_json::from_str(&output).unwrap_or_default();
        let Some(members) = rows
            .iter()
            .find(|row| row["name"] == queue)
            .and_then(|row| row["members"].as_array())
        else {
            return Vec::new();
        };
        members
            .iter()
            .filter_map(|m| m.as_str())
            .filter_map(|m| self.nodes.iter().position(|n| n.name == m))
            .collect()
    }

    /// The queues whose names start with `prefix`: ready and unacknowledged messages and
    /// consumers, one line each (for a failing test's message).
    pub fn queue_report(&self, prefix: &str) -> String {
        let Some(asked) = self.nodes.iter().position(|n| n.process.is_some()) else {
            return "no node is running".into();
        };
        let Some(output) = self.ctl(
            asked,
            &[
                "list_queues",
                "name",
                "messages",
                "messages_ready",
                "messages_unacknowledged",
                "consumers",
                "leader",
                "state",
                "--formatter",
                "json",
                "--quiet",
            ],
        ) else {
            return "rabbitmqctl list_queues failed".into();
        };
        let rows: Vec<serde_json::Value> = serde_json::from_str(&output).unwrap_or_default();
        rows.iter()
            .filter(|row| row["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
            .filter(|row| row["messages"] != 0 || row["consumers"] != 0)
            .map(|row| {
                format!(
                    "{} messages {} (ready {}, unacked {}) consumers {} leader {} {}",
                    row["name"],
                    row["messages"],
                    row["messages_ready"],
                    row["messages_unacknowledged"],
                    row["consumers"],
                    row["leader"],
                    row["state"]
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
            + &self.channel_report()
    }

    /// Every running node's channels that hold unacknowledged messages: which connection,
    /// how many consumers and messages (where a stalled delivery sits).
    fn channel_report(&self) -> String {
        let mut report = String::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if node.process.is_none() {
                continue;
            }
            let Some(output) = self.ctl(
                i,
                &[
                    "list_channels",
                    "name",
                    "consumer_count",
                    "messages_unacknowledged",
                    "--formatter",
                    "json",
                    "--quiet",
                ],
            ) else {
                continue;
            };
            let rows: Vec<serde_json::Value> = serde_json::from_str(&output).unwrap_or_default();
            for row in rows
                .iter()
                .filter(|row| row["messages_unacknowledged"].as_u64().unwrap_or(0) > 0)
            {
                report += &format!(
                    "\nnode {i} channel {} consumers {} unacked {}",
                    row["name"], row["consumer_count"], row["messages_unacknowledged"]
                );
            }
        }
        report
    }

    fn write_configs(&self) {
        for (i, node) in self.nodes.iter().enumerate() {
            let mut config = String::from(
                "cluster_formation.peer_discovery_backend = classic_config\n\
                 loopback_users = none\n",
            );
            for (k, peer) in self.nodes.iter().enumerate() {
                config.push_str(&format!(
                    "cluster_formation.classic_config.nodes.{} = {}\n",
                    k + 1,
                    peer.name
                ));
            }
            config.push_str(&format!(
                "listeners.tcp.default = 127.0.0.1:{}\n",
                node.port
            ));
            std::fs::write(self.dir.join(format!("node-{i}.conf")), config).unwrap();
        }
    }

    fn spawn(&mut self, i: usize) {
        let node = &self.nodes[i];
        let base = self.dir.join(format!("node-{i}"));
        std::fs::create_dir_all(&base).unwrap();
        let log = std::fs::File::create(base.join("console.log")).unwrap();
        let process = Command::new(Path::new(SCRIPTS).join("rabbitmq-server"))
            .env("HOME", &self.dir)
            .env("RUNNING_UNDER_SYSTEMD", "true")
            .env("RABBITMQ_NODENAME", &node.name)
            .env("RABBITMQ_NODE_PORT", node.port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port(node.port).to_string())
            .env(
                "RABBITMQ_CONFIG_FILE",
                self.dir.join(format!("node-{i}.conf")),
            )
            .env("RABBITMQ_MNESIA_BASE", base.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", base.join("log"))
            .env("RABBITMQ_PID_FILE", base.join("pid"))
            // A node that dies while booting leaves its crash dump with its logs, not in the
            // test's working directory.
            .env("ERL_CRASH_DUMP", base.join("erl_crash.dump"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                base.join("enabled_plugins"),
            )
            .env("RABBITMQ_ENABLED_PLUGINS", "")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("rabbitmq-server starts (the Debian package is installed)");
        self.nodes[i].process = Some(process);
    }

    /// Waits until node `i` runs; an error if it exited, with the end of its console output.
    fn await_running(&mut self, i: usize) -> Result<(), String> {
        let deadline = Instant::now() + BOOT;
        while Instant::now() < deadline {
            if let Some(process) = self.nodes[i].process.as_mut()
                && let Ok(Some(status)) = process.try_wait()
            {
                self.nodes[i].process = None;
                let console =
                    std::fs::read_to_string(self.dir.join(format!("node-{i}")).join("console.log"))
                        .unwrap_or_default();
                let tail: Vec<&str> = console.lines().rev().take(15).collect();
                return Err(format!(
                    "RabbitMQ node {i} exited ({status}) while starting:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ));
            }
            if self.ctl(i, &["await_startup", "--timeout", "5"]).is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("RabbitMQ node {i} did not start within {BOOT:?}");
    }

    /// Waits until node 0 (or any running node) sees `size` running nodes.
    fn await_clustered(&self, size: usize) {
        let deadline = Instant::now() + BOOT;
        let mut seen = 0;
        while Instant::now() < deadline {
            let asked = self.nodes.iter().position(|n| n.process.is_some()).unwrap();
            if let Some(output) = self.ctl(asked, &["cluster_status", "--formatter", "json"]) {
                let status: serde_json::Value = serde_json::from_str(&output).unwrap_or_default();
                seen = status["running_nodes"].as_array().map_or(0, Vec::len);
                if seen >= size {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("the RabbitMQ cluster has {seen} running nodes, not {size}");
    }

    /// Runs `rabbitmqctl` against node `i`; its output when it succeeded.
    fn ctl(&self, i: usize, args: &[&str]) -> Option<String> {
        let output = Command::new(Path::new(SCRIPTS).join("rabbitmqctl"))
            .env("HOME", &self.dir)
            .arg("-n")
            .arg(&self.nodes[i].name)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

impl Drop for RabbitCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Erlang's distribution port for a node: RabbitMQ's default, the AMQP port + 20000.
fn dist_port(amqp_port: u16) -> u16 {
    amqp_port + 20000
}

/// `count` AMQP ports, each free along with its distribution port.
fn free_port_pairs(count: usize) -> Vec<u16> {
    let free = |port: u16| {
        TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", dist_port(port))).is_ok()
    };
    // A random start, so that clusters started at once (tests of one binary) do not race
    // for the same ports.
    let base = 30000 + (uuid::Uuid::new_v4().as_u128() % 4000) as u16;
    let ports: Vec<u16> = (base..base + 5000)
        .filter(|p| free(*p))
        .take(count)
        .collect();
    assert_eq!(ports.len(), count, "free ports for the RabbitMQ nodes");
    ports
}

fn set_owner_only(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o400)).unwrap();
}

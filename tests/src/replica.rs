//! A Herald service running as a process of its own (a replica), for the tests that run
//! several of one service or kill one.

use std::{path::PathBuf, time::Duration};

use tokio::process::Child;

use crate::{TestStack, free_port, service_command, wait_until};

/// A Herald binary running with a stack's configuration, logging to a file of its own, killed
/// (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Replica {
    process: Child,
    pub admin_url: String,
    log: PathBuf,
}

impl Replica {
    /// Starts `name` with the stack's configuration, connected to the RabbitMQ nodes in the
    /// order `amqp_urls` gives, with `extra` settings on top.
    pub fn spawn(name: &str, stack: &TestStack, amqp_urls: &str, extra: &[(&str, String)]) -> Self {
        let admin_port = free_port();
        let log = std::env::temp_dir().join(format!("{}-{name}-{admin_port}.log", stack.namespace));
        let mut command = service_command(name, &stack.env());
        // What a replica says about its links and consumers is what explains a stall.
        if std::env::var_os("RUST_LOG").is_none() {
            command
                .env("RUST_LOG", "info")
                .stdout(std::fs::File::create(&log).expect("a replica's log file"));
        }
        command
            .env("HERALD_AMQP_URL", amqp_urls)
            .env("HERALD_ADMIN_ADDR", format!("127.0.0.1:{admin_port}"))
            .envs(extra.iter().map(|(k, v)| (*k, v.as_str())));
        Self {
            process: command.spawn().expect("the binary starts"),
            admin_url: format!("http://127.0.0.1:{admin_port}"),
            log,
        }
    }

    pub async fn is_ready(&self, http: &reqwest::Client) -> bool {
        http.get(format!("{}/readyz", self.admin_url))
            .timeout(Duration::from_secs(1))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    /// Waits until the replica answers ready.
    pub async fn wait_ready(&self) {
        let http = reqwest::Client::new();
        wait_until("a replica to be ready", Duration::from_secs(30), || {
            self.is_ready(&http)
        })
        .await;
    }

    /// Kills the process with SIGKILL, as a crash would, and waits for it to be gone.
    pub async fn kill(&mut self) {
        self.process.kill().await.expect("the replica is killed");
    }

    /// Asks the process to stop (SIGTERM), as an orchestrator does, and waits until it has
    /// exited (its shutdown grace is the service's own).
    pub async fn terminate(&mut self) {
        if let Some(pid) = self.process.id() {
            let sent = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .expect("kill runs");
            assert!(sent.success(), "SIGTERM is delivered");
        }
        self.process.wait().await.expect("the replica exits");
    }

    /// The last `lines` lines of the replica's log, for a failing test's message.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let tail = all[all.len().saturating_sub(lines)..].join("\n");
        format!("--- {} ---\n{tail}", self.log.display())
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.process.start_kill();
        // A failing test's replicas keep their logs, to read what they did.
        if std::thread::panicking() {
            eprintln!("the replica's log is kept in {}", self.log.display());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

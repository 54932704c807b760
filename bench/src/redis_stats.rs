//! Redis commands per job: the `INFO commandstats` delta over a run (Redis counts the commands
//! scripts run too, and is shared with whatever else uses it), and, on request, `MONITOR`
//! filtered by the run's namespace, which tells round trips from commands inside scripts.

use std::{
    collections::{BTreeMap, HashMap},
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
};

use anyhow::Context;
use serde_json::{Value, json};

use crate::{procs::round, report::Report};

/// `calls` per command from `INFO commandstats`.
pub async fn commandstats() -> anyhow::Result<HashMap<String, u64>> {
    let client = redis::Client::open(herald_tests::redis_url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await?;
    let mut calls = HashMap::new();
    for line in info.lines() {
        let Some((name, rest)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let count = rest
            .split(',')
            .find_map(|kv| kv.strip_prefix("calls="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        calls.insert(name.to_owned(), count);
    }
    Ok(calls)
}

/// Redis' `used_memory` in bytes (what its data takes, with its overhead).
pub async fn used_memory() -> anyhow::Result<u64> {
    let client = redis::Client::open(herald_tests::redis_url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await?;
    info.lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .context("INFO memory has no used_memory")
}

/// What a namespace's keys hold, by kind (`{ns}:{kind}:…`): how many keys, and the sum of
/// `MEMORY USAGE` over them (each key's value and overhead, nested values counted in full).
/// Unlike `used_memory`, it is the namespace's own, whatever else shares the Redis.
#[derive(Debug, Clone, Default)]
pub struct NamespaceMemory {
    pub kinds: BTreeMap<String, (usize, u64)>,
}

impl NamespaceMemory {
    pub fn bytes(&self) -> u64 {
        self.kinds.values().map(|(_, bytes)| bytes).sum()
    }

    /// The kinds holding the most, largest first: `kind bytes/per (keys)`.
    pub fn breakdown(&self, per: usize) -> String {
        let mut kinds: Vec<_> = self.kinds.iter().collect();
        kinds.sort_by_key(|(_, (_, bytes))| std::cmp::Reverse(*bytes));
        kinds
            .iter()
            .take(6)
            .map(|(kind, (keys, bytes))| {
                format!(
                    "{kind} {:.0} ({keys} keys)",
                    *bytes as f64 / per.max(1) as f64
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

pub async fn namespace_memory(namespace: &str) -> anyhow::Result<NamespaceMemory> {
    /// Keys per SCAN page and per pipeline of MEMORY USAGE.
    const BATCH: usize = 1_000;
    let client = redis::Client::open(herald_tests::redis_url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let pattern = format!("{namespace}:*");
    let mut memory = NamespaceMemory::default();
    let mut cursor: u64 = 0;
    loop {
        let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(BATCH)
            .query_async(&mut conn)
            .await?;
        if !page.is_empty() {
            let mut pipe = redis::pipe();
            for key in &page {
                pipe.cmd("MEMORY")
                    .arg("USAGE")
                    .arg(key)
                    .arg("SAMPLES")
                    .arg(0);
            }
            // A key that expired between the scan and the question answers nil.
            let sizes: Vec<Option<u64>> = pipe.query_async(&mut conn).await?;
            for (key, size) in page.iter().zip(sizes) {
                let Some(size) = size else { continue };
                let kind = key
                    .strip_prefix(namespace)
                    .and_then(|rest| rest.split(':').nth(1))
                    .unwrap_or("?");
                let entry = memory.kinds.entry(kind.to_owned()).or_default();
                entry.0 += 1;
                entry.1 += size;
            }
        }
        if next == 0 {
            return Ok(memory);
        }
        cursor = next;
    }
}

/// Adds the commandstats delta per job to the report; the INFO calls themselves are left out.
pub fn report_delta(
    report: &mut Report,
    before: &HashMap<String, u64>,
    after: &HashMap<String, u64>,
    jobs: usize,
) {
    let mut per_command: BTreeMap<String, f64> = BTreeMap::new();
    for (name, calls) in after {
        let delta = calls.saturating_sub(before.get(name).copied().unwrap_or(0));
        if delta > 0 && name != "info" {
            per_command.insert(name.clone(), delta as f64 / jobs.max(1) as f64);
        }
    }
    let total: f64 = per_command.values().sum();
    let breakdown = per_command
        .iter()
        .filter(|(_, v)| **v >= 0.005)
        .map(|(k, v)| format!("{k} {v:.2}"))
        .collect::<Vec<_>>()
        .join(", ");
    report.figure(
        "redisCommandsPerJob",
        "Redis commands per job (INFO commandstats)",
        json!(round(total, 2)),
        &format!("({breakdown})"),
    );
    report.json(
        "redisCommandstatsPerJob",
        Value::Object(
            per_command
                .into_iter()
                .map(|(k, v)| (k, json!(round(v, 3))))
                .collect(),
        ),
    );
}

/// `redis-cli monitor` (line-buffered by `stdbuf`), counting the commands that name the namespace: those the clients sent
/// (round trips) and those scripts ran.
#[derive(Debug)]
pub struct Monitor {
    child: Child,
    reader: Option<JoinHandle<()>>,
    counts: Arc<Mutex<BTreeMap<(bool, String), u64>>>,
}

impl Monitor {
    pub fn start(namespace: &str) -> anyhow::Result<Self> {
        let url = herald_tests::redis_url();
        // Line-buffered, so that nothing is lost in the pipe's buffer when it is stopped.
        let mut child = Command::new("stdbuf")
            .args(["-oL", "redis-cli", "-u", &url, "monitor"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-cli monitor")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let counts: Arc<Mutex<BTreeMap<(bool, String), u64>>> = Arc::default();
        let marker = format!("\"{namespace}:");
        let shared = counts.clone();
        let (started, ready) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // redis-cli prints OK once the monitor is on.
                let _ = started.send(());
                if !line.contains(&marker) {
                    continue;
                }
                // `1700000000.000000 [0 127.0.0.1:5555] "EVAL" …` or `[0 lua] "HSET" …`.
                let in_script = line.contains(" lua]");
                let command = line
                    .split("] ")
                    .nth(1)
                    .and_then(|rest| rest.split('"').nth(1))
                    .unwrap_or("?")
                    .to_ascii_lowercase();
                *shared
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry((in_script, command))
                    .or_default() += 1;
            }
        });
        ready
            .recv_timeout(std::time::Duration::from_secs(5))
            .context("redis-cli monitor did not start")?;
        Ok(Self {
            child,
            reader: Some(reader),
            counts,
        })
    }

    /// Stops monitoring and adds the counts per job to the report.
    pub fn finish(mut self, report: &mut Report, jobs: usize) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let counts = self
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let per_job = |in_script: bool| {
            let list: Vec<(String, f64)> = counts
                .iter()
                .filter(|((s, _), _)| *s == in_script)
                .map(|((_, c), n)| (c.clone(), *n as f64 / jobs.max(1) as f64))
                .collect();
            let total: f64 = list.iter().map(|(_, v)| v).sum();
            (total, list)
        };
        let (trips, trip_list) = per_job(false);
        let (scripted, script_list) = per_job(true);
        let show = |list: &[(String, f64)]| {
            list.iter()
                .map(|(c, v)| format!("{c} {v:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        report.section("redis commands per job (MONITOR, this namespace only)");
        report.figure(
            "roundTrips",
            "commands sent by clients",
            json!(round(trips, 2)),
            &format!("({})", show(&trip_list)),
        );
        report.figure(
            "inScripts",
            "commands run inside scripts",
            json!(round(scripted, 2)),
            &format!("({})", show(&script_list)),
        );
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

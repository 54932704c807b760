//! Footprint from `/proc`: resident memory and CPU time of each process taking part (the
//! services, the broker, Redis, and this program's own threads, split into the emulator's and
//! the load generator's), idle before the load and during it.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::json;
use tokio::task::JoinHandle;

use crate::report::Report;

/// The thread name of the emulator's runtime; the rest of this process is the load generator.
pub const EMULATOR_THREADS: &str = "emulator";

/// Clock ticks per second (`getconf CLK_TCK`), 100 on every Linux this runs on.
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0)
}

/// utime + stime of a process or thread, in ticks, from its `stat` file.
fn stat_ticks(path: &str) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(path).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_owned();
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // After the command: state is field 3; utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// VmRSS in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    field("VmRSS:")
}

/// Processes whose command name is `comm` (e.g. `beam.smp`, `redis-server`).
pub fn pids_named(comm: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == comm)
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// What is watched.
#[derive(Debug, Clone)]
pub enum Subject {
    /// A whole process.
    Process { name: String, pid: u32 },
    /// This process's threads whose name is (or is not) `EMULATOR_THREADS`.
    OwnThreads { name: String, emulator: bool },
}

impl Subject {
    pub fn process(name: impl Into<String>, pid: u32) -> Self {
        Subject::Process {
            name: name.into(),
            pid,
        }
    }

    fn name(&self) -> &str {
        match self {
            Subject::Process { name, .. } | Subject::OwnThreads { name, .. } => name,
        }
    }

    fn ticks(&self) -> u64 {
        match self {
            Subject::Process { pid, .. } => stat_ticks(&format!("/proc/{pid}/stat"))
                .map(|(_, t)| t)
                .unwrap_or(0),
            Subject::OwnThreads { emulator, .. } => own_thread_ticks(*emulator),
        }
    }

    fn rss_kib(&self) -> Option<u64> {
        match self {
            Subject::Process { pid, .. } => rss_kib(*pid),
            Subject::OwnThreads { .. } => None,
        }
    }
}

/// CPU ticks of this process's threads, those of the emulator's runtime or all the others.
/// Threads that ended are not counted; the runtimes' workers live as long as the program.
fn own_thread_ticks(emulator: bool) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|t| {
            let tid = t.ok()?.file_name().to_str()?.to_owned();
            stat_ticks(&format!("/proc/self/task/{tid}/stat"))
        })
        .filter(|(comm, _)| (comm == EMULATOR_THREADS) == emulator)
        .map(|(_, ticks)| ticks)
        .sum()
}

/// The whole machine's CPU ticks so far, from `/proc/stat`.
#[derive(Debug, Clone, Copy)]
struct MachineTicks {
    /// Not idle: work, and time the hypervisor gave another guest.
    busy: u64,
    /// The hypervisor's share of `busy` (a virtual machine's "steal").
    stolen: u64,
    total: u64,
}

impl MachineTicks {
    fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        let values: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        let field = |i: usize| values.get(i).copied().unwrap_or(0);
        let total: u64 = values.iter().take(8).sum();
        Self {
            busy: total - field(3) - field(4),
            stolen: field(7),
            total,
        }
    }

    /// Cores busy, and cores stolen, from `earlier` to `self`.
    fn cores_since(&self, earlier: &Self) -> (f64, f64) {
        let cores = machine_cores();
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return (0.0, 0.0);
        }
        let share = |ticks: u64| ticks as f64 / total as f64 * cores;
        (
            share(self.busy.saturating_sub(earlier.busy)),
            share(self.stolen.saturating_sub(earlier.stolen)),
        )
    }
}

fn machine_cores() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

/// Cores kept busy by the whole machine over `window`, before a run: what else is running.
pub async fn background_load(window: Duration) -> f64 {
    let before = MachineTicks::now();
    tokio::time::sleep(window).await;
    MachineTicks::now().cores_since(&before).0
}

/// The usual subjects besides the services: the broker, Redis and this program.
pub fn infrastructure() -> Vec<Subject> {
    let mut subjects = Vec::new();
    if let Some(pid) = pids_named("beam.smp").first() {
        subjects.push(Subject::process("rabbitmq", *pid));
    }
    if let Some(pid) = pids_named("redis-server").first() {
        subjects.push(Subject::process("redis", *pid));
    }
    subjects.push(Subject::OwnThreads {
        name: "emulator (in bench)".into(),
        emulator: true,
    });
    subjects.push(Subject::OwnThreads {
        name: "bench (load generator)".into(),
        emulator: false,
    });
    subjects
}

#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    ticks: u64,
    rss_kib: u64,
}

/// Footprint of a set of subjects: an idle sample, then a load window during which memory is
/// sampled every 100 ms.
#[derive(Debug)]
pub struct Footprint {
    subjects: Vec<Subject>,
    ticks_per_second: f64,
    idle: Vec<Sample>,
    started: Option<(Instant, Vec<Sample>, MachineTicks)>,
    peaks: Arc<Mutex<Vec<u64>>>,
    sampler: Option<JoinHandle<()>>,
}

impl Footprint {
    /// Takes the idle sample now.
    pub fn idle(subjects: Vec<Subject>) -> Self {
        let idle = subjects.iter().map(sample).collect();
        let peaks = Arc::new(Mutex::new(vec![0; subjects.len()]));
        Self {
            subjects,
            ticks_per_second: clock_ticks(),
            idle,
            started: None,
            peaks,
            sampler: None,
        }
    }

    /// Lets freshly started `services` settle (connections made, topology declared), then
    /// takes the idle sample of them and of the infrastructure.
    pub async fn settled(mut services: Vec<Subject>) -> Self {
        services.extend(infrastructure());
        tokio::time::sleep(Duration::from_secs(2)).await;
        Self::idle(services)
    }

    /// The load begins.
    pub fn start(&mut self) {
        let now: Vec<Sample> = self.subjects.iter().map(sample).collect();
        self.started = Some((Instant::now(), now, MachineTicks::now()));
        self.peaks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter_mut()
            .for_each(|p| *p = 0);
        let subjects = self.subjects.clone();
        let peaks = self.peaks.clone();
        self.sampler = Some(tokio::spawn(async move {
            loop {
                let rss: Vec<u64> = subjects.iter().map(|s| s.rss_kib().unwrap_or(0)).collect();
                {
                    let mut peaks = peaks.lock().unwrap_or_else(|e| e.into_inner());
                    for (peak, rss) in peaks.iter_mut().zip(rss) {
                        *peak = (*peak).max(rss);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }

    /// The load ended: CPU time and memory over the window.
    pub fn finish(&mut self) -> Measured {
        if let Some(sampler) = self.sampler.take() {
            sampler.abort();
        }
        let (started, at_start, machine_start) = self.started.take().unwrap_or_else(|| {
            (
                Instant::now(),
                self.subjects.iter().map(sample).collect(),
                MachineTicks::now(),
            )
        });
        let wall = started.elapsed().as_secs_f64();
        let end: Vec<Sample> = self.subjects.iter().map(sample).collect();
        let cores = machine_cores();
        let (machine_busy, machine_stolen) = MachineTicks::now().cores_since(&machine_start);
        let peaks = self.peaks.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let rows = self
            .subjects
            .iter()
            .enumerate()
            .map(|(i, subject)| {
                let cpu =
                    end[i].ticks.saturating_sub(at_start[i].ticks) as f64 / self.ticks_per_second;
                // The peak is sampled every 100 ms in the window (not VmHWM, which would
                // carry an earlier window's peak, or for the broker and Redis, anyone's).
                let memory = match subject {
                    Subject::Process { .. } => {
                        Some((self.idle[i].rss_kib, peaks[i].max(end[i].rss_kib)))
                    }
                    Subject::OwnThreads { .. } => None,
                };
                Row {
                    name: subject.name().to_owned(),
                    pid: match subject {
                        Subject::Process { pid, .. } => Some(*pid),
                        Subject::OwnThreads { .. } => None,
                    },
                    cpu,
                    memory,
                }
            })
            .collect();
        Measured {
            rows,
            wall,
            machine_busy,
            machine_stolen,
            cores,
        }
    }
}

/// One subject's figures over the window.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    pub pid: Option<u32>,
    /// CPU seconds over the window.
    pub cpu: f64,
    /// Idle and peak RSS, KiB.
    pub memory: Option<(u64, u64)>,
}

/// What a load window cost.
#[derive(Debug, Clone)]
pub struct Measured {
    pub rows: Vec<Row>,
    pub wall: f64,
    pub machine_busy: f64,
    /// Of `machine_busy`, the cores the hypervisor gave other guests: the noise of a shared host.
    pub machine_stolen: f64,
    pub cores: f64,
}

impl Measured {
    /// CPU seconds of the subject named `name`.
    pub fn cpu_of(&self, name: &str) -> f64 {
        self.rows
            .iter()
            .filter(|r| r.name == name)
            .map(|r| r.cpu)
            .sum()
    }

    /// A footprint table in its own section, CPU counted per 1,000 `unit` (`per` of them).
    pub fn report(&self, report: &mut Report, section: &str, per: usize, unit: &str) {
        report.section(section);
        report.text(&format!(
            "{:<24}{:>8}{:>12}{:>12}{:>9}{:>7}{:>17}",
            "process",
            "pid",
            "idle RSS",
            "peak RSS",
            "CPU s",
            "cores",
            format!("CPU s/1k {unit}")
        ));
        let mib = |k: u64| format!("{:.1} MiB", k as f64 / 1024.0);
        let mut rows = Vec::new();
        for row in &self.rows {
            let per_k = if per == 0 {
                0.0
            } else {
                row.cpu * 1000.0 / per as f64
            };
            report.text(&format!(
                "{:<24}{:>8}{:>12}{:>12}{:>9.2}{:>7.2}{:>17.3}",
                row.name,
                row.pid.map_or_else(|| "-".into(), |p| p.to_string()),
                row.memory.map_or_else(|| "-".into(), |(idle, _)| mib(idle)),
                row.memory.map_or_else(|| "-".into(), |(_, peak)| mib(peak)),
                row.cpu,
                row.cpu / self.wall,
                per_k
            ));
            report.number(
                &format!("{}CpuPer1000", row.name),
                &format!("{}: CPU s per 1,000 {unit}", row.name),
                round(per_k, 4),
                "s",
            );
            if let Some((idle, peak)) = row.memory {
                report.number(
                    &format!("{}IdleRss", row.name),
                    &format!("{}: idle RSS", row.name),
                    round(idle as f64 / 1024.0, 1),
                    "MiB",
                );
                report.number(
                    &format!("{}PeakRss", row.name),
                    &format!("{}: peak RSS", row.name),
                    round(peak as f64 / 1024.0, 1),
                    "MiB",
                );
            }
            rows.push(json!({
                "process": row.name,
                "pid": row.pid,
                "idleRssKib": row.memory.map(|(idle, _)| idle),
                "peakRssKib": row.memory.map(|(_, peak)| peak),
                "cpuSeconds": round(row.cpu, 3),
                "cores": round(row.cpu / self.wall, 3),
                "cpuSecondsPer1000": round(per_k, 4),
            }));
        }
        let listed: f64 = self.rows.iter().map(|r| r.cpu).sum();
        // Stolen time is nobody's here: no process's CPU time counts it.
        let others = ((self.machine_busy - self.machine_stolen) * self.wall - listed).max(0.0);
        report.text(&format!(
            "{:<24}{:>8}{:>12}{:>12}{:>9.2}{:>7.2}{:>17}",
            "everything else",
            "-",
            "-",
            "-",
            others,
            others / self.wall,
            "-"
        ));
        report.text(&format!(
            "machine: {:.2} of {:.0} cores busy over the {:.1} s window ({:.2} of them stolen by the hypervisor)",
            self.machine_busy, self.cores, self.wall, self.machine_stolen
        ));
        report.number(
            "machineStolenCores",
            "cores stolen by the hypervisor",
            round(self.machine_stolen, 2),
            "",
        );
        report.json(
            section,
            json!({
                "processes": rows,
                "machineBusyCores": round(self.machine_busy, 3),
                "machineStolenCores": round(self.machine_stolen, 3),
                "otherCpuSeconds": round(others, 3),
                "windowSeconds": round(self.wall, 3),
            }),
        );
    }
}

fn sample(subject: &Subject) -> Sample {
    Sample {
        ticks: subject.ticks(),
        rss_kib: subject.rss_kib().unwrap_or(0),
    }
}

pub fn round(value: f64, places: i32) -> f64 {
    let factor = 10f64.powi(places);
    (value * factor).round() / factor
}

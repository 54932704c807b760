//! One run's world: a fresh namespace, the emulator on a runtime of its own (so that its CPU
//! time can be told apart from the load generator's), the users it knows, their conversation
//! references in Redis, and the real service binaries as child processes. Everything is
//! stopped and the namespace deleted at the end, on success or failure.

use std::{
    collections::HashSet,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use futures_util::{StreamExt, TryStreamExt, stream};
use herald_emulator::{Emulator, EmulatorConfig, TeamsUser, TokenVariant};
use herald_shared::{
    config::{Namespace, RedisTarget},
    store::{
        ActivityEffect, ConversationKind, ConversationRef, ConversationStore, RecordedActivity,
        Redis,
    },
};
use serde_json::Value;
use time::OffsetDateTime;
use tokio::runtime::Runtime;

use crate::{cleanup::NamespaceCleanup, procs::EMULATOR_THREADS};

/// Settings every scenario shares.
#[derive(Debug, Clone)]
pub struct Common {
    /// `RUST_LOG` of the services.
    pub log_level: String,
    /// Where `herald-ingress` and `herald-dispatcher` are.
    pub bin_dir: PathBuf,
    pub json: bool,
}

impl Common {
    pub fn target_dir() -> PathBuf {
        std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let bench = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
                bench.parent().unwrap_or(&bench).join("target")
            })
    }

    pub fn default_bin_dir() -> PathBuf {
        Self::target_dir().join("release")
    }

    /// Where the services' logs go (overwritten by the next run of the same scenario).
    pub fn log_dir() -> PathBuf {
        Self::target_dir().join("bench")
    }
}

/// A service binary running as a child process.
#[derive(Debug)]
pub struct Service {
    pub name: String,
    pub pid: u32,
    /// `http://127.0.0.1:port` of `HERALD_HTTP_ADDR` (the ingress).
    pub http_url: String,
    /// `http://127.0.0.1:port` of `HERALD_ADMIN_ADDR`.
    pub admin_url: String,
    child: Child,
    log: PathBuf,
    /// Run under a profiler: slow to start and to stop.
    slow: bool,
}

impl Drop for Service {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Service {
    /// The service's metrics, as `name{labels}` → value (summed over the series that match
    /// when `labels` is empty).
    pub async fn metric(&self, http: &reqwest::Client, name: &str, labels: &str) -> f64 {
        let Ok(response) = http.get(format!("{}/metrics", self.admin_url)).send().await else {
            return 0.0;
        };
        let text = response.text().await.unwrap_or_default();
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (series_name, series_labels) = match series.split_once('{') {
                    Some((n, l)) => (n, l.trim_end_matches('}')),
                    None => (series, ""),
                };
                (series_name == name && series_labels.contains(labels))
                    .then(|| value.parse::<f64>().ok())
                    .flatten()
            })
            .sum()
    }
}

/// A user as the bench uses it: who, and their personal conversation with the bot.
#[derive(Debug, Clone)]
pub struct BenchUser {
    pub user: TeamsUser,
    pub conversation_id: String,
}

/// `tenants` × `per_tenant` users with ids that are the same on every run (the namespace and
/// the emulator are fresh each time, so nothing collides).
pub fn population(tenants: usize, per_tenant: usize, tenant_offset: usize) -> Vec<TeamsUser> {
    let mut users = Vec::with_capacity(tenants * per_tenant);
    for t in tenant_offset..tenant_offset + tenants {
        let tenant = format!("7e7a0000-0000-4000-8000-{t:012x}");
        for u in 0..per_tenant {
            users.push(TeamsUser::new(
                tenant.clone(),
                format!("a0000000-{:04x}-4000-8000-{u:012x}", t % 0x10000),
                format!("User {t}.{u}"),
            ));
        }
    }
    users
}

#[derive(Debug)]
pub struct Bench {
    pub namespace: String,
    pub emulator: Emulator,
    pub conversations: ConversationStore,
    pub http: reqwest::Client,
    common: Common,
    scenario: String,
    services: Vec<Service>,
    emulator_runtime: Option<Runtime>,
    _cleanup: NamespaceCleanup,
}

impl Drop for Bench {
    fn drop(&mut self) {
        // Services first (they would re-declare the topology), then the namespace (the guard,
        // dropped after this), and the emulator's runtime without waiting for its tasks.
        for service in &mut self.services {
            if matches!(service.child.try_wait(), Ok(None)) {
                let _ = service.child.kill();
                let _ = service.child.wait();
            }
        }
        if let Some(runtime) = self.emulator_runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Bench {
    /// A fresh namespace and an emulator (rate limits as given) whose bot endpoint answers 200
    /// to everything: the bench registers users with it, and the services never hear of it.
    pub async fn start(scenario: &str, common: &Common, rate_limits: bool) -> anyhow::Result<Self> {
        let config = EmulatorConfig {
            rate_limits,
            ..EmulatorConfig::default()
        };
        Self::start_with(scenario, common, config).await
    }

    /// The same, with the emulator configured as given (e.g. a raised tenant limit).
    pub async fn start_with(
        scenario: &str,
        common: &Common,
        config: EmulatorConfig,
    ) -> anyhow::Result<Self> {
        for binary in ["herald-ingress", "herald-dispatcher"] {
            let path = common.bin_dir.join(binary);
            if !path.exists() {
                bail!(
                    "{} is missing: build the services with `cargo build --release --bins`",
                    path.display()
                );
            }
        }
        let namespace = format!("bench-{scenario}-{:08x}", rand::random::<u32>());
        let cleanup = NamespaceCleanup::new(&namespace);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(EMULATOR_THREADS)
            .enable_all()
            .build()
            .context("building the emulator's runtime")?;
        let emulator = runtime
            .spawn(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                let emulator = Emulator::start(config, listener).await?;
                let sink = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                let sink_url = format!("http://{}/api/messages", sink.local_addr()?);
                let app = axum::Router::new().fallback(|| async { "" });
                tokio::spawn(async move {
                    let _ = axum::serve(sink, app).await;
                });
                emulator.set_bot_endpoint(&sink_url);
                anyhow::Ok(emulator)
            })
            .await
            .context("the emulator's runtime")??;
        let redis = Redis::new(
            &herald_tests::redis_url()
                .parse::<RedisTarget>()
                .map_err(|e| anyhow::anyhow!("{e}"))?,
            namespace
                .parse::<Namespace>()
                .map_err(|e| anyhow::anyhow!(e))?,
        )?;
        eprintln!("namespace {namespace}; emulator at {}", emulator.base_url());
        Ok(Self {
            namespace,
            emulator,
            conversations: ConversationStore::new(redis),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(1024)
                .build()?,
            common: common.clone(),
            scenario: scenario.to_owned(),
            services: Vec::new(),
            emulator_runtime: Some(runtime),
            _cleanup: cleanup,
        })
    }

    /// Makes the users known to "Teams" (an install activity for each, which puts the bot in
    /// their personal chat) and stores their conversation references in Redis as the ingress
    /// would for that activity. Returns them with their conversation ids.
    pub async fn install(&self, users: &[TeamsUser]) -> anyhow::Result<Vec<BenchUser>> {
        let started = Instant::now();
        let emulator = &self.emulator;
        let conversations = &self.conversations;
        let installed: Vec<BenchUser> = stream::iter(users.iter().cloned())
            .map(|user| async move {
                let activity = emulator.install_activity(&user);
                let (status, _) = emulator
                    .post_activity(&activity, TokenVariant::NoAuthorization)
                    .await?;
                anyhow::ensure!(status == 200, "the bench's bot endpoint answered {status}");
                let recorded = RecordedActivity {
                    reference: reference_of(&activity)?,
                    effect: ActivityEffect::Install,
                };
                conversations.record(&recorded).await?;
                Ok(BenchUser {
                    conversation_id: recorded.reference.conversation_id,
                    user,
                })
            })
            .buffered(128)
            .try_collect()
            .await?;
        eprintln!(
            "{} users installed in the emulator and stored in Redis in {:.1} s",
            installed.len(),
            started.elapsed().as_secs_f64()
        );
        Ok(installed)
    }

    /// The services' environment: the test stack's (pointed at this emulator and namespace)
    /// without its test-only shortcuts, so that every default is production's.
    fn service_env(&self) -> Vec<(String, String)> {
        const TEST_ONLY: [&str; 6] = [
            "HERALD_RETRY_SCHEDULE",
            "HERALD_SEND_LEASE",
            "HERALD_SEND_TIMEOUT",
            "HERALD_SHUTDOWN_GRACE",
            "HERALD_PREFETCH",
            "HERALD_LOG_FORMAT",
        ];
        let env = herald_tests::service_env(&self.namespace, &self.emulator);
        let mut vars: Vec<(String, String)> = env
            .vars()
            .filter(|(k, _)| !TEST_ONLY.contains(k))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        vars.push(("HERALD_LOG_FORMAT".into(), "json".into()));
        vars.push(("RUST_LOG".into(), self.common.log_level.clone()));
        vars.sort();
        vars
    }

    /// Starts `binary` (`herald-ingress` or `herald-dispatcher`) with extra settings and waits
    /// until it reports ready.
    pub async fn start_service(
        &mut self,
        binary: &str,
        name: &str,
        extra: &[(&str, String)],
    ) -> anyhow::Result<&Service> {
        self.start_wrapped(binary, name, extra, &[]).await
    }

    /// The same, run under `wrapper` (e.g. `valgrind --tool=callgrind`), which is given more
    /// time to start and stop.
    pub async fn start_wrapped(
        &mut self,
        binary: &str,
        name: &str,
        extra: &[(&str, String)],
        wrapper: &[String],
    ) -> anyhow::Result<&Service> {
        let admin_port = free_port()?;
        let http_port = free_port()?;
        let mut env = self.service_env();
        env.push((
            "HERALD_ADMIN_ADDR".into(),
            format!("127.0.0.1:{admin_port}"),
        ));
        env.push(("HERALD_HTTP_ADDR".into(), format!("127.0.0.1:{http_port}")));
        for (key, value) in extra {
            env.retain(|(k, _)| k != key);
            env.push(((*key).to_owned(), value.clone()));
        }
        std::fs::create_dir_all(Common::log_dir())?;
        let log = Common::log_dir().join(format!("{}-{name}.log", self.scenario));
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let path = self.common.bin_dir.join(binary);
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(&path);
                command
            }
            None => Command::new(&path),
        };
        let child = command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            // The allocator's own options (MIMALLOC_PURGE_DELAY and the like), for experiments.
            .envs(std::env::vars().filter(|(key, _)| key.starts_with("MIMALLOC_")))
            .envs(env)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {binary}"))?;
        let mut service = Service {
            name: name.to_owned(),
            pid: child.id(),
            http_url: format!("http://127.0.0.1:{http_port}"),
            admin_url: format!("http://127.0.0.1:{admin_port}"),
            child,
            log,
            slow: !wrapper.is_empty(),
        };
        let ready = format!("http://127.0.0.1:{admin_port}/readyz");
        let patience = Duration::from_secs(if service.slow { 300 } else { 30 });
        let deadline = Instant::now() + patience;
        loop {
            if let Ok(Some(status)) = service.child.try_wait() {
                bail!(
                    "{name} exited ({status}) before it was ready; see {}",
                    service.log.display()
                );
            }
            let ok = self
                .http
                .get(&ready)
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} was not ready within {patience:?}; see {}",
                    service.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!(
            "{name} ready (pid {}), log {}",
            service.pid,
            service.log.display()
        );
        self.services.push(service);
        Ok(self.services.last().expect("just pushed"))
    }

    pub fn services(&self) -> &[Service] {
        &self.services
    }

    /// SIGTERM to every service, and a wait for each to exit (SIGKILL after 30 s, or 300 s
    /// under a profiler).
    pub async fn stop_services(&mut self) {
        for service in &self.services {
            let _ = Command::new("kill")
                .args(["-TERM", &service.pid.to_string()])
                .status();
        }
        for service in &mut self.services {
            let patience = Duration::from_secs(if service.slow { 300 } else { 30 });
            let deadline = Instant::now() + patience;
            while matches!(service.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if matches!(service.child.try_wait(), Ok(None)) {
                let _ = service.child.kill();
                let _ = service.child.wait();
            }
        }
        self.services.clear();
    }

    /// Stops everything and deletes the namespace.
    pub async fn finish(mut self) -> anyhow::Result<()> {
        self.stop_services().await;
        drop(self);
        Ok(())
    }

    /// Waits until the emulator has accepted `expected` sends in all; fails after `within`.
    pub async fn wait_for_sends(&self, expected: usize, within: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut reported = Instant::now();
        loop {
            let stats = self.emulator.stats();
            if stats.sends >= expected {
                return Ok(());
            }
            if started.elapsed() > within {
                bail!(
                    "only {} of {expected} sends arrived within {within:?} (emulator: {} requests, {} throttled)",
                    stats.sends,
                    stats.requests,
                    stats.throttled
                );
            }
            if reported.elapsed() > Duration::from_secs(5) {
                eprintln!(
                    "  … {} of {expected} received ({:.0} s)",
                    stats.sends,
                    started.elapsed().as_secs_f64()
                );
                reported = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Every activity received in these users' conversations: (text, received at).
    pub fn received(&self, users: &[BenchUser]) -> Vec<(String, OffsetDateTime)> {
        let mut seen: HashSet<&str> = HashSet::new();
        let mut out = Vec::new();
        for user in users {
            if !seen.insert(&user.conversation_id) {
                continue;
            }
            for activity in self.emulator.activities(&user.conversation_id) {
                out.push((activity.text.unwrap_or_default(), activity.received_at));
            }
        }
        out
    }
}

/// The reference the ingress stores for a personal-chat activity (`ingress/src/bot/activity.rs`).
fn reference_of(activity: &Value) -> anyhow::Result<ConversationRef> {
    let text = |path: &str| {
        activity
            .pointer(path)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    Ok(ConversationRef {
        conversation_id: text("/conversation/id").context("no conversation id")?,
        conversation_type: text("/conversation/conversationType").map(ConversationKind::from),
        service_url: text("/serviceUrl").context("no serviceUrl")?,
        tenant_id: text("/conversation/tenantId"),
        user_aad_object_id: text("/from/aadObjectId"),
        user_id: text("/from/id"),
        bot_id: text("/recipient/id"),
        team_id: None,
        channel_id: None,
        last_seen: OffsetDateTime::now_utc(),
        removed_reason: None,
    })
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

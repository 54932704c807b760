//! Support for Herald's end-to-end tests: a whole stack (the emulator as Teams, the ingress and
//! the dispatcher) started in-process on port-0 listeners against the real Redis and RabbitMQ,
//! each test in its own namespace, cleaned up afterwards (even when the test panics).

pub mod events;
pub mod proxy;
pub mod rabbit_cluster;
pub mod replica;

use std::{
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use herald_dispatcher::Dispatcher;
use herald_emulator::{Emulator, EmulatorConfig, ReceivedActivity};
use herald_ingress::Ingress;
use herald_shared::{
    amqp::Topology,
    config::{DispatcherConfig, Env, IngressConfig, Namespace, RedisTarget},
    store::{ConversationStore, Redis, StatusRecord, StatusStore},
};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
/// The `/v1` key test stacks accept.
pub const API_KEY: &str = "test-api-key";
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Logs to the test output when `RUST_LOG` is set (`RUST_LOG=info cargo test -- --nocapture`),
/// and traces in-process.
pub fn init_logging() {
    // The tracer is installed even with logging off, so trace context propagates in-process
    // as it does in the binaries; nothing is exported. One tracer serves the whole process.
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "off".into());
        let telemetry = herald_shared::telemetry::init(
            "herald-tests",
            herald_shared::config::LogFormat::Pretty,
            &filter,
            &herald_shared::config::TraceExport::Off,
        )
        .expect("a tracer with no exporter always builds");
        std::mem::forget(telemetry);
    });
}

/// A fresh namespace: every test has its own queues and keys.
pub fn fresh_namespace() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// How a test wants its stack.
#[derive(Debug, Clone)]
pub struct StackOptions {
    pub reminder_delay: Duration,
    pub start_dispatcher: bool,
    pub rate_limits: bool,
    /// Lifetime of the emulator's bot tokens.
    pub token_lifetime: Duration,
    /// Extra or overriding service configuration.
    pub env: Vec<(String, String)>,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            reminder_delay: Duration::from_secs(2),
            start_dispatcher: true,
            rate_limits: true,
            token_lifetime: Duration::from_secs(3599),
            env: Vec::new(),
        }
    }
}

impl StackOptions {
    /// A stack that sends as fast as it can: no rate limits in "Teams" or in Herald, and
    /// install reminders out of the way.
    pub fn unlimited() -> Self {
        Self {
            rate_limits: false,
            reminder_delay: Duration::from_secs(3600),
            ..Default::default()
        }
        .with_env("HERALD_TENANT_RATE", "off")
        .with_env("HERALD_CONVERSATION_RATES", "off")
    }

    pub fn with_env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }
}

/// A running stack for one test.
#[derive(Debug)]
pub struct TestStack {
    pub namespace: String,
    pub emulator: Emulator,
    pub ingress_url: String,
    pub ingress_admin_url: String,
    pub dispatcher_admin_url: Option<String>,
    pub statuses: StatusStore,
    pub conversations: ConversationStore,
    pub http: reqwest::Client,
    env: Env,
    stop: CancellationToken,
    services: Vec<JoinHandle<std::io::Result<()>>>,
    _cleanup: NamespaceGuard,
}

impl TestStack {
    pub async fn start() -> Self {
        Self::start_with(StackOptions::default()).await
    }

    pub async fn start_with(options: StackOptions) -> Self {
        init_logging();
        let namespace = fresh_namespace();
        let emulator = Emulator::start(
            EmulatorConfig {
                rate_limits: options.rate_limits,
                token_lifetime: options.token_lifetime,
                ..EmulatorConfig::default()
            },
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
        )
        .await
        .expect("the emulator starts");
        let mut env = service_env(&namespace, &emulator);
        env.set(
            "HERALD_REMINDER_DELAY",
            humantime_secs(options.reminder_delay),
        );
        for (key, value) in &options.env {
            env.set(key.clone(), value.clone());
        }
        // The test reads the same Redis the services use (a test may point them elsewhere).
        let target: RedisTarget = env.get("HERALD_REDIS_URL").unwrap().parse().unwrap();
        let redis = Redis::new(&target, namespace.parse::<Namespace>().unwrap()).unwrap();
        let mut stack = Self {
            statuses: StatusStore::new(redis.clone(), Duration::from_secs(3600)),
            conversations: ConversationStore::new(redis),
            _cleanup: NamespaceGuard::new(&namespace),
            namespace,
            emulator,
            ingress_url: String::new(),
            ingress_admin_url: String::new(),
            dispatcher_admin_url: None,
            http: reqwest::Client::new(),
            env,
            stop: CancellationToken::new(),
            services: Vec::new(),
        };
        stack.start_ingress().await;
        stack
            .emulator
            .set_bot_endpoint(&format!("{}/api/messages", stack.ingress_url));
        if options.start_dispatcher {
            stack.start_dispatcher().await;
        }
        stack
    }

    /// The configuration the services of this stack run with (for starting more of them, or
    /// the real binaries).
    pub fn env(&self) -> Env {
        self.env.clone()
    }

    async fn start_ingress(&mut self) {
        let config = IngressConfig::from_env(&self.env).expect("the test configuration is valid");
        let (http, admin) = (listener().await, listener().await);
        let ingress = Ingress::build(config, http, admin).expect("the ingress builds");
        self.ingress_url = format!("http://{}", ingress.http_addr());
        self.ingress_admin_url = format!("http://{}", ingress.admin_addr());
        let stop = self.stop.clone();
        self.services.push(tokio::spawn(
            ingress.run(async move { stop.cancelled().await }),
        ));
        let ready = format!("{}/readyz", self.ingress_admin_url);
        wait_until("the ingress to be ready", Duration::from_secs(30), || {
            is_ok(&self.http, &ready)
        })
        .await;
    }

    pub async fn start_dispatcher(&mut self) {
        let config =
            DispatcherConfig::from_env(&self.env).expect("the test configuration is valid");
        let dispatcher =
            Dispatcher::build(config, listener().await).expect("the dispatcher builds");
        let admin = format!("http://{}", dispatcher.admin_addr());
        let stop = self.stop.clone();
        self.services.push(tokio::spawn(
            dispatcher.run(async move { stop.cancelled().await }),
        ));
        let ready = format!("{admin}/readyz");
        wait_until(
            "the dispatcher to be ready",
            Duration::from_secs(30),
            || is_ok(&self.http, &ready),
        )
        .await;
        self.dispatcher_admin_url = Some(admin);
    }

    /// A `/v1` client with the stack's API key.
    pub fn api(&self) -> ApiClient {
        ApiClient {
            http: self.http.clone(),
            base: format!("{}/v1", self.ingress_url),
            key: Some(API_KEY.to_owned()),
        }
    }

    pub async fn status(&self, job_id: &str) -> Option<StatusRecord> {
        self.statuses.get(job_id).await.expect("redis answers")
    }

    /// A new user who installed the app, once the welcome has arrived (so that nothing of the
    /// install is still in flight); returns the user and their personal conversation id.
    pub async fn installed_user(&self) -> (herald_emulator::TeamsUser, String) {
        let user = herald_emulator::TeamsUser::random();
        let conversation = self.install(&user).await;
        (user, conversation)
    }

    /// Installs the app for `user` and waits for the welcome; returns the conversation id.
    pub async fn install(&self, user: &herald_emulator::TeamsUser) -> String {
        self.emulator
            .install(user)
            .await
            .expect("the install activities are posted");
        let conversation = self.emulator.personal_conversation_id(user);
        self.wait_for_activities(&conversation, 1, Duration::from_secs(20))
            .await;
        conversation
    }

    /// Waits until every job's status is `delivered`.
    pub async fn wait_all_delivered(&self, jobs: &[herald_shared::job::Job], within: Duration) {
        wait_until("every job to be delivered", within, || async {
            for job in jobs {
                let status = self.status(&job.id).await;
                if status.is_none_or(|s| s.status != herald_shared::store::JobStatus::Delivered) {
                    return false;
                }
            }
            true
        })
        .await;
    }

    /// Waits until the conversation has received at least `count` activities from the bot.
    pub async fn wait_for_activities(
        &self,
        conversation_id: &str,
        count: usize,
        within: Duration,
    ) -> Vec<ReceivedActivity> {
        let what = format!("{count} activities in {conversation_id}");
        wait_until(&what, within, || async {
            self.emulator.activities(conversation_id).len() >= count
        })
        .await;
        self.emulator.activities(conversation_id)
    }

    /// Stops the services and waits for them.
    pub async fn stop(mut self) {
        self.stop.cancel();
        for service in self.services.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(30), service).await;
        }
    }
}

impl Drop for TestStack {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A TCP port free on 127.0.0.1 now (for a process the test starts to listen on).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Calls `/v1` as another service would; every answer is (status, JSON body).
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    pub key: Option<String>,
}

impl ApiClient {
    /// The same client, for the ingress at `ingress_url` (a replica of the test's own).
    pub fn at(mut self, ingress_url: &str) -> Self {
        self.base = format!("{ingress_url}/v1");
        self
    }

    pub fn without_key(mut self) -> Self {
        self.key = None;
        self
    }

    pub fn with_key(mut self, key: &str) -> Self {
        self.key = Some(key.to_owned());
        self
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
        let request = match &self.key {
            Some(key) => request.bearer_auth(key),
            None => request,
        };
        let response = request.send().await.expect("the ingress answers");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap_or_default().to_owned());
        let text = response.text().await.unwrap_or_default();
        if status >= 400 {
            assert_eq!(
                content_type.as_deref(),
                Some("application/problem+json"),
                "{status}: {text}"
            );
        }
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    pub async fn create(
        &self,
        body: &serde_json::Value,
        idempotency_key: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let mut request = self
            .http
            .post(format!("{}/notifications", self.base))
            .json(body);
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        self.send(request).await
    }

    /// Any call under `/v1` (`path` without the prefix), with a JSON body or none.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(body);
        }
        self.send(request).await
    }

    /// Posts a raw body (for malformed-input tests).
    pub async fn create_raw(&self, body: impl Into<reqwest::Body>) -> (u16, serde_json::Value) {
        let request = self
            .http
            .post(format!("{}/notifications", self.base))
            .header("content-type", "application/json")
            .body(body);
        self.send(request).await
    }

    pub async fn get(&self, id: &str) -> (u16, serde_json::Value) {
        self.send(self.http.get(format!("{}/notifications/{id}", self.base)))
            .await
    }

    pub async fn delete(&self, id: &str) -> (u16, serde_json::Value) {
        self.send(
            self.http
                .delete(format!("{}/notifications/{id}", self.base)),
        )
        .await
    }

    pub async fn patch(&self, id: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        self.send(
            self.http
                .patch(format!("{}/notifications/{id}", self.base))
                .json(body),
        )
        .await
    }

    pub async fn get_user(&self, tenant_id: &str, aad_object_id: &str) -> (u16, serde_json::Value) {
        self.send(
            self.http
                .get(format!("{}/users/{tenant_id}/{aad_object_id}", self.base)),
        )
        .await
    }

    pub async fn patch_user(
        &self,
        tenant_id: &str,
        aad_object_id: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.send(
            self.http
                .patch(format!("{}/users/{tenant_id}/{aad_object_id}", self.base))
                .json(body),
        )
        .await
    }

    /// Waits until the job's status is `status`; returns its record.
    pub async fn wait_for_status(&self, id: &str, status: &str) -> serde_json::Value {
        let what = format!("job {id} to be {status}");
        wait_until(&what, Duration::from_secs(20), || async {
            self.get(id).await.1["status"] == status
        })
        .await;
        self.get(id).await.1
    }
}

/// The configuration of services pointed at `emulator` in `namespace`.
pub fn service_env(namespace: &str, emulator: &Emulator) -> Env {
    let config = EmulatorConfig::default();
    Env::from_pairs([
        ("HERALD_NAMESPACE", namespace.to_owned()),
        ("HERALD_REDIS_URL", redis_url()),
        ("HERALD_AMQP_URL", amqp_url()),
        ("HERALD_APP_ID", config.app_id.clone()),
        ("HERALD_APP_PASSWORD", config.app_password.clone()),
        ("HERALD_TOKEN_URL", emulator.token_url()),
        ("HERALD_OPENID_METADATA_URL", emulator.openid_metadata_url()),
        ("HERALD_DEFAULT_SERVICE_URL", emulator.default_service_url()),
        // The emulator's Graph stand-in; its origin is the Graph allowlist.
        ("HERALD_GRAPH_URL", emulator.graph_url()),
        (
            "HERALD_GRAPH_TOKEN_URL",
            emulator.tenant_token_url("{tenantId}"),
        ),
        ("HERALD_TEAMS_APP_ID", emulator.teams_app_id()),
        (
            "HERALD_SERVICE_URL_ALLOWLIST",
            "http://127.0.0.1:*".to_owned(),
        ),
        ("HERALD_LOG_FORMAT", "pretty".to_owned()),
        ("HERALD_RETRY_SCHEDULE", "200ms,500ms,1s".to_owned()),
        ("HERALD_SEND_LEASE", "3s".to_owned()),
        ("HERALD_SEND_TIMEOUT", "2s".to_owned()),
        ("HERALD_SHUTDOWN_GRACE", "5s".to_owned()),
        ("HERALD_PREFETCH", "32".to_owned()),
        ("HERALD_API_KEYS", format!("other-key,{API_KEY}")),
    ])
}

pub fn redis_url() -> String {
    std::env::var("HERALD_TEST_REDIS_URL").unwrap_or_else(|_| REDIS_URL.to_owned())
}

pub fn amqp_url() -> String {
    std::env::var("HERALD_TEST_AMQP_URL").unwrap_or_else(|_| AMQP_URL.to_owned())
}

fn humantime_secs(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

pub async fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port-0 listener binds")
}

async fn is_ok(http: &reqwest::Client, url: &str) -> bool {
    matches!(http.get(url).send().await, Ok(r) if r.status().is_success())
}

/// Polls `condition` until it holds, failing the test with `what` after `within`.
pub async fn wait_until<F, Fut>(what: &str, within: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if condition().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls for up to `within` that `condition` never holds (for "nothing happened" checks that
/// must give the system a fair chance to misbehave).
pub async fn holds_for<F, Fut>(within: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if !condition().await {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    true
}

/// The most of these times in any window of `window` (sends in Teams' sliding windows).
pub fn busiest(times: &[time::OffsetDateTime], window: Duration) -> usize {
    let mut times = times.to_vec();
    times.sort();
    let window = time::Duration::try_from(window).expect("a window fits time's range");
    (0..times.len())
        .map(|i| {
            times[i..]
                .iter()
                .take_while(|t| **t - times[i] < window)
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// The longest silence after `since` among these times: from `since` to the first of them
/// after it, or between two of them (how long a failure at `since` held sending up; sends in
/// flight at that moment still land, so the first gap alone would say too little).
pub fn longest_pause(
    since: time::OffsetDateTime,
    times: &[time::OffsetDateTime],
) -> time::Duration {
    let mut after: Vec<_> = times.iter().copied().filter(|t| *t >= since).collect();
    after.sort();
    std::iter::once(since)
        .chain(after.iter().copied())
        .zip(after.iter().copied())
        .map(|(a, b)| b - a)
        .max()
        .unwrap_or(time::Duration::ZERO)
}

/// A Herald binary as a process of its own, with the configuration `env` (and nothing from
/// this process's environment), killed when dropped; its logs reach the test's output when
/// `RUST_LOG` is set.
pub fn service_command(name: &str, env: &Env) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(binary(name));
    command
        .env_clear()
        .envs(env.vars())
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or("warn".into()),
        )
        .stdout(std::process::Stdio::null())
        .stderr(if std::env::var_os("RUST_LOG").is_some() {
            std::process::Stdio::inherit()
        } else {
            std::process::Stdio::null()
        })
        .kill_on_drop(true);
    command
}

/// A fixture payload from `tests/fixtures/`.
pub fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// A built binary of the workspace (the README's test command builds them first).
pub fn binary(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
        });
    let path = target.join("debug").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// The repository's root.
pub fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Python with the example's client installed (`scripts/test` makes it), else `python3`.
pub fn python() -> PathBuf {
    let venv = repository()
        .join("target")
        .join("python")
        .join("bin")
        .join("python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// Deletes a namespace's queues, exchanges and Redis keys when dropped, panicking test or not.
#[derive(Debug)]
pub struct NamespaceGuard {
    namespace: String,
}

impl NamespaceGuard {
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
        }
    }
}

impl Drop for NamespaceGuard {
    fn drop(&mut self) {
        let namespace = self.namespace.clone();
        // A runtime of its own: Drop may run inside, or outside, the test's runtime.
        let cleaned = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(delete_namespace(&namespace))
        })
        .join();
        if let Ok(Err(error)) = cleaned {
            eprintln!(
                "cleaning up namespace {}: {}",
                self.namespace,
                herald_shared::error::Chain(error.as_ref())
            );
        }
    }
}

/// A `redis-server` of the test's own on `port` (loopback, no snapshots), with `extra`
/// arguments, once it accepts connections. The caller stops it (kill, then wait).
pub fn redis_server(
    port: u16,
    extra: &[&str],
    dir: Option<&std::path::Path>,
) -> std::process::Child {
    let mut command = std::process::Command::new("redis-server");
    command
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(extra)
        .stdout(std::process::Stdio::null());
    if let Some(dir) = dir {
        command.arg("--dir").arg(dir);
    }
    let child = command.spawn().expect("redis-server starts");
    wait_for_port(port);
    child
}

/// Waits (up to 5 s) until something accepts connections on the loopback `port`.
pub fn wait_for_port(port: u16) {
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on {port}");
}

/// A broker link of the test's own to `nodes` (one URL or a comma-separated list) for
/// `namespace`, once it is up; it stops with `stop`.
pub async fn broker_link(
    nodes: &str,
    namespace: &str,
    stop: &CancellationToken,
) -> herald_shared::amqp::Broker {
    let nodes: herald_shared::config::AmqpNodes = nodes.parse().unwrap();
    let broker = herald_shared::amqp::Broker::start(
        &nodes,
        Topology::new(namespace.parse::<Namespace>().unwrap()),
        "herald-tests",
        stop.clone(),
        &tokio_util::task::TaskTracker::new(),
    )
    .unwrap();
    wait_until("the broker link", Duration::from_secs(20), || async {
        broker.is_ready()
    })
    .await;
    broker
}

/// The ready messages and consumers of `queue` on this machine's RabbitMQ (for failure
/// reports).
pub async fn queue_depth_of(queue: &str) -> anyhow::Result<herald_shared::amqp::QueueDepth> {
    let connection =
        lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let depth = herald_shared::amqp::queue_depth(&channel, queue).await?;
    let _ = connection.close(200, "done".into()).await;
    Ok(depth)
}

pub async fn delete_namespace(namespace: &str) -> anyhow::Result<()> {
    let topology = Topology::new(namespace.parse::<Namespace>().map_err(anyhow::Error::msg)?);
    let connection =
        lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    for queue in topology.all_queues() {
        channel
            .queue_delete(
                queue.as_str().into(),
                lapin::options::QueueDeleteOptions::default(),
            )
            .await?;
    }
    for exchange in topology.all_exchanges() {
        channel
            .exchange_delete(
                exchange.as_str().into(),
                lapin::options::ExchangeDeleteOptions::default(),
            )
            .await?;
    }
    let _ = connection.close(200, "done".into()).await;
    let client = redis::Client::open(redis_url())?;
    let mut redis = client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{namespace}:*"))
        .query_async(&mut redis)
        .await?;
    if !keys.is_empty() {
        redis::cmd("DEL")
            .arg(keys)
            .query_async::<()>(&mut redis)
            .await?;
    }
    Ok(())
}

/// Sends a raw job body to `{ns}.jobs` the way another service would (confirmed, persistent).
pub async fn publish_raw(namespace: &str, message_id: &str, body: &[u8]) -> anyhow::Result<()> {
    publish_raw_many(namespace, &[(message_id.to_owned(), body.to_vec())]).await
}

/// Like [`publish_raw`] for many bodies over one connection, confirms pipelined.
pub async fn publish_raw_many(
    namespace: &str,
    messages: &[(String, Vec<u8>)],
) -> anyhow::Result<()> {
    publish_typed(namespace, messages, None).await
}

/// Publishes with an AMQP `type` property (the contract's version), or none.
pub async fn publish_typed(
    namespace: &str,
    messages: &[(String, Vec<u8>)],
    kind: Option<&str>,
) -> anyhow::Result<()> {
    publish_to(&amqp_url(), namespace, messages, kind).await
}

/// [`publish_typed`] through the RabbitMQ node at `node_url` (a node of a test's own cluster).
pub async fn publish_to(
    node_url: &str,
    namespace: &str,
    messages: &[(String, Vec<u8>)],
    kind: Option<&str>,
) -> anyhow::Result<()> {
    publish_routed(node_url, namespace, "notification", messages, kind).await
}

/// A broadcast as another service publishes it: routing key `broadcast`, type `broadcast.v1`.
pub async fn publish_broadcast(namespace: &str, id: &str, body: &[u8]) -> anyhow::Result<()> {
    let messages = [(id.to_owned(), body.to_vec())];
    publish_routed(
        &amqp_url(),
        namespace,
        "broadcast",
        &messages,
        Some("broadcast.v1"),
    )
    .await
}

async fn publish_routed(
    node_url: &str,
    namespace: &str,
    routing_key: &str,
    messages: &[(String, Vec<u8>)],
    kind: Option<&str>,
) -> anyhow::Result<()> {
    let topology = Topology::new(namespace.parse::<Namespace>().map_err(anyhow::Error::msg)?);
    let connection =
        lapin::Connection::connect(node_url, lapin::ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await?;
    let mut pending = Vec::new();
    for (message_id, body) in messages {
        let mut properties = lapin::BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(message_id.as_str().into());
        if let Some(kind) = kind {
            properties = properties.with_type(kind.into());
        }
        let confirm = channel
            .basic_publish(
                topology.jobs_exchange().as_str().into(),
                routing_key.into(),
                lapin::options::BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                properties,
            )
            .await?;
        pending.push(confirm);
    }
    for confirm in pending {
        let confirmation = confirm.await?;
        anyhow::ensure!(
            matches!(confirmation, lapin::Confirmation::Ack(None)),
            "not confirmed: {confirmation:?}"
        );
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

/// A job with `text` for the user, due now.
pub fn job_for(user: &herald_emulator::TeamsUser, text: &str) -> herald_shared::job::Job {
    use herald_shared::job::{Job, Message, Target, UserTarget};
    Job::new(
        uuid::Uuid::new_v4().into(),
        Target::User(UserTarget {
            tenant_id: user.tenant_id.clone(),
            aad_object_id: user.aad_object_id.clone(),
        }),
        Message::text(text),
        None,
        None,
    )
    .expect("a job for an emulated user is valid")
}

/// Publishes jobs the way another service would.
pub async fn publish_jobs(namespace: &str, jobs: &[&herald_shared::job::Job]) {
    let bodies: Vec<(String, Vec<u8>)> = jobs
        .iter()
        .map(|j| (j.id.to_string(), serde_json::to_vec(j).unwrap()))
        .collect();
    publish_raw_many(namespace, &bodies)
        .await
        .expect("the jobs are published");
}

/// The address of a socket nobody listens on (for "the dependency is down" tests).
pub async fn closed_port() -> SocketAddr {
    let listener = listener().await;
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

//! Configuration from the environment (DESIGN.md "Configuration"), validated once at start.
//!
//! Every service builds its own config from an [`Env`] (the process environment in the
//! binaries, a map in tests). A missing or malformed value is a [`ConfigError`] naming the
//! variable; the binaries print it on one line and exit non-zero. `Debug` output is safe to
//! log: passwords in URLs and secrets are redacted.

use std::{collections::HashMap, fmt, net::SocketAddr, str::FromStr, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::{allowlist::ServiceUrlAllowlist, cloud::Cloud};

/// A source of configuration variables. Empty values count as unset.
#[derive(Debug, Clone, Default)]
pub struct Env(HashMap<String, String>);

impl Env {
    pub fn from_process() -> Self {
        Self(std::env::vars().collect())
    }

    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.0.insert(key.into(), value.into());
        self
    }

    /// Every variable, for handing the same configuration to a child process.
    pub fn vars(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    fn required(&self, key: &'static str) -> Result<&str, ConfigError> {
        self.get(key)
            .ok_or_else(|| ConfigError::new(key, "is required but not set"))
    }

    fn parse_or<T: FromStr>(&self, key: &'static str, default: T) -> Result<T, ConfigError>
    where
        T::Err: fmt::Display,
    {
        match self.get(key) {
            None => Ok(default),
            Some(raw) => raw
                .parse()
                .map_err(|e| ConfigError::new(key, format!("{raw:?}: {e}"))),
        }
    }

    fn duration_or(&self, key: &'static str, default: Duration) -> Result<Duration, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(raw) => humantime::parse_duration(raw).map_err(|e| {
                ConfigError::new(
                    key,
                    format!("{raw:?} is not a duration ({e}); try 10s or 5m"),
                )
            }),
        }
    }

    fn url_or(&self, key: &'static str, default: &str) -> Result<Url, ConfigError> {
        let raw = self.get(key).unwrap_or(default);
        Url::parse(raw).map_err(|e| ConfigError::new(key, format!("{raw:?} is not a URL ({e})")))
    }
}

/// A configuration value that is missing or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration error: {variable} {reason}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub reason: String,
}

impl ConfigError {
    pub fn new(variable: &'static str, reason: impl Into<String>) -> Self {
        Self {
            variable,
            reason: reason.into(),
        }
    }
}

/// Prefix of every AMQP exchange/queue name and Redis key: isolates deployments and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace(String);

impl Namespace {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Namespace {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err("must be 1-64 characters of a-z, 0-9, - and _".into())
        }
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A URL that may carry a password; `Debug` and `Display` hide it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(Url);

impl SecretUrl {
    pub fn parse(raw: &str) -> Result<Self, url::ParseError> {
        Url::parse(raw).map(Self)
    }

    pub fn expose(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.clone();
        if shown.password().is_some() {
            let _ = shown.set_password(Some("***"));
        }
        f.write_str(shown.as_str())
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// Where Redis is: one server, or a Redis Cluster (`redis+cluster://seed` or a comma-separated
/// list of nodes).
#[derive(Clone, PartialEq, Eq)]
pub enum RedisTarget {
    Single(SecretUrl),
    Cluster(Vec<SecretUrl>),
}

impl FromStr for RedisTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut cluster = false;
        let mut nodes = Vec::new();
        for raw in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (raw, is_cluster) = match raw.split_once("+cluster://") {
                Some((scheme, rest)) => (format!("{scheme}://{rest}"), true),
                None => (raw.to_owned(), false),
            };
            cluster |= is_cluster;
            let url = Url::parse(&raw).map_err(|e| format!("{raw:?} is not a URL ({e})"))?;
            if !matches!(url.scheme(), "redis" | "rediss") {
                return Err(
                    "must be redis://, rediss://, redis+cluster:// or a list of them".into(),
                );
            }
            nodes.push(SecretUrl(url));
        }
        match nodes.len() {
            0 => Err("is empty".into()),
            1 if !cluster => Ok(Self::Single(nodes.remove(0))),
            _ => Ok(Self::Cluster(nodes)),
        }
    }
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Single(url) => write!(f, "{url:?}"),
            Self::Cluster(nodes) => f.debug_tuple("Cluster").field(nodes).finish(),
        }
    }
}

/// The bot's Entra app registration.
#[derive(Debug, Clone)]
pub struct BotCredentials {
    pub app_id: String,
    pub app_password: SecretString,
    /// Set for single-tenant bots; `None` means multi-tenant.
    pub tenant_id: Option<String>,
}

/// Where tokens come from and how inbound tokens are checked, after cloud preset + overrides.
#[derive(Clone)]
pub struct TeamsEndpoints {
    pub cloud: Cloud,
    pub token_url: Url,
    pub token_scope: String,
    pub openid_metadata_url: Url,
    pub token_issuer: String,
    pub default_service_url: Option<String>,
    /// The GCC host a tenant moves to on 403 InvalidBotApiHost (public cloud only).
    pub gcc_service_url: Option<String>,
    pub service_url_allowlist: ServiceUrlAllowlist,
}

impl fmt::Debug for TeamsEndpoints {
    /// URLs as text: the logged configuration is read by people.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TeamsEndpoints")
            .field("cloud", &self.cloud.to_string())
            .field("token_url", &self.token_url.as_str())
            .field("token_scope", &self.token_scope)
            .field("openid_metadata_url", &self.openid_metadata_url.as_str())
            .field("token_issuer", &self.token_issuer)
            .field("default_service_url", &self.default_service_url)
            .field("gcc_service_url", &self.gcc_service_url)
            .field(
                "service_url_allowlist",
                &self.service_url_allowlist.to_string(),
            )
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(Self::Json),
            "pretty" => Ok(Self::Pretty),
            _ => Err("expected json or pretty".into()),
        }
    }
}

/// Settings both services share.
#[derive(Debug, Clone)]
pub struct CommonConfig {
    pub namespace: Namespace,
    pub redis: RedisTarget,
    pub amqp_url: SecretUrl,
    pub bot: BotCredentials,
    pub teams: TeamsEndpoints,
    /// How long a job's status record is kept after its last change.
    pub status_ttl: Duration,
    pub log_format: LogFormat,
    pub log_filter: String,
    /// Where spans go: the standard `OTEL_*` variables decide.
    pub traces: TraceExport,
}

/// Span export, from OpenTelemetry's standard variables: OTLP over HTTP (protobuf) when
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` is set, none otherwise
/// or with `OTEL_TRACES_EXPORTER=none`. The trace context is propagated either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceExport {
    Off,
    /// The full URL spans are POSTed to (`…/v1/traces`).
    Otlp {
        traces_url: Url,
    },
}

impl TraceExport {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        match env.get("OTEL_TRACES_EXPORTER") {
            None | Some("otlp") => {}
            Some("none") => return Ok(Self::Off),
            Some(other) => {
                return Err(ConfigError::new(
                    "OTEL_TRACES_EXPORTER",
                    format!("{other:?}: expected otlp or none"),
                ));
            }
        }
        for key in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(protocol) = env.get(key).filter(|p| *p != "http/protobuf") {
                return Err(ConfigError::new(
                    key,
                    format!("{protocol:?}: only http/protobuf is supported (port 4318)"),
                ));
            }
        }
        let parse = |key: &'static str, raw: &str| {
            Url::parse(raw)
                .ok()
                .filter(|url| matches!(url.scheme(), "http" | "https"))
                .ok_or_else(|| ConfigError::new(key, format!("{raw:?}: expected an http(s) URL")))
        };
        // As the specification says: the signal-specific URL is used as it is, the general
        // one gets the signal's path appended.
        if let Some(raw) = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            let traces_url = parse("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raw)?;
            return Ok(Self::Otlp { traces_url });
        }
        if let Some(raw) = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") {
            let base = parse("OTEL_EXPORTER_OTLP_ENDPOINT", raw)?;
            let traces_url = parse(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                &format!("{}/v1/traces", base.as_str().trim_end_matches('/')),
            )?;
            return Ok(Self::Otlp { traces_url });
        }
        Ok(Self::Off)
    }
}

impl CommonConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let namespace = env.parse_or("HERALD_NAMESPACE", Namespace("herald".into()))?;
        let redis = env.parse_or(
            "HERALD_REDIS_URL",
            RedisTarget::Single(SecretUrl(
                Url::parse("redis://127.0.0.1:6379").expect("a valid URL"),
            )),
        )?;
        let amqp_url =
            SecretUrl(env.url_or("HERALD_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")?);
        if !matches!(amqp_url.0.scheme(), "amqp" | "amqps") {
            return Err(ConfigError::new(
                "HERALD_AMQP_URL",
                "must be an amqp:// or amqps:// URL",
            ));
        }
        let bot = BotCredentials {
            app_id: env.required("HERALD_APP_ID")?.to_owned(),
            app_password: SecretString::from(env.required("HERALD_APP_PASSWORD")?.to_owned()),
            tenant_id: env.get("HERALD_APP_TENANT_ID").map(str::to_owned),
        };
        let teams = teams_endpoints(env, &bot)?;
        Ok(Self {
            namespace,
            redis,
            amqp_url,
            bot,
            teams,
            status_ttl: env.duration_or("HERALD_STATUS_TTL", Duration::from_secs(7 * 24 * 3600))?,
            log_format: env.parse_or("HERALD_LOG_FORMAT", LogFormat::Json)?,
            log_filter: env.get("RUST_LOG").unwrap_or("info").to_owned(),
            traces: TraceExport::from_env(env)?,
        })
    }
}

fn teams_endpoints(env: &Env, bot: &BotCredentials) -> Result<TeamsEndpoints, ConfigError> {
    let cloud: Cloud = env.parse_or("HERALD_CLOUD", Cloud::Public)?;
    let preset = cloud.endpoints();
    // Single-tenant bots get their token from their own tenant (TEAMS.md §2).
    let token_tenant = bot
        .tenant_id
        .as_deref()
        .unwrap_or(preset.multi_tenant_tenant);
    let default_token_url = format!("{}/{token_tenant}/oauth2/v2.0/token", preset.login_host);
    let default_service_url = match env.get("HERALD_DEFAULT_SERVICE_URL") {
        Some(raw) => Some(
            Url::parse(raw)
                .map_err(|e| {
                    ConfigError::new(
                        "HERALD_DEFAULT_SERVICE_URL",
                        format!("{raw:?} is not a URL ({e})"),
                    )
                })?
                .to_string(),
        ),
        None => preset.default_service_url.map(str::to_owned),
    };
    let allowlist_raw = env
        .get("HERALD_SERVICE_URL_ALLOWLIST")
        .map(str::to_owned)
        .unwrap_or_else(|| preset.service_url_allowlist.join(","));
    let service_url_allowlist: ServiceUrlAllowlist = allowlist_raw
        .parse()
        .map_err(|e: String| ConfigError::new("HERALD_SERVICE_URL_ALLOWLIST", e))?;
    let gcc_service_url = match env.get("HERALD_GCC_SERVICE_URL") {
        Some(raw) => Some(
            Url::parse(raw)
                .map_err(|e| {
                    ConfigError::new(
                        "HERALD_GCC_SERVICE_URL",
                        format!("{raw:?} is not a URL ({e})"),
                    )
                })?
                .to_string(),
        ),
        // The preset's GCC host is dropped, not refused, when the allowlist was narrowed to
        // exclude it: then GCC tenants simply cannot be moved there.
        None => preset
            .gcc_service_url
            .filter(|url| service_url_allowlist.allows(url))
            .map(str::to_owned),
    };
    for (variable, url) in [
        ("HERALD_DEFAULT_SERVICE_URL", &default_service_url),
        ("HERALD_GCC_SERVICE_URL", &gcc_service_url),
    ] {
        if let Some(url) = url
            .as_deref()
            .filter(|url| !service_url_allowlist.allows(url))
        {
            return Err(ConfigError::new(
                variable,
                format!(
                    "{url:?} is not allowed by HERALD_SERVICE_URL_ALLOWLIST ({service_url_allowlist})"
                ),
            ));
        }
    }
    Ok(TeamsEndpoints {
        cloud,
        token_url: env.url_or("HERALD_TOKEN_URL", &default_token_url)?,
        token_scope: env
            .get("HERALD_TOKEN_SCOPE")
            .unwrap_or(preset.token_scope)
            .to_owned(),
        openid_metadata_url: env
            .url_or("HERALD_OPENID_METADATA_URL", preset.openid_metadata_url)?,
        token_issuer: env
            .get("HERALD_TOKEN_ISSUER")
            .unwrap_or(preset.token_issuer)
            .to_owned(),
        default_service_url,
        gcc_service_url,
        service_url_allowlist,
    })
}

/// The ingress service's settings.
#[derive(Debug, Clone)]
pub struct IngressConfig {
    pub common: CommonConfig,
    pub http_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// Bearer keys accepted on `/v1`; empty means `/v1` refuses every call.
    pub api_keys: Vec<SecretString>,
    pub welcome_text: String,
    pub reminder_text: String,
    pub reminder_delay: Duration,
}

impl IngressConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            common: CommonConfig::from_env(env)?,
            http_addr: env.parse_or("HERALD_HTTP_ADDR", SocketAddr::from(([0, 0, 0, 0], 3978)))?,
            admin_addr: env
                .parse_or("HERALD_ADMIN_ADDR", SocketAddr::from(([0, 0, 0, 0], 9090)))?,
            api_keys: env
                .get("HERALD_API_KEYS")
                .map(|keys| {
                    keys.split(',')
                        .map(str::trim)
                        .filter(|k| !k.is_empty())
                        .map(|k| SecretString::from(k.to_owned()))
                        .collect()
                })
                .unwrap_or_default(),
            welcome_text: env
                .get("HERALD_WELCOME_TEXT")
                .unwrap_or("Hi! I am going to remind you to say something to me soon!")
                .to_owned(),
            reminder_text: env
                .get("HERALD_REMINDER_TEXT")
                .unwrap_or("Hey! It's been a while. How are you?")
                .to_owned(),
            reminder_delay: env.duration_or("HERALD_REMINDER_DELAY", Duration::from_secs(10))?,
        })
    }

    /// Whether `presented` is one of the configured API keys, compared in constant time.
    pub fn api_key_matches(&self, presented: &str) -> bool {
        self.api_keys.iter().fold(false, |found, key| {
            found | constant_time_eq(key.expose_secret().as_bytes(), presented.as_bytes())
        })
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Backoff for transient failures: one entry per retry, the last repeating; each is jittered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule(Vec<Duration>);

impl RetrySchedule {
    /// The nominal delay before retry number `retry` (1-based).
    pub fn nominal(&self, retry: u32) -> Duration {
        let index = (retry.max(1) as usize - 1).min(self.0.len() - 1);
        self.0[index]
    }
}

impl FromStr for RetrySchedule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let steps = s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| humantime::parse_duration(p).map_err(|e| format!("{p:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if steps.is_empty() {
            return Err("needs at least one duration, e.g. 1s,5s,30s".into());
        }
        Ok(Self(steps))
    }
}

impl Default for RetrySchedule {
    fn default() -> Self {
        "1s,4s,15s,1m,4m,15m"
            .parse()
            .expect("the default schedule parses")
    }
}

/// Send-rate limits: each `count/window` must hold in every sliding window of that length.
/// `off` (an empty list) disables them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RateLimits(pub Vec<RateLimit>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub count: u32,
    pub window: Duration,
}

impl RateLimits {
    pub fn is_off(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromStr for RateLimits {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim() == "off" {
            return Ok(Self::default());
        }
        let limits = s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|part| {
                let (count, window) = part
                    .split_once('/')
                    .ok_or_else(|| format!("{part:?} is not count/window, e.g. 7/1s"))?;
                let count: u32 = count
                    .trim()
                    .parse()
                    .map_err(|_| format!("{part:?}: the count is not a number"))?;
                let window = humantime::parse_duration(window.trim())
                    .map_err(|e| format!("{part:?}: {e}"))?;
                if count == 0 || window < Duration::from_millis(1) {
                    return Err(format!(
                        "{part:?}: the count and the window must be above zero"
                    ));
                }
                Ok(RateLimit { count, window })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if limits.is_empty() {
            return Err("expected count/window pairs like 7/1s,60/30s, or off".into());
        }
        Ok(Self(limits))
    }
}

/// Deliveries in flight per dispatcher by default. A send mostly waits on Teams, so a
/// dispatcher's throughput is in-flight sends divided by Teams' latency: 1024 at 100 ms is
/// about 10,000 a second, more than one core sends (BENCHMARKS.md), while quorum queues
/// deliver that many to one consumer without trouble.
pub const DEFAULT_PREFETCH: u16 = 1024;

/// The dispatcher service's settings.
#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    pub common: CommonConfig,
    pub admin_addr: SocketAddr,
    /// Deliveries in flight at once (AMQP prefetch); each is handled by its own task.
    pub prefetch: u16,
    pub retry_schedule: RetrySchedule,
    /// Calls to Teams a job may make before it ends `failed`.
    pub max_attempts: u32,
    pub shutdown_grace: Duration,
    /// How long a send claim holds off other copies of the same job; longer than a send can take.
    pub send_lease: Duration,
    /// Timeout of one Bot Connector call.
    pub send_timeout: Duration,
    /// Per tenant, across all replicas (Teams: 50 requests per second per app per tenant).
    pub tenant_rate: RateLimits,
    /// Per conversation, across all replicas (Teams' per-thread limits).
    pub conversation_rates: RateLimits,
}

impl DispatcherConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let config = Self {
            common: CommonConfig::from_env(env)?,
            admin_addr: env
                .parse_or("HERALD_ADMIN_ADDR", SocketAddr::from(([0, 0, 0, 0], 9091)))?,
            prefetch: env.parse_or("HERALD_PREFETCH", DEFAULT_PREFETCH)?,
            retry_schedule: env.parse_or("HERALD_RETRY_SCHEDULE", RetrySchedule::default())?,
            max_attempts: env.parse_or("HERALD_MAX_ATTEMPTS", 8)?,
            shutdown_grace: env.duration_or("HERALD_SHUTDOWN_GRACE", Duration::from_secs(25))?,
            send_lease: env.duration_or("HERALD_SEND_LEASE", Duration::from_secs(30))?,
            send_timeout: env.duration_or("HERALD_SEND_TIMEOUT", Duration::from_secs(10))?,
            tenant_rate: env.parse_or(
                "HERALD_TENANT_RATE",
                "50/1s".parse().expect("the default parses"),
            )?,
            conversation_rates: env.parse_or(
                "HERALD_CONVERSATION_RATES",
                "7/1s,8/2s,60/30s,1800/1h"
                    .parse()
                    .expect("the default parses"),
            )?,
        };
        if config.prefetch == 0 {
            return Err(ConfigError::new("HERALD_PREFETCH", "must be at least 1"));
        }
        if config.max_attempts == 0 {
            return Err(ConfigError::new(
                "HERALD_MAX_ATTEMPTS",
                "must be at least 1",
            ));
        }
        if config.send_lease <= config.send_timeout {
            return Err(ConfigError::new(
                "HERALD_SEND_LEASE",
                format!(
                    "must be longer than HERALD_SEND_TIMEOUT ({:?})",
                    config.send_timeout
                ),
            ));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Env {
        Env::from_pairs([("HERALD_APP_ID", "app"), ("HERALD_APP_PASSWORD", "s3cret")])
    }

    #[test]
    fn defaults_follow_the_design() {
        let c = IngressConfig::from_env(&base()).unwrap();
        assert_eq!(c.common.namespace.as_str(), "herald");
        assert_eq!(c.http_addr.to_string(), "0.0.0.0:3978");
        assert_eq!(c.admin_addr.to_string(), "0.0.0.0:9090");
        assert_eq!(c.reminder_delay, Duration::from_secs(10));
        assert_eq!(
            c.common.teams.token_url.as_str(),
            "https://login.microsoftonline.com/botframework.com/oauth2/v2.0/token"
        );
        assert_eq!(c.common.teams.token_issuer, "https://api.botframework.com");
        assert!(c.api_keys.is_empty());
        let d = DispatcherConfig::from_env(&base()).unwrap();
        assert_eq!(d.admin_addr.to_string(), "0.0.0.0:9091");
        assert_eq!(d.shutdown_grace, Duration::from_secs(25));
    }

    #[test]
    fn single_tenant_bots_use_their_tenant_and_clouds_have_presets() {
        let mut env = base();
        env.set("HERALD_APP_TENANT_ID", "contoso-tenant")
            .set("HERALD_CLOUD", "usgov");
        let c = CommonConfig::from_env(&env).unwrap();
        assert_eq!(
            c.teams.token_url.as_str(),
            "https://login.microsoftonline.us/contoso-tenant/oauth2/v2.0/token"
        );
        assert_eq!(c.teams.token_scope, "https://api.botframework.us/.default");
        assert!(
            c.teams
                .service_url_allowlist
                .allows("https://smba.infra.gov.teams.microsoft.us/gcch")
        );
        assert!(
            !c.teams
                .service_url_allowlist
                .allows("https://smba.trafficmanager.net/teams/")
        );
    }

    #[test]
    fn a_missing_or_malformed_value_names_the_variable() {
        let err = CommonConfig::from_env(&Env::default()).unwrap_err();
        assert_eq!(err.variable, "HERALD_APP_ID");
        for (key, value) in [
            ("HERALD_REMINDER_DELAY", "soon"),
            ("HERALD_CLOUD", "mars"),
            ("HERALD_NAMESPACE", "Bad Name"),
            ("HERALD_SERVICE_URL_ALLOWLIST", "ftp://x"),
            ("HERALD_HTTP_ADDR", "nowhere"),
            ("HERALD_REDIS_URL", "http://127.0.0.1"),
        ] {
            let mut env = base();
            env.set(key, value);
            let err = IngressConfig::from_env(&env).unwrap_err();
            assert_eq!(err.variable, key, "{err}");
            assert!(err.to_string().contains(key));
        }
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let mut env = base();
        env.set("HERALD_AMQP_URL", "amqp://user:hunter2@rabbit:5672/%2f")
            .set("HERALD_API_KEYS", "k-123,k-456");
        let c = IngressConfig::from_env(&env).unwrap();
        let shown = format!("{c:?}");
        for secret in ["hunter2", "s3cret", "k-123", "k-456"] {
            assert!(!shown.contains(secret), "{secret} leaked: {shown}");
        }
        assert!(c.api_key_matches("k-456"));
        assert!(!c.api_key_matches("k-45"));
    }

    #[test]
    fn traces_are_exported_only_where_the_standard_variables_say() {
        assert_eq!(
            CommonConfig::from_env(&base()).unwrap().traces,
            TraceExport::Off
        );
        let traces_url = |env: &Env| match CommonConfig::from_env(env).unwrap().traces {
            TraceExport::Otlp { traces_url } => traces_url.to_string(),
            TraceExport::Off => "off".into(),
        };
        let mut env = base();
        env.set("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/");
        assert_eq!(traces_url(&env), "http://collector:4318/v1/traces");
        env.set(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "https://otel.example/custom",
        );
        assert_eq!(traces_url(&env), "https://otel.example/custom");
        env.set("OTEL_TRACES_EXPORTER", "none");
        assert_eq!(traces_url(&env), "off");
        for (key, bad) in [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
            ("OTEL_TRACES_EXPORTER", "zipkin"),
        ] {
            let mut env = base();
            env.set("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
                .set(key, bad);
            assert_eq!(CommonConfig::from_env(&env).unwrap_err().variable, key);
        }
    }

    #[test]
    fn rate_limits_parse_and_can_be_turned_off() {
        let d = DispatcherConfig::from_env(&base()).unwrap();
        assert_eq!(
            d.tenant_rate.0,
            [RateLimit {
                count: 50,
                window: Duration::from_secs(1)
            }]
        );
        assert_eq!(d.conversation_rates.0.len(), 4);
        assert_eq!(
            d.conversation_rates.0[3],
            RateLimit {
                count: 1800,
                window: Duration::from_secs(3600)
            }
        );
        let mut env = base();
        env.set("HERALD_TENANT_RATE", "off")
            .set("HERALD_CONVERSATION_RATES", "3/500ms");
        let d = DispatcherConfig::from_env(&env).unwrap();
        assert!(d.tenant_rate.is_off());
        assert_eq!(d.conversation_rates.0[0].window, Duration::from_millis(500));
        for bad in ["7", "x/1s", "7/soon", "0/1s"] {
            let mut env = base();
            env.set("HERALD_TENANT_RATE", bad);
            assert_eq!(
                DispatcherConfig::from_env(&env).unwrap_err().variable,
                "HERALD_TENANT_RATE",
                "{bad}"
            );
        }
    }

    #[test]
    fn the_gcc_host_comes_with_the_public_cloud_unless_the_allowlist_excludes_it() {
        let c = CommonConfig::from_env(&base()).unwrap();
        assert_eq!(
            c.teams.gcc_service_url.as_deref(),
            Some("https://smba.infra.gcc.teams.microsoft.com/gcc/")
        );
        let mut narrowed = base();
        narrowed.set(
            "HERALD_SERVICE_URL_ALLOWLIST",
            "https://smba.trafficmanager.net",
        );
        assert_eq!(
            CommonConfig::from_env(&narrowed)
                .unwrap()
                .teams
                .gcc_service_url,
            None
        );
        narrowed.set("HERALD_GCC_SERVICE_URL", "https://elsewhere.example/gcc/");
        assert_eq!(
            CommonConfig::from_env(&narrowed).unwrap_err().variable,
            "HERALD_GCC_SERVICE_URL"
        );
    }

    #[test]
    fn redis_is_one_server_or_a_cluster() {
        let single: RedisTarget = "redis://:pw@10.0.0.1:6379".parse().unwrap();
        assert!(matches!(single, RedisTarget::Single(_)));
        assert!(!format!("{single:?}").contains("pw"));
        let seeded: RedisTarget = "redis+cluster://10.0.0.1:7000".parse().unwrap();
        let RedisTarget::Cluster(nodes) = seeded else {
            panic!("a cluster")
        };
        assert_eq!(nodes[0].expose(), "redis://10.0.0.1:7000");
        let listed: RedisTarget = "redis://a:7000, redis://b:7001".parse().unwrap();
        assert!(matches!(listed, RedisTarget::Cluster(n) if n.len() == 2));
        assert!("http://a".parse::<RedisTarget>().is_err());
    }

    #[test]
    fn retry_schedule_repeats_its_last_step() {
        let s: RetrySchedule = "1s,5s".parse().unwrap();
        assert_eq!(s.nominal(1), Duration::from_secs(1));
        assert_eq!(s.nominal(2), Duration::from_secs(5));
        assert_eq!(s.nominal(9), Duration::from_secs(5));
    }
}

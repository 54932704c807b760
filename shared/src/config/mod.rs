//! Configuration from the environment, validated once at start; the README's Configuration
//! section lists every variable and its default.
//!
//! Every service builds its own config from an [`Env`] (the process environment in the
//! binaries, a map in tests). A missing or malformed value is a [`ConfigError`] naming the
//! variable; the binaries print it on one line and exit non-zero. `Debug` output is safe to
//! log: passwords in URLs and secrets are redacted.
//!
//! # Layout
//! - This file: each service's settings ([`CommonConfig`], [`IngressConfig`],
//!   [`DispatcherConfig`]) and how they are assembled from the variables. Every type is
//!   re-exported here, so `herald_shared::config::X` names it whichever file holds it.
//! - `env`: [`Env`], the variables, and [`ConfigError`], the variable that is wrong.
//! - `connections`: where Redis and RabbitMQ are ([`RedisTarget`], [`AmqpNodes`],
//!   [`SecretUrl`]) and the [`Namespace`] used in them.
//! - `teams`: the bot's credentials and the Teams endpoints, from the cloud's preset, each
//!   overridable, with the serviceUrl allowlist.
//! - `graph`: Microsoft Graph ([`GraphConfig`]): its root per cloud, per-tenant tokens, its
//!   own allowlist, the per-tenant rate and whether Herald installs the app for users.
//! - `telemetry`: the [`LogFormat`] and where spans go ([`TraceExport`]).
//! - `sending`: the dispatcher's pace: [`RetrySchedule`], [`RateLimits`], [`DEFAULT_PREFETCH`].

mod connections;
mod env;
mod graph;
mod sending;
mod teams;
mod telemetry;

use std::{net::SocketAddr, time::Duration};

use secrecy::SecretString;
use url::Url;

use crate::{calendar::Zone, webhooks::guard::WebhookGuard};

pub use self::{
    connections::{AmqpNodes, Namespace, RedisTarget, SecretUrl},
    env::{ConfigError, Env},
    graph::{GraphConfig, TENANT_PLACEHOLDER},
    sending::{DEFAULT_PREFETCH, RateLimit, RateLimits, RetrySchedule},
    teams::{BotCredentials, TeamsEndpoints},
    telemetry::{LogFormat, TraceExport},
};

/// Settings both services share.
#[derive(Debug, Clone)]
pub struct CommonConfig {
    pub namespace: Namespace,
    pub redis: RedisTarget,
    /// The RabbitMQ node, or the nodes of one cluster, tried in turn.
    pub amqp: AmqpNodes,
    pub bot: BotCredentials,
    pub teams: TeamsEndpoints,
    /// How long a job's status record is kept after its last change.
    pub status_ttl: Duration,
    /// The zone of a recipient whose own is unknown (and of targets that are not a user).
    pub default_time_zone: Zone,
    pub log_format: LogFormat,
    pub log_filter: String,
    /// Where spans go: the standard `OTEL_*` variables decide.
    pub traces: TraceExport,
    /// Where webhooks may be sent (`HERALD_WEBHOOK_ALLOWLIST`; the ingress checks a URL when
    /// a webhook is made, the dispatcher at every send).
    pub webhook_guard: WebhookGuard,
    /// The backoff between a webhook's attempts (`HERALD_WEBHOOK_RETRY_SCHEDULE`); after the
    /// last step it is given up.
    pub webhook_retry_schedule: RetrySchedule,
}

impl CommonConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let namespace = env.parse_or("HERALD_NAMESPACE", Namespace("herald".into()))?;
        let redis = env.parse_secret_or(
            "HERALD_REDIS_URL",
            RedisTarget::Single(SecretUrl(
                Url::parse("redis://127.0.0.1:6379").expect("a valid URL"),
            )),
        )?;
        let amqp = env.parse_secret_or(
            "HERALD_AMQP_URL",
            "amqp://guest:guest@127.0.0.1:5672/%2f"
                .parse::<AmqpNodes>()
                .expect("a valid default"),
        )?;
        let bot = BotCredentials {
            app_id: env.required("HERALD_APP_ID")?.to_owned(),
            app_password: SecretString::from(env.required("HERALD_APP_PASSWORD")?.to_owned()),
            tenant_id: env.get("HERALD_APP_TENANT_ID").map(str::to_owned),
        };
        let teams = TeamsEndpoints::from_env(env, &bot)?;
        Ok(Self {
            namespace,
            redis,
            amqp,
            bot,
            teams,
            status_ttl: env.duration_or("HERALD_STATUS_TTL", Duration::from_secs(7 * 24 * 3600))?,
            default_time_zone: env.parse_or("HERALD_DEFAULT_TIME_ZONE", Zone::UTC)?,
            log_format: env.parse_or("HERALD_LOG_FORMAT", LogFormat::Json)?,
            log_filter: env.get("RUST_LOG").unwrap_or("info").to_owned(),
            traces: TraceExport::from_env(env)?,
            webhook_guard: WebhookGuard::from_env_value(env.get("HERALD_WEBHOOK_ALLOWLIST"))
                .map_err(|e| ConfigError::new("HERALD_WEBHOOK_ALLOWLIST", e))?,
            webhook_retry_schedule: env.parse_or(
                "HERALD_WEBHOOK_RETRY_SCHEDULE",
                "5s,5m,30m,2h,5h,10h".parse().expect("the default parses"),
            )?,
        })
    }
}

/// The ingress service's settings.
#[derive(Debug, Clone)]
pub struct IngressConfig {
    pub common: CommonConfig,
    pub http_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// `HERALD_API_KEYS` as given, empty when unset (then `/v1` refuses every call). The
    /// ingress, the keys' only user, reads the list and checks presented keys against it.
    pub api_keys: SecretString,
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
            api_keys: SecretString::from(env.get("HERALD_API_KEYS").unwrap_or_default()),
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
}

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
    /// At most this many of one broadcast's recipients handed to the dispatch queue and not
    /// yet ended (`HERALD_BROADCAST_AHEAD`): what waits for the tenant's rate is bounded by
    /// this, not by the audience.
    pub broadcast_ahead: u64,
    /// Microsoft Graph, for users who never installed the app (`HERALD_GRAPH_*`).
    pub graph: GraphConfig,
}

impl DispatcherConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let common = CommonConfig::from_env(env)?;
        let config = Self {
            graph: GraphConfig::from_env(env, &common.teams)?,
            common,
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
            broadcast_ahead: env.parse_or("HERALD_BROADCAST_AHEAD", 1_000)?,
        };
        if config.prefetch == 0 {
            return Err(ConfigError::new("HERALD_PREFETCH", "must be at least 1"));
        }
        if config.broadcast_ahead == 0 {
            return Err(ConfigError::new(
                "HERALD_BROADCAST_AHEAD",
                "must be at least 1",
            ));
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
    use secrecy::ExposeSecret;

    use super::*;

    /// The least a service starts with; the submodules' tests build on it too.
    pub(super) fn base() -> Env {
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
        assert!(c.api_keys.expose_secret().is_empty());
        let d = DispatcherConfig::from_env(&base()).unwrap();
        assert_eq!(d.admin_addr.to_string(), "0.0.0.0:9091");
        assert_eq!(d.shutdown_grace, Duration::from_secs(25));
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
            ("HERALD_AMQP_URL", "amqp://a:5672,http://b"),
        ] {
            let mut env = base();
            env.set(key, value);
            let err = IngressConfig::from_env(&env).unwrap_err();
            assert_eq!(err.variable, key, "{err}");
            assert!(err.to_string().contains(key));
        }
    }

    /// Matching presented keys is the ingress's business (`herald_ingress::api::ApiKeys`).
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
        assert_eq!(c.api_keys.expose_secret(), "k-123,k-456");
    }

    #[test]
    fn a_refused_connection_url_is_not_shown_in_the_error() {
        for (key, value) in [
            (
                "HERALD_AMQP_URL",
                "amqp://user:hunter2@rabbit:5672/%2f,amqp://user:hunter2@[x",
            ),
            ("HERALD_REDIS_URL", "redis://:hunter2@[x"),
        ] {
            let mut env = base();
            env.set(key, value);
            let err = IngressConfig::from_env(&env).unwrap_err();
            assert_eq!(err.variable, key);
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
    }
}

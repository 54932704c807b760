//! The state every route and every [`crate::Emulator`] handle share.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::config::EmulatorConfig;
use crate::directory::{Directory, ReceivedActivity};
use crate::faults::FaultList;
use crate::keys::KeySet;
use crate::limits::RateLimiter;
use crate::recorder::{Recorder, Stats, lock};
use crate::retention::Limits;

/// What can change while the emulator runs.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Settings {
    pub(crate) bot_endpoint: Option<String>,
    pub(crate) rate_limits: bool,
    #[serde(rename = "latencyMs", serialize_with = "as_millis")]
    pub(crate) latency: Duration,
}

fn as_millis<S: serde::Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(u64::try_from(value.as_millis()).unwrap_or(u64::MAX))
}

/// How much the emulator keeps, as `GET /_emulator/info` shows it.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RetentionSettings {
    pub(crate) keep_requests: usize,
    pub(crate) keep_per_conversation: usize,
    pub(crate) keep_activities: usize,
}

/// Something the web page wants to hear about, sent over `GET /_emulator/events`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub(crate) enum Event {
    /// The bot sent, updated or deleted an activity, or answered a card action on it
    /// (`change`: `sent`, `updated`, `deleted`, `answered`).
    #[serde(rename = "activity", rename_all = "camelCase")]
    Activity {
        change: &'static str,
        conversation_id: String,
        activity: Box<ReceivedActivity>,
    },
    /// "Teams" posted an activity to the bot.
    #[serde(rename = "toBot", rename_all = "camelCase")]
    ToBot {
        conversation_id: String,
        activity: Value,
        status: Option<u16>,
    },
}

impl Event {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Event::Activity { .. } => "activity",
            Event::ToBot { .. } => "toBot",
        }
    }
}

/// Whom an access token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Audience {
    /// The Bot Connector (`https://api.botframework.com`).
    Connector,
    /// The Graph stand-in (its root, `{base}/graph`).
    Graph,
}

/// An access token the token endpoint issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IssuedToken {
    pub(crate) expires: Instant,
    pub(crate) audience: Audience,
    /// The token's `tid`: the tenant it was issued in.
    pub(crate) tenant_id: String,
}

/// Access tokens the token endpoint issued, with their expiry, audience and tenant.
#[derive(Debug, Default)]
pub(crate) struct TokenStore {
    issued: HashMap<String, IssuedToken>,
}

impl TokenStore {
    pub(crate) fn insert(&mut self, token: String, issued: IssuedToken) {
        let now = Instant::now();
        self.issued.retain(|_, kept| kept.expires > now);
        self.issued.insert(token, issued);
    }

    /// The token, if the endpoint issued it and it has not expired.
    pub(crate) fn check(&self, token: &str) -> Option<IssuedToken> {
        self.issued
            .get(token)
            .filter(|issued| issued.expires > Instant::now())
            .cloned()
    }
}

/// Activity ids like Teams' (epoch milliseconds), unique within the emulator.
#[derive(Debug, Default)]
pub(crate) struct ActivityIds {
    last: AtomicU64,
}

impl ActivityIds {
    pub(crate) fn next(&self) -> String {
        let now = u64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
            .unwrap_or_default();
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = now.max(last + 1);
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next.to_string(),
                Err(actual) => last = actual,
            }
        }
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) app_id: String,
    pub(crate) app_password: String,
    pub(crate) issuer: String,
    pub(crate) token_lifetime: Duration,
    pub(crate) base_url: String,
    pub(crate) settings: Mutex<Settings>,
    pub(crate) retention: RetentionSettings,
    pub(crate) keys: &'static KeySet,
    pub(crate) tokens: Mutex<TokenStore>,
    pub(crate) directory: Mutex<Directory>,
    pub(crate) limits: Mutex<RateLimiter>,
    /// The per-tenant limit the rate limiter enforces, for the traffic report.
    pub(crate) tenant_requests_per_second: usize,
    /// Graph's per-tenant limit (its own limiter: Graph and the Bot Connector are counted
    /// apart, as Microsoft counts them).
    pub(crate) graph_limits: Mutex<RateLimiter>,
    pub(crate) graph_requests_per_second: usize,
    pub(crate) faults: Mutex<FaultList>,
    pub(crate) recorder: Recorder,
    pub(crate) ids: ActivityIds,
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) http: reqwest::Client,
    /// Cancelled when the server stops, so that endless responses (SSE) end too.
    pub(crate) stopping: CancellationToken,
}

impl Shared {
    pub(crate) fn new(
        config: &EmulatorConfig,
        base_url: String,
        keys: &'static KeySet,
        http: reqwest::Client,
    ) -> Self {
        Shared {
            app_id: config.app_id.clone(),
            app_password: config.app_password.clone(),
            issuer: config.issuer.clone(),
            token_lifetime: config.token_lifetime,
            base_url,
            settings: Mutex::new(Settings {
                bot_endpoint: config.bot_endpoint.clone(),
                rate_limits: config.rate_limits,
                latency: config.latency,
            }),
            retention: RetentionSettings {
                keep_requests: config.keep_requests,
                keep_per_conversation: config.keep_per_conversation,
                keep_activities: config.keep_activities,
            },
            keys,
            tokens: Mutex::new(TokenStore::default()),
            directory: Mutex::new({
                let mut directory = Directory::new(
                    &config.app_id,
                    Limits {
                        per_conversation: config.keep_per_conversation,
                        total: config.keep_activities,
                    },
                );
                directory.configure_catalogs(
                    config.teams_app_id.as_deref().unwrap_or(&config.app_id),
                    config.app_in_every_catalog,
                );
                directory
            }),
            limits: Mutex::new(RateLimiter::new(config.tenant_requests_per_second)),
            tenant_requests_per_second: config.tenant_requests_per_second.max(1),
            graph_limits: Mutex::new(RateLimiter::new(config.graph_requests_per_second)),
            graph_requests_per_second: config.graph_requests_per_second.max(1),
            faults: Mutex::new(FaultList::default()),
            recorder: Recorder::new(config.keep_requests),
            ids: ActivityIds::default(),
            events: broadcast::channel(1024).0,
            http,
            stopping: CancellationToken::new(),
        }
    }

    pub(crate) fn settings(&self) -> Settings {
        lock(&self.settings).clone()
    }

    /// Every counter: the recorder's, the retention's, and per tenant.
    pub(crate) fn stats(&self) -> Stats {
        let mut stats = self.recorder.counters.snapshot();
        let (kept, dropped) = lock(&self.directory).retention_counts();
        stats.activities_kept = kept;
        stats.activities_dropped = usize::try_from(dropped).unwrap_or(usize::MAX);
        stats.tenants = self.recorder.traffic.totals();
        stats
    }

    /// Publishes an event; nobody listening is fine.
    pub(crate) fn publish(&self, event: Event) {
        let _ = self.events.send(event);
    }

    pub(crate) fn service_url(&self, tenant_id: &str) -> String {
        format!("{}/amer/{tenant_id}/", self.base_url)
    }

    /// The Graph stand-in's root, what `https://graph.microsoft.com` is to Graph: requests
    /// go to `{root}/v1.0/…` and its tokens' scope is `{root}/.default`.
    pub(crate) fn graph_root(&self) -> String {
        format!("{}/graph", self.base_url)
    }
}

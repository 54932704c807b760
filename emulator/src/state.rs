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
use crate::recorder::{Recorder, lock};

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

/// Access tokens the token endpoint issued, with their expiry.
#[derive(Debug, Default)]
pub(crate) struct TokenStore {
    issued: HashMap<String, Instant>,
}

impl TokenStore {
    pub(crate) fn insert(&mut self, token: String, expires: Instant) {
        let now = Instant::now();
        self.issued.retain(|_, expiry| *expiry > now);
        self.issued.insert(token, expires);
    }

    pub(crate) fn is_valid(&self, token: &str) -> bool {
        self.issued
            .get(token)
            .is_some_and(|expiry| *expiry > Instant::now())
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
    pub(crate) keys: &'static KeySet,
    pub(crate) tokens: Mutex<TokenStore>,
    pub(crate) directory: Mutex<Directory>,
    pub(crate) limits: Mutex<RateLimiter>,
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
            keys,
            tokens: Mutex::new(TokenStore::default()),
            directory: Mutex::new(Directory::new(&config.app_id)),
            limits: Mutex::new(RateLimiter::default()),
            faults: Mutex::new(FaultList::default()),
            recorder: Recorder::default(),
            ids: ActivityIds::default(),
            events: broadcast::channel(1024).0,
            http,
            stopping: CancellationToken::new(),
        }
    }

    pub(crate) fn settings(&self) -> Settings {
        lock(&self.settings).clone()
    }

    /// Publishes an event; nobody listening is fine.
    pub(crate) fn publish(&self, event: Event) {
        let _ = self.events.send(event);
    }

    pub(crate) fn service_url(&self, tenant_id: &str) -> String {
        format!("{}/amer/{tenant_id}/", self.base_url)
    }
}

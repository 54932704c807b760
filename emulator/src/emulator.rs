//! [`Emulator`]: a running emulator and the handle tests drive it with.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::EmulatorConfig;
use crate::directory::{ReceivedActivity, TeamsTeam, TeamsUser};
use crate::faults::Fault;
use crate::keys::{TokenVariant, key_set};
use crate::recorder::{RecordedRequest, Stats, lock};
use crate::state::Shared;
use crate::teams::{self, InstallOutcome, InvokeAnswer};
use crate::{connector, entra, inspect, page};

/// How long Teams waits for the bot to answer an activity.
const BOT_TIMEOUT: Duration = Duration::from_secs(15);

/// How long [`Emulator::shutdown`] lets open requests finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running emulator. Clones share it; it stops on [`Emulator::shutdown`] or when the last
/// clone is dropped.
#[derive(Debug, Clone)]
pub struct Emulator {
    shared: Arc<Shared>,
    server: Arc<Server>,
}

/// The serving task; dropping the last handle to it stops it.
#[derive(Debug)]
struct Server {
    task: Mutex<Option<JoinHandle<()>>>,
    stopping: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stopping.cancel();
    }
}

/// All routes: the Microsoft-side endpoints, the inspection API and the page.
fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .merge(entra::routes())
        .merge(connector::routes())
        .merge(inspect::routes())
        .merge(page::routes())
        .fallback(connector::other)
        .layer(middleware::from_fn(log_request))
        .with_state(shared)
}

/// One debug line per request, for following a local stack's traffic.
async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    tracing::debug!(
        %method,
        %path,
        status = response.status().as_u16(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "request"
    );
    response
}

/// `http://<addr>`, with a loopback address standing in for an unspecified one.
fn local_base_url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

impl Emulator {
    /// Serves on `listener` in a spawned task until [`shutdown`](Self::shutdown) or the drop
    /// of all handles.
    pub async fn start(config: EmulatorConfig, listener: TcpListener) -> anyhow::Result<Emulator> {
        let addr = listener
            .local_addr()
            .context("reading the listener's address")?;
        let base_url = match &config.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => local_base_url(addr),
        };
        // Key generation is CPU-bound; keep it off the async workers.
        let keys = tokio::task::spawn_blocking(key_set)
            .await
            .context("generating the signing keys")?;
        let http = reqwest::Client::builder()
            .timeout(BOT_TIMEOUT)
            .build()
            .context("building the HTTP client for the bot endpoint")?;
        let shared = Arc::new(Shared::new(&config, base_url, keys, http));
        let app = router(shared.clone());
        let stopping = shared.stopping.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(stopping.cancelled_owned())
                .await;
            if let Err(err) = served {
                tracing::error!(error = %err, "the emulator's server failed");
            }
        });
        tracing::info!(%addr, base_url = %shared.base_url, "Teams emulator started");
        Ok(Emulator {
            server: Arc::new(Server {
                task: Mutex::new(Some(task)),
                stopping: shared.stopping.clone(),
            }),
            shared,
        })
    }

    /// The base URL, e.g. `http://127.0.0.1:41234` (no trailing slash).
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// The Entra token endpoint for multi-tenant bots.
    pub fn token_url(&self) -> String {
        format!(
            "{}/botframework.com/oauth2/v2.0/token",
            self.shared.base_url
        )
    }

    /// The Bot Framework OpenID metadata document.
    pub fn openid_metadata_url(&self) -> String {
        format!(
            "{}/v1/.well-known/openidconfiguration",
            self.shared.base_url
        )
    }

    /// The tenant-scoped serviceUrl activities carry: `{base}/amer/{tenant}/`.
    pub fn service_url(&self, tenant_id: &str) -> String {
        self.shared.service_url(tenant_id)
    }

    /// The default proactive serviceUrl: `{base}/teams/`.
    pub fn default_service_url(&self) -> String {
        format!("{}/teams/", self.shared.base_url)
    }

    /// The bot's app id.
    pub fn app_id(&self) -> String {
        self.shared.app_id.clone()
    }

    /// Where "Teams" POSTs activities from now on.
    pub fn set_bot_endpoint(&self, url: &str) {
        lock(&self.shared.settings).bot_endpoint = Some(url.to_owned());
    }

    /// Turns the Bot Connector rate limits on or off.
    pub fn set_rate_limits(&self, on: bool) {
        lock(&self.shared.settings).rate_limits = on;
    }

    /// Sets the delay before answering each Bot Connector call.
    pub fn set_latency(&self, latency: Duration) {
        lock(&self.shared.settings).latency = latency;
    }

    /// The user's personal conversation id with the bot (stable per user).
    pub fn personal_conversation_id(&self, user: &TeamsUser) -> String {
        lock(&self.shared.directory).personal_conversation_id(user)
    }

    /// The user's `29:` id as the bot sees it.
    pub fn user_id(&self, user: &TeamsUser) -> String {
        lock(&self.shared.directory).user_id(user)
    }

    /// `installationUpdate` with `action: "add"` in the user's personal chat.
    pub fn install_activity(&self, user: &TeamsUser) -> Value {
        teams::install_activity(&self.shared, user)
    }

    /// `conversationUpdate` adding the bot to the user's personal chat.
    pub fn bot_added_activity(&self, user: &TeamsUser) -> Value {
        teams::bot_added_activity(&self.shared, user)
    }

    /// `installationUpdate` with `action: "remove"`.
    pub fn uninstall_activity(&self, user: &TeamsUser) -> Value {
        teams::uninstall_activity(&self.shared, user)
    }

    /// A `message` from the user in their personal chat.
    pub fn message_activity(&self, user: &TeamsUser, text: &str) -> Value {
        teams::message_activity(&self.shared, user, text)
    }

    /// The `Authorization` value ("Bearer …") Teams would send with `activity`, spoiled as
    /// `variant` says; `None` for [`TokenVariant::NoAuthorization`].
    pub fn authorization(&self, activity: &Value, variant: TokenVariant) -> Option<String> {
        teams::authorization(&self.shared, activity, variant)
    }

    /// POSTs `activity` to the bot endpoint with that authorization; returns the bot's HTTP
    /// status and body. The conversation and user it names become known to the Bot Connector
    /// (and install events change the roster) whatever the bot answers.
    pub async fn post_activity(
        &self,
        activity: &Value,
        variant: TokenVariant,
    ) -> anyhow::Result<(u16, String)> {
        teams::post_activity(&self.shared, activity, variant).await
    }

    /// Installs the app for the user: `installationUpdate add`, then the bot joining the chat.
    pub async fn install(&self, user: &TeamsUser) -> anyhow::Result<InstallOutcome> {
        teams::install(&self.shared, user).await
    }

    /// Uninstalls the app: `installationUpdate remove`; later sends to the chat get 403
    /// `BotNotInConversationRoster` until the user installs again. Returns the bot's status.
    pub async fn uninstall(&self, user: &TeamsUser) -> anyhow::Result<u16> {
        let activity = self.uninstall_activity(user);
        Ok(self.post_activity(&activity, TokenVariant::Valid).await?.0)
    }

    /// The user writes `text` to the bot; returns the bot's status.
    pub async fn send_user_message(&self, user: &TeamsUser, text: &str) -> anyhow::Result<u16> {
        let activity = self.message_activity(user, text);
        Ok(self.post_activity(&activity, TokenVariant::Valid).await?.0)
    }

    /// The `invoke` (`name: "adaptiveCard/action"`) Teams sends when the user presses an
    /// `Action.Execute` with `verb` on the card of the bot's message `reply_to_id` in their
    /// personal chat: `value: {action: {type, title?, id?, verb, data}, trigger: "manual"}`.
    /// `title` and `id` are the card's when the stored message has that action; an empty `verb`
    /// is left out. For posting with [`post_activity`](Self::post_activity), e.g. with a
    /// spoiled token; [`press_card_action`](Self::press_card_action) sends it as Teams does.
    pub fn card_action_activity(
        &self,
        user: &TeamsUser,
        reply_to_id: &str,
        verb: &str,
        data: Value,
    ) -> Value {
        teams::card_action_activity(&self.shared, user, reply_to_id, verb, data)
    }

    /// The `message` Teams sends when the user presses an `Action.Submit` on the card of the
    /// bot's message `reply_to_id`: empty `text`, `value` = `data`, `replyToId`.
    pub fn card_submit_activity(&self, user: &TeamsUser, reply_to_id: &str, data: Value) -> Value {
        teams::card_submit_activity(&self.shared, user, reply_to_id, data)
    }

    /// The read receipt event (`name: "application/vnd.microsoft.readReceipt"`,
    /// `value: {lastReadMessageId}`) of the user's personal chat.
    pub fn read_receipt_activity(&self, user: &TeamsUser, last_read_message_id: &str) -> Value {
        teams::read_receipt_activity(&self.shared, user, last_read_message_id)
    }

    /// The user presses an `Action.Execute` with `verb` and `data` on the card of the bot's
    /// message `reply_to_id` in their personal chat. Returns the bot's HTTP status and body.
    /// As Teams shows it to that user, an answer `{"statusCode": 200, "type":
    /// "application/vnd.microsoft.card.adaptive", "value": card}` replaces the message's card,
    /// and a text answer (`application/vnd.microsoft.activity.message`) or an error's message
    /// is kept in [`ReceivedActivity::card_answer`]. Fails when the user has no chat with the
    /// bot, the message is not in it, or the bot cannot be reached.
    pub async fn press_card_action(
        &self,
        user: &TeamsUser,
        reply_to_id: &str,
        verb: &str,
        data: Value,
    ) -> anyhow::Result<InvokeAnswer> {
        teams::press_card_action(&self.shared, user, reply_to_id, verb, data).await
    }

    /// The user presses an `Action.Submit` with `data` on the card of the bot's message
    /// `reply_to_id`; returns the bot's status. Fails like
    /// [`press_card_action`](Self::press_card_action).
    pub async fn submit_card(
        &self,
        user: &TeamsUser,
        reply_to_id: &str,
        data: Value,
    ) -> anyhow::Result<u16> {
        teams::submit_card(&self.shared, user, reply_to_id, data).await
    }

    /// The user has read their personal chat up to the bot's message `last_read_message_id`;
    /// returns the bot's status. Fails when the user has no chat with the bot or the bot
    /// cannot be reached.
    pub async fn send_read_receipt(
        &self,
        user: &TeamsUser,
        last_read_message_id: &str,
    ) -> anyhow::Result<u16> {
        teams::send_read_receipt(&self.shared, user, last_read_message_id).await
    }

    /// The team's id, which is also its General channel's conversation id.
    pub fn team_conversation_id(&self, team: &TeamsTeam) -> String {
        crate::directory::team_id(&team.tenant_id, &team.aad_group_id)
    }

    /// `installationUpdate add` for a team, from `by`.
    pub fn team_install_activity(&self, team: &TeamsTeam, by: &TeamsUser) -> Value {
        teams::team_install_activity(&self.shared, team, by)
    }

    /// `conversationUpdate` with `eventType: "teamMemberAdded"` adding the bot to a team.
    pub fn team_bot_added_activity(&self, team: &TeamsTeam, by: &TeamsUser) -> Value {
        teams::team_bot_added_activity(&self.shared, team, by)
    }

    /// Installs the app in a team (both activities); the bot may then post in its channels
    /// and open 1:1 chats with its members.
    pub async fn install_team(
        &self,
        team: &TeamsTeam,
        by: &TeamsUser,
    ) -> anyhow::Result<InstallOutcome> {
        teams::install_team(&self.shared, team, by).await
    }

    /// Removes the app from a team; returns the bot's status for the `installationUpdate`.
    pub async fn uninstall_team(&self, team: &TeamsTeam, by: &TeamsUser) -> anyhow::Result<u16> {
        teams::uninstall_team(&self.shared, team, by).await
    }

    /// Makes `user` a member of `team` (no activity is sent, as for a member who was there
    /// before the bot).
    pub fn add_team_member(&self, team: &TeamsTeam, user: &TeamsUser) {
        let mut directory = lock(&self.shared.directory);
        directory.register_team(team);
        directory.add_team_member(team, user);
    }

    /// What the bot sent to a conversation, in order.
    pub fn activities(&self, conversation_id: &str) -> Vec<ReceivedActivity> {
        lock(&self.shared.directory).activities(conversation_id)
    }

    /// Every Bot Connector and token request so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.recorder.all()
    }

    /// Access tokens issued.
    pub fn token_requests(&self) -> usize {
        self.stats().token_issues
    }

    /// 429 answers given.
    pub fn throttled_count(&self) -> usize {
        self.stats().throttled
    }

    /// All counters.
    pub fn stats(&self) -> Stats {
        self.shared.recorder.counters.snapshot()
    }

    /// Adds a fault rule (after those already pending).
    pub fn inject_fault(&self, fault: Fault) {
        lock(&self.shared.faults).push(fault);
    }

    /// Removes every pending fault rule.
    pub fn clear_faults(&self) {
        lock(&self.shared.faults).clear();
    }

    /// Stops serving, letting open requests finish for a few seconds.
    pub async fn shutdown(self) {
        self.shared.stopping.cancel();
        let task = lock(&self.server.task).take();
        if let Some(mut task) = task
            && tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

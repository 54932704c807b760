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
use crate::directory::{
    AppInstallation, CatalogApp, DirectoryGroup, DirectoryUser, GraphPermission, ReceivedActivity,
    ReceivedCounts, TeamsTeam, TeamsUser,
};
use crate::faults::Fault;
use crate::ids::UserKey;
use crate::keys::{TokenVariant, key_set};
use crate::population::GeneratedUsers;
use crate::recorder::{RecordedRequest, Stats, lock};
use crate::state::Shared;
use crate::teams::{self, InstallOutcome, InvokeAnswer};
use crate::{connector, entra, graph, inspect, page};

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
        .merge(graph::routes())
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

    /// Turns the rate limits on or off: the Bot Connector's and Graph's.
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
        crate::ids::team_id(&team.tenant_id, &team.aad_group_id)
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

    /// Gives `team` (registered if new; installed or not) `count` generated members after
    /// those added one by one, replacing any earlier count: member `i` is
    /// [`GeneratedUsers::user`]`(i)` whatever the count. Nothing is sent to the bot; once the
    /// app is in the team, `GET …/pagedmembers` lists them and the bot may open a 1:1 chat with
    /// each. Takes microseconds whatever the count: members are computed, not stored.
    pub fn generate_team_members(&self, team: &TeamsTeam, count: usize) -> GeneratedUsers {
        lock(&self.shared.directory).generate_team_members(team, count)
    }

    /// Gives the tenant `count` generated users, the set named `cohort`, each with the app
    /// installed personally — without an `installationUpdate` to the bot for each: the bot
    /// learns of them only if a test tells it, or when it opens their chats with
    /// `POST v3/conversations`. Their personal chats (see
    /// [`personal_conversation_id`](Self::personal_conversation_id)) take sends at once.
    /// Replaces any earlier count of the same cohort.
    pub fn generate_tenant_users(
        &self,
        tenant_id: &str,
        cohort: &str,
        count: usize,
    ) -> GeneratedUsers {
        lock(&self.shared.directory).generate_tenant_users(tenant_id, cohort, count)
    }

    /// The Graph stand-in's root, what `https://graph.microsoft.com` is to Graph:
    /// `{base}/graph`. Calls go to `{graph_url}/v1.0/…`.
    pub fn graph_url(&self) -> String {
        self.shared.graph_root()
    }

    /// The scope of Graph tokens: `{graph_url}/.default`.
    pub fn graph_scope(&self) -> String {
        format!("{}/.default", self.shared.graph_root())
    }

    /// A tenant's token endpoint, `{base}/{tenant}/oauth2/v2.0/token`, where Graph tokens for
    /// that tenant come from.
    pub fn tenant_token_url(&self, tenant_id: &str) -> String {
        format!("{}/{tenant_id}/oauth2/v2.0/token", self.shared.base_url)
    }

    /// The app's manifest id ([`EmulatorConfig::teams_app_id`], else the app id): the
    /// `externalId` catalogs know it by.
    pub fn teams_app_id(&self) -> String {
        lock(&self.shared.directory).manifest_id().to_owned()
    }

    /// Adds a user to their tenant's directory (replacing one with the same object id). They
    /// do not have the app until they install it in Teams or Graph installs it for them.
    pub fn add_directory_user(&self, user: &DirectoryUser) {
        lock(&self.shared.directory).add_directory_user(user);
    }

    /// Gives the tenant's directory `count` generated users, the set named `cohort`, none of
    /// whom has the app: enabled members whose UPN and mail are their address
    /// ([`GeneratedUsers::directory_user`]). Computed, not stored: a million cost nothing.
    /// Replaces any earlier count of the same cohort.
    pub fn generate_directory_users(
        &self,
        tenant_id: &str,
        cohort: &str,
        count: usize,
    ) -> GeneratedUsers {
        lock(&self.shared.directory).generate_directory_users(tenant_id, cohort, count)
    }

    /// Adds a group to its tenant's directory (replacing one with the same id). Members may
    /// be users, nested groups (added before or after) and ranges of generated users.
    pub fn create_group(&self, group: &DirectoryGroup) {
        lock(&self.shared.directory).add_group(group);
    }

    /// Puts the app (its manifest id, [`teams_app_id`](Self::teams_app_id)) in the tenant's
    /// org catalog, and returns its catalog entry: its `id` is the tenant's own.
    pub fn put_app_in_catalog(&self, tenant_id: &str) -> CatalogApp {
        let mut directory = lock(&self.shared.directory);
        let app = CatalogApp::organization(
            tenant_id,
            directory.manifest_id(),
            crate::directory::APP_NAME,
        );
        directory.add_catalog_app(tenant_id, &app);
        app
    }

    /// Puts an app in the tenant's catalog (replacing one with the same manifest id). Only
    /// the app with the emulator's manifest id has the bot; others install without a chat.
    pub fn add_catalog_app(&self, tenant_id: &str, app: &CatalogApp) {
        lock(&self.shared.directory).add_catalog_app(tenant_id, app);
    }

    /// Takes the app with this manifest id out of the tenant's catalog.
    pub fn remove_catalog_app(&self, tenant_id: &str, manifest_id: &str) {
        lock(&self.shared.directory).remove_catalog_app(tenant_id, manifest_id);
    }

    /// The tenant's app catalog, as Graph lists it.
    pub fn catalog(&self, tenant_id: &str) -> Vec<CatalogApp> {
        lock(&self.shared.directory).catalog(tenant_id)
    }

    /// Withholds these application permissions in the tenant, granting every other (an
    /// empty list grants them all again). Graph calls needing one answer 403
    /// `Authorization_RequestDenied` from now on, whatever token they carry.
    pub fn withhold_graph_permissions(&self, tenant_id: &str, withheld: &[GraphPermission]) {
        lock(&self.shared.directory).withhold_permissions(tenant_id, withheld);
    }

    /// Whether the user has the app installed personally, and how it got there.
    pub fn app_installation(
        &self,
        tenant_id: &str,
        aad_object_id: &str,
    ) -> Option<AppInstallation> {
        lock(&self.shared.directory).installation(&UserKey::new(tenant_id, aad_object_id))
    }

    /// The user's personal chat with the bot as Graph names it (`19:…@unq.gbl.spaces`): the
    /// same chat as [`personal_conversation_id`](Self::personal_conversation_id), which the
    /// Bot Connector takes too.
    pub fn graph_chat_id(&self, user: &TeamsUser) -> String {
        crate::ids::graph_chat_id(&self.shared.app_id, &user.tenant_id, &user.aad_object_id)
    }

    /// What the bot sent to a conversation, in order: the last
    /// [`EmulatorConfig::keep_per_conversation`] at most, fewer once
    /// [`EmulatorConfig::keep_activities`] were kept in all.
    pub fn activities(&self, conversation_id: &str) -> Vec<ReceivedActivity> {
        lock(&self.shared.directory).activities(conversation_id)
    }

    /// How many activities of the bot were accepted in a conversation, kept or dropped.
    pub fn received_count(&self, conversation_id: &str) -> u64 {
        lock(&self.shared.directory).received_count(conversation_id)
    }

    /// How many conversations received how many activities, in one tenant or (`None`) all.
    pub fn received_counts(&self, tenant_id: Option<&str>) -> ReceivedCounts {
        lock(&self.shared.directory).received_counts(tenant_id)
    }

    /// The Bot Connector, Graph and token requests, in order: the last
    /// [`EmulatorConfig::keep_requests`].
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

    /// All counters, overall and per tenant; exact however much was dropped.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
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

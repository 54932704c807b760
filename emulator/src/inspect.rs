//! The emulator's own JSON API under `/_emulator`: inspection, settings, faults, acting as
//! Teams, and a Server-Sent Events stream. The web page uses it, and so can scripts and
//! tests in other languages.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use crate::directory::{
    APP_NAME, CatalogApp, ConversationFilter, DirectoryGroup, DirectoryUser, DistributionMethod,
    GraphPermission, TeamsTeam, TeamsUser,
};
use crate::faults::Fault;
use crate::ids::UserKey;
use crate::keys::TokenVariant;
use crate::recorder::lock;
use crate::state::Shared;
use crate::teams;

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/_emulator/info", get(info))
        .route("/_emulator/conversations", get(conversations))
        .route("/_emulator/received-counts", get(received_counts))
        .route("/_emulator/traffic", get(traffic))
        .route("/_emulator/conversations/{id}/activities", get(activities))
        .route("/_emulator/conversations/{id}/inbound", get(inbound))
        .route("/_emulator/requests", get(requests))
        .route("/_emulator/stats", get(stats))
        .route(
            "/_emulator/faults",
            get(faults).post(add_faults).delete(clear_faults),
        )
        .route("/_emulator/settings", get(settings).post(change_settings))
        .route("/_emulator/teams/install", post(install))
        .route("/_emulator/teams/uninstall", post(uninstall))
        .route("/_emulator/teams/message", post(message))
        .route("/_emulator/teams/card-action", post(card_action))
        .route("/_emulator/teams/card-submit", post(card_submit))
        .route("/_emulator/teams/read-receipt", post(read_receipt))
        .route("/_emulator/teams/team/install", post(install_team))
        .route("/_emulator/teams/team/uninstall", post(uninstall_team))
        .route("/_emulator/teams/team/members", post(generate_team_members))
        .route("/_emulator/teams/tenant/users", post(generate_tenant_users))
        .route("/_emulator/events", get(events))
        .route("/_emulator/graph/users", post(add_directory_users))
        .route(
            "/_emulator/graph/users/generate",
            post(generate_directory_users),
        )
        .route("/_emulator/graph/groups", post(create_groups))
        .route(
            "/_emulator/graph/catalog",
            get(catalog)
                .post(add_to_catalog)
                .delete(remove_from_catalog),
        )
        .route(
            "/_emulator/graph/permissions",
            get(permissions).post(withhold_permissions),
        )
        .route("/_emulator/graph/installation", get(installation))
        .route("/_emulator/graph/people", get(people))
}

async fn info(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let base = &shared.base_url;
    Json(json!({
        "appId": shared.app_id,
        "baseUrl": base,
        "tokenUrl": format!("{base}/botframework.com/oauth2/v2.0/token"),
        "openIdMetadataUrl": format!("{base}/v1/.well-known/openidconfiguration"),
        "serviceUrlTemplate": format!("{base}/amer/{{tenantId}}/"),
        "defaultServiceUrl": format!("{base}/teams/"),
        "issuer": shared.issuer,
        "graphUrl": shared.graph_root(),
        "graphScope": format!("{}/.default", shared.graph_root()),
        "graphTokenUrlTemplate": format!("{base}/{{tenantId}}/oauth2/v2.0/token"),
        "graphRequestsPerSecond": shared.graph_requests_per_second,
        "teamsAppId": lock(&shared.directory).manifest_id(),
        "settings": shared.settings(),
        "tenantRequestsPerSecond": shared.tenant_requests_per_second,
        "retention": shared.retention,
    }))
}

async fn conversations(
    State(shared): State<Arc<Shared>>,
    Query(filter): Query<ConversationFilter>,
) -> Response {
    Json(lock(&shared.directory).summaries(&filter)).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TenantQuery {
    tenant_id: Option<String>,
}

async fn received_counts(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<TenantQuery>,
) -> Response {
    Json(lock(&shared.directory).received_counts(query.tenant_id.as_deref())).into_response()
}

/// Tenants the traffic panel lists unless asked for another number.
const TRAFFIC_TENANTS: usize = 20;

async fn traffic(State(shared): State<Arc<Shared>>, Query(limit): Query<Limit>) -> Response {
    let limit = limit.limit.unwrap_or(TRAFFIC_TENANTS);
    let report =
        shared
            .recorder
            .traffic
            .report(Instant::now(), limit, shared.tenant_requests_per_second);
    Json(report).into_response()
}

async fn activities(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    Json(lock(&shared.directory).activities(&id)).into_response()
}

async fn inbound(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    Json(lock(&shared.directory).inbound(&id)).into_response()
}

#[derive(Debug, Deserialize)]
struct Limit {
    limit: Option<usize>,
}

async fn requests(State(shared): State<Arc<Shared>>, Query(limit): Query<Limit>) -> Response {
    match limit.limit {
        Some(limit) => Json(shared.recorder.last(limit)).into_response(),
        None => Json(shared.recorder.all()).into_response(),
    }
}

async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.stats()).into_response()
}

async fn faults(State(shared): State<Arc<Shared>>) -> Response {
    Json(lock(&shared.faults).pending()).into_response()
}

/// One fault or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FaultsBody {
    One(Fault),
    Many(Vec<Fault>),
}

async fn add_faults(State(shared): State<Arc<Shared>>, Json(body): Json<FaultsBody>) -> Response {
    let added = match body {
        FaultsBody::One(fault) => vec![fault],
        FaultsBody::Many(faults) => faults,
    };
    let mut faults = lock(&shared.faults);
    let count = added.len();
    for fault in added {
        faults.push(fault);
    }
    (
        StatusCode::CREATED,
        Json(json!({ "added": count, "pending": faults.pending().len() })),
    )
        .into_response()
}

async fn clear_faults(State(shared): State<Arc<Shared>>) -> StatusCode {
    lock(&shared.faults).clear();
    StatusCode::NO_CONTENT
}

async fn settings(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.settings()).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SettingsChange {
    rate_limits: Option<bool>,
    latency_ms: Option<u64>,
    bot_endpoint: Option<String>,
}

async fn change_settings(
    State(shared): State<Arc<Shared>>,
    Json(change): Json<SettingsChange>,
) -> Response {
    let mut settings = lock(&shared.settings);
    if let Some(on) = change.rate_limits {
        settings.rate_limits = on;
    }
    if let Some(ms) = change.latency_ms {
        settings.latency = Duration::from_millis(ms);
    }
    if let Some(endpoint) = change.bot_endpoint {
        settings.bot_endpoint = Some(endpoint);
    }
    Json(settings.clone()).into_response()
}

/// A user acting in Teams, as the page and scripts describe them.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UserAct {
    tenant_id: String,
    aad_object_id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    text: Option<String>,
}

impl UserAct {
    fn user(&self) -> TeamsUser {
        TeamsUser::new(&self.tenant_id, &self.aad_object_id, &self.name)
    }
}

/// The bot could not be reached: a gateway failure from the page's point of view.
fn unreachable(err: &anyhow::Error) -> Response {
    (
        StatusCode::BAD_GATEWAY,
        Json(json!({ "error": format!("{err:#}") })),
    )
        .into_response()
}

async fn install(State(shared): State<Arc<Shared>>, Json(act): Json<UserAct>) -> Response {
    match teams::install(&shared, &act.user()).await {
        Ok(outcome) => Json(outcome).into_response(),
        Err(err) => unreachable(&err),
    }
}

async fn uninstall(State(shared): State<Arc<Shared>>, Json(act): Json<UserAct>) -> Response {
    let user = act.user();
    let activity = teams::uninstall_activity(&shared, &user);
    respond_with_status(&shared, &user, activity).await
}

async fn message(State(shared): State<Arc<Shared>>, Json(act): Json<UserAct>) -> Response {
    let user = act.user();
    let Some(text) = act.text.as_deref().filter(|text| !text.is_empty()) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "text is required" })),
        )
            .into_response();
    };
    let activity = teams::message_activity(&shared, &user, text);
    respond_with_status(&shared, &user, activity).await
}

async fn respond_with_status(shared: &Shared, user: &TeamsUser, activity: Value) -> Response {
    match teams::post_activity(shared, &activity, TokenVariant::Valid).await {
        Ok((status, body)) => Json(json!({
            "conversationId": lock(&shared.directory).personal_conversation_id(user),
            "activityId": activity.get("id"),
            "status": status,
            "body": body,
        }))
        .into_response(),
        Err(err) => unreachable(&err),
    }
}

/// A user pressing a button on the card of one of the bot's messages.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CardAct {
    tenant_id: String,
    aad_object_id: String,
    reply_to_id: String,
    /// `Action.Execute` only.
    #[serde(default)]
    verb: String,
    #[serde(default = "empty_object")]
    data: Value,
}

fn empty_object() -> Value {
    json!({})
}

/// A user who has read their chat up to a message.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReadAct {
    tenant_id: String,
    aad_object_id: String,
    last_read_message_id: String,
}

fn not_found(message: String) -> Response {
    (StatusCode::NOT_FOUND, Json(json!({ "error": message }))).into_response()
}

/// The user as "Teams" knows them (with their name and zone); why not, for one never seen.
fn known_user(shared: &Shared, tenant_id: &str, aad_object_id: &str) -> Result<TeamsUser, String> {
    lock(&shared.directory)
        .find_user(tenant_id, aad_object_id)
        .ok_or_else(|| {
            format!(
                "unknown user {aad_object_id} of tenant {tenant_id}: install the app for them first"
            )
        })
}

/// An unknown chat or message is the caller's mistake (404); anything else means the bot
/// could not be reached.
fn act_failed(err: &anyhow::Error) -> Response {
    match err.downcast_ref::<teams::NotFound>() {
        Some(missing) => not_found(missing.to_string()),
        None => unreachable(err),
    }
}

async fn card_action(State(shared): State<Arc<Shared>>, Json(act): Json<CardAct>) -> Response {
    let user = match known_user(&shared, &act.tenant_id, &act.aad_object_id) {
        Ok(user) => user,
        Err(unknown) => return not_found(unknown),
    };
    match teams::press_card_action(&shared, &user, &act.reply_to_id, &act.verb, act.data).await {
        Ok(answer) => Json(answer).into_response(),
        Err(err) => act_failed(&err),
    }
}

async fn card_submit(State(shared): State<Arc<Shared>>, Json(act): Json<CardAct>) -> Response {
    let user = match known_user(&shared, &act.tenant_id, &act.aad_object_id) {
        Ok(user) => user,
        Err(unknown) => return not_found(unknown),
    };
    match teams::submit_card(&shared, &user, &act.reply_to_id, act.data).await {
        Ok(status) => Json(json!({ "status": status })).into_response(),
        Err(err) => act_failed(&err),
    }
}

async fn read_receipt(State(shared): State<Arc<Shared>>, Json(act): Json<ReadAct>) -> Response {
    let user = match known_user(&shared, &act.tenant_id, &act.aad_object_id) {
        Ok(user) => user,
        Err(unknown) => return not_found(unknown),
    };
    match teams::send_read_receipt(&shared, &user, &act.last_read_message_id).await {
        Ok(status) => Json(json!({ "status": status })).into_response(),
        Err(err) => act_failed(&err),
    }
}

/// A team and the user acting in it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TeamAct {
    tenant_id: String,
    aad_group_id: String,
    #[serde(default)]
    team_name: String,
    aad_object_id: String,
    #[serde(default)]
    name: String,
    /// Also give the team this many generated members.
    #[serde(default)]
    generate_members: Option<usize>,
}

impl TeamAct {
    fn team(&self) -> TeamsTeam {
        TeamsTeam::new(&self.tenant_id, &self.aad_group_id, &self.team_name)
    }

    fn user(&self) -> TeamsUser {
        TeamsUser::new(&self.tenant_id, &self.aad_object_id, &self.name)
    }
}

async fn install_team(State(shared): State<Arc<Shared>>, Json(act): Json<TeamAct>) -> Response {
    let team = act.team();
    let outcome = match teams::install_team(&shared, &team, &act.user()).await {
        Ok(outcome) => outcome,
        Err(err) => return unreachable(&err),
    };
    let mut answer = json!(outcome);
    if let Some(count) = act.generate_members {
        let generated = lock(&shared.directory).generate_team_members(&team, count);
        answer["generatedMembers"] = json!(generated);
    }
    Json(answer).into_response()
}

/// A team to give generated members, installed or not.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TeamMembers {
    tenant_id: String,
    aad_group_id: String,
    #[serde(default)]
    team_name: String,
    count: usize,
}

async fn generate_team_members(
    State(shared): State<Arc<Shared>>,
    Json(request): Json<TeamMembers>,
) -> Response {
    let team = TeamsTeam::new(
        &request.tenant_id,
        &request.aad_group_id,
        &request.team_name,
    );
    let generated = lock(&shared.directory).generate_team_members(&team, request.count);
    Json(json!({
        "teamId": crate::ids::team_id(&team.tenant_id, &team.aad_group_id),
        "generatedMembers": generated,
    }))
    .into_response()
}

/// Users of a tenant who have the app, generated.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TenantUsers {
    tenant_id: String,
    /// Names the set, so that a tenant can have several; `users` unless given.
    #[serde(default = "default_cohort")]
    cohort: String,
    count: usize,
}

fn default_cohort() -> String {
    "users".to_owned()
}

async fn generate_tenant_users(
    State(shared): State<Arc<Shared>>,
    Json(request): Json<TenantUsers>,
) -> Response {
    let generated = lock(&shared.directory).generate_tenant_users(
        &request.tenant_id,
        &request.cohort,
        request.count,
    );
    Json(generated).into_response()
}

async fn uninstall_team(State(shared): State<Arc<Shared>>, Json(act): Json<TeamAct>) -> Response {
    let team = act.team();
    match teams::uninstall_team(&shared, &team, &act.user()).await {
        Ok(status) => Json(json!({
            "conversationId": crate::ids::team_id(&team.tenant_id, &team.aad_group_id),
            "status": status,
        }))
        .into_response(),
        Err(err) => unreachable(&err),
    }
}

/// Server-Sent Events: `activity` when the bot sends, updates or deletes (or a card action's
/// answer changes one of its messages), `toBot` when
/// "Teams" posts to the bot. The stream ends when the emulator stops, so that a page left
/// open does not hold the shutdown.
async fn events(
    State(shared): State<Arc<Shared>>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let receiver = shared.events.subscribe();
    let stopping = shared.stopping.clone();
    let stream = futures_util::stream::unfold(
        (receiver, stopping),
        |(mut receiver, stopping)| async move {
            loop {
                let next = tokio::select! {
                    () = stopping.cancelled() => return None,
                    next = receiver.recv() => next,
                };
                match next {
                    Ok(event) => {
                        let Ok(sse) = SseEvent::default().event(event.name()).json_data(&event)
                        else {
                            continue;
                        };
                        return Some((Ok(sse), (receiver, stopping)));
                    }
                    // A slow page misses some events; it reloads the conversation on the next.
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return None,
                }
            }
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// One item or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(item) => vec![item],
            OneOrMany::Many(items) => items,
        }
    }
}

/// Adds directory users (one or a list; see `DirectoryUser`): `{"added": n, "users": [...]}`
/// with the ids they were given.
async fn add_directory_users(
    State(shared): State<Arc<Shared>>,
    Json(body): Json<OneOrMany<DirectoryUser>>,
) -> Response {
    let users = body.into_vec();
    let mut directory = lock(&shared.directory);
    for user in &users {
        directory.add_directory_user(user);
    }
    (
        StatusCode::CREATED,
        Json(json!({ "added": users.len(), "users": users })),
    )
        .into_response()
}

async fn generate_directory_users(
    State(shared): State<Arc<Shared>>,
    Json(request): Json<TenantUsers>,
) -> Response {
    let generated = lock(&shared.directory).generate_directory_users(
        &request.tenant_id,
        &request.cohort,
        request.count,
    );
    Json(generated).into_response()
}

/// Adds groups (one or a list; see `DirectoryGroup`), answered with the ids they were given.
async fn create_groups(
    State(shared): State<Arc<Shared>>,
    Json(body): Json<OneOrMany<DirectoryGroup>>,
) -> Response {
    let groups = body.into_vec();
    let mut directory = lock(&shared.directory);
    for group in &groups {
        directory.add_group(group);
    }
    (StatusCode::CREATED, Json(json!({ "groups": groups }))).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TenantOnly {
    tenant_id: String,
}

async fn catalog(State(shared): State<Arc<Shared>>, Query(query): Query<TenantOnly>) -> Response {
    Json(lock(&shared.directory).catalog(&query.tenant_id)).into_response()
}

/// An app to put in a tenant's catalog: the bot's unless `manifestId` names another.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CatalogRequest {
    tenant_id: String,
    manifest_id: Option<String>,
    display_name: Option<String>,
    /// `organization` (default) or `store`.
    distribution_method: Option<DistributionMethod>,
}

async fn add_to_catalog(
    State(shared): State<Arc<Shared>>,
    Json(request): Json<CatalogRequest>,
) -> Response {
    let mut directory = lock(&shared.directory);
    let manifest = request
        .manifest_id
        .unwrap_or_else(|| directory.manifest_id().to_owned());
    let name = request.display_name.unwrap_or_else(|| APP_NAME.to_owned());
    let app = match request.distribution_method {
        Some(DistributionMethod::Store) => CatalogApp::store(&manifest, &name),
        None | Some(DistributionMethod::Organization) => {
            CatalogApp::organization(&request.tenant_id, &manifest, &name)
        }
        Some(DistributionMethod::Sideloaded) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({ "error": "a sideloaded app is not in a catalog" })),
            )
                .into_response();
        }
    };
    directory.add_catalog_app(&request.tenant_id, &app);
    (StatusCode::CREATED, Json(app)).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CatalogRemoval {
    tenant_id: String,
    manifest_id: Option<String>,
}

async fn remove_from_catalog(
    State(shared): State<Arc<Shared>>,
    Query(request): Query<CatalogRemoval>,
) -> StatusCode {
    let mut directory = lock(&shared.directory);
    let manifest = request
        .manifest_id
        .unwrap_or_else(|| directory.manifest_id().to_owned());
    directory.remove_catalog_app(&request.tenant_id, &manifest);
    StatusCode::NO_CONTENT
}

fn permission_report(shared: &Shared, tenant_id: &str) -> Value {
    let granted = lock(&shared.directory).granted_permissions(tenant_id);
    let withheld: Vec<GraphPermission> = GraphPermission::ALL
        .into_iter()
        .filter(|permission| !granted.contains(permission))
        .collect();
    json!({ "tenantId": tenant_id, "granted": granted, "withheld": withheld })
}

async fn permissions(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<TenantOnly>,
) -> Response {
    Json(permission_report(&shared, &query.tenant_id)).into_response()
}

/// The application permissions a tenant withholds (every other is granted).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Withheld {
    tenant_id: String,
    #[serde(default)]
    withheld: Vec<GraphPermission>,
}

async fn withhold_permissions(
    State(shared): State<Arc<Shared>>,
    Json(request): Json<Withheld>,
) -> Response {
    lock(&shared.directory).withhold_permissions(&request.tenant_id, &request.withheld);
    Json(permission_report(&shared, &request.tenant_id)).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UserQuery {
    tenant_id: String,
    aad_object_id: String,
}

/// The user's installation of the app (with how it got there), or 404 when they do not
/// have it.
async fn installation(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<UserQuery>,
) -> Response {
    let key = UserKey::new(&query.tenant_id, &query.aad_object_id);
    match lock(&shared.directory).installation(&key) {
        Some(installation) => Json(installation).into_response(),
        None => not_found(format!(
            "user {} of tenant {} does not have the app",
            query.aad_object_id, query.tenant_id
        )),
    }
}

/// How much of the directories the page is shown.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PeopleQuery {
    tenants: Option<usize>,
    per_tenant: Option<usize>,
}

/// Tenants the people list shows unless asked for another number, and users of each.
const PEOPLE_TENANTS: usize = 8;
const PEOPLE_PER_TENANT: usize = 20;
/// The most either may be: the list is for a page, not a directory export.
const PEOPLE_MAX: usize = 200;

/// Per tenant, the directory users who never installed the app themselves (without it, or
/// with it installed through Graph): the first few, for the page.
async fn people(State(shared): State<Arc<Shared>>, Query(query): Query<PeopleQuery>) -> Response {
    let tenants = query.tenants.unwrap_or(PEOPLE_TENANTS).min(PEOPLE_MAX);
    let per_tenant = query
        .per_tenant
        .unwrap_or(PEOPLE_PER_TENANT)
        .min(PEOPLE_MAX);
    Json(lock(&shared.directory).people_without_own_install(tenants, per_tenant)).into_response()
}

//! The Microsoft Graph stand-in: the calls a bot makes to reach people who never installed it.
//!
//! Served under `{base}/graph`, which stands for `https://graph.microsoft.com`: a client
//! configured with `{base}/graph` as its Graph URL calls `{base}/graph/v1.0/…` and asks the
//! token endpoint for the scope `{base}/graph/.default`, exactly as it would with Graph.
//!
//! Each call goes through Graph's order of concerns: the token (401
//! `InvalidAuthenticationToken` without one for this audience), injected faults, the
//! tenant's rate limit (429 with `Retry-After`), the application permission the call needs
//! (403 `Authorization_RequestDenied`), the query options (400), and then the directory. Graph
//! answers from the directory of the token's tenant (`tid`) only: a user or group of another
//! tenant does not exist there, so it is 404 `Request_ResourceNotFound`, which is what Graph
//! answers for an object it does not have.
//!
//! - `odata`: `$filter`, `$select`, `$top`, `$expand`, `$count`, `$skiptoken`;
//! - `error`: Graph's error bodies.

mod error;
mod odata;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use percent_encoding::percent_decode_str;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use crate::directory::{
    CatalogApp, DirectoryGroup, DirectoryUser, Entry, GraphInstall, GraphPermission, InstalledApp,
    Listing, open_installation_id,
};
use crate::entra::traceparent;
use crate::ids;
use crate::recorder::{Counters, Operation, RecordedRequest, lock};
use crate::state::{Audience, Shared};
use crate::teams;
use error::{GRAPH_JSON, GraphError};
use odata::{Clause, Query};

/// Request bodies are small JSON objects.
const BODY_LIMIT: usize = 1024 * 1024;

/// The API version served.
const VERSION: &str = "v1.0";

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/graph/{*rest}", any(handle))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
}

/// What a Graph request asks for, from its method and path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    GetUser {
        user: String,
    },
    ListUsers,
    TransitiveMembers {
        group: String,
        users_only: bool,
    },
    CatalogApps,
    InstalledApps {
        user: String,
        installation: Option<String>,
    },
    Install {
        user: String,
    },
    Chat {
        user: String,
        installation: String,
    },
    Unknown {
        segment: String,
    },
}

impl Call {
    fn operation(&self) -> Operation {
        match self {
            Call::GetUser { .. } => Operation::GraphGetUser,
            Call::ListUsers => Operation::GraphListUsers,
            Call::TransitiveMembers { .. } => Operation::GraphListTransitiveMembers,
            Call::CatalogApps => Operation::GraphListCatalogApps,
            Call::InstalledApps { .. } => Operation::GraphListInstalledApps,
            Call::Install { .. } => Operation::GraphInstallApp,
            Call::Chat { .. } => Operation::GraphGetInstallationChat,
            Call::Unknown { .. } => Operation::GraphOther,
        }
    }

    /// The application permission the call needs (the least one that Graph documents for
    /// it among those an app reaching users needs).
    fn permission(&self) -> Option<GraphPermission> {
        match self {
            Call::GetUser { .. } | Call::ListUsers => Some(GraphPermission::UserReadAll),
            Call::TransitiveMembers { .. } => Some(GraphPermission::GroupMemberReadAll),
            Call::CatalogApps => Some(GraphPermission::AppCatalogReadAll),
            Call::InstalledApps { .. } | Call::Install { .. } | Call::Chat { .. } => {
                Some(GraphPermission::TeamsAppInstallationReadWriteSelfForUserAll)
            }
            Call::Unknown { .. } => None,
        }
    }
}

/// The path's segments after the version, percent-decoded; a key in parentheses
/// (`users('$x@y')`, Graph's form for UPNs starting with `$`) becomes a segment of its own.
fn segments(rest: &str) -> Vec<String> {
    let mut out = Vec::new();
    for raw in rest.split('/').filter(|segment| !segment.is_empty()) {
        let segment = percent_decode_str(raw).decode_utf8_lossy().into_owned();
        match segment.split_once('(') {
            Some((name, key)) if key.ends_with(')') && !name.is_empty() => {
                let key = &key[..key.len() - 1];
                let key = key
                    .strip_prefix('\'')
                    .and_then(|key| key.strip_suffix('\''))
                    .map_or_else(|| key.to_owned(), |key| key.replace("''", "'"));
                out.push(name.to_owned());
                out.push(key);
            }
            _ => out.push(segment),
        }
    }
    out
}

/// Which call a request is.
fn route(method: &Method, path: &str) -> Call {
    let rest = path.strip_prefix("/graph/").unwrap_or_default();
    let (version, rest) = rest.split_once('/').unwrap_or((rest, ""));
    if version != VERSION {
        return Call::Unknown {
            segment: version.to_owned(),
        };
    }
    let parts = segments(rest);
    let names: Vec<String> = parts.iter().map(|part| part.to_ascii_lowercase()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let get = method == Method::GET;
    let post = method == Method::POST;
    let at = |index: usize| parts[index].clone();
    match names.as_slice() {
        ["users"] if get => Call::ListUsers,
        ["users", _] if get => Call::GetUser { user: at(1) },
        ["groups", _, "transitivemembers"] if get => Call::TransitiveMembers {
            group: at(1),
            users_only: false,
        },
        ["groups", _, "transitivemembers", "microsoft.graph.user"] if get => {
            Call::TransitiveMembers {
                group: at(1),
                users_only: true,
            }
        }
        ["appcatalogs", "teamsapps"] if get => Call::CatalogApps,
        ["users", _, "teamwork", "installedapps"] if get => Call::InstalledApps {
            user: at(1),
            installation: None,
        },
        ["users", _, "teamwork", "installedapps"] if post => Call::Install { user: at(1) },
        // An installation id is base64 and may hold `/`: whatever lies between
        // `installedApps/` and `/chat` is the id, encoded or not.
        ["users", _, "teamwork", "installedapps", .., "chat"] if get && names.len() > 5 => {
            Call::Chat {
                user: at(1),
                installation: parts[4..parts.len() - 1].join("/"),
            }
        }
        ["users", _, "teamwork", "installedapps", ..] if get && names.len() > 4 => {
            Call::InstalledApps {
                user: at(1),
                installation: Some(parts[4..].join("/")),
            }
        }
        _ => Call::Unknown {
            segment: parts.last().cloned().unwrap_or_default(),
        },
    }
}

/// What a call was about, for the request log.
#[derive(Debug, Default)]
struct Target {
    /// The token's tenant.
    tenant_id: Option<String>,
    /// The personal chat an install or a chat lookup was about (its `a:` id).
    conversation_id: Option<String>,
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = OffsetDateTime::now_utc();
    let call = route(&method, uri.path());
    let request_id = uuid::Uuid::new_v4().to_string();
    let client_request_id = headers
        .get("client-request-id")
        .and_then(|value| value.to_str().ok())
        .map_or_else(|| request_id.clone(), str::to_owned);
    let mut target = Target::default();
    let (mut response, error_code) =
        match process(&shared, &call, &uri, &headers, &body, &mut target).await {
            Ok(response) => (response, None),
            Err(error) => {
                let code = error.code.clone();
                (
                    error.into_response(&request_id, &client_request_id),
                    Some(code),
                )
            }
        };
    for (name, value) in [
        ("request-id", &request_id),
        ("client-request-id", &client_request_id),
    ] {
        if let Ok(value) = HeaderValue::from_str(value) {
            response.headers_mut().insert(name, value);
        }
    }
    shared.recorder.record(RecordedRequest {
        at,
        method: method.as_str().to_owned(),
        path: uri.path().to_owned(),
        operation: call.operation(),
        conversation_id: target.conversation_id,
        tenant_id: target.tenant_id,
        status: response.status().as_u16(),
        error_code,
        had_authorization: headers.contains_key(header::AUTHORIZATION),
        traceparent: traceparent(&headers),
    });
    response
}

/// The tenant of the bearer token, which must be a Graph token the token endpoint issued and
/// that has not expired.
fn authenticate(shared: &Shared, headers: &HeaderMap) -> Result<String, GraphError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty())
        .ok_or_else(|| GraphError::unauthenticated("Access token is empty."))?;
    match lock(&shared.tokens).check(token) {
        Some(issued) if issued.audience == Audience::Graph => Ok(issued.tenant_id),
        Some(_) => Err(GraphError::unauthenticated(
            "Access token validation failure. Invalid audience.",
        )),
        None => Err(GraphError::unauthenticated(
            "Access token validation failure. The token was not issued by this authority or has expired.",
        )),
    }
}

async fn process(
    shared: &Arc<Shared>,
    call: &Call,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
    target: &mut Target,
) -> Result<Response, GraphError> {
    let tenant = authenticate(shared, headers)?;
    target.tenant_id = Some(tenant.clone());
    if let Call::Unknown { segment } = call {
        return Err(GraphError::bad_request(format!(
            "Resource not found for the segment '{segment}'."
        )));
    }

    let fault = lock(&shared.faults).take(call.operation(), None, Some(&tenant));
    if let Some(fault) = fault {
        Counters::bump(&shared.recorder.counters.faults_applied);
        if let Some(latency) = fault.latency {
            tokio::time::sleep(latency).await;
        }
        return Err(GraphError::injected(&fault));
    }
    if shared.settings().rate_limits {
        lock(&shared.graph_limits)
            .admit(Some(&tenant), None, Instant::now())
            .map_err(GraphError::throttled)?;
    }
    // The tenant's grants as they are now, rather than the `roles` in the token: a test that
    // withholds a permission sees it refused at once, where Entra would wait for a new token.
    if let Some(permission) = call.permission()
        && !lock(&shared.directory)
            .granted_permissions(&tenant)
            .contains(&permission)
    {
        return Err(GraphError::insufficient_privileges());
    }
    let query = Query::parse(uri.query())?;
    let links = Links {
        root: shared.graph_root(),
        base: shared.base_url.clone(),
        path: uri.path().to_owned(),
        tenant: tenant.clone(),
    };

    let answer = match call {
        Call::GetUser { user } => get_user(shared, &links, &query, user)?,
        Call::ListUsers => list_users(shared, &links, &query)?,
        Call::TransitiveMembers { group, users_only } => {
            transitive_members(shared, &links, &query, group, *users_only)?
        }
        Call::CatalogApps => catalog_apps(shared, &links, &query)?,
        Call::InstalledApps { user, installation } => {
            installed_apps(shared, &links, &query, user, installation.as_deref())?
        }
        Call::Install { user } => return install(shared, &tenant, user, body, target),
        Call::Chat { user, installation } => chat(shared, &links, user, installation, target)?,
        Call::Unknown { .. } => Value::Null,
    };
    Ok(ok(&answer))
}

/// A 200 with a JSON body, as Graph types it.
fn ok(body: &Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, GRAPH_JSON)],
        body.to_string(),
    )
        .into_response()
}

/// What links in answers are made of.
#[derive(Debug)]
struct Links {
    root: String,
    base: String,
    /// The request's path, as sent.
    path: String,
    tenant: String,
}

impl Links {
    fn context(&self, fragment: &str) -> String {
        format!("{}/{VERSION}/$metadata#{fragment}", self.root)
    }
}

/// A user's properties Graph returns without `$select`.
const USER_DEFAULT: [&str; 11] = [
    "businessPhones",
    "displayName",
    "givenName",
    "jobTitle",
    "mail",
    "mobilePhone",
    "officeLocation",
    "preferredLanguage",
    "surname",
    "userPrincipalName",
    "id",
];

/// The user properties `$select` may name beside the default ones.
const USER_MORE: [&str; 2] = ["accountEnabled", "userType"];

/// A group's properties returned without `$select` (the ones the stand-in has).
const GROUP_DEFAULT: [&str; 8] = [
    "id",
    "description",
    "displayName",
    "groupTypes",
    "mail",
    "mailEnabled",
    "mailNickname",
    "securityEnabled",
];

/// Every user property the stand-in knows, `$select`able.
fn user_properties(user: &DirectoryUser) -> Map<String, Value> {
    let (given, surname) = user
        .display_name
        .split_once(' ')
        .map_or((user.display_name.as_str(), ""), |(given, surname)| {
            (given, surname)
        });
    let value = json!({
        "businessPhones": [],
        "displayName": user.display_name,
        "givenName": given,
        "jobTitle": null,
        "mail": user.mail,
        "mobilePhone": null,
        "officeLocation": null,
        "preferredLanguage": null,
        "surname": surname,
        "userPrincipalName": user.user_principal_name,
        "id": user.id,
        "accountEnabled": user.account_enabled,
        "userType": user.user_type.as_str(),
    });
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn group_properties(group: &DirectoryGroup) -> Map<String, Value> {
    let nickname: String = group
        .display_name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let value = json!({
        "id": group.id,
        "description": null,
        "displayName": group.display_name,
        "groupTypes": [],
        "mail": null,
        "mailEnabled": false,
        "mailNickname": nickname,
        "securityEnabled": true,
    });
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// The properties `$select` names, or the defaults; each name as the type spells it.
fn project(
    all: &Map<String, Value>,
    select: Option<&[String]>,
    defaults: &[&str],
) -> Map<String, Value> {
    let mut out = Map::new();
    match select {
        Some(fields) => {
            for field in fields {
                if let Some((name, value)) = all
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case(field))
                {
                    out.insert(name.clone(), value.clone());
                }
            }
        }
        None => {
            for name in defaults {
                if let Some(value) = all.get(*name) {
                    out.insert((*name).to_owned(), value.clone());
                }
            }
        }
    }
    out
}

/// Refuses a `$select` of a property none of the types listed has, as Graph does.
fn check_select(select: Option<&[String]>, types: &[(&str, &[&str])]) -> Result<(), GraphError> {
    for field in select.unwrap_or_default() {
        let known = types
            .iter()
            .any(|(_, names)| names.iter().any(|name| name.eq_ignore_ascii_case(field)));
        if !known {
            let kind = types.first().map_or("user", |(kind, _)| *kind);
            return Err(GraphError::bad_request(format!(
                "Could not find a property named '{field}' on type 'microsoft.graph.{kind}'."
            )));
        }
    }
    Ok(())
}

fn user_json(user: &DirectoryUser, select: Option<&[String]>) -> Map<String, Value> {
    project(&user_properties(user), select, &USER_DEFAULT)
}

fn get_user(shared: &Shared, links: &Links, query: &Query, id: &str) -> Result<Value, GraphError> {
    let select = query.select.as_deref();
    check_select(select, &[("user", &USER_DEFAULT), ("user", &USER_MORE)])?;
    let user = lock(&shared.directory)
        .graph_user(&links.tenant, id)
        .ok_or_else(|| GraphError::resource_not_found(id))?;
    let mut body = user_json(&user, select);
    let context = match &query.raw_select {
        Some(fields) => links.context(&format!("users({fields})/$entity")),
        None => links.context("users/$entity"),
    };
    body.insert("@odata.context".to_owned(), Value::String(context));
    Ok(Value::Object(body))
}

/// Whether a user passes a filter clause; `Err` for a property the stand-in cannot filter on.
fn user_matches(clause: &Clause, user: &DirectoryUser) -> Result<bool, GraphError> {
    let matched = if clause.is("id") {
        clause.matches_text(Some(&user.id))
    } else if clause.is("mail") {
        clause.matches_text(user.mail.as_deref())
    } else if clause.is("userPrincipalName") {
        clause.matches_text(Some(&user.user_principal_name))
    } else if clause.is("displayName") {
        clause.matches_text(Some(&user.display_name))
    } else if clause.is("accountEnabled") {
        clause.matches_bool(user.account_enabled)
    } else if clause.is("userType") {
        clause.matches_text(Some(user.user_type.as_str()))
    } else {
        return Err(GraphError::unsupported_query(format!(
            "Unsupported or invalid query filter clause specified for property '{}' of resource 'User'.",
            clause.field
        )));
    };
    Ok(matched)
}

/// Whether a clause looks users up by an identifying property.
fn is_lookup(clause: &Clause) -> bool {
    clause.is("id") || clause.is("mail") || clause.is("userPrincipalName")
}

fn list_users(shared: &Shared, links: &Links, query: &Query) -> Result<Value, GraphError> {
    let select = query.select.as_deref();
    check_select(select, &[("user", &USER_DEFAULT), ("user", &USER_MORE)])?;
    let directory = lock(&shared.directory);
    let tenant = &links.tenant;
    let branches = query
        .filter
        .as_ref()
        .map(|filter| filter.any_of.as_slice())
        .unwrap_or_default();

    // Lookups (by mail, UPN or id) find their users through indexes; any other filter walks
    // the directory, where generated users (all enabled members) pass or fail as a whole.
    let found: Vec<DirectoryUser>;
    let listing = if !branches.is_empty() && branches.iter().all(|b| b.iter().any(is_lookup)) {
        let mut seen = std::collections::HashSet::new();
        let mut users = Vec::new();
        for branch in branches {
            let Some(lookup) = branch.iter().find(|clause| is_lookup(clause)) else {
                continue;
            };
            for value in lookup.texts() {
                let candidates = if lookup.is("id") {
                    directory.graph_user(tenant, value).into_iter().collect()
                } else {
                    directory.users_by_address(tenant, value, lookup.is("userPrincipalName"))
                };
                for user in candidates {
                    let mut keep = true;
                    for clause in branch {
                        keep &= user_matches(clause, &user)?;
                    }
                    if keep && seen.insert(user.id.to_ascii_lowercase()) {
                        users.push(user);
                    }
                }
            }
        }
        found = users;
        Listing::items(found.iter().map(Entry::Stored).collect())
    } else {
        let clauses: &[Clause] = match branches {
            [] => &[],
            [only] => only,
            _ => {
                return Err(GraphError::unsupported_query(
                    "Only filters looking users up by id, mail or userPrincipalName may be joined with 'or'.",
                ));
            }
        };
        if let Some(clause) = clauses
            .iter()
            .find(|clause| !clause.is("accountEnabled") && !clause.is("userType"))
        {
            return Err(GraphError::unsupported_query(format!(
                "Unsupported or invalid query filter clause specified for property '{}' of resource 'User'.",
                clause.field
            )));
        }
        let passes = |user: &DirectoryUser| {
            clauses
                .iter()
                .all(|clause| user_matches(clause, user).unwrap_or(false))
        };
        // Every generated user is an enabled member: one of them stands for all.
        let generated = DirectoryUser {
            account_enabled: true,
            ..DirectoryUser::member(tenant.as_str(), "generated@invalid", "")
        };
        let keep_generated = passes(&generated);
        directory.user_listing(tenant, passes, keep_generated)
    };
    paged(links, query, &listing, "users", |entry| {
        entry
            .user()
            .map(|user| Value::Object(user_json(&user, select)))
    })
}

/// A page of `listing` as a Graph collection, with `@odata.nextLink` when more follow.
fn paged(
    links: &Links,
    query: &Query,
    listing: &Listing<'_>,
    context: &str,
    render: impl Fn(&Entry<'_>) -> Option<Value>,
) -> Result<Value, GraphError> {
    let print = odata::listing_fingerprint(&links.tenant, &links.path, query.raw_filter.as_deref());
    let offset = match &query.skip_token {
        Some(token) => odata::decode_skip_token(token, &print)?,
        None => 0,
    };
    let size = query.page_size();
    let total = listing.len();
    let page = listing.page(offset, size);
    let end = offset + page.len();
    let values: Vec<Value> = page.iter().filter_map(render).collect();
    let mut body = Map::new();
    body.insert(
        "@odata.context".to_owned(),
        Value::String(links.context(context)),
    );
    if query.count {
        body.insert("@odata.count".to_owned(), json!(total));
    }
    if end < total {
        let token = odata::encode_skip_token(end, &print);
        body.insert(
            "@odata.nextLink".to_owned(),
            Value::String(format!(
                "{}{}?{}",
                links.base,
                links.path,
                query.next_query(&token)
            )),
        );
    }
    body.insert("value".to_owned(), Value::Array(values));
    Ok(Value::Object(body))
}

fn transitive_members(
    shared: &Shared,
    links: &Links,
    query: &Query,
    group: &str,
    users_only: bool,
) -> Result<Value, GraphError> {
    let select = query.select.as_deref();
    if users_only {
        check_select(select, &[("user", &USER_DEFAULT), ("user", &USER_MORE)])?;
    } else {
        check_select(
            select,
            &[
                ("directoryObject", &USER_DEFAULT),
                ("directoryObject", &USER_MORE),
                ("group", &GROUP_DEFAULT),
            ],
        )?;
    }
    if query.filter.is_some() {
        return Err(GraphError::unsupported_query(
            "$filter is not supported on transitiveMembers here.",
        ));
    }
    let directory = lock(&shared.directory);
    let listing = directory
        .transitive_members(&links.tenant, group)
        .ok_or_else(|| GraphError::resource_not_found(group))?;
    let listing = if users_only {
        listing.users_only()
    } else {
        listing
    };
    let context = if users_only {
        "users"
    } else {
        "directoryObjects"
    };
    paged(links, query, &listing, context, |entry| {
        let (kind, mut properties) = match (entry.user(), entry.group()) {
            (Some(user), _) => ("#microsoft.graph.user", user_json(&user, select)),
            (None, Some(group)) => (
                "#microsoft.graph.group",
                project(&group_properties(group), select, &GROUP_DEFAULT),
            ),
            (None, None) => return None,
        };
        properties.insert("@odata.type".to_owned(), Value::String(kind.to_owned()));
        Some(Value::Object(properties))
    })
}

fn app_json(app: &CatalogApp) -> Value {
    json!({
        "id": app.id,
        "externalId": app.external_id,
        "displayName": app.display_name,
        "distributionMethod": app.distribution_method,
    })
}

/// Whether an app passes a filter clause on its properties (`prefix` is `teamsApp/` when
/// the app is an installation's).
fn app_matches(clause: &Clause, app: &CatalogApp, prefix: &str) -> Option<bool> {
    let field = clause.field.to_ascii_lowercase();
    let name = field.strip_prefix(&prefix.to_ascii_lowercase())?;
    let value = match name {
        "id" => app.id.clone(),
        "externalid" => app.external_id.clone(),
        "displayname" => app.display_name.clone(),
        "distributionmethod" => serde_json::to_value(app.distribution_method)
            .ok()?
            .as_str()?
            .to_owned(),
        _ => return None,
    };
    Some(clause.matches_text(Some(&value)))
}

/// Whether `item` passes the filter, as `matches` judges each clause (`None`: a property
/// that cannot be filtered on, 400).
fn passes_filter<T>(
    query: &Query,
    item: &T,
    matches: impl Fn(&Clause, &T) -> Option<bool>,
    resource: &str,
) -> Result<bool, GraphError> {
    let Some(filter) = &query.filter else {
        return Ok(true);
    };
    for branch in &filter.any_of {
        let mut all = true;
        for clause in branch {
            match matches(clause, item) {
                Some(matched) => all &= matched,
                None => {
                    return Err(GraphError::bad_request(format!(
                        "Invalid filter clause: the property '{}' cannot be filtered on {resource}.",
                        clause.field
                    )));
                }
            }
        }
        if all {
            return Ok(true);
        }
    }
    Ok(false)
}

fn catalog_apps(shared: &Shared, links: &Links, query: &Query) -> Result<Value, GraphError> {
    let apps = lock(&shared.directory).catalog(&links.tenant);
    let mut values = Vec::new();
    for app in &apps {
        if passes_filter(
            query,
            app,
            |clause, app| app_matches(clause, app, ""),
            "teamsApps",
        )? {
            values.push(app_json(app));
        }
    }
    Ok(json!({
        "@odata.context": links.context("appCatalogs/teamsApps"),
        "value": values,
    }))
}

/// The version of the app every installation reports.
const APP_VERSION: &str = "1.0.0";

fn app_definition(app: &CatalogApp, bot: bool, bot_app_id: &str) -> Value {
    json!({
        "id": base64_id(&format!("{}##{APP_VERSION}", app.id)),
        "teamsAppId": app.id,
        "azureADAppId": if bot { Value::String(bot_app_id.to_owned()) } else { Value::Null },
        "displayName": app.display_name,
        "version": APP_VERSION,
        "requiredResourceSpecificApplicationPermissions": [],
        "publishingState": "published",
        "shortDescription": "Notifications from Herald.",
        "description": "Proactive notifications, reminders and broadcasts, sent by Herald.",
        "lastModifiedDateTime": null,
        "createdBy": null,
    })
}

fn base64_id(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn installation_json(installed: &InstalledApp, query: &Query, bot_app_id: &str) -> Value {
    let mut body = json!({ "id": installed.installation_id });
    if query.expands("teamsApp") {
        body["teamsApp"] = app_json(&installed.app);
    }
    if query.expands("teamsAppDefinition") {
        body["teamsAppDefinition"] = app_definition(&installed.app, installed.bot, bot_app_id);
    }
    body
}

/// The directory user a `/users/{id}/…` path names, or 404.
fn path_user(shared: &Shared, tenant: &str, id: &str) -> Result<DirectoryUser, GraphError> {
    lock(&shared.directory)
        .graph_user(tenant, id)
        .ok_or_else(|| GraphError::resource_not_found(id))
}

/// The user's installation an id names, or 404.
fn find_installation(
    apps: Vec<InstalledApp>,
    installation: &str,
) -> Result<InstalledApp, GraphError> {
    let wanted = open_installation_id(installation);
    apps.into_iter()
        .find(|installed| {
            installed.installation_id == installation
                || wanted.is_some() && open_installation_id(&installed.installation_id) == wanted
        })
        .ok_or_else(|| {
            GraphError::not_found(format!(
                "The installation '{installation}' was not found for the user."
            ))
        })
}

fn installed_apps(
    shared: &Shared,
    links: &Links,
    query: &Query,
    user: &str,
    installation: Option<&str>,
) -> Result<Value, GraphError> {
    let user = path_user(shared, &links.tenant, user)?;
    let apps = lock(&shared.directory).installed_apps(&user);
    let context = format!("users('{}')/teamwork/installedApps", user.id);
    if let Some(installation) = installation {
        let installed = find_installation(apps, installation)?;
        let mut body = installation_json(&installed, query, &shared.app_id);
        body["@odata.context"] = json!(links.context(&format!("{context}/$entity")));
        return Ok(body);
    }
    let mut values = Vec::new();
    for installed in &apps {
        let matches = |clause: &Clause, installed: &InstalledApp| {
            if clause.is("id") {
                return Some(clause.matches_text(Some(&installed.installation_id)));
            }
            app_matches(clause, &installed.app, "teamsApp/")
        };
        if passes_filter(query, installed, matches, "installedApps")? {
            values.push(installation_json(installed, query, &shared.app_id));
        }
    }
    Ok(json!({
        "@odata.context": links.context(&context),
        "@odata.count": values.len(),
        "value": values,
    }))
}

/// The catalog id an `@odata.bind` names: `…/appCatalogs/teamsApps/{id}` or
/// `…/appCatalogs/teamsApps('{id}')`.
fn bound_app_id(bind: &str) -> Option<String> {
    let tail = bind.rsplit_once("teamsApps")?.1;
    let id = tail
        .strip_prefix('/')
        .or_else(|| {
            tail.strip_prefix("('")
                .and_then(|tail| tail.strip_suffix("')"))
        })?
        .trim_end_matches('/');
    (!id.is_empty() && !id.contains('/')).then(|| id.to_owned())
}

fn install(
    shared: &Arc<Shared>,
    tenant: &str,
    user: &str,
    body: &Bytes,
    target: &mut Target,
) -> Result<Response, GraphError> {
    let request: Value = serde_json::from_slice(body).map_err(|err| {
        GraphError::bad_request(format!("The request body is not valid JSON: {err}"))
    })?;
    let bind = request
        .get("teamsApp@odata.bind")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            GraphError::bad_request("The request body must bind teamsApp (teamsApp@odata.bind).")
        })?;
    let app_id = bound_app_id(bind).ok_or_else(|| {
        GraphError::bad_request(format!(
            "'{bind}' is not a link to an app of the catalog (…/appCatalogs/teamsApps/{{id}})."
        ))
    })?;
    let user = path_user(shared, tenant, user)?;
    let installed = {
        let mut directory = lock(&shared.directory);
        let app = directory
            .catalog(tenant)
            .into_iter()
            .find(|app| app.id.eq_ignore_ascii_case(&app_id))
            .ok_or_else(|| {
                GraphError::not_found(format!(
                    "The app '{app_id}' was not found in the tenant's app catalog."
                ))
            })?;
        target.conversation_id = Some(directory.personal_conversation_id(&user.teams_user()));
        directory.graph_install(&user, &app).ok_or_else(|| {
            GraphError::new(
                StatusCode::CONFLICT,
                "Conflict",
                format!("The app '{app_id}' is already installed for the user."),
            )
        })?
    };
    if let GraphInstall::Bot(teams_user) = installed {
        // Teams tells the bot after the install, as it does for one the user makes: the same
        // `installationUpdate` and `conversationUpdate`, signed, on their own time.
        let shared = Arc::clone(shared);
        tokio::spawn(async move {
            if let Err(err) = teams::install(&shared, &teams_user).await {
                tracing::warn!(error = %format!("{err:#}"), "telling the bot of an install through Graph failed");
            }
        });
    }
    Ok((StatusCode::CREATED, [(header::CONTENT_LENGTH, "0")]).into_response())
}

fn chat(
    shared: &Shared,
    links: &Links,
    user: &str,
    installation: &str,
    target: &mut Target,
) -> Result<Value, GraphError> {
    let user = path_user(shared, &links.tenant, user)?;
    let apps = lock(&shared.directory).installed_apps(&user);
    let installed = find_installation(apps, installation)?;
    if !installed.bot {
        return Err(GraphError::not_found(
            "The app has no bot: there is no chat between the user and the app.",
        ));
    }
    target.conversation_id = Some(ids::personal_conversation_id(
        &shared.app_id,
        &user.tenant_id,
        &user.id,
    ));
    Ok(json!({
        "@odata.context": links.context("chats/$entity"),
        "id": ids::graph_chat_id(&shared.app_id, &user.tenant_id, &user.id),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_calls() {
        let get = Method::GET;
        assert_eq!(route(&get, "/graph/v1.0/users"), Call::ListUsers);
        assert_eq!(
            route(&get, "/graph/v1.0/users/a%40b.com"),
            Call::GetUser {
                user: "a@b.com".to_owned()
            }
        );
        assert_eq!(
            route(&get, "/graph/v1.0/users('%24x@y.com')"),
            Call::GetUser {
                user: "$x@y.com".to_owned()
            }
        );
        assert_eq!(
            route(&get, "/graph/v1.0/users('o''neil@y.com')"),
            Call::GetUser {
                user: "o'neil@y.com".to_owned()
            }
        );
        assert_eq!(
            route(
                &get,
                "/graph/v1.0/groups/g/transitiveMembers/microsoft.graph.user"
            ),
            Call::TransitiveMembers {
                group: "g".to_owned(),
                users_only: true
            }
        );
        assert_eq!(
            route(&Method::POST, "/graph/v1.0/users/u/teamwork/installedApps"),
            Call::Install {
                user: "u".to_owned()
            }
        );
        assert_eq!(
            route(
                &get,
                "/graph/v1.0/users/u/teamwork/installedApps/ab/c%3D%3D/chat"
            ),
            Call::Chat {
                user: "u".to_owned(),
                installation: "ab/c==".to_owned()
            }
        );
        assert_eq!(
            route(&get, "/graph/v1.0/users/u/teamwork/installedApps/abc%3D"),
            Call::InstalledApps {
                user: "u".to_owned(),
                installation: Some("abc=".to_owned())
            }
        );
        assert!(matches!(
            route(&get, "/graph/beta/users"),
            Call::Unknown { .. }
        ));
        assert!(matches!(
            route(&Method::DELETE, "/graph/v1.0/users/u"),
            Call::Unknown { .. }
        ));
    }

    #[test]
    fn binds_name_a_catalog_app() {
        assert_eq!(
            bound_app_id("https://graph.microsoft.com/v1.0/appCatalogs/teamsApps/12345678-9abc")
                .as_deref(),
            Some("12345678-9abc")
        );
        assert_eq!(
            bound_app_id("http://h/graph/v1.0/appCatalogs/teamsApps('x')").as_deref(),
            Some("x")
        );
        assert_eq!(
            bound_app_id("https://graph.microsoft.com/v1.0/users/x"),
            None
        );
        assert_eq!(bound_app_id("…/appCatalogs/teamsApps/"), None);
    }
}

//! Microsoft Graph's REST calls for reaching people who never installed the app: finding a
//! user by UPN or mail, the app's catalog id, installing the app for a user and reading the
//! chat the install made, and listing a group's or a tenant's users.
//!
//! Every call names its tenant, and before it is sent: its URL must pass the Graph allowlist
//! (the token goes nowhere else, `@odata.nextLink`s included), the tenant's pace must give it
//! a turn ([`GraphPacer`]), and then it carries the tenant's own token ([`GraphTokens`]).

use std::{sync::Arc, time::Duration};

use percent_encoding::{AsciiSet, CONTROLS, NON_ALPHANUMERIC, utf8_percent_encode};
use prometheus_client::metrics::{counter::Counter, family::Family};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use url::Url;

use herald_shared::{
    allowlist::ServiceUrlAllowlist,
    config::{BotCredentials, GraphConfig},
    error::Chain,
    metrics::{Labels, Metrics},
    store::Redis,
};

use super::{
    error::GraphError,
    pace::{GraphPacer, Turn},
    token::GraphTokens,
};
use crate::bearer;

/// Everything but unreserved characters is encoded in a path segment (UPNs carry `@` and,
/// for guests, `#`; installation ids are base64).
pub(crate) const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// What a query option's value has encoded, as Graph writes its own links: spaces as `%20`
/// (not `+`, which Graph may read as a plus), quotes, and the query's delimiters.
const QUERY_VALUE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'&')
    .add(b'\'')
    .add(b'+')
    .add(b'<')
    .add(b'=')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// The API version calls are made to.
const VERSION: &str = "v1.0";

/// The user properties Herald reads.
const USER_FIELDS: &str = "id,userPrincipalName,mail,accountEnabled";

/// Graph's largest page.
const PAGE_SIZE: &str = "999";

/// The longest wait for a turn a call sits out itself; a longer one (or a paused tenant)
/// is answered [`GraphError::Held`] at once, for the job to come back later without
/// holding a delivery.
const LONGEST_WAIT: Duration = Duration::from_millis(1500);

/// How a user is named: the job contract's own names.
pub use herald_shared::job::UserName;

/// A user as Graph describes them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GraphUser {
    /// The Entra object id (`aadObjectId` in Teams' activities).
    pub id: String,
    #[serde(default)]
    pub user_principal_name: Option<String>,
    #[serde(default)]
    pub mail: Option<String>,
    #[serde(default)]
    pub account_enabled: Option<bool>,
}

/// One page of a listing of users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphPage {
    pub users: Vec<GraphUser>,
    /// The next page's link (`@odata.nextLink`), to pass back as `next`; `None` on the last.
    pub next: Option<String>,
}

/// What an install came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installed {
    /// Graph installed the app for the user now.
    Installed,
    /// The user had it already (Graph answered 409).
    AlreadyInstalled,
}

/// The calls, for metrics, logs and the permission each needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    GetUser,
    FindUserByMail,
    CatalogApp,
    InstallApp,
    Installation,
    InstallationChat,
    GroupMembers,
    DirectoryUsers,
}

impl Call {
    fn name(self) -> &'static str {
        match self {
            Call::GetUser => "get_user",
            Call::FindUserByMail => "find_user_by_mail",
            Call::CatalogApp => "catalog_app",
            Call::InstallApp => "install_app",
            Call::Installation => "installation",
            Call::InstallationChat => "installation_chat",
            Call::GroupMembers => "group_members",
            Call::DirectoryUsers => "directory_users",
        }
    }

    /// The application permission the call needs in the tenant (the least Graph documents
    /// for it), named when Graph refuses for the lack of it.
    fn permission(self) -> &'static str {
        match self {
            Call::GetUser | Call::FindUserByMail | Call::DirectoryUsers => "User.Read.All",
            Call::CatalogApp => "AppCatalog.Read.All",
            Call::InstallApp | Call::Installation | Call::InstallationChat => {
                "TeamsAppInstallation.ReadWriteSelfForUser.All"
            }
            Call::GroupMembers => "GroupMember.Read.All",
        }
    }
}

/// A success (or a status the call handles itself) and its body.
struct Answer {
    status: StatusCode,
    body: String,
}

/// A failed call and its metric label (`held` when the pacer kept it from Graph).
struct Failure {
    error: GraphError,
    outcome: &'static str,
}

impl From<GraphError> for Failure {
    fn from(error: GraphError) -> Self {
        Self {
            outcome: error.outcome(),
            error,
        }
    }
}

#[derive(Debug, Clone)]
pub struct GraphClient {
    http: reqwest::Client,
    tokens: Arc<GraphTokens>,
    pacer: GraphPacer,
    allowlist: ServiceUrlAllowlist,
    /// Graph's root, e.g. `https://graph.microsoft.com/`.
    root: Url,
    timeout: Duration,
    /// `herald_graph_requests_total{call,outcome}`.
    requests: Family<Labels, Counter>,
}

impl GraphClient {
    /// `timeout` bounds each call; pacing is shared through `redis` with every replica.
    pub fn new(
        http: reqwest::Client,
        config: &GraphConfig,
        bot: &BotCredentials,
        redis: Redis,
        metrics: &Metrics,
        timeout: Duration,
    ) -> Self {
        Self {
            tokens: Arc::new(GraphTokens::new(
                http.clone(),
                bot,
                config,
                metrics.graph_token_refreshes.clone(),
            )),
            http,
            pacer: GraphPacer::new(redis, config.rate),
            allowlist: config.allowlist.clone(),
            root: config.root.clone(),
            timeout,
            requests: metrics.graph_requests.clone(),
        }
    }

    /// The per-tenant tokens (tests read their counter).
    pub fn tokens(&self) -> &GraphTokens {
        &self.tokens
    }

    /// `GET /users/{upn}` (`/users('{upn}')` for a UPN starting with `$`, which Graph would
    /// otherwise read as a system segment), or `GET /users?$filter=mail eq '{mail}'`. `None`
    /// when the tenant has no such user.
    pub async fn user(
        &self,
        tenant: &str,
        name: &UserName,
    ) -> Result<Option<GraphUser>, GraphError> {
        match name {
            // An empty name names nobody (and `/users/` would list everyone).
            UserName::PrincipalName(upn) | UserName::Email(upn) if upn.trim().is_empty() => {
                Ok(None)
            }
            UserName::PrincipalName(upn) => {
                let path = if upn.starts_with('$') {
                    format!("users('{}')", segment(&upn.replace('\'', "''")))
                } else {
                    format!("users/{}", segment(upn))
                };
                let url = self.endpoint(&path, &[("$select", USER_FIELDS)]);
                let answer = self
                    .request(Call::GetUser, tenant, Method::GET, url, None, &[404])
                    .await?;
                if answer.status == StatusCode::NOT_FOUND {
                    return Ok(None);
                }
                read(Call::GetUser, &answer.body).map(Some)
            }
            UserName::Email(mail) => {
                let filter = format!("mail eq {}", literal(mail));
                let url = self.endpoint("users", &[("$filter", &filter), ("$select", USER_FIELDS)]);
                let answer = self
                    .request(Call::FindUserByMail, tenant, Method::GET, url, None, &[])
                    .await?;
                let list: List<GraphUser> = read(Call::FindUserByMail, &answer.body)?;
                Ok(list.value.into_iter().next())
            }
        }
    }

    /// The tenant's catalog id of the app whose manifest id is `manifest_id`:
    /// `GET /appCatalogs/teamsApps?$filter=externalId eq '{id}'`, `value[0].id`. `None` when
    /// the tenant's org catalog does not have it (a Store app's id is its manifest id).
    pub async fn catalog_app_id(
        &self,
        tenant: &str,
        manifest_id: &str,
    ) -> Result<Option<String>, GraphError> {
        let filter = format!("externalId eq {}", literal(manifest_id));
        let url = self.endpoint("appCatalogs/teamsApps", &[("$filter", &filter)]);
        let answer = self
            .request(Call::CatalogApp, tenant, Method::GET, url, None, &[])
            .await?;
        let list: List<Identified> = read(Call::CatalogApp, &answer.body)?;
        Ok(list.value.into_iter().next().map(|app| app.id))
    }

    /// Installs the app (its catalog id) for the user: `POST /users/{id}/teamwork/installedApps`.
    /// Graph then has Teams tell the bot, as for an install the user makes.
    pub async fn install_app(
        &self,
        tenant: &str,
        user_id: &str,
        teams_app_id: &str,
    ) -> Result<Installed, GraphError> {
        let path = format!("users/{}/teamwork/installedApps", segment(user_id));
        let url = self.endpoint(&path, &[]);
        let bind = format!(
            "{}/{VERSION}/appCatalogs/teamsApps/{}",
            self.root.as_str().trim_end_matches('/'),
            segment(teams_app_id)
        );
        let body = serde_json::json!({ "teamsApp@odata.bind": bind });
        let answer = self
            .request(
                Call::InstallApp,
                tenant,
                Method::POST,
                url,
                Some(&body),
                &[404, 409],
            )
            .await?;
        match answer.status {
            StatusCode::CONFLICT => Ok(Installed::AlreadyInstalled),
            StatusCode::NOT_FOUND => {
                let error = GraphError::from_answer(
                    answer.status,
                    &answer.body,
                    None,
                    Call::InstallApp.permission(),
                );
                // The directory's own "no such object" names the user, not the app.
                let no_user = matches!(&error, GraphError::Refused { code: Some(code), .. } if code == "Request_ResourceNotFound");
                Err(match error {
                    GraphError::Refused { message, .. } if !no_user => GraphError::NotInCatalog {
                        teams_app_id: teams_app_id.to_owned(),
                        message,
                    },
                    other => other,
                })
            }
            _ => Ok(Installed::Installed),
        }
    }

    /// The user's installation of the app (its catalog id), if they have it:
    /// `GET /users/{id}/teamwork/installedApps?$expand=teamsApp&$filter=teamsApp/id eq '…'`.
    pub async fn installation_id(
        &self,
        tenant: &str,
        user_id: &str,
        teams_app_id: &str,
    ) -> Result<Option<String>, GraphError> {
        let path = format!("users/{}/teamwork/installedApps", segment(user_id));
        let filter = format!("teamsApp/id eq {}", literal(teams_app_id));
        let url = self.endpoint(&path, &[("$expand", "teamsApp"), ("$filter", &filter)]);
        let answer = self
            .request(Call::Installation, tenant, Method::GET, url, None, &[])
            .await?;
        let list: List<Identified> = read(Call::Installation, &answer.body)?;
        Ok(list
            .value
            .into_iter()
            .next()
            .map(|installation| installation.id))
    }

    /// The personal chat between the user and the bot an installation made:
    /// `GET /users/{id}/teamwork/installedApps/{installationId}/chat`, its `id`, which the
    /// Bot Connector takes as the conversation id.
    pub async fn installation_chat(
        &self,
        tenant: &str,
        user_id: &str,
        installation_id: &str,
    ) -> Result<String, GraphError> {
        let path = format!(
            "users/{}/teamwork/installedApps/{}/chat",
            segment(user_id),
            segment(installation_id)
        );
        let url = self.endpoint(&path, &[]);
        let answer = self
            .request(Call::InstallationChat, tenant, Method::GET, url, None, &[])
            .await?;
        let chat: Identified = read(Call::InstallationChat, &answer.body)?;
        Ok(chat.id)
    }

    /// A page of the users in a group, directly or through nested groups, each once:
    /// `GET /groups/{id}/transitiveMembers/microsoft.graph.user`; `next` continues from a
    /// page's [`GraphPage::next`].
    pub async fn group_members(
        &self,
        tenant: &str,
        group_id: &str,
        next: Option<&str>,
    ) -> Result<GraphPage, GraphError> {
        let url = match next {
            Some(link) => next_link(Call::GroupMembers, link)?,
            None => {
                let path = format!(
                    "groups/{}/transitiveMembers/microsoft.graph.user",
                    segment(group_id)
                );
                self.endpoint(&path, &[("$select", USER_FIELDS), ("$top", PAGE_SIZE)])
            }
        };
        let answer = self
            .request(Call::GroupMembers, tenant, Method::GET, url, None, &[])
            .await?;
        page(Call::GroupMembers, &answer.body, |_| true)
    }

    /// A page of the tenant's enabled users: `GET /users?$filter=accountEnabled eq true`;
    /// `next` continues from a page's [`GraphPage::next`].
    pub async fn directory_users(
        &self,
        tenant: &str,
        next: Option<&str>,
    ) -> Result<GraphPage, GraphError> {
        let url = match next {
            Some(link) => next_link(Call::DirectoryUsers, link)?,
            None => self.endpoint(
                "users",
                &[
                    ("$filter", "accountEnabled eq true"),
                    ("$select", USER_FIELDS),
                    ("$top", PAGE_SIZE),
                ],
            ),
        };
        let answer = self
            .request(Call::DirectoryUsers, tenant, Method::GET, url, None, &[])
            .await?;
        // Graph filters; a user disabled between two pages is dropped here all the same.
        page(Call::DirectoryUsers, &answer.body, |user| {
            user.account_enabled != Some(false)
        })
    }

    /// `{root}/v1.0/{path}` (segments already encoded) with `query`, each value encoded.
    fn endpoint(&self, path: &str, query: &[(&str, &str)]) -> Url {
        let mut url = self.root.clone();
        let base = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{base}/{VERSION}/{path}"));
        let query = query
            .iter()
            .map(|(name, value)| format!("{name}={}", utf8_percent_encode(value, QUERY_VALUE)))
            .collect::<Vec<_>>()
            .join("&");
        url.set_query((!query.is_empty()).then_some(query.as_str()));
        url
    }

    /// Makes one call for `tenant`, counted in `herald_graph_requests_total`. A status in
    /// `handled` is answered to the caller like a success.
    async fn request(
        &self,
        call: Call,
        tenant: &str,
        method: Method,
        url: Url,
        body: Option<&serde_json::Value>,
        handled: &[u16],
    ) -> Result<Answer, GraphError> {
        let result = self.attempt(call, tenant, method, url, body, handled).await;
        let outcome = match &result {
            Ok(answer) if answer.status.is_success() => "ok",
            Ok(answer) if answer.status == StatusCode::NOT_FOUND => "not_found",
            Ok(answer) if answer.status == StatusCode::CONFLICT => "conflict",
            Ok(_) => "handled",
            Err(failure) => failure.outcome,
        };
        self.requests
            .get_or_create(&vec![
                ("call", call.name().to_owned()),
                ("outcome", outcome.to_owned()),
            ])
            .inc();
        result.map_err(|failure| failure.error)
    }

    /// The allowlist, the tenant's turn, its token, the call, and Graph's answer read. The
    /// allowlist is checked on the very URL the request then goes to, before the pacer or
    /// the token endpoint is asked anything.
    async fn attempt(
        &self,
        call: Call,
        tenant: &str,
        method: Method,
        url: Url,
        body: Option<&serde_json::Value>,
        handled: &[u16],
    ) -> Result<Answer, Failure> {
        if !self.allowlist.allows_url(&url) {
            return Err(GraphError::NotAllowed(host_of(&url)).into());
        }
        check_tenant(tenant)?;
        match self
            .pacer
            .turn(tenant, LONGEST_WAIT)
            .await
            .map_err(GraphError::from)?
        {
            Turn::Go { after } if after.is_zero() => {}
            Turn::Go { after } => tokio::time::sleep(after).await,
            Turn::Held { wait } => {
                tracing::debug!(
                    call = call.name(),
                    tenant_id = tenant,
                    ?wait,
                    "Graph call held back by the tenant's pace"
                );
                return Err(Failure {
                    error: GraphError::Held {
                        wait: wait.max(Duration::from_millis(1)),
                    },
                    outcome: "held",
                });
            }
        }
        let token = self.tokens.token(tenant).await.map_err(GraphError::from)?;
        let answer = bearer::call(&self.http, method, url, &token, self.timeout, body)
            .await
            .map_err(GraphError::Transport)?;
        let (status, retry_after, text) = (answer.status, answer.retry_after, answer.body);
        tracing::debug!(
            call = call.name(),
            tenant_id = tenant,
            status = status.as_u16(),
            "called Graph"
        );
        if status.is_success() || handled.contains(&status.as_u16()) {
            return Ok(Answer { status, body: text });
        }
        if status == StatusCode::UNAUTHORIZED {
            // The token may have been revoked; the tenant's next call fetches a new one.
            self.tokens.invalidate(tenant);
        }
        let error = GraphError::from_answer(status, &text, retry_after, call.permission());
        if let GraphError::Throttled { retry_after } = &error {
            let retry_after = *retry_after;
            tracing::warn!(
                call = call.name(),
                tenant_id = tenant,
                ?retry_after,
                "Graph throttled the tenant; holding its Graph calls"
            );
            if let Err(e) = self.pacer.pause(tenant, retry_after).await {
                tracing::warn!(error = %Chain(&e), tenant_id = tenant, "could not pause the tenant's Graph calls");
            }
        }
        Err(error.into())
    }
}

/// A Graph collection's `value` (the rest of the page is read where needed).
#[derive(Deserialize)]
struct List<T> {
    #[serde(default = "Vec::new")]
    value: Vec<T>,
}

/// Anything with an `id`: a catalog app, an installation, a chat.
#[derive(Deserialize)]
struct Identified {
    id: String,
}

/// A page of directory objects: users, and whatever else a listing may hold.
#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    value: Vec<serde_json::Value>,
    #[serde(default, rename = "@odata.nextLink")]
    next_link: Option<String>,
}

fn read<T: for<'de> Deserialize<'de>>(call: Call, body: &str) -> Result<T, GraphError> {
    serde_json::from_str(body).map_err(|e| GraphError::Malformed {
        call: call.name(),
        reason: e.to_string(),
    })
}

/// The users of a page that `keep` keeps. Items typed as something other than a user (a
/// listing without the `microsoft.graph.user` cast holds nested groups too) are left out.
fn page(
    call: Call,
    body: &str,
    keep: impl Fn(&GraphUser) -> bool,
) -> Result<GraphPage, GraphError> {
    let page: Page = read(call, body)?;
    let mut users = Vec::with_capacity(page.value.len());
    for item in page.value {
        let kind = item.get("@odata.type").and_then(|t| t.as_str());
        if kind.is_some_and(|kind| kind != "#microsoft.graph.user") {
            continue;
        }
        let user: GraphUser = serde_json::from_value(item).map_err(|e| GraphError::Malformed {
            call: call.name(),
            reason: e.to_string(),
        })?;
        if keep(&user) {
            users.push(user);
        }
    }
    Ok(GraphPage {
        users,
        next: page.next_link.filter(|link| !link.is_empty()),
    })
}

/// A page's `@odata.nextLink`, used as Graph wrote it; the allowlist checks it like any other
/// URL before it is called.
fn next_link(call: Call, link: &str) -> Result<Url, GraphError> {
    Url::parse(link).map_err(|e| GraphError::Malformed {
        call: call.name(),
        reason: format!("the next page's link {link:?} is not a URL ({e})"),
    })
}

/// One path segment, encoded.
fn segment(text: &str) -> String {
    utf8_percent_encode(text, PATH_SEGMENT).to_string()
}

/// An OData string literal: quoted, with quotes doubled.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The host (and port, when it has one) a URL goes to, for the error that refuses it.
fn host_of(url: &Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_owned(),
        (None, _) => format!("{:?}", url.as_str()),
    }
}

/// A tenant id is a GUID or a domain name: it goes into the token URL's path and a Redis key,
/// so nothing else is let through.
fn check_tenant(tenant: &str) -> Result<(), GraphError> {
    let fits = !tenant.is_empty()
        && tenant.len() <= 256
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if fits {
        Ok(())
    } else {
        Err(GraphError::InvalidTenant(tenant.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_encoded_and_literals_quoted() {
        assert_eq!(segment("ann@contoso.com"), "ann%40contoso.com");
        assert_eq!(
            segment("ann_fabrikam.com#EXT#@contoso.onmicrosoft.com"),
            "ann_fabrikam.com%23EXT%23%40contoso.onmicrosoft.com"
        );
        assert_eq!(segment("../x"), "..%2Fx");
        assert_eq!(literal("o'neil@x.com"), "'o''neil@x.com'");
        assert_eq!(
            utf8_percent_encode("mail eq 'a+b@x.com'", QUERY_VALUE).to_string(),
            "mail%20eq%20%27a%2Bb@x.com%27"
        );
    }

    #[test]
    fn tenants_are_guids_or_domain_names() {
        assert!(check_tenant("72f988bf-86f1-41af-91ab-2d7cd011db47").is_ok());
        assert!(check_tenant("contoso.onmicrosoft.com").is_ok());
        for bad in ["", "a/b", "a b", "x}:y", "a%2F"] {
            assert!(check_tenant(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pages_keep_users_only() {
        let body = serde_json::json!({
            "value": [
                {"@odata.type": "#microsoft.graph.user", "id": "u1", "accountEnabled": true},
                {"@odata.type": "#microsoft.graph.group", "id": "g1"},
                {"id": "u2", "userPrincipalName": "b@x.com", "accountEnabled": false},
            ],
            "@odata.nextLink": "https://graph.microsoft.com/v1.0/users?$skiptoken=x",
        })
        .to_string();
        let all = page(Call::GroupMembers, &body, |_| true).unwrap();
        assert_eq!(
            all.users.iter().map(|u| u.id.as_str()).collect::<Vec<_>>(),
            ["u1", "u2"]
        );
        assert!(all.next.is_some());
        let enabled = page(Call::DirectoryUsers, &body, |u| {
            u.account_enabled != Some(false)
        })
        .unwrap();
        assert_eq!(enabled.users.len(), 1);
    }
}

//! Microsoft Graph, for reaching people who never installed the app: where Graph is (the
//! cloud's root, overridable), where its per-tenant tokens come from, which hosts may receive
//! them, how fast one tenant may be called, and whether Herald installs the app for a user.

use std::fmt;

use url::Url;

use super::{ConfigError, Env, TeamsEndpoints};
use crate::allowlist::ServiceUrlAllowlist;

/// What a token URL template must hold: Graph tokens are issued by the user's tenant.
pub const TENANT_PLACEHOLDER: &str = "{tenantId}";

/// Graph's documented limit per app and tenant for installing apps for users and reading
/// installations and the app catalog (the calls Herald makes most).
const DEFAULT_RATE: f64 = 30.0;

/// The dispatcher's Graph settings, after the cloud's preset and the overrides.
#[derive(Clone)]
pub struct GraphConfig {
    /// Graph's root without a trailing slash (`https://graph.microsoft.com`); calls go to
    /// `{root}/v1.0/…` and tokens are asked for `{root}/.default`.
    pub root: Url,
    /// The token endpoint with [`TENANT_PLACEHOLDER`] where the tenant goes.
    pub token_url_template: String,
    /// The hosts Graph tokens may be sent to; the root passes it.
    pub allowlist: ServiceUrlAllowlist,
    /// Graph calls per second per tenant, across every dispatcher replica.
    pub rate: f64,
    /// The Teams app's manifest id, which each tenant's app catalog knows it by.
    pub teams_app_id: Option<String>,
    /// Whether Herald installs the app for a user who does not have it
    /// (`HERALD_PROACTIVE_INSTALL`).
    pub proactive_install: bool,
}

impl fmt::Debug for GraphConfig {
    /// URLs as text: the logged configuration is read by people.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraphConfig")
            .field("root", &self.root_str())
            .field("token_url_template", &self.token_url_template)
            .field("allowlist", &self.allowlist.to_string())
            .field("rate", &self.rate)
            .field("teams_app_id", &self.teams_app_id)
            .field("proactive_install", &self.proactive_install)
            .finish()
    }
}

impl GraphConfig {
    /// The cloud's Graph (the cloud `teams` was configured for) with every override applied.
    pub(super) fn from_env(env: &Env, teams: &TeamsEndpoints) -> Result<Self, ConfigError> {
        let preset = teams.cloud.endpoints();
        let root = parse_root(env.get("HERALD_GRAPH_URL").unwrap_or(preset.graph_url))?;
        let root_str = root.as_str().trim_end_matches('/');

        // Entra issues Graph tokens in the user's tenant, at the cloud's login host (Azure
        // China's Entra answers at this host and at login.chinacloudapi.cn alike).
        let default_template = format!(
            "{}/{TENANT_PLACEHOLDER}/oauth2/v2.0/token",
            preset.login_host
        );
        let token_url_template = env
            .get("HERALD_GRAPH_TOKEN_URL")
            .map_or(default_template, str::to_owned);
        check_template(&token_url_template)?;

        let allowlist: ServiceUrlAllowlist = match env.get("HERALD_GRAPH_ALLOWLIST") {
            Some(raw) => raw
                .parse()
                .map_err(|e: String| ConfigError::new("HERALD_GRAPH_ALLOWLIST", e))?,
            None => root
                .origin()
                .ascii_serialization()
                .parse()
                .map_err(|e: String| {
                    ConfigError::new(
                        "HERALD_GRAPH_URL",
                        format!("{root_str:?} has no origin an allowlist can name ({e})"),
                    )
                })?,
        };
        if !allowlist.allows_url(&root) {
            return Err(ConfigError::new(
                "HERALD_GRAPH_URL",
                format!("{root_str:?} is not allowed by HERALD_GRAPH_ALLOWLIST ({allowlist})"),
            ));
        }

        let rate: f64 = env.parse_or("HERALD_GRAPH_RATE", DEFAULT_RATE)?;
        if !rate.is_finite() || rate <= 0.0 {
            return Err(ConfigError::new(
                "HERALD_GRAPH_RATE",
                format!("{rate} must be a positive number of calls per second, e.g. 30"),
            ));
        }
        let teams_app_id = env.get("HERALD_TEAMS_APP_ID").map(str::to_owned);
        let proactive_install = env.flag_or("HERALD_PROACTIVE_INSTALL", false)?;
        if proactive_install && teams_app_id.is_none() {
            return Err(ConfigError::new(
                "HERALD_PROACTIVE_INSTALL",
                "is on, but HERALD_TEAMS_APP_ID (the app's manifest id, which the install names) is not set",
            ));
        }
        Ok(Self {
            root,
            token_url_template,
            allowlist,
            rate,
            teams_app_id,
            proactive_install,
        })
    }

    /// The root as text, without a trailing slash: `{root}/v1.0/…`, `{root}/.default`.
    pub fn root_str(&self) -> &str {
        self.root.as_str().trim_end_matches('/')
    }

    /// The scope of Graph tokens: `{root}/.default`.
    pub fn scope(&self) -> String {
        format!("{}/.default", self.root_str())
    }
}

/// An absolute http(s) URL with nothing after its path: calls are made below it.
fn parse_root(raw: &str) -> Result<Url, ConfigError> {
    let bad = |why: String| ConfigError::new("HERALD_GRAPH_URL", format!("{raw:?} {why}"));
    let root = Url::parse(raw).map_err(|e| bad(format!("is not a URL ({e})")))?;
    if !matches!(root.scheme(), "https" | "http") || root.host_str().is_none() {
        return Err(bad("must be an http(s) URL with a host".into()));
    }
    if root.query().is_some() || root.fragment().is_some() {
        return Err(bad("must have no query or fragment".into()));
    }
    if !root.username().is_empty() || root.password().is_some() {
        return Err(bad("must not carry credentials".into()));
    }
    Ok(root)
}

/// The template names the tenant, and is a URL once it is filled in.
fn check_template(template: &str) -> Result<(), ConfigError> {
    let bad =
        |why: String| ConfigError::new("HERALD_GRAPH_TOKEN_URL", format!("{template:?} {why}"));
    if !template.contains(TENANT_PLACEHOLDER) {
        return Err(bad(format!(
            "has no {TENANT_PLACEHOLDER}: Graph tokens are issued by each user's tenant, e.g. https://login.microsoftonline.com/{TENANT_PLACEHOLDER}/oauth2/v2.0/token"
        )));
    }
    let sample = template.replace(TENANT_PLACEHOLDER, "00000000-0000-0000-0000-000000000000");
    match Url::parse(&sample) {
        Ok(url) if matches!(url.scheme(), "https" | "http") => Ok(()),
        Ok(_) => Err(bad("must be an http(s) URL".into())),
        Err(e) => Err(bad(format!(
            "is not a URL once the tenant is filled in ({e})"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{DispatcherConfig, Env, tests::base};

    fn graph(env: &Env) -> super::GraphConfig {
        DispatcherConfig::from_env(env).unwrap().graph
    }

    fn refused(env: &Env) -> &'static str {
        DispatcherConfig::from_env(env).unwrap_err().variable
    }

    #[test]
    fn defaults_follow_the_public_cloud() {
        let g = graph(&base());
        assert_eq!(g.root_str(), "https://graph.microsoft.com");
        assert_eq!(g.scope(), "https://graph.microsoft.com/.default");
        assert_eq!(
            g.token_url_template,
            "https://login.microsoftonline.com/{tenantId}/oauth2/v2.0/token"
        );
        assert!(g.allowlist.allows("https://graph.microsoft.com/v1.0/users"));
        assert!(!g.allowlist.allows("https://graph.microsoft.us/v1.0/users"));
        assert_eq!(g.rate, 30.0);
        assert_eq!(g.teams_app_id, None);
        assert!(!g.proactive_install);
    }

    #[test]
    fn each_cloud_has_its_graph_and_login_host() {
        for (cloud, root, login) in [
            (
                "usgov",
                "https://graph.microsoft.us",
                "https://login.microsoftonline.us",
            ),
            (
                "usgov-dod",
                "https://dod-graph.microsoft.us",
                "https://login.microsoftonline.us",
            ),
            (
                "china",
                "https://microsoftgraph.chinacloudapi.cn",
                "https://login.partner.microsoftonline.cn",
            ),
        ] {
            let mut env = base();
            env.set("HERALD_CLOUD", cloud);
            let g = graph(&env);
            assert_eq!(g.root_str(), root, "{cloud}");
            assert_eq!(
                g.token_url_template,
                format!("{login}/{{tenantId}}/oauth2/v2.0/token"),
                "{cloud}"
            );
            assert!(g.allowlist.allows(&format!("{root}/v1.0/users")), "{cloud}");
        }
    }

    #[test]
    fn overrides_apply_and_the_allowlist_defaults_to_the_roots_origin() {
        let mut env = base();
        env.set("HERALD_GRAPH_URL", "http://127.0.0.1:3979/graph/")
            .set(
                "HERALD_GRAPH_TOKEN_URL",
                "http://127.0.0.1:3979/{tenantId}/oauth2/v2.0/token",
            )
            .set("HERALD_GRAPH_RATE", "2.5")
            .set("HERALD_TEAMS_APP_ID", "cf1b-manifest")
            .set("HERALD_PROACTIVE_INSTALL", "on");
        let g = graph(&env);
        assert_eq!(g.root_str(), "http://127.0.0.1:3979/graph");
        assert_eq!(g.scope(), "http://127.0.0.1:3979/graph/.default");
        assert_eq!(g.allowlist.to_string(), "http://127.0.0.1:3979");
        assert!(!g.allowlist.allows("http://127.0.0.1:3980/graph"));
        assert_eq!(g.rate, 2.5);
        assert_eq!(g.teams_app_id.as_deref(), Some("cf1b-manifest"));
        assert!(g.proactive_install);

        env.set("HERALD_GRAPH_ALLOWLIST", "http://127.0.0.1:*");
        assert!(graph(&env).allowlist.allows("http://127.0.0.1:1/graph"));
        for (value, on) in [
            ("off", false),
            ("true", true),
            ("0", false),
            ("1", true),
            ("ON", true),
        ] {
            env.set("HERALD_PROACTIVE_INSTALL", value);
            assert_eq!(graph(&env).proactive_install, on, "{value}");
        }
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (key, value) in [
            ("HERALD_GRAPH_URL", "graph.microsoft.com"),
            ("HERALD_GRAPH_URL", "ftp://graph.microsoft.com"),
            ("HERALD_GRAPH_URL", "https://graph.microsoft.com/?x=1"),
            (
                "HERALD_GRAPH_TOKEN_URL",
                "https://login.microsoftonline.com/oauth2/v2.0/token",
            ),
            ("HERALD_GRAPH_TOKEN_URL", "login/{tenantId}/token"),
            ("HERALD_GRAPH_ALLOWLIST", "graph.microsoft.com"),
            ("HERALD_GRAPH_ALLOWLIST", "https://*"),
            ("HERALD_GRAPH_RATE", "0"),
            ("HERALD_GRAPH_RATE", "-3"),
            ("HERALD_GRAPH_RATE", "off"),
            ("HERALD_GRAPH_RATE", "NaN"),
            ("HERALD_GRAPH_RATE", "inf"),
            ("HERALD_PROACTIVE_INSTALL", "maybe"),
        ] {
            let mut env = base();
            env.set(key, value);
            assert_eq!(refused(&env), key, "{key}={value}");
        }
        let mut env = base();
        env.set(
            "HERALD_GRAPH_TOKEN_URL",
            "https://login.example/oauth2/token",
        );
        let err = DispatcherConfig::from_env(&env).unwrap_err();
        assert!(err.to_string().contains("{tenantId}"), "{err}");
    }

    #[test]
    fn a_graph_url_outside_its_allowlist_is_refused() {
        let mut env = base();
        env.set("HERALD_GRAPH_URL", "https://graph.example")
            .set("HERALD_GRAPH_ALLOWLIST", "https://graph.microsoft.com");
        let err = DispatcherConfig::from_env(&env).unwrap_err();
        assert_eq!(err.variable, "HERALD_GRAPH_URL");
        assert!(err.to_string().contains("HERALD_GRAPH_ALLOWLIST"), "{err}");
    }

    #[test]
    fn installing_needs_the_manifest_id() {
        let mut env = base();
        env.set("HERALD_PROACTIVE_INSTALL", "on");
        let err = DispatcherConfig::from_env(&env).unwrap_err();
        assert_eq!(err.variable, "HERALD_PROACTIVE_INSTALL");
        assert!(err.to_string().contains("HERALD_TEAMS_APP_ID"), "{err}");
    }
}

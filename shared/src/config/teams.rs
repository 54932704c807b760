//! The bot's identity and the Teams endpoints it talks to: the cloud's preset
//! ([`crate::cloud`]), each URL overridable, and the serviceUrl allowlist
//! ([`crate::allowlist`]) every serviceUrl Herald is given is checked against.

use std::fmt;

use secrecy::SecretString;
use url::Url;

use super::{ConfigError, Env};
use crate::{allowlist::ServiceUrlAllowlist, cloud::Cloud};

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

impl TeamsEndpoints {
    /// The cloud's preset (`HERALD_CLOUD`) with every override applied; the serviceUrls Herald
    /// sends to on its own (default, GCC) must pass the allowlist like any other.
    pub(super) fn from_env(env: &Env, bot: &BotCredentials) -> Result<Self, ConfigError> {
        let cloud: Cloud = env.parse_or("HERALD_CLOUD", Cloud::Public)?;
        let preset = cloud.endpoints();
        // Entra issues a single-tenant app's tokens only in its own tenant; multi-tenant bots
        // use the cloud's Bot Framework tenant.
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
        Ok(Self {
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
}

#[cfg(test)]
mod tests {
    use crate::config::{CommonConfig, tests::base};

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
}

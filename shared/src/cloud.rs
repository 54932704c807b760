//! Microsoft cloud presets (`HERALD_CLOUD`): where tokens come from, which issuer signs inbound
//! activities, which hosts may receive the bot's token, and where Microsoft Graph is. Each URL can be overridden by its
//! own variable (the README's Configuration).

use std::{fmt, str::FromStr};

/// One of the clouds Teams runs in. Every URL it implies can be overridden one by one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cloud {
    Public,
    UsGov,
    UsGovDod,
    China,
}

/// The endpoints a bot needs in one cloud.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudEndpoints {
    /// Host of the Entra token endpoint, e.g. `https://login.microsoftonline.com`.
    pub login_host: &'static str,
    /// Tenant used in the token URL by multi-tenant bots.
    pub multi_tenant_tenant: &'static str,
    pub token_scope: &'static str,
    pub openid_metadata_url: &'static str,
    pub token_issuer: &'static str,
    /// Used for a tenant Herald has never heard from; China publishes none.
    pub default_service_url: Option<&'static str>,
    /// Where a GCC tenant's traffic goes when the public host answers 403 InvalidBotApiHost.
    pub gcc_service_url: Option<&'static str>,
    /// Hosts of the Bot Connector in this cloud; the token is sent nowhere else.
    pub service_url_allowlist: &'static [&'static str],
    /// Microsoft Graph's root in this cloud (Graph's national cloud deployments); calls go to
    /// `{graph_url}/v1.0/…`, tokens are asked for `{graph_url}/.default`.
    pub graph_url: &'static str,
}

impl Cloud {
    pub fn endpoints(self) -> CloudEndpoints {
        match self {
            Cloud::Public => CloudEndpoints {
                login_host: "https://login.microsoftonline.com",
                multi_tenant_tenant: "botframework.com",
                token_scope: "https://api.botframework.com/.default",
                openid_metadata_url: "https://login.botframework.com/v1/.well-known/openidconfiguration",
                token_issuer: "https://api.botframework.com",
                default_service_url: Some("https://smba.trafficmanager.net/teams/"),
                gcc_service_url: Some("https://smba.infra.gcc.teams.microsoft.com/gcc/"),
                // GCC (moderate) tenants live in the public cloud but on their own host.
                service_url_allowlist: &[
                    "https://smba.trafficmanager.net",
                    "https://*.botframework.com",
                    "https://smba.infra.gcc.teams.microsoft.com",
                ],
                // GCC (moderate) tenants use the public Graph too.
                graph_url: "https://graph.microsoft.com",
            },
            Cloud::UsGov | Cloud::UsGovDod => CloudEndpoints {
                login_host: "https://login.microsoftonline.us",
                multi_tenant_tenant: "MicrosoftServices.onmicrosoft.us",
                token_scope: "https://api.botframework.us/.default",
                openid_metadata_url: "https://login.botframework.azure.us/v1/.well-known/openidconfiguration",
                token_issuer: "https://api.botframework.us",
                default_service_url: Some("https://smba.infra.gov.teams.microsoft.us/gcch"),
                gcc_service_url: None,
                service_url_allowlist: &[
                    "https://*.teams.microsoft.us",
                    "https://*.botframework.us",
                    "https://*.botframework.azure.us",
                ],
                // The one place GCC High and DoD differ: each has its own Graph.
                graph_url: match self {
                    Cloud::UsGovDod => "https://dod-graph.microsoft.us",
                    _ => "https://graph.microsoft.us",
                },
            },
            Cloud::China => CloudEndpoints {
                login_host: "https://login.partner.microsoftonline.cn",
                multi_tenant_tenant: "microsoftservices.partner.onmschina.cn",
                token_scope: "https://api.botframework.azure.cn/.default",
                openid_metadata_url: "https://login.botframework.azure.cn/v1/.well-known/openidconfiguration",
                token_issuer: "https://api.botframework.azure.cn",
                default_service_url: None,
                gcc_service_url: None,
                service_url_allowlist: &["https://*.botframework.azure.cn"],
                graph_url: "https://microsoftgraph.chinacloudapi.cn",
            },
        }
    }
}

impl FromStr for Cloud {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "public" => Ok(Cloud::Public),
            "usgov" => Ok(Cloud::UsGov),
            "usgov-dod" => Ok(Cloud::UsGovDod),
            "china" => Ok(Cloud::China),
            other => Err(format!(
                "unknown cloud {other:?}; expected public, usgov, usgov-dod or china"
            )),
        }
    }
}

impl fmt::Display for Cloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cloud::Public => "public",
            Cloud::UsGov => "usgov",
            Cloud::UsGovDod => "usgov-dod",
            Cloud::China => "china",
        })
    }
}

//! The emulator's configuration, and the binary's reading of it from the environment.

use std::net::SocketAddr;
use std::time::Duration;

/// How an emulator behaves. `Default` gives a bot identity good enough for tests.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// The bot's Microsoft app id (the `client_id` the token endpoint accepts, the `aud` of
    /// the tokens sent to the bot, and `28:<appId>` in activities).
    pub app_id: String,
    /// The bot's client secret.
    pub app_password: String,
    /// Where "Teams" POSTs activities, e.g. `http://127.0.0.1:3978/api/messages`.
    pub bot_endpoint: Option<String>,
    /// The base URL others reach the emulator at; `None` means `http://<bound address>`.
    pub public_url: Option<String>,
    /// `iss` of the tokens sent to the bot and of the OpenID metadata.
    pub issuer: String,
    /// Whether rate limits are enforced: the Bot Connector's and Graph's.
    pub rate_limits: bool,
    /// Bot Connector requests a tenant may make per second, when limits are enforced (Teams:
    /// 50). Raised, it lets Herald be measured at a higher tenant rate with 429s still real.
    pub tenant_requests_per_second: usize,
    /// The Teams app's manifest id (the `externalId` Graph's app catalog knows it by);
    /// `None` means the same as `app_id`, as in apps whose manifest id is their bot's id.
    pub teams_app_id: Option<String>,
    /// Whether every tenant's org catalog has the app from the start (as if each tenant's
    /// admin had uploaded it); otherwise a tenant's catalog has it once a test puts it there.
    pub app_in_every_catalog: bool,
    /// Graph requests a tenant may make per second, when limits are enforced (Graph's limit
    /// on the Teams calls that matter here, installing and reading installed apps and the
    /// catalog, is 30 a second per app and tenant).
    pub graph_requests_per_second: usize,
    /// Lifetime of the access tokens the token endpoint issues.
    pub token_lifetime: Duration,
    /// Delay before answering each Bot Connector call.
    pub latency: Duration,
    /// How many requests the request log keeps (the last ones; counters count them all).
    pub keep_requests: usize,
    /// How many activities each conversation keeps, of the bot's and separately of those
    /// "Teams" posted to the bot (the last ones; received counts count them all).
    pub keep_per_conversation: usize,
    /// How many activities all conversations keep together, the oldest dropped first.
    pub keep_activities: usize,
}

/// Requests the request log keeps by default: enough to read back any test's traffic, a
/// few megabytes.
pub const DEFAULT_KEEP_REQUESTS: usize = 10_000;

/// Activities a conversation keeps by default: no test's chat comes near it.
pub const DEFAULT_KEEP_PER_CONVERSATION: usize = 1_000;

/// Activities kept in all by default: every body of a 100,000-message run (about 50 MB of
/// short messages; the 100,000 chats they went to take as much again), before the oldest go.
pub const DEFAULT_KEEP_ACTIVITIES: usize = 100_000;

/// Teams' limit on one app's Bot Connector requests per tenant and second.
pub const DEFAULT_TENANT_REQUESTS_PER_SECOND: usize = 50;

/// Graph's limit on one app's calls per tenant and second that the emulator enforces by
/// default: Teams' figure for installing apps for users and reading them and the catalog.
pub const DEFAULT_GRAPH_REQUESTS_PER_SECOND: usize = 30;

/// Bot Framework's public-cloud issuer.
pub const DEFAULT_ISSUER: &str = "https://api.botframework.com";

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            app_id: "00000000-0000-4000-8000-00000000b07e".to_owned(),
            app_password: "emulator-secret".to_owned(),
            bot_endpoint: None,
            public_url: None,
            issuer: DEFAULT_ISSUER.to_owned(),
            rate_limits: true,
            tenant_requests_per_second: DEFAULT_TENANT_REQUESTS_PER_SECOND,
            teams_app_id: None,
            app_in_every_catalog: false,
            graph_requests_per_second: DEFAULT_GRAPH_REQUESTS_PER_SECOND,
            token_lifetime: Duration::from_secs(3599),
            latency: Duration::ZERO,
            keep_requests: DEFAULT_KEEP_REQUESTS,
            keep_per_conversation: DEFAULT_KEEP_PER_CONVERSATION,
            keep_activities: DEFAULT_KEEP_ACTIVITIES,
        }
    }
}

/// A configuration value the binary cannot start with; the message names the variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required variable is not set (or is empty).
    #[error("{var} is required but not set ({what})")]
    Missing {
        /// The environment variable.
        var: &'static str,
        /// What the variable holds.
        what: &'static str,
    },
    /// A variable is set to something unusable.
    #[error("{var} is invalid: {reason} (got {value:?})")]
    Invalid {
        /// The environment variable.
        var: &'static str,
        /// The value found.
        value: String,
        /// Why it cannot be used.
        reason: String,
    },
}

/// How the binary writes its logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (the default: machines read the local stack's logs too).
    Json,
    /// Human-readable lines.
    Pretty,
}

/// Everything the binary needs, read from the environment.
#[derive(Debug, Clone)]
pub struct BinaryConfig {
    /// `HERALD_EMULATOR_ADDR`.
    pub addr: SocketAddr,
    /// The emulator itself; `public_url` is `None` when `HERALD_EMULATOR_PUBLIC_URL` is unset
    /// (the emulator then uses `http://127.0.0.1:<port>`).
    pub emulator: EmulatorConfig,
    /// `HERALD_LOG_FORMAT`.
    pub log_format: LogFormat,
}

impl BinaryConfig {
    /// Reads and validates the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|var| std::env::var(var).ok())
    }

    /// Reads and validates the variables `lookup` gives (the environment, or a test's map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |var: &str| lookup(var).filter(|value| !value.trim().is_empty());

        let addr = match get("HERALD_EMULATOR_ADDR") {
            None => SocketAddr::from(([0, 0, 0, 0], 3979)),
            Some(value) => value.trim().parse().map_err(|err| ConfigError::Invalid {
                var: "HERALD_EMULATOR_ADDR",
                reason: format!("expected host:port such as 0.0.0.0:3979 ({err})"),
                value,
            })?,
        };
        let public_url = get("HERALD_EMULATOR_PUBLIC_URL")
            .map(|value| http_url("HERALD_EMULATOR_PUBLIC_URL", value))
            .transpose()?;
        let bot_endpoint = http_url(
            "HERALD_EMULATOR_BOT_ENDPOINT",
            get("HERALD_EMULATOR_BOT_ENDPOINT")
                .unwrap_or_else(|| "http://127.0.0.1:3978/api/messages".to_owned()),
        )?;
        let app_id = get("HERALD_APP_ID").ok_or(ConfigError::Missing {
            var: "HERALD_APP_ID",
            what: "the bot's Microsoft app id",
        })?;
        let app_password = get("HERALD_APP_PASSWORD").ok_or(ConfigError::Missing {
            var: "HERALD_APP_PASSWORD",
            what: "the bot's client secret",
        })?;
        let issuer = match get("HERALD_TOKEN_ISSUER") {
            None => DEFAULT_ISSUER.to_owned(),
            Some(value) => http_url("HERALD_TOKEN_ISSUER", value)?,
        };
        let switch = |var: &'static str, default: bool| match get(var) {
            None => Ok(default),
            Some(value) => match value.trim().to_ascii_lowercase().as_str() {
                "on" | "true" | "1" => Ok(true),
                "off" | "false" | "0" => Ok(false),
                _ => Err(ConfigError::Invalid {
                    var,
                    reason: "expected on or off".to_owned(),
                    value,
                }),
            },
        };
        let rate_limits = switch("HERALD_EMULATOR_RATE_LIMITS", true)?;
        let app_in_every_catalog = switch("HERALD_EMULATOR_APP_IN_CATALOGS", false)?;
        let teams_app_id = get("HERALD_TEAMS_APP_ID").map(|value| value.trim().to_owned());
        let latency = match get("HERALD_EMULATOR_LATENCY") {
            None => Duration::ZERO,
            Some(value) => {
                humantime::parse_duration(value.trim()).map_err(|err| ConfigError::Invalid {
                    var: "HERALD_EMULATOR_LATENCY",
                    reason: format!("expected a duration such as 100ms or 0s ({err})"),
                    value,
                })?
            }
        };
        let count = |var: &'static str, default: usize| match get(var) {
            None => Ok(default),
            Some(value) => value.trim().parse().map_err(|_| ConfigError::Invalid {
                var,
                reason: "expected a whole number, 0 or more".to_owned(),
                value,
            }),
        };
        let rate = |var: &'static str, default: usize| match get(var) {
            None => Ok(default),
            Some(value) => match value.trim().parse::<usize>() {
                Ok(rate) if rate > 0 => Ok(rate),
                _ => Err(ConfigError::Invalid {
                    var,
                    reason: "expected requests per second, a whole number of 1 or more".to_owned(),
                    value,
                }),
            },
        };
        let tenant_requests_per_second = rate(
            "HERALD_EMULATOR_TENANT_RATE",
            DEFAULT_TENANT_REQUESTS_PER_SECOND,
        )?;
        let graph_requests_per_second = rate(
            "HERALD_EMULATOR_GRAPH_RATE",
            DEFAULT_GRAPH_REQUESTS_PER_SECOND,
        )?;
        let keep_requests = count("HERALD_EMULATOR_KEEP_REQUESTS", DEFAULT_KEEP_REQUESTS)?;
        let keep_per_conversation = count(
            "HERALD_EMULATOR_KEEP_PER_CONVERSATION",
            DEFAULT_KEEP_PER_CONVERSATION,
        )?;
        let keep_activities = count("HERALD_EMULATOR_KEEP_ACTIVITIES", DEFAULT_KEEP_ACTIVITIES)?;
        let log_format = match get("HERALD_LOG_FORMAT") {
            None => LogFormat::Json,
            Some(value) => match value.trim().to_ascii_lowercase().as_str() {
                "json" => LogFormat::Json,
                "pretty" => LogFormat::Pretty,
                _ => {
                    return Err(ConfigError::Invalid {
                        var: "HERALD_LOG_FORMAT",
                        reason: "expected json or pretty".to_owned(),
                        value,
                    });
                }
            },
        };

        Ok(BinaryConfig {
            addr,
            emulator: EmulatorConfig {
                app_id: app_id.trim().to_owned(),
                app_password,
                bot_endpoint: Some(bot_endpoint),
                public_url,
                issuer,
                rate_limits,
                tenant_requests_per_second,
                teams_app_id,
                app_in_every_catalog,
                graph_requests_per_second,
                token_lifetime: EmulatorConfig::default().token_lifetime,
                latency,
                keep_requests,
                keep_per_conversation,
                keep_activities,
            },
            log_format,
        })
    }
}

/// Checks that `value` is an absolute http(s) URL; returns it trimmed.
fn http_url(var: &'static str, value: String) -> Result<String, ConfigError> {
    let trimmed = value.trim();
    match url::Url::parse(trimmed) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {
            Ok(trimmed.to_owned())
        }
        Ok(_) => Err(ConfigError::Invalid {
            var,
            reason: "expected an http:// or https:// URL".to_owned(),
            value,
        }),
        Err(err) => Err(ConfigError::Invalid {
            var,
            reason: format!("not a URL ({err})"),
            value,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> Result<BinaryConfig, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        BinaryConfig::from_lookup(|var| map.get(var).cloned())
    }

    const REQUIRED: [(&str, &str); 2] = [("HERALD_APP_ID", "app"), ("HERALD_APP_PASSWORD", "pw")];

    #[test]
    fn defaults_apply_when_only_credentials_are_set() {
        let config = parse(&REQUIRED).unwrap();
        assert_eq!(config.addr, "0.0.0.0:3979".parse().unwrap());
        assert_eq!(config.emulator.public_url, None);
        assert_eq!(
            config.emulator.bot_endpoint.as_deref(),
            Some("http://127.0.0.1:3978/api/messages")
        );
        assert_eq!(config.emulator.issuer, DEFAULT_ISSUER);
        assert!(config.emulator.rate_limits);
        assert_eq!(
            config.emulator.tenant_requests_per_second,
            DEFAULT_TENANT_REQUESTS_PER_SECOND
        );
        assert_eq!(config.emulator.latency, Duration::ZERO);
        assert_eq!(config.emulator.teams_app_id, None);
        assert!(!config.emulator.app_in_every_catalog);
        assert_eq!(
            config.emulator.graph_requests_per_second,
            DEFAULT_GRAPH_REQUESTS_PER_SECOND
        );
        assert_eq!(config.emulator.keep_requests, DEFAULT_KEEP_REQUESTS);
        assert_eq!(
            config.emulator.keep_per_conversation,
            DEFAULT_KEEP_PER_CONVERSATION
        );
        assert_eq!(config.emulator.keep_activities, DEFAULT_KEEP_ACTIVITIES);
        assert_eq!(config.log_format, LogFormat::Json);
    }

    #[test]
    fn missing_credentials_name_the_variable() {
        let err = parse(&[("HERALD_APP_ID", "app")]).unwrap_err();
        assert!(err.to_string().contains("HERALD_APP_PASSWORD"), "{err}");
        let err = parse(&[("HERALD_APP_PASSWORD", "pw")]).unwrap_err();
        assert!(err.to_string().contains("HERALD_APP_ID"), "{err}");
    }

    #[test]
    fn malformed_values_name_the_variable() {
        for (var, value) in [
            ("HERALD_EMULATOR_ADDR", "nowhere"),
            ("HERALD_EMULATOR_PUBLIC_URL", "ftp://x"),
            ("HERALD_EMULATOR_BOT_ENDPOINT", "not a url"),
            ("HERALD_TOKEN_ISSUER", "::"),
            ("HERALD_EMULATOR_RATE_LIMITS", "maybe"),
            ("HERALD_EMULATOR_LATENCY", "soon"),
            ("HERALD_EMULATOR_TENANT_RATE", "0"),
            ("HERALD_EMULATOR_TENANT_RATE", "5000/1s"),
            ("HERALD_EMULATOR_GRAPH_RATE", "0"),
            ("HERALD_EMULATOR_APP_IN_CATALOGS", "all"),
            ("HERALD_LOG_FORMAT", "xml"),
            ("HERALD_EMULATOR_KEEP_REQUESTS", "-1"),
            ("HERALD_EMULATOR_KEEP_PER_CONVERSATION", "many"),
            ("HERALD_EMULATOR_KEEP_ACTIVITIES", "1e5"),
        ] {
            let mut vars = REQUIRED.to_vec();
            vars.push((var, value));
            let err = parse(&vars).unwrap_err();
            assert!(err.to_string().starts_with(var), "{err}");
        }
    }

    #[test]
    fn explicit_values_are_used() {
        let mut vars = REQUIRED.to_vec();
        vars.extend([
            ("HERALD_EMULATOR_ADDR", "127.0.0.1:4000"),
            ("HERALD_EMULATOR_PUBLIC_URL", "http://emulator:4000"),
            ("HERALD_EMULATOR_RATE_LIMITS", "off"),
            ("HERALD_EMULATOR_TENANT_RATE", "5000"),
            ("HERALD_EMULATOR_GRAPH_RATE", "300"),
            ("HERALD_EMULATOR_APP_IN_CATALOGS", "on"),
            (
                "HERALD_TEAMS_APP_ID",
                " cf1ba4c7-f94e-4d80-ba90-5594b641a8ee ",
            ),
            ("HERALD_EMULATOR_LATENCY", "100ms"),
            ("HERALD_LOG_FORMAT", "pretty"),
            ("HERALD_EMULATOR_KEEP_REQUESTS", "500"),
            ("HERALD_EMULATOR_KEEP_PER_CONVERSATION", "0"),
            ("HERALD_EMULATOR_KEEP_ACTIVITIES", "20000"),
        ]);
        let config = parse(&vars).unwrap();
        assert_eq!(config.addr.port(), 4000);
        assert_eq!(
            config.emulator.public_url.as_deref(),
            Some("http://emulator:4000")
        );
        assert!(!config.emulator.rate_limits);
        assert_eq!(config.emulator.tenant_requests_per_second, 5_000);
        assert_eq!(config.emulator.graph_requests_per_second, 300);
        assert!(config.emulator.app_in_every_catalog);
        assert_eq!(
            config.emulator.teams_app_id.as_deref(),
            Some("cf1ba4c7-f94e-4d80-ba90-5594b641a8ee")
        );
        assert_eq!(config.emulator.latency, Duration::from_millis(100));
        assert_eq!(config.log_format, LogFormat::Pretty);
        assert_eq!(
            (
                config.emulator.keep_requests,
                config.emulator.keep_per_conversation,
                config.emulator.keep_activities
            ),
            (500, 0, 20_000)
        );
    }
}

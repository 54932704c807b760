//! Which serviceUrls may receive the bot's token.
//!
//! A serviceUrl comes from an inbound activity or from a caller; a forged or mistaken one
//! would otherwise be handed the bot token. Patterns are `scheme://host[:port]`, where the
//! host may start with `*.` (any subdomain, at any depth) and the port may be `*`. Paths are
//! not part of the match: the Bot Connector puts tenant ids in them.

use std::{fmt, str::FromStr};

use url::Url;

/// One `scheme://host[:port]` pattern. The webhook guard ([`crate::webhooks::guard`]) reads
/// its allowlist with the same syntax, so both lists are written and matched alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pattern {
    scheme: String,
    host: HostPattern,
    port: PortPattern,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// `*.example.com`: stored as `.example.com`.
    AnySubdomainOf(String),
    /// A bare `*`: only where the list allows it ([`BareStar::AnyHost`]).
    Any,
}

/// Whether a bare `*` may stand for any host. Never for serviceUrls, which are handed the bot
/// token and so must be named; webhooks go to any public host unless narrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BareStar {
    Refused,
    AnyHost,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PortPattern {
    /// No port given: the scheme's default port only.
    Default,
    Any,
    Exact(u16),
}

/// A set of serviceUrl patterns, parsed once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceUrlAllowlist {
    patterns: Vec<Pattern>,
    source: Vec<String>,
}

impl ServiceUrlAllowlist {
    /// True when `service_url` is an absolute http(s) URL matching one of the patterns.
    pub fn allows(&self, service_url: &str) -> bool {
        Url::parse(service_url).is_ok_and(|url| self.allows_url(&url))
    }

    /// The same for a URL already parsed.
    pub fn allows_url(&self, url: &Url) -> bool {
        // Credentials in a serviceUrl are never legitimate and could confuse a proxy.
        if !url.username().is_empty() || url.password().is_some() {
            return false;
        }
        self.patterns.iter().any(|p| p.matches(url))
    }

    pub fn patterns(&self) -> &[String] {
        &self.source
    }
}

impl FromStr for ServiceUrlAllowlist {
    type Err = String;

    /// Parses a comma-separated list of patterns.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut patterns = Vec::new();
        let mut source = Vec::new();
        for raw in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            patterns.push(parse_pattern(raw, "serviceUrl", BareStar::Refused)?);
            source.push(raw.to_owned());
        }
        if patterns.is_empty() {
            return Err("the allowlist is empty: no serviceUrl could ever be used".into());
        }
        Ok(Self { patterns, source })
    }
}

impl fmt::Display for ServiceUrlAllowlist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source.join(","))
    }
}

impl Pattern {
    /// True when `url`'s scheme, host and port match. Credentials are the caller's to refuse.
    pub(crate) fn matches(&self, url: &Url) -> bool {
        let Some(host) = url.host_str() else {
            return false;
        };
        let host = host.to_ascii_lowercase();
        self.scheme == url.scheme()
            && match &self.host {
                HostPattern::Exact(h) => *h == host,
                HostPattern::AnySubdomainOf(suffix) => {
                    host.ends_with(suffix.as_str()) && host.len() > suffix.len()
                }
                HostPattern::Any => true,
            }
            && match self.port {
                PortPattern::Default => url.port().is_none(),
                PortPattern::Any => true,
                PortPattern::Exact(n) => url.port_or_known_default() == Some(n),
            }
    }

    /// The host this pattern names exactly, if it has no wildcard host (lowercase; an IPv6
    /// literal keeps its brackets, as [`Url::host_str`] writes it).
    pub(crate) fn exact_host(&self) -> Option<&str> {
        match &self.host {
            HostPattern::Exact(h) => Some(h),
            HostPattern::AnySubdomainOf(_) | HostPattern::Any => None,
        }
    }
}

/// Parses one pattern, for this list or the webhook guard's; `what` names the list in errors
/// ("bad serviceUrl pattern …").
pub(crate) fn parse_pattern(raw: &str, what: &str, bare_star: BareStar) -> Result<Pattern, String> {
    let bad = |why: &str| format!("bad {what} pattern {raw:?}: {why}");
    let (scheme, rest) = raw
        .split_once("://")
        .ok_or_else(|| bad("expected scheme://host"))?;
    if scheme != "https" && scheme != "http" {
        return Err(bad("the scheme must be http or https"));
    }
    // Anything after the authority (a path) is ignored by design; see the module docs.
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, "*")) => (host, PortPattern::Any),
        Some((host, port)) => (
            host,
            PortPattern::Exact(
                port.parse()
                    .map_err(|_| bad("the port must be a number or *"))?,
            ),
        ),
        None => (authority, PortPattern::Default),
    };
    let host = host.to_ascii_lowercase();
    let host = match host.strip_prefix("*.") {
        Some(suffix) if !suffix.is_empty() && !suffix.contains('*') => {
            HostPattern::AnySubdomainOf(format!(".{suffix}"))
        }
        None if host == "*" && bare_star == BareStar::AnyHost => HostPattern::Any,
        _ if host.is_empty() || host.contains('*') => {
            return Err(bad(match bare_star {
                BareStar::Refused => "the host must be a name, optionally starting with *.",
                BareStar::AnyHost => "the host must be *, or a name optionally starting with *.",
            }));
        }
        _ => HostPattern::Exact(host),
    };
    Ok(Pattern {
        scheme: scheme.to_owned(),
        host,
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(s: &str) -> ServiceUrlAllowlist {
        s.parse().unwrap()
    }

    #[test]
    fn teams_hosts_match_with_any_path() {
        let l = list("https://smba.trafficmanager.net,https://*.botframework.com");
        assert!(l.allows("https://smba.trafficmanager.net/amer/72f988bf/"));
        assert!(l.allows("https://smba.trafficmanager.net/teams/"));
        assert!(l.allows("https://europe.smba.botframework.com/"));
        assert!(
            !l.allows("https://botframework.com/"),
            "*. needs a subdomain"
        );
        assert!(
            !l.allows("http://smba.trafficmanager.net/"),
            "scheme must match"
        );
        assert!(
            !l.allows("https://smba.trafficmanager.net:8443/"),
            "no port means default"
        );
        assert!(!l.allows("https://smba.trafficmanager.net.evil.example/"));
        assert!(!l.allows("https://evilbotframework.com/"));
        assert!(!l.allows("https://user:pw@smba.trafficmanager.net/"));
        assert!(!l.allows("not a url"));
    }

    #[test]
    fn local_ports() {
        let l = list("http://127.0.0.1:*, http://emulator:3979");
        assert!(l.allows("http://127.0.0.1:41234/amer/t/"));
        assert!(l.allows("http://emulator:3979/teams/"));
        assert!(!l.allows("http://emulator:3980/"));
        assert!(!l.allows("http://localhost:41234/"));
    }

    #[test]
    fn bad_patterns_are_named() {
        for bad in [
            "",
            "smba.trafficmanager.net",
            "ftp://x",
            "https://*",
            "https://*:*",
            "https://a.*.com",
            "http://h:port",
        ] {
            let err = bad.parse::<ServiceUrlAllowlist>().unwrap_err();
            assert!(!err.is_empty(), "{bad}");
        }
    }
}

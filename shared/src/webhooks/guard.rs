//! Where webhook deliveries may be posted: the guard against server-side request forgery.
//!
//! A webhook URL is chosen by a caller, and Herald POSTs to it from inside the deployment's
//! network. Unchecked, `http://169.254.169.254/…` would reach the cloud's metadata service
//! and `http://redis:6379/` the service's own store. So the target must match
//! `HERALD_WEBHOOK_ALLOWLIST`: the serviceUrl allowlist's patterns ([`crate::allowlist`]),
//! where the host may also be a bare `*`; unset, `https://*:*`.
//!
//! A host the list names exactly (a name or an IP literal, not `*` nor `*.x`) was chosen by
//! the operator, so it may be at any address. Any other host must be, and resolve only to,
//! a public address: loopback, private, link-local, unspecified, shared (carrier-grade NAT),
//! multicast and broadcast addresses are refused, IPv4-mapped IPv6 included.
//!
//! Each check alone can be dodged, so there are three:
//! - [`WebhookGuard::check_url`] when a URL is given: syntax, pattern, an IP-literal host;
//! - [`WebhookGuard::check_resolved`]: the name resolved now, for a clear answer up front;
//! - the [`WebhookGuard::client`] that sends: its resolver applies the address rule to the
//!   addresses it actually connects to (a name re-pointed after the check, DNS rebinding, is
//!   caught), and its redirect policy puts every hop through `check_url`.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use reqwest::{
    dns::{Addrs, Name, Resolve, Resolving},
    redirect,
};
use url::{Host, Url};

use crate::allowlist::{BareStar, Pattern, parse_pattern};

/// The list used when `HERALD_WEBHOOK_ALLOWLIST` is unset: any host over https, on any port,
/// at a public address.
pub const DEFAULT_ALLOWLIST: &str = "https://*:*";

/// How many redirects a delivery follows, each checked like the first URL.
pub const MAX_REDIRECTS: usize = 5;

/// The rule webhook targets are held to, read once from `HERALD_WEBHOOK_ALLOWLIST`.
#[derive(Debug, Clone)]
pub struct WebhookGuard {
    // Shared with the resolver and the redirect policy of every client built from it.
    rules: Arc<Rules>,
}

#[derive(Debug)]
struct Rules {
    patterns: Vec<Pattern>,
    /// The list as written, for refusals and the configuration log.
    source: String,
}

/// How a URL matched the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trust {
    /// A pattern names the host exactly: any address is fine.
    Named,
    /// Only wildcard hosts match: public addresses only.
    Wildcard,
}

impl WebhookGuard {
    /// The guard for `HERALD_WEBHOOK_ALLOWLIST`'s value; unset (or blank) means
    /// [`DEFAULT_ALLOWLIST`].
    pub fn from_env_value(value: Option<&str>) -> Result<Self, String> {
        let source = value
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .unwrap_or(DEFAULT_ALLOWLIST);
        let mut patterns = Vec::new();
        let mut written = Vec::new();
        for raw in source.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            patterns.push(parse_pattern(raw, "webhook URL", BareStar::AnyHost)?);
            written.push(raw);
        }
        if patterns.is_empty() {
            return Err("the allowlist is empty: no webhook URL could ever be used".into());
        }
        Ok(Self {
            rules: Arc::new(Rules {
                patterns,
                source: written.join(","),
            }),
        })
    }

    /// Checks a webhook URL as given, without resolving it: an absolute http(s) URL with no
    /// credentials, matching the list, and, unless its host is named exactly, not an
    /// IP literal in a refused class.
    pub fn check_url(&self, url: &str) -> Result<Url, Refusal> {
        let parsed = Url::parse(url).map_err(|e| Refusal::new(url, Reason::NotAUrl(e)))?;
        self.rules.check(&parsed)?;
        Ok(parsed)
    }

    /// [`WebhookGuard::check_url`]'s checks, then the host's name resolved: refused when it
    /// does not resolve, or when any address is in a refused class and the list does not
    /// name the host exactly.
    pub async fn check_resolved(&self, url: &Url) -> Result<(), Refusal> {
        // Checked again so that this alone is enough.
        let trust = self.rules.check(url)?;
        let Some(Host::Domain(name)) = url.host() else {
            // An IP literal: already held to the address rule by `check`.
            return Ok(());
        };
        let port = url.port_or_known_default().unwrap_or(0);
        let addrs = resolve(name, port)
            .await
            .map_err(|reason| Refusal::new(url.as_str(), reason))?;
        if trust == Trust::Named {
            return Ok(());
        }
        public_only(name, addrs.iter().map(SocketAddr::ip))
            .map_err(|reason| Refusal::new(url.as_str(), reason))
    }

    /// The HTTP client deliveries are sent with. Its resolver refuses, at connection time,
    /// a name resolving to a refused address unless the list names it exactly; its redirect
    /// policy checks each hop with [`WebhookGuard::check_url`] and follows at most
    /// [`MAX_REDIRECTS`]. A refusal fails the request with the [`Refusal`] as its cause.
    pub fn client(&self, timeout: Duration) -> reqwest::Client {
        let rules = Arc::clone(&self.rules);
        let policy = redirect::Policy::custom(move |attempt| {
            // `previous` starts with the first URL, so after n redirects it holds n + 1.
            let checked = if attempt.previous().len() > MAX_REDIRECTS {
                Err(Refusal::new(
                    attempt.url().as_str(),
                    Reason::TooManyRedirects,
                ))
            } else {
                rules.check(attempt.url()).map(|_| ())
            };
            match checked {
                Ok(()) => attempt.follow(),
                Err(refusal) => attempt.error(refusal),
            }
        });
        reqwest::Client::builder()
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(5))
            .timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            // Direct connections only: through a proxy, the resolver would see the proxy's
            // name, not the target's, and the address rule would not apply.
            .no_proxy()
            .dns_resolver(GuardedResolver {
                rules: Arc::clone(&self.rules),
            })
            .redirect(policy)
            .build()
            .expect("the webhook client's fixed settings are valid")
    }
}

impl fmt::Display for WebhookGuard {
    /// The list as configured, e.g. `https://*:*`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rules.source)
    }
}

impl Rules {
    /// Everything that can be said without DNS, and how far the host is trusted.
    fn check(&self, url: &Url) -> Result<Trust, Refusal> {
        let refuse = |reason| Refusal::new(url.as_str(), reason);
        if !matches!(url.scheme(), "http" | "https") {
            return Err(refuse(Reason::Scheme(url.scheme().to_owned())));
        }
        // Credentials are never part of a webhook target, and could confuse a proxy.
        if !url.username().is_empty() || url.password().is_some() {
            return Err(refuse(Reason::Credentials));
        }
        let matching = || self.patterns.iter().filter(|p| p.matches(url));
        let trust = if matching().any(|p| p.exact_host().is_some()) {
            Trust::Named
        } else if matching().next().is_some() {
            Trust::Wildcard
        } else {
            return Err(refuse(Reason::NotAllowlisted(self.source.clone())));
        };
        if trust == Trust::Wildcard {
            let literal = match url.host() {
                Some(Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
                Some(Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
                Some(Host::Domain(_)) | None => None,
            };
            if let Some(addr) = literal
                && let Some(class) = refused_class(addr)
            {
                return Err(refuse(Reason::Address {
                    name: None,
                    addr,
                    class,
                }));
            }
        }
        Ok(trust)
    }

    /// True when some pattern names `host` exactly. The resolver knows only the name, not
    /// the scheme or port, so at connection time a name the operator wrote anywhere in the
    /// list is trusted; the scheme and port were checked with the URL.
    fn names(&self, host: &str) -> bool {
        self.patterns
            .iter()
            .any(|p| p.exact_host().is_some_and(|h| h.eq_ignore_ascii_case(host)))
    }
}

/// Resolves a name, refusing one that has no address.
async fn resolve(name: &str, port: u16) -> Result<Vec<SocketAddr>, Reason> {
    let unresolvable = |error: String| Reason::Unresolvable {
        name: name.to_owned(),
        error,
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name, port))
        .await
        .map_err(|e| unresolvable(e.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err(unresolvable("no addresses".into()));
    }
    Ok(addrs)
}

/// Refuses `name` if any of its addresses is in a refused class: with several, the one
/// connected to is not ours to choose.
fn public_only(name: &str, addrs: impl IntoIterator<Item = IpAddr>) -> Result<(), Reason> {
    for addr in addrs {
        if let Some(class) = refused_class(addr) {
            return Err(Reason::Address {
                name: Some(name.to_owned()),
                addr,
                class,
            });
        }
    }
    Ok(())
}

/// The webhook client's DNS: the system resolver, then the address rule.
#[derive(Debug)]
struct GuardedResolver {
    rules: Arc<Rules>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let rules = Arc::clone(&self.rules);
        let name = name.as_str().to_owned();
        Box::pin(async move {
            // Port 0: the connector puts the URL's port in.
            let addrs = resolve(&name, 0)
                .await
                .map_err(|reason| Refusal::new(&name, reason))?;
            if !rules.names(&name) {
                public_only(&name, addrs.iter().map(SocketAddr::ip))
                    .map_err(|reason| Refusal::new(&name, reason))?;
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// The kinds of address a webhook may not reach unless its host is named in the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// `0.0.0.0/8`, `::`: connecting to them reaches the local host.
    Unspecified,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16`, `fc00::/7` (unique local).
    Private,
    /// `169.254.0.0/16` (cloud metadata services live here), `fe80::/10`.
    LinkLocal,
    /// `100.64.0.0/10`, carrier-grade NAT: private to the provider, often the cluster's.
    Shared,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
}

impl fmt::Display for AddressClass {
    /// The class with its article, to be read in a sentence: "a loopback address".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unspecified => "an unspecified address",
            Self::Loopback => "a loopback address",
            Self::Private => "a private address",
            Self::LinkLocal => "a link-local address",
            Self::Shared => "a shared (carrier-grade NAT) address",
            Self::Multicast => "a multicast address",
            Self::Broadcast => "the broadcast address",
        })
    }
}

/// The refused class `addr` is in, or `None` for an address a webhook may go to.
pub fn refused_class(addr: IpAddr) -> Option<AddressClass> {
    match addr {
        IpAddr::V4(v4) => refused_v4(v4),
        // `::ffff:10.0.0.1` is 10.0.0.1 to the kernel, so it is judged as that.
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => refused_v4(v4),
            None => refused_v6(v6),
        },
    }
}

fn refused_v4(v4: Ipv4Addr) -> Option<AddressClass> {
    let [a, b, ..] = v4.octets();
    Some(if a == 0 {
        AddressClass::Unspecified
    } else if v4.is_loopback() {
        AddressClass::Loopback
    } else if v4.is_private() {
        AddressClass::Private
    } else if v4.is_link_local() {
        AddressClass::LinkLocal
    } else if a == 100 && (b & 0xc0) == 64 {
        AddressClass::Shared
    } else if v4.is_multicast() {
        AddressClass::Multicast
    } else if v4.is_broadcast() {
        AddressClass::Broadcast
    } else {
        return None;
    })
}

fn refused_v6(v6: Ipv6Addr) -> Option<AddressClass> {
    let first = v6.segments()[0];
    Some(if v6.is_unspecified() {
        AddressClass::Unspecified
    } else if v6.is_loopback() {
        AddressClass::Loopback
    } else if first & 0xfe00 == 0xfc00 {
        AddressClass::Private
    } else if first & 0xffc0 == 0xfe80 {
        AddressClass::LinkLocal
    } else if v6.is_multicast() {
        AddressClass::Multicast
    } else {
        return None;
    })
}

/// A webhook target refused, naming the target and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{target} is refused: {reason}")]
pub struct Refusal {
    target: String,
    reason: Reason,
}

impl Refusal {
    fn new(target: impl Into<String>, reason: Reason) -> Self {
        Self {
            target: target.into(),
            reason,
        }
    }

    /// The URL refused (at connection time, the host name).
    pub fn target(&self) -> &str {
        &self.target
    }

    pub fn reason(&self) -> &Reason {
        &self.reason
    }
}

/// Why a webhook target was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    #[error("it is not an absolute URL ({0})")]
    NotAUrl(url::ParseError),
    #[error("its scheme is {0}, not http or https")]
    Scheme(String),
    #[error("it carries credentials")]
    Credentials,
    #[error("it does not match HERALD_WEBHOOK_ALLOWLIST ({0})")]
    NotAllowlisted(String),
    /// `name` is the host name the address was resolved from; `None` for an IP literal.
    #[error(
        "{}; name the host in HERALD_WEBHOOK_ALLOWLIST to allow it",
        describe_address(name.as_deref(), *addr, *class)
    )]
    Address {
        name: Option<String>,
        addr: IpAddr,
        class: AddressClass,
    },
    #[error("{name} does not resolve ({error})")]
    Unresolvable { name: String, error: String },
    #[error("it was redirected more than {MAX_REDIRECTS} times")]
    TooManyRedirects,
}

fn describe_address(name: Option<&str>, addr: IpAddr, class: AddressClass) -> String {
    match name {
        Some(name) => format!("{name} resolves to {addr}, {class}"),
        None => format!("{addr} is {class}"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;
    use crate::error::Chain;

    fn guard(allowlist: Option<&str>) -> WebhookGuard {
        WebhookGuard::from_env_value(allowlist).unwrap()
    }

    fn reason(result: Result<impl fmt::Debug, Refusal>) -> Reason {
        result.unwrap_err().reason().clone()
    }

    fn address(name: Option<&str>, addr: &str, class: AddressClass) -> Reason {
        Reason::Address {
            name: name.map(str::to_owned),
            addr: addr.parse().unwrap(),
            class,
        }
    }

    #[test]
    fn by_default_only_https_is_allowed_and_the_refusal_names_the_list() {
        let default = guard(None);
        assert_eq!(default.to_string(), "https://*:*");
        assert!(
            default
                .check_url("https://hooks.example.com:8443/herald")
                .is_ok()
        );
        let refusal = default
            .check_url("http://hooks.example.com/herald")
            .unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "http://hooks.example.com/herald is refused: \
             it does not match HERALD_WEBHOOK_ALLOWLIST (https://*:*)"
        );
        for plain_http in [
            "http://127.0.0.1",
            "http://169.254.169.254/latest/meta-data/",
        ] {
            assert!(
                matches!(
                    reason(default.check_url(plain_http)),
                    Reason::NotAllowlisted(_)
                ),
                "{plain_http}"
            );
        }
    }

    #[test]
    fn loopback_and_metadata_addresses_are_refused_even_where_any_host_is_allowed() {
        let any_host = guard(Some("http://*:*, https://*:*"));
        let refusal = any_host.check_url("http://127.0.0.1:9000").unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "http://127.0.0.1:9000/ is refused: 127.0.0.1 is a loopback address; \
             name the host in HERALD_WEBHOOK_ALLOWLIST to allow it"
        );
        assert_eq!(
            reason(any_host.check_url("http://169.254.169.254/latest/meta-data/")),
            address(None, "169.254.169.254", AddressClass::LinkLocal)
        );
        assert_eq!(
            reason(guard(None).check_url("https://127.0.0.1/")),
            address(None, "127.0.0.1", AddressClass::Loopback)
        );
    }

    #[test]
    fn ipv6_literals_are_judged_by_the_address_they_reach() {
        let default = guard(None);
        for (url, addr, class) in [
            (
                "https://[::ffff:10.0.0.1]/",
                "10.0.0.1",
                AddressClass::Private,
            ),
            (
                "https://[::ffff:127.0.0.1]/",
                "127.0.0.1",
                AddressClass::Loopback,
            ),
            ("https://[::1]/", "::1", AddressClass::Loopback),
            (
                "https://[fd12:3456::1]/",
                "fd12:3456::1",
                AddressClass::Private,
            ),
            ("https://[fe80::1]/", "fe80::1", AddressClass::LinkLocal),
        ] {
            let Reason::Address {
                addr: refused,
                class: got,
                ..
            } = reason(default.check_url(url))
            else {
                panic!("{url} was refused for another reason");
            };
            assert_eq!(got, class, "{url}");
            // The mapped forms are reported as written, not as the IPv4 address.
            assert_eq!(refused_class(refused), Some(class), "{url}");
            assert_eq!(refused_class(addr.parse().unwrap()), Some(class), "{addr}");
        }
        assert!(default.check_url("https://[2606:4700::1111]/").is_ok());
    }

    #[test]
    fn every_refused_class_is_recognised_and_public_addresses_pass() {
        use AddressClass::*;
        for (addr, class) in [
            ("0.0.0.0", Some(Unspecified)),
            ("0.1.2.3", Some(Unspecified)),
            ("::", Some(Unspecified)),
            ("127.0.0.53", Some(Loopback)),
            ("10.1.2.3", Some(Private)),
            ("172.16.0.1", Some(Private)),
            ("172.31.255.255", Some(Private)),
            ("192.168.1.1", Some(Private)),
            ("fc00::1", Some(Private)),
            ("169.254.169.254", Some(LinkLocal)),
            ("fe80::1", Some(LinkLocal)),
            ("100.64.0.1", Some(Shared)),
            ("100.127.255.255", Some(Shared)),
            ("224.0.0.1", Some(Multicast)),
            ("ff02::1", Some(Multicast)),
            ("255.255.255.255", Some(Broadcast)),
            ("::ffff:192.168.0.1", Some(Private)),
            ("8.8.8.8", None),
            ("172.32.0.1", None),
            ("100.128.0.1", None),
            ("2606:4700::1111", None),
            ("::ffff:8.8.8.8", None),
        ] {
            assert_eq!(refused_class(addr.parse().unwrap()), class, "{addr}");
        }
    }

    #[test]
    fn a_host_the_list_names_exactly_may_be_at_any_address() {
        let local = guard(Some("http://127.0.0.1:*,http://169.254.169.254"));
        assert!(local.check_url("http://127.0.0.1:9000/hook").is_ok());
        assert!(local.check_url("http://127.0.0.1").is_ok());
        assert!(local.check_url("http://169.254.169.254/latest/").is_ok());
        assert!(
            matches!(
                reason(local.check_url("http://169.254.169.254:8080/")),
                Reason::NotAllowlisted(_)
            ),
            "the port is part of the pattern"
        );
        assert!(
            matches!(
                reason(local.check_url("http://127.0.0.2/")),
                Reason::NotAllowlisted(_)
            ),
            "only the address named"
        );
    }

    #[tokio::test]
    async fn a_name_resolving_to_a_loopback_address_is_refused_after_resolution() {
        let default = guard(None);
        // The name alone says nothing; only its addresses do.
        let url = default.check_url("https://localhost:8443/x").unwrap();
        let refusal = default.check_resolved(&url).await.unwrap_err();
        let Reason::Address { name, class, .. } = refusal.reason() else {
            panic!("refused for another reason: {refusal}");
        };
        assert_eq!(name.as_deref(), Some("localhost"));
        assert_eq!(*class, AddressClass::Loopback);
        assert!(
            refusal
                .to_string()
                .starts_with("https://localhost:8443/x is refused: localhost resolves to "),
            "{refusal}"
        );
    }

    #[tokio::test]
    async fn a_name_the_list_names_exactly_passes_after_resolution() {
        let named = guard(Some("https://localhost:*"));
        let url = named.check_url("https://localhost:8443/x").unwrap();
        named.check_resolved(&url).await.unwrap();
        let literal = guard(Some("http://127.0.0.1:*"));
        let url = literal.check_url("http://127.0.0.1:9000/").unwrap();
        literal.check_resolved(&url).await.unwrap();
    }

    #[tokio::test]
    async fn check_resolved_alone_applies_the_url_checks_too() {
        let default = guard(None);
        let url = Url::parse("http://127.0.0.1/").unwrap();
        assert!(matches!(
            reason(default.check_resolved(&url).await),
            Reason::NotAllowlisted(_)
        ));
    }

    #[test]
    fn urls_that_are_not_plain_http_targets_are_refused() {
        let any_host = guard(Some("http://*:*,https://*:*"));
        assert!(matches!(
            reason(any_host.check_url("/relative")),
            Reason::NotAUrl(_)
        ));
        assert_eq!(
            reason(any_host.check_url("ftp://files.example.com/")),
            Reason::Scheme("ftp".into())
        );
        assert_eq!(
            reason(any_host.check_url("https://user:pw@hooks.example.com/")),
            Reason::Credentials
        );
    }

    #[test]
    fn the_list_reads_like_the_service_url_allowlist_with_a_bare_star_for_any_host() {
        let default_port = guard(Some("https://*"));
        assert!(default_port.check_url("https://hooks.example.com/").is_ok());
        assert!(
            default_port
                .check_url("https://hooks.example.com:8443/")
                .is_err()
        );
        let subdomains = guard(Some("https://*.example.com"));
        assert!(subdomains.check_url("https://hooks.example.com/").is_ok());
        assert!(subdomains.check_url("https://example.org/").is_err());
        assert_eq!(
            guard(Some("  ")).to_string(),
            DEFAULT_ALLOWLIST,
            "blank is unset"
        );
        for bad in [
            ",",
            "ftp://*",
            "https://a.*.com",
            "hooks.example.com",
            "https://*:x",
        ] {
            let err = WebhookGuard::from_env_value(Some(bad)).unwrap_err();
            assert!(!err.is_empty(), "{bad}");
        }
    }

    /// A local HTTP server answering every request with `answer(port)`, and a count of the
    /// requests it has had. It listens on 127.0.0.1 only.
    async fn serve(answer: fn(u16) -> String) -> (u16, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&requests);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut head = Vec::new();
                let mut buf = [0; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                counted.fetch_add(1, Ordering::SeqCst);
                let _ = stream.write_all(answer(port).as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        });
        (port, requests)
    }

    fn ok(_: u16) -> String {
        "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into()
    }

    fn redirect_to_loopback_literal(port: u16) -> String {
        format!(
            "HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:{port}/\r\n\
             content-length: 0\r\nconnection: close\r\n\r\n"
        )
    }

    fn redirect_to_itself(port: u16) -> String {
        format!(
            "HTTP/1.1 302 Found\r\nlocation: http://localhost:{port}/again\r\n\
             content-length: 0\r\nconnection: close\r\n\r\n"
        )
    }

    #[tokio::test]
    async fn the_client_sends_to_a_host_the_list_names() {
        let (port, requests) = serve(ok).await;
        let client = guard(Some("http://localhost:*")).client(Duration::from_secs(5));
        let answer = client
            .post(format!("http://localhost:{port}/hook"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        assert_eq!(requests.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_client_refuses_a_redirect_to_a_loopback_address() {
        let (port, requests) = serve(redirect_to_loopback_literal).await;
        // The first hop's host is named, so it may be on loopback; the second hop matches
        // only the wildcard, and its address is loopback.
        let client = guard(Some("http://localhost:*,http://*:*")).client(Duration::from_secs(5));
        let error = client
            .post(format!("http://localhost:{port}/hook"))
            .send()
            .await
            .unwrap_err();
        assert!(error.is_redirect(), "{}", Chain(&error));
        let text = Chain(&error).to_string();
        assert!(
            text.contains(&format!(
                "http://127.0.0.1:{port}/ is refused: 127.0.0.1 is a loopback address"
            )),
            "{text}"
        );
        assert_eq!(
            requests.load(Ordering::SeqCst),
            1,
            "the redirect was not followed"
        );
    }

    #[tokio::test]
    async fn the_client_refuses_at_connection_time_a_name_resolving_to_loopback() {
        // As if the name had been re-pointed after `check_resolved` let it through.
        let (port, requests) = serve(ok).await;
        let client = guard(Some("http://*:*")).client(Duration::from_secs(5));
        let error = client
            .post(format!("http://localhost:{port}/hook"))
            .send()
            .await
            .unwrap_err();
        let text = Chain(&error).to_string();
        assert!(
            text.contains("localhost is refused: localhost resolves to "),
            "{text}"
        );
        assert!(text.contains("a loopback address"), "{text}");
        assert_eq!(requests.load(Ordering::SeqCst), 0, "nothing was sent");
    }

    #[tokio::test]
    async fn the_client_stops_after_five_redirects() {
        let (port, requests) = serve(redirect_to_itself).await;
        let client = guard(Some("http://localhost:*")).client(Duration::from_secs(5));
        let error = client
            .post(format!("http://localhost:{port}/hook"))
            .send()
            .await
            .unwrap_err();
        let text = Chain(&error).to_string();
        assert!(text.contains("redirected more than 5 times"), "{text}");
        assert_eq!(requests.load(Ordering::SeqCst), 1 + MAX_REDIRECTS);
    }
}

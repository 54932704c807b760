//! Where Redis and RabbitMQ are, and the [`Namespace`] that keeps a deployment's names apart in
//! them. URLs may carry passwords: [`SecretUrl`] and [`RedisTarget`] hide them when shown.

use std::{fmt, str::FromStr};

use url::Url;

/// Prefix of every AMQP exchange/queue name and Redis key: isolates deployments and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace(pub(super) String);

impl Namespace {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Namespace {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err("must be 1-64 characters of a-z, 0-9, - and _".into())
        }
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A URL that may carry a password; `Debug` and `Display` hide it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(pub(super) Url);

impl SecretUrl {
    pub fn parse(raw: &str) -> Result<Self, url::ParseError> {
        Url::parse(raw).map(Self)
    }

    pub fn expose(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.clone();
        if shown.password().is_some() {
            let _ = shown.set_password(Some("***"));
        }
        f.write_str(shown.as_str())
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// The RabbitMQ nodes to use (`HERALD_AMQP_URL`): one, or several nodes of one cluster,
/// comma-separated. They are tried in turn on connect and on every reconnect, so losing the
/// node a service is connected to moves it to the next one.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpNodes(Vec<SecretUrl>);

impl AmqpNodes {
    /// The nodes, in the order given (never empty).
    pub fn urls(&self) -> &[SecretUrl] {
        &self.0
    }
}

impl FromStr for AmqpNodes {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut nodes = Vec::new();
        for (position, raw) in s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .enumerate()
        {
            // Named by position, not shown: the text may hold a password.
            let url = Url::parse(raw)
                .map_err(|e| format!("node {} of the list is not a URL ({e})", position + 1))?;
            if !matches!(url.scheme(), "amqp" | "amqps") {
                return Err("must be an amqp:// or amqps:// URL, or a comma-separated list".into());
            }
            nodes.push(SecretUrl(url));
        }
        if nodes.is_empty() {
            return Err("is empty".into());
        }
        Ok(Self(nodes))
    }
}

impl fmt::Display for AmqpNodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (position, node) in self.0.iter().enumerate() {
            if position > 0 {
                f.write_str(",")?;
            }
            write!(f, "{node}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for AmqpNodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// Where Redis is: one server, or a Redis Cluster (`redis+cluster://seed` or a comma-separated
/// list of nodes).
#[derive(Clone, PartialEq, Eq)]
pub enum RedisTarget {
    Single(SecretUrl),
    Cluster(Vec<SecretUrl>),
}

impl FromStr for RedisTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut cluster = false;
        let mut nodes = Vec::new();
        for raw in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (raw, is_cluster) = match raw.split_once("+cluster://") {
                Some((scheme, rest)) => (format!("{scheme}://{rest}"), true),
                None => (raw.to_owned(), false),
            };
            cluster |= is_cluster;
            // Not shown: the text may hold a password.
            let url = Url::parse(&raw).map_err(|e| format!("a node is not a URL ({e})"))?;
            if !matches!(url.scheme(), "redis" | "rediss") {
                return Err(
                    "must be redis://, rediss://, redis+cluster:// or a list of them".into(),
                );
            }
            nodes.push(SecretUrl(url));
        }
        match nodes.len() {
            0 => Err("is empty".into()),
            1 if !cluster => Ok(Self::Single(nodes.remove(0))),
            _ => Ok(Self::Cluster(nodes)),
        }
    }
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Single(url) => write!(f, "{url:?}"),
            Self::Cluster(nodes) => f.debug_tuple("Cluster").field(nodes).finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_is_one_server_or_a_cluster() {
        let single: RedisTarget = "redis://:pw@10.0.0.1:6379".parse().unwrap();
        assert!(matches!(single, RedisTarget::Single(_)));
        assert!(!format!("{single:?}").contains("pw"));
        let seeded: RedisTarget = "redis+cluster://10.0.0.1:7000".parse().unwrap();
        let RedisTarget::Cluster(nodes) = seeded else {
            panic!("a cluster")
        };
        assert_eq!(nodes[0].expose(), "redis://10.0.0.1:7000");
        let listed: RedisTarget = "redis://a:7000, redis://b:7001".parse().unwrap();
        assert!(matches!(listed, RedisTarget::Cluster(n) if n.len() == 2));
        assert!("http://a".parse::<RedisTarget>().is_err());
    }

    #[test]
    fn rabbitmq_is_one_node_or_several() {
        let one: AmqpNodes = "amqp://guest:pw@10.0.0.1:5672/%2f".parse().unwrap();
        assert_eq!(one.urls().len(), 1);
        assert!(!format!("{one:?}").contains("pw"));
        let three: AmqpNodes = "amqp://a:5672, amqp://b:5673,amqps://c:5671/vh"
            .parse()
            .unwrap();
        let hosts: Vec<_> = three
            .urls()
            .iter()
            .map(|u| u.0.host_str().unwrap())
            .collect();
        assert_eq!(hosts, ["a", "b", "c"]);
        assert_eq!(
            three.to_string(),
            "amqp://a:5672,amqp://b:5673,amqps://c:5671/vh"
        );
        for wrong in ["", " , ", "http://a", "amqp://a,redis://b", "not a url"] {
            assert!(wrong.parse::<AmqpNodes>().is_err(), "{wrong:?} is accepted");
        }
    }
}

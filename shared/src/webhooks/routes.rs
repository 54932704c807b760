//! Which events reach `{ns}.webhooks`: only those some webhook wants. The queue is bound to
//! `{ns}.events` with one binding key per type pattern in use, so an event nobody asked a
//! webhook for is never stored or handled (and one no consumer at all wants is dropped by the
//! broker).
//!
//! A webhook's types are `*`, an event type, or a family of types `herald.notification.*`,
//! which map onto topic keys as `#`, the type, and `herald.notification.#`. The ingress binds a
//! new webhook's keys as it makes it and unbinds, when one is deleted, the keys no remaining
//! webhook needs; the dispatcher's webhook sender binds the stored webhooks' keys every few
//! seconds, which heals a change the ingress could not make (RabbitMQ away, two racing).

use std::collections::BTreeSet;

use lapin::{Channel, options::QueueBindOptions, types::FieldTable};

use super::Webhook;
use crate::{
    amqp::{Link, Topology},
    events::EventType,
};

/// The topic binding key for one of a webhook's type patterns.
pub fn binding_key(pattern: &str) -> String {
    match pattern.strip_suffix('*') {
        Some("") => "#".to_owned(),
        Some(family) => format!("{family}#"),
        None => pattern.to_owned(),
    }
}

/// Every key the webhooks need.
pub fn wanted_keys(hooks: &[Webhook]) -> BTreeSet<String> {
    hooks
        .iter()
        .flat_map(|h| h.types.iter().map(|t| binding_key(t)))
        .collect()
}

/// Every key a webhook could ever need: `#`, each type, and each family of types.
pub fn possible_keys() -> BTreeSet<String> {
    let mut keys = BTreeSet::from(["#".to_owned()]);
    for kind in EventType::ALL {
        let name = kind.as_str();
        keys.insert(name.to_owned());
        for (i, _) in name.match_indices('.') {
            keys.insert(format!("{}.#", &name[..i]));
        }
    }
    keys
}

/// Binds `{ns}.webhooks` to `{ns}.events` with `keys`.
pub async fn bind(link: &Link, topology: &Topology, keys: &BTreeSet<String>) -> lapin::Result<()> {
    let (queue, exchange) = (topology.webhooks_queue(), topology.events_exchange());
    on_own_channel(link, |channel| async move {
        for key in keys {
            channel
                .queue_bind(
                    queue.as_str().into(),
                    exchange.as_str().into(),
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    })
    .await
}

/// Unbinds the [`possible_keys`] that are not `wanted`.
pub async fn unbind_unwanted(
    link: &Link,
    topology: &Topology,
    wanted: &BTreeSet<String>,
) -> lapin::Result<()> {
    let (queue, exchange) = (topology.webhooks_queue(), topology.events_exchange());
    on_own_channel(link, |channel| async move {
        // Unbinding a key that is not bound is not an error.
        for key in possible_keys().difference(wanted) {
            channel
                .queue_unbind(
                    queue.as_str().into(),
                    exchange.as_str().into(),
                    key.as_str().into(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    })
    .await
}

/// Runs `work` on a channel of its own, closed after: a refused binding closes that channel,
/// not the link's publish channel.
async fn on_own_channel<F, Fut>(link: &Link, work: F) -> lapin::Result<()>
where
    F: FnOnce(Channel) -> Fut,
    Fut: std::future::Future<Output = lapin::Result<()>>,
{
    let channel = link.connection.create_channel().await?;
    let done = work(channel.clone()).await;
    let _ = channel.close(200, "bindings done".into()).await;
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhooks::store::type_matches;

    #[test]
    fn a_patterns_key_routes_exactly_the_types_the_pattern_matches() {
        assert_eq!(binding_key("*"), "#");
        assert_eq!(
            binding_key("herald.notification.*"),
            "herald.notification.#"
        );
        assert_eq!(
            binding_key("herald.message.received"),
            "herald.message.received"
        );
        // A topic key `a.b.#` matches the types under `a.b.`, as the pattern does.
        for kind in EventType::ALL {
            let name = kind.as_str();
            for pattern in ["*", "herald.*", "herald.notification.*", name] {
                let key = binding_key(pattern);
                let routed = key == "#"
                    || key == name
                    || key
                        .strip_suffix('#')
                        .is_some_and(|prefix| name.starts_with(prefix));
                assert_eq!(routed, type_matches(pattern, name), "{pattern} / {name}");
            }
        }
    }

    #[test]
    fn every_key_a_valid_pattern_needs_is_a_possible_key() {
        let possible = possible_keys();
        for kind in EventType::ALL {
            let name = kind.as_str();
            assert!(possible.contains(name));
            assert!(possible.contains("herald.#"));
        }
        assert!(possible.contains("herald.notification.#"));
        assert!(possible.contains("#"));
    }
}

//! The link to RabbitMQ, kept alive by a supervisor task.
//!
//! Services start while the broker is down and stay up through outages: the supervisor
//! connects with backoff, declares the topology, opens a publisher-confirm channel and
//! publishes the [`Link`]; when the connection or that channel dies it withdraws the link and
//! starts again. Given the nodes of a cluster, it tries them in turn, starting after the node
//! it lost: any node serves every queue, and the lost one is likely down. Everything that
//! uses the broker reads the current link (or waits for the next one), so readiness is simply
//! "is there a link".

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use lapin::{
    Channel, Connection, ConnectionProperties, options::ConfirmSelectOptions, uri::AMQPUri,
};
use tokio::sync::watch;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::topology::Topology;
use crate::{config::AmqpNodes, error::Chain};

/// A live connection with its topology declared and a confirm-mode channel for publishing.
#[derive(Clone)]
pub struct Link {
    pub connection: Arc<Connection>,
    pub publish_channel: Channel,
    /// Increases with every reconnection, so consumers can tell a new link from the old.
    pub epoch: u64,
    /// Publishes the broker refused in a row on this link, since the last one it took.
    pub refused_in_a_row: Arc<std::sync::atomic::AtomicU32>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl Link {
    fn alive(&self) -> bool {
        self.connection.status().connected() && self.publish_channel.status().connected()
    }
}

/// An AMQP URL could not be parsed as lapin reads it.
#[derive(Debug, thiserror::Error)]
#[error("HERALD_AMQP_URL: node {node} is not a valid AMQP URI: {reason}")]
pub struct InvalidAmqpUrl {
    /// Its position in the list, from 1 (the URL itself may hold a password).
    node: usize,
    reason: String,
}

#[derive(Clone)]
pub struct Broker {
    topology: Topology,
    state: watch::Receiver<Option<Link>>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("ready", &self.is_ready())
            .finish_non_exhaustive()
    }
}

/// How long a connection attempt may take before it is abandoned and retried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Heartbeats find a silently dead connection (a cut network) within about two intervals.
const HEARTBEAT_SECS: u16 = 5;
/// How often the supervisor looks at a live link's health between connection events.
const HEALTH_CHECK: Duration = Duration::from_millis(500);
/// How long closing a connection may wait for the broker's close-ok. A busy or dying broker
/// may never answer, and a service stopping within its shutdown grace cannot wait on it:
/// once this has passed the socket is dropped, which the broker treats as a closed
/// connection (unacked deliveries go back to their queues either way).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

impl Broker {
    /// Starts the supervisor. It runs until `stop` is cancelled, then closes the connection.
    /// Services cancel `stop` last, after their consumers have acked what they finished.
    pub fn start(
        nodes: &AmqpNodes,
        topology: Topology,
        name: &str,
        stop: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<Self, InvalidAmqpUrl> {
        let nodes = nodes
            .urls()
            .iter()
            .enumerate()
            .map(|(position, url)| {
                let mut uri: AMQPUri = url.expose().parse().map_err(|reason| InvalidAmqpUrl {
                    node: position + 1,
                    reason,
                })?;
                uri.query.heartbeat.get_or_insert(HEARTBEAT_SECS);
                Ok(Node {
                    uri,
                    shown: url.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (sender, state) = watch::channel(None);
        tracker.spawn(supervise(
            nodes,
            topology.clone(),
            name.to_owned(),
            sender,
            stop,
        ));
        Ok(Self { topology, state })
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    pub fn current(&self) -> Option<Link> {
        self.state.borrow().clone().filter(Link::alive)
    }

    pub fn is_ready(&self) -> bool {
        self.current().is_some()
    }

    /// Changes of the link, for consumers that must restart on every new link.
    pub fn watch(&self) -> watch::Receiver<Option<Link>> {
        self.state.clone()
    }
}

/// One RabbitMQ node to try.
struct Node {
    uri: AMQPUri,
    /// Its URL for logs, password redacted.
    shown: String,
}

/// Keeps one link to RabbitMQ up until `stop`, publishing each new link (and its loss) on
/// `state`. The nodes are tried in turn; the backoff grows only when a whole round failed.
///
/// # Cancel safety
/// Stopped through `stop`, it closes the connection cleanly. Dropped mid-connect, the half-made
/// connection is dropped too and the broker closes it; `state` keeps whatever it last said,
/// so a dropped supervisor must not be relied on (the broker is meant to live as long as its
/// service).
async fn supervise(
    nodes: Vec<Node>,
    topology: Topology,
    name: String,
    state: watch::Sender<Option<Link>>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    let mut epoch = 0;
    // The node to try next, and how many have failed in a row.
    let mut next = 0;
    let mut failed_in_a_row = 0;
    while !stop.is_cancelled() {
        let node = &nodes[next];
        next = (next + 1) % nodes.len();
        let attempt = tokio::time::timeout(CONNECT_TIMEOUT, connect(&node.uri, &topology, &name));
        let outcome = tokio::select! {
            _ = stop.cancelled() => break,
            outcome = attempt => outcome,
        };
        match outcome {
            Ok(Ok((connection, publish_channel))) => {
                epoch += 1;
                backoff = Duration::from_millis(100);
                failed_in_a_row = 0;
                let link = Link {
                    connection: Arc::new(connection),
                    publish_channel,
                    epoch,
                    refused_in_a_row: Arc::default(),
                };
                tracing::info!(epoch, node = %node.shown, "connected to RabbitMQ; topology declared");
                state.send_replace(Some(link.clone()));
                let stopped = wait_until_lost(&link, &stop).await;
                state.send_replace(None);
                if stopped {
                    close(&link, 200, "shutting down").await;
                    return;
                }
                tracing::warn!(epoch, node = %node.shown, "lost the RabbitMQ connection; reconnecting");
                close(&link, 320, "reconnecting").await;
                // On to the next node after a short pause (the cluster is most likely still
                // there; the pause keeps a link that dies at once from spinning).
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => continue,
                }
            }
            Ok(Err(error)) => {
                tracing::warn!(node = %node.shown, error = %Chain(&error), "cannot reach RabbitMQ")
            }
            Err(_) => tracing::warn!(node = %node.shown, "connecting to RabbitMQ timed out"),
        }
        failed_in_a_row += 1;
        if failed_in_a_row % nodes.len() != 0 {
            continue;
        }
        tracing::warn!(retry_in = ?backoff, nodes = nodes.len(), "no RabbitMQ node answered");
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    state.send_replace(None);
}

/// Closes the link's connection, waiting at most [`CLOSE_TIMEOUT`] for the broker.
async fn close(link: &Link, code: u16, reason: &str) {
    let closing = link.connection.close(code, reason.into());
    if tokio::time::timeout(CLOSE_TIMEOUT, closing).await.is_err() {
        tracing::warn!(
            code,
            "RabbitMQ did not confirm the close in time; dropping the connection"
        );
    }
}

async fn connect(
    uri: &AMQPUri,
    topology: &Topology,
    name: &str,
) -> lapin::Result<(Connection, Channel)> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let connection = Connection::connect_uri(uri.clone(), properties).await?;
    let channel = connection.create_channel().await?;
    topology.declare(&channel).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok((connection, channel))
}

/// Waits until the link dies (true: because `stop` was cancelled).
///
/// # Cancel safety
/// Cancel safe: it only watches; a cancelled wait loses an event that said the link is dying,
/// and the next health check sees it.
async fn wait_until_lost(link: &Link, stop: &CancellationToken) -> bool {
    let mut events = link.connection.events_listener();
    let mut health = tokio::time::interval(HEALTH_CHECK);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return true,
            event = events.next() => match event {
                Some(lapin::Event::Error(error)) => {
                    tracing::warn!(error = %Chain(&error), "RabbitMQ connection error");
                    return false;
                }
                None => return false,
                Some(_) => {}
            },
            _ = health.tick() => if !link.alive() { return false },
        }
    }
}

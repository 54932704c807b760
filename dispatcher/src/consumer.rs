//! Consuming `{ns}.dispatch`: one consumer per broker link, one task per delivery, at most
//! `HERALD_PREFETCH` deliveries in flight (the broker stops sending until some are acked).

use std::sync::Arc;

use futures_util::StreamExt;
use herald_shared::{
    amqp::{Broker, Link},
    error::Chain,
};
use lapin::{
    options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{acks::Settler, delivery::Handler};

/// Consumes until `stop` is cancelled, re-subscribing on every new broker link. Returns the
/// handlers still running, for the caller to wait on (or abandon) during shutdown.
///
/// # Cancel safety
/// Not meant to be dropped: stop it with `stop`, which returns the handlers in flight. Dropped
/// instead, the `JoinSet` goes with it and aborts every handler; their deliveries stay unacked
/// and RabbitMQ hands them out again when the channel closes, so nothing is lost, but work is
/// done twice (the send lease keeps a message from going out twice). Each `select!` in its
/// loop only waits (for a new link, a timer, a handler to finish), and losing a wait loses
/// nothing.
pub async fn consume(
    broker: Broker,
    handler: Arc<Handler>,
    prefetch: u16,
    stop: CancellationToken,
) -> JoinSet<()> {
    let mut in_flight = JoinSet::new();
    let mut links = broker.watch();
    loop {
        let link = links.borrow_and_update().clone();
        match link {
            Some(link) => {
                if let Err(error) =
                    consume_link(&broker, &link, &handler, prefetch, &stop, &mut in_flight).await
                {
                    tracing::warn!(
                        error = %Chain(&error),
                        "consuming stopped; waiting for the broker link"
                    );
                }
            }
            None => tracing::info!("waiting for RabbitMQ"),
        }
        if stop.is_cancelled() {
            return in_flight;
        }
        // Wait for the next link, or look again shortly (a consumer-level failure on a link
        // that is still up).
        tokio::select! {
            _ = stop.cancelled() => return in_flight,
            changed = links.changed() => if changed.is_err() { return in_flight },
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
        while in_flight.try_join_next().is_some() {}
    }
}

/// Consumes one link's deliveries, spawning a handler for each into `in_flight`.
///
/// # Cancel safety
/// The `select!` takes at most one delivery per turn and spawns its handler in the same turn,
/// so a branch that loses the race has taken nothing: `consumer.next()` is cancel safe (an
/// unpolled delivery waits in lapin's buffer), and so are `stop.cancelled()` and
/// `join_next()`.
async fn consume_link(
    broker: &Broker,
    link: &Link,
    handler: &Arc<Handler>,
    prefetch: u16,
    stop: &CancellationToken,
    in_flight: &mut JoinSet<()>,
) -> lapin::Result<()> {
    let channel = link.connection.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let queue = broker.topology().dispatch_queue();
    let tag = format!("{}-{}", handler.instance, link.epoch);
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(%queue, prefetch, "consuming");
    // The settler owns the channel until every delivery taken on it is settled, even after
    // the consumer is gone (lapin closes a channel when its last handle drops, and a closed
    // channel cannot ack).
    let settler = Settler::start(
        channel.clone(),
        prefetch,
        handler.metrics.clone(),
        in_flight,
    );
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                // Stop taking work; deliveries in flight finish (or are abandoned) afterwards,
                // on this same channel, so their acks still count.
                let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                return Ok(());
            }
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    in_flight.spawn(handler.clone().handle(delivery, settler.clone()));
                }
                Some(Err(error)) => return Err(error),
                None => return Ok(()),
            },
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
        }
    }
}

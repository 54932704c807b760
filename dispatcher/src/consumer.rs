//! Consuming `{ns}.dispatch`: one consumer per broker link, one task per delivery, at most
//! `HERALD_PREFETCH` deliveries in flight (the broker stops sending until some are acked).
//!
//! A consumer that has had nothing to do for [`RESTART_WHEN_IDLE`] is restarted on a new
//! channel. The reason is a RabbitMQ fault: when a quorum queue's leader dies while deliveries
//! are on their way to a consumer on another node, the new leader can count some of them as
//! delivered to that consumer although they never arrived (the queue shows them unacked, no
//! handler holds them). They come back only when the consumer's channel closes. Restarting an
//! idle consumer is cheap and loses nothing (nothing is in work on it). Each restart with no
//! work between doubles the wait for the next, up to [`RESTART_WHEN_IDLE_AT_MOST`]: a
//! stranded delivery waits at most that long, whatever the consumer did before, and an idle
//! dispatcher opens a channel twice a minute.

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use herald_shared::{
    amqp::{Broker, Link},
    error::Chain,
};
use lapin::{
    options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use tokio::{task::JoinSet, time::Instant};
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
    let mut restart_after = RESTART_WHEN_IDLE;
    loop {
        let link = links.borrow_and_update().clone();
        match link {
            Some(link) => {
                let consuming = Consuming {
                    broker: &broker,
                    link: &link,
                    handler: &handler,
                    prefetch,
                    stop: &stop,
                };
                if let Err(error) = consuming.run(&mut in_flight, &mut restart_after).await {
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
        // that is still up, or an idle consumer restarted).
        tokio::select! {
            _ = stop.cancelled() => return in_flight,
            changed = links.changed() => if changed.is_err() { return in_flight },
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
        while in_flight.try_join_next().is_some() {}
    }
}

/// After this long with nothing delivered and nothing in work since its last delivery, a
/// consumer is restarted; each restart with none between doubles the wait (see the module
/// docs).
pub const RESTART_WHEN_IDLE: Duration = Duration::from_secs(10);

/// The longest an idle consumer goes without a restart.
pub const RESTART_WHEN_IDLE_AT_MOST: Duration = Duration::from_secs(30);

/// One consumer on one broker link.
struct Consuming<'a> {
    broker: &'a Broker,
    link: &'a Link,
    handler: &'a Arc<Handler>,
    prefetch: u16,
    stop: &'a CancellationToken,
}

impl Consuming<'_> {
    /// Consumes the link's deliveries, spawning a handler for each into `in_flight`, until
    /// `stop`, the link's end, or an idle restart. `restart_after` is how long the consumer
    /// may be idle before that restart: [`RESTART_WHEN_IDLE`] once it takes a delivery,
    /// doubled by every restart after which it took none.
    ///
    /// # Cancel safety
    /// The `select!` takes at most one delivery per turn and spawns its handler in the same
    /// turn, so a branch that loses the race has taken nothing: `consumer.next()` is cancel
    /// safe (an unpolled delivery waits in lapin's buffer), and so are `stop.cancelled()`,
    /// `join_next()` and the idle timer.
    async fn run(
        &self,
        in_flight: &mut JoinSet<()>,
        restart_after: &mut Duration,
    ) -> lapin::Result<()> {
        let Self {
            broker,
            link,
            handler,
            prefetch,
            stop,
        } = self;
        let channel = link.connection.create_channel().await?;
        channel
            .basic_qos(*prefetch, BasicQosOptions::default())
            .await?;
        let queue = broker.topology().dispatch_queue();
        let tag = format!(
            "{}-{}-{}",
            handler.instance,
            link.epoch,
            uuid::Uuid::new_v4().simple()
        );
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
            *prefetch,
            handler.metrics.clone(),
            in_flight,
        );
        // One clone per handler at work on this channel's deliveries.
        let at_work = Arc::new(());
        let mut quiet_since = Instant::now();
        loop {
            let idle = Arc::strong_count(&at_work) == 1;
            tokio::select! {
                _ = stop.cancelled() => {
                    // Stop taking work; deliveries in flight finish (or are abandoned)
                    // afterwards, on this same channel, so their acks still count.
                    let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                    return Ok(());
                }
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        *restart_after = RESTART_WHEN_IDLE;
                        quiet_since = Instant::now();
                        let (handler, settler, working) = (Arc::clone(handler), settler.clone(), at_work.clone());
                        // Boxed: a task holding its future by value copies it whole several
                        // times as it is spawned and as it ends, where a box is one pointer.
                        // A handler's future holds every step a delivery may take, so its
                        // rare steps are boxed too, where they are awaited (at ten kilobytes,
                        // those copies cost more than telling a job's end: BENCHMARKS.md,
                        // section 9).
                        in_flight.spawn(Box::pin(async move {
                            handler.handle(delivery, settler).await;
                            drop(working);
                        }));
                    }
                    Some(Err(error)) => return Err(error),
                    None => return Ok(()),
                },
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {
                    quiet_since = Instant::now();
                }
                _ = tokio::time::sleep_until(quiet_since + *restart_after), if idle => {
                    if *restart_after == RESTART_WHEN_IDLE {
                        tracing::info!(idle = ?restart_after, "nothing to do; restarting the consumer, so that no delivery is left behind on it");
                    } else {
                        tracing::debug!(idle = ?restart_after, "still nothing to do; restarting the consumer");
                    }
                    *restart_after = (*restart_after * 2).min(RESTART_WHEN_IDLE_AT_MOST);
                    let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                    // The channel closes once the settler has sent its last acks and lets go.
                    return Ok(());
                }
            }
        }
    }
}

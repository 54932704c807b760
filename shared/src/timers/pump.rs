//! The pump: claims due timers and publishes their messages to the dispatch queue, with
//! confirms, before it removes the timers. Every dispatcher replica runs one; the claim is
//! atomic and leased, so replicas never take the same timer (see [`crate::store::timers`]).

use std::{future::Future, time::Duration};

use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;

use super::DispatchQueue;
use crate::{
    error::Chain,
    metrics::Metrics,
    store::{Claimed, PARTITIONS, TimerStore},
};

/// How often each partition is looked at when nothing is due: the bound on how late a timer
/// is claimed, beyond the time its publish takes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// At most this many timers per claim; a full claim is followed by another at once.
const CLAIM_BATCH: usize = 250;

/// How long the pump rests after Redis failed it, before it tries again.
const AFTER_FAILURE: Duration = Duration::from_secs(1);

/// Runs until `stop`: claims due timers from every partition, publishes their messages,
/// removes the timers. A batch that is being published when `stop` comes is finished.
///
/// # Cancel safety
/// Stopping through `stop` loses nothing. Dropping the future (or a SIGKILL) mid-batch leaves
/// the batch's timers leased; they come due again when the lease ends.
pub async fn pump(queue: DispatchQueue, metrics: Metrics, stop: CancellationToken) {
    // While RabbitMQ is away, due timers stay where they are instead of being claimed and put
    // back over and over.
    let ready = || queue.publisher.is_connected();
    drain(&queue.timers, ready, &stop, |claimed| {
        publish_all(&queue, &metrics, claimed)
    })
    .await;
}

/// Claims what is due in `store`, partition after partition, and hands each claim to
/// `handle` (which settles every timer it is given: releases it, parks it again or puts it
/// back), until `stop`. Nothing is claimed while `ready` says the way out is closed.
pub async fn drain<F, Fut>(
    store: &TimerStore,
    ready: impl Fn() -> bool,
    stop: &CancellationToken,
    mut handle: F,
) where
    F: FnMut(Vec<Claimed>) -> Fut,
    Fut: Future<Output = ()>,
{
    // Replicas start at different partitions, so that they seldom contend for one.
    let first = (uuid::Uuid::new_v4().as_u128() % u128::from(PARTITIONS)) as u32;
    let order: Vec<u32> = (0..PARTITIONS).map(|i| (first + i) % PARTITIONS).collect();
    loop {
        let mut more_due = false;
        let mut rest = POLL_INTERVAL;
        if ready() {
            for &partition in &order {
                if stop.is_cancelled() {
                    return;
                }
                match store.claim(partition, CLAIM_BATCH).await {
                    Ok(claimed) => {
                        if !claimed.is_empty() {
                            tracing::debug!(
                                partition,
                                claimed = claimed.len(),
                                "due timers claimed"
                            );
                        }
                        more_due |= claimed.len() == CLAIM_BATCH;
                        handle(claimed).await;
                    }
                    // The other partitions go on: on a Redis Cluster they may sit on masters
                    // that answer.
                    Err(e) => {
                        tracing::warn!(partition, error = %Chain(&e), "cannot claim due timers; trying again");
                        rest = AFTER_FAILURE;
                    }
                }
            }
        }
        if !more_due {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(rest) => {}
            }
        }
    }
}

/// Publishes a claim's messages side by side (the confirms are pipelined), releasing each
/// timer once its message is confirmed and putting it back when the publish failed.
async fn publish_all(queue: &DispatchQueue, metrics: &Metrics, claimed: Vec<Claimed>) {
    join_all(claimed.iter().map(|timer| async move {
        metrics.timer_lag.observe(timer.lag.as_secs_f64());
        if let Err(e) = hand_over(queue, timer).await {
            tracing::warn!(timer = %timer.id, error = %e, "a due timer's message was not published; it is due again");
            if let Err(e) = queue.timers.put_back(timer).await {
                tracing::warn!(timer = %timer.id, error = %Chain(&e), "cannot put a timer back; it is due again when its lease ends");
            }
            return;
        }
        if let Err(e) = queue.timers.release(timer).await {
            // Published, but still leased: it is published again when the lease ends, and
            // the dispatcher's send lease drops that copy.
            tracing::warn!(timer = %timer.id, error = %Chain(&e), "cannot remove a published timer");
        }
    }))
    .await;
}

/// Publishes a due timer's message; one whose stored form does not read goes to the
/// dead-letter queue as stored, with the reason, rather than coming due for ever.
async fn hand_over(queue: &DispatchQueue, timer: &Claimed) -> Result<(), String> {
    let published = match timer.message() {
        Ok(message) => queue.publisher.publish_for_dispatch(&message).await,
        Err(reason) => {
            tracing::error!(timer = %timer.id, %reason, "a parked message does not read; dead-lettering it");
            let reason = format!("a parked timer's stored form does not read: {reason}");
            queue
                .publisher
                .dead_letter(Some(&timer.id), &timer.stored, None, &reason)
                .await
        }
    };
    published.map_err(|e| Chain(&e).to_string())
}

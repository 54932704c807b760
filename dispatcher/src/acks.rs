//! Settling deliveries in batches.
//!
//! For a quorum queue every `basic.ack` is a command through the queue's Raft log, so acking
//! each delivery on its own is most of what consuming costs the broker: the benchmark's
//! scratch queue consumes about 21,000 messages a second acked one by one and about 78,000
//! acked with one `multiple` ack per 32 (BENCHMARKS.md). Handlers therefore hand their verdict to a
//! [`Settler`], one per consumer channel, which acks every run of finished deliveries with one
//! `multiple` ack.
//!
//! Delivery tags on a channel count up from 1, one per delivery, and a `multiple` ack covers
//! every tag up to its own, so it may only be sent up to the first delivery still in work (the
//! *frontier*). A finished delivery behind a slow one waits at most [`HOLD`] for the frontier
//! to pass it, and at most [`waiting_limit`] of them wait at once (they hold prefetch slots);
//! beyond either, the oldest are acked on their own. A slow job costs a few single acks, never
//! a stall. Requeues (work handed back on shutdown) go out at once, on their own.
//!
//! An ack sent a few milliseconds after the outcome was recorded changes nothing about safety:
//! a delivery whose ack is lost with a crash comes back, and its status record says it is done.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use herald_shared::{error::Chain, metrics::Metrics};
use lapin::{
    Channel,
    options::{BasicAckOptions, BasicNackOptions},
};
use tokio::{sync::mpsc, task::JoinSet, time::Instant};

/// How long a finished delivery waits for the deliveries before it to finish, so that one
/// `multiple` ack covers them all: longer than the spread of one batch's completion times
/// (with 100 ms Teams calls and a thousand in flight, 10 ms left most acks single).
pub const HOLD: Duration = Duration::from_millis(100);

/// How many finished deliveries may wait for an ack at once: an eighth of the prefetch, since
/// each holds a prefetch slot that could take new work.
pub fn waiting_limit(prefetch: u16) -> usize {
    (usize::from(prefetch) / 8).max(8)
}

/// What becomes of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Done with (delivered, failed, queued again until due): acknowledge it.
    Ack,
    /// Unfinished and handed back (shutdown): RabbitMQ gives it to another consumer.
    Requeue,
}

/// Takes the verdicts of one channel's deliveries; cheap to clone, one per handler. The
/// settling task ends, after sending what is left, once every clone is dropped.
#[derive(Debug, Clone)]
pub struct Settler {
    verdicts: mpsc::UnboundedSender<(u64, Verdict)>,
}

impl Settler {
    /// Starts the settling task for `channel` in `tasks` (so that shutdown waits for it).
    pub fn start(
        channel: Channel,
        prefetch: u16,
        metrics: Metrics,
        tasks: &mut JoinSet<()>,
    ) -> Self {
        let (verdicts, receiver) = mpsc::unbounded_channel();
        let ledger = Ledger::new(waiting_limit(prefetch));
        tasks.spawn(settle(channel, ledger, receiver, metrics));
        Self { verdicts }
    }

    pub fn settle(&self, delivery_tag: u64, verdict: Verdict) {
        // The task outlives every sender, so this fails only if it was aborted, and then the
        // channel is going with it and RabbitMQ hands the delivery out again.
        let _ = self.verdicts.send((delivery_tag, verdict));
    }
}

/// Settles the verdicts sent on `verdicts` in batches, until every sender is gone.
///
/// # Cancel safety
/// `recv()` is cancel safe: when the deadline wins the `select!`, no verdict was taken, and the
/// next turn receives it. The task itself is not meant to be dropped (it would leave deliveries
/// unacked until the channel closes, when RabbitMQ hands them out again).
async fn settle(
    channel: Channel,
    mut ledger: Ledger,
    mut verdicts: mpsc::UnboundedReceiver<(u64, Verdict)>,
    metrics: Metrics,
) {
    loop {
        let received = match ledger.next_deadline() {
            Some(deadline) => tokio::select! {
                received = verdicts.recv() => Some(received),
                _ = tokio::time::sleep_until(deadline) => None,
            },
            None => Some(verdicts.recv().await),
        };
        let now = Instant::now();
        let closing = match received {
            Some(Some((tag, verdict))) => {
                ledger.record(tag, verdict, now);
                let mut settled = 1;
                // Whatever else has arrived meanwhile goes into the same batch.
                while let Ok((tag, verdict)) = verdicts.try_recv() {
                    ledger.record(tag, verdict, now);
                    settled += 1;
                }
                metrics.deliveries_settled.inc_by(settled);
                false
            }
            Some(None) => true,
            None => false,
        };
        let until = if closing { None } else { Some(now) };
        for frame in ledger.frames(until) {
            metrics
                .ack_frames
                .get_or_create(&vec![("kind", frame.kind().to_owned())])
                .inc();
            if let Err(error) = send(&channel, frame).await {
                // The channel is gone: RabbitMQ redelivers what was not acked, and the status
                // records decide what the copies do.
                tracing::warn!(error = %Chain(&error), "could not settle deliveries");
            }
        }
        if closing {
            return;
        }
    }
}

async fn send(channel: &Channel, frame: Frame) -> lapin::Result<()> {
    match frame {
        Frame::AckThrough(tag) => {
            channel
                .basic_ack(tag, BasicAckOptions { multiple: true })
                .await
        }
        Frame::Ack(tag) => {
            channel
                .basic_ack(tag, BasicAckOptions { multiple: false })
                .await
        }
        Frame::Requeue(tag) => {
            let options = BasicNackOptions {
                multiple: false,
                requeue: true,
            };
            channel.basic_nack(tag, options).await
        }
    }
}

/// A frame to send to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// `basic.ack` with `multiple`: every delivery up to this tag.
    AckThrough(u64),
    /// `basic.ack` of one delivery.
    Ack(u64),
    /// `basic.nack` with requeue, of one delivery.
    Requeue(u64),
}

impl Frame {
    fn kind(self) -> &'static str {
        match self {
            Frame::AckThrough(_) => "multiple",
            Frame::Ack(_) => "single",
            Frame::Requeue(_) => "requeue",
        }
    }
}

/// Which deliveries of a channel are settled, and which finished ones still wait for an ack.
#[derive(Debug)]
struct Ledger {
    /// At most this many finished deliveries wait at once.
    waiting_limit: usize,
    /// Every tag up to this one is settled with the broker.
    frontier: u64,
    /// Finished, not yet acked, since when.
    waiting: BTreeMap<u64, Instant>,
    /// Beyond the frontier and settled with the broker already (acked or requeued alone).
    sent: BTreeSet<u64>,
    /// Requeues not yet sent.
    requeues: Vec<u64>,
}

impl Ledger {
    fn new(waiting_limit: usize) -> Self {
        Self {
            waiting_limit,
            frontier: 0,
            waiting: BTreeMap::new(),
            sent: BTreeSet::new(),
            requeues: Vec::new(),
        }
    }

    fn record(&mut self, tag: u64, verdict: Verdict, now: Instant) {
        if tag <= self.frontier {
            return;
        }
        match verdict {
            Verdict::Ack => {
                self.waiting.insert(tag, now);
            }
            Verdict::Requeue => self.requeues.push(tag),
        }
    }

    /// When the oldest waiting ack must go out on its own.
    fn next_deadline(&self) -> Option<Instant> {
        self.waiting.values().min().map(|since| *since + HOLD)
    }

    /// The frames to send now: requeues, one `multiple` ack up to the frontier, and single
    /// acks for what has waited [`HOLD`] or is over the waiting limit, oldest first (every
    /// waiting ack when `now` is `None`: closing).
    fn frames(&mut self, now: Option<Instant>) -> Vec<Frame> {
        let requeues = std::mem::take(&mut self.requeues);
        self.sent.extend(&requeues);
        let mut frames: Vec<Frame> = requeues.into_iter().map(Frame::Requeue).collect();

        // Advance over the run of settled tags; ack the waiting ones in it with one frame.
        let mut highest_waiting = None;
        loop {
            let next = self.frontier + 1;
            if self.waiting.remove(&next).is_some() {
                highest_waiting = Some(next);
            } else if !self.sent.remove(&next) {
                break;
            }
            self.frontier = next;
        }
        if let Some(tag) = highest_waiting {
            frames.push(Frame::AckThrough(tag));
        }

        let mut by_age: Vec<(Instant, u64)> = self
            .waiting
            .iter()
            .map(|(tag, since)| (*since, *tag))
            .collect();
        by_age.sort_unstable();
        let over_limit = self.waiting.len().saturating_sub(self.waiting_limit);
        let overdue: Vec<u64> = by_age
            .into_iter()
            .enumerate()
            .filter(|(i, (since, _))| *i < over_limit || now.is_none_or(|now| now >= *since + HOLD))
            .map(|(_, (_, tag))| tag)
            .collect();
        for tag in overdue {
            self.waiting.remove(&tag);
            self.sent.insert(tag);
            frames.push(Frame::Ack(tag));
        }
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_of_finished_deliveries_is_acked_with_one_frame() {
        let mut ledger = Ledger::new(8);
        let now = Instant::now();
        for tag in [2, 1, 3] {
            ledger.record(tag, Verdict::Ack, now);
        }
        assert_eq!(ledger.frames(Some(now)), vec![Frame::AckThrough(3)]);
        assert_eq!(ledger.frontier, 3);
        assert_eq!(ledger.frames(Some(now)), vec![]);
    }

    #[test]
    fn a_slow_delivery_holds_the_ones_after_it_only_briefly() {
        let mut ledger = Ledger::new(8);
        let now = Instant::now();
        // 1 is still in work; 2 and 3 are finished.
        ledger.record(2, Verdict::Ack, now);
        ledger.record(3, Verdict::Ack, now);
        assert_eq!(ledger.frames(Some(now)), vec![]);
        assert_eq!(ledger.next_deadline(), Some(now + HOLD));

        // After the hold they go out one by one, never as a `multiple` ack that would cover 1.
        let later = now + HOLD;
        assert_eq!(
            ledger.frames(Some(later)),
            vec![Frame::Ack(2), Frame::Ack(3)]
        );
        // When 1 finishes, the frontier passes 2 and 3 without acking them again.
        ledger.record(1, Verdict::Ack, later);
        ledger.record(4, Verdict::Ack, later);
        assert_eq!(ledger.frames(Some(later)), vec![Frame::AckThrough(4)]);
        assert_eq!(ledger.frontier, 4);
        assert!(ledger.sent.is_empty());
    }

    #[test]
    fn no_more_than_the_limit_wait_behind_a_slow_delivery() {
        let mut ledger = Ledger::new(2);
        let now = Instant::now();
        // 1 is still in work; 2, 3 and 4 finished one after the other.
        for (tag, after) in [(2, 0), (3, 1), (4, 2)] {
            ledger.record(tag, Verdict::Ack, now + Duration::from_millis(after));
        }
        // The oldest goes alone so that two wait, well before the hold is over.
        assert_eq!(ledger.frames(Some(now)), vec![Frame::Ack(2)]);
        assert_eq!(ledger.waiting.len(), 2);
    }

    #[test]
    fn requeues_go_out_at_once_and_alone() {
        let mut ledger = Ledger::new(8);
        let now = Instant::now();
        ledger.record(1, Verdict::Ack, now);
        ledger.record(2, Verdict::Requeue, now);
        ledger.record(3, Verdict::Ack, now);
        // The requeued delivery is settled by its nack; the acks around it may then go as
        // one `multiple` ack, which does not touch a delivery the broker has taken back.
        assert_eq!(
            ledger.frames(Some(now)),
            vec![Frame::Requeue(2), Frame::AckThrough(3)]
        );
    }

    #[test]
    fn closing_sends_every_waiting_ack_but_never_covers_an_unsettled_delivery() {
        let mut ledger = Ledger::new(8);
        let now = Instant::now();
        ledger.record(1, Verdict::Ack, now);
        // 2 never finished (its handler was aborted); 3 did.
        ledger.record(3, Verdict::Ack, now);
        assert_eq!(
            ledger.frames(None),
            vec![Frame::AckThrough(1), Frame::Ack(3)]
        );
    }

    #[test]
    fn a_verdict_for_a_settled_tag_is_ignored() {
        let mut ledger = Ledger::new(8);
        let now = Instant::now();
        ledger.record(1, Verdict::Ack, now);
        assert_eq!(ledger.frames(Some(now)), vec![Frame::AckThrough(1)]);
        ledger.record(1, Verdict::Ack, now);
        assert_eq!(ledger.frames(Some(now)), vec![]);
    }
}

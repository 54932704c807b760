//! Publishing, in batches, the events that work waits on.
//!
//! The dispatcher acks a job only once the event telling its end is confirmed, so that a crash
//! between the two tells the end again rather than never. Published one at a time from each
//! job's own task, every event cost a wake of lapin's I/O loop, a socket write of its own and
//! two wakes of the task (one when the frames were written, one for the confirm): at thousands
//! of jobs a second, most of what events cost the dispatcher. Here the events asked for within
//! [`LINGER`] of one another are published together instead: their frames leave in a few
//! writes, RabbitMQ confirms them with a few `multiple` acks, and each waiting task is woken
//! once, with its event's outcome.
//!
//! The batching task runs inside [`super::Events::run`]. While it does not run (before it
//! starts, after it stops), or if it goes away with events in hand, an event is published on
//! its own, as before: never lost, at worst told twice (consumers de-duplicate by id).

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::Events;
use crate::amqp::PublishError;

/// How long a batch waits for more events after its first: short beside what a job takes,
/// long enough at a few thousand jobs a second to gather dozens (3 ms, a dozen, saved less:
/// BENCHMARKS.md, section 9).
pub const LINGER: Duration = Duration::from_millis(10);

/// The most events in one batch.
const MOST: usize = 256;

/// Events waiting for a batch; beyond this they are published on their own.
const WAITING: usize = 4_096;

/// An event whose publisher waits for its confirm.
pub(super) struct Waiting {
    pub kind: String,
    pub id: String,
    pub body: Vec<u8>,
    pub told: oneshot::Sender<Result<(), PublishError>>,
}

/// The handles to the batching task; clones share it.
#[derive(Debug, Clone)]
pub(super) struct Batches {
    waiting: mpsc::Sender<Waiting>,
    taken: Arc<Mutex<mpsc::Receiver<Waiting>>>,
    /// Whether the batching task is taking events.
    running: Arc<AtomicBool>,
}

impl Batches {
    pub fn new() -> Self {
        let (waiting, taken) = mpsc::channel(WAITING);
        Self {
            waiting,
            taken: Arc::new(Mutex::new(taken)),
            running: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Hands `event` to the next batch; `None` when it has to be published on its own (no
    /// batching task, or a full backlog).
    pub fn join(
        &self,
        kind: &str,
        id: &str,
        body: Vec<u8>,
    ) -> Option<oneshot::Receiver<Result<(), PublishError>>> {
        if !self.running.load(Ordering::Acquire) {
            return None;
        }
        let (told, outcome) = oneshot::channel();
        let waiting = Waiting {
            kind: kind.to_owned(),
            id: id.to_owned(),
            body,
            told,
        };
        self.waiting.try_send(waiting).ok().map(|()| outcome)
    }

    /// Takes events in batches and publishes each batch, until `stop`.
    ///
    /// # Cancel safety
    /// Meant to run until `stop`. Dropped instead, the events it holds fall back to being
    /// published by their own tasks (their `told` senders are dropped with it).
    pub async fn run(&self, events: &Events, stop: CancellationToken) {
        let mut taken = self.taken.lock().await;
        self.running.store(true, Ordering::Release);
        loop {
            let mut batch = Vec::with_capacity(MOST);
            tokio::select! {
                _ = stop.cancelled() => break,
                n = taken.recv_many(&mut batch, MOST) => if n == 0 { break },
            }
            if batch.len() < MOST {
                tokio::time::sleep(LINGER).await;
                while batch.len() < MOST {
                    match taken.try_recv() {
                        Ok(waiting) => batch.push(waiting),
                        Err(_) => break,
                    }
                }
            }
            // Each batch on a task of its own, so the next one gathers while this one waits
            // for its confirms.
            let events = events.clone();
            tokio::spawn(async move {
                let events = &events;
                join_all(batch.into_iter().map(|waiting| async move {
                    let outcome = events
                        .publish(&waiting.kind, &waiting.id, &waiting.body)
                        .await;
                    let _ = waiting.told.send(outcome);
                }))
                .await;
            });
        }
        // No more batches: whatever is still waiting is published by its own task, and so is
        // anything asked for from now on.
        self.running.store(false, Ordering::Release);
        taken.close();
        while taken.try_recv().is_ok() {}
    }
}

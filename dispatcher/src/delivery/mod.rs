//! Handling one delivery from `{ns}.dispatch`, from the body to the ack.
//!
//! The ack comes last, after the outcome is recorded (or the work safely queued again, parked
//! in Redis until due), so a crash at any point leaves the delivery unacked and RabbitMQ hands it out
//! again; the status record's send lease then keeps the second copy from sending twice.
//!
//! A delivery is a job (send a message) or a change to a message already delivered (edit or
//! delete it), told apart by its AMQP `type`.
//!
//! # Layout
//! - This file: the handler, reading a delivery once ([`Work`]), and the steps every kind
//!   shares: pacing, timing a call to Teams, carrying out a failure's side effects, and
//!   waiting out a Redis or RabbitMQ outage.
//! - [`job`]: sending a job: early arrivals, the send lease, the target's conversation, the
//!   call, the outcome.
//! - [`change`]: editing and deleting delivered messages.
//! - [`failure`]: what a failed call to Teams leads to (a 429, a gone conversation, the GCC
//!   host, a retry, giving up), as one pure decision.
//! - [`tick`]: a schedule's occurrence: its job queued, the next occurrence's timer parked.
//! - [`fanout`]: a broadcast: created from RabbitMQ, its audience gathered and handed out
//!   to the dispatch queue step by step.
//! - [`walk`]: a change to every recipient of a broadcast (retract, edit, retry), a page at
//!   a time.
//! - [`requeue`]: sending a delivery round again, parked until due (early, paced out,
//!   retried).

mod change;
pub mod failure;
pub mod fanout;
mod job;
mod requeue;
mod tick;
mod walk;

use std::{future::Future, sync::Arc, time::Duration};

use herald_shared::{
    amqp::{
        PublishError,
        headers::{self, Bookkeeping},
    },
    broadcast::{
        BROADCAST_TYPE_V1, Broadcast, Broadcaster, Recipient, STEP_TYPE_V1, Step, WALK_TYPE_V1,
        Walk,
    },
    calendar::Zone,
    error::Chain,
    events::Events,
    job::{Change, ChangeKind, JOB_TYPE_V1, Job, JobId, Message},
    metrics::Metrics,
    schedule::{Scheduler, TICK_TYPE_V1, Tick},
    store::{BroadcastStore, ConversationStore, SentStore, StatusStore, StoreError, UserStore},
    submit::{Enqueuer, SubmitError},
    telemetry,
    timers::{DispatchQueue, QueueError},
};
use lapin::{message::Delivery, types::FieldTable};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use self::failure::{Decision, Verdict};
use crate::{
    acks::{Settler, Verdict as Settlement},
    connector::BotConnector,
    pace::{Admission, Class, PacedSend, Pacer},
    resolve::Resolver,
};

/// A pacing wait up to this long is slept out here. Kept short: every sleeper holds a prefetch
/// slot, and free slots are what let a backlog cycle past other tenants' jobs.
const PACE_HERE_AT_MOST: Duration = Duration::from_millis(250);

/// Everything a delivery handler needs, shared by all of them.
#[derive(Debug)]
pub struct Handler {
    pub instance: String,
    pub statuses: StatusStore,
    pub conversations: ConversationStore,
    pub resolver: Resolver,
    /// Users' clocks (time zone, quiet hours).
    pub users: UserStore,
    /// The zone of a recipient whose own is unknown.
    pub default_time_zone: Zone,
    pub pacer: Pacer,
    pub connector: BotConnector,
    /// The way back into the dispatch queue (now, or parked until due) and to the dead
    /// letters.
    pub queue: DispatchQueue,
    /// Schedules, and the timers of their next occurrences.
    pub scheduler: Scheduler,
    /// Queues the jobs of schedules' occurrences.
    pub enqueuer: Enqueuer,
    /// Broadcasts: their state, counts and audiences.
    pub broadcasts: BroadcastStore,
    /// Creates the broadcasts published to RabbitMQ.
    pub broadcaster: Broadcaster,
    /// How a broadcast's fan-out hands out its recipients.
    pub fan_out: fanout::FanOut,
    pub policy: failure::Policy,
    /// Where jobs' ends (and retracted messages) are told.
    pub events: Events,
    /// The messages sent, for card actions and read receipts.
    pub sent: SentStore,
    pub send_lease: Duration,
    pub metrics: Metrics,
    /// Cancelled when the service must let go of unfinished deliveries (shutdown deadline).
    pub abandon: CancellationToken,
}

/// Why a delivery's handling stopped short of an outcome.
#[derive(Debug)]
enum Interrupted {
    /// The service is stopping and this delivery's work is unfinished: it goes back to the
    /// queue.
    Abandoned,
    /// Something it needs is stored malformed (a status record that does not parse): no
    /// retry changes that, so it is set aside in the dead-letter queue with this reason
    /// instead of holding a prefetch slot for ever.
    Broken(String),
}

/// Whether a failed step may succeed if tried again: an outage passes, a malformed record
/// does not.
trait Outage {
    fn is_outage(&self) -> bool;
}

impl Outage for StoreError {
    fn is_outage(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

impl Outage for PublishError {
    fn is_outage(&self) -> bool {
        true
    }
}

impl Outage for SubmitError {
    fn is_outage(&self) -> bool {
        match self {
            SubmitError::Store(e) => e.is_outage(),
            SubmitError::Queue(e) => e.is_outage(),
            SubmitError::Conflict(_) => false,
        }
    }
}

impl Outage for QueueError {
    fn is_outage(&self) -> bool {
        match self {
            QueueError::Publish(e) => e.is_outage(),
            QueueError::Park(e) => e.is_outage(),
        }
    }
}

/// What a delivery asks for, read from its type and body once.
#[derive(Debug)]
enum Work {
    /// Boxed: a job (with its card answers) is far larger than the other kinds.
    Job(Box<Job>),
    /// A change to the message of job `id`.
    Change { id: JobId, alteration: Alteration },
    /// A schedule's occurrence is due.
    Tick(Tick),
    /// A broadcast published to RabbitMQ by another service.
    Broadcast(Box<Broadcast>),
    /// One step of a broadcast's fan-out.
    Step(Step),
    /// One page of a change to every recipient of a broadcast.
    Walk(Walk),
}

/// What a change does to a delivered message.
#[derive(Debug)]
enum Alteration {
    /// PUT the activity with this content.
    Update(Message),
    /// DELETE the activity.
    Delete,
}

impl Alteration {
    fn kind(&self) -> ChangeKind {
        match self {
            Alteration::Update(_) => ChangeKind::Update,
            Alteration::Delete => ChangeKind::Delete,
        }
    }
}

/// A delivery being handled, with what was read from its properties once.
#[derive(Debug)]
struct Incoming<'a> {
    delivery: &'a Delivery,
    /// The id of the job it concerns.
    id: &'a str,
    /// Its contract's AMQP `type`, kept when it goes round again.
    amqp_type: &'static str,
    bookkeeping: Bookkeeping,
    /// The broadcast whose recipient's message this is, if it is one.
    broadcast: Option<BroadcastTag>,
}

impl Incoming<'_> {
    /// How its send (or change) queues for the tenant's rate: a broadcast's as bulk work,
    /// behind every single notification and reminder of its tenant.
    fn class(&self) -> Class {
        if self.broadcast.is_some() {
            Class::Bulk
        } else {
            Class::Priority
        }
    }
}

/// A broadcast recipient's job (or change) says which broadcast it belongs to, and which
/// version of the broadcast's message it carries, in its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BroadcastTag {
    id: String,
    version: u64,
}

impl BroadcastTag {
    fn read(amqp_headers: Option<&FieldTable>) -> Option<Self> {
        Some(Self {
            id: headers::text(amqp_headers, headers::BROADCAST)?,
            version: headers::integer(amqp_headers, headers::BROADCAST_VERSION)
                .and_then(|v| u64::try_from(v).ok())
                .unwrap_or(1),
        })
    }
}

/// Whether Teams' limits let a call go now.
enum Paced {
    /// Send now, and tell the pacer when the call is done.
    Go(PacedSend),
    /// Not for `wait`: too long to hold a prefetch slot, so the work goes round again, and
    /// presents its `turn` when it is back.
    Later { wait: Duration, turn: u64 },
}

impl Handler {
    /// Handles one delivery to the end, then gives the verdict to the channel's settler.
    pub async fn handle(self: Arc<Self>, delivery: Delivery, settler: Settler) {
        let verdict = match self.work_on(&delivery).await {
            Ok(()) => Settlement::Ack,
            Err(Interrupted::Abandoned) => Settlement::Requeue,
            Err(Interrupted::Broken(reason)) => match self.poison(&delivery, &reason).await {
                Ok(()) => Settlement::Ack,
                Err(_) => Settlement::Requeue,
            },
        };
        settler.settle(delivery.delivery_tag, verdict);
    }

    async fn work_on(&self, delivery: &Delivery) -> Result<(), Interrupted> {
        let amqp_headers = delivery.properties.headers().as_ref();
        let amqp_type = delivery.properties.kind().as_ref().map(|t| t.as_str());
        let work = match read_work(amqp_type, amqp_headers, &delivery.data) {
            Ok(work) => work,
            Err(reason) => return self.poison(delivery, &reason).await,
        };
        let bookkeeping = Bookkeeping::read(amqp_headers);
        // One span per delivery, in the trace of the request that queued it.
        let parent = headers::trace_context(amqp_headers);
        let trace_id = telemetry::trace_id_field(&parent);
        match &work {
            Work::Job(job) => {
                let span = tracing::info_span!(
                    "job",
                    otel.name = "deliver job",
                    otel.kind = "consumer",
                    job_id = %job.id,
                    attempt = bookkeeping.attempts + 1,
                    trace_id,
                );
                telemetry::continue_trace(&span, parent);
                // Trusted only on the job it names: that recipient's notification in that
                // broadcast.
                let broadcast = BroadcastTag::read(amqp_headers).filter(|b| {
                    Recipient::of_target(&job.to)
                        .is_some_and(|r| r.notification_id(&b.id) == job.id)
                });
                let incoming = Incoming {
                    delivery,
                    id: &job.id,
                    amqp_type: JOB_TYPE_V1,
                    bookkeeping,
                    broadcast,
                };
                self.send_job(job, &incoming).instrument(span).await
            }
            Work::Change { id, alteration } => {
                let kind = alteration.kind();
                let span = tracing::info_span!(
                    "change",
                    otel.name = %format_args!("{} message", kind.as_str()),
                    otel.kind = "consumer",
                    job_id = %id,
                    op = kind.as_str(),
                    trace_id,
                );
                telemetry::continue_trace(&span, parent);
                let incoming = Incoming {
                    delivery,
                    id,
                    amqp_type: kind.amqp_type(),
                    bookkeeping,
                    // An edit or deletion of a broadcast's message is paced as bulk work.
                    broadcast: BroadcastTag::read(amqp_headers),
                };
                self.change(alteration, &incoming).instrument(span).await
            }
            Work::Tick(tick) => {
                let span = tracing::info_span!(
                    "tick",
                    otel.name = "schedule occurrence",
                    otel.kind = "consumer",
                    schedule = %tick.schedule,
                    trace_id,
                );
                telemetry::continue_trace(&span, parent);
                self.occur(tick).instrument(span).await
            }
            Work::Broadcast(broadcast) => {
                let span = tracing::info_span!(
                    "broadcast",
                    otel.name = "create broadcast",
                    otel.kind = "consumer",
                    broadcast = %broadcast.id,
                    trace_id,
                );
                telemetry::continue_trace(&span, parent);
                self.create_broadcast(broadcast).instrument(span).await
            }
            Work::Walk(walk) => {
                let span = tracing::info_span!(
                    "broadcast_walk",
                    otel.name = %format_args!("broadcast {}", walk.action.as_str()),
                    otel.kind = "consumer",
                    broadcast = %walk.broadcast_id,
                    trace_id,
                );
                telemetry::continue_trace(&span, parent);
                self.walk_step(walk).instrument(span).await
            }
            Work::Step(step) => {
                let span = tracing::info_span!(
                    "broadcast_step",
                    otel.name = "broadcast fan-out step",
                    otel.kind = "consumer",
                    broadcast = %step.broadcast_id,
                    step = step.step,
                    trace_id,
                );
                telemetry::continue_trace(&span, parent);
                self.fan_out_step(step, bookkeeping.not_before)
                    .instrument(span)
                    .await
            }
        }
    }

    /// Sets a message that can never be handled aside, with the reason, and goes on.
    async fn poison(&self, delivery: &Delivery, reason: &str) -> Result<(), Interrupted> {
        self.metrics.job("rejected");
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_owned());
        tracing::warn!(?message_id, %reason, "poison message; dead-lettering it");
        let amqp_headers = delivery.properties.headers().as_ref();
        self.until_done("dead-letter", || {
            self.queue.publisher().dead_letter(
                message_id.as_deref(),
                &delivery.data,
                amqp_headers,
                reason,
            )
        })
        .await
    }

    /// Runs one call to Teams, timing it by operation.
    async fn timed<T>(&self, operation: &'static str, call: impl Future<Output = T>) -> T {
        // The call's own span is the parent the Bot Connector sees in `traceparent`.
        let span = tracing::info_span!("teams", otel.name = operation, otel.kind = "client");
        let started = std::time::Instant::now();
        let result = call.instrument(span).await;
        let labels = vec![("operation", operation.to_owned())];
        self.metrics
            .teams_request_duration
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// Asks the pacer for a turn (presenting `turn`, the one given earlier, if any); short
    /// waits are slept out here (holding the prefetch slot briefly), longer ones are the
    /// caller's to send round again (parked until the turn).
    async fn pace(
        &self,
        tenant: Option<&str>,
        thread: &str,
        mut turn: Option<u64>,
        class: Class,
        requests: u32,
    ) -> Result<Paced, Interrupted> {
        loop {
            match self
                .until_done("pace", || {
                    self.pacer.admit(tenant, thread, turn, class, requests)
                })
                .await?
            {
                Admission::Now(paced) => return Ok(Paced::Go(paced)),
                Admission::Wait { wait, turn: given } if wait <= PACE_HERE_AT_MOST => {
                    self.count_pacing_wait("slept");
                    turn = Some(given);
                    self.sleep(wait).await?;
                }
                Admission::Wait { wait, turn } => {
                    self.count_pacing_wait("redelayed");
                    return Ok(Paced::Later { wait, turn });
                }
            }
        }
    }

    fn count_pacing_wait(&self, action: &str) {
        self.metrics
            .pacing_waits
            .get_or_create(&vec![("action", action.to_owned())])
            .inc();
    }

    /// Tells the pacer a call it admitted is done (`answered`: Teams answered it). Best
    /// effort: if Redis cannot take it, the send stays counted from when it was admitted, and
    /// the safety margin covers the rest.
    async fn note_sent(&self, paced: &PacedSend, answered: bool) {
        if let Err(error) = self.pacer.sent(paced, answered).await {
            tracing::debug!(error = %Chain(&error), "could not tell the pacer a send is done");
        }
    }

    /// Carries out what a failure decision asks for beside its verdict: the whole tenant
    /// paused on every replica, the tenant moved to the GCC host, the conversation marked
    /// gone. `tenant` and `conversation_id` are what the failed call went to, when known.
    async fn follow_up(
        &self,
        decision: &Decision,
        tenant: Option<&str>,
        conversation_id: Option<&str>,
    ) -> Result<(), Interrupted> {
        if let Some(pause) = decision.pause_tenant {
            self.metrics.throttled.inc();
            if let Some(tenant) = tenant {
                tracing::warn!(
                    tenant,
                    ?pause,
                    "Teams throttled the tenant; pausing it everywhere"
                );
                self.until_done("pause the tenant", || {
                    self.pacer.pause_tenant(tenant, pause)
                })
                .await?;
            }
        }
        if let (Some(host), Some(tenant)) = (&decision.move_to_host, tenant) {
            tracing::warn!(tenant, gcc = %host, "a GCC tenant on the public host; moving it to the GCC host");
            let moved = || {
                self.conversations
                    .move_service_url(tenant, conversation_id, host)
            };
            self.until_done("move the tenant to the GCC host", moved)
                .await?;
        }
        if let (true, Some(gone)) = (decision.conversation_gone, conversation_id) {
            // Later jobs for this conversation fail without calling Teams, until the next
            // install or message revives the reference.
            let mark = || self.conversations.mark_removed(gone, &decision.reason);
            self.until_done("mark the conversation removed", mark)
                .await?;
        }
        if let Verdict::Retry { .. } = decision.verdict {
            self.metrics.retries.inc();
        }
        Ok(())
    }

    /// Sleeps for `wait`, unless the service must let go of its deliveries first.
    async fn sleep(&self, wait: Duration) -> Result<(), Interrupted> {
        tokio::select! {
            _ = tokio::time::sleep(wait) => Ok(()),
            _ = self.abandon.cancelled() => Err(Interrupted::Abandoned),
        }
    }

    /// Runs a step that needs Redis or RabbitMQ until it succeeds, waiting out outages with
    /// backoff. Holding the delivery meanwhile is the back-pressure: with every prefetch slot
    /// held, the dispatcher takes no new work. Gives up when the service is stopping, or at
    /// once when the step fails for a reason no retry changes (a malformed record).
    async fn until_done<T, E, F, Fut>(&self, step: &str, mut attempt: F) -> Result<T, Interrupted>
    where
        E: std::error::Error + Outage + 'static,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut wait = Duration::from_millis(100);
        loop {
            match attempt().await {
                Ok(value) => return Ok(value),
                Err(error) if !error.is_outage() => {
                    let reason = format!("rejected: {step} failed: {}", Chain(&error));
                    return Err(Interrupted::Broken(reason));
                }
                Err(error) => {
                    tracing::warn!(step, error = %Chain(&error), retry_in = ?wait, "a step failed; trying again")
                }
            }
            self.sleep(wait).await?;
            wait = (wait * 2).min(Duration::from_secs(2));
        }
    }
}

/// What a delivery asks for, from its AMQP `type`, headers and body; `Err` is why it can never
/// be handled (the dead-letter reason).
fn read_work(
    amqp_type: Option<&str>,
    amqp_headers: Option<&FieldTable>,
    body: &[u8],
) -> Result<Work, String> {
    if amqp_type == Some(TICK_TYPE_V1) {
        return serde_json::from_slice::<Tick>(body)
            .map(Work::Tick)
            .map_err(|e| format!("rejected: the schedule's timer is malformed: {e}"));
    }
    if amqp_type == Some(BROADCAST_TYPE_V1) {
        return Broadcast::from_slice(body)
            .map(|broadcast| Work::Broadcast(Box::new(broadcast)))
            .map_err(|error| format!("rejected: {error}"));
    }
    if amqp_type == Some(WALK_TYPE_V1) {
        return serde_json::from_slice::<Walk>(body)
            .map(Work::Walk)
            .map_err(|e| format!("rejected: the broadcast walk is malformed: {e}"));
    }
    if amqp_type == Some(STEP_TYPE_V1) {
        return serde_json::from_slice::<Step>(body)
            .map(Work::Step)
            .map_err(|e| format!("rejected: the broadcast step is malformed: {e}"));
    }
    // A change queued before changes had types of their own says so in a header.
    let legacy_operation = headers::text(amqp_headers, headers::LEGACY_OPERATION);
    let typed_change = amqp_type.and_then(ChangeKind::from_amqp_type);
    let change = match (typed_change, amqp_type, legacy_operation) {
        (Some(kind), _, _) => Some(kind),
        (None, None | Some(JOB_TYPE_V1), Some(op)) => Some(
            ChangeKind::parse(&op).ok_or_else(|| format!("rejected: unknown operation {op:?}"))?,
        ),
        (None, None | Some(JOB_TYPE_V1), None) => None,
        (None, Some(other), _) => {
            return Err(format!(
                "rejected: unknown job version {other:?} (this Herald reads {JOB_TYPE_V1})"
            ));
        }
    };
    let Some(kind) = change else {
        return Job::from_slice(body)
            .map(|job| Work::Job(Box::new(job)))
            .map_err(|error| format!("rejected: {error}"));
    };
    let change = serde_json::from_slice::<Change>(body)
        .map_err(|e| format!("rejected: the change is malformed: {e}"))?;
    let alteration = match (kind, change.message) {
        (ChangeKind::Update, Some(message)) => Alteration::Update(message),
        (ChangeKind::Update, None) => {
            return Err("rejected: an update without a message".into());
        }
        (ChangeKind::Delete, _) => Alteration::Delete,
    };
    Ok(Work::Change {
        id: change.id,
        alteration,
    })
}

#[cfg(test)]
mod tests {
    use herald_shared::job::{DELETE_TYPE_V1, UPDATE_TYPE_V1};

    use super::*;

    /// The size of the future `handle` returns, without calling it.
    fn future_size<F, Fut>(_: F) -> usize
    where
        F: FnOnce(Arc<Handler>, Delivery, Settler) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// Every delivery's task holds this future, so what only some deliveries do (a
    /// broadcast's count and catch-up, telling an end again) is boxed where it is awaited.
    /// Inline, they made it 10.3 KB in a debug build (10.7 KB in release, where it is now
    /// some 700 bytes: BENCHMARKS.md, section 9).
    #[test]
    fn a_delivery_handler_keeps_its_rare_paths_out_of_its_own_future() {
        let size = future_size(Handler::handle);
        assert!(
            size <= 8 * 1024,
            "a handler's future is {size} bytes: is a rare path inline again?"
        );
    }

    const JOB: &[u8] =
        br#"{"id":"j1","to":{"user":{"tenantId":"t","aadObjectId":"u"}},"message":{"text":"hi"}}"#;

    fn legacy(op: &str) -> FieldTable {
        let mut table = FieldTable::default();
        headers::set_text(&mut table, headers::LEGACY_OPERATION, op);
        table
    }

    #[test]
    fn a_job_is_read_with_or_without_its_type() {
        for amqp_type in [None, Some(JOB_TYPE_V1)] {
            let work = read_work(amqp_type, None, JOB).unwrap();
            assert!(
                matches!(work, Work::Job(job) if job.id.as_str() == "j1"),
                "{amqp_type:?}"
            );
        }
    }

    #[test]
    fn a_schedules_timer_is_read_by_its_type_and_a_malformed_one_refused() {
        let tick = br#"{"schedule":"weekly","generation":3,"occurrence":"2026-12-07T09:00:00Z"}"#;
        let work = read_work(Some(TICK_TYPE_V1), None, tick).unwrap();
        assert!(
            matches!(&work, Work::Tick(t) if t.schedule == "weekly" && t.generation == 3),
            "{work:?}"
        );
        let refused = read_work(Some(TICK_TYPE_V1), None, JOB).unwrap_err();
        assert!(
            refused.starts_with("rejected: the schedule's timer is malformed"),
            "{refused}"
        );
    }

    #[test]
    fn edits_and_deletions_are_told_apart_by_their_type() {
        let edit = read_work(
            Some(UPDATE_TYPE_V1),
            None,
            br#"{"id":"j1","message":{"text":"new"}}"#,
        );
        assert!(matches!(
            edit,
            Ok(Work::Change { id, alteration: Alteration::Update(m) })
                if id.as_str() == "j1" && m.text.as_deref() == Some("new")
        ));
        let deletion = read_work(Some(DELETE_TYPE_V1), None, br#"{"id":"j1"}"#);
        assert!(matches!(
            deletion,
            Ok(Work::Change {
                alteration: Alteration::Delete,
                ..
            })
        ));
    }

    #[test]
    fn a_change_queued_by_an_older_ingress_is_still_understood() {
        let deletion = read_work(
            Some(JOB_TYPE_V1),
            Some(&legacy("delete")),
            br#"{"id":"j1"}"#,
        );
        assert!(matches!(
            deletion,
            Ok(Work::Change {
                alteration: Alteration::Delete,
                ..
            })
        ));
        let unknown = read_work(None, Some(&legacy("shred")), br#"{"id":"j1"}"#).unwrap_err();
        assert!(unknown.contains("unknown operation"), "{unknown}");
    }

    #[test]
    fn what_cannot_be_handled_says_why() {
        let cases: &[(Option<&str>, &[u8], &str)] = &[
            (Some("notification.v9"), JOB, "unknown job version"),
            (None, b"not json", "not a valid job"),
            (
                Some(UPDATE_TYPE_V1),
                br#"{"id":"j1"}"#,
                "an update without a message",
            ),
            (Some(DELETE_TYPE_V1), b"[]", "the change is malformed"),
        ];
        for (amqp_type, body, expected) in cases {
            let reason = read_work(*amqp_type, None, body).unwrap_err();
            assert!(
                reason.starts_with("rejected: ") && reason.contains(expected),
                "{reason}"
            );
        }
    }
}

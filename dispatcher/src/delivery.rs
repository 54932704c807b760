//! Handling one delivery from `{ns}.dispatch`, from the body to the ack.
//!
//! The ack comes last, after the outcome is recorded (or the work safely re-queued through the
//! delay levels), so a crash at any point leaves the delivery unacked and RabbitMQ hands it out
//! again; the status record's send lease then keeps the second copy from sending twice.
//!
//! A delivery is a job (send a message) or, with the `x-herald-op` header, a change to a
//! message already delivered (edit or delete it).

use std::{future::Future, sync::Arc, time::Duration};

use herald_shared::{
    amqp::{Publisher, headers},
    connector::{BotConnector, ConnectorError, ErrorClass},
    job::{Change, ChangeKind, JOB_TYPE_V1, Job},
    metrics::Metrics,
    store::{
        Admission, BeginSend, ConversationStore, Outcome, PacedSend, Pacer, StatusRecord,
        StatusStore,
    },
    telemetry,
};
use lapin::message::Delivery;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    acks::{Settler, Verdict},
    resolve::{Destination, ResolveError, Resolver},
    retry,
};

/// A job due within this long is waited for here instead of going round the delay levels
/// again (which work in whole seconds).
const WAIT_HERE_AT_MOST: Duration = Duration::from_millis(1500);

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
    pub pacer: Pacer,
    pub connector: BotConnector,
    pub publisher: Publisher,
    pub retry_schedule: herald_shared::config::RetrySchedule,
    pub max_attempts: u32,
    pub send_lease: Duration,
    pub metrics: Metrics,
    /// Where a GCC tenant goes on 403 InvalidBotApiHost, if this cloud has such a host.
    pub gcc_service_url: Option<String>,
    /// Cancelled when the service must let go of unfinished deliveries (shutdown deadline).
    pub abandon: CancellationToken,
}

/// The service is stopping and this delivery's work is unfinished: it goes back to the queue.
#[derive(Debug)]
struct Abandoned;

/// Whether Teams' limits let a call go now.
enum Paced {
    /// Send now, and tell the pacer when the call is done.
    Go(PacedSend),
    /// Not for `wait`: too long to hold a prefetch slot, so the work goes round again, and
    /// presents its `turn` when it is back.
    Later { wait: Duration, turn: u64 },
}

/// What reached Teams.
struct Sent {
    service_url: String,
    conversation_id: String,
    activity_id: Option<String>,
}

impl Handler {
    /// Handles one delivery to the end, then gives the verdict to the channel's settler.
    pub async fn handle(self: Arc<Self>, delivery: Delivery, settler: Settler) {
        let verdict = match self.work_on(&delivery).await {
            Ok(()) => Verdict::Ack,
            Err(Abandoned) => Verdict::Requeue,
        };
        settler.settle(delivery.delivery_tag, verdict);
    }

    async fn work_on(&self, delivery: &Delivery) -> Result<(), Abandoned> {
        let amqp_headers = delivery.properties.headers().as_ref();
        if let Some(op) = headers::text(amqp_headers, headers::OPERATION) {
            return match (
                ChangeKind::parse(&op),
                serde_json::from_slice::<Change>(&delivery.data),
            ) {
                (Some(kind), Ok(change)) => {
                    let parent = headers::trace_context(amqp_headers);
                    let span = tracing::info_span!(
                        "change",
                        otel.name = %format_args!("{} message", kind.as_str()),
                        otel.kind = "consumer",
                        job_id = %change.id,
                        op = kind.as_str(),
                        trace_id = telemetry::trace_id_field(&parent),
                    );
                    telemetry::continue_trace(&span, parent);
                    self.change(kind, &change, delivery).instrument(span).await
                }
                (None, _) => {
                    self.poison(delivery, &format!("rejected: unknown operation {op:?}"))
                        .await
                }
                (_, Err(e)) => {
                    self.poison(delivery, &format!("rejected: the change is malformed: {e}"))
                        .await
                }
            };
        }
        if let Some(version) = delivery
            .properties
            .kind()
            .as_ref()
            .filter(|t| t.as_str() != JOB_TYPE_V1)
        {
            let reason = format!(
                "rejected: unknown job version {:?} (this Herald reads {JOB_TYPE_V1})",
                version.as_str()
            );
            return self.poison(delivery, &reason).await;
        }
        match Job::from_slice(&delivery.data) {
            Ok(job) => {
                // One span per delivery of the job, in the trace of the request that queued it.
                let parent = headers::trace_context(amqp_headers);
                let span = tracing::info_span!(
                    "job",
                    otel.name = "deliver job",
                    otel.kind = "consumer",
                    job_id = %job.id,
                    attempt = attempts_header(delivery) + 1,
                    trace_id = telemetry::trace_id_field(&parent),
                );
                telemetry::continue_trace(&span, parent);
                self.process(&job, delivery).instrument(span).await
            }
            Err(error) => self.poison(delivery, &format!("rejected: {error}")).await,
        }
    }

    /// Sets a message that can never be handled aside, with the reason, and goes on.
    async fn poison(&self, delivery: &Delivery, reason: &str) -> Result<(), Abandoned> {
        self.metrics.job("rejected");
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_owned());
        tracing::warn!(?message_id, %reason, "poison message; dead-lettering it");
        let amqp_headers = delivery.properties.headers().as_ref();
        self.until_done("dead-letter", || {
            self.publisher
                .dead_letter(message_id.as_deref(), &delivery.data, amqp_headers, reason)
        })
        .await
    }

    async fn process(&self, job: &Job, delivery: &Delivery) -> Result<(), Abandoned> {
        let now = OffsetDateTime::now_utc();
        // Early (a delay rounds down to whole seconds; a retry's backoff is in a header)?
        let due = job.due(now).max(not_before(delivery).unwrap_or(now));
        if due > now {
            let wait = Duration::try_from(due - now).unwrap_or_default();
            if wait > WAIT_HERE_AT_MOST {
                // A job published straight to AMQP with a later `deliverAt` gets its status
                // record now (`scheduled`), so it can be looked up while it waits.
                let fresh = StatusRecord {
                    published: true,
                    ..StatusRecord::new(&job.id, job.to.clone(), job.deliver_at, now)
                };
                // A record that exists already (the ingress made it, or an earlier arrival) stays.
                let _created_or_existing = self
                    .until_done("record the job", || self.statuses.create(&fresh))
                    .await?;
                tracing::debug!(?wait, "arrived early; delaying again");
                return self
                    .redelay(&job.id, delivery, wait, attempts_header(delivery))
                    .await;
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.abandon.cancelled() => return Err(Abandoned),
            }
        }

        // Teams' limits, held across every replica, before anything else is spent on the job:
        // a job over them costs one script and a publish, so a tenant's backlog cycles
        // through the delay levels quickly and never stands in front of another tenant's job.
        let paced = match self
            .pace(job.to.tenant_id(), &job.to.thread(), pace_turn(delivery))
            .await?
        {
            Paced::Go(paced) => paced,
            Paced::Later { wait, turn } => {
                tracing::debug!(?wait, "over Teams' limits; waiting for a turn");
                return self.await_turn(&job.id, delivery, wait, turn).await;
            }
        };

        let owner = format!("{}:{}", self.instance, Uuid::new_v4());
        let now = OffsetDateTime::now_utc();
        let fresh = StatusRecord::new(&job.id, job.to.clone(), job.deliver_at, now);
        let claim = self.until_done("claim", || {
            self.statuses
                .begin_send(&fresh, &owner, self.send_lease, now)
        });
        // The target's lookup only reads, so it runs beside the claim: the two commands share
        // one round trip on the multiplexed connection. A copy that loses the claim drops it.
        let look_up = || async {
            match self.resolver.look_up(&job.to).await {
                Err(ResolveError::Store(error)) => Err(error),
                other => Ok(other),
            }
        };
        let (claim, lookup) = tokio::join!(claim, self.until_done("look up the target", look_up));
        match claim? {
            BeginSend::Finished(status) => {
                tracing::info!(%status, "job already ended; dropping this copy");
                self.metrics.job("duplicate");
                return Ok(());
            }
            BeginSend::Busy { retry_in } => {
                tracing::info!(
                    ?retry_in,
                    "another copy of this job is being sent; looking again later"
                );
                return self
                    .redelay(
                        &job.id,
                        delivery,
                        retry_in.max(Duration::from_secs(1)),
                        attempts_header(delivery),
                    )
                    .await;
            }
            BeginSend::Claimed { took_over } => {
                if took_over {
                    tracing::warn!(
                        "took over a send whose holder stopped; Teams may have it already"
                    );
                }
            }
        }
        if job.is_expired(now) {
            return self.finish(&job.id, &owner, Outcome::Expired, 0).await;
        }

        let destination = match lookup? {
            // A user Herald has not heard from: their 1:1 chat is created now that the send
            // is ours.
            Ok(lookup) => {
                let complete = || async {
                    match self.resolver.complete(&lookup).await {
                        Err(ResolveError::Store(error)) => Err(error),
                        other => Ok(other),
                    }
                };
                self.until_done("look up the target", complete).await?
            }
            Err(error) => Err(error),
        };
        let destination = match destination {
            Ok(destination) => destination,
            Err(ResolveError::Unreachable(why)) => {
                tracing::info!(reason = %why, "job cannot be delivered");
                let outcome = Outcome::Failed {
                    reason: why.to_string(),
                    conversation_id: None,
                };
                return self.finish(&job.id, &owner, outcome, 0).await;
            }
            Err(ResolveError::Teams(error)) => {
                return self.failed_call(job, delivery, &owner, error, None).await;
            }
            Err(ResolveError::Store(_)) => unreachable!("store errors are retried by until_done"),
        };

        let sent = self.send(job, &destination).await;
        let settled = async {
            match sent {
                Ok(sent) => self.delivered(job, &owner, sent).await,
                Err(error) => {
                    self.failed_call(job, delivery, &owner, error, Some(&destination))
                        .await
                }
            }
        };
        // The pacer learns the call is done beside the outcome's record: one round trip.
        let (settled, ()) = tokio::join!(settled, self.note_sent(&paced));
        settled
    }

    /// The message reached Teams: the job ends `delivered`.
    async fn delivered(&self, job: &Job, owner: &str, sent: Sent) -> Result<(), Abandoned> {
        // The everyday outcome is logged at debug: at thousands of jobs a second an info line
        // each would be most of the dispatcher's work. The status record, the metrics and the
        // trace say it; every other outcome is logged at info.
        tracing::debug!(conversation_id = %sent.conversation_id, "delivered");
        if let Some(due) = job.deliver_at {
            let late = (OffsetDateTime::now_utc() - due).as_seconds_f64().max(0.0);
            self.metrics.delivery_lateness.observe(late);
        }
        let outcome = Outcome::Delivered {
            service_url: sent.service_url,
            conversation_id: sent.conversation_id,
            activity_id: sent.activity_id,
        };
        self.finish(&job.id, owner, outcome, 1).await
    }

    /// Tells the pacer a call it admitted is done. Best effort: if Redis cannot take it, the
    /// send stays counted from when it was admitted, and the safety margin covers the rest.
    async fn note_sent(&self, paced: &PacedSend) {
        if let Err(error) = self.pacer.sent(paced).await {
            tracing::debug!(%error, "could not tell the pacer a send is done");
        }
    }

    async fn send(&self, job: &Job, destination: &Destination) -> Result<Sent, ConnectorError> {
        let activity = job.message.to_activity();
        match destination {
            Destination::Conversation {
                service_url,
                conversation_id,
                ..
            } => {
                let send =
                    self.connector
                        .send_to_conversation(service_url, conversation_id, &activity);
                let sent = self.timed("send", send).await?;
                Ok(Sent {
                    service_url: service_url.clone(),
                    conversation_id: conversation_id.clone(),
                    activity_id: sent.id,
                })
            }
            Destination::ChannelThread {
                service_url,
                tenant_id,
                channel_id,
            } => {
                let create = self.connector.create_channel_thread(
                    service_url,
                    tenant_id,
                    channel_id,
                    &activity,
                );
                let created = self.timed("create_thread", create).await?;
                Ok(Sent {
                    service_url: service_url.clone(),
                    conversation_id: created.id,
                    activity_id: created.activity_id,
                })
            }
        }
    }

    /// A call to Teams for this job failed: fail, mark the conversation gone, or retry (a 429
    /// first pauses the whole tenant, on every replica).
    async fn failed_call(
        &self,
        job: &Job,
        delivery: &Delivery,
        owner: &str,
        error: ConnectorError,
        destination: Option<&Destination>,
    ) -> Result<(), Abandoned> {
        let conversation_id = match destination {
            Some(Destination::Conversation {
                conversation_id, ..
            }) => Some(conversation_id.as_str()),
            _ => None,
        };
        if let ConnectorError::Teams {
            status: 429,
            retry_after,
            ..
        } = &error
        {
            self.metrics.throttled.inc();
            let tenant = destination
                .and_then(Destination::tenant_id)
                .or(job.to.tenant_id());
            if let Some(tenant) = tenant {
                let pause = retry_after.unwrap_or(Duration::from_secs(1));
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
        let reason = error.reason();
        let conversation = conversation_id.map(str::to_owned);
        let mut class = error.class();
        if class == ErrorClass::WrongHost {
            class = self.move_to_gcc(job, destination, conversation_id).await?;
        }
        match class {
            class @ (ErrorClass::Permanent | ErrorClass::Gone | ErrorClass::WrongHost) => {
                tracing::warn!(%reason, ?class, "the job cannot be delivered");
                if let (ErrorClass::Gone, Some(gone)) = (class, conversation_id) {
                    // Later jobs for this conversation fail without calling Teams, until the
                    // next install or message revives the reference.
                    let mark = || self.conversations.mark_removed(gone, &reason);
                    self.until_done("mark the conversation removed", mark)
                        .await?;
                }
                let outcome = Outcome::Failed {
                    reason,
                    conversation_id: conversation,
                };
                self.finish(&job.id, owner, outcome, 1).await
            }
            ErrorClass::Transient { retry_after } => {
                // The retry budget counts this delivery's attempts (carried in its headers), so a job
                // redriven from the dead-letter queue gets a fresh one; the record counts them all.
                let attempts = attempts_header(delivery) + 1;
                if attempts >= self.max_attempts {
                    let reason = format!("gave up after {attempts} attempts; the last: {reason}");
                    tracing::warn!(%reason, "retries exhausted; dead-lettering");
                    let amqp_headers = delivery.properties.headers().as_ref();
                    let dead = || {
                        self.publisher.dead_letter(
                            Some(&job.id),
                            &delivery.data,
                            amqp_headers,
                            &reason,
                        )
                    };
                    self.until_done("dead-letter", dead).await?;
                    return self
                        .finish(
                            &job.id,
                            owner,
                            Outcome::Failed {
                                reason,
                                conversation_id: conversation,
                            },
                            1,
                        )
                        .await;
                }
                self.metrics.retries.inc();
                let wait = retry::backoff(&self.retry_schedule, attempts, retry_after);
                let next_attempt_at = OffsetDateTime::now_utc() + wait;
                tracing::info!(%reason, ?wait, attempts, "transient failure; retrying later");
                let next = Some(next_attempt_at);
                self.publish_delayed(&job.id, delivery, wait, next, attempts, None)
                    .await?;
                self.finish(
                    &job.id,
                    owner,
                    Outcome::Retrying {
                        reason,
                        next_attempt_at,
                    },
                    1,
                )
                .await
            }
        }
    }

    /// A GCC tenant reached on the public host: its conversation and tenant move to the GCC
    /// host, and the job is retried there (as a transient failure). Where there is no GCC host,
    /// or the job was already sent there, it is final.
    async fn move_to_gcc(
        &self,
        job: &Job,
        destination: Option<&Destination>,
        conversation_id: Option<&str>,
    ) -> Result<ErrorClass, Abandoned> {
        let tenant = destination
            .and_then(Destination::tenant_id)
            .or(job.to.tenant_id());
        let (Some(gcc), Some(tenant), Some(destination)) =
            (&self.gcc_service_url, tenant, destination)
        else {
            return Ok(ErrorClass::Permanent);
        };
        if destination.service_url() == gcc {
            return Ok(ErrorClass::Permanent);
        }
        tracing::warn!(tenant, gcc = %gcc, "a GCC tenant on the public host; moving it to the GCC host");
        let moved = || {
            self.conversations
                .move_service_url(tenant, conversation_id, gcc)
        };
        self.until_done("move the tenant to the GCC host", moved)
            .await?;
        Ok(ErrorClass::Transient {
            retry_after: Some(Duration::ZERO),
        })
    }

    /// Edits or deletes a delivered message. Both are naturally idempotent (the same PUT twice;
    /// a DELETE of what is gone already), so a redelivered change is simply done again.
    async fn change(
        &self,
        kind: ChangeKind,
        change: &Change,
        delivery: &Delivery,
    ) -> Result<(), Abandoned> {
        if let Some(at) = not_before(delivery) {
            let wait = Duration::try_from(at - OffsetDateTime::now_utc()).unwrap_or_default();
            if !wait.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = self.abandon.cancelled() => return Err(Abandoned),
                }
            }
        }
        let Some(record) = self
            .until_done("look up the job", || self.statuses.get(&change.id))
            .await?
        else {
            tracing::warn!("a change for a job with no status record; dropping it");
            return Ok(());
        };
        let (Some(service_url), Some(conversation_id), Some(activity_id)) = (
            &record.service_url,
            &record.conversation_id,
            &record.activity_id,
        ) else {
            let reason = format!(
                "cannot {} the message: Teams returned no activity id for it",
                kind.as_str()
            );
            return self.note_change(&change.id, Some(&reason)).await;
        };
        // Edits and deletions count against Teams' limits like sends.
        let thread = record.to.thread();
        let tenant = record.to.tenant_id();
        let paced = match self.pace(tenant, &thread, pace_turn(delivery)).await? {
            Paced::Go(paced) => paced,
            Paced::Later { wait, turn } => {
                return self.await_turn(&change.id, delivery, wait, turn).await;
            }
        };
        let result = match (kind, &change.message) {
            (ChangeKind::Update, Some(message)) => {
                let activity = message.to_activity();
                let update = self.connector.update_activity(
                    service_url,
                    conversation_id,
                    activity_id,
                    &activity,
                );
                self.timed("update", update).await
            }
            (ChangeKind::Update, None) => {
                return self
                    .poison(delivery, "rejected: an update without a message")
                    .await;
            }
            (ChangeKind::Delete, _) => {
                let delete =
                    self.connector
                        .delete_activity(service_url, conversation_id, activity_id);
                self.timed("delete", delete).await
            }
        };
        self.note_sent(&paced).await;
        let now = OffsetDateTime::now_utc();
        match (kind, result) {
            (ChangeKind::Delete, Ok(())) => {
                self.until_done("record the deletion", || {
                    self.statuses.mark_retracted(&change.id, now)
                })
                .await?;
                tracing::info!("deleted the delivered message");
                Ok(())
            }
            // Deleted already (a redelivered change, or someone else): the goal is reached.
            (
                ChangeKind::Delete,
                Err(ConnectorError::Teams {
                    status: 404,
                    code: Some(code),
                    ..
                }),
            ) if code == "ActivityNotFoundInConversation" => {
                self.until_done("record the deletion", || {
                    self.statuses.mark_retracted(&change.id, now)
                })
                .await?;
                Ok(())
            }
            (ChangeKind::Update, Ok(())) => {
                tracing::info!("edited the delivered message");
                self.note_change(&change.id, None).await
            }
            (_, Err(error)) => {
                let reason = format!("{} failed: {}", kind.as_str(), error.reason());
                let attempts = attempts_header(delivery) + 1;
                match error.class() {
                    ErrorClass::Transient { retry_after } if attempts < self.max_attempts => {
                        self.metrics.retries.inc();
                        let wait = retry::backoff(&self.retry_schedule, attempts, retry_after);
                        tracing::info!(%reason, ?wait, "transient failure; retrying the change later");
                        let at = OffsetDateTime::now_utc() + wait;
                        self.publish_delayed(&change.id, delivery, wait, Some(at), attempts, None)
                            .await?;
                        self.note_change(&change.id, Some(&reason)).await
                    }
                    _ => {
                        tracing::warn!(%reason, "the change failed");
                        self.note_change(&change.id, Some(&reason)).await
                    }
                }
            }
        }
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
    /// caller's to send round the delay levels.
    async fn pace(
        &self,
        tenant: Option<&str>,
        thread: &str,
        mut turn: Option<u64>,
    ) -> Result<Paced, Abandoned> {
        loop {
            match self
                .until_done("pace", || self.pacer.admit(tenant, thread, turn))
                .await?
            {
                Admission::Now(paced) => return Ok(Paced::Go(paced)),
                Admission::Wait { wait, turn: given } if wait <= PACE_HERE_AT_MOST => {
                    self.metrics
                        .pacing_waits
                        .get_or_create(&vec![("action", "slept".to_owned())])
                        .inc();
                    turn = Some(given);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.abandon.cancelled() => return Err(Abandoned),
                    }
                }
                Admission::Wait { wait, turn } => {
                    self.metrics
                        .pacing_waits
                        .get_or_create(&vec![("action", "redelayed".to_owned())])
                        .inc();
                    return Ok(Paced::Later { wait, turn });
                }
            }
        }
    }

    async fn note_change(&self, id: &str, error: Option<&str>) -> Result<(), Abandoned> {
        let now = OffsetDateTime::now_utc();
        self.until_done("record the change", || {
            self.statuses.note_change(id, error, now)
        })
        .await
    }

    async fn finish(
        &self,
        id: &str,
        owner: &str,
        outcome: Outcome,
        attempts_made: u32,
    ) -> Result<(), Abandoned> {
        self.metrics.job(match &outcome {
            Outcome::Delivered { .. } => "delivered",
            Outcome::Failed { .. } => "failed",
            Outcome::Retrying { .. } => "retrying",
            Outcome::Expired => "expired",
        });
        let now = OffsetDateTime::now_utc();
        let stored = self
            .until_done("record the outcome", || {
                self.statuses
                    .finish(id, owner, &outcome, attempts_made, now)
            })
            .await?;
        tracing::debug!(%stored, "outcome recorded");
        Ok(())
    }

    async fn redelay(
        &self,
        id: &str,
        delivery: &Delivery,
        wait: Duration,
        attempts: u32,
    ) -> Result<(), Abandoned> {
        let turn = pace_turn(delivery);
        self.publish_delayed(id, delivery, wait, not_before(delivery), attempts, turn)
            .await
    }

    /// Sends the delivery round the delay levels to come back when its pacing `turn` is due,
    /// `wait` from now, holding no prefetch slot meanwhile.
    async fn await_turn(
        &self,
        id: &str,
        delivery: &Delivery,
        wait: Duration,
        turn: u64,
    ) -> Result<(), Abandoned> {
        let back_at = OffsetDateTime::now_utc() + wait;
        let attempts = attempts_header(delivery);
        self.publish_delayed(id, delivery, wait, Some(back_at), attempts, Some(turn))
            .await
    }

    /// Sends the delivery's body round the delay levels again, keeping its headers (the change
    /// marker and the trace context among them); `pace_turn` is its place in a pacing queue,
    /// when it is waiting for one.
    async fn publish_delayed(
        &self,
        id: &str,
        delivery: &Delivery,
        wait: Duration,
        not_before: Option<OffsetDateTime>,
        attempts: u32,
        pace_turn: Option<u64>,
    ) -> Result<(), Abandoned> {
        let mut kept = headers::carried_over(delivery.properties.headers().as_ref());
        headers::set_integer(&mut kept, headers::ATTEMPTS, i64::from(attempts));
        match pace_turn {
            Some(turn) => headers::set_integer(&mut kept, headers::PACE_TURN, turn as i64),
            None => headers::remove(&mut kept, headers::PACE_TURN),
        }
        if let Some(at) = not_before {
            headers::set_integer(
                &mut kept,
                headers::NOT_BEFORE,
                (at.unix_timestamp_nanos() / 1_000_000) as i64,
            );
        }
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map_or(id, |m| m.as_str())
            .to_owned();
        let publish = || {
            self.publisher
                .publish_job(&message_id, &delivery.data, wait, kept.clone())
        };
        self.until_done("re-delay", publish).await
    }

    /// Runs a step that needs Redis or RabbitMQ until it succeeds, waiting out outages with
    /// backoff. Holding the delivery meanwhile is the back-pressure: with every prefetch slot
    /// held, the dispatcher takes no new work. Gives up only when the service is stopping.
    async fn until_done<T, E, F, Fut>(&self, step: &str, mut attempt: F) -> Result<T, Abandoned>
    where
        E: std::fmt::Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut wait = Duration::from_millis(100);
        loop {
            match attempt().await {
                Ok(value) => return Ok(value),
                Err(error) => {
                    tracing::warn!(step, %error, retry_in = ?wait, "a step failed; trying again")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.abandon.cancelled() => return Err(Abandoned),
            }
            wait = (wait * 2).min(Duration::from_secs(2));
        }
    }
}

/// The retry time carried in the headers, if any.
fn not_before(delivery: &Delivery) -> Option<OffsetDateTime> {
    headers::integer(delivery.properties.headers().as_ref(), headers::NOT_BEFORE)
        .and_then(|ms| OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok())
}

/// The place in a pacing queue the delivery holds, if any.
fn pace_turn(delivery: &Delivery) -> Option<u64> {
    headers::integer(delivery.properties.headers().as_ref(), headers::PACE_TURN)
        .and_then(|turn| u64::try_from(turn).ok())
}

/// Calls to Teams made so far for this message, as the headers count them.
fn attempts_header(delivery: &Delivery) -> u32 {
    headers::integer(delivery.properties.headers().as_ref(), headers::ATTEMPTS)
        .unwrap_or(0)
        .max(0) as u32
}

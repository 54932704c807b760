//! Submitting a job: its status record first, then the confirmed publish (or, for a job due
//! later, its timer in Redis), so that every queued job has a record, and a submission
//! repeated after a failure (a 503, Teams' retry, a caller's retry with the same id or
//! idempotency key, a schedule's occurrence handled again) publishes the job at most once
//! more and never creates a second one.

use std::time::Duration;

use crate::{
    amqp::{DispatchMessage, headers},
    calendar::{RecipientClock, Zone},
    job::{Job, Timing},
    store::{StatusRecord, StatusStore, StoreError, UserStore},
    timers::{DispatchQueue, QueueError},
};
use lapin::types::FieldTable;
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the job's status could not be stored")]
    Store(#[from] StoreError),
    #[error("the job could not be queued")]
    Queue(#[from] QueueError),
    /// The id (or idempotency key) names a job that asked for something else.
    #[error("job {} exists with different content", .0.id)]
    Conflict(Box<StatusRecord>),
}

/// What a submission does when the id names a job with different content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnConflict {
    /// Refuse: a caller reused an id or idempotency key for another request.
    Refuse,
    /// Keep the first job and finish its publish if need be: the install greeting, whose
    /// reminder time each install activity computes afresh.
    KeepFirst,
}

/// The job as it stands after a submission.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub record: StatusRecord,
    /// False when the submission repeated an earlier one.
    pub created: bool,
}

#[derive(Debug, Clone)]
pub struct Enqueuer {
    pub statuses: StatusStore,
    pub queue: DispatchQueue,
    /// Users' clocks, for jobs due at a local time or within a window.
    pub users: UserStore,
    pub default_time_zone: Zone,
}

impl Enqueuer {
    pub async fn submit(
        &self,
        mut job: Job,
        on_conflict: OnConflict,
        now: OffsetDateTime,
    ) -> Result<Submitted, SubmitError> {
        let content_hash = job.content_hash();
        let due = self.due(&job, now).await?;
        let mut record = StatusRecord {
            content_hash: Some(content_hash.clone()),
            ..StatusRecord::new(&job.id, job.to.clone(), due, now)
        };
        let created = match self.statuses.create(&record).await? {
            Ok(()) => true,
            Err(existing) => {
                let differs = existing
                    .content_hash
                    .as_ref()
                    .is_some_and(|h| *h != content_hash);
                if differs && on_conflict == OnConflict::Refuse {
                    return Err(SubmitError::Conflict(Box::new(existing)));
                }
                if existing.published {
                    return Ok(Submitted {
                        record: existing,
                        created: false,
                    });
                }
                // An earlier submission stored the record but could not publish: finish it,
                // keeping its due time.
                if job.timing.deliver_at_local.is_none() {
                    job.deliver_at = existing.deliver_at;
                }
                record = existing;
                false
            }
        };
        let body = serde_json::to_vec(&job).expect("a job always serializes");
        let delay = record
            .deliver_at
            .map(|at| Duration::try_from(at - now).unwrap_or_default())
            .unwrap_or_default();
        // The dispatcher's span continues the trace of the request that queued the job.
        let mut amqp_headers = FieldTable::default();
        headers::set_trace_context(&mut amqp_headers);
        let message = DispatchMessage::job(&job.id, body, amqp_headers);
        self.queue.send(&message, delay).await?;
        self.statuses.mark_published(&[&job.id]).await?;
        record.published = true;
        tracing::info!(job_id = %job.id, deliver_at = ?record.deliver_at, "job queued");
        Ok(Submitted { record, created })
    }

    /// When the job is due, as its record says it: `deliverAt`, or the instant its local
    /// time, window and (when the recipient's zone is read) quiet hours give, if later than
    /// now. The dispatcher looks again when it is due, so a zone or quiet hours changed
    /// meanwhile still count.
    async fn due(
        &self,
        job: &Job,
        now: OffsetDateTime,
    ) -> Result<Option<OffsetDateTime>, SubmitError> {
        if job.timing == Timing::default() {
            return Ok(job.deliver_at);
        }
        let clock = if job.timing.needs_recipient_zone() {
            self.users
                .recipient_clock(&job.to, self.default_time_zone)
                .await?
        } else {
            RecipientClock::in_zone(self.default_time_zone)
        };
        Ok(match job.send_time(now, &clock) {
            Ok(at) if at > now => Some(at),
            // Due now; or never, which the dispatcher records as the job's failure.
            _ => job.deliver_at,
        })
    }
}

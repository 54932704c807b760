//! On install: the welcome message now and the reminder after `HERALD_REMINDER_DELAY`, both
//! addressed to the user, once per install.
//!
//! Teams sends two activities for one install (`installationUpdate add` and the bot-added
//! `conversationUpdate`) and redelivers on timeouts. The jobs are named by the conversation and
//! its install generation, so every one of those activities names the same two jobs; a job
//! whose status record says it is already in the broker is not published again, and one whose
//! publish failed earlier (the activity got a 503) is published by whichever activity comes next.

use std::time::Duration;

use herald_shared::{
    amqp::{Publisher, headers},
    job::{Job, Message, Target, UserTarget},
    store::{ConversationRef, InstallState, StatusRecord, StatusStore, StoreError},
};
use lapin::types::FieldTable;
use time::OffsetDateTime;
use uuid::Uuid;

use herald_shared::amqp::PublishError;

/// Names Herald's own job ids (UUID v5 over namespace, conversation, install, kind).
const JOB_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6865_7261_6c64_4a6f_6273_0000_0000_0001);

/// The id of an install's `welcome` or `reminder` job: the same for every activity of that
/// install, different for the next install of the same conversation.
pub fn greeting_job_id(
    namespace: &str,
    conversation_id: &str,
    generation: u64,
    kind: &str,
) -> String {
    let name = format!("{namespace}/{conversation_id}/{generation}/{kind}");
    Uuid::new_v5(&JOB_ID_NAMESPACE, name.as_bytes()).to_string()
}

#[derive(Debug, thiserror::Error)]
pub enum GreetingError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("the install has no user to greet (no tenant or aadObjectId)")]
    NoUser,
}

#[derive(Debug, Clone)]
pub struct Greeter {
    pub namespace: String,
    pub statuses: StatusStore,
    pub publisher: Publisher,
    pub welcome_text: String,
    pub reminder_text: String,
    pub reminder_delay: Duration,
}

impl Greeter {
    /// Makes sure the welcome and the reminder of this install are in the broker.
    pub async fn greet(
        &self,
        reference: &ConversationRef,
        install: InstallState,
        traceparent: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<(), GreetingError> {
        let (Some(tenant_id), Some(aad_object_id)) =
            (&reference.tenant_id, &reference.user_aad_object_id)
        else {
            return Err(GreetingError::NoUser);
        };
        let to = Target::User(UserTarget {
            tenant_id: tenant_id.clone(),
            aad_object_id: aad_object_id.clone(),
        });
        let jobs = [
            ("welcome", &self.welcome_text, None),
            (
                "reminder",
                &self.reminder_text,
                Some(now + self.reminder_delay),
            ),
        ];
        for (kind, text, deliver_at) in jobs {
            let job = Job {
                id: greeting_job_id(
                    &self.namespace,
                    &reference.conversation_id,
                    install.generation,
                    kind,
                ),
                to: to.clone(),
                message: Message::text(text.as_str()),
                deliver_at,
                expires_at: None,
            };
            self.ensure_queued(job, traceparent, now).await?;
        }
        Ok(())
    }

    async fn ensure_queued(
        &self,
        mut job: Job,
        traceparent: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<(), GreetingError> {
        let to = serde_json::to_value(&job.to).unwrap_or_default();
        let record = StatusRecord::new(&job.id, to, job.deliver_at, now);
        if let Err(existing) = self.statuses.create(&record).await? {
            if existing.published {
                return Ok(());
            }
            // An earlier activity created the record but could not publish: keep its due time.
            job.deliver_at = existing.deliver_at;
        }
        let body = serde_json::to_vec(&job).expect("a job always serializes");
        let delay = job
            .deliver_at
            .map(|at| Duration::try_from(at - now).unwrap_or_default())
            .unwrap_or_default();
        let mut amqp_headers = FieldTable::default();
        if let Some(traceparent) = traceparent {
            headers::set_text(&mut amqp_headers, headers::TRACEPARENT, traceparent);
        }
        self.publisher
            .publish_job(&job.id, &body, delay, amqp_headers)
            .await?;
        self.statuses.mark_published(&[&job.id]).await?;
        tracing::info!(job_id = %job.id, deliver_at = ?job.deliver_at, "queued an install greeting");
        Ok(())
    }
}

//! On install: the welcome message now and the reminder after `HERALD_REMINDER_DELAY`, both
//! addressed to the user, once per install.
//!
//! Teams sends two activities for one install (`installationUpdate add` and the bot-added
//! `conversationUpdate`) and redelivers on timeouts. The jobs are named by the conversation and
//! its install generation, so every one of those activities names the same two jobs; a job
//! whose status record says it is already in the broker is not published again, and one whose
//! publish failed earlier (the activity got a 503) is published by whichever activity comes next.
//!
//! An install Herald made itself, through Microsoft Graph, to reach someone who never installed
//! the app gets no greeting: the notification it was made for is the user's first message.

use std::time::Duration;

use herald_shared::{
    job::{Job, JobError, JobId, Message, Target, UserTarget},
    store::{ConversationRef, InstallState, ReachStore, StoreError},
};
use time::OffsetDateTime;

use herald_shared::submit::{Enqueuer, OnConflict, SubmitError};

/// The id of an install's `welcome` or `reminder` job: the same for every activity of that
/// install, different for the next install of the same conversation.
pub fn greeting_job_id(
    namespace: &str,
    conversation_id: &str,
    generation: u64,
    kind: &str,
) -> JobId {
    JobId::for_install(namespace, conversation_id, generation, kind)
}

#[derive(Debug, thiserror::Error)]
pub enum GreetingError {
    #[error(transparent)]
    Submit(#[from] SubmitError),
    #[error("could not read whether Herald made the install")]
    Store(#[from] StoreError),
    #[error("the install has no user to greet (no tenant or aadObjectId)")]
    NoUser,
    /// The greeting would not be a valid job: an empty tenant or user id in the reference,
    /// or a configured text Teams would refuse.
    #[error("the greeting is not a valid job: {0}")]
    Invalid(#[from] JobError),
}

#[derive(Debug, Clone)]
pub struct Greeter {
    pub namespace: String,
    pub enqueuer: Enqueuer,
    pub welcome_text: String,
    pub reminder_text: String,
    pub reminder_delay: Duration,
    /// Marks the installs Herald made.
    pub reach: ReachStore,
}

impl Greeter {
    /// Makes sure the welcome and the reminder of this install are in the broker.
    pub async fn greet(
        &self,
        reference: &ConversationRef,
        install: InstallState,
        now: OffsetDateTime,
    ) -> Result<(), GreetingError> {
        let (Some(tenant_id), Some(aad_object_id)) =
            (&reference.tenant_id, &reference.user_aad_object_id)
        else {
            return Err(GreetingError::NoUser);
        };
        if self
            .reach
            .is_quiet_install(tenant_id, aad_object_id)
            .await?
        {
            tracing::info!("Herald installed the app for this user; no greeting");
            return Ok(());
        }
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
            let job = Job::new(
                greeting_job_id(
                    &self.namespace,
                    &reference.conversation_id,
                    install.generation,
                    kind,
                ),
                to.clone(),
                Message::text(text.as_str()),
                deliver_at,
                None,
            )?;
            // Each activity of the install computes the reminder's time afresh: the first
            // activity's job stands, and a later one only finishes its publish if need be.
            self.enqueuer
                .submit(job, OnConflict::KeepFirst, now)
                .await?;
        }
        Ok(())
    }
}

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
    job::{Job, Message, Target, UserTarget},
    store::{ConversationRef, InstallState},
};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::enqueue::{Enqueuer, OnConflict, SubmitError};

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
    Submit(#[from] SubmitError),
    #[error("the install has no user to greet (no tenant or aadObjectId)")]
    NoUser,
}

#[derive(Debug, Clone)]
pub struct Greeter {
    pub namespace: String,
    pub enqueuer: Enqueuer,
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
            // Each activity of the install computes the reminder's time afresh: the first
            // activity's job stands, and a later one only finishes its publish if need be.
            self.enqueuer
                .submit(job, OnConflict::KeepFirst, now)
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_greeting_ids_stored_so_far_stay_the_same() {
        assert_eq!(
            greeting_job_id("herald", "a:1", 3, "welcome"),
            "f028fd2b-8c59-5984-b9b1-9f75bb1f9eb4"
        );
    }
}

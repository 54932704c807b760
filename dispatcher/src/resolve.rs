//! Where a job goes: the conversation id and serviceUrl its target stands for, looked up at
//! send time (a reference may have changed or been removed since the job was queued).

use herald_shared::{
    job::Target,
    store::{ConversationStore, StoreError},
};

/// A concrete place to send to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub service_url: String,
    pub conversation_id: String,
}

/// Why a target cannot be reached; recorded as the job's `lastError`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unreachable(pub String);

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    Unreachable(#[from] Unreachable),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone)]
pub struct Resolver {
    pub conversations: ConversationStore,
    /// For a tenant Herald has never heard from (`HERALD_DEFAULT_SERVICE_URL`).
    pub default_service_url: Option<String>,
}

impl Resolver {
    pub async fn resolve(&self, target: &Target) -> Result<Destination, ResolveError> {
        match target {
            Target::User(user) => {
                let reference = self
                    .conversations
                    .personal_conversation(&user.tenant_id, &user.aad_object_id)
                    .await?
                    .ok_or_else(|| {
                        Unreachable(format!(
                            "no personal conversation with user {} in tenant {} is stored (the app was never installed for them, or the install was not seen)",
                            user.aad_object_id, user.tenant_id
                        ))
                    })?;
                if let Some(reason) = &reference.removed_reason {
                    return Err(Unreachable(format!(
                        "the user's conversation was removed: {reason}"
                    ))
                    .into());
                }
                Ok(Destination {
                    service_url: reference.service_url,
                    conversation_id: reference.conversation_id,
                })
            }
            Target::Conversation(conversation) => {
                let stored = self.conversations.get(&conversation.id).await?;
                if let Some(reason) = stored.as_ref().and_then(|r| r.removed_reason.as_ref()) {
                    return Err(
                        Unreachable(format!("the conversation was removed: {reason}")).into(),
                    );
                }
                let service_url = match (&conversation.service_url, stored) {
                    (Some(url), _) => url.clone(),
                    (None, Some(reference)) => reference.service_url,
                    (None, None) => {
                        self.tenant_service_url(conversation.tenant_id.as_deref())
                            .await?
                    }
                };
                Ok(Destination {
                    service_url,
                    conversation_id: conversation.id.clone(),
                })
            }
            Target::Channel(channel) => {
                // A post to the channel's conversation id starts a new thread in that channel.
                let service_url = self.tenant_service_url(Some(&channel.tenant_id)).await?;
                Ok(Destination {
                    service_url,
                    conversation_id: channel.channel_id.clone(),
                })
            }
        }
    }

    /// The tenant's most recent serviceUrl, else the cloud's default.
    async fn tenant_service_url(&self, tenant: Option<&str>) -> Result<String, ResolveError> {
        if let Some(tenant) = tenant
            && let Some(url) = self.conversations.tenant_service_url(tenant).await?
        {
            return Ok(url);
        }
        self.default_service_url.clone().ok_or_else(|| {
            Unreachable(
                "no serviceUrl is known for this tenant and the cloud has no default".into(),
            )
            .into()
        })
    }
}

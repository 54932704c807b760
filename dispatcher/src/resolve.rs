//! Where a job goes, looked up at send time (a reference may have changed or been removed
//! since the job was queued): an existing conversation, a 1:1 chat Herald creates for a user it
//! has never heard from, or a new thread in a team channel.
//!
//! A user named by `userPrincipalName` or `email` is found through Microsoft Graph first; a
//! user Teams will not open a chat with (they never installed the app) is reached, with
//! `HERALD_PROACTIVE_INSTALL=on`, by installing the app for them ([`crate::reach`]).

use std::sync::Arc;

use herald_shared::{
    job::{Target, UserName},
    store::{
        ActivityEffect, ConversationAddress, ConversationKind, ConversationRef, ConversationStore,
        RecordedActivity, StoreError,
    },
};
use time::OffsetDateTime;

use crate::{
    connector::{BotConnector, ConnectorError},
    delivery::failure,
    graph::GraphError,
    reach::{Reach, ReachError},
};

/// A concrete place to send to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Post into this conversation.
    Conversation {
        service_url: String,
        conversation_id: String,
        tenant_id: Option<String>,
    },
    /// Start a new thread in this channel (the post creates the conversation).
    ChannelThread {
        service_url: String,
        tenant_id: String,
        channel_id: String,
    },
}

impl Destination {
    pub fn service_url(&self) -> &str {
        match self {
            Destination::Conversation { service_url, .. }
            | Destination::ChannelThread { service_url, .. } => service_url,
        }
    }

    /// The tenant whose rate the send counts against, when known.
    pub fn tenant_id(&self) -> Option<&str> {
        match self {
            Destination::Conversation { tenant_id, .. } => tenant_id.as_deref(),
            Destination::ChannelThread { tenant_id, .. } => Some(tenant_id),
        }
    }
}

/// Why a target cannot be reached; recorded as the job's `lastError`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unreachable(pub String);

/// Why a target has no destination. Redis being unavailable is not among them: the resolver
/// answers `Result<Result<_, ResolveError>, StoreError>`, so a caller retries an outage and
/// handles these.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    Unreachable(#[from] Unreachable),
    /// Creating the user's 1:1 chat failed; handled like a failed send.
    #[error(transparent)]
    Teams(#[from] ConnectorError),
    /// Microsoft Graph failed in a way that may pass (throttled, unavailable).
    #[error(transparent)]
    Graph(#[from] GraphError),
}

impl From<ReachError> for ResolveError {
    fn from(error: ReachError) -> Self {
        match error {
            ReachError::Final(why) => ResolveError::Unreachable(Unreachable(why)),
            ReachError::Graph(error) => ResolveError::Graph(error),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Resolver {
    pub conversations: ConversationStore,
    pub connector: BotConnector,
    /// The bot's `28:` id, for creating conversations.
    pub bot_id: String,
    /// For a tenant Herald has never heard from (`HERALD_DEFAULT_SERVICE_URL`).
    pub default_service_url: Option<String>,
    /// Microsoft Graph, for users named by name and users who never installed the app.
    pub reach: Arc<Reach>,
}

/// What the stores say about a target, before anything is created in Teams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Ready(Destination),
    /// Herald has not heard from this user: their 1:1 chat must be created first.
    NewPersonalChat {
        tenant_id: String,
        aad_object_id: String,
    },
    /// A user named by a name Graph has not been asked about yet.
    UnknownName {
        tenant_id: String,
        name: UserName,
    },
}

impl Resolver {
    /// Where `target` is, from the stores alone (no call to Teams, so it can run beside the
    /// send claim): usually one round trip.
    pub async fn look_up(
        &self,
        target: &Target,
    ) -> Result<Result<Lookup, Unreachable>, StoreError> {
        Ok(match target {
            Target::User(user) => {
                self.look_up_user(&user.tenant_id, &user.aad_object_id)
                    .await?
            }
            Target::NamedUser(user) => {
                match self.reach.known_name(&user.tenant_id, &user.name).await? {
                    Some(id) => self.look_up_user(&user.tenant_id, &id).await?,
                    None => Ok(Lookup::UnknownName {
                        tenant_id: user.tenant_id.clone(),
                        name: user.name.clone(),
                    }),
                }
            }
            Target::Conversation(conversation) => {
                let stored = self.conversations.address(&conversation.id).await?;
                if let Some(reason) = stored.as_ref().and_then(|r| r.removed_reason.as_ref()) {
                    return Ok(Err(Unreachable(format!(
                        "the conversation was removed: {reason}"
                    ))));
                }
                let tenant_id = conversation
                    .tenant_id
                    .clone()
                    .or_else(|| stored.as_ref().and_then(|r| r.tenant_id.clone()));
                let service_url = match (&conversation.service_url, stored) {
                    (Some(url), _) => Ok(url.clone()),
                    (None, Some(reference)) => Ok(reference.service_url),
                    (None, None) => self.tenant_service_url(tenant_id.as_deref()).await?,
                };
                service_url.map(|service_url| {
                    Lookup::Ready(Destination::Conversation {
                        service_url,
                        conversation_id: conversation.id.clone(),
                        tenant_id,
                    })
                })
            }
            Target::Channel(channel) => self
                .tenant_service_url(Some(&channel.tenant_id))
                .await?
                .map(|service_url| {
                    Lookup::Ready(Destination::ChannelThread {
                        service_url,
                        tenant_id: channel.tenant_id.clone(),
                        channel_id: channel.channel_id.clone(),
                    })
                }),
        })
    }

    /// Where the user's personal chat is, from the stores.
    async fn look_up_user(
        &self,
        tenant_id: &str,
        aad_object_id: &str,
    ) -> Result<Result<Lookup, Unreachable>, StoreError> {
        let stored = self
            .conversations
            .personal_conversation(tenant_id, aad_object_id)
            .await?;
        Ok(match stored {
            // An uninstall or a "gone" answer is the user's word: no new chat behind it (and
            // never an install Herald makes).
            Some(ConversationAddress {
                removed_reason: Some(reason),
                ..
            }) => Err(Unreachable(format!(
                "the user's conversation was removed: {reason}"
            ))),
            Some(reference) => Ok(Lookup::Ready(Destination::Conversation {
                service_url: reference.service_url,
                conversation_id: reference.conversation_id,
                tenant_id: Some(tenant_id.to_owned()),
            })),
            None => Ok(Lookup::NewPersonalChat {
                tenant_id: tenant_id.to_owned(),
                aad_object_id: aad_object_id.to_owned(),
            }),
        })
    }

    /// The destination of a lookup, asking Graph who a name is and creating the user's 1:1
    /// chat in Teams if need be; call it only once the send is claimed.
    pub async fn complete(
        &self,
        lookup: &Lookup,
    ) -> Result<Result<Destination, ResolveError>, StoreError> {
        match lookup {
            Lookup::Ready(destination) => Ok(Ok(destination.clone())),
            Lookup::NewPersonalChat {
                tenant_id,
                aad_object_id,
            } => self.open_personal_chat(tenant_id, aad_object_id).await,
            Lookup::UnknownName { tenant_id, name } => {
                let id = match self.reach.resolve_name(tenant_id, name).await? {
                    Ok(id) => id,
                    Err(error) => return Ok(Err(error.into())),
                };
                match self.look_up_user(tenant_id, &id).await? {
                    Ok(Lookup::Ready(destination)) => Ok(Ok(destination)),
                    Ok(_) => self.open_personal_chat(tenant_id, &id).await,
                    Err(unreachable) => Ok(Err(unreachable.into())),
                }
            }
        }
    }

    /// Opens the 1:1 chat of a user Herald holds none for: Teams creates it for a user who
    /// installed the app (or shares a team with the bot); for anyone else Teams refuses, and
    /// the app is installed for them through Graph when installs are on.
    async fn open_personal_chat(
        &self,
        tenant_id: &str,
        aad_object_id: &str,
    ) -> Result<Result<Destination, ResolveError>, StoreError> {
        let created = match self
            .create_personal_conversation(tenant_id, aad_object_id)
            .await?
        {
            Ok(reference) => reference,
            Err(ResolveError::Teams(refused)) if failure::means_not_installed(&refused) => {
                tracing::debug!(tenant_id, reason = %refused.reason(), "Teams will not open a chat with the user");
                let opened = match self.reach.install_for(tenant_id, aad_object_id).await? {
                    Ok(opened) => opened,
                    Err(error) => return Ok(Err(error.into())),
                };
                // Teams tells the bot of the install at once, naming the chat by its Bot
                // Connector id (`a:…`); Graph names the same chat `19:…@unq.gbl.spaces`, and
                // either takes sends. The id Teams' activities use is kept where the ingress
                // has recorded it already, so that read receipts and replies find the message.
                if let Ok(Lookup::Ready(destination)) =
                    self.look_up_user(tenant_id, aad_object_id).await?
                {
                    return Ok(Ok(destination));
                }
                let service_url = match self.tenant_service_url(Some(tenant_id)).await? {
                    Ok(url) => url,
                    Err(unreachable) => return Ok(Err(unreachable.into())),
                };
                self.store_personal_chat(
                    tenant_id,
                    aad_object_id,
                    service_url,
                    opened.conversation_id,
                )
                .await?
            }
            Err(error) => return Ok(Err(error)),
        };
        Ok(Ok(Destination::Conversation {
            service_url: created.service_url,
            conversation_id: created.conversation_id,
            tenant_id: Some(tenant_id.to_owned()),
        }))
    }

    /// Creates the 1:1 chat at the tenant's serviceUrl (Teams answers with the existing one if
    /// there is one, so doing this twice is harmless) and stores it like an inbound reference.
    /// The user is named by their roster id when a team's roster gave one, else by their
    /// object id.
    async fn create_personal_conversation(
        &self,
        tenant_id: &str,
        aad_object_id: &str,
    ) -> Result<Result<ConversationRef, ResolveError>, StoreError> {
        let (service_url, member_id) = tokio::join!(
            self.tenant_service_url(Some(tenant_id)),
            self.conversations.member_id(tenant_id, aad_object_id)
        );
        let service_url = match service_url? {
            Ok(url) => url,
            Err(unreachable) => return Ok(Err(unreachable.into())),
        };
        // A team member named by a roster is addressed by their roster id, which works
        // through the team install; the object id works only for a personal install.
        let member = member_id?.unwrap_or_else(|| aad_object_id.to_owned());
        let created = match self
            .connector
            .create_personal_conversation(&service_url, &self.bot_id, tenant_id, &member)
            .await
        {
            Ok(created) => created,
            Err(refused) => return Ok(Err(refused.into())),
        };
        // At debug, like a delivery: a broadcast to a list creates one per recipient.
        tracing::debug!(conversation_id = %created.id, tenant_id, "created a 1:1 chat with a user Herald had not heard from");
        let reference = self
            .store_personal_chat(tenant_id, aad_object_id, service_url, created.id)
            .await?;
        Ok(Ok(reference))
    }

    /// Stores a user's 1:1 chat that Herald opened, as an inbound reference would be.
    async fn store_personal_chat(
        &self,
        tenant_id: &str,
        aad_object_id: &str,
        service_url: String,
        conversation_id: String,
    ) -> Result<ConversationRef, StoreError> {
        let reference = ConversationRef {
            conversation_id,
            conversation_type: Some(ConversationKind::Personal),
            service_url,
            tenant_id: Some(tenant_id.to_owned()),
            user_aad_object_id: Some(aad_object_id.to_owned()),
            user_id: None,
            bot_id: Some(self.bot_id.clone()),
            team_id: None,
            channel_id: None,
            last_seen: OffsetDateTime::now_utc(),
            removed_reason: None,
        };
        let recorded = RecordedActivity {
            reference: reference.clone(),
            effect: ActivityEffect::Refresh,
        };
        self.conversations.record(&recorded).await?;
        Ok(reference)
    }

    /// The tenant's most recent serviceUrl, else the cloud's default.
    async fn tenant_service_url(
        &self,
        tenant: Option<&str>,
    ) -> Result<Result<String, Unreachable>, StoreError> {
        if let Some(tenant) = tenant
            && let Some(url) = self.conversations.tenant_service_url(tenant).await?
        {
            return Ok(Ok(url));
        }
        Ok(self.default_service_url.clone().ok_or_else(|| {
            Unreachable(
                "no serviceUrl is known for this tenant and the cloud has no default".into(),
            )
        }))
    }
}

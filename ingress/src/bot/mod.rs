//! `POST /api/messages`: the Bot Framework endpoint Teams calls.
//!
//! Order matters: the token is checked before anything is done with the body, the serviceUrl
//! allowlist before anything is stored, and the answer is 200 only once the reference (and, for
//! an install, the greeting jobs) are safely stored; a Redis or RabbitMQ failure answers 503 so
//! that Teams retries.

pub mod activity;
pub mod auth;
pub mod listen;

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::{State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use herald_shared::{
    allowlist::ServiceUrlAllowlist,
    error::Chain,
    store::{ActivityEffect, ConversationStore, StoreError, UserStore},
};
use time::OffsetDateTime;

use self::{
    activity::Activity,
    auth::BotAuthenticator,
    listen::{CARD_ACTION, Listener, NotRecorded, READ_RECEIPT},
};
use crate::{
    greeting::{Greeter, GreetingError},
    problem::Problem,
};

/// Why an activity that passed every check could not be taken in: ours, not Teams', so it
/// answers 503 and Teams delivers it again.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("the conversation could not be stored")]
    Conversation(#[source] StoreError),
    #[error("the greeting could not be queued")]
    Greeting(#[source] GreetingError),
    #[error(transparent)]
    Event(#[from] NotRecorded),
}

#[derive(Debug)]
pub struct BotEndpoint {
    pub authenticator: BotAuthenticator,
    pub allowlist: ServiceUrlAllowlist,
    pub conversations: ConversationStore,
    /// Where the zone a user's client reports is kept.
    pub users: UserStore,
    pub greeter: Greeter,
    /// Tells what users do (presses, reads, messages, installs) as events.
    pub listener: Listener,
}

pub async fn receive_activity(
    State(bot): State<Arc<BotEndpoint>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match handle(&bot, &headers, body).await {
        Ok(None) => StatusCode::OK.into_response(),
        // An invoke's answer is the body of the HTTP 200; Teams reads its `statusCode`.
        Ok(Some(answer)) => axum::Json(answer).into_response(),
        Err(problem) => {
            // A 5xx is logged with its cause by the request layer (`crate::requests`).
            if problem.status < 500 {
                tracing::info!(status = problem.status, detail = %problem.detail, "activity refused");
            }
            problem.into_response()
        }
    }
}

async fn handle(
    bot: &BotEndpoint,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Option<serde_json::Value>, Problem> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = bot.authenticator.verify(authorization).await?;
    let body = body.map_err(|e| Problem::new(e.status(), "Bad Request", e.body_text()))?;
    let activity = Activity::parse(&body)?;
    token.check_activity(&activity.service_url, &activity.channel_id)?;
    if !bot.allowlist.allows(&activity.service_url) {
        return Err(Problem::forbidden(format!(
            "serviceUrl {:?} is not in HERALD_SERVICE_URL_ALLOWLIST",
            activity.service_url
        )));
    }

    let now = OffsetDateTime::now_utc();
    // A press is answered while Teams waits, within its own budget. Its reference is refreshed
    // beside the answer, within the same budget, and a failure to is only logged: the answer
    // is what the user waits for, and their other activities refresh it too.
    if activity.kind == "invoke" && activity.name.as_deref() == Some(CARD_ACTION) {
        let recorded = activity.record(now);
        let refresh =
            tokio::time::timeout(listen::INVOKE_BUDGET, bot.conversations.record(&recorded));
        let (answer, refreshed) = tokio::join!(bot.listener.card_action(&activity), refresh);
        match refreshed {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::warn!(error = %Chain(&error), "could not refresh the reference of a card action")
            }
            Err(_) => tracing::warn!("refreshing the reference of a card action took too long"),
        }
        return Ok(Some(answer));
    }

    let recorded = activity.record(now);
    // The recipient's clock: the zone the sender's client reports, unless one was set through
    // the API. It is noted beside the reference (the two share a round trip). The reference
    // is what the activity is for; a zone not noted now is noted from the next activity, so a
    // failure there does not refuse it.
    let learn_zone = async {
        if let Some((tenant, user, zone)) = activity.sender_time_zone()
            && let Err(error) = bot.users.learn_time_zone(tenant, user, zone, now).await
        {
            tracing::warn!(error = %Chain(&error), "could not note the sender's time zone");
        }
    };
    let (install, ()) = tokio::join!(bot.conversations.record(&recorded), learn_zone);
    let install = install.map_err(RecordError::Conversation)?;
    // Installs and removals are logged at info; a plain refresh (every message a user sends)
    // at debug, as it changes nothing but the reference's freshness.
    if recorded.effect == ActivityEffect::Refresh {
        tracing::debug!(kind = %activity.kind, conversation_id = %recorded.reference.conversation_id, "activity recorded");
    } else {
        tracing::info!(
            kind = %activity.kind,
            conversation_id = %recorded.reference.conversation_id,
            effect = ?recorded.effect,
            "activity recorded"
        );
    }
    // The user removed the app: should they install it again, that install is theirs and is
    // greeted. Best effort: the mark lapses within the hour anyway.
    if let (ActivityEffect::Remove { .. }, Some(tenant), Some(user)) = (
        &recorded.effect,
        &recorded.reference.tenant_id,
        &recorded.reference.user_aad_object_id,
    ) && recorded.reference.is_personal()
        && let Err(error) = bot.greeter.reach.forget_quiet_install(tenant, user).await
    {
        tracing::warn!(error = %Chain(&error), "could not clear the mark of an install Herald made");
    }
    if recorded.effect == ActivityEffect::Install {
        match bot.greeter.greet(&recorded.reference, install, now).await {
            Ok(()) => {}
            // Retrying cannot mend an install that names no user; say so and move on.
            Err(GreetingError::NoUser) => {
                tracing::warn!("install without a tenant or user id; no greeting")
            }
            // Nor one whose greeting is not a valid job (Teams' retries would not change it).
            Err(GreetingError::Invalid(error)) => {
                tracing::warn!(error = %Chain(&error), "the greeting is not a valid job; no greeting")
            }
            Err(e) => return Err(RecordError::Greeting(e).into()),
        }
    }
    tell(bot, &activity).await?;
    Ok(None)
}

/// Tells other services what the activity says a user did, once it is recorded.
async fn tell(bot: &BotEndpoint, activity: &Activity) -> Result<(), RecordError> {
    let listener = &bot.listener;
    match (activity.kind.as_str(), activity.name.as_deref()) {
        ("message", _) => listener.message(activity).await?,
        ("event", Some(READ_RECEIPT)) => {
            let marked = listener.read_receipt(activity).await?;
            tracing::debug!(marked, "read receipt");
        }
        // `add-upgrade` / `remove-upgrade` are app updates, not installs.
        ("installationUpdate", _) => match activity.action.as_deref() {
            Some("add") => listener.installation(activity, true).await?,
            Some("remove") => listener.installation(activity, false).await?,
            _ => {}
        },
        _ => {}
    }
    Ok(())
}

//! `POST /api/messages`: the Bot Framework endpoint Teams calls.
//!
//! Order matters: the token is checked before anything is done with the body, the serviceUrl
//! allowlist before anything is stored, and the answer is 200 only once the reference (and, for
//! an install, the greeting jobs) are safely stored; a Redis or RabbitMQ failure answers 503 so
//! that Teams retries.

pub mod activity;
pub mod auth;

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::{State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use herald_shared::{
    allowlist::ServiceUrlAllowlist,
    store::{ActivityEffect, ConversationStore},
};
use time::OffsetDateTime;

use self::{activity::Activity, auth::BotAuthenticator};
use crate::{
    greeting::{Greeter, GreetingError},
    problem::Problem,
};

#[derive(Debug)]
pub struct BotEndpoint {
    pub authenticator: BotAuthenticator,
    pub allowlist: ServiceUrlAllowlist,
    pub conversations: ConversationStore,
    pub greeter: Greeter,
}

pub async fn receive_activity(
    State(bot): State<Arc<BotEndpoint>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match handle(&bot, &headers, body).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(problem) => {
            tracing::info!(status = problem.status, detail = %problem.detail, "activity refused");
            problem.into_response()
        }
    }
}

async fn handle(
    bot: &BotEndpoint,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(), Problem> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = bot.authenticator.verify(authorization).await.map_err(|e| {
        if e.is_unavailable() {
            Problem::unavailable(e.to_string())
        } else {
            Problem::unauthorized(e.to_string())
        }
    })?;
    let body = body.map_err(|e| Problem::new(e.status(), "Bad Request", e.body_text()))?;
    let activity = Activity::parse(&body).map_err(|e| Problem::bad_request(e.to_string()))?;
    token
        .check_activity(&activity.service_url, &activity.channel_id)
        .map_err(|e| Problem::unauthorized(e.to_string()))?;
    if !bot.allowlist.allows(&activity.service_url) {
        return Err(Problem::forbidden(format!(
            "serviceUrl {:?} is not in HERALD_SERVICE_URL_ALLOWLIST",
            activity.service_url
        )));
    }

    let now = OffsetDateTime::now_utc();
    let recorded = activity.record(now);
    let install =
        bot.conversations.record(&recorded).await.map_err(|e| {
            Problem::unavailable(format!("the conversation could not be stored: {e}"))
        })?;
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
    if recorded.effect == ActivityEffect::Install {
        match bot.greeter.greet(&recorded.reference, install, now).await {
            Ok(()) => {}
            // Retrying cannot mend an install that names no user; say so and move on.
            Err(GreetingError::NoUser) => {
                tracing::warn!("install without a tenant or user id; no greeting")
            }
            // Nor one whose greeting is not a valid job (Teams' retries would not change it).
            Err(GreetingError::Invalid(error)) => {
                tracing::warn!(%error, "the greeting is not a valid job; no greeting")
            }
            Err(e) => {
                return Err(Problem::unavailable(format!(
                    "the greeting could not be queued: {e}"
                )));
            }
        }
    }
    Ok(())
}

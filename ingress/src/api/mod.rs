//! `/v1`: the HTTP API other services use to send notifications and follow them.
//!
//! Every route but `/v1/openapi.json` needs `Authorization: Bearer <key>` with one of
//! `HERALD_API_KEYS` (none configured: every call is refused). The OpenAPI document is built
//! from the same registrations that route the requests, so the two cannot drift apart, and it
//! states every rule the handlers check and every status they answer: `scripts/api-conformance`
//! (schemathesis, `tests/tests/conformance.rs`) holds the running service to it.
//!
//! # Layout
//! - This file: the router, the OpenAPI document and the bearer-key check.
//! - [`keys`]: the configured keys ([`ApiKeys`]), matched in constant time.
//! - [`notifications`]: the `/v1/notifications` handlers.
//! - [`broadcasts`]: the `/v1/broadcasts` handlers (one message to a whole audience).
//! - [`users`]: the `/v1/users` handlers (a user's chat and clock).
//! - [`schedules`]: the `/v1/schedules` handlers (recurring notifications).
//! - [`webhooks`]: the `/v1/webhooks` handlers (events POSTed to other services).
//! - `extract`: the JSON body extractor whose rejections are problem documents.

pub mod broadcasts;
mod extract;
pub mod keys;
pub mod notifications;
pub mod schedules;
pub mod users;
pub mod webhooks;

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, Request, State},
    http::header,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};
use utoipa_axum::{router::OpenApiRouter, routes};

pub use self::keys::ApiKeys;
use herald_shared::{
    broadcast::Broadcaster,
    events::Events,
    metrics::Metrics,
    schedule::Scheduler,
    store::{BroadcastStore, ConversationStore, UserStore},
    webhooks::{WebhookStore, guard::WebhookGuard},
};

use herald_shared::submit::Enqueuer;

use crate::problem::Problem;

/// The largest `/v1` request body; a message is at most 28 KB.
pub const MAX_API_BODY: usize = 64 * 1024;

/// The largest `POST /v1/broadcasts` body: an inline audience of 10,000 users fits.
pub const MAX_BROADCAST_BODY: usize = 1024 * 1024;

/// What the `/v1` handlers share.
#[derive(Debug)]
pub struct Api {
    /// The bearer keys `/v1` accepts.
    pub api_keys: ApiKeys,
    pub enqueuer: Enqueuer,
    pub users: UserStore,
    pub conversations: ConversationStore,
    /// Schedules and their timers.
    pub scheduler: Scheduler,
    /// Names jobs created from idempotency keys (the namespace keeps deployments apart).
    pub namespace: String,
    /// Where cancellations are told.
    pub events: Events,
    pub webhooks: WebhookStore,
    /// Where webhooks may point.
    pub webhook_guard: WebhookGuard,
    /// Broadcasts: their state, counts and audiences.
    pub broadcasts: BroadcastStore,
    /// Creates and releases broadcasts.
    pub broadcaster: Broadcaster,
    /// Counts broadcasts created and cancelled.
    pub metrics: Metrics,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Herald",
        description = "Proactive Microsoft Teams notifications: send, follow, cancel and edit; broadcasts to whole audiences; recurring schedules; users' time zones and quiet hours.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    // Referred to by name from schemas written by hand (nullable fields), so registered here.
    components(schemas(herald_shared::job::SendWindow, users::QuietHoursBody)),
    tags(
        (name = "notifications", description = "Messages to Teams users, chats and channels"),
        (name = "broadcasts", description = "One message to a whole audience: a list of users, a tenant's users, a team's roster, channels"),
        (name = "users", description = "What Herald knows of a user, and their clock: time zone and quiet hours"),
        (name = "schedules", description = "Recurring notifications: RFC 5545 rules in the recipient's zone"),
        (name = "webhooks", description = "Herald's events POSTed to your services, signed as Standard Webhooks")
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("one of HERALD_API_KEYS"))
                    .build(),
            ),
        );
    }
}

/// Every documented route, registered once for both routing and the document, and the
/// document completed with the rules derive cannot state.
fn documented() -> (Router<Arc<Api>>, utoipa::openapi::OpenApi) {
    let (routes, mut openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(notifications::create))
        .routes(routes!(
            notifications::get,
            notifications::cancel,
            notifications::edit
        ))
        // A broadcast's body may name 10,000 users: the inner limit is the one that counts.
        // (A list's upload is read by its handler, up to 10 MiB.)
        .merge(
            OpenApiRouter::new()
                .routes(routes!(broadcasts::create))
                .layer(DefaultBodyLimit::max(MAX_BROADCAST_BODY)),
        )
        .routes(routes!(
            broadcasts::get,
            broadcasts::cancel,
            broadcasts::edit
        ))
        .routes(routes!(broadcasts::release))
        .routes(routes!(broadcasts::retry))
        .routes(routes!(
            broadcasts::recipients::add,
            broadcasts::recipients::list
        ))
        .routes(routes!(users::get, users::change))
        .routes(routes!(schedules::create))
        .routes(routes!(
            schedules::get,
            schedules::change,
            schedules::delete
        ))
        .routes(routes!(webhooks::create, webhooks::list))
        .routes(routes!(webhooks::delete))
        .routes(routes!(webhooks::attempts))
        .split_for_parts();
    herald_shared::job::openapi::complete(&mut openapi);
    (routes, openapi)
}

/// The `/v1` routes, and `/v1/openapi.json` serving their document.
pub fn router(api: Arc<Api>) -> Router {
    let (routes, openapi) = documented();
    let openapi = Arc::new(openapi);
    let authenticated = routes
        .layer(middleware::from_fn_with_state(api.clone(), require_api_key))
        .layer(DefaultBodyLimit::max(MAX_API_BODY))
        .with_state(api);
    authenticated.route(
        "/v1/openapi.json",
        get(move || async move { Json(openapi.as_ref().clone()) }),
    )
}

/// The OpenAPI document, for tests and tools.
pub fn openapi() -> utoipa::openapi::OpenApi {
    documented().1
}

async fn require_api_key(State(api): State<Arc<Api>>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(key) if api.api_keys.matches(key) => next.run(request).await,
        _ if api.api_keys.is_empty() => Problem::unauthorized(
            "no API keys are configured (HERALD_API_KEYS); /v1 refuses every call",
        )
        .into_response(),
        Some(_) => {
            Problem::unauthorized("the bearer key is not one of HERALD_API_KEYS").into_response()
        }
        None => Problem::unauthorized("send Authorization: Bearer <key>").into_response(),
    }
}

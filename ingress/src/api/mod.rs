//! `/v1`: the HTTP API other services use to send notifications and follow them.
//!
//! Every route but `/v1/openapi.json` needs `Authorization: Bearer <key>` with one of
//! `HERALD_API_KEYS` (none configured: every call is refused). The OpenAPI document is built
//! from the same registrations that route the requests, so the two cannot drift apart.
//!
//! # Layout
//! - This file: the router, the OpenAPI document and the bearer-key check.
//! - [`keys`]: the configured keys ([`ApiKeys`]), matched in constant time.
//! - [`notifications`]: the `/v1/notifications` handlers.
//! - `extract`: the JSON body extractor whose rejections are problem documents.

mod extract;
pub mod keys;
pub mod notifications;

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
use crate::{enqueue::Enqueuer, problem::Problem};

/// The largest `/v1` request body; a message is at most 28 KB.
pub const MAX_API_BODY: usize = 64 * 1024;

/// What the `/v1` handlers share.
#[derive(Debug)]
pub struct Api {
    /// The bearer keys `/v1` accepts.
    pub api_keys: ApiKeys,
    pub enqueuer: Enqueuer,
    /// Names jobs created from idempotency keys (the namespace keeps deployments apart).
    pub namespace: String,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Herald",
        description = "Proactive Microsoft Teams notifications: send, follow, cancel and edit.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags((name = "notifications", description = "Messages to Teams users, chats and channels"))
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

/// Every documented route, registered once for both routing and the document.
fn documented() -> OpenApiRouter<Arc<Api>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(notifications::create))
        .routes(routes!(
            notifications::get,
            notifications::cancel,
            notifications::edit
        ))
}

/// The `/v1` routes, and `/v1/openapi.json` serving their document.
pub fn router(api: Arc<Api>) -> Router {
    let (routes, openapi) = documented().split_for_parts();
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
    documented().into_openapi()
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

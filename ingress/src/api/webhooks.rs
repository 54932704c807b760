//! `/v1/webhooks`: where Herald POSTs its events for services that would rather be called
//! than consume `{ns}.events`. A webhook's URL is checked when it is made (the allowlist, the
//! address it resolves to) and again at every send, by the dispatcher's webhook sender.

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use herald_shared::{
    error::Chain,
    webhooks::{Attempt, Webhook, routes, signature::WebhookSecret, store::check_types},
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{Api, extract::ApiJson};
use crate::problem::Problem;

/// A new webhook.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"url": "https://hooks.example.com/herald", "types": ["herald.notification.*"]}))]
pub struct WebhookRequest {
    /// Where to POST events: an `https` URL that `HERALD_WEBHOOK_ALLOWLIST` admits, resolving
    /// to public addresses unless the allowlist names its host.
    #[schema(min_length = 1, max_length = 2048)]
    pub url: String,
    /// Event types (`herald.notification.delivered`), prefixes ending in `*`
    /// (`herald.notification.*`), or `*` for every type.
    #[schema(min_items = 1, max_items = 32)]
    pub types: Vec<String>,
}

/// A webhook as listed: without its secret.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookView {
    pub id: String,
    pub url: String,
    pub types: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A list of webhooks.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookList {
    pub items: Vec<WebhookView>,
}

/// A webhook's recent attempts, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AttemptList {
    pub items: Vec<Attempt>,
}

fn view(webhook: Webhook) -> WebhookView {
    WebhookView {
        id: webhook.id,
        url: webhook.url,
        types: webhook.types,
        created_at: webhook.created_at,
    }
}

/// Binds the new webhook's types to the webhook sender's queue, so that the next event of
/// those types reaches it. When RabbitMQ cannot be asked now, the dispatcher binds them
/// within seconds (it keeps the bindings in step with the stored webhooks).
async fn route_events(api: &Api, webhook: &Webhook) {
    let publisher = api.enqueuer.queue.publisher();
    let Some(link) = publisher.link() else {
        tracing::warn!(webhook = %webhook.id, "RabbitMQ is away; the dispatcher binds the webhook's types");
        return;
    };
    let keys = routes::wanted_keys(std::slice::from_ref(webhook));
    let bound = tokio::time::timeout(
        ROUTE_TIMEOUT,
        routes::bind(&link, publisher.topology(), &keys),
    )
    .await;
    match bound {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(webhook = %webhook.id, error = %Chain(&e), "cannot bind the webhook's types; the dispatcher does")
        }
        Err(_) => {
            tracing::warn!(webhook = %webhook.id, "binding the webhook's types took too long; the dispatcher does")
        }
    }
}

/// Unbinds the keys no remaining webhook needs, so that events nobody wants any more are not
/// routed to the webhook sender (which would drop them). Best effort: a binding left over costs
/// only that.
async fn unroute_events(api: &Api) {
    let publisher = api.enqueuer.queue.publisher();
    let (Some(link), Ok(remaining)) = (publisher.link(), api.webhooks.list().await) else {
        return;
    };
    let wanted = routes::wanted_keys(&remaining);
    let unbound = tokio::time::timeout(
        ROUTE_TIMEOUT,
        routes::unbind_unwanted(&link, publisher.topology(), &wanted),
    )
    .await;
    if !matches!(unbound, Ok(Ok(()))) {
        tracing::info!(
            "could not unbind the deleted webhook's types; events of them are dropped by the webhook sender"
        );
    }
}

/// How long a webhook's creation waits for its bindings.
const ROUTE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

fn no_such_webhook(id: &str) -> Problem {
    Problem::not_found(format!("no webhook {id}"))
}

/// Make a webhook.
#[utoipa::path(
    post,
    path = "/v1/webhooks",
    operation_id = "createWebhook",
    tag = "webhooks",
    request_body = WebhookRequest,
    responses(
        (status = 201, description = "Made; the answer holds its signing secret, shown only here", body = Webhook, links(
            ("deleteWebhook" = (operation_id = "deleteWebhook", parameters(("id" = "$response.body#/id")))),
            ("listWebhookAttempts" = (operation_id = "listWebhookAttempts", parameters(("id" = "$response.body#/id")))),
        )),
        (status = 400, description = "Malformed, or types that name no event type", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or wrong API key", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body larger than 64 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not sent as `application/json`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The URL is refused: not in the allowlist, or it reaches a private, loopback or link-local address", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis is unavailable, or it took too long; retry", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    State(api): State<Arc<Api>>,
    ApiJson(request): ApiJson<WebhookRequest>,
) -> Result<Response, Problem> {
    check_types(&request.types).map_err(Problem::bad_request)?;
    let url = api
        .webhook_guard
        .check_url(&request.url)
        .map_err(|refusal| Problem::unprocessable(format!("url: {refusal}")))?;
    api.webhook_guard
        .check_resolved(&url)
        .await
        .map_err(|refusal| Problem::unprocessable(format!("url: {refusal}")))?;
    let webhook = Webhook {
        id: uuid::Uuid::new_v4().to_string(),
        url: url.to_string(),
        types: request.types,
        secret: WebhookSecret::generate().expose(),
        created_at: OffsetDateTime::now_utc(),
    };
    api.webhooks.put(&webhook).await?;
    route_events(&api, &webhook).await;
    tracing::info!(webhook = %webhook.id, url = %webhook.url, types = ?webhook.types, "webhook made");
    Ok((StatusCode::CREATED, Json(webhook)).into_response())
}

/// List the webhooks.
#[utoipa::path(
    get,
    path = "/v1/webhooks",
    operation_id = "listWebhooks",
    tag = "webhooks",
    responses(
        (status = 200, description = "Every webhook, oldest first, without secrets", body = WebhookList),
        (status = 401, description = "No or wrong API key", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis is unavailable, or it took too long; retry", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(State(api): State<Arc<Api>>) -> Result<Json<WebhookList>, Problem> {
    let items = api.webhooks.list().await?.into_iter().map(view).collect();
    Ok(Json(WebhookList { items }))
}

/// Delete a webhook: nothing more is sent to it.
#[utoipa::path(
    delete,
    path = "/v1/webhooks/{id}",
    operation_id = "deleteWebhook",
    tag = "webhooks",
    params(("id" = String, Path, description = "The webhook id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No or wrong API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such webhook", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis is unavailable, or it took too long; retry", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    if api.webhooks.delete(&id).await? {
        tracing::info!(webhook = %id, "webhook deleted");
        unroute_events(&api).await;
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(no_such_webhook(&id))
    }
}

/// A webhook's recent attempts.
#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}/attempts",
    operation_id = "listWebhookAttempts",
    tag = "webhooks",
    params(("id" = String, Path, description = "The webhook id")),
    responses(
        (status = 200, description = "The last 100 attempts, newest first", body = AttemptList),
        (status = 401, description = "No or wrong API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such webhook", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis is unavailable, or it took too long; retry", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn attempts(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<Json<AttemptList>, Problem> {
    if api.webhooks.get(&id).await?.is_none() {
        return Err(no_such_webhook(&id));
    }
    let items = api.webhooks.attempts(&id).await?;
    Ok(Json(AttemptList { items }))
}

//! `/v1/broadcasts`: one message to a whole audience (see [`herald_shared::broadcast`]).
//! Creating one stores it and queues the first step of its fan-out; the dispatcher does the
//! rest. Each recipient's message is a notification of its own, followed at
//! `/v1/notifications/{id}` and listed at `/v1/broadcasts/{id}/recipients`.
//!
//! # Layout
//! - This file: create, look up, release, cancel (and retract), edit, retry.
//! - [`recipients`]: uploading a list's recipients, and listing (or exporting) every
//!   recipient with their notification's status.

pub mod recipients;

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use herald_shared::{
    broadcast::{Broadcast, BroadcastRequest, BroadcastStatus, LaunchError, Recipient, WalkAction},
    events::BroadcastCompleted,
    job::{JobId, Message},
    store::{BroadcastRecord, Counts},
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{
    Api,
    extract::{ApiJson, ApiQuery},
    notifications::idempotency_key,
};
use crate::problem::Problem;

/// The answer to an accepted broadcast.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BroadcastAccepted {
    pub id: String,
    pub status: BroadcastStatus,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub deliver_at: Option<OffsetDateTime>,
}

/// A broadcast: where it stands, its counts by state, its pace.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BroadcastView {
    pub id: String,
    pub status: BroadcastStatus,
    /// The audience's kind (`users`, `list`, `tenant`, `team`, `channels`) and settings; an
    /// inline list is counted, not repeated.
    #[schema(value_type = Object)]
    pub audience: serde_json::Value,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub deliver_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub completed_at: Option<OffsetDateTime>,
    pub counts: Counts,
    /// Recipients ended per second since it started (null before it starts).
    pub rate_per_second: Option<f64>,
    /// When the pending recipients will have ended at that rate (null when nothing is
    /// pending, or before any has ended).
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub estimated_completion_at: Option<OffsetDateTime>,
    /// Why gathering the audience stopped short (a team's roster Teams refused), if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl BroadcastView {
    pub fn of(record: &BroadcastRecord, now: OffsetDateTime) -> Self {
        let counts = record.counts;
        let ended = counts.total - counts.pending;
        let rate_per_second = record.started_at.map(|started| {
            let end = record.completed_at.unwrap_or(now);
            let seconds = (end - started).as_seconds_f64();
            if seconds > 0.0 {
                ended as f64 / seconds
            } else {
                0.0
            }
        });
        let estimated_completion_at = match rate_per_second {
            Some(rate) if rate > 0.0 && counts.pending > 0 && !record.status.is_final() => {
                Some(now + time::Duration::seconds_f64(counts.pending as f64 / rate))
            }
            _ => None,
        };
        Self {
            id: record.broadcast.id.to_string(),
            status: record.status,
            audience: record.audience.clone(),
            deliver_at: record.broadcast.deliver_at,
            expires_at: record.broadcast.expires_at,
            created_at: record.created_at,
            started_at: record.started_at,
            completed_at: record.completed_at,
            counts,
            rate_per_second,
            estimated_completion_at,
            last_error: record.last_error.clone(),
        }
    }
}

impl From<LaunchError> for Problem {
    fn from(error: LaunchError) -> Self {
        match error {
            LaunchError::Conflict(existing) => Problem::conflict(format!(
                "broadcast {} exists with a different request",
                existing.broadcast.id
            )),
            LaunchError::Refused { field, reason } => {
                Problem::unprocessable(format!("{field}: {reason}"))
            }
            LaunchError::Store(e) => e.into(),
            LaunchError::Queue(e) => e.into(),
        }
    }
}

/// Send one message to a whole audience.
#[utoipa::path(
    post,
    path = "/v1/broadcasts",
    operation_id = "createBroadcast",
    tag = "broadcasts",
    request_body = BroadcastRequest,
    params((
        "Idempotency-Key" = Option<String>, Header,
        min_length = 1, max_length = 255, pattern = r"^[!-~]([ -~]*[!-~])?$",
        description = "Repeating a request with the same key answers the first broadcast. 1-255 printable ASCII characters; spaces only inside."
    )),
    responses(
        (status = 202, description = "Accepted (or the same request again): a list audience is a `draft` until released; the rest start, or are `scheduled`", body = BroadcastAccepted, links(
            ("getBroadcast" = (operation_id = "getBroadcast", parameters(("id" = "$response.body#/id")))),
            ("listBroadcastRecipients" = (operation_id = "listBroadcastRecipients", parameters(("id" = "$response.body#/id")))),
            ("cancelBroadcast" = (operation_id = "cancelBroadcast", parameters(("id" = "$response.body#/id")))),
        )),
        (status = 400, description = "Malformed or invalid, naming the field (an id with `|` or a control character, an inline list over 10,000, a message Teams would refuse)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or wrong API key", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The id names a different broadcast", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body larger than 1 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not sent as `application/json`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Herald cannot reach the audience as named (a team it has no install in, a team of another tenant, a tenant it has heard from no one in), or the idempotency key was used for a different request", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis or RabbitMQ cannot take the broadcast now, or it took too long; retry", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<BroadcastRequest>,
) -> Result<Response, Problem> {
    let key = idempotency_key(&headers)?;
    let named_by_key = request.id.is_none() && key.is_some();
    let id = match (&request.id, &key) {
        (Some(id), _) => JobId::try_from(id.clone())
            .map_err(|invalid| Problem::bad_request(format!("id: {invalid}")))?,
        (None, Some(key)) => {
            JobId::from_idempotency_key(&api.namespace, &format!("broadcast/{key}"))
        }
        (None, None) => JobId::fresh(),
    };
    let now = OffsetDateTime::now_utc();
    let broadcast = Broadcast::new(id, request)?;
    if broadcast.expires_at.is_some_and(|expires| expires <= now) {
        return Err(Problem::bad_request("expiresAt: is already past"));
    }
    let launched = match api.broadcaster.create(broadcast, now).await {
        Err(LaunchError::Conflict(existing)) if named_by_key => {
            return Err(Problem::unprocessable(format!(
                "Idempotency-Key was used for broadcast {} with a different request",
                existing.broadcast.id
            )));
        }
        other => other?,
    };
    if launched.created {
        api.metrics.broadcast("created");
    }
    let record = &launched.record;
    let accepted = BroadcastAccepted {
        id: record.broadcast.id.to_string(),
        status: record.status,
        deliver_at: record.broadcast.deliver_at,
    };
    Ok((StatusCode::ACCEPTED, Json(accepted)).into_response())
}

/// Where a broadcast stands.
#[utoipa::path(
    get,
    path = "/v1/broadcasts/{id}",
    operation_id = "getBroadcast",
    tag = "broadcasts",
    params(("id" = String, Path, description = "The broadcast id")),
    responses(
        (status = 200, description = "The broadcast", body = BroadcastView),
        (status = 401, description = "No or wrong API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such broadcast (or it expired)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis is unavailable, or it took too long; retry", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<Json<BroadcastView>, Problem> {
    let record = api.broadcasts.get(&id).await?;
    let record = record.ok_or_else(|| no_such_broadcast(&id))?;
    Ok(Json(BroadcastView::of(&record, OffsetDateTime::now_utc())))
}

/// Start a `draft` list broadcast (or schedule it, when its `deliverAt` is ahead).
#[utoipa::path(
    post,
    path = "/v1/broadcasts/{id}/release",
    operation_id = "releaseBroadcast",
    tag = "broadcasts",
    params(("id" = String, Path, description = "The broadcast id")),
    responses(
        (status = 202, description = "Released (or released already): it starts, or is scheduled", body = BroadcastView),
        (status = 401, description = "No or wrong API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such broadcast", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis or RabbitMQ is unavailable, or it took too long; retry", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn release(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let now = OffsetDateTime::now_utc();
    let record = api.broadcaster.release(&id, now).await?;
    let record = record.ok_or_else(|| no_such_broadcast(&id))?;
    Ok((StatusCode::ACCEPTED, Json(BroadcastView::of(&record, now))).into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CancelQuery {
    /// Also delete every message already delivered.
    #[serde(default)]
    pub retract: Option<bool>,
}

/// Cancel a broadcast: nothing more is sent; with `retract=true`, every delivered message is
/// deleted too.
#[utoipa::path(
    delete,
    path = "/v1/broadcasts/{id}",
    operation_id = "cancelBroadcast",
    tag = "broadcasts",
    params(("id" = String, Path, description = "The broadcast id"), CancelQuery),
    responses(
        (status = 200, description = "Cancelled (or it had ended already: then as it ended). Recipients never sent count as `cancelled`; a message being sent right now may still arrive", body = BroadcastView),
        (status = 202, description = "Cancelled, and every delivered message will be deleted (each notification then reads `cancelled`; one that arrives after this is deleted as it is recorded)", body = BroadcastView),
        (status = 400, description = "`retract` is not `true` or `false`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or wrong API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such broadcast", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis or RabbitMQ is unavailable, or it took too long; retry (doing it again is harmless)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn cancel(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<CancelQuery>,
) -> Result<Response, Problem> {
    let now = OffsetDateTime::now_utc();
    let before = api.broadcasts.cancel(&id, now).await?;
    let before = before.ok_or_else(|| no_such_broadcast(&id))?;
    if !before.is_final() {
        tracing::info!(broadcast = %id, was = %before, "broadcast cancelled");
        api.metrics.broadcast("cancelled");
    }
    let retract = query.retract.unwrap_or(false);
    if retract {
        // Marked first, so a message that reaches Teams from now on is deleted as it is
        // recorded; then every one delivered so far.
        api.broadcasts.mark_retracting(&id).await?;
        api.broadcaster.walk(&id, WalkAction::Retract).await?;
        tracing::info!(broadcast = %id, "broadcast being retracted");
    }
    let record = api.broadcasts.get(&id).await?;
    let record = record.ok_or_else(|| no_such_broadcast(&id))?;
    // A cancel before anything was handed out settles the broadcast at once: told here (a
    // cancel while sending settles once the fan-out has counted what it never handed out,
    // and the dispatcher tells it then). Told again when the cancel is retried, with the
    // same id, so a crash between the two loses nothing the caller does not then redo.
    if record.status == BroadcastStatus::Cancelled
        && let Some(event) = BroadcastCompleted::event(api.events.source(), &record)
    {
        api.events.emit(event).await?;
    }
    let status = if retract {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(BroadcastView::of(&record, now))).into_response())
}

/// A new message for a broadcast.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"message": {"text": "The office is closed on Friday and Monday"}}))]
pub struct BroadcastEdit {
    pub message: Message,
}

/// Edit a broadcast's message: every delivered message is changed in Teams, and recipients
/// not sent to yet get the new one.
#[utoipa::path(
    patch,
    path = "/v1/broadcasts/{id}",
    operation_id = "editBroadcast",
    tag = "broadcasts",
    params(("id" = String, Path, description = "The broadcast id")),
    request_body = BroadcastEdit,
    responses(
        (status = 202, description = "The new message is stored; every delivered message will be edited (paced like sends)", body = BroadcastView),
        (status = 400, description = "A message Teams would refuse", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or wrong API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such broadcast", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Cancelled; or edited by another request at the same moment (try again)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body larger than 64 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not sent as `application/json`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis or RabbitMQ is unavailable, or it took too long; retry (doing it again is harmless)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn edit(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<BroadcastEdit>,
) -> Result<Response, Problem> {
    let record = api.broadcasts.get(&id).await?;
    let record = record.ok_or_else(|| no_such_broadcast(&id))?;
    if record.status == BroadcastStatus::Cancelled {
        return Err(Problem::conflict(format!(
            "broadcast {id} is cancelled: its messages are not edited"
        )));
    }
    let edited = Broadcast {
        message: request.message,
        ..record.broadcast.clone()
    };
    // The message is checked as each recipient's job checks it.
    edited.job_for(&Recipient::user("tenant", "user"))?;
    if api
        .broadcasts
        .edit(&id, record.version, &edited)
        .await?
        .is_none()
    {
        return Err(Problem::conflict(format!(
            "broadcast {id} was edited by another request at the same moment; try again"
        )));
    }
    api.broadcaster.walk(&id, WalkAction::Edit).await?;
    tracing::info!(broadcast = %id, "broadcast edited");
    let record = api.broadcasts.get(&id).await?;
    let record = record.ok_or_else(|| no_such_broadcast(&id))?;
    let now = OffsetDateTime::now_utc();
    Ok((StatusCode::ACCEPTED, Json(BroadcastView::of(&record, now))).into_response())
}

/// Send again to every recipient whose every attempt failed for a reason that could pass
/// (throttled, Teams busy or out of reach); never to one Teams reported gone or blocked.
#[utoipa::path(
    post,
    path = "/v1/broadcasts/{id}/retry",
    operation_id = "retryBroadcast",
    tag = "broadcasts",
    params(("id" = String, Path, description = "The broadcast id")),
    responses(
        (status = 202, description = "Those recipients are pending again and will be sent to (the counts follow)", body = BroadcastView),
        (status = 401, description = "No or wrong API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such broadcast", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Cancelled, or a draft not yet released", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis or RabbitMQ is unavailable, or it took too long; retry (doing it again is harmless)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn retry(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let record = api.broadcasts.get(&id).await?;
    let record = record.ok_or_else(|| no_such_broadcast(&id))?;
    if matches!(
        record.status,
        BroadcastStatus::Cancelled | BroadcastStatus::Draft
    ) {
        return Err(Problem::conflict(format!(
            "broadcast {id} is {}: nothing is sent again",
            record.status
        )));
    }
    api.broadcaster.walk(&id, WalkAction::Retry).await?;
    tracing::info!(broadcast = %id, failed = record.counts.failed, "broadcast's transient failures sent again");
    let now = OffsetDateTime::now_utc();
    Ok((StatusCode::ACCEPTED, Json(BroadcastView::of(&record, now))).into_response())
}

pub(super) fn no_such_broadcast(id: &str) -> Problem {
    Problem::not_found(format!("no broadcast {id}"))
}

//! `/v1/notifications`: create, look up, cancel and edit notifications.

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use herald_shared::{
    amqp::headers as amqp_headers,
    job::{Change, ChangeKind, Job, JobError, JobId, Message, Target},
    store::{Cancel, JobStatus, StatusRecord},
};
use lapin::types::FieldTable;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{Api, extract::ApiJson};
use crate::{
    enqueue::{OnConflict, SubmitError},
    problem::Problem,
};

/// A notification to send: the AMQP job without (or with) its id.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationRequest {
    /// Your own id for the job; the same id again answers the same job.
    #[serde(default)]
    pub id: Option<String>,
    pub to: Target,
    pub message: Message,
    /// When to send it; absent means now.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub deliver_at: Option<OffsetDateTime>,
    /// Once passed, the job ends `expired`, unsent.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
}

/// The answer to an accepted notification.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    #[schema(value_type = String)]
    pub id: JobId,
    pub status: JobStatus,
    #[serde(with = "time::serde::rfc3339::option")]
    pub deliver_at: Option<OffsetDateTime>,
}

/// A new content for a delivered message.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct EditRequest {
    pub message: Message,
}

/// Queue a notification.
#[utoipa::path(
    post,
    path = "/v1/notifications",
    tag = "notifications",
    request_body = NotificationRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Repeating a request with the same key answers the first job")),
    responses(
        (status = 202, description = "Queued (or the same request again)", body = Accepted),
        (status = 400, description = "Malformed or invalid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or wrong API key", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The id names a different job", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The idempotency key was used for a different request", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis or RabbitMQ cannot take the job now; retry", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<NotificationRequest>,
) -> Result<Response, Problem> {
    let key = headers
        .get("idempotency-key")
        .map(|v| v.to_str().map(str::to_owned));
    let key = match key {
        Some(Ok(key)) if !key.trim().is_empty() && key.len() <= 255 => Some(key),
        Some(_) => {
            return Err(Problem::bad_request(
                "Idempotency-Key: must be 1-255 visible characters",
            ));
        }
        None => None,
    };
    let (id, id_from) = match (request.id, &key) {
        (Some(id), _) => (id.parse().map_err(JobError::from)?, IdSource::Caller),
        (None, Some(key)) => (
            JobId::from_idempotency_key(&api.namespace, key),
            IdSource::Key,
        ),
        (None, None) => (JobId::fresh(), IdSource::Fresh),
    };
    let now = OffsetDateTime::now_utc();
    let job = Job::new(
        id,
        request.to,
        request.message,
        // Kept as sent (a time in the past simply means now), so that a retried request
        // hashes the same as the first.
        request.deliver_at,
        request.expires_at,
    )?;
    if job.expires_at.is_some_and(|expires| expires <= now) {
        return Err(Problem::bad_request("expiresAt: is already past"));
    }
    match api.enqueuer.submit(job, OnConflict::Refuse, now).await {
        Ok(submitted) => {
            Ok((StatusCode::ACCEPTED, Json(accepted(&submitted.record))).into_response())
        }
        Err(SubmitError::Conflict(existing)) => Err(match id_from {
            IdSource::Key => Problem::unprocessable(format!(
                "Idempotency-Key was used for job {} with a different request",
                existing.id
            )),
            _ => Problem::conflict(format!(
                "job {} exists with a different request",
                existing.id
            )),
        }),
        Err(e) => Err(e.into()),
    }
}

enum IdSource {
    Caller,
    Key,
    Fresh,
}

fn accepted(record: &StatusRecord) -> Accepted {
    Accepted {
        id: record.id.clone(),
        status: record.status,
        deliver_at: record.deliver_at,
    }
}

/// What happened to a notification.
#[utoipa::path(
    get,
    path = "/v1/notifications/{id}",
    tag = "notifications",
    params(("id" = String, Path, description = "The job id")),
    responses(
        (status = 200, description = "The job's status record", body = StatusRecord),
        (status = 401, description = "No or wrong API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job (or its record expired)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis is unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<Json<StatusRecord>, Problem> {
    match api.enqueuer.statuses.get(&id).await? {
        Some(record) => Ok(Json(record)),
        None => Err(no_such_job(&id)),
    }
}

/// Cancel a notification not yet sent; for a delivered one, delete the Teams message.
#[utoipa::path(
    delete,
    path = "/v1/notifications/{id}",
    tag = "notifications",
    params(("id" = String, Path, description = "The job id")),
    responses(
        (status = 200, description = "Cancelled: it will never be sent", body = StatusRecord),
        (status = 202, description = "Delivered: the Teams message will be deleted (the job then ends `cancelled`)", body = StatusRecord),
        (status = 401, description = "No or wrong API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Being sent right now, or already failed or expired", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis or RabbitMQ is unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn cancel(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let now = OffsetDateTime::now_utc();
    let found = api.enqueuer.statuses.cancel(&id, now).await?;
    match found.ok_or_else(|| no_such_job(&id))? {
        Cancel::Cancelled(record) | Cancel::AlreadyCancelled(record) => {
            Ok(Json(record).into_response())
        }
        Cancel::Delivered(record) => {
            queue_change(
                &api,
                Change {
                    id: record.id.clone(),
                    message: None,
                },
                ChangeKind::Delete,
            )
            .await?;
            Ok((StatusCode::ACCEPTED, Json(record)).into_response())
        }
        Cancel::Sending(_) => Err(Problem::conflict(format!(
            "job {id} is being sent right now; try again in a moment"
        ))),
        Cancel::Ended(record) => Err(Problem::conflict(format!(
            "job {id} already ended {}",
            record.status
        ))),
    }
}

/// Edit a delivered message.
#[utoipa::path(
    patch,
    path = "/v1/notifications/{id}",
    tag = "notifications",
    params(("id" = String, Path, description = "The job id")),
    request_body = EditRequest,
    responses(
        (status = 202, description = "The Teams message will be updated", body = StatusRecord),
        (status = 400, description = "Malformed or invalid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or wrong API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not delivered (yet, or any more)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis or RabbitMQ is unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn edit(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<EditRequest>,
) -> Result<Response, Problem> {
    request.message.validate()?;
    let record = api.enqueuer.statuses.get(&id).await?;
    let record = record.ok_or_else(|| no_such_job(&id))?;
    if record.status != JobStatus::Delivered {
        return Err(Problem::conflict(format!(
            "job {id} is {}; only a delivered message can be edited",
            record.status
        )));
    }
    queue_change(
        &api,
        Change {
            id: record.id.clone(),
            message: Some(request.message),
        },
        ChangeKind::Update,
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Json(record)).into_response())
}

async fn queue_change(api: &Api, change: Change, kind: ChangeKind) -> Result<(), Problem> {
    let mut amqp = FieldTable::default();
    amqp_headers::set_trace_context(&mut amqp);
    Ok(api
        .enqueuer
        .publisher
        .publish_change(&change, kind, amqp)
        .await?)
}

fn no_such_job(id: &str) -> Problem {
    Problem::not_found(format!(
        "no job {id} (it never existed, or its record expired)"
    ))
}

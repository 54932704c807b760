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
    error::Chain,
    events::{EventType, NotificationChanged, Proof},
    job::{Change, ChangeKind, Job, JobId, Message, OnAction, Target, Timing, openapi},
    store::{Cancel, JobStatus, Stamp, StatusRecord},
};
use lapin::types::FieldTable;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::openapi::schema::Schema;

use super::{Api, extract::ApiJson};
use herald_shared::submit::{OnConflict, SubmitError};

use crate::problem::Problem;

/// A notification to send: the AMQP job without (or with) its id. Unknown fields are ignored.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({
    "to": {"user": {"tenantId": "72f988bf-86f1-41af-91ab-2d7cd011db47",
                    "aadObjectId": "6b1e5a8c-3f0d-4c7e-9a2b-1d4f8e6c0a93"}},
    "message": {"text": "Build **42** is green", "textFormat": "markdown"}
}))]
pub struct NotificationRequest {
    /// Your own id for the job; the same id again answers the same job. Absent: Herald names
    /// it (from the `Idempotency-Key` when there is one).
    #[serde(default)]
    pub id: Option<JobId>,
    pub to: Target,
    pub message: Message,
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(schema_with = deliver_at_schema)]
    pub deliver_at: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(schema_with = expires_at_schema)]
    pub expires_at: Option<OffsetDateTime>,
    /// The recipient's clock: `deliverAtLocal`, `timeZone`, `window`, `urgent`.
    #[serde(flatten)]
    pub timing: Timing,
    /// What a user sees after pressing an `Action.Execute` button of the message's card, by
    /// verb (`*`: any other verb): `{"card": {…}}` replaces the card for them, `{"text": "…"}`
    /// is shown. Absent: `Thanks, noted.` Every press is published as
    /// `herald.notification.action`.
    #[serde(default)]
    pub on_action: Option<OnAction>,
}

fn deliver_at_schema() -> Schema {
    openapi::optional_date_time("When to send it (RFC 3339); absent, or already past, means now.")
}

fn expires_at_schema() -> Schema {
    openapi::optional_date_time(
        "Once passed, the job ends `expired`, unsent. It must be in the future, and after \
         `deliverAt` when both are given; otherwise the request is refused with 400.",
    )
}

/// The answer to an accepted notification.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    pub id: JobId,
    pub status: JobStatus,
    #[serde(with = "time::serde::rfc3339::option")]
    pub deliver_at: Option<OffsetDateTime>,
}

/// A new content for a delivered message.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"message": {"text": "Build **42** is green (edited)", "textFormat": "markdown"}}))]
pub struct EditRequest {
    pub message: Message,
}

/// Queue a notification.
#[utoipa::path(
    post,
    path = "/v1/notifications",
    operation_id = "createNotification",
    tag = "notifications",
    request_body = NotificationRequest,
    params((
        "Idempotency-Key" = Option<String>, Header,
        min_length = 1, max_length = 255, pattern = r"^[!-~]([ -~]*[!-~])?$",
        description = "Repeating a request with the same key answers the first job. 1-255 printable ASCII characters; spaces only inside."
    )),
    responses(
        (status = 202, description = "Queued (or the same request again)", body = Accepted, links(
            ("getNotification" = (operation_id = "getNotification", parameters(("id" = "$response.body#/id")))),
            ("editNotification" = (operation_id = "editNotification", parameters(("id" = "$response.body#/id")))),
            ("cancelNotification" = (operation_id = "cancelNotification", parameters(("id" = "$response.body#/id")))),
        )),
        (status = 400, description = "Malformed or invalid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or wrong API key", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The id names a different job", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body larger than 64 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not sent as `application/json`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The idempotency key was used for a different request", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis or RabbitMQ cannot take the job now, or it took too long; retry", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<NotificationRequest>,
) -> Result<Response, Problem> {
    let key = idempotency_key(&headers)?;
    let (id, id_from) = match (request.id, &key) {
        (Some(id), _) => (id, IdSource::Caller),
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
    )?
    .with_timing(request.timing)?
    .with_on_action(request.on_action)?;
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

/// The request's `Idempotency-Key`, if it has one; 400 if it breaks the documented pattern.
pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    match headers.get("idempotency-key") {
        Some(key) if is_idempotency_key(key.as_bytes()) => {
            Ok(Some(String::from_utf8_lossy(key.as_bytes()).into_owned()))
        }
        Some(_) => Err(Problem::bad_request(
            "Idempotency-Key: must be 1-255 printable ASCII characters, with spaces only inside",
        )),
        None => Ok(None),
    }
}

/// The documented pattern `^[!-~]([ -~]*[!-~])?$`, at most 255 long.
fn is_idempotency_key(key: &[u8]) -> bool {
    let printable = |b: &u8| b.is_ascii_graphic();
    (1..=255).contains(&key.len())
        && key.first().is_some_and(printable)
        && key.last().is_some_and(printable)
        && key.iter().all(|&b| b == b' ' || b.is_ascii_graphic())
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
    operation_id = "getNotification",
    tag = "notifications",
    params(("id" = JobId, Path, description = "The job id")),
    responses(
        (status = 200, description = "The job's status record", body = StatusRecord),
        (status = 401, description = "No or wrong API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job (or its record expired)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis is unavailable, or it took too long; retry", body = Problem, content_type = "application/problem+json"),
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
    operation_id = "cancelNotification",
    tag = "notifications",
    params(("id" = JobId, Path, description = "The job id")),
    responses(
        (status = 200, description = "Cancelled: it will never be sent", body = StatusRecord),
        (status = 202, description = "Delivered: the Teams message will be deleted (the job then ends `cancelled`)", body = StatusRecord),
        (status = 401, description = "No or wrong API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Being sent right now, or already failed or expired", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis or RabbitMQ is unavailable, or it took too long; retry", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn cancel(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let now = OffsetDateTime::now_utc();
    let statuses = &api.enqueuer.statuses;
    // The cancellation is told as an event: noted before the change (with the record's
    // field that proves it), published after.
    let before = statuses.get(&id).await?.ok_or_else(|| no_such_job(&id))?;
    let event = NotificationChanged::cancelled(api.events.source(), &before, now);
    let field = Proof::field_for(EventType::NotificationCancelled);
    let unsent = matches!(before.status, JobStatus::Scheduled | JobStatus::Queued);
    if unsent {
        let proof = Proof {
            key: statuses.record_key(&id),
            field: field.clone(),
        };
        api.events.note(&event, Some(&proof)).await?;
    }
    let stamp = unsent.then_some(Stamp {
        field: &field,
        event_id: &event.id,
    });
    let found = statuses.cancel(&id, now, stamp).await?;
    match found.ok_or_else(|| no_such_job(&id))? {
        Cancel::Cancelled(record) => {
            api.events.publish_soon(event);
            // The record says cancelled, which is what the dispatcher checks; removing the
            // timer only saves it the trip, so a failure here changes nothing for the caller.
            if let Err(e) = api.enqueuer.queue.timers().forget(&id).await {
                tracing::warn!(job_id = %id, error = %Chain(&e), "cannot remove a cancelled job's timer; it is dropped when due");
            }
            Ok(Json(record).into_response())
        }
        Cancel::AlreadyCancelled(record) => Ok(Json(record).into_response()),
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
    operation_id = "editNotification",
    tag = "notifications",
    params(("id" = JobId, Path, description = "The job id")),
    request_body = EditRequest,
    responses(
        (status = 202, description = "The Teams message will be updated", body = StatusRecord),
        (status = 400, description = "Malformed or invalid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or wrong API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not delivered (yet, or any more)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body larger than 64 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not sent as `application/json`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis or RabbitMQ is unavailable, or it took too long; retry", body = Problem, content_type = "application/problem+json"),
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
        .queue
        .publisher()
        .publish_change(&change, kind, amqp)
        .await?)
}

fn no_such_job(id: &str) -> Problem {
    Problem::not_found(format!(
        "no job {id} (it never existed, or its record expired)"
    ))
}

#[cfg(test)]
mod tests {
    use super::is_idempotency_key;

    #[test]
    fn an_idempotency_key_is_what_the_document_says() {
        let longest = "k".repeat(255);
        for key in [
            "a",
            "build-42-green",
            "build 42 green",
            "~!",
            longest.as_str(),
        ] {
            assert!(is_idempotency_key(key.as_bytes()), "{key:?} is refused");
        }
        let too_long = "k".repeat(256);
        for key in ["", " ", " a", "a ", "a\tb", "ключ", too_long.as_str()] {
            assert!(!is_idempotency_key(key.as_bytes()), "{key:?} is accepted");
        }
    }
}

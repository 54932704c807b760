//! `/v1/schedules`: recurring notifications. A schedule is a target, a message and an RFC 5545
//! recurrence in a zone; each occurrence becomes a notification whose id is UUID v5 of the
//! schedule and the occurrence's instant, so it is never sent twice (see
//! [`herald_shared::schedule`]).

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use herald_shared::{
    job::{Job, JobId, Message, Target},
    schedule::{InvalidRecurrence, Recurrence, RecurrenceSpec, Schedule, Tick},
    store::ScheduleChange,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{Api, extract::ApiJson};
use crate::problem::Problem;

/// A recurring notification to create.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({
    "id": "weekly-standup",
    "to": {"user": {"tenantId": "72f988bf-86f1-41af-91ab-2d7cd011db47",
                    "aadObjectId": "6b1e5a8c-3f0d-4c7e-9a2b-1d4f8e6c0a93"}},
    "message": {"text": "Stand-up in 15 minutes"},
    "recurrence": {"rrule": "FREQ=WEEKLY;BYDAY=MO;BYHOUR=8;BYMINUTE=45", "timeZone": "recipient",
                   "start": "2026-12-07T00:00"}
}))]
pub struct ScheduleRequest {
    /// Your own id for the schedule; the same id with the same request answers the same
    /// schedule. Absent: Herald names it.
    #[serde(default)]
    pub id: Option<JobId>,
    pub to: Target,
    pub message: Message,
    pub recurrence: RecurrenceSpec,
}

/// A change to a schedule: what is left out (or null) stays. Pausing stops its occurrences;
/// resuming continues from the next one after now.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"paused": true}))]
pub struct ScheduleChangeRequest {
    #[serde(default)]
    pub paused: Option<bool>,
    #[serde(default)]
    pub message: Option<Message>,
    #[serde(default)]
    pub recurrence: Option<RecurrenceSpec>,
}

/// A schedule, with its next occurrences and the ids of the notifications of its last ones.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleView {
    pub id: String,
    pub to: Target,
    pub message: Message,
    pub recurrence: RecurrenceSpec,
    pub paused: bool,
    /// The next occurrences (none while paused, or when the recurrence has ended).
    #[serde(with = "instants")]
    #[schema(value_type = Vec<String>, format = DateTime)]
    pub next: Vec<OffsetDateTime>,
    /// The notification ids of the latest occurrences, newest first
    /// (`/v1/notifications/{id}` follows each).
    pub last: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

mod instants {
    use serde::{Serializer, ser::SerializeSeq};
    use time::{OffsetDateTime, format_description::well_known::Rfc3339};

    pub fn serialize<S: Serializer>(
        instants: &[OffsetDateTime],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(instants.len()))?;
        for instant in instants {
            seq.serialize_element(
                &instant
                    .format(&Rfc3339)
                    .map_err(serde::ser::Error::custom)?,
            )?;
        }
        seq.end()
    }
}

impl From<InvalidRecurrence> for Problem {
    fn from(invalid: InvalidRecurrence) -> Self {
        Problem::bad_request(invalid.to_string())
    }
}

/// Create a recurring notification.
#[utoipa::path(
    post,
    path = "/v1/schedules",
    operation_id = "createSchedule",
    tag = "schedules",
    request_body = ScheduleRequest,
    responses(
        (status = 201, description = "Created; its first occurrence is scheduled", body = ScheduleView, links(
            ("getSchedule" = (operation_id = "getSchedule", parameters(("id" = "$response.body#/id")))),
            ("changeSchedule" = (operation_id = "changeSchedule", parameters(("id" = "$response.body#/id")))),
            ("deleteSchedule" = (operation_id = "deleteSchedule", parameters(("id" = "$response.body#/id")))),
        )),
        (status = 200, description = "The same request again: the schedule it created", body = ScheduleView),
        (status = 400, description = "Malformed or invalid (a rule that cannot be expanded, a start that is not a real time, an `until` before `start`)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or wrong API key", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The id names a different schedule", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body larger than 64 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not sent as `application/json`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis or RabbitMQ is unavailable, or it took too long; retry", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    State(api): State<Arc<Api>>,
    ApiJson(request): ApiJson<ScheduleRequest>,
) -> Result<Response, Problem> {
    let id = request.id.unwrap_or_else(JobId::fresh);
    // The target and message follow the job's rules: each occurrence is a job.
    Job::new(
        id.clone(),
        request.to.clone(),
        request.message.clone(),
        None,
        None,
    )?;
    let recurrence = Recurrence::from_spec(&request.recurrence)?;
    let now = OffsetDateTime::now_utc();
    let schedule = Schedule {
        id: id.to_string(),
        to: request.to,
        message: request.message,
        recurrence,
        paused: false,
        generation: 1,
        created_at: now,
        updated_at: now,
    };
    let content_hash = schedule.content_hash();
    let (schedule, status) = match api.scheduler.store.create(&schedule, &content_hash).await? {
        Ok(()) => (schedule, StatusCode::CREATED),
        Err((existing, hash)) if hash.as_deref() == Some(content_hash.as_str()) => {
            (existing, StatusCode::OK)
        }
        Err(_) => {
            return Err(Problem::conflict(format!(
                "schedule {id} exists with a different request"
            )));
        }
    };
    // Parked for the first (or, repeated, the next) occurrence: a request repeated after a
    // failure here finishes the job.
    api.scheduler.park_next(&schedule, now).await?;
    Ok((status, Json(view(&api, schedule, now).await?)).into_response())
}

/// A schedule, its next occurrences and its last ones.
#[utoipa::path(
    get,
    path = "/v1/schedules/{id}",
    operation_id = "getSchedule",
    tag = "schedules",
    params(("id" = JobId, Path, description = "The schedule id")),
    responses(
        (status = 200, description = "The schedule", body = ScheduleView),
        (status = 401, description = "No or wrong API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such schedule", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis is unavailable, or it took too long; retry", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<Json<ScheduleView>, Problem> {
    let schedule = api.scheduler.store.get(&id).await?;
    let schedule = schedule.ok_or_else(|| no_such_schedule(&id))?;
    Ok(Json(view(&api, schedule, OffsetDateTime::now_utc()).await?))
}

/// Pause, resume or change a schedule.
#[utoipa::path(
    patch,
    path = "/v1/schedules/{id}",
    operation_id = "changeSchedule",
    tag = "schedules",
    params(("id" = JobId, Path, description = "The schedule id")),
    request_body = ScheduleChangeRequest,
    responses(
        (status = 200, description = "The schedule, changed", body = ScheduleView),
        (status = 400, description = "Malformed or invalid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or wrong API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such schedule", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body larger than 64 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not sent as `application/json`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis or RabbitMQ is unavailable, or it took too long; retry", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn change(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<ScheduleChangeRequest>,
) -> Result<Json<ScheduleView>, Problem> {
    if let Some(message) = &request.message {
        message.validate()?;
    }
    let change = ScheduleChange {
        paused: request.paused,
        message: request.message,
        recurrence: request
            .recurrence
            .as_ref()
            .map(Recurrence::from_spec)
            .transpose()?,
    };
    let now = OffsetDateTime::now_utc();
    let schedule = api.scheduler.store.change(&id, &change, now).await?;
    let schedule = schedule.ok_or_else(|| no_such_schedule(&id))?;
    // Its timer, for the schedule as it now is (none while paused); a timer of the schedule
    // as it was is dropped when it comes due.
    api.scheduler.park_next(&schedule, now).await?;
    Ok(Json(view(&api, schedule, now).await?))
}

/// Delete a schedule: no occurrence after this one is sent.
#[utoipa::path(
    delete,
    path = "/v1/schedules/{id}",
    operation_id = "deleteSchedule",
    tag = "schedules",
    params(("id" = JobId, Path, description = "The schedule id")),
    responses(
        (status = 200, description = "Deleted; the schedule as it was", body = ScheduleView),
        (status = 401, description = "No or wrong API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such schedule", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis is unavailable, or it took too long; retry", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<Json<ScheduleView>, Problem> {
    let schedule = api.scheduler.store.get(&id).await?;
    let mut schedule = schedule.ok_or_else(|| no_such_schedule(&id))?;
    let now = OffsetDateTime::now_utc();
    let last = api.scheduler.store.last_occurrences(&id).await?;
    api.scheduler.store.delete(&id).await?;
    // The record is gone, so a timer that comes due is dropped; removing it saves the trip.
    let timers = api.scheduler.queue.timers();
    timers
        .forget(&Tick::timer_id(&id, schedule.generation))
        .await?;
    timers.forget(&Tick::legacy_timer_id(&id)).await?;
    schedule.paused = true;
    let mut shown = view(&api, schedule, now).await?;
    shown.last = last;
    Ok(Json(shown))
}

async fn view(api: &Api, schedule: Schedule, now: OffsetDateTime) -> Result<ScheduleView, Problem> {
    let (next, last) = tokio::try_join!(
        api.scheduler.upcoming(&schedule, now),
        api.scheduler.store.last_occurrences(&schedule.id),
    )?;
    Ok(ScheduleView {
        recurrence: schedule.recurrence.spec(),
        id: schedule.id,
        to: schedule.to,
        message: schedule.message,
        paused: schedule.paused,
        next,
        last,
        created_at: schedule.created_at,
        updated_at: schedule.updated_at,
    })
}

fn no_such_schedule(id: &str) -> Problem {
    Problem::not_found(format!("no schedule {id}"))
}

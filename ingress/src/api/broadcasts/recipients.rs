//! A broadcast's recipients: a list's uploads (NDJSON or CSV, in parts, while it is a
//! `draft`), and every recipient with their notification's status, a page at a time as JSON
//! or all of them streamed as CSV or NDJSON.
//!
//! An upload is read whole and checked line by line before anything is added, so a bad line
//! is a 400 naming it and the list is as it was; then it is read again and added a chunk at a
//! time. Listing walks the audience in its stored
//! order; the cursor is the last recipient seen, so a page never skips or repeats one however
//! the broadcast moves on meanwhile.

use std::{borrow::Cow, sync::Arc};

use axum::{
    Json,
    body::{Body, Bytes},
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use futures_util::{StreamExt, stream};
use herald_shared::{
    broadcast::{BroadcastStatus, Recipient},
    job::{ONE_USER_NAME, UserName},
    store::{ADD_CHUNK, Added, BroadcastRecord, JobStatus, StatusRecord, StoreError},
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::no_such_broadcast;
use crate::{
    api::{Api, extract::ApiQuery},
    problem::Problem,
};

/// The largest upload: 10 MiB, about 130,000 recipients.
pub const MAX_UPLOAD: usize = 10 * 1024 * 1024;

/// Recipients read per page of an export.
const EXPORT_PAGE: usize = 500;

/// The most recipients one JSON page holds.
const MAX_PAGE: usize = 1_000;

/// What an upload added.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddedRecipients {
    /// Recipients new to the list.
    pub added: u64,
    /// Distinct recipients on the list so far.
    pub total: u64,
}

/// One recipient and their notification.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecipientView {
    pub tenant_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aad_object_id: Option<String>,
    /// For a user named by sign-in name (in lower case).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_principal_name: Option<String>,
    /// For a user named by mail address (in lower case).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel_id: Option<String>,
    /// Their notification (`/v1/notifications/{id}`).
    pub notification_id: String,
    pub status: RecipientStatus,
    pub last_error: Option<String>,
    pub activity_id: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub read_at: Option<OffsetDateTime>,
}

/// A recipient's state: their notification's status, or `pending` before the fan-out has
/// reached them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RecipientStatus {
    Pending,
    Scheduled,
    Queued,
    Sending,
    Delivered,
    Failed,
    Cancelled,
    Expired,
}

impl RecipientStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Scheduled => "scheduled",
            Self::Queued => "queued",
            Self::Sending => "sending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
        }
    }
}

impl From<JobStatus> for RecipientStatus {
    fn from(status: JobStatus) -> Self {
        match status {
            JobStatus::Scheduled => Self::Scheduled,
            JobStatus::Queued => Self::Queued,
            JobStatus::Sending => Self::Sending,
            JobStatus::Delivered => Self::Delivered,
            JobStatus::Failed => Self::Failed,
            JobStatus::Cancelled => Self::Cancelled,
            JobStatus::Expired => Self::Expired,
        }
    }
}

/// A page of recipients.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RecipientPage {
    pub items: Vec<RecipientView>,
    /// The `cursor` of the next page; null on the last.
    pub next: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only recipients in this state.
    #[serde(default)]
    pub status: Option<RecipientStatus>,
    /// Where the page starts: the previous page's `next`.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Recipients per page, 1 to 1000 (default 100).
    #[serde(default)]
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// One line of an NDJSON upload: a tenant and one of the user's names. Unknown fields are
/// ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UploadedUser<'a> {
    #[serde(borrow)]
    tenant_id: Cow<'a, str>,
    #[serde(borrow, default)]
    aad_object_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    user_principal_name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    email: Option<Cow<'a, str>>,
}

/// The columns (and NDJSON fields) that can name a user, in the order a line's name is read.
const NAME_FIELDS: [&str; 3] = ["aadObjectId", "userPrincipalName", "email"];

/// Add recipients to a `draft` list broadcast: NDJSON lines `{"tenantId","aadObjectId"}`, or
/// CSV with the header `tenantId,aadObjectId`; a user Herald has never heard from may be
/// named by `userPrincipalName` or `email` instead. Repeats are ignored.
#[utoipa::path(
    post,
    path = "/v1/broadcasts/{id}/recipients",
    operation_id = "addBroadcastRecipients",
    tag = "broadcasts",
    params(("id" = String, Path, description = "The broadcast id")),
    request_body(
        description = "At most 10 MiB: NDJSON (`application/x-ndjson`), one `{\"tenantId\",\"aadObjectId\"}` per line, or CSV (`text/csv`) with the header line `tenantId,aadObjectId`. A user may be named by `userPrincipalName` or `email` instead of `aadObjectId` (resolved through Microsoft Graph when sent); a line names exactly one. Blank lines are skipped; a line that does not read is refused, naming it, and nothing is added.",
        content(
            (String = "application/x-ndjson", example = json!("{\"tenantId\":\"72f988bf-86f1-41af-91ab-2d7cd011db47\",\"aadObjectId\":\"6b1e5a8c-3f0d-4c7e-9a2b-1d4f8e6c0a93\"}\n")),
            (String = "text/csv", example = json!("tenantId,aadObjectId\n72f988bf-86f1-41af-91ab-2d7cd011db47,6b1e5a8c-3f0d-4c7e-9a2b-1d4f8e6c0a93\n")),
        )
    ),
    responses(
        (status = 200, description = "Added", body = AddedRecipients),
        (status = 400, description = "A line that does not read, named by its number", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or wrong API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such broadcast", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not a draft (released already, or not a list); a release while an upload was being added leaves the part added before it", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body larger than 10 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Neither `application/x-ndjson` nor `text/csv`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis is unavailable, or it took too long; part of the upload may have been added: retry (adding again is harmless)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn add(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<AddedRecipients>, Problem> {
    let format = UploadFormat::of(&headers)?;
    let body = read_upload(body, &headers).await?;
    let text = std::str::from_utf8(&body)
        .map_err(|e| Problem::bad_request(format!("the upload is not UTF-8: {e}")))?;
    // Read twice: once to find a line that does not read before anything is added, then a
    // chunk at a time into the list, so that memory holds the upload and one chunk, never
    // every recipient of it at once.
    format.check(text).map_err(Problem::bad_request)?;
    let mut recipients = format.read(text).map_err(Problem::bad_request)?;
    let mut chunk = Vec::with_capacity(ADD_CHUNK);
    let mut answer = AddedRecipients { added: 0, total: 0 };
    loop {
        chunk.clear();
        for recipient in recipients.by_ref().take(ADD_CHUNK) {
            chunk.push(recipient.map_err(Problem::bad_request)?);
        }
        match api.broadcasts.add(&id, &chunk).await? {
            Added::Added { added, total } => {
                answer.added += added;
                answer.total = total;
            }
            Added::NotFound => return Err(no_such_broadcast(&id)),
            Added::NotDraft(status) => {
                return Err(Problem::conflict(format!(
                    "broadcast {id} is {status}: recipients are added only to a draft list"
                )));
            }
        }
        // An empty upload still answers the list's state, from the one round above.
        if chunk.len() < ADD_CHUNK {
            return Ok(Json(answer));
        }
    }
}

/// The upload's bytes, in one buffer sized by its `Content-Length` when it has one
/// (collecting its frames and then joining them would hold it twice); a chunked upload's
/// buffer grows as its frames arrive.
async fn read_upload(body: Body, headers: &HeaderMap) -> Result<Vec<u8>, Problem> {
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Content Too Large",
            "the upload is larger than 10 MiB: send the list in parts",
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|length| length > MAX_UPLOAD) {
        return Err(too_large());
    }
    // Hyper ends a body at its declared length and fails one that stops short, so the
    // declared length is what arrives.
    let mut upload = Vec::with_capacity(declared.unwrap_or(0));
    let mut frames = body.into_data_stream();
    while let Some(frame) = frames.next().await {
        let frame = frame
            .map_err(|e| Problem::bad_request(format!("the upload did not arrive whole: {e}")))?;
        if upload.len() + frame.len() > MAX_UPLOAD {
            return Err(too_large());
        }
        upload.extend_from_slice(&frame);
    }
    Ok(upload)
}

/// How an upload is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UploadFormat {
    Ndjson,
    Csv,
}

impl UploadFormat {
    fn of(headers: &HeaderMap) -> Result<Self, Problem> {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase());
        match content_type.as_deref() {
            Some("application/x-ndjson" | "application/jsonl" | "application/ndjson") => {
                Ok(Self::Ndjson)
            }
            Some("text/csv") => Ok(Self::Csv),
            _ => Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Unsupported Media Type",
                "send the recipients as application/x-ndjson or text/csv",
            )),
        }
    }

    /// Finds the first line of the upload that does not read, if any, and says why (naming it).
    fn check(self, text: &str) -> Result<(), String> {
        self.read(text)?
            .try_for_each(|recipient| recipient.map(drop))
    }

    /// The upload's recipients, one at a time, each or why its line does not read (naming
    /// it); an error at once for a CSV header that does not name the columns.
    fn read(
        self,
        text: &str,
    ) -> Result<Box<dyn Iterator<Item = Result<Recipient, String>> + Send + '_>, String> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, line)| (i + 1, line.trim()))
            .filter(|(_, line)| !line.is_empty());
        match self {
            Self::Ndjson => Ok(Box::new(lines.map(|(n, line)| {
                let user: UploadedUser =
                    serde_json::from_str(line).map_err(|e| format!("line {n}: {e}"))?;
                let names = [user.aad_object_id, user.user_principal_name, user.email];
                checked(n, &user.tenant_id, names.iter().map(Option::as_deref))
            }))),
            Self::Csv => {
                let Some((n, header)) = lines.next() else {
                    return Ok(Box::new(std::iter::empty()));
                };
                let columns = split_csv(header);
                let position = |name: &str| columns.iter().position(|c| c == name);
                let names = NAME_FIELDS.map(position);
                let Some(tenant) =
                    position("tenantId").filter(|_| names.iter().any(Option::is_some))
                else {
                    return Err(format!(
                        "line {n}: the header must name the columns tenantId and aadObjectId \
                         (or userPrincipalName or email)"
                    ));
                };
                let width = columns.len();
                Ok(Box::new(lines.map(move |(n, line)| {
                    let fields = split_csv(line);
                    if fields.len() != width {
                        return Err(format!(
                            "line {n}: {} fields where the header names {width}",
                            fields.len()
                        ));
                    }
                    let name = |column: &Option<usize>| {
                        column.map(|i| fields[i].as_str()).filter(|f| !f.is_empty())
                    };
                    checked(n, &fields[tenant], names.iter().map(name))
                })))
            }
        }
    }
}

/// A CSV line's fields, trimmed, each unquoted if it was quoted (ids hold no commas).
fn split_csv(line: &str) -> Vec<String> {
    line.split(',')
        .map(|field| {
            let field = field.trim();
            field
                .strip_prefix('"')
                .and_then(|f| f.strip_suffix('"'))
                .unwrap_or(field)
                .replace("\"\"", "\"")
        })
        .collect()
}

/// The recipient of a line: its tenant and the one name it gives, in [`NAME_FIELDS`]' order.
fn checked<'a>(
    line: usize,
    tenant_id: &str,
    names: impl Iterator<Item = Option<&'a str>>,
) -> Result<Recipient, String> {
    Recipient::check_part(tenant_id).map_err(|e| format!("line {line}: tenantId: {e}"))?;
    let mut given = NAME_FIELDS
        .into_iter()
        .zip(names)
        .filter_map(|(f, n)| Some((f, n?)));
    let (Some((field, name)), None) = (given.next(), given.next()) else {
        return Err(format!("line {line}: {ONE_USER_NAME}"));
    };
    Recipient::check_part(name).map_err(|e| format!("line {line}: {field}: {e}"))?;
    Ok(match field {
        "userPrincipalName" => Recipient::named(tenant_id, &UserName::PrincipalName(name.into())),
        "email" => Recipient::named(tenant_id, &UserName::Email(name.into())),
        _ => Recipient::user(tenant_id, name),
    })
}

/// Every recipient of a broadcast with their notification's status: a page as JSON, or all of
/// them streamed when `Accept` asks for `text/csv` or `application/x-ndjson`.
#[utoipa::path(
    get,
    path = "/v1/broadcasts/{id}/recipients",
    operation_id = "listBroadcastRecipients",
    tag = "broadcasts",
    params(("id" = String, Path, description = "The broadcast id"), ListQuery),
    responses(
        (status = 200, description = "A page of recipients (JSON), or every recipient (CSV with a header line, or NDJSON), in the broadcast's order", content(
            (RecipientPage = "application/json"),
            (String = "text/csv"),
            (String = "application/x-ndjson"),
        )),
        (status = 400, description = "A cursor this API did not give, or a `status` or `limit` that does not read", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or wrong API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such broadcast", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis is unavailable, or it took too long; retry", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<ListQuery>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let record = api.broadcasts.get(&id).await?;
    let record = record.ok_or_else(|| no_such_broadcast(&id))?;
    let after = match &query.cursor {
        Some(cursor) => URL_SAFE_NO_PAD
            .decode(cursor)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .filter(|member| Recipient::from_member(member).is_some())
            .ok_or_else(|| Problem::bad_request("cursor: is not one this API gave"))?,
        None => String::new(),
    };
    let export = Export::asked_for(&headers);
    if let Some(export) = export {
        return Ok(export.stream(api, record, after, query.status));
    }
    let limit = match query.limit {
        None => 100,
        Some(limit) if (1..=MAX_PAGE as u32).contains(&limit) => limit as usize,
        Some(_) => return Err(Problem::bad_request("limit: must be 1 to 1000")),
    };
    let (items, last) = read_page(&api, &record, &after, limit, query.status).await?;
    let next = last.map(|member| URL_SAFE_NO_PAD.encode(member));
    Ok(Json(RecipientPage { items, next }).into_response())
}

/// A page of recipients from after `after`: the views (those of `status`, when given) and the
/// last member read when there may be more.
async fn read_page(
    api: &Api,
    record: &BroadcastRecord,
    after: &str,
    limit: usize,
    status: Option<RecipientStatus>,
) -> Result<(Vec<RecipientView>, Option<String>), StoreError> {
    let id = record.broadcast.id.as_str();
    let members = api.broadcasts.page(id, after, limit).await?;
    let recipients: Vec<(String, Recipient)> = members
        .into_iter()
        .filter_map(|m| Recipient::from_member(&m).map(|r| (m, r)))
        .collect();
    let ids: Vec<String> = recipients
        .iter()
        .map(|(_, r)| r.notification_id(id).to_string())
        .collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let records = api.enqueuer.statuses.get_many(&id_refs).await?;
    let last = (recipients.len() == limit)
        .then(|| recipients.last().map(|(m, _)| m.clone()))
        .flatten();
    let views = recipients
        .into_iter()
        .zip(ids)
        .zip(records)
        .map(|(((member, recipient), notification_id), stored)| {
            view(record, &member, recipient, notification_id, stored)
        })
        .filter(|v| status.is_none_or(|s| v.status == s))
        .collect();
    Ok((views, last))
}

fn view(
    broadcast: &BroadcastRecord,
    member: &str,
    recipient: Recipient,
    notification_id: String,
    stored: Option<StatusRecord>,
) -> RecipientView {
    let status = match &stored {
        Some(record) => record.status.into(),
        // Never handed out: pending, or never sent if the broadcast stopped first.
        None if broadcast.fanned_out && member > broadcast.cursor.as_str() => {
            match broadcast.status {
                BroadcastStatus::Expired => RecipientStatus::Expired,
                _ => RecipientStatus::Cancelled,
            }
        }
        None if !broadcast.cursor.is_empty() && member <= broadcast.cursor.as_str() => {
            RecipientStatus::Queued
        }
        None => RecipientStatus::Pending,
    };
    let mut view = RecipientView {
        tenant_id: recipient.tenant_id().to_owned(),
        aad_object_id: None,
        user_principal_name: None,
        email: None,
        team_id: None,
        channel_id: None,
        notification_id,
        status,
        last_error: None,
        activity_id: None,
        read_at: None,
    };
    match recipient {
        Recipient::User { aad_object_id, .. } => view.aad_object_id = Some(aad_object_id),
        Recipient::Named {
            name: UserName::PrincipalName(name),
            ..
        } => view.user_principal_name = Some(name),
        Recipient::Named {
            name: UserName::Email(name),
            ..
        } => view.email = Some(name),
        Recipient::Channel {
            team_id,
            channel_id,
            ..
        } => {
            view.team_id = Some(team_id);
            view.channel_id = Some(channel_id);
        }
    }
    let stored = stored.as_ref();
    RecipientView {
        last_error: stored.and_then(|r| r.last_error.clone()),
        activity_id: stored
            .and_then(|r| r.activity_id.clone())
            .filter(|a| !a.is_empty()),
        read_at: stored.and_then(|r| r.read_at),
        ..view
    }
}

/// A streamed export of every recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Export {
    Csv,
    Ndjson,
}

const CSV_HEADER: &str = "tenantId,aadObjectId,teamId,channelId,notificationId,status,lastError,activityId,readAt,userPrincipalName,email\n";

impl Export {
    fn asked_for(headers: &HeaderMap) -> Option<Self> {
        let accept = headers.get(header::ACCEPT)?.to_str().ok()?;
        let accepts = |kind: &str| accept.split(',').any(|a| a.trim().starts_with(kind));
        if accepts("text/csv") {
            Some(Self::Csv)
        } else if accepts("application/x-ndjson") {
            Some(Self::Ndjson)
        } else {
            None
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Self::Csv => "text/csv; charset=utf-8",
            Self::Ndjson => "application/x-ndjson",
        }
    }

    fn line(self, view: &RecipientView) -> String {
        match self {
            Self::Ndjson => {
                let mut line = serde_json::to_string(view).expect("a view serializes");
                line.push('\n');
                line
            }
            Self::Csv => {
                let read_at = view.read_at.and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                });
                let fields = [
                    Some(view.tenant_id.as_str()),
                    view.aad_object_id.as_deref(),
                    view.team_id.as_deref(),
                    view.channel_id.as_deref(),
                    Some(view.notification_id.as_str()),
                    Some(view.status.as_str()),
                    view.last_error.as_deref(),
                    view.activity_id.as_deref(),
                    read_at.as_deref(),
                    view.user_principal_name.as_deref(),
                    view.email.as_deref(),
                ];
                let mut line = fields
                    .iter()
                    .map(|f| csv_field(f.unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(",");
                line.push('\n');
                line
            }
        }
    }

    /// Streams every recipient, a page at a time: memory holds one page, whatever the size of
    /// the audience. A Redis failure midway ends the body early (the client sees it cut).
    fn stream(
        self,
        api: Arc<Api>,
        record: BroadcastRecord,
        after: String,
        status: Option<RecipientStatus>,
    ) -> Response {
        let header = (self == Self::Csv).then(|| Ok(Bytes::from_static(CSV_HEADER.as_bytes())));
        let state = (api, record, Some(after));
        let pages = stream::unfold(state, move |(api, record, after)| async move {
            let after = after?;
            match read_page(&api, &record, &after, EXPORT_PAGE, status).await {
                Ok((views, last)) => {
                    let chunk: String = views.iter().map(|v| self.line(v)).collect();
                    Some((Ok(Bytes::from(chunk)), (api, record, last)))
                }
                Err(e) => {
                    tracing::warn!(error = %herald_shared::error::Chain(&e), "an export stopped short");
                    Some((Err(std::io::Error::other(e)), (api, record, None)))
                }
            }
        });
        let body = Body::from_stream(futures_util::StreamExt::chain(stream::iter(header), pages));
        let mut response = Response::new(body);
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type()),
        );
        response
    }
}

/// A CSV field, quoted when it holds a comma, a quote or a line break.
fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl UploadFormat {
        /// Every recipient, as the handler adds them once the check has passed.
        fn parse(self, text: &str) -> Result<Vec<Recipient>, String> {
            self.check(text)?;
            self.read(text)?.collect()
        }
    }

    #[test]
    fn ndjson_lines_read_and_a_bad_one_is_named() {
        let text = "{\"tenantId\":\"t\",\"aadObjectId\":\"A\"}\n\n{\"tenantId\":\"t\",\"aadObjectId\":\"b\",\"name\":\"x\"}\n";
        let recipients = UploadFormat::Ndjson.parse(text).unwrap();
        assert_eq!(
            recipients,
            vec![Recipient::user("t", "a"), Recipient::user("t", "b")]
        );
        let error = UploadFormat::Ndjson
            .parse("{\"tenantId\":\"t\",\"aadObjectId\":\"a\"}\n{\"tenantId\":\"t\"}\n")
            .unwrap_err();
        assert!(error.starts_with("line 2:"), "{error}");
        assert!(error.contains("aadObjectId"), "{error}");
    }

    #[test]
    fn csv_reads_by_its_header_in_any_column_order() {
        let text = "\u{feff}aadObjectId,name,tenantId\r\nu-1,\"Doe, J\",t\r\n";
        // A quoted comma is not supported (ids hold none): the line has too many fields.
        let error = UploadFormat::Csv.parse(text).unwrap_err();
        assert!(error.starts_with("line 2: 4 fields"), "{error}");
        let text = "aadObjectId,name,tenantId\nu-1,\"Doe\",t\nu-2,x,t\n";
        assert_eq!(
            UploadFormat::Csv.parse(text).unwrap(),
            vec![Recipient::user("t", "u-1"), Recipient::user("t", "u-2")]
        );
        let error = UploadFormat::Csv.parse("tenant,user\nt,u\n").unwrap_err();
        assert!(error.starts_with("line 1: the header"), "{error}");
        let error = UploadFormat::Csv
            .parse("tenantId,aadObjectId\nt,a|b\n")
            .unwrap_err();
        assert_eq!(
            error,
            "line 2: aadObjectId: must not contain '|' or control characters"
        );
    }

    #[test]
    fn a_line_may_name_a_user_by_sign_in_name_or_mail_but_by_one_name_only() {
        let upn = |name: &str| Recipient::named("t", &UserName::PrincipalName(name.into()));
        let mail = |name: &str| Recipient::named("t", &UserName::Email(name.into()));
        let text = "{\"tenantId\":\"t\",\"userPrincipalName\":\"Ann@Contoso.com\"}\n\
                    {\"tenantId\":\"t\",\"email\":\"bob@mail.contoso.com\"}\n";
        assert_eq!(
            UploadFormat::Ndjson.parse(text).unwrap(),
            vec![upn("ann@contoso.com"), mail("bob@mail.contoso.com")]
        );
        let text = "tenantId,aadObjectId,userPrincipalName,email\nt,u-1,,\nt,,ann@contoso.com,\nt,,,bob@x.com\n";
        assert_eq!(
            UploadFormat::Csv.parse(text).unwrap(),
            vec![
                Recipient::user("t", "u-1"),
                upn("ann@contoso.com"),
                mail("bob@x.com")
            ]
        );
        for bad in [
            "tenantId,aadObjectId,email\nt,u-1,bob@x.com\n",
            "tenantId,aadObjectId,email\nt,,\n",
        ] {
            let error = UploadFormat::Csv.parse(bad).unwrap_err();
            assert_eq!(error, format!("line 2: {ONE_USER_NAME}"));
        }
        let error = UploadFormat::Ndjson
            .parse("{\"tenantId\":\"t\",\"aadObjectId\":\"u\",\"email\":\"a@b.c\"}\n")
            .unwrap_err();
        assert_eq!(error, format!("line 1: {ONE_USER_NAME}"));
    }

    #[test]
    fn csv_fields_are_quoted_only_when_they_must_be() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}

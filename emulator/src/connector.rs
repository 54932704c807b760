//! The Bot Connector: the REST API the bot calls to write into Teams conversations.
//!
//! Served under every serviceUrl the emulator hands out — tenant-scoped `/amer/{tenant}/`
//! (what activities carry), `/teams/` (the default proactive serviceUrl), and the bare root.
//! Each call goes through the same steps, in Teams' order of concerns: the token, the body's
//! (or query's) shape, injected faults, the conversation and the bot's place in it, the rate
//! limits, and only then delivery.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::directory::{Conversation, Directory, ReceivedActivity};
use crate::entra::traceparent;
use crate::error::{ConnectorError, MAX_ACTIVITY_BYTES};
use crate::limits::Bucket;
use crate::members::{self, Page, PageQuery};
use crate::recorder::{Counters, Operation, RecordedRequest, lock};
use crate::state::{Audience, Event, Shared};

/// The serviceUrl prefixes served. Real Teams hands out region- and tenant-scoped URLs.
const PREFIXES: [&str; 5] = [
    "",
    "/teams",
    "/amer/{tenant}",
    "/emea/{tenant}",
    "/apac/{tenant}",
];

/// Bodies are read whole up to this size so that oversized activities get Teams' 413
/// rather than the HTTP framework's.
const BODY_LIMIT: usize = 16 * 1024 * 1024;

pub(crate) fn routes() -> Router<Arc<Shared>> {
    let mut router = Router::new();
    for prefix in PREFIXES {
        router = router
            .route(
                &format!("{prefix}/v3/conversations"),
                post(endpoint(Operation::CreateConversation)),
            )
            .route(
                &format!("{prefix}/v3/conversations/{{conversation}}/activities"),
                post(endpoint(Operation::SendToConversation)),
            )
            .route(
                &format!("{prefix}/v3/conversations/{{conversation}}/activities/{{activity}}"),
                post(endpoint(Operation::ReplyToActivity))
                    .put(endpoint(Operation::UpdateActivity))
                    .delete(endpoint(Operation::DeleteActivity)),
            )
            .route(
                &format!("{prefix}/v3/conversations/{{conversation}}/pagedmembers"),
                get(endpoint(Operation::GetConversationPagedMembers)),
            );
    }
    router.layer(DefaultBodyLimit::max(BODY_LIMIT))
}

/// One Bot Connector call, as the handlers hand it to [`handle`].
struct Call {
    operation: Operation,
    tenant_in_path: Option<String>,
    conversation_id: Option<String>,
    activity_id: Option<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

type Params = Path<HashMap<String, String>>;

impl Call {
    fn new(
        operation: Operation,
        mut params: HashMap<String, String>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Self {
        Call {
            operation,
            tenant_in_path: params.remove("tenant"),
            conversation_id: params.remove("conversation"),
            activity_id: params.remove("activity"),
            method,
            uri,
            headers,
            body,
        }
    }
}

/// The handler for one operation; every Bot Connector route goes through [`handle`].
fn endpoint(
    operation: Operation,
) -> impl Fn(State<Arc<Shared>>, Params, Method, Uri, HeaderMap, Bytes) -> BoxFuture<'static, Response>
+ Clone
+ Send
+ Sync
+ 'static {
    move |State(shared), Path(params), method, uri, headers, body| {
        let call = Call::new(operation, params, method, uri, headers, body);
        Box::pin(handle(shared, call))
    }
}

/// Any other path under a serviceUrl: recorded, and answered 404 like an unknown API.
pub(crate) async fn other(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if !uri.path().contains("/v3/") {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }
    let error = ConnectorError::NotFound(uri.path().to_owned());
    let target = Target::default();
    shared.recorder.record(entry(
        &method,
        &uri,
        &headers,
        Operation::Other,
        &target,
        &error.status(),
        error.code(),
    ));
    error.into_response()
}

/// What a call addresses, as far as it is known; filled in as the call is processed.
#[derive(Debug, Default)]
struct Target {
    conversation_id: Option<String>,
    tenant_id: Option<String>,
}

/// A successful answer.
enum Answer {
    Created(Value),
    Ok(Value),
    /// A page of a roster.
    Members(Page),
    Empty,
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        match self {
            Answer::Created(body) => (StatusCode::CREATED, Json(body)).into_response(),
            Answer::Ok(body) => (StatusCode::OK, Json(body)).into_response(),
            Answer::Members(page) => (StatusCode::OK, Json(page)).into_response(),
            Answer::Empty => StatusCode::OK.into_response(),
        }
    }
}

async fn handle(shared: Arc<Shared>, mut call: Call) -> Response {
    let at = OffsetDateTime::now_utc();
    // A personal chat's Graph id names the same chat as its `a:` id: one conversation, one
    // history, one set of limits, whichever id the bot uses.
    if let Some(id) = &call.conversation_id
        && let Cow::Owned(canonical) = crate::ids::canonical_conversation_id(&shared.app_id, id)
    {
        call.conversation_id = Some(canonical);
    }
    let latency = shared.settings().latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let mut target = Target {
        conversation_id: call.conversation_id.clone(),
        tenant_id: call.tenant_in_path.clone(),
    };
    let (response, status, code) = match process(&shared, &call, &mut target).await {
        Ok(answer) => {
            let response = answer.into_response();
            let status = response.status();
            (response, status, None)
        }
        Err(error) => {
            let status = error.status();
            let code = error.code();
            (error.into_response(), status, code)
        }
    };
    let mut entry = entry(
        &call.method,
        &call.uri,
        &call.headers,
        call.operation,
        &target,
        &status,
        code,
    );
    entry.at = at;
    shared.recorder.record(entry);
    response
}

fn entry(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    operation: Operation,
    target: &Target,
    status: &StatusCode,
    error_code: Option<String>,
) -> RecordedRequest {
    RecordedRequest {
        at: OffsetDateTime::now_utc(),
        method: method.as_str().to_owned(),
        path: uri.path().to_owned(),
        operation,
        conversation_id: target.conversation_id.clone(),
        tenant_id: target.tenant_id.clone(),
        status: status.as_u16(),
        error_code,
        had_authorization: headers.contains_key(header::AUTHORIZATION),
        traceparent: traceparent(headers),
    }
}

async fn process(
    shared: &Shared,
    call: &Call,
    target: &mut Target,
) -> Result<Answer, ConnectorError> {
    authorize(shared, &call.headers)?;
    let body = match call.operation {
        Operation::DeleteActivity | Operation::GetConversationPagedMembers => None,
        _ => Some(parse_body(&call.body)?),
    };
    let page = match call.operation {
        Operation::GetConversationPagedMembers => Some(members::parse_query(call.uri.query())?),
        _ => None,
    };
    resolve_target(shared, call, body.as_ref(), target);

    let fault = lock(&shared.faults).take(
        call.operation,
        target.conversation_id.as_deref(),
        target.tenant_id.as_deref(),
    );
    if let Some(fault) = fault {
        Counters::bump(&shared.recorder.counters.faults_applied);
        if let Some(latency) = fault.latency {
            tokio::time::sleep(latency).await;
        }
        return Err(ConnectorError::Injected(Box::new(fault)));
    }

    let body = body.unwrap_or(Value::Null);
    match call.operation {
        Operation::SendToConversation | Operation::ReplyToActivity => {
            send_activity(shared, call, target, body)
        }
        Operation::UpdateActivity => update_activity(shared, call, target, body),
        Operation::DeleteActivity => delete_activity(shared, call, target),
        Operation::CreateConversation => create_conversation(shared, call, target, body),
        Operation::GetConversationPagedMembers => {
            paged_members(shared, call, target, &page.unwrap_or_default())
        }
        _ => Err(ConnectorError::NotFound(call.uri.path().to_owned())),
    }
}

/// The bearer token must be one the token endpoint issued for the Bot Connector and that has
/// not expired (a Graph token is for another audience).
fn authorize(shared: &Shared, headers: &HeaderMap) -> Result<(), ConnectorError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ConnectorError::Unauthorized(
            "no Authorization header".to_owned(),
        ));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or_else(|| ConnectorError::Unauthorized("expected a Bearer token".to_owned()))?;
    match lock(&shared.tokens).check(token) {
        Some(issued) if issued.audience == Audience::Connector => Ok(()),
        Some(_) => Err(ConnectorError::Unauthorized(
            "the token's audience is not the Bot Connector".to_owned(),
        )),
        None => Err(ConnectorError::Unauthorized(
            "the token was not issued by the token endpoint or has expired".to_owned(),
        )),
    }
}

fn parse_body(body: &Bytes) -> Result<Value, ConnectorError> {
    if body.len() > MAX_ACTIVITY_BYTES {
        return Err(ConnectorError::MessageSizeTooBig(body.len()));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(_) => Err(ConnectorError::BadArgument(
            "The request body must be a JSON object.".to_owned(),
        )),
        Err(err) => Err(ConnectorError::BadArgument(format!(
            "The request body is not valid JSON: {err}"
        ))),
    }
}

/// Teams refuses activities without a type, and messages with nothing to show.
fn validate_activity(activity: &Value) -> Result<(), ConnectorError> {
    if !activity.is_object() {
        return Err(ConnectorError::BadArgument(
            "The activity must be a JSON object.".to_owned(),
        ));
    }
    let kind = activity
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if kind.is_empty() {
        return Err(ConnectorError::BadArgument(
            "Activity type is required.".to_owned(),
        ));
    }
    if kind == "message" {
        let has_text = activity
            .get("text")
            .and_then(Value::as_str)
            .is_some_and(|text| !text.is_empty());
        let has_attachments = activity
            .get("attachments")
            .and_then(Value::as_array)
            .is_some_and(|attachments| !attachments.is_empty());
        if !has_text && !has_attachments {
            return Err(ConnectorError::BadArgument(
                "A message must have text or attachments.".to_owned(),
            ));
        }
    }
    Ok(())
}

/// The tenant a create body names.
fn body_tenant(body: &Value) -> Option<String> {
    body.get("tenantId")
        .and_then(Value::as_str)
        .or_else(|| {
            body.pointer("/channelData/tenant/id")
                .and_then(Value::as_str)
        })
        .map(str::to_owned)
}

fn is_group(body: &Value) -> bool {
    match body.get("isGroup") {
        Some(Value::Bool(flag)) => *flag,
        Some(Value::String(flag)) => flag.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

/// Works out the conversation and tenant a call is about before processing it, so that
/// fault rules and the request log can name them even when the call is then refused.
fn resolve_target(shared: &Shared, call: &Call, body: Option<&Value>, target: &mut Target) {
    let directory = lock(&shared.directory);
    if call.operation == Operation::CreateConversation {
        let Some(body) = body else { return };
        if target.tenant_id.is_none() {
            target.tenant_id = body_tenant(body);
        }
        if is_group(body) {
            target.conversation_id = body
                .pointer("/channelData/channel/id")
                .and_then(Value::as_str)
                .map(str::to_owned);
        } else if let (Some(tenant), Some(member)) = (
            target.tenant_id.as_deref(),
            body.pointer("/members/0/id").and_then(Value::as_str),
        ) {
            target.conversation_id = directory
                .find_user(tenant, member)
                .map(|user| directory.personal_conversation_id(&user));
        }
    }
    if target.tenant_id.is_none() {
        target.tenant_id = target
            .conversation_id
            .as_deref()
            .and_then(|id| directory.tenant_of(id));
    }
}

/// Applies the rate limits (when on) to an admitted call.
fn admit(
    shared: &Shared,
    tenant: Option<&str>,
    thread: Option<(&str, Bucket)>,
) -> Result<(), ConnectorError> {
    if !shared.settings().rate_limits {
        return Ok(());
    }
    lock(&shared.limits)
        .admit(tenant, thread, Instant::now())
        .map_err(|retry_after_secs| ConnectorError::Throttled { retry_after_secs })
}

/// Stores an accepted activity as a new message in `conversation_id`.
fn store_new(
    shared: &Shared,
    directory: &mut Directory,
    conversation_id: &str,
    activity: Value,
    traceparent: Option<String>,
) -> Result<ReceivedActivity, ConnectorError> {
    let id = shared.ids.next();
    store_activity(directory, conversation_id, id, activity, traceparent)
}

/// Stores an activity under an id already chosen (a thread's first post names the thread).
fn store_activity(
    directory: &mut Directory,
    conversation_id: &str,
    id: String,
    activity: Value,
    traceparent: Option<String>,
) -> Result<ReceivedActivity, ConnectorError> {
    let stored = ReceivedActivity {
        id,
        conversation_id: conversation_id.to_owned(),
        text: text_of(&activity),
        activity,
        received_at: OffsetDateTime::now_utc(),
        traceparent,
        deleted: false,
        edits: Vec::new(),
        card_answer: None,
    };
    directory.keep_sent(conversation_id, &stored)?;
    Ok(stored)
}

/// An activity's `text`, when it has one.
fn text_of(activity: &Value) -> Option<String> {
    activity
        .get("text")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn announce(shared: &Shared, change: &'static str, stored: ReceivedActivity) {
    shared.publish(Event::Activity {
        change,
        conversation_id: stored.conversation_id.clone(),
        activity: Box::new(stored),
    });
}

/// The conversation a bot call addresses, with the call's tenant filled in from it; refused
/// as Teams does when the bot is not (or no longer) a member.
fn bot_conversation<'d>(
    directory: &'d mut Directory,
    conversation_id: &str,
    target: &mut Target,
) -> Result<&'d mut Conversation, ConnectorError> {
    let conversation = directory.conversation_mut(conversation_id)?;
    target
        .tenant_id
        .get_or_insert_with(|| conversation.tenant_id.clone());
    if !conversation.bot_member {
        return Err(ConnectorError::BotNotInConversationRoster);
    }
    Ok(conversation)
}

fn send_activity(
    shared: &Shared,
    call: &Call,
    target: &mut Target,
    activity: Value,
) -> Result<Answer, ConnectorError> {
    validate_activity(&activity)?;
    let conversation_id = call.conversation_id.clone().unwrap_or_default();
    let stored = {
        let mut directory = lock(&shared.directory);
        bot_conversation(&mut directory, &conversation_id, target)?;
        admit(
            shared,
            target.tenant_id.as_deref(),
            Some((&conversation_id, Bucket::Writes)),
        )?;
        store_new(
            shared,
            &mut directory,
            &conversation_id,
            activity,
            traceparent(&call.headers),
        )?
    };
    shared.recorder.sent(target.tenant_id.as_deref());
    let id = stored.id.clone();
    announce(shared, "sent", stored);
    Ok(Answer::Created(json!({ "id": id })))
}

fn update_activity(
    shared: &Shared,
    call: &Call,
    target: &mut Target,
    activity: Value,
) -> Result<Answer, ConnectorError> {
    validate_activity(&activity)?;
    let conversation_id = call.conversation_id.clone().unwrap_or_default();
    let activity_id = call.activity_id.clone().unwrap_or_default();
    let stored = {
        let mut directory = lock(&shared.directory);
        let conversation = bot_conversation(&mut directory, &conversation_id, target)?;
        let not_found = || ConnectorError::ActivityNotFound {
            conversation: conversation_id.clone(),
            activity: activity_id.clone(),
        };
        let stored = conversation
            .activities
            .iter_mut()
            .find(|stored| stored.id == activity_id && !stored.deleted)
            .ok_or_else(not_found)?;
        admit(shared, target.tenant_id.as_deref(), None)?;
        stored.update(&activity);
        stored.received(&conversation_id)
    };
    Counters::bump(&shared.recorder.counters.updates);
    announce(shared, "updated", stored);
    Ok(Answer::Ok(json!({ "id": activity_id })))
}

fn delete_activity(
    shared: &Shared,
    call: &Call,
    target: &mut Target,
) -> Result<Answer, ConnectorError> {
    let conversation_id = call.conversation_id.clone().unwrap_or_default();
    let activity_id = call.activity_id.clone().unwrap_or_default();
    let stored = {
        let mut directory = lock(&shared.directory);
        let conversation = bot_conversation(&mut directory, &conversation_id, target)?;
        let stored = conversation
            .activities
            .iter_mut()
            .find(|stored| stored.id == activity_id && !stored.deleted)
            .ok_or_else(|| ConnectorError::ActivityNotFound {
                conversation: conversation_id.clone(),
                activity: activity_id.clone(),
            })?;
        admit(shared, target.tenant_id.as_deref(), None)?;
        stored.deleted = true;
        stored.received(&conversation_id)
    };
    Counters::bump(&shared.recorder.counters.deletes);
    announce(shared, "deleted", stored);
    Ok(Answer::Empty)
}

fn create_conversation(
    shared: &Shared,
    call: &Call,
    target: &mut Target,
    body: Value,
) -> Result<Answer, ConnectorError> {
    if let Some(bot) = body.pointer("/bot/id").and_then(Value::as_str) {
        let app_id = &shared.app_id;
        if bot != format!("28:{app_id}") && bot != app_id.as_str() {
            return Err(ConnectorError::BadArgument(format!(
                "The bot id {bot} does not match the caller's app id."
            )));
        }
    }
    let initial = body
        .get("activity")
        .filter(|activity| !activity.is_null())
        .cloned();
    if let Some(activity) = &initial {
        validate_activity(activity)?;
    }
    let traceparent = traceparent(&call.headers);

    let (conversation_id, stored) = if is_group(&body) {
        let channel_id = body
            .pointer("/channelData/channel/id")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                ConnectorError::BadArgument(
                    "channelData.channel.id is required to start a channel thread.".to_owned(),
                )
            })?;
        let activity = initial.ok_or_else(|| {
            ConnectorError::BadArgument(
                "An activity is required to start a channel thread.".to_owned(),
            )
        })?;
        let mut directory = lock(&shared.directory);
        let tenant = directory.check_channel(channel_id)?;
        target.conversation_id = Some(channel_id.to_owned());
        target.tenant_id.get_or_insert(tenant);
        admit(
            shared,
            target.tenant_id.as_deref(),
            Some((channel_id, Bucket::Writes)),
        )?;
        // The thread is named after its first post, whose id is the thread's message id.
        let first_id = shared.ids.next();
        let thread_id = format!("{channel_id};messageid={first_id}");
        directory.create_thread(channel_id, &thread_id);
        let stored = store_activity(&mut directory, &thread_id, first_id, activity, traceparent)?;
        (thread_id, Some(stored))
    } else {
        let members = body
            .get("members")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let [member] = members.as_slice() else {
            return Err(ConnectorError::BadArgument(
                "A 1:1 conversation needs exactly one member.".to_owned(),
            ));
        };
        let member_id = member
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| ConnectorError::BadArgument("The member has no id.".to_owned()))?;
        let tenant = target.tenant_id.clone().ok_or_else(|| {
            ConnectorError::BadArgument("channelData.tenant.id is required.".to_owned())
        })?;
        let mut directory = lock(&shared.directory);
        let conversation_id = directory.create_personal(&tenant, member_id)?;
        target.conversation_id = Some(conversation_id.clone());
        admit(
            shared,
            Some(&tenant),
            Some((&conversation_id, Bucket::Writes)),
        )?;
        let stored = match initial {
            Some(activity) => Some(store_new(
                shared,
                &mut directory,
                &conversation_id,
                activity,
                traceparent,
            )?),
            None => None,
        };
        (conversation_id, stored)
    };

    shared.recorder.created(target.tenant_id.as_deref());
    let mut answer = json!({ "id": conversation_id });
    if let Some(stored) = stored {
        shared.recorder.sent(target.tenant_id.as_deref());
        answer["activityId"] = Value::String(stored.id.clone());
        announce(shared, "sent", stored);
    }
    Ok(Answer::Created(answer))
}

/// A page of the conversation's roster. Reading members is limited per thread like Teams'
/// "get members" (more generous than sends), and per tenant like everything.
fn paged_members(
    shared: &Shared,
    call: &Call,
    target: &mut Target,
    query: &PageQuery,
) -> Result<Answer, ConnectorError> {
    let conversation_id = call.conversation_id.clone().unwrap_or_default();
    let mut directory = lock(&shared.directory);
    let (roster, tenant) = directory.roster(&conversation_id)?;
    target.tenant_id.get_or_insert(tenant);
    admit(
        shared,
        target.tenant_id.as_deref(),
        Some((&conversation_id, Bucket::Reads)),
    )?;
    let len = directory.roster_len(&roster);
    let page = Page::read(&shared.app_id, &roster, len, query, |offset, size| {
        directory.roster_page(&roster, offset, size)
    })?;
    Ok(Answer::Members(page))
}

//! The record of every request made to the emulator's Microsoft-side endpoints, and counters.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// What a recorded request asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Operation {
    /// `POST v3/conversations/{id}/activities`.
    SendToConversation,
    /// `POST v3/conversations/{id}/activities/{activityId}`.
    ReplyToActivity,
    /// `PUT v3/conversations/{id}/activities/{activityId}`.
    UpdateActivity,
    /// `DELETE v3/conversations/{id}/activities/{activityId}`.
    DeleteActivity,
    /// `POST v3/conversations`.
    CreateConversation,
    /// `POST {tenant}/oauth2/v2.0/token`.
    Token,
    /// Any other Bot Connector path.
    Other,
}

/// One request to the Bot Connector or the token endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedRequest {
    /// When it arrived.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// HTTP method.
    pub method: String,
    /// The path as sent (percent-encoding kept).
    pub path: String,
    /// What it asked for.
    pub operation: Operation,
    /// The conversation addressed (decoded), if any.
    pub conversation_id: Option<String>,
    /// The tenant, from the serviceUrl path or the conversation.
    pub tenant_id: Option<String>,
    /// The status answered.
    pub status: u16,
    /// The error code answered, if any.
    pub error_code: Option<String>,
    /// Whether an `Authorization` header was present.
    pub had_authorization: bool,
    /// The `traceparent` header.
    pub traceparent: Option<String>,
}

/// Counters, as served by `GET /_emulator/stats`.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// Bot Connector requests answered (any status).
    pub requests: usize,
    /// Activities accepted by send, reply or create.
    pub sends: usize,
    /// Activities updated.
    pub updates: usize,
    /// Activities deleted.
    pub deletes: usize,
    /// Conversations created.
    pub creates: usize,
    /// 429 answers (limits and injected).
    pub throttled: usize,
    /// Access tokens issued.
    pub token_issues: usize,
    /// Token requests refused.
    pub token_refusals: usize,
    /// Injected faults applied.
    pub faults_applied: usize,
    /// Activities "Teams" posted to the bot.
    pub activities_to_bot: usize,
}

/// Lock-free counters behind [`Stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) requests: AtomicUsize,
    pub(crate) sends: AtomicUsize,
    pub(crate) updates: AtomicUsize,
    pub(crate) deletes: AtomicUsize,
    pub(crate) creates: AtomicUsize,
    pub(crate) throttled: AtomicUsize,
    pub(crate) token_issues: AtomicUsize,
    pub(crate) token_refusals: AtomicUsize,
    pub(crate) faults_applied: AtomicUsize,
    pub(crate) activities_to_bot: AtomicUsize,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicUsize) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let get = |counter: &AtomicUsize| counter.load(Ordering::Relaxed);
        Stats {
            requests: get(&self.requests),
            sends: get(&self.sends),
            updates: get(&self.updates),
            deletes: get(&self.deletes),
            creates: get(&self.creates),
            throttled: get(&self.throttled),
            token_issues: get(&self.token_issues),
            token_refusals: get(&self.token_refusals),
            faults_applied: get(&self.faults_applied),
            activities_to_bot: get(&self.activities_to_bot),
        }
    }
}

/// The request log.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    requests: Mutex<Vec<RecordedRequest>>,
    pub(crate) counters: Counters,
}

impl Recorder {
    pub(crate) fn record(&self, request: RecordedRequest) {
        if request.status == 429 {
            Counters::bump(&self.counters.throttled);
        }
        if request.operation != Operation::Token {
            Counters::bump(&self.counters.requests);
        }
        lock(&self.requests).push(request);
    }

    pub(crate) fn all(&self) -> Vec<RecordedRequest> {
        lock(&self.requests).clone()
    }

    /// The last `limit` requests.
    pub(crate) fn last(&self, limit: usize) -> Vec<RecordedRequest> {
        let requests = lock(&self.requests);
        requests[requests.len().saturating_sub(limit)..].to_vec()
    }
}

/// Locks a mutex, ignoring poisoning: every critical section leaves its data consistent
/// (plain pushes and field writes), so a panic elsewhere does not make it unusable.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

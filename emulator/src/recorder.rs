//! The record of the requests made to the emulator's Microsoft-side endpoints, and counters.
//!
//! The log keeps the last requests only (`EmulatorConfig::keep_requests`); the counters,
//! overall and per tenant, count every one.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::traffic::{TenantStats, Traffic};

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
    /// `GET v3/conversations/{id}/pagedmembers`.
    GetConversationPagedMembers,
    /// `POST {tenant}/oauth2/v2.0/token` for the Bot Connector.
    Token,
    /// Any other Bot Connector path.
    Other,
    /// `POST {tenant}/oauth2/v2.0/token` with Graph's scope.
    GraphToken,
    /// Graph `GET /users/{id | userPrincipalName}`.
    GraphGetUser,
    /// Graph `GET /users` (`$filter` by mail, or the directory's enabled members, paged).
    GraphListUsers,
    /// Graph `GET /groups/{id}/transitiveMembers`, paged.
    GraphListTransitiveMembers,
    /// Graph `GET /appCatalogs/teamsApps`.
    GraphListCatalogApps,
    /// Graph `GET /users/{id}/teamwork/installedApps` (and one installation by id).
    GraphListInstalledApps,
    /// Graph `POST /users/{id}/teamwork/installedApps`: installs the app for the user.
    GraphInstallApp,
    /// Graph `GET /users/{id}/teamwork/installedApps/{installationId}/chat`.
    GraphGetInstallationChat,
    /// Any other path under Graph's root.
    GraphOther,
}

impl Operation {
    /// Whether this is a request to the token endpoint (for either audience).
    pub fn is_token(self) -> bool {
        matches!(self, Operation::Token | Operation::GraphToken)
    }

    /// Whether this is a call to the Graph stand-in (tokens for it excluded).
    pub fn is_graph(self) -> bool {
        matches!(
            self,
            Operation::GraphGetUser
                | Operation::GraphListUsers
                | Operation::GraphListTransitiveMembers
                | Operation::GraphListCatalogApps
                | Operation::GraphListInstalledApps
                | Operation::GraphInstallApp
                | Operation::GraphGetInstallationChat
                | Operation::GraphOther
        )
    }
}

/// One request to the Bot Connector, the Graph stand-in or the token endpoint.
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
    /// The tenant: for the Bot Connector, from the serviceUrl path or the conversation; for
    /// the token endpoint, the one in its path; for Graph, the tenant (`tid`) of the token
    /// the call carried, which is the directory Graph answered from.
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
    /// Graph requests answered (any status); not in `requests`, `throttled` or `tenants`.
    pub graph_requests: usize,
    /// Graph's 429 answers (its rate limit and injected).
    pub graph_throttled: usize,
    /// Graph tokens issued (not in `token_issues`).
    pub graph_token_issues: usize,
    /// Activities accepted by send, reply or create.
    pub sends: usize,
    /// Activities updated.
    pub updates: usize,
    /// Activities deleted.
    pub deletes: usize,
    /// Conversations created.
    pub creates: usize,
    /// 429 answers of the Bot Connector and the token endpoint (limits and injected).
    pub throttled: usize,
    /// Access tokens issued for the Bot Connector.
    pub token_issues: usize,
    /// Token requests refused.
    pub token_refusals: usize,
    /// Injected faults applied.
    pub faults_applied: usize,
    /// Activities "Teams" posted to the bot.
    pub activities_to_bot: usize,
    /// Requests dropped from the request log (the oldest, past `keep_requests`).
    pub requests_dropped: usize,
    /// Activity bodies kept now, the bot's and those "Teams" posted to it.
    pub activities_kept: usize,
    /// Activity bodies dropped so far (the oldest, past the retention limits).
    pub activities_dropped: usize,
    /// Per tenant (as first seen), Bot Connector requests only.
    pub tenants: BTreeMap<String, TenantStats>,
}

/// Lock-free counters behind [`Stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) requests: AtomicUsize,
    pub(crate) graph_requests: AtomicUsize,
    pub(crate) graph_throttled: AtomicUsize,
    pub(crate) graph_token_issues: AtomicUsize,
    pub(crate) sends: AtomicUsize,
    pub(crate) updates: AtomicUsize,
    pub(crate) deletes: AtomicUsize,
    pub(crate) creates: AtomicUsize,
    pub(crate) throttled: AtomicUsize,
    pub(crate) token_issues: AtomicUsize,
    pub(crate) token_refusals: AtomicUsize,
    pub(crate) faults_applied: AtomicUsize,
    pub(crate) activities_to_bot: AtomicUsize,
    pub(crate) requests_dropped: AtomicUsize,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicUsize) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters kept here; the caller adds what other parts of the emulator know.
    pub(crate) fn snapshot(&self) -> Stats {
        let get = |counter: &AtomicUsize| counter.load(Ordering::Relaxed);
        Stats {
            requests: get(&self.requests),
            graph_requests: get(&self.graph_requests),
            graph_throttled: get(&self.graph_throttled),
            graph_token_issues: get(&self.graph_token_issues),
            sends: get(&self.sends),
            updates: get(&self.updates),
            deletes: get(&self.deletes),
            creates: get(&self.creates),
            throttled: get(&self.throttled),
            token_issues: get(&self.token_issues),
            token_refusals: get(&self.token_refusals),
            faults_applied: get(&self.faults_applied),
            activities_to_bot: get(&self.activities_to_bot),
            requests_dropped: get(&self.requests_dropped),
            ..Stats::default()
        }
    }
}

/// The request log, the counters, and the per-tenant traffic.
#[derive(Debug)]
pub(crate) struct Recorder {
    requests: Mutex<VecDeque<RecordedRequest>>,
    capacity: usize,
    pub(crate) counters: Counters,
    pub(crate) traffic: Traffic,
}

impl Recorder {
    /// A recorder whose log keeps the last `capacity` requests.
    pub(crate) fn new(capacity: usize) -> Self {
        Recorder {
            requests: Mutex::new(VecDeque::new()),
            capacity,
            counters: Counters::default(),
            traffic: Traffic::default(),
        }
    }

    pub(crate) fn record(&self, request: RecordedRequest) {
        // Graph is counted apart, so that "no 429 from Teams" and the Bot Connector's
        // per-tenant traffic stay about the Bot Connector.
        if request.operation.is_graph() {
            Counters::bump(&self.counters.graph_requests);
            if request.status == 429 {
                Counters::bump(&self.counters.graph_throttled);
            }
        } else if request.status == 429 {
            Counters::bump(&self.counters.throttled);
        }
        if !request.operation.is_token() && !request.operation.is_graph() {
            Counters::bump(&self.counters.requests);
            // The token endpoint's "tenant" is the bot's sign-in authority, not a Teams
            // tenant sending traffic.
            if let Some(tenant) = &request.tenant_id {
                self.traffic.request(tenant, request.status, Instant::now());
            }
        }
        let mut requests = lock(&self.requests);
        requests.push_back(request);
        while requests.len() > self.capacity {
            requests.pop_front();
            Counters::bump(&self.counters.requests_dropped);
        }
    }

    /// An activity of the bot was accepted (a send, a reply, or a create's first message).
    pub(crate) fn sent(&self, tenant_id: Option<&str>) {
        Counters::bump(&self.counters.sends);
        if let Some(tenant) = tenant_id {
            self.traffic.sent(tenant, Instant::now());
        }
    }

    /// A conversation was created.
    pub(crate) fn created(&self, tenant_id: Option<&str>) {
        Counters::bump(&self.counters.creates);
        if let Some(tenant) = tenant_id {
            self.traffic.created(tenant);
        }
    }

    /// The requests kept, oldest first.
    pub(crate) fn all(&self) -> Vec<RecordedRequest> {
        lock(&self.requests).iter().cloned().collect()
    }

    /// The last `limit` requests kept.
    pub(crate) fn last(&self, limit: usize) -> Vec<RecordedRequest> {
        let requests = lock(&self.requests);
        requests
            .iter()
            .skip(requests.len().saturating_sub(limit))
            .cloned()
            .collect()
    }
}

/// Locks a mutex, ignoring poisoning: every critical section leaves its data consistent
/// (plain pushes and field writes), so a panic elsewhere does not make it unusable.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

//! One trace from a caller's request to the Bot Connector call, across both services and a
//! timer in Redis: the real binaries export their spans over OTLP/HTTP to a collector this test
//! runs, and the emulator records the `traceparent` header of the send.

use std::{
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, body::Bytes, extract::State, routing::post};
use herald_emulator::{Emulator, EmulatorConfig, TeamsUser};
use herald_tests::{
    API_KEY, NamespaceGuard, binary, closed_port, listener, service_env, wait_until,
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest, common::v1::any_value::Value,
};
use prost::Message;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

/// A span as the collector received it.
#[derive(Debug, Clone)]
struct ExportedSpan {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
}

/// The smallest OTLP/HTTP collector: decodes each protobuf export and keeps its spans.
#[derive(Debug, Clone, Default)]
struct Collector(Arc<Mutex<Vec<ExportedSpan>>>);

impl Collector {
    async fn start(self) -> String {
        let listener = listener().await;
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new()
            .route("/v1/traces", post(Self::export))
            .with_state(self);
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    async fn export(State(collector): State<Self>, body: Bytes) -> &'static str {
        let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
        let mut spans = collector.0.lock().unwrap();
        for resource_spans in request.resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(name) => Some(name.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                spans.push(ExportedSpan {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                });
            }
        }
        ""
    }

    fn spans_of(&self, trace_id: &str) -> Vec<ExportedSpan> {
        let spans = self.0.lock().unwrap();
        spans
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn spawn_service(
    name: &str,
    env: &herald_shared::config::Env,
    extra: &[(&str, String)],
) -> Child {
    Command::new(binary(name))
        .env_clear()
        .envs(env.vars())
        .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn wait_ready(what: &str, admin: std::net::SocketAddr) {
    let ready = format!("http://{admin}/readyz");
    wait_until(what, Duration::from_secs(30), || async {
        reqwest::get(&ready)
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_callers_trace_runs_through_both_services_and_a_timer_to_teams() {
    let collector = Collector::default();
    let collector_url = collector.clone().start().await;
    let emulator = Emulator::start(EmulatorConfig::default(), listener().await)
        .await
        .unwrap();
    let namespace = herald_tests::fresh_namespace();
    let _cleanup = NamespaceGuard::new(&namespace);
    let env = service_env(&namespace, &emulator);
    // Export quickly, and log JSON as in production: the logs must carry the trace id.
    let tracing_env = |admin: std::net::SocketAddr| {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector_url.clone()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
            ("HERALD_LOG_FORMAT", "json".to_owned()),
            ("HERALD_ADMIN_ADDR", admin.to_string()),
            ("RUST_LOG", "info".to_owned()),
        ]
    };
    let (http, ingress_admin, dispatcher_admin) = (
        closed_port().await,
        closed_port().await,
        closed_port().await,
    );
    let mut ingress_env = tracing_env(ingress_admin);
    ingress_env.push(("HERALD_HTTP_ADDR", http.to_string()));
    let mut ingress = spawn_service("herald-ingress", &env, &ingress_env).await;
    let dispatcher = spawn_service("herald-dispatcher", &env, &tracing_env(dispatcher_admin)).await;
    wait_ready("the ingress to be ready", ingress_admin).await;
    wait_ready("the dispatcher to be ready", dispatcher_admin).await;
    emulator.set_bot_endpoint(&format!("http://{http}/api/messages"));
    let user = TeamsUser::random();
    emulator.install(&user).await.unwrap();

    // The caller is in a trace of its own, and asks for a message two seconds from now, so
    // the job waits as a timer.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span_id = "00f067aa0ba902b7";
    let deliver_at = time::OffsetDateTime::now_utc() + Duration::from_secs(2);
    let response = reqwest::Client::new()
        .post(format!("http://{http}/v1/notifications"))
        .bearer_auth(API_KEY)
        .header("traceparent", format!("00-{trace_id}-{caller_span_id}-01"))
        .json(&serde_json::json!({
            "to": {"user": {"tenantId": user.tenant_id, "aadObjectId": user.aad_object_id}},
            "message": {"text": "traced"},
            "deliverAt": deliver_at.format(&time::format_description::well_known::Rfc3339).unwrap(),
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);

    // Teams received the send with a traceparent in the caller's trace.
    let conversation = emulator.personal_conversation_id(&user);
    let received = || {
        emulator
            .activities(&conversation)
            .into_iter()
            .find(|a| a.text.as_deref() == Some("traced"))
    };
    wait_until(
        "the traced message to arrive",
        Duration::from_secs(15),
        || async { received().is_some() },
    )
    .await;
    let traceparent = received()
        .unwrap()
        .traceparent
        .expect("a traceparent header");
    let fields: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(fields.len(), 4, "{traceparent}");
    assert_eq!(fields[1], trace_id, "the caller's trace reaches Teams");
    let teams_parent = fields[2].to_owned();

    // Both services exported their part of that trace, linked parent to child.
    wait_until(
        "spans from both services",
        Duration::from_secs(15),
        || async {
            // A parent span ends, and is exported, after its children: wait for every
            // span the assertions below name, not just the first of each service.
            let spans = collector.spans_of(trace_id);
            ["POST /v1/notifications", "deliver job", "send"]
                .iter()
                .all(|name| spans.iter().any(|s| s.name == *name))
                && spans.iter().any(|s| s.span_id == teams_parent)
        },
    )
    .await;
    let spans = collector.spans_of(trace_id);
    let span = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no span {name:?} in {spans:#?}"))
    };
    let request = span("POST /v1/notifications");
    assert_eq!(request.service, "herald-ingress");
    assert_eq!(
        request.parent_span_id, caller_span_id,
        "the caller's span is the parent"
    );
    let delivery = span("deliver job");
    assert_eq!(delivery.service, "herald-dispatcher");
    assert_eq!(
        delivery.parent_span_id, request.span_id,
        "the job carried the request's context through its timer"
    );
    let send = span("send");
    assert_eq!(send.parent_span_id, delivery.span_id);
    assert_eq!(send.span_id, teams_parent, "Teams sees the send's own span");

    // The ingress's JSON log lines for that request carry the trace id.
    ingress.start_kill().unwrap();
    let mut lines = BufReader::new(ingress.stdout.take().unwrap()).lines();
    let mut queued_line = None;
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await
    {
        if line.contains("job queued") && line.contains(trace_id) {
            queued_line = Some(line);
            break;
        }
    }
    let line = queued_line.expect("a \"job queued\" log line with the trace id");
    let logged: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(logged["span"]["trace_id"], trace_id, "{line}");
    drop(dispatcher);
}

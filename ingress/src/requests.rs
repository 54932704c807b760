//! What every request to the HTTP listener passes through, outermost first:
//! - [`observe`]: its span (continuing the caller's trace), its metrics, and the one log line
//!   of a server error, with the cause the answer carries ([`ProblemCause`]): handlers answer
//!   their errors and never log them;
//! - the deadline, [`REQUEST_TIMEOUT`], answered as a 503 problem.

use std::time::Duration;

use axum::{
    BoxError, Router,
    error_handling::HandleErrorLayer,
    extract::{MatchedPath, Request, State},
    middleware::{self, Next},
    response::Response,
};
use herald_shared::{error::Chain, metrics::Metrics};
use tower::{ServiceBuilder, timeout::TimeoutLayer};
use tracing::Instrument;

use crate::problem::{Problem, ProblemCause};

/// How long a request may take before it is answered 503 with `Retry-After`, as when Redis or
/// RabbitMQ cannot take a write (what makes a request this slow).
///
/// Teams waits about 15 s for the bot endpoint before it counts a delivery as failed; a 503
/// before that, with 3 s to spare for the network, has Teams deliver the activity again. It is
/// longer than any one wait a request is made of, so that a slow step reports its own error
/// first: a confirmed publish gives up after 10 s, a Redis command after 1 s to connect and
/// 2 s to answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(12);

/// Puts the layers around every route of `router`.
pub fn layer(router: Router, metrics: Metrics) -> Router {
    with_deadline(router, REQUEST_TIMEOUT).layer(middleware::from_fn_with_state(metrics, observe))
}

fn with_deadline(router: Router, timeout: Duration) -> Router {
    router.layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(move |error: BoxError| async move {
                timed_out(error, timeout)
            }))
            .layer(TimeoutLayer::new(timeout)),
    )
}

/// The deadline's answer. The timeout's only error is its own: the routes cannot fail.
fn timed_out(error: BoxError, timeout: Duration) -> Problem {
    Problem::unavailable(format!(
        "the request took longer than {timeout:?}; try again"
    ))
    .caused_by(error)
}

/// Traces every request, counts it by route (the pattern, not the path: ids would explode
/// the series) and status, times it, and logs the cause of a server error.
async fn observe(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    // The request's span continues the caller's trace (a `traceparent` header), and the jobs
    // the request queues carry it on to the dispatcher.
    let parent = herald_shared::telemetry::http_trace_context(request.headers());
    let span = tracing::info_span!(
        "request",
        otel.name = %format_args!("{} {route}", request.method()),
        otel.kind = "server",
        http.request.method = %request.method(),
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        trace_id = herald_shared::telemetry::trace_id_field(&parent),
    );
    herald_shared::telemetry::continue_trace(&span, parent);
    let started = std::time::Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    if response.status().is_server_error() {
        span.in_scope(|| log_server_error(&response));
    }
    metrics
        .http_requests
        .get_or_create(&vec![
            ("route", route.clone()),
            ("status", status.to_string()),
        ])
        .inc();
    metrics
        .http_request_duration
        .get_or_create(&vec![("route", route)])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// A server error's one log line, in the request's span.
fn log_server_error(response: &Response) {
    let status = response.status().as_u16();
    match response.extensions().get::<ProblemCause>() {
        Some(cause) => tracing::warn!(status, error = %Chain(cause.error()), "request failed"),
        None => tracing::warn!(status, "request failed"),
    }
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, http::header, routing::get};
    use herald_shared::{amqp::PublishError, metrics::Service};
    use tower::ServiceExt;

    use super::*;

    async fn call(router: Router, path: &str) -> (Response, serde_json::Value) {
        let response = router
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        let json = serde_json::from_slice(&body).unwrap_or_default();
        (Response::from_parts(parts, Body::empty()), json)
    }

    #[tokio::test]
    async fn a_request_past_its_deadline_is_answered_503_as_a_problem() {
        let slow = Router::new().route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                "too late"
            }),
        );
        let (response, problem) =
            call(with_deadline(slow, Duration::from_millis(50)), "/slow").await;
        assert_eq!(response.status(), 503);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        assert_eq!(
            problem["detail"],
            "the request took longer than 50ms; try again"
        );
        let cause = response.extensions().get::<ProblemCause>().unwrap();
        assert_eq!(Chain(cause.error()).to_string(), "request timed out");
    }

    #[tokio::test]
    async fn a_server_error_reaches_the_request_log_with_its_cause() {
        let broken = Router::new().route(
            "/broken",
            get(|| async { Problem::from(PublishError::Unavailable) }),
        );
        let (response, problem) =
            call(layer(broken, Metrics::new(Service::Ingress)), "/broken").await;
        assert_eq!(response.status(), 503);
        assert_eq!(problem["detail"], "RabbitMQ is unavailable");
        let cause = response.extensions().get::<ProblemCause>().unwrap();
        assert_eq!(Chain(cause.error()).to_string(), "RabbitMQ is unavailable");
    }
}

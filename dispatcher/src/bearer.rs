//! One HTTP call with an Entra token, as the Bot Connector and Graph both take it: the token
//! as a bearer, the trace of the job it is made for, a time limit; the answer's status, its
//! `Retry-After` and its body. What an answer means is each client's own affair.

use std::time::Duration;

use reqwest::{Method, StatusCode, header};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::connector::parse_retry_after;

/// An answer, whatever its status.
pub(crate) struct Answer {
    pub status: StatusCode,
    pub retry_after: Option<Duration>,
    pub body: String,
}

/// Sends one request (the URL already checked against its allowlist by the caller) and
/// reads its answer; the error is the transport's (no answer, or a body cut short).
pub(crate) async fn call(
    http: &reqwest::Client,
    method: Method,
    url: Url,
    token: &SecretString,
    timeout: Duration,
    body: Option<&serde_json::Value>,
) -> Result<Answer, reqwest::Error> {
    let mut request = http.request(method, url).timeout(timeout).header(
        header::AUTHORIZATION,
        format!("Bearer {}", token.expose_secret()),
    );
    if let Some(body) = body {
        request = request.json(body);
    }
    // The call continues the trace of the job it is made for.
    let mut trace_headers = header::HeaderMap::new();
    herald_shared::telemetry::inject_http(&mut trace_headers);
    request = request.headers(trace_headers);
    let response = request.send().await?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let body = response.text().await?;
    Ok(Answer {
        status,
        retry_after,
        body,
    })
}

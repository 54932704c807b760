//! The login side: Entra's client-credentials token endpoint (tokens for the Bot Connector
//! and for the Graph stand-in) and Bot Framework's OpenID metadata and signing keys.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::ConnectorError;
use crate::keys::token_tenant;
use crate::recorder::{Counters, Operation, RecordedRequest, lock};
use crate::state::{Audience, IssuedToken, Shared};

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route(
            "/v1/.well-known/openidconfiguration",
            get(openid_configuration),
        )
        .route("/v1/.well-known/keys", get(keys))
        .route("/{tenant}/oauth2/v2.0/token", post(token))
}

async fn openid_configuration(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(json!({
        "issuer": shared.issuer,
        "authorization_endpoint": "https://invalid.botframework.com",
        "jwks_uri": format!("{}/v1/.well-known/keys", shared.base_url),
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
    }))
}

async fn keys(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(shared.keys.jwks())
}

/// Whom a client-credentials request's scope asks a token for: the Bot Connector (the public
/// cloud's scope, or the configured issuer's: government clouds pair them the same way), or
/// the Graph stand-in (its root + `/.default`, as a client configured with the emulator's
/// Graph URL derives it); `None` for any other scope.
fn audience_of(shared: &Shared, scope: &str) -> Option<Audience> {
    if scope == "https://api.botframework.com/.default"
        || scope == format!("{}/.default", shared.issuer.trim_end_matches('/'))
    {
        Some(Audience::Connector)
    } else if scope == format!("{}/.default", shared.graph_root()) {
        Some(Audience::Graph)
    } else {
        None
    }
}

/// A refused token request: Entra's answer and its `error` name for the request log.
struct Refusal {
    status: StatusCode,
    error: &'static str,
    body: Value,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let headers = [(header::CACHE_CONTROL, "no-store, no-cache")];
        (self.status, headers, Json(self.body)).into_response()
    }
}

/// An Entra error answer.
fn entra_error(status: StatusCode, error: &'static str, aadsts: u32, description: &str) -> Refusal {
    let now = OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default();
    let trace_id = uuid::Uuid::new_v4();
    let correlation_id = uuid::Uuid::new_v4();
    let body = json!({
        "error": error,
        "error_description": format!(
            "AADSTS{aadsts}: {description} Trace ID: {trace_id} Correlation ID: {correlation_id} Timestamp: {now}"
        ),
        "error_codes": [aadsts],
        "timestamp": now,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
        "error_uri": format!("https://login.microsoftonline.com/error?code={aadsts}"),
    });
    Refusal {
        status,
        error,
        body,
    }
}

/// `client_id`/`client_secret` from the form, or from HTTP Basic authentication.
fn client_credentials(
    form: &HashMap<String, String>,
    headers: &HeaderMap,
) -> (Option<String>, Option<String>) {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Basic "))
        .and_then(|encoded| STANDARD.decode(encoded.trim()).ok())
        .and_then(|decoded| String::from_utf8(decoded).ok())
        .and_then(|pair| {
            pair.split_once(':')
                .map(|(id, secret)| (id.to_owned(), secret.to_owned()))
        });
    let (basic_id, basic_secret) = basic.unzip();
    (
        form.get("client_id").cloned().or(basic_id),
        form.get("client_secret").cloned().or(basic_secret),
    )
}

/// Checks a token request the way Entra does: the request's shape first, then the client.
/// Returns the audience the scope asks for.
fn check_request(
    shared: &Shared,
    tenant: &str,
    form: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Audience, Refusal> {
    let missing = |name: &str| {
        entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            &format!("The request body must contain the following parameter: '{name}'."),
        )
    };
    let grant_type = form
        .get("grant_type")
        .ok_or_else(|| missing("grant_type"))?;
    if grant_type != "client_credentials" {
        return Err(entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            70003,
            &format!("The app requested an unsupported grant type '{grant_type}'."),
        ));
    }
    let (client_id, client_secret) = client_credentials(form, headers);
    let client_id = client_id.ok_or_else(|| missing("client_id"))?;
    let scope = form.get("scope").ok_or_else(|| missing("scope"))?;
    let Some(audience) = audience_of(shared, scope) else {
        return Err(entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            &format!(
                "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
            ),
        ));
    };
    if client_id != shared.app_id {
        return Err(entra_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700016,
            &format!(
                "Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant."
            ),
        ));
    }
    match client_secret {
        None => Err(entra_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000216,
            "'client_assertion', 'client_secret' or 'request' is required for the 'client_credentials' grant type.",
        )),
        Some(secret) if secret != shared.app_password => Err(entra_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000215,
            &format!(
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."
            ),
        )),
        Some(_) => Ok(audience),
    }
}

async fn token(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = OffsetDateTime::now_utc();
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    // The scope says which of the two operations this is, so that a fault for Bot Connector
    // tokens leaves Graph's alone and the other way round.
    let operation = match form
        .get("scope")
        .and_then(|scope| audience_of(&shared, scope))
    {
        Some(Audience::Graph) => Operation::GraphToken,
        _ => Operation::Token,
    };
    let fault = lock(&shared.faults).take(operation, None, Some(&tenant));
    let (response, error_code) = match fault {
        Some(fault) => {
            Counters::bump(&shared.recorder.counters.faults_applied);
            if let Some(latency) = fault.latency {
                tokio::time::sleep(latency).await;
            }
            let code = fault.error_code();
            (
                ConnectorError::Injected(Box::new(fault)).into_response(),
                code,
            )
        }
        None => match check_request(&shared, &tenant, &form, &headers) {
            Err(refusal) => {
                Counters::bump(&shared.recorder.counters.token_refusals);
                let code = Some(refusal.error.to_owned());
                (refusal.into_response(), code)
            }
            Ok(audience) => (issue(&shared, &tenant, audience), None),
        },
    };
    shared.recorder.record(RecordedRequest {
        at,
        method: "POST".to_owned(),
        path: uri.path().to_owned(),
        operation,
        conversation_id: None,
        tenant_id: Some(tenant),
        status: response.status().as_u16(),
        error_code,
        had_authorization: headers.contains_key(header::AUTHORIZATION),
        traceparent: traceparent(&headers),
    });
    response
}

/// Issues a token for `audience` in `tenant` and answers with it.
fn issue(shared: &Shared, tenant: &str, audience: Audience) -> Response {
    let lifetime = shared.token_lifetime;
    let lifetime_secs = i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX);
    let tenant_id = token_tenant(tenant);
    let access_token = match audience {
        Audience::Connector => {
            Counters::bump(&shared.recorder.counters.token_issues);
            shared
                .keys
                .access_token(&shared.app_id, tenant, lifetime_secs)
        }
        Audience::Graph => {
            Counters::bump(&shared.recorder.counters.graph_token_issues);
            let granted = lock(&shared.directory).granted_permissions(&tenant_id);
            let roles: Vec<&str> = granted.iter().map(|permission| permission.name()).collect();
            shared.keys.graph_token(
                &shared.graph_root(),
                &shared.app_id,
                tenant,
                lifetime_secs,
                &roles,
            )
        }
    };
    lock(&shared.tokens).insert(
        access_token.clone(),
        IssuedToken {
            expires: Instant::now() + lifetime,
            audience,
            tenant_id,
        },
    );
    let body = json!({
        "token_type": "Bearer",
        "expires_in": lifetime_secs,
        "ext_expires_in": lifetime_secs,
        "access_token": access_token,
    });
    (
        StatusCode::OK,
        [
            (header::CACHE_CONTROL, "no-store, no-cache"),
            (header::PRAGMA, "no-cache"),
        ],
        Json(body),
    )
        .into_response()
}

/// The `traceparent` header, if any.
pub(crate) fn traceparent(headers: &HeaderMap) -> Option<String> {
    headers
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

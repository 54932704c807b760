//! Shared test helpers: an emulator on a port-0 listener, a stand-in bot that checks
//! inbound tokens the way Bot Framework SDKs do, and small Bot Connector clients.

#![allow(dead_code)] // each test file uses a different subset

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::post;
use herald_emulator::{Emulator, EmulatorConfig};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use serde_json::Value;

pub const APP_ID: &str = "9f1c1a4e-5b0e-4a8e-9d7e-2f6b3c1d0a11";
pub const APP_PASSWORD: &str = "s3cr3t~value";

pub fn config() -> EmulatorConfig {
    EmulatorConfig {
        app_id: APP_ID.to_owned(),
        app_password: APP_PASSWORD.to_owned(),
        ..EmulatorConfig::default()
    }
}

pub async fn start(config: EmulatorConfig) -> Emulator {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    Emulator::start(config, listener).await.unwrap()
}

/// An emulator with a stand-in bot wired as its bot endpoint.
pub async fn start_with_bot(config: EmulatorConfig) -> (Emulator, Bot) {
    let emulator = start(config).await;
    let bot = Bot::start(&emulator).await;
    emulator.set_bot_endpoint(&bot.url);
    (emulator, bot)
}

/// What the stand-in bot received.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub activity: Value,
    pub headers: HeaderMap,
    pub verdict: Result<(), String>,
}

/// A bot endpoint that validates each activity's token against the emulator's published
/// metadata, as botbuilder does, and answers 200 or 401 — or, to a valid `invoke`, what
/// [`Bot::answer_invokes_with`] set.
#[derive(Debug, Clone)]
pub struct Bot {
    pub url: String,
    pub deliveries: Arc<Mutex<Vec<Delivery>>>,
    invoke_answer: Arc<Mutex<Option<(u16, Value)>>>,
}

#[derive(Clone)]
struct BotState {
    openid_url: String,
    deliveries: Arc<Mutex<Vec<Delivery>>>,
    invoke_answer: Arc<Mutex<Option<(u16, Value)>>>,
}

impl Bot {
    pub async fn start(emulator: &Emulator) -> Bot {
        let deliveries = Arc::new(Mutex::new(Vec::new()));
        let invoke_answer = Arc::new(Mutex::new(None));
        let state = BotState {
            openid_url: emulator.openid_metadata_url(),
            deliveries: deliveries.clone(),
            invoke_answer: invoke_answer.clone(),
        };
        let app = Router::new()
            .route("/api/messages", post(receive))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/api/messages", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Bot {
            url,
            deliveries,
            invoke_answer,
        }
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries.lock().unwrap().clone()
    }

    /// The last activity received.
    pub fn last(&self) -> Delivery {
        self.deliveries()
            .pop()
            .expect("the bot received an activity")
    }

    /// From now on, answers each validly signed `invoke` with this status and JSON body.
    pub fn answer_invokes_with(&self, status: u16, body: Value) {
        *self.invoke_answer.lock().unwrap() = Some((status, body));
    }
}

async fn receive(State(state): State<BotState>, headers: HeaderMap, body: String) -> Response {
    let activity: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let verdict = verify(&state.openid_url, &headers, &activity).await;
    let answer = match (&verdict, activity["type"].as_str()) {
        (Ok(()), Some("invoke")) => state.invoke_answer.lock().unwrap().clone(),
        _ => None,
    };
    let status = if verdict.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    };
    state.deliveries.lock().unwrap().push(Delivery {
        activity,
        headers,
        verdict,
    });
    match answer {
        Some((status, body)) => (
            StatusCode::from_u16(status).expect("a valid status"),
            Json(body),
        )
            .into_response(),
        None => status.into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct InboundClaims {
    serviceurl: String,
}

/// Bot Framework's channel validation: OpenID metadata → JWKS → key by `kid` → the key must
/// be endorsed for `msteams` → RS256 signature, issuer, audience, lifetime (5 min skew) →
/// `serviceurl` claim equal to the activity's `serviceUrl`.
pub async fn verify(openid_url: &str, headers: &HeaderMap, activity: &Value) -> Result<(), String> {
    let authorization = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .ok_or("no Authorization header")?;
    let token = authorization
        .strip_prefix("Bearer ")
        .ok_or("not a Bearer token")?;
    verify_token(openid_url, token, activity).await
}

pub async fn verify_token(openid_url: &str, token: &str, activity: &Value) -> Result<(), String> {
    let metadata: Value = reqwest::get(openid_url)
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let issuer = metadata["issuer"].as_str().ok_or("no issuer")?;
    let jwks_uri = metadata["jwks_uri"].as_str().ok_or("no jwks_uri")?;
    let jwks: Value = reqwest::get(jwks_uri)
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;

    let header = jsonwebtoken::decode_header(token).map_err(|e| format!("header: {e}"))?;
    if header.alg != Algorithm::RS256 {
        return Err(format!("algorithm {:?} refused", header.alg));
    }
    let kid = header.kid.ok_or("no kid")?;
    let key = jwks["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|key| key["kid"] == kid.as_str())
        .ok_or("unknown kid")?;
    let endorsed = key["endorsements"]
        .as_array()
        .is_some_and(|list| list.iter().any(|e| e == "msteams"));
    if !endorsed {
        return Err("key not endorsed for msteams".to_owned());
    }
    let decoding = DecodingKey::from_rsa_components(
        key["n"].as_str().ok_or("no n")?,
        key["e"].as_str().ok_or("no e")?,
    )
    .map_err(|e| e.to_string())?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[APP_ID]);
    validation.set_issuer(&[issuer]);
    validation.leeway = 300;
    let data = jsonwebtoken::decode::<InboundClaims>(token, &decoding, &validation)
        .map_err(|e| format!("token: {e}"))?;
    let service_url = activity["serviceUrl"].as_str().unwrap_or_default();
    if data.claims.serviceurl.trim_end_matches('/') != service_url.trim_end_matches('/') {
        return Err("serviceurl claim does not match the activity".to_owned());
    }
    Ok(())
}

/// A token from the emulator's Entra endpoint, with the right credentials.
pub async fn bot_token(emulator: &Emulator) -> String {
    let response = reqwest::Client::new()
        .post(emulator.token_url())
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", APP_ID),
            ("client_secret", APP_PASSWORD),
            ("scope", "https://api.botframework.com/.default"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

/// A conversation id as a percent-encoded path segment (as teams.net sends it).
pub fn encoded(id: &str) -> String {
    utf8_percent_encode(id, NON_ALPHANUMERIC).to_string()
}

/// An answer from the Bot Connector.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn code(&self) -> Option<&str> {
        self.body["error"]["code"].as_str()
    }
}

pub async fn call(
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Answer {
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer {
        status,
        headers,
        body,
    }
}

/// `POST {serviceUrl}v3/conversations/{id}/activities` with a text message.
pub async fn send_text(service_url: &str, conversation: &str, token: &str, text: &str) -> Answer {
    let url = format!("{service_url}v3/conversations/{conversation}/activities");
    let activity = serde_json::json!({ "type": "message", "text": text });
    call(reqwest::Method::POST, &url, Some(token), Some(&activity)).await
}

/// A Graph token for `tenant` from the emulator's Entra endpoint (scope: its Graph root).
pub async fn graph_token(emulator: &Emulator, tenant: &str) -> String {
    let response = reqwest::Client::new()
        .post(emulator.tenant_token_url(tenant))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", APP_ID),
            ("client_secret", APP_PASSWORD),
            ("scope", emulator.graph_scope().as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

/// `GET {graph}/v1.0/{path}` (path and query as given) with a token.
pub async fn graph_get(emulator: &Emulator, path: &str, token: &str) -> Answer {
    let url = format!("{}/v1.0/{path}", emulator.graph_url());
    call(reqwest::Method::GET, &url, Some(token), None).await
}

/// `POST {graph}/v1.0/users/{user}/teamwork/installedApps` binding the catalog app.
pub async fn graph_install(
    emulator: &Emulator,
    user: &str,
    teams_app_id: &str,
    token: &str,
) -> Answer {
    let url = format!(
        "{}/v1.0/users/{user}/teamwork/installedApps",
        emulator.graph_url()
    );
    let body = serde_json::json!({
        "teamsApp@odata.bind": format!("https://graph.microsoft.com/v1.0/appCatalogs/teamsApps/{teams_app_id}")
    });
    call(reqwest::Method::POST, &url, Some(token), Some(&body)).await
}

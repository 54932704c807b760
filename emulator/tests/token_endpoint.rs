//! The bot's login: Entra's client-credentials endpoint hands out tokens only for the bot's
//! own credentials, and the Bot Connector accepts only those tokens, only while they last.

mod common;

use std::time::Duration;

use common::{APP_ID, APP_PASSWORD, bot_token, config, send_text, start, start_with_bot};
use herald_emulator::{Operation, TeamsUser};
use serde_json::Value;

async fn request_token(url: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(url)
        .form(form)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

const SCOPE: &str = "https://api.botframework.com/.default";

#[tokio::test]
async fn the_bot_gets_a_token_with_its_credentials_and_only_with_them() {
    let emulator = start(config()).await;
    let url = emulator.token_url();
    assert!(
        url.ends_with("/botframework.com/oauth2/v2.0/token"),
        "{url}"
    );

    let (status, body) = request_token(
        &url,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", APP_ID),
            ("client_secret", APP_PASSWORD),
            ("scope", SCOPE),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(body["ext_expires_in"], 3599);
    assert!(body["access_token"].as_str().unwrap().len() > 20);

    // A wrong secret: Entra's AADSTS7000215.
    let (status, body) = request_token(
        &url,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", APP_ID),
            ("client_secret", "guess"),
            ("scope", SCOPE),
        ],
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "invalid_client");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .starts_with("AADSTS7000215: Invalid client secret provided"),
        "{body}"
    );

    // Another app's id.
    let (status, body) = request_token(
        &url,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "11111111-1111-1111-1111-111111111111"),
            ("client_secret", APP_PASSWORD),
            ("scope", SCOPE),
        ],
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "invalid_client");

    // The wrong grant, or a scope for another resource.
    let (status, body) = request_token(
        &url,
        &[
            ("grant_type", "password"),
            ("client_id", APP_ID),
            ("client_secret", APP_PASSWORD),
            ("scope", SCOPE),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    let (status, body) = request_token(
        &url,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", APP_ID),
            ("client_secret", APP_PASSWORD),
            ("scope", "https://graph.microsoft.com/.default"),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_scope"))
    );

    // A single-tenant bot asks its own tenant.
    let tenant_url = url.replace("botframework.com", "5a1e0d3c-1111-4c4c-9d9d-123456789abc");
    let (status, _) = request_token(
        &tenant_url,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", APP_ID),
            ("client_secret", APP_PASSWORD),
            ("scope", SCOPE),
        ],
    )
    .await;
    assert_eq!(status, 200);

    assert_eq!(emulator.token_requests(), 2);
    let token_calls: Vec<_> = emulator
        .requests()
        .into_iter()
        .filter(|r| r.operation == Operation::Token)
        .collect();
    assert_eq!(token_calls.len(), 6);
    assert_eq!(token_calls[1].error_code.as_deref(), Some("invalid_client"));
    assert_eq!(token_calls[4].error_code.as_deref(), Some("invalid_scope"));
}

#[tokio::test]
async fn the_bot_connector_wants_an_issued_unexpired_token() {
    let (emulator, _bot) = start_with_bot(herald_emulator::EmulatorConfig {
        token_lifetime: Duration::from_secs(1),
        ..config()
    })
    .await;
    let user = TeamsUser::random();
    let conversation = emulator.install(&user).await.unwrap().conversation_id;
    let service_url = emulator.service_url(&user.tenant_id);

    // No token, a made-up token.
    let url = format!("{service_url}v3/conversations/{conversation}/activities");
    let activity = serde_json::json!({"type": "message", "text": "hi"});
    let answer = common::call(reqwest::Method::POST, &url, None, Some(&activity)).await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.code(), Some("Unauthorized"));
    let answer = send_text(&service_url, &conversation, "forged", "hi").await;
    assert_eq!(answer.status, 401);

    let token = bot_token(&emulator).await;
    assert_eq!(
        send_text(&service_url, &conversation, &token, "hi")
            .await
            .status,
        201
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let answer = send_text(&service_url, &conversation, &token, "late").await;
    assert_eq!(answer.status, 401, "an expired token is refused");

    let requests = emulator.requests();
    let refused: Vec<_> = requests.iter().filter(|r| r.status == 401).collect();
    assert_eq!(refused.len(), 3);
    assert!(!refused[0].had_authorization);
    assert!(refused[1].had_authorization);
    assert_eq!(emulator.activities(&conversation).len(), 1);
}

#[tokio::test]
async fn openid_metadata_points_at_the_published_keys() {
    let emulator = start(config()).await;
    let metadata: Value = reqwest::get(emulator.openid_metadata_url())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(metadata["issuer"], "https://api.botframework.com");
    assert_eq!(
        metadata["jwks_uri"],
        format!("{}/v1/.well-known/keys", emulator.base_url())
    );
    assert_eq!(
        metadata["id_token_signing_alg_values_supported"][0],
        "RS256"
    );
    assert_eq!(
        metadata["token_endpoint_auth_signing_alg_values_supported"][0],
        "RS256"
    );

    let jwks: Value = reqwest::get(metadata["jwks_uri"].as_str().unwrap())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    for key in keys {
        assert_eq!(key["kty"], "RSA");
        assert_eq!(key["use"], "sig");
        assert_eq!(key["e"], "AQAB");
        let n = key["n"].as_str().unwrap();
        assert!(!n.contains('=') && !n.contains('+') && !n.contains('/'));
        assert!(key["endorsements"].is_array());
    }
    // jsonwebtoken's own JWK parser reads the set (ignoring `endorsements`).
    let parsed: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks.clone()).unwrap();
    assert_eq!(parsed.keys.len(), 2);
}

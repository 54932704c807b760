//! Teams' signing keys are fetched once and cached; a token naming an unknown key causes at
//! most one fetch per interval, so forged `kid`s cannot make Herald hammer Microsoft.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Json, Router, extract::State, routing::get};
use herald_emulator::{Emulator, EmulatorConfig, TeamsUser, TokenVariant};
use herald_ingress::bot::auth::{AuthError, BotAuthenticator};
use herald_tests::listener;

#[derive(Clone)]
struct Keys {
    base: String,
    emulator: String,
    fetches: Arc<AtomicUsize>,
}

/// Serves the emulator's key set under its own metadata document, counting key fetches.
async fn counting_key_host(emulator: &Emulator) -> (String, Arc<AtomicUsize>) {
    let listener = listener().await;
    let base = format!("http://{}", listener.local_addr().unwrap());
    let keys = Keys {
        base: base.clone(),
        emulator: emulator.base_url(),
        fetches: Arc::default(),
    };
    let fetches = keys.fetches.clone();
    let app = Router::new()
        .route(
            "/metadata",
            get(|State(k): State<Keys>| async move {
                Json(serde_json::json!({"issuer": "https://api.botframework.com", "jwks_uri": format!("{}/keys", k.base)}))
            }),
        )
        .route(
            "/keys",
            get(|State(k): State<Keys>| async move {
                k.fetches.fetch_add(1, Ordering::SeqCst);
                let jwks: serde_json::Value =
                    reqwest::get(format!("{}/v1/.well-known/keys", k.emulator)).await.unwrap().json().await.unwrap();
                Json(jwks)
            }),
        )
        .with_state(keys);
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("{base}/metadata"), fetches)
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_are_cached_and_unknown_kids_cause_at_most_one_fetch() {
    let emulator = Emulator::start(EmulatorConfig::default(), listener().await)
        .await
        .unwrap();
    let (metadata, fetches) = counting_key_host(&emulator).await;
    let app_id = EmulatorConfig::default().app_id;
    let auth = BotAuthenticator::new(
        reqwest::Client::new(),
        metadata.parse().unwrap(),
        "https://api.botframework.com",
        &app_id,
    );
    let activity = emulator.message_activity(&TeamsUser::random(), "hi");
    let valid = emulator
        .authorization(&activity, TokenVariant::Valid)
        .unwrap();
    let unknown = emulator
        .authorization(&activity, TokenVariant::UnknownKid)
        .unwrap();

    for _ in 0..5 {
        let token = auth
            .verify(Some(&valid))
            .await
            .expect("a valid token verifies");
        token
            .check_activity(activity["serviceUrl"].as_str().unwrap(), "msteams")
            .unwrap();
    }
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        1,
        "five verifications, one fetch"
    );

    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..20 {
        assert!(matches!(
            auth.verify(Some(&unknown)).await,
            Err(AuthError::UnknownKey(_))
        ));
    }
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        2,
        "twenty unknown kids, one more fetch"
    );
    auth.verify(Some(&valid)).await.unwrap();
    assert_eq!(fetches.load(Ordering::SeqCst), 2);

    // The activity-bound checks.
    let token = auth.verify(Some(&valid)).await.unwrap();
    assert!(matches!(
        token.check_activity("http://elsewhere/", "msteams"),
        Err(AuthError::ServiceUrlMismatch)
    ));
    assert!(matches!(
        token.check_activity(activity["serviceUrl"].as_str().unwrap(), "slack"),
        Err(AuthError::NotEndorsed(_))
    ));
    emulator.shutdown().await;
}

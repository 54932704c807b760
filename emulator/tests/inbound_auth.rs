//! "Teams" signs what it posts to the bot like Bot Framework does: a valid token verifies
//! against the published metadata, and each spoiled variant fails a check a careful bot makes.

mod common;

use common::{APP_ID, config, start, start_with_bot, verify_token};
use herald_emulator::{TeamsUser, TokenVariant};
use jsonwebtoken::Algorithm;

const SPOILED: [TokenVariant; 9] = [
    TokenVariant::WrongSigningKey,
    TokenVariant::WrongAudience,
    TokenVariant::WrongIssuer,
    TokenVariant::Expired,
    TokenVariant::AlgNone,
    TokenVariant::Hs256WithPublicKey,
    TokenVariant::ServiceUrlMismatch,
    TokenVariant::UnknownKid,
    TokenVariant::KeyWithoutEndorsement,
];

fn bearer(value: Option<String>) -> String {
    value
        .expect("an Authorization value")
        .strip_prefix("Bearer ")
        .expect("Bearer scheme")
        .to_owned()
}

#[tokio::test]
async fn a_valid_token_verifies_and_every_spoiled_one_fails() {
    let emulator = start(config()).await;
    let user = TeamsUser::random();
    let activity = emulator.message_activity(&user, "hello");
    let openid = emulator.openid_metadata_url();

    let valid = bearer(emulator.authorization(&activity, TokenVariant::Valid));
    verify_token(&openid, &valid, &activity).await.unwrap();
    let claims: serde_json::Value =
        jsonwebtoken::dangerous::insecure_decode_claims(&valid).unwrap();
    assert_eq!(claims["aud"], APP_ID);
    assert_eq!(claims["iss"], "https://api.botframework.com");
    assert_eq!(claims["serviceurl"], activity["serviceUrl"]);
    assert!(claims["exp"].as_i64() > claims["iat"].as_i64());
    assert!(claims["nbf"].is_i64());

    for variant in SPOILED {
        let token = bearer(emulator.authorization(&activity, variant));
        let verdict = verify_token(&openid, &token, &activity).await;
        assert!(verdict.is_err(), "{variant:?} verified");
    }
    assert_eq!(
        emulator.authorization(&activity, TokenVariant::NoAuthorization),
        None
    );
}

#[tokio::test]
async fn spoiled_tokens_are_spoiled_in_the_way_they_claim() {
    let emulator = start(config()).await;
    let activity = emulator.message_activity(&TeamsUser::random(), "hello");
    let openid = emulator.openid_metadata_url();
    let token = |variant| bearer(emulator.authorization(&activity, variant));
    let valid_header = jsonwebtoken::decode_header(token(TokenVariant::Valid)).unwrap();
    let published_kid = valid_header.kid.clone().unwrap();
    assert_eq!(valid_header.alg, Algorithm::RS256);

    // Same kid as the published key, but the signature is someone else's.
    let header = jsonwebtoken::decode_header(token(TokenVariant::WrongSigningKey)).unwrap();
    assert_eq!(header.kid.as_deref(), Some(published_kid.as_str()));
    let err = verify_token(&openid, &token(TokenVariant::WrongSigningKey), &activity).await;
    assert!(err.unwrap_err().contains("token"));

    let header = jsonwebtoken::decode_header(token(TokenVariant::UnknownKid)).unwrap();
    assert_ne!(header.kid.as_deref(), Some(published_kid.as_str()));
    let err = verify_token(&openid, &token(TokenVariant::UnknownKid), &activity).await;
    assert_eq!(err.unwrap_err(), "unknown kid");

    // A published key, but not one Teams may use.
    let err = verify_token(
        &openid,
        &token(TokenVariant::KeyWithoutEndorsement),
        &activity,
    )
    .await;
    assert_eq!(err.unwrap_err(), "key not endorsed for msteams");

    let header = jsonwebtoken::decode_header(token(TokenVariant::Hs256WithPublicKey)).unwrap();
    assert_eq!(header.alg, Algorithm::HS256);
    assert_eq!(header.kid.as_deref(), Some(published_kid.as_str()));

    let none = token(TokenVariant::AlgNone);
    assert!(
        none.ends_with('.'),
        "alg none has an empty signature: {none}"
    );

    let err = verify_token(&openid, &token(TokenVariant::ServiceUrlMismatch), &activity).await;
    assert_eq!(
        err.unwrap_err(),
        "serviceurl claim does not match the activity"
    );

    let claims: serde_json::Value =
        jsonwebtoken::dangerous::insecure_decode_claims(token(TokenVariant::Expired)).unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        claims["exp"].as_i64().unwrap() < now - 300,
        "expired beyond skew"
    );
}

#[tokio::test]
async fn posting_carries_the_token_and_teams_headers() {
    let (emulator, bot) = start_with_bot(config()).await;
    let user = TeamsUser::random();
    let activity = emulator.message_activity(&user, "hello bot");

    let (status, _) = emulator
        .post_activity(&activity, TokenVariant::Valid)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (status, _) = emulator
        .post_activity(&activity, TokenVariant::WrongIssuer)
        .await
        .unwrap();
    assert_eq!(status, 401);
    let (status, _) = emulator
        .post_activity(&activity, TokenVariant::NoAuthorization)
        .await
        .unwrap();
    assert_eq!(status, 401);

    let deliveries = bot.deliveries();
    assert_eq!(deliveries.len(), 3);
    let first = &deliveries[0];
    assert_eq!(first.activity, activity);
    assert_eq!(
        first.headers["x-ms-conversation-id"],
        emulator.personal_conversation_id(&user).as_str()
    );
    assert_eq!(first.headers["x-ms-tenant-id"], user.tenant_id.as_str());
    assert!(first.verdict.is_ok());
    assert!(!deliveries[2].headers.contains_key("authorization"));
    assert_eq!(emulator.stats().activities_to_bot, 3);
}

#[tokio::test]
async fn emulators_in_one_process_share_their_keys() {
    let first = start(config()).await;
    let second = start(config()).await;
    let activity = first.message_activity(&TeamsUser::random(), "hi");
    let token = bearer(first.authorization(&activity, TokenVariant::Valid));
    // A token signed by the first verifies against the second's published keys.
    verify_token(&second.openid_metadata_url(), &token, &activity)
        .await
        .unwrap();
}

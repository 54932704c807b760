//! Audiences of broadcast size, made in a moment: a team of 100,000 members and a tenant of
//! a million users who have the app, all computed from an index rather than stored, from
//! Rust and over the inspection API.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{bot_token, call, config, encoded, send_text, start_with_bot};
use herald_emulator::{EmulatorConfig, GeneratedUsers, TeamsTeam, TeamsUser};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

fn no_limits() -> EmulatorConfig {
    EmulatorConfig {
        rate_limits: false,
        ..config()
    }
}

/// `POST {serviceUrl}v3/conversations` for a 1:1 chat with `member` of `tenant`.
async fn open_chat(service_url: &str, token: &str, tenant: &str, member: &str) -> common::Answer {
    let body = json!({
        "isGroup": false,
        "bot": {"id": format!("28:{}", common::APP_ID)},
        "members": [{"id": member}],
        "tenantId": tenant,
        "channelData": {"tenant": {"id": tenant}}
    });
    call(
        Method::POST,
        &format!("{service_url}v3/conversations"),
        Some(token),
        Some(&body),
    )
    .await
}

/// What the bot keeps of a roster entry here.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Member {
    id: String,
    aad_object_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Page {
    continuation_token: Option<String>,
    members: Vec<Member>,
}

// Several threads, as in a service: the emulator serves while the test reads.
#[tokio::test(flavor = "multi_thread")]
async fn a_team_of_a_hundred_thousand_is_made_at_once_and_listed_in_full() {
    let (emulator, _bot) = start_with_bot(no_limits()).await;
    let installer = TeamsUser::random();
    let team = TeamsTeam::random_in(&installer.tenant_id);
    emulator.install_team(&team, &installer).await.unwrap();

    let started = Instant::now();
    let generated = emulator.generate_team_members(&team, 100_000);
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "{:?}",
        started.elapsed()
    );
    // Tests compute the members without asking: the same team gives the same users.
    assert_eq!(generated, GeneratedUsers::team_members(&team, 100_000));
    assert_eq!(generated.users().count(), 100_000);

    // The bot reads all of them, 500 at a time.
    let token = bot_token(&emulator).await;
    let url = format!(
        "{}v3/conversations/{}/pagedmembers",
        emulator.service_url(&team.tenant_id),
        encoded(&emulator.team_conversation_id(&team))
    );
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut members: Vec<Member> = Vec::new();
    let mut pages = 0;
    let mut continuation: Option<String> = None;
    loop {
        let mut query = vec![("pageSize", "500".to_owned())];
        if let Some(next) = continuation.take() {
            query.push(("continuationToken", next));
        }
        let response = client
            .get(reqwest::Url::parse_with_params(&url, &query).unwrap())
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let page: Page = response.json().await.unwrap();
        pages += 1;
        members.extend(page.members);
        match page.continuation_token {
            Some(next) => continuation = Some(next),
            None => break,
        }
    }
    let took = started.elapsed();
    assert_eq!(pages, 201);
    let ids: HashSet<&str> = members.iter().map(|m| m.aad_object_id.as_str()).collect();
    assert_eq!(
        ids.len(),
        100_001,
        "the installer and every generated member, once"
    );
    let member = generated.user(99_999);
    let last = members.last().unwrap();
    assert_eq!(last.aad_object_id, member.aad_object_id);
    assert_eq!(last.id, emulator.user_id(&member));
    // A quarter of a second when optimised; seconds at most unoptimised.
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[tokio::test]
async fn a_tenant_of_a_million_who_have_the_app_takes_messages_without_an_install_each() {
    let (emulator, bot) = start_with_bot(no_limits()).await;
    let tenant = uuid::Uuid::new_v4().to_string();
    let started = Instant::now();
    let staff = emulator.generate_tenant_users(&tenant, "staff", 1_000_000);
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        staff,
        GeneratedUsers::tenant_users(&tenant, "staff", 1_000_000)
    );
    // The bot heard of none of them.
    assert!(bot.deliveries().is_empty());

    let token = bot_token(&emulator).await;
    let url = emulator.service_url(&tenant);
    // A stored reference of the bot's is enough to write: the chats exist already.
    let last = staff.user(999_999);
    let chat = emulator.personal_conversation_id(&last);
    assert_eq!(send_text(&url, &chat, &token, "Hello").await.status, 201);
    assert_eq!(emulator.received_count(&chat), 1);
    // Or the bot opens the chat by object id or `29:` id, as for anyone who installed.
    let seventh = staff.user(7);
    let answer = open_chat(&url, &token, &tenant, &seventh.aad_object_id).await;
    assert_eq!(answer.status, 201, "{answer:?}");
    assert_eq!(
        answer.body["id"],
        emulator.personal_conversation_id(&seventh).as_str()
    );
    let answer = open_chat(&url, &token, &tenant, &emulator.user_id(&staff.user(8))).await;
    assert_eq!(answer.status, 201, "{answer:?}");
    // Past the count, or in another cohort, nobody has the app.
    let beyond = TeamsUser::new(&tenant, staff.aad_object_id(1_000_000), "");
    let answer = open_chat(&url, &token, &tenant, &beyond.aad_object_id).await;
    assert_eq!(answer.status, 403);
    let others = GeneratedUsers::tenant_users(&tenant, "contractors", 10);
    let answer = open_chat(&url, &token, &tenant, &others.aad_object_id(0)).await;
    assert_eq!(answer.status, 403);
    let nowhere = emulator.personal_conversation_id(&beyond);
    assert_eq!(send_text(&url, &nowhere, &token, "?").await.status, 404);

    // A generated user can still uninstall, like anyone.
    assert_eq!(emulator.uninstall(&last).await.unwrap(), 200);
    let answer = send_text(&url, &chat, &token, "Still there?").await;
    assert_eq!(
        (answer.status, answer.code()),
        (403, Some("BotNotInConversationRoster"))
    );

    // Only the chats that were used are stored.
    let listed: Value = reqwest::get(format!(
        "{}/_emulator/conversations?tenantId={tenant}",
        emulator.base_url()
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn scripts_make_big_teams_and_tenants_over_http() {
    let (emulator, bot) = start_with_bot(no_limits()).await;
    let base = emulator.base_url();
    let client = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        let request = client.post(format!("{base}{path}")).json(&body);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()
        }
    };
    let tenant = uuid::Uuid::new_v4().to_string();
    let group = uuid::Uuid::new_v4().to_string();

    // Install the app in a team that gets 250 generated members.
    let installed = post(
        "/_emulator/teams/team/install",
        json!({"tenantId": tenant, "aadGroupId": group, "teamName": "Everyone",
               "aadObjectId": uuid::Uuid::new_v4(), "name": "Admin", "generateMembers": 250}),
    )
    .await;
    assert_eq!(installed["installationUpdateStatus"], 200);
    let generated = &installed["generatedMembers"];
    assert_eq!(generated["count"], 250);
    assert_eq!(generated["tenantId"], tenant.as_str());
    // Member i's object id is the prefix and i in 12 hex digits.
    let prefix = generated["aadObjectIdPrefix"].as_str().unwrap();
    let member = format!("{prefix}{:012x}", 249);
    let team = TeamsTeam::new(&tenant, &group, "Everyone");
    assert_eq!(
        GeneratedUsers::team_members(&team, 250).aad_object_id(249),
        member
    );
    let token = bot_token(&emulator).await;
    let url = emulator.service_url(&tenant);
    assert_eq!(open_chat(&url, &token, &tenant, &member).await.status, 201);

    // Members for a team without the app; its roster stays closed to the bot.
    let other = post(
        "/_emulator/teams/team/members",
        json!({"tenantId": tenant, "aadGroupId": uuid::Uuid::new_v4(), "count": 10}),
    )
    .await;
    assert_eq!(other["generatedMembers"]["count"], 10);
    let roster = call(
        Method::GET,
        &format!(
            "{url}v3/conversations/{}/pagedmembers",
            encoded(other["teamId"].as_str().unwrap())
        ),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(roster.status, 403);

    // A tenant's users with the app, in the default cohort `users`.
    let users = post(
        "/_emulator/teams/tenant/users",
        json!({"tenantId": tenant, "count": 5000}),
    )
    .await;
    assert_eq!(
        users,
        json!(GeneratedUsers::tenant_users(&tenant, "users", 5000))
    );
    let prefix = users["aadObjectIdPrefix"].as_str().unwrap();
    let answer = open_chat(&url, &token, &tenant, &format!("{prefix}{:012x}", 4999)).await;
    assert_eq!(answer.status, 201, "{answer:?}");

    // Only the team install reached the bot.
    assert_eq!(bot.deliveries().len(), 2);
}

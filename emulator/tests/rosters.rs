//! A team's roster as Teams serves it to a bot: paged with continuation tokens, refused when
//! the bot has no place in the team, limited like other reads; and the 1:1 chat the bot may
//! then open with any member, though they never installed the app themselves.

mod common;

use std::collections::HashSet;

use common::{Answer, bot_token, call, config, encoded, send_text, start_with_bot};
use herald_emulator::{Emulator, EmulatorConfig, Fault, Operation, TeamsTeam, TeamsUser};
use reqwest::Method;
use serde_json::{Value, json};

fn no_limits() -> EmulatorConfig {
    EmulatorConfig {
        rate_limits: false,
        ..config()
    }
}

/// `GET {serviceUrl}v3/conversations/{id}/pagedmembers` with the query properly encoded.
async fn paged_members(
    service_url: &str,
    conversation: &str,
    token: &str,
    query: &[(&str, &str)],
) -> Answer {
    let url = reqwest::Url::parse_with_params(
        &format!(
            "{service_url}v3/conversations/{}/pagedmembers",
            encoded(conversation)
        ),
        query,
    )
    .unwrap();
    call(Method::GET, url.as_str(), Some(token), None).await
}

/// Every member, following continuation tokens; also returns each page's size.
async fn whole_roster(
    service_url: &str,
    team_id: &str,
    token: &str,
    page_size: &str,
) -> (Vec<Value>, Vec<usize>) {
    let mut members = Vec::new();
    let mut sizes = Vec::new();
    let mut continuation: Option<String> = None;
    loop {
        let mut query = vec![("pageSize", page_size)];
        if let Some(next) = &continuation {
            query.push(("continuationToken", next.as_str()));
        }
        let page = paged_members(service_url, team_id, token, &query).await;
        assert_eq!(page.status, 200, "{page:?}");
        let batch = page.body["members"].as_array().unwrap().clone();
        sizes.push(batch.len());
        members.extend(batch);
        match page.body.get("continuationToken") {
            Some(Value::String(next)) => continuation = Some(next.clone()),
            None => return (members, sizes),
            Some(other) => panic!("a token is a string or absent, not {other}"),
        }
    }
}

/// A team with the app, one member added by hand besides the installer, and `generated`
/// more.
async fn team_with_members(emulator: &Emulator, generated: usize) -> (TeamsTeam, TeamsUser) {
    let installer = TeamsUser::random();
    let team = TeamsTeam::random_in(&installer.tenant_id);
    emulator.install_team(&team, &installer).await.unwrap();
    let colleague = TeamsUser::new(&team.tenant_id, uuid::Uuid::new_v4().to_string(), "Ann Lee");
    emulator.add_team_member(&team, &colleague);
    emulator.generate_team_members(&team, generated);
    (team, installer)
}

#[tokio::test]
async fn a_team_roster_comes_in_pages_until_no_token_is_left() {
    let (emulator, _bot) = start_with_bot(no_limits()).await;
    let (team, installer) = team_with_members(&emulator, 1_234).await;
    let token = bot_token(&emulator).await;
    let team_id = emulator.team_conversation_id(&team);
    let generated = emulator.generate_team_members(&team, 1_234);

    // Through the tenant's serviceUrl, 100 at a time: 13 pages, the last one short.
    let service_url = emulator.service_url(&team.tenant_id);
    let (members, sizes) = whole_roster(&service_url, &team_id, &token, "100").await;
    assert_eq!(sizes, [vec![100; 12], vec![36]].concat());
    assert_eq!(members.len(), 1_236);
    let ids: HashSet<&str> = members.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1_236, "every member once");

    // Those added one by one come first, in the order they joined, then the generated ones.
    assert_eq!(members[0]["aadObjectId"], installer.aad_object_id.as_str());
    assert_eq!(members[0]["id"], emulator.user_id(&installer).as_str());
    assert_eq!(members[1]["name"], "Ann Lee");
    assert_eq!(members[1]["givenName"], "Ann");
    assert_eq!(members[1]["surname"], "Lee");
    let user = generated.user(1_233);
    let last = &members[1_235];
    assert_eq!(last["id"], emulator.user_id(&user).as_str());
    assert_eq!(last["aadObjectId"], user.aad_object_id.as_str());
    assert_eq!(last["name"], user.name.as_str());
    assert_eq!(last["tenantId"], team.tenant_id.as_str());
    assert_eq!(last["userRole"], "user");
    assert!(last["email"].as_str().unwrap().contains('@'));
    assert_eq!(last["userPrincipalName"], last["email"]);
    // What Teams does not know about a user it leaves out.
    assert!(members[1].get("email").is_none());

    // The same roster through a channel thread and the default serviceUrl.
    let (again, _) = whole_roster(
        &emulator.default_service_url(),
        &format!("{team_id};messageid=1700000000000"),
        &token,
        "500",
    )
    .await;
    assert_eq!(again, members);
}

#[tokio::test]
async fn page_sizes_and_tokens_are_read_as_teams_reads_them() {
    let (emulator, _bot) = start_with_bot(no_limits()).await;
    let (team, _) = team_with_members(&emulator, 1_000).await;
    let token = bot_token(&emulator).await;
    let team_id = emulator.team_conversation_id(&team);
    let url = emulator.service_url(&team.tenant_id);
    let count = |page: &Answer| page.body["members"].as_array().unwrap().len();

    // Below 50 counts as 50, above 500 as 500, none as 200.
    assert_eq!(
        count(&paged_members(&url, &team_id, &token, &[("pageSize", "10")]).await),
        50
    );
    let big = paged_members(&url, &team_id, &token, &[("pageSize", "100000")]).await;
    assert_eq!(count(&big), 500);
    assert_eq!(
        count(&paged_members(&url, &team_id, &token, &[]).await),
        200
    );
    let bad = paged_members(&url, &team_id, &token, &[("pageSize", "all")]).await;
    assert_eq!((bad.status, bad.code()), (400, Some("BadArgument")));

    // A token is opaque and must be URL-encoded: sent raw, its `+` arrives as a space.
    let next = big.body["continuationToken"].as_str().unwrap().to_owned();
    let raw = format!(
        "{url}v3/conversations/{team_id}/pagedmembers?pageSize=500&continuationToken={next}"
    );
    let answer = call(Method::GET, &raw, Some(&token), None).await;
    assert_eq!((answer.status, answer.code()), (400, Some("BadArgument")));
    let made_up = paged_members(
        &url,
        &team_id,
        &token,
        &[("continuationToken", "asdfqwerueiqpiewr")],
    )
    .await;
    assert_eq!(made_up.status, 400);
    // A token is for its own team only, and stays good while the roster does not change.
    let (other, _) = team_with_members(&emulator, 0).await;
    let other_id = emulator.team_conversation_id(&other);
    let foreign = paged_members(&url, &other_id, &token, &[("continuationToken", &next)]).await;
    assert_eq!(foreign.status, 400);
    let query = [("pageSize", "500"), ("continuationToken", next.as_str())];
    let second = paged_members(&url, &team_id, &token, &query).await;
    let repeated = paged_members(&url, &team_id, &token, &query).await;
    assert_eq!(second.body, repeated.body);
    assert_eq!(count(&second), 500);
    let third = paged_members(
        &url,
        &team_id,
        &token,
        &[
            ("pageSize", "500"),
            (
                "continuationToken",
                second.body["continuationToken"].as_str().unwrap(),
            ),
        ],
    )
    .await;
    // The last page (2 members added by hand + 1,000 generated, 500 a page) has no token.
    assert_eq!(count(&third), 2);
    assert_eq!(third.body.get("continuationToken"), None);

    let recorded = emulator.requests();
    let last = recorded.last().unwrap();
    assert_eq!(last.operation, Operation::GetConversationPagedMembers);
    assert_eq!(last.tenant_id.as_deref(), Some(team.tenant_id.as_str()));
    assert_eq!(last.conversation_id.as_deref(), Some(team_id.as_str()));
}

#[tokio::test]
async fn a_roster_is_refused_where_the_bot_has_no_place() {
    let (emulator, _bot) = start_with_bot(no_limits()).await;
    let token = bot_token(&emulator).await;
    let installer = TeamsUser::random();
    let url = emulator.service_url(&installer.tenant_id);

    // A team Teams does not know.
    let unknown = paged_members(&url, "19:unknown@thread.tacv2", &token, &[]).await;
    assert_eq!(
        (unknown.status, unknown.code()),
        (404, Some("ConversationNotFound"))
    );
    assert!(unknown.body["error"]["message"].is_string());

    // A team that exists, with members, but without the app.
    let team = TeamsTeam::random_in(&installer.tenant_id);
    emulator.generate_team_members(&team, 10);
    let team_id = emulator.team_conversation_id(&team);
    let outside = paged_members(&url, &team_id, &token, &[]).await;
    assert_eq!(
        (outside.status, outside.code()),
        (403, Some("BotNotInConversationRoster"))
    );

    // Installed, then removed again.
    emulator.install_team(&team, &installer).await.unwrap();
    assert_eq!(paged_members(&url, &team_id, &token, &[]).await.status, 200);
    emulator.uninstall_team(&team, &installer).await.unwrap();
    assert_eq!(paged_members(&url, &team_id, &token, &[]).await.status, 403);

    // Without a token from the token endpoint.
    let anonymous = call(
        Method::GET,
        &format!("{url}v3/conversations/{team_id}/pagedmembers"),
        None,
        None,
    )
    .await;
    assert_eq!(anonymous.status, 401);

    // A personal chat's roster is its user.
    let user = TeamsUser::random();
    let chat = emulator.install(&user).await.unwrap().conversation_id;
    let url = emulator.service_url(&user.tenant_id);
    let page = paged_members(&url, &chat, &token, &[]).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.body["members"].as_array().unwrap().len(), 1);
    assert_eq!(
        page.body["members"][0]["id"],
        emulator.user_id(&user).as_str()
    );
}

#[tokio::test]
async fn reading_members_is_limited_and_faulted_like_the_other_calls() {
    let (emulator, _bot) = start_with_bot(config()).await;
    let token = bot_token(&emulator).await;

    // Teams allows 14 reads of a thread's members a second (twice the sends); the 15th in
    // the same second waits. Fifteen calls must fit in a second for the story to hold; on a
    // machine too busy for that, try again with a fresh team rather than fail for the wrong
    // reason.
    let mut throttled = None;
    for _attempt in 0..3 {
        let (team, _) = team_with_members(&emulator, 100).await;
        let team_id = emulator.team_conversation_id(&team);
        let url = emulator.service_url(&team.tenant_id);
        let started = std::time::Instant::now();
        let mut pages = Vec::new();
        for _ in 0..15 {
            pages.push(paged_members(&url, &team_id, &token, &[]).await);
        }
        if started.elapsed() < std::time::Duration::from_millis(900) {
            throttled = Some((team, pages));
            break;
        }
    }
    let (team, pages) = throttled.expect("fifteen reads within a second");
    for (i, page) in pages[..14].iter().enumerate() {
        assert_eq!(page.status, 200, "read {i}");
    }
    let last = &pages[14];
    assert_eq!((last.status, last.code()), (429, Some("Throttled")));
    assert_eq!(last.headers["retry-after"], "1");
    assert_eq!(emulator.stats().tenants[&team.tenant_id].throttled, 1);

    // Faults name the operation; a send fault leaves reads alone.
    let (team, _) = team_with_members(&emulator, 100).await;
    let team_id = emulator.team_conversation_id(&team);
    let url = emulator.service_url(&team.tenant_id);
    emulator.inject_fault(Fault::new(500).operation(Operation::SendToConversation));
    emulator.inject_fault(Fault::new(503).operation(Operation::GetConversationPagedMembers));
    let faulted = paged_members(&url, &team_id, &token, &[]).await;
    assert_eq!(
        (faulted.status, faulted.code()),
        (503, Some("ServiceUnavailable"))
    );
    assert_eq!(paged_members(&url, &team_id, &token, &[]).await.status, 200);
}

#[tokio::test]
async fn the_bot_opens_a_chat_with_any_member_of_a_team_it_is_in() {
    let (emulator, _bot) = start_with_bot(no_limits()).await;
    let (team, _) = team_with_members(&emulator, 500).await;
    let token = bot_token(&emulator).await;
    let team_id = emulator.team_conversation_id(&team);
    let url = emulator.service_url(&team.tenant_id);
    let create = |member: &str, tenant: &str| {
        json!({
            "isGroup": false,
            "bot": {"id": format!("28:{}", common::APP_ID)},
            "members": [{"id": member}],
            "tenantId": tenant,
            "channelData": {"tenant": {"id": tenant}}
        })
    };
    // On the default serviceUrl the body names the tenant (the tenant-scoped one would).
    let create_url = format!("{}v3/conversations", emulator.default_service_url());

    // As Microsoft's sample does: read the roster, then open a chat with each member by the
    // `29:` id it lists. None of them ever installed the app.
    let page = paged_members(&url, &team_id, &token, &[("pageSize", "50")]).await;
    let member = page.body["members"][42].clone();
    let member_id = member["id"].as_str().unwrap();
    let answer = call(
        Method::POST,
        &create_url,
        Some(&token),
        Some(&create(member_id, &team.tenant_id)),
    )
    .await;
    assert_eq!(answer.status, 201, "{answer:?}");
    let chat = answer.body["id"].as_str().unwrap().to_owned();
    let user = TeamsUser::new(&team.tenant_id, member["aadObjectId"].as_str().unwrap(), "");
    assert_eq!(chat, emulator.personal_conversation_id(&user));

    // The chat takes messages like any personal chat, and the inspection API lists it.
    assert_eq!(
        send_text(&url, &chat, &token, "Welcome to the team")
            .await
            .status,
        201
    );
    assert_eq!(
        emulator.activities(&chat)[0].text.as_deref(),
        Some("Welcome to the team")
    );
    let listed: Value = reqwest::get(format!(
        "{}/_emulator/conversations?kind=personal&tenantId={}",
        emulator.base_url(),
        team.tenant_id
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == chat.as_str())
        .unwrap();
    assert_eq!(entry["botInstalled"], true);
    assert_eq!(entry["user"]["name"], member["name"]);

    // Out of reach: a member of a team without the app, a user in no team, an id of another
    // tenant.
    let elsewhere = TeamsTeam::random_in(&team.tenant_id);
    let stranger = emulator.generate_team_members(&elsewhere, 1).user(0);
    let loner = TeamsUser::new(&team.tenant_id, uuid::Uuid::new_v4().to_string(), "Loner");
    emulator.send_user_message(&loner, "hi").await.unwrap();
    for (member, tenant) in [
        (emulator.user_id(&stranger), team.tenant_id.clone()),
        (emulator.user_id(&loner), team.tenant_id.clone()),
        (member_id.to_owned(), uuid::Uuid::new_v4().to_string()),
    ] {
        let answer = call(
            Method::POST,
            &create_url,
            Some(&token),
            Some(&create(&member, &tenant)),
        )
        .await;
        assert_eq!(
            (answer.status, answer.code()),
            (403, Some("BotNotInConversationRoster")),
            "{member}"
        );
    }
}

//! The Graph stand-in, over HTTP as a Graph client calls it: tokens per tenant and audience,
//! users by id, UPN and mail, the directory and groups paged, the app catalog, installs that
//! reach the bot as Teams' own do, permissions, faults and Graph's rate limit.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{
    Answer, Bot, bot_token, call, config, graph_get, graph_install, graph_token, send_text, start,
    start_with_bot,
};
use herald_emulator::{
    DirectoryGroup, DirectoryUser, Emulator, EmulatorConfig, Fault, GraphPermission, InstallSource,
    Operation, TeamsUser,
};
use serde_json::{Value, json};

fn no_limits() -> EmulatorConfig {
    EmulatorConfig {
        rate_limits: false,
        ..config()
    }
}

fn tenant() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The claims of a JWT (not checked: the emulator signed it).
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// Fails unless `answer` is Graph's error shape with this status and code.
fn assert_graph_error(answer: &Answer, status: u16, code: &str) {
    assert_eq!(answer.status, status, "{:#}", answer.body);
    let error = &answer.body["error"];
    assert_eq!(error["code"], code, "{:#}", answer.body);
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(error["innerError"]["request-id"].as_str().is_some());
    assert!(error["innerError"]["date"].as_str().is_some());
    assert_eq!(
        answer.headers["request-id"].to_str().unwrap(),
        error["innerError"]["request-id"]
    );
}

/// Every page of a collection, following `@odata.nextLink`; returns the items and the number
/// of pages.
async fn all_pages(emulator: &Emulator, first: &str, token: &str) -> (Vec<Value>, usize) {
    let mut items = Vec::new();
    let mut pages = 0;
    let mut answer = graph_get(emulator, first, token).await;
    loop {
        assert_eq!(answer.status, 200, "{:#}", answer.body);
        pages += 1;
        items.extend(answer.body["value"].as_array().unwrap().iter().cloned());
        let Some(next) = answer.body["@odata.nextLink"].as_str() else {
            break;
        };
        assert!(next.starts_with(&emulator.graph_url()), "{next}");
        answer = call(reqwest::Method::GET, next, Some(token), None).await;
    }
    (items, pages)
}

/// Waits for the bot to have received `count` activities of this conversation.
async fn deliveries_in(bot: &Bot, conversation_id: &str, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found: Vec<Value> = bot
            .deliveries()
            .into_iter()
            .filter(|delivery| delivery.activity["conversation"]["id"] == conversation_id)
            .map(|delivery| {
                assert_eq!(delivery.verdict, Ok(()), "the activity's token is valid");
                delivery.activity
            })
            .collect();
        if found.len() >= count {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "the bot got {} of {count} activities",
            found.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn graph_tokens_are_per_tenant_and_graph_takes_only_its_own_audience() {
    let emulator = start(no_limits()).await;
    let (contoso, fabrikam) = (tenant(), tenant());
    let ann = DirectoryUser::member(&contoso, "ann@contoso.com", "Ann Lee");
    emulator.add_directory_user(&ann);
    assert_eq!(
        emulator.graph_url(),
        format!("{}/graph", emulator.base_url())
    );
    assert_eq!(
        emulator.graph_scope(),
        format!("{}/.default", emulator.graph_url())
    );

    let token = graph_token(&emulator, &contoso).await;
    let granted = claims(&token);
    assert_eq!(granted["aud"], emulator.graph_url());
    assert_eq!(granted["tid"], contoso.as_str());
    assert_eq!(granted["appid"], common::APP_ID);
    assert_eq!(granted["roles"].as_array().unwrap().len(), 4, "{granted}");
    let answer = graph_get(&emulator, &format!("users/{}", ann.id), &token).await;
    assert_eq!(answer.status, 200, "{:#}", answer.body);
    assert_eq!(answer.body["id"], ann.id.as_str());

    // A Bot Connector token is for another audience.
    let connector = bot_token(&emulator).await;
    assert_eq!(claims(&connector)["aud"], "https://api.botframework.com");
    let refused = graph_get(&emulator, &format!("users/{}", ann.id), &connector).await;
    assert_graph_error(&refused, 401, "InvalidAuthenticationToken");
    // No token, or one the endpoint never issued.
    let url = format!("{}/v1.0/users/{}", emulator.graph_url(), ann.id);
    let none = call(reqwest::Method::GET, &url, None, None).await;
    assert_graph_error(&none, 401, "InvalidAuthenticationToken");
    let forged = graph_get(&emulator, &format!("users/{}", ann.id), "e30.e30.e30").await;
    assert_graph_error(&forged, 401, "InvalidAuthenticationToken");

    // Another tenant's token: Graph answers from that tenant's directory, where Ann is not.
    let other = graph_token(&emulator, &fabrikam).await;
    let missing = graph_get(&emulator, &format!("users/{}", ann.id), &other).await;
    assert_graph_error(&missing, 404, "Request_ResourceNotFound");
    let missing = graph_get(&emulator, "users/ann@contoso.com", &other).await;
    assert_graph_error(&missing, 404, "Request_ResourceNotFound");

    // And the Bot Connector does not take a Graph token.
    let user = TeamsUser::random();
    let service_url = emulator.service_url(&user.tenant_id);
    let chat = emulator.personal_conversation_id(&user);
    assert_eq!(
        send_text(&service_url, &chat, &token, "hi").await.status,
        401
    );

    // The log names each Graph call and the tenant of the token it carried.
    let graph: Vec<_> = emulator
        .requests()
        .into_iter()
        .filter(|request| request.operation == Operation::GraphGetUser)
        .collect();
    assert_eq!(graph.len(), 6);
    assert_eq!(graph[0].tenant_id.as_deref(), Some(contoso.as_str()));
    assert_eq!((graph[0].status, graph[0].had_authorization), (200, true));
    assert_eq!(
        graph[1].tenant_id, None,
        "a Bot Connector token has no Graph tenant"
    );
    assert_eq!(graph[4].tenant_id.as_deref(), Some(fabrikam.as_str()));
    assert_eq!(
        graph[4].error_code.as_deref(),
        Some("Request_ResourceNotFound")
    );
    let tokens = emulator
        .requests()
        .into_iter()
        .filter(|request| request.operation == Operation::GraphToken)
        .count();
    assert_eq!(tokens, 2);
    let stats = emulator.stats();
    assert_eq!((stats.graph_token_issues, stats.token_issues), (2, 1));
    assert_eq!(stats.graph_requests, 6);
    assert!(
        !stats.tenants.contains_key(&contoso),
        "Graph is not Bot Connector traffic"
    );
}

#[tokio::test]
async fn users_are_found_by_id_by_upn_even_one_starting_with_a_dollar_and_by_mail() {
    let emulator = start(no_limits()).await;
    let contoso = tenant();
    let ann = DirectoryUser::member(&contoso, "ann@contoso.onmicrosoft.com", "Ann Lee")
        .with_mail("ann.lee@contoso.com");
    let admin = DirectoryUser::member(&contoso, "$admin@contoso.onmicrosoft.com", "Admin");
    emulator.add_directory_user(&ann);
    emulator.add_directory_user(&admin);
    let staff = emulator.generate_directory_users(&contoso, "staff", 50);
    let token = graph_token(&emulator, &contoso).await;

    let by_id = graph_get(&emulator, &format!("users/{}", ann.id), &token).await;
    assert_eq!(by_id.status, 200);
    assert_eq!(
        by_id.body["userPrincipalName"],
        "ann@contoso.onmicrosoft.com"
    );
    assert_eq!(by_id.body["mail"], "ann.lee@contoso.com");
    assert_eq!(by_id.body["displayName"], "Ann Lee");
    assert_eq!(by_id.body["givenName"], "Ann");
    assert!(
        by_id.body["@odata.context"]
            .as_str()
            .unwrap()
            .ends_with("/v1.0/$metadata#users/$entity")
    );
    // Graph's default properties leave these out; `$select` asks for them.
    assert!(by_id.body.get("accountEnabled").is_none());
    let selected = graph_get(
        &emulator,
        &format!("users/{}?$select=id,accountEnabled,userType", ann.id),
        &token,
    )
    .await;
    assert_eq!(
        selected.body,
        json!({
            "@odata.context": format!("{}/v1.0/$metadata#users(id,accountEnabled,userType)/$entity", emulator.graph_url()),
            "id": ann.id, "accountEnabled": true, "userType": "Member",
        })
    );
    let unknown_property = graph_get(
        &emulator,
        &format!("users/{}?$select=shoeSize", ann.id),
        &token,
    )
    .await;
    assert_graph_error(&unknown_property, 400, "BadRequest");

    // By UPN, whatever its case, and percent-encoded or not.
    for path in [
        "users/ann@contoso.onmicrosoft.com",
        "users/ANN%40contoso.onmicrosoft.com",
    ] {
        let answer = graph_get(&emulator, path, &token).await;
        assert_eq!(answer.body["id"], ann.id.as_str(), "{path}");
    }
    // A UPN starting with `$` goes in the `users('…')` form.
    for path in [
        "users('$admin@contoso.onmicrosoft.com')",
        "users('%24admin%40contoso.onmicrosoft.com')",
    ] {
        let answer = graph_get(&emulator, path, &token).await;
        assert_eq!(answer.body["id"], admin.id.as_str(), "{path}");
    }

    // By mail, which is not the UPN.
    let by_mail = graph_get(
        &emulator,
        "users?$filter=mail eq 'Ann.Lee@contoso.com'",
        &token,
    )
    .await;
    assert_eq!(by_mail.status, 200, "{:#}", by_mail.body);
    let found = by_mail.body["value"].as_array().unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["id"], ann.id.as_str());
    let upn_is_not_mail = graph_get(
        &emulator,
        "users?$filter=mail eq 'ann@contoso.onmicrosoft.com'",
        &token,
    )
    .await;
    assert_eq!(upn_is_not_mail.body["value"], json!([]));

    // Generated users are found like any other.
    let seventh = staff.directory_user(7);
    let answer = graph_get(
        &emulator,
        &format!("users/{}", seventh.user_principal_name),
        &token,
    )
    .await;
    assert_eq!(answer.body["id"], seventh.id.as_str());
    let filter = format!("users?$filter=mail eq '{}'", seventh.mail.clone().unwrap());
    let answer = graph_get(&emulator, &filter, &token).await;
    assert_eq!(answer.body["value"][0]["id"], seventh.id.as_str());
    let answer = graph_get(
        &emulator,
        &format!("users/{}", staff.aad_object_id(7)),
        &token,
    )
    .await;
    assert_eq!(
        answer.body["userPrincipalName"],
        seventh.user_principal_name.as_str()
    );

    // Nobody by that name.
    for path in [
        "users/nobody@contoso.onmicrosoft.com",
        "users/00000000-0000-4000-8000-000000000000",
    ] {
        let answer = graph_get(&emulator, path, &token).await;
        assert_graph_error(&answer, 404, "Request_ResourceNotFound");
    }
}

#[tokio::test]
async fn the_directory_pages_through_its_enabled_members_leaving_out_the_disabled_and_guests() {
    let emulator = start(no_limits()).await;
    let contoso = tenant();
    let members: Vec<DirectoryUser> = (0..3)
        .map(|i| {
            DirectoryUser::member(&contoso, format!("m{i}@contoso.com"), format!("Member {i}"))
        })
        .collect();
    let left_out = [
        DirectoryUser::member(&contoso, "gone@contoso.com", "Gone").disabled(),
        DirectoryUser::member(&contoso, "guest_fabrikam.com#EXT#@contoso.com", "Guest")
            .with_mail("guest@fabrikam.com")
            .guest(),
        DirectoryUser::member(&contoso, "old-guest@contoso.com", "Old guest")
            .guest()
            .disabled(),
    ];
    // Interleaved, so that the filter has something to leave out on every stretch.
    emulator.add_directory_user(&members[0]);
    emulator.add_directory_user(&left_out[0]);
    emulator.add_directory_user(&members[1]);
    emulator.add_directory_user(&left_out[1]);
    emulator.add_directory_user(&left_out[2]);
    emulator.add_directory_user(&members[2]);
    let staff = emulator.generate_directory_users(&contoso, "staff", 2_500);
    // Another tenant's users are not in this directory.
    emulator.generate_directory_users(&tenant(), "staff", 10);
    let token = graph_token(&emulator, &contoso).await;

    let started = Instant::now();
    let (items, pages) = all_pages(
        &emulator,
        "users?$filter=accountEnabled eq true and userType eq 'Member'&$select=id,displayName,userPrincipalName,mail&$top=999",
        &token,
    )
    .await;
    assert_eq!(pages, 3);
    assert!(started.elapsed() < Duration::from_secs(10));
    let ids: Vec<&str> = items
        .iter()
        .map(|item| item["id"].as_str().unwrap())
        .collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!((ids.len(), unique.len()), (2_503, 2_503));
    for user in &members {
        assert!(unique.contains(user.id.as_str()));
    }
    for user in &left_out {
        assert!(
            !unique.contains(user.id.as_str()),
            "{} is left out",
            user.user_principal_name
        );
    }
    assert!(unique.contains(staff.aad_object_id(2_499).as_str()));
    let mut keys: Vec<&String> = items[0].as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["displayName", "id", "mail", "userPrincipalName"]);

    // Without the filter, everyone; a page is 100 unless `$top` says otherwise.
    let first = graph_get(&emulator, "users?$count=true", &token).await;
    assert_eq!(first.body["value"].as_array().unwrap().len(), 100);
    assert_eq!(first.body["@odata.count"], 2_506);
    assert!(
        first.body["@odata.nextLink"]
            .as_str()
            .unwrap()
            .contains("$skiptoken=")
    );
    for top in ["0", "1000"] {
        let refused = graph_get(&emulator, &format!("users?$top={top}"), &token).await;
        assert_graph_error(&refused, 400, "Request_UnsupportedQuery");
    }
    // A skip token is good for its own listing only.
    let next = first.body["@odata.nextLink"].as_str().unwrap();
    let token_part = next.split("$skiptoken=").nth(1).unwrap();
    let misused = graph_get(
        &emulator,
        &format!("users?$filter=accountEnabled eq true&$skiptoken={token_part}"),
        &token,
    )
    .await;
    assert_graph_error(&misused, 400, "BadRequest");
}

#[tokio::test]
async fn a_group_of_3000_in_nested_overlapping_groups_lists_every_user_exactly_once() {
    let emulator = start(no_limits()).await;
    let contoso = tenant();
    let staff = emulator.generate_directory_users(&contoso, "staff", 3_000);
    let ann = DirectoryUser::member(&contoso, "ann@contoso.com", "Ann");
    let bob = DirectoryUser::member(&contoso, "bob@contoso.com", "Bob");
    emulator.add_directory_user(&ann);
    emulator.add_directory_user(&bob);

    let leaves = DirectoryGroup::new(&contoso, "Leaves")
        .with_user(&ann.id)
        .with_user(&bob.id)
        .with_user(staff.aad_object_id(2_999));
    let mut east = DirectoryGroup::new(&contoso, "East").with_generated(&staff, 2_000..3_000);
    let west = DirectoryGroup::new(&contoso, "West")
        .with_generated(&staff, 1_000..2_200)
        .with_group(&east)
        .with_group(&leaves);
    // East holds West too: a loop, and a user (5) also reached through a range.
    east = east.with_user(staff.aad_object_id(5)).with_group(&west);
    let everyone = DirectoryGroup::new(&contoso, "Everyone")
        .with_generated(&staff, 0..1_200)
        .with_group(&west)
        .with_group(&east)
        .with_user(&ann.id);
    for group in [&leaves, &east, &west, &everyone] {
        emulator.create_group(group);
    }
    let token = graph_token(&emulator, &contoso).await;

    let (items, pages) = all_pages(
        &emulator,
        &format!("groups/{}/transitiveMembers?$top=999", everyone.id),
        &token,
    )
    .await;
    assert_eq!(pages, 4);
    let mut users = HashSet::new();
    let mut groups = HashSet::new();
    for item in &items {
        let id = item["id"].as_str().unwrap().to_owned();
        match item["@odata.type"].as_str().unwrap() {
            "#microsoft.graph.user" => {
                assert!(item["userPrincipalName"].is_string());
                assert!(users.insert(id), "{item} listed twice");
            }
            "#microsoft.graph.group" => assert!(groups.insert(id), "{item} listed twice"),
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(users.len(), 3_002);
    assert_eq!(groups.len(), 3);
    assert!(groups.contains(&leaves.id) && !groups.contains(&everyone.id));
    for index in 0..3_000 {
        assert!(users.contains(&staff.aad_object_id(index)), "user {index}");
    }
    assert!(users.contains(&ann.id) && users.contains(&bob.id));

    // `$select` applies to both kinds; the default page is 100; users only, by cast.
    let page = graph_get(
        &emulator,
        &format!(
            "groups/{}/transitiveMembers?$select=id,displayName",
            west.id
        ),
        &token,
    )
    .await;
    let values = page.body["value"].as_array().unwrap();
    assert_eq!(values.len(), 100);
    assert!(page.body["@odata.nextLink"].is_string());
    assert_eq!(values[0]["@odata.type"], "#microsoft.graph.group");
    assert_eq!(values[0].as_object().unwrap().len(), 3, "{}", values[0]);
    let (only_users, _) = all_pages(
        &emulator,
        &format!(
            "groups/{}/transitiveMembers/microsoft.graph.user?$top=999",
            leaves.id
        ),
        &token,
    )
    .await;
    assert_eq!(only_users.len(), 3);

    let unknown = graph_get(&emulator, "groups/nope/transitiveMembers", &token).await;
    assert_graph_error(&unknown, 404, "Request_ResourceNotFound");
    let other = graph_token(&emulator, &tenant()).await;
    let elsewhere = graph_get(
        &emulator,
        &format!("groups/{}/transitiveMembers", everyone.id),
        &other,
    )
    .await;
    assert_graph_error(&elsewhere, 404, "Request_ResourceNotFound");
}

#[tokio::test]
async fn the_catalog_knows_the_app_by_its_manifest_id_per_tenant() {
    let emulator = start(EmulatorConfig {
        teams_app_id: Some("cf1ba4c7-f94e-4d80-ba90-5594b641a8ee".to_owned()),
        ..no_limits()
    })
    .await;
    let (contoso, fabrikam) = (tenant(), tenant());
    let manifest = emulator.teams_app_id();
    assert_eq!(manifest, "cf1ba4c7-f94e-4d80-ba90-5594b641a8ee");
    let app = emulator.put_app_in_catalog(&contoso);
    assert_ne!(app.id, manifest);
    let filter = format!("appCatalogs/teamsApps?$filter=externalId eq '{manifest}'");

    let listed = graph_get(&emulator, &filter, &graph_token(&emulator, &contoso).await).await;
    assert_eq!(listed.status, 200, "{:#}", listed.body);
    assert_eq!(
        listed.body["value"],
        json!([{ "id": app.id, "externalId": manifest, "displayName": "Herald", "distributionMethod": "organization" }])
    );
    // Fabrikam's admin never uploaded it.
    let absent = graph_get(&emulator, &filter, &graph_token(&emulator, &fabrikam).await).await;
    assert_eq!(absent.status, 200);
    assert_eq!(absent.body["value"], json!([]));
    // Every tenant has its own id for it.
    assert_ne!(emulator.put_app_in_catalog(&fabrikam).id, app.id);
    emulator.remove_catalog_app(&fabrikam, &manifest);
    assert!(emulator.catalog(&fabrikam).is_empty());

    // With the app in every catalog from the start, a tenant nobody set up has it too.
    let everywhere = start(EmulatorConfig {
        app_in_every_catalog: true,
        ..no_limits()
    })
    .await;
    let anyone = tenant();
    let filter = format!(
        "appCatalogs/teamsApps?$filter=externalId eq '{}'",
        everywhere.teams_app_id()
    );
    let listed = graph_get(
        &everywhere,
        &filter,
        &graph_token(&everywhere, &anyone).await,
    )
    .await;
    assert_eq!(
        listed.body["value"][0]["id"],
        everywhere.catalog(&anyone)[0].id.as_str()
    );
}

#[tokio::test]
async fn installing_through_graph_opens_the_chat_and_tells_the_bot_as_teams_does() {
    let (emulator, bot) = start_with_bot(no_limits()).await;
    let contoso = tenant();
    let ann = DirectoryUser::member(&contoso, "ann@contoso.com", "Ann Lee");
    emulator.add_directory_user(&ann);
    let app = emulator.put_app_in_catalog(&contoso);
    let token = graph_token(&emulator, &contoso).await;
    let connector = bot_token(&emulator).await;
    let service_url = emulator.service_url(&contoso);

    // Not installed: Graph says so, and Teams will not open a chat.
    let listed = format!(
        "users/{}/teamwork/installedApps?$expand=teamsApp&$filter=teamsApp/id eq '{}'",
        ann.id, app.id
    );
    let answer = graph_get(&emulator, &listed, &token).await;
    assert_eq!(answer.status, 200, "{:#}", answer.body);
    assert_eq!(answer.body["value"], json!([]));
    let create = json!({
        "isGroup": false, "bot": { "id": format!("28:{}", emulator.app_id()) },
        "members": [{ "id": ann.id }], "tenantId": contoso,
    });
    let refused = call(
        reqwest::Method::POST,
        &format!("{service_url}v3/conversations"),
        Some(&connector),
        Some(&create),
    )
    .await;
    assert_eq!(refused.status, 403);
    assert_eq!(emulator.app_installation(&contoso, &ann.id), None);

    // Install by UPN: 201 with no body; again, 409.
    let installed = graph_install(&emulator, &ann.user_principal_name, &app.id, &token).await;
    assert_eq!(installed.status, 201, "{:#}", installed.body);
    assert_eq!(installed.body, json!(""));
    let again = graph_install(&emulator, &ann.id, &app.id, &token).await;
    assert_graph_error(&again, 409, "Conflict");

    // The user has it, through Graph; the bot hears of it as of any install, signed.
    let installation = emulator.app_installation(&contoso, &ann.id).unwrap();
    assert_eq!(installation.source, InstallSource::Graph);
    assert_eq!(installation.teams_app_id, app.id);
    let conversation = emulator.personal_conversation_id(&ann.teams_user());
    assert_eq!(installation.conversation_id, conversation);
    let heard = deliveries_in(&bot, &conversation, 2).await;
    assert_eq!(heard[0]["type"], "installationUpdate");
    assert_eq!(heard[0]["action"], "add");
    assert_eq!(heard[0]["from"]["aadObjectId"], ann.id.as_str());
    assert_eq!(heard[0]["conversation"]["conversationType"], "personal");
    assert_eq!(heard[1]["type"], "conversationUpdate");
    let through_teams = TeamsUser::random();
    let teams_install = emulator.install_activity(&through_teams);
    let keys = |activity: &Value| {
        let mut keys: Vec<String> = activity.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    assert_eq!(
        keys(&heard[0]),
        keys(&teams_install),
        "the same activity as Teams' own install"
    );

    // Graph lists the installation, by catalog id or by manifest id.
    for filter in [
        format!("teamsApp/id eq '{}'", app.id),
        format!("teamsApp/externalId eq '{}'", app.external_id),
    ] {
        let path = format!(
            "users/{}/teamwork/installedApps?$expand=teamsApp&$filter={filter}",
            ann.id
        );
        let answer = graph_get(&emulator, &path, &token).await;
        let value = answer.body["value"].as_array().unwrap();
        assert_eq!(value.len(), 1, "{filter}");
        assert_eq!(value[0]["id"], installation.installation_id.as_str());
        assert_eq!(value[0]["teamsApp"]["id"], app.id.as_str());
    }

    // Its chat is the Bot Connector's conversation: a send to it lands in the personal chat.
    let chat = graph_get(
        &emulator,
        &format!(
            "users/{}/teamwork/installedApps/{}/chat",
            ann.id,
            common::encoded(&installation.installation_id)
        ),
        &token,
    )
    .await;
    assert_eq!(chat.status, 200, "{:#}", chat.body);
    let chat_id = chat.body["id"].as_str().unwrap();
    assert!(
        chat_id.starts_with("19:") && chat_id.ends_with("@unq.gbl.spaces"),
        "{chat_id}"
    );
    assert_eq!(chat_id, installation.chat_id);
    assert_eq!(chat_id, emulator.graph_chat_id(&ann.teams_user()));
    let sent = send_text(&service_url, chat_id, &connector, "Your report is ready").await;
    assert_eq!(sent.status, 201, "{:#}", sent.body);
    let received = emulator.activities(&conversation);
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].text.as_deref(), Some("Your report is ready"));
    assert_eq!(
        emulator.activities(chat_id).len(),
        1,
        "either id names the chat"
    );
    let encoded = send_text(&service_url, &common::encoded(chat_id), &connector, "again").await;
    assert_eq!(encoded.status, 201);
    // And so does opening it again with the Bot Connector.
    let opened = call(
        reqwest::Method::POST,
        &format!("{service_url}v3/conversations"),
        Some(&connector),
        Some(&create),
    )
    .await;
    assert_eq!(
        (opened.status, opened.body["id"].as_str()),
        (201, Some(conversation.as_str()))
    );

    // Someone who installed it in Teams has it: Graph answers 409 for them.
    let bob = DirectoryUser::member(&contoso, "bob@contoso.com", "Bob");
    emulator.add_directory_user(&bob);
    emulator.install(&bob.teams_user()).await.unwrap();
    assert_eq!(
        emulator.app_installation(&contoso, &bob.id).unwrap().source,
        InstallSource::Teams
    );
    let conflict = graph_install(&emulator, &bob.id, &app.id, &token).await;
    assert_graph_error(&conflict, 409, "Conflict");
    // An app the tenant's catalog lacks is 404, as is a user of another tenant.
    let carol = DirectoryUser::member(&contoso, "carol@contoso.com", "Carol");
    emulator.add_directory_user(&carol);
    let unknown = graph_install(
        &emulator,
        &carol.id,
        "00000000-0000-4000-8000-00000000a999",
        &token,
    )
    .await;
    assert_graph_error(&unknown, 404, "NotFound");
    let elsewhere = graph_install(
        &emulator,
        &carol.id,
        &app.id,
        &graph_token(&emulator, &tenant()).await,
    )
    .await;
    assert_graph_error(&elsewhere, 404, "Request_ResourceNotFound");
    let no_chat = graph_get(
        &emulator,
        &format!(
            "users/{}/teamwork/installedApps/bm90aGluZw==/chat",
            carol.id
        ),
        &token,
    )
    .await;
    assert_graph_error(&no_chat, 404, "NotFound");

    // The log: installs and chats name the personal chat and the token's tenant.
    let requests = emulator.requests();
    let install_log: Vec<_> = requests
        .iter()
        .filter(|request| request.operation == Operation::GraphInstallApp)
        .collect();
    assert_eq!(install_log[0].status, 201);
    assert_eq!(
        install_log[0].conversation_id.as_deref(),
        Some(conversation.as_str())
    );
    assert_eq!(install_log[0].tenant_id.as_deref(), Some(contoso.as_str()));
    assert_eq!(install_log[1].error_code.as_deref(), Some("Conflict"));
}

#[tokio::test]
async fn a_withheld_permission_is_insufficient_privileges() {
    let emulator = start(no_limits()).await;
    let contoso = tenant();
    let ann = DirectoryUser::member(&contoso, "ann@contoso.com", "Ann");
    emulator.add_directory_user(&ann);
    let app = emulator.put_app_in_catalog(&contoso);
    let token = graph_token(&emulator, &contoso).await;

    emulator.withhold_graph_permissions(&contoso, &[GraphPermission::UserReadAll]);
    let refused = graph_get(&emulator, &format!("users/{}", ann.id), &token).await;
    assert_graph_error(&refused, 403, "Authorization_RequestDenied");
    assert_eq!(
        refused.body["error"]["message"],
        "Insufficient privileges to complete the operation."
    );
    let refused = graph_get(&emulator, "users?$filter=mail eq 'ann@contoso.com'", &token).await;
    assert_eq!(refused.status, 403);
    // Calls needing other permissions go on; a new token lists only what is granted.
    let catalog = graph_get(&emulator, "appCatalogs/teamsApps", &token).await;
    assert_eq!(catalog.status, 200);
    let roles = claims(&graph_token(&emulator, &contoso).await)["roles"].clone();
    assert!(
        !roles.as_array().unwrap().contains(&json!("User.Read.All")),
        "{roles}"
    );

    for (permission, path) in [
        (
            GraphPermission::AppCatalogReadAll,
            "appCatalogs/teamsApps".to_owned(),
        ),
        (
            GraphPermission::GroupMemberReadAll,
            "groups/g/transitiveMembers".to_owned(),
        ),
        (
            GraphPermission::TeamsAppInstallationReadWriteSelfForUserAll,
            format!("users/{}/teamwork/installedApps", ann.id),
        ),
    ] {
        emulator.withhold_graph_permissions(&contoso, &[permission]);
        let refused = graph_get(&emulator, &path, &token).await;
        assert_graph_error(&refused, 403, "Authorization_RequestDenied");
    }
    let refused = graph_install(&emulator, &ann.id, &app.id, &token).await;
    assert_graph_error(&refused, 403, "Authorization_RequestDenied");
    assert_eq!(emulator.app_installation(&contoso, &ann.id), None);

    // Another tenant is not affected; granting again restores the calls.
    let fabrikam = tenant();
    let fine = graph_get(
        &emulator,
        "appCatalogs/teamsApps",
        &graph_token(&emulator, &fabrikam).await,
    )
    .await;
    assert_eq!(fine.status, 200);
    emulator.withhold_graph_permissions(&contoso, &[]);
    assert_eq!(
        graph_install(&emulator, &ann.id, &app.id, &token)
            .await
            .status,
        201
    );
}

#[tokio::test]
async fn faults_answer_429_with_retry_after_then_503_then_the_call_succeeds() {
    let emulator = start(no_limits()).await;
    let contoso = tenant();
    let ann = DirectoryUser::member(&contoso, "ann@contoso.com", "Ann");
    emulator.add_directory_user(&ann);
    let token = graph_token(&emulator, &contoso).await;
    emulator.inject_fault(
        Fault::throttled("3")
            .operation(Operation::GraphGetUser)
            .tenant(&contoso),
    );
    emulator.inject_fault(Fault::new(503).operation(Operation::GraphGetUser));
    // A fault naming no operation is for the Bot Connector only.
    emulator.inject_fault(Fault::new(500).times(0));

    let path = format!("users/{}", ann.id);
    let throttled = graph_get(&emulator, &path, &token).await;
    assert_graph_error(&throttled, 429, "TooManyRequests");
    assert_eq!(throttled.headers["retry-after"], "3");
    let unavailable = graph_get(&emulator, &path, &token).await;
    assert_graph_error(&unavailable, 503, "serviceNotAvailable");
    let fine = graph_get(&emulator, &path, &token).await;
    assert_eq!(fine.status, 200);

    let stats = emulator.stats();
    assert_eq!((stats.graph_throttled, stats.throttled), (1, 0));
    let statuses: Vec<(u16, Option<String>)> = emulator
        .requests()
        .into_iter()
        .filter(|request| request.operation == Operation::GraphGetUser)
        .map(|request| (request.status, request.error_code))
        .collect();
    assert_eq!(
        statuses,
        [
            (429, Some("TooManyRequests".to_owned())),
            (503, Some("serviceNotAvailable".to_owned())),
            (200, None)
        ]
    );

    // Graph's token requests have faults of their own, apart from the Bot Connector's.
    emulator.clear_faults();
    emulator.inject_fault(Fault::new(503).operation(Operation::GraphToken));
    let refused = reqwest::Client::new()
        .post(emulator.tenant_token_url(&contoso))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", common::APP_ID),
            ("client_secret", common::APP_PASSWORD),
            ("scope", emulator.graph_scope().as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    bot_token(&emulator).await;
}

#[tokio::test]
async fn graph_has_a_per_tenant_rate_limit_with_retry_after() {
    let emulator = start(EmulatorConfig {
        graph_requests_per_second: 5,
        ..config()
    })
    .await;
    // Six calls must fit in a second for the story to hold; on a machine too busy for that,
    // try again with a fresh tenant rather than fail for the wrong reason.
    let mut outcome = None;
    for _attempt in 0..3 {
        let contoso = tenant();
        let token = graph_token(&emulator, &contoso).await;
        let started = Instant::now();
        let mut answers = Vec::new();
        for _ in 0..6 {
            answers.push(graph_get(&emulator, "appCatalogs/teamsApps", &token).await);
        }
        if started.elapsed() < Duration::from_millis(900) {
            outcome = Some((contoso, answers));
            break;
        }
    }
    let (contoso, answers) = outcome.expect("six calls within a second");
    for answer in &answers[..5] {
        assert_eq!(answer.status, 200);
    }
    assert_graph_error(&answers[5], 429, "TooManyRequests");
    assert_eq!(answers[5].headers["retry-after"], "1");
    // Another tenant has its own budget.
    let other = graph_token(&emulator, &tenant()).await;
    assert_eq!(
        graph_get(&emulator, "appCatalogs/teamsApps", &other)
            .await
            .status,
        200
    );
    // Turned off with the other limits.
    emulator.set_rate_limits(false);
    let token = graph_token(&emulator, &contoso).await;
    assert_eq!(
        graph_get(&emulator, "appCatalogs/teamsApps", &token)
            .await
            .status,
        200
    );
}

/// `GET /_emulator/graph/people`: per tenant, users who never installed the app themselves.
/// The page's list of people who never installed the app themselves: `tenant`'s entry.
async fn people(base: &str, tenant: &str) -> Value {
    let listed: Value = reqwest::get(format!("{base}/_emulator/graph/people"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    listed
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["tenantId"] == tenant)
        .unwrap()
        .clone()
}

#[tokio::test]
async fn scripts_set_up_directories_and_read_installs_over_http() {
    let (emulator, bot) = start_with_bot(no_limits()).await;
    let base = emulator.base_url();
    let http = reqwest::Client::new();
    let contoso = tenant();
    let post = |path: &str, body: Value| http.post(format!("{base}{path}")).json(&body).send();

    let added: Value = post(
        "/_emulator/graph/users",
        json!([
            { "tenantId": contoso, "userPrincipalName": "ann@contoso.com", "mail": "ann@contoso.com", "displayName": "Ann" },
            { "tenantId": contoso, "userPrincipalName": "gone@contoso.com", "displayName": "Gone", "accountEnabled": false },
        ]),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(added["added"], 2);
    let ann_id = added["users"][0]["id"].as_str().unwrap().to_owned();
    let generated: Value = post(
        "/_emulator/graph/users/generate",
        json!({ "tenantId": contoso, "cohort": "staff", "count": 30 }),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let prefix = generated["aadObjectIdPrefix"].as_str().unwrap().to_owned();
    let groups: Value = post(
        "/_emulator/graph/groups",
        json!({ "tenantId": contoso, "displayName": "All", "members": [
            { "user": ann_id },
            { "generated": { "aadObjectIdPrefix": prefix, "from": 0, "to": 30 } },
        ]}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let group_id = groups["groups"][0]["id"].as_str().unwrap().to_owned();
    let app: Value = post("/_emulator/graph/catalog", json!({ "tenantId": contoso }))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(app["externalId"], emulator.teams_app_id());
    let permissions: Value = post(
        "/_emulator/graph/permissions",
        json!({ "tenantId": contoso, "withheld": ["GroupMember.Read.All"] }),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(permissions["withheld"], json!(["GroupMember.Read.All"]));
    assert_eq!(permissions["granted"].as_array().unwrap().len(), 3);

    let token = graph_token(&emulator, &contoso).await;
    let members = graph_get(
        &emulator,
        &format!("groups/{group_id}/transitiveMembers"),
        &token,
    )
    .await;
    assert_eq!(members.status, 403);
    post(
        "/_emulator/graph/permissions",
        json!({ "tenantId": contoso }),
    )
    .await
    .unwrap();
    let (members, _) = all_pages(
        &emulator,
        &format!("groups/{group_id}/transitiveMembers"),
        &token,
    )
    .await;
    assert_eq!(members.len(), 31);

    // The page's list: users who never installed it themselves, with their chats.
    let tenant_entry = people(&base, &contoso).await;
    assert_eq!(tenant_entry["userCount"], 32);
    assert_eq!(tenant_entry["users"].as_array().unwrap().len(), 20);
    assert_eq!(tenant_entry["users"][0]["id"], ann_id.as_str());
    assert_eq!(tenant_entry["users"][0]["installedBy"], Value::Null);
    let ann = TeamsUser::new(&contoso, &ann_id, "Ann");
    assert_eq!(
        tenant_entry["users"][0]["conversationId"],
        emulator.personal_conversation_id(&ann)
    );

    // Installed through Graph: still listed, now marked; the installation reads back.
    let app_id = app["id"].as_str().unwrap();
    assert_eq!(
        graph_install(&emulator, &ann_id, app_id, &token)
            .await
            .status,
        201
    );
    let installation: Value = http
        .get(format!(
            "{base}/_emulator/graph/installation?tenantId={contoso}&aadObjectId={ann_id}"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(installation["source"], "graph");
    assert!(installation["chatId"].as_str().unwrap().starts_with("19:"));
    let users = people(&base, &contoso).await["users"].clone();
    assert_eq!(users[0]["installedBy"], "graph");
    deliveries_in(&bot, &emulator.personal_conversation_id(&ann), 2).await;

    // Installed by the user in Teams: no longer whom the list is for.
    let first_generated = TeamsUser::new(&contoso, format!("{prefix}{:012x}", 0), "");
    emulator.install(&first_generated).await.unwrap();
    let users = people(&base, &contoso).await["users"].clone();
    assert!(
        users
            .as_array()
            .unwrap()
            .iter()
            .all(|user| user["id"] != first_generated.aad_object_id.as_str())
    );
    let missing = http
        .get(format!(
            "{base}/_emulator/graph/installation?tenantId={contoso}&aadObjectId=nobody"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    let info: Value = http
        .get(format!("{base}/_emulator/info"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["graphUrl"], emulator.graph_url());
    assert_eq!(info["graphScope"], emulator.graph_scope());
    assert_eq!(info["teamsAppId"], emulator.teams_app_id());
}

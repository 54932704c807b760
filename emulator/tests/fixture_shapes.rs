//! What "Teams" sends looks like what Teams sends: every field of the captured payloads in
//! `fixtures/` is present in the generated activity, with values of the same kind.

mod common;

use std::collections::BTreeSet;

use common::{config, start};
use herald_emulator::{TeamsTeam, TeamsUser};
use serde_json::{Value, json};

/// Every key path in `value` (`a.b`, with `[]` for array elements), paired with the JSON
/// kind found there.
fn shape(value: &Value, prefix: &str, out: &mut BTreeSet<(String, &'static str)>) {
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    if !prefix.is_empty() {
        out.insert((prefix.to_owned(), kind));
    }
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                shape(child, &path, out);
            }
        }
        Value::Array(items) => {
            for item in items {
                shape(item, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

fn fixture(name: &str) -> Value {
    let path = format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Fails listing whatever the fixture has that `generated` lacks, except `allowed` paths.
fn assert_covers(name: &str, generated: &Value, allowed: &[&str]) {
    let mut real = BTreeSet::new();
    shape(&fixture(name), "", &mut real);
    let mut ours = BTreeSet::new();
    shape(generated, "", &mut ours);
    let missing: Vec<_> = real
        .iter()
        .filter(|(path, _)| !allowed.contains(&path.as_str()))
        // Sentry's capture has `isGroup` as a string, a quirk of their fixture.
        .filter(|(path, kind)| !(path == "conversation.isGroup" && *kind == "string"))
        .filter(|entry| !ours.contains(*entry))
        .collect();
    assert!(
        missing.is_empty(),
        "{name}: generated activity lacks {missing:?}\n{generated:#}"
    );
}

#[tokio::test]
async fn personal_activities_have_the_fields_of_captured_ones() {
    let emulator = start(config()).await;
    let user = TeamsUser::random();

    let added = emulator.bot_added_activity(&user);
    // The docs' sample lists the user among the members added too; captured ones do not.
    assert_covers(
        "msdocs_conversationUpdate_membersAdded_bot_personal.json",
        &added,
        &["membersAdded[].aadObjectId"],
    );
    assert_covers(
        "sentry_conversationUpdate_membersAdded_bot_personal.json",
        &added,
        &[],
    );
    assert_eq!(added["membersAdded"][0]["id"], added["recipient"]["id"]);

    let message = emulator.message_activity(&user, "hello");
    assert_covers("msdocs_message_personal.json", &message, &[]);
    assert_eq!(message["attachments"][0]["contentType"], "text/html");
    assert!(
        message["id"]
            .as_str()
            .unwrap()
            .chars()
            .all(|c| c.is_ascii_digit())
    );

    let install = emulator.install_activity(&user);
    assert_eq!(install["type"], "installationUpdate");
    assert_eq!(install["action"], "add");
    assert_eq!(emulator.uninstall_activity(&user)["action"], "remove");
    assert_ne!(install["id"], added["id"]);

    for activity in [&added, &message, &install] {
        assert_eq!(activity["channelId"], "msteams");
        assert_eq!(activity["conversation"]["conversationType"], "personal");
        assert_eq!(
            activity["conversation"]["tenantId"],
            user.tenant_id.as_str()
        );
        assert_eq!(
            activity["channelData"]["tenant"]["id"],
            user.tenant_id.as_str()
        );
        assert_eq!(activity["from"]["aadObjectId"], user.aad_object_id.as_str());
        assert!(activity["from"]["id"].as_str().unwrap().starts_with("29:"));
        assert_eq!(
            activity["recipient"]["id"],
            format!("28:{}", common::APP_ID)
        );
        assert!(
            activity["conversation"]["id"]
                .as_str()
                .unwrap()
                .starts_with("a:")
        );
        assert_eq!(
            activity["serviceUrl"],
            format!("{}/amer/{}/", emulator.base_url(), user.tenant_id)
        );
        let timestamp = activity["timestamp"].as_str().unwrap();
        time::OffsetDateTime::parse(timestamp, &time::format_description::well_known::Rfc3339)
            .unwrap();
    }
}

#[tokio::test]
async fn team_activities_have_the_fields_of_captured_ones() {
    let emulator = start(config()).await;
    let installer = TeamsUser::random();
    let team = TeamsTeam::random_in(&installer.tenant_id);

    let install = emulator.team_install_activity(&team, &installer);
    assert_covers("sentry_installationUpdate_add_team.json", &install, &[]);
    assert_covers("msdocs_installationUpdate_add_channel.json", &install, &[]);

    let added = emulator.team_bot_added_activity(&team, &installer);
    assert_covers(
        "msdocs_conversationUpdate_membersAdded_bot_team.json",
        &added,
        &[],
    );
    assert_covers(
        "sentry_conversationUpdate_membersAdded_bot_team.json",
        &added,
        &[],
    );
    let team_id = emulator.team_conversation_id(&team);
    assert!(team_id.starts_with("19:") && team_id.ends_with("@thread.tacv2"));
    assert_eq!(added["channelData"]["team"]["id"], team_id.as_str());
    assert_eq!(
        added["channelData"]["team"]["aadGroupId"],
        team.aad_group_id.as_str()
    );
}

#[tokio::test]
async fn card_actions_and_read_receipts_have_the_fields_of_captured_ones() {
    let emulator = start(config()).await;
    let user = TeamsUser::random().in_time_zone("America/Los_Angeles");
    let card_message = "1767765488332";

    let invoke = emulator.card_action_activity(
        &user,
        card_message,
        "feedback",
        json!({ "feedback": "test invokes" }),
    );
    // The action's title comes from the stored card (there is none here); `legacy.replyToId`
    // is an id of Teams' own that no bot reads.
    assert_covers(
        "teams-net_invoke-adaptiveCard-action_personal.json",
        &invoke,
        &[
            "value.action.title",
            "channelData.legacy",
            "channelData.legacy.replyToId",
        ],
    );
    assert_eq!(invoke["type"], "invoke");
    assert_eq!(invoke["name"], "adaptiveCard/action");
    assert_eq!(invoke["replyToId"], card_message);
    assert_eq!(invoke["value"]["action"]["type"], "Action.Execute");
    assert_eq!(invoke["value"]["action"]["verb"], "feedback");
    assert_eq!(invoke["value"]["trigger"], "manual");
    assert_eq!(invoke["localTimezone"], "America/Los_Angeles");
    assert!(invoke["id"].as_str().unwrap().starts_with("f:"));

    let receipt = emulator.read_receipt_activity(&user, card_message);
    assert_covers("msdocs_event_readReceipt_personal.json", &receipt, &[]);
    assert_eq!(receipt["type"], "event");
    assert_eq!(receipt["name"], "application/vnd.microsoft.readReceipt");
    assert_eq!(
        receipt["value"],
        json!({ "lastReadMessageId": card_message })
    );

    // The only captured card-action message is from a channel; its fields but the channel's.
    let submit = emulator.card_submit_activity(&user, card_message, json!({ "property": "x" }));
    assert_covers(
        "msdocs_message_cardAction-messageBack_channel.json",
        &submit,
        &[
            "channelData.channel",
            "channelData.channel.id",
            "channelData.team",
            "channelData.team.id",
        ],
    );
    assert_eq!(submit["type"], "message");
    assert_eq!(submit["text"], "");
    assert_eq!(submit["value"], json!({ "property": "x" }));
    assert_eq!(submit["replyToId"], card_message);

    for activity in [&invoke, &receipt, &submit] {
        assert_eq!(activity["conversation"]["conversationType"], "personal");
        assert_eq!(
            activity["conversation"]["id"],
            emulator.personal_conversation_id(&user).as_str()
        );
        assert_eq!(activity["from"]["aadObjectId"], user.aad_object_id.as_str());
        assert_eq!(
            activity["serviceUrl"],
            format!("{}/amer/{}/", emulator.base_url(), user.tenant_id)
        );
    }
}

#[tokio::test]
async fn a_roster_page_has_the_fields_of_the_documented_one() {
    let (emulator, _bot) = common::start_with_bot(config()).await;
    let installer = TeamsUser::random();
    let team = TeamsTeam::random_in(&installer.tenant_id);
    emulator.install_team(&team, &installer).await.unwrap();
    emulator.generate_team_members(&team, 60);
    let token = common::bot_token(&emulator).await;
    let url = format!(
        "{}v3/conversations/{}/pagedmembers?pageSize=50",
        emulator.service_url(&team.tenant_id),
        common::encoded(&emulator.team_conversation_id(&team))
    );
    let page = common::call(reqwest::Method::GET, &url, Some(&token), None).await;
    assert_eq!(page.status, 200);
    // The docs' sample calls the object id `objectId`; the SDKs (botbuilder's
    // `TeamsChannelAccount`, teams.ts' `Account`) read `aadObjectId`, which is served.
    assert_covers(
        "msdocs_pagedmembers_response.json",
        &page.body,
        &["members[].objectId"],
    );
    let generated = &page.body["members"][1];
    assert!(generated["aadObjectId"].is_string());
    assert!(generated["id"].as_str().unwrap().starts_with("29:"));
}

#[tokio::test]
async fn graph_answers_have_the_fields_of_documented_ones() {
    let (emulator, _bot) = common::start_with_bot(config()).await;
    let tenant = uuid::Uuid::new_v4().to_string();
    let user = herald_emulator::DirectoryUser::member(&tenant, "ann@contoso.com", "Ann Lee");
    emulator.add_directory_user(&user);
    let app = emulator.put_app_in_catalog(&tenant);
    let token = common::graph_token(&emulator, &tenant).await;

    let catalog = common::graph_get(
        &emulator,
        &format!(
            "appCatalogs/teamsApps?$filter=externalId eq '{}'",
            app.external_id
        ),
        &token,
    )
    .await;
    assert_covers(
        "msgraph_appcatalogs-list-teamsapps_filter-externalId_response.json",
        &catalog.body,
        &[],
    );

    // The install, as the docs write it (the app's id made this tenant's).
    let documented = std::fs::read_to_string(format!(
        "{}/fixtures/msgraph_userteamwork-post-installedapps_request_response.http.txt",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let (request, response) = documented.split_once("HTTP/1.1 ").unwrap();
    let body: Value = serde_json::from_str(&request[request.find('{').unwrap()..]).unwrap();
    let bind = body["teamsApp@odata.bind"].as_str().unwrap();
    let bind = format!("{}/{}", bind.rsplit_once('/').unwrap().0, app.id);
    let url = format!(
        "{}/v1.0/users/{}/teamwork/installedApps",
        emulator.graph_url(),
        user.id
    );
    let installed = common::call(
        reqwest::Method::POST,
        &url,
        Some(&token),
        Some(&json!({ "teamsApp@odata.bind": bind })),
    )
    .await;
    assert!(
        response.starts_with(&installed.status.to_string()),
        "{response}"
    );
    assert_eq!(installed.body, json!(""));

    let listed = common::graph_get(
        &emulator,
        &format!(
            "users/{}/teamwork/installedApps?$expand=teamsApp,teamsAppDefinition&$filter=teamsApp/externalId eq '{}'",
            user.id, app.external_id
        ),
        &token,
    )
    .await;
    assert_covers(
        "msgraph_userteamwork-list-installedapps_filter-externalId_response.json",
        &listed.body,
        &[],
    );
    assert_eq!(
        listed.body["value"][0]["teamsAppDefinition"]["azureADAppId"],
        common::APP_ID
    );

    let installation = listed.body["value"][0]["id"].as_str().unwrap();
    let chat = common::graph_get(
        &emulator,
        &format!(
            "users/{}/teamwork/installedApps/{}/chat",
            user.id,
            common::encoded(installation)
        ),
        &token,
    )
    .await;
    assert_covers(
        "msgraph_userscopeteamsappinstallation-get-chat_response.json",
        &chat.body,
        &[],
    );

    let missing = common::graph_get(&emulator, "users/nobody@contoso.com", &token).await;
    assert_covers("msgraph_error_response.json", &missing.body, &[]);
}

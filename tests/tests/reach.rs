//! Reaching people who never installed the app, through Microsoft Graph (the emulator's Graph
//! stand-in): a user named by sign-in name or mail is looked up, the app installed for them
//! (with `HERALD_PROACTIVE_INSTALL=on`) and the chat it opened used; Graph is asked once per
//! fact, throttling and outages are waited out, a missing permission fails the tenant's jobs
//! at once with the reason; group and directory audiences reach every member once.

use std::time::Duration;

use herald_emulator::{
    DirectoryGroup, DirectoryUser, Fault, GraphPermission, InstallSource, Operation,
    RecordedRequest,
};
use herald_tests::{StackOptions, TestStack, wait_until};
use serde_json::{Value, json};

/// A stack whose dispatcher installs the app for users Teams will not open a chat with when
/// `install` is set. Install reminders come 2 s after an install, so a test that waits longer
/// sees that an install Herald made is greeted with nothing.
async fn reach_stack(install: bool, options: StackOptions) -> TestStack {
    let value = if install { "on" } else { "off" };
    TestStack::start_with(options.with_env("HERALD_PROACTIVE_INSTALL", value)).await
}

/// A new tenant whose catalog has the app, with one user in its directory who never
/// installed it; their mail differs from their sign-in name.
fn tenant_with_a_newcomer(stack: &TestStack) -> (String, DirectoryUser) {
    let tenant = uuid::Uuid::new_v4().to_string();
    stack.emulator.put_app_in_catalog(&tenant);
    let user = newcomer(stack, &tenant, "ann");
    (tenant, user)
}

fn newcomer(stack: &TestStack, tenant: &str, name: &str) -> DirectoryUser {
    let user = DirectoryUser::member(tenant, format!("{name}@{tenant}.example"), name)
        .with_mail(format!("{name}.smith@mail.{tenant}.example"));
    stack.emulator.add_directory_user(&user);
    user
}

/// The Graph calls the emulator answered (tokens left out), in order.
fn graph_calls(stack: &TestStack) -> Vec<RecordedRequest> {
    stack
        .emulator
        .requests()
        .into_iter()
        .filter(|r| r.operation.is_graph())
        .collect()
}

fn count(calls: &[RecordedRequest], operation: Operation) -> usize {
    calls.iter().filter(|r| r.operation == operation).count()
}

/// Queues a notification and answers its id.
async fn notify(stack: &TestStack, user: Value, text: &str) -> String {
    let body = json!({"to": {"user": user}, "message": {"text": text}});
    let (status, accepted) = stack.api().create(&body, None).await;
    assert_eq!(status, 202, "{accepted}");
    accepted["id"].as_str().unwrap().to_owned()
}

/// Waits for the notification to fail, and answers why (its `lastError`).
async fn failure_reason(stack: &TestStack, id: &str) -> String {
    let record = stack.api().wait_for_status(id, "failed").await;
    record["lastError"].as_str().unwrap_or_default().to_owned()
}

fn texts(stack: &TestStack, user: &DirectoryUser) -> Vec<String> {
    let chat = stack.emulator.personal_conversation_id(&user.teams_user());
    stack
        .emulator
        .activities(&chat)
        .into_iter()
        .filter_map(|a| a.text)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_newcomer_named_by_sign_in_name_gets_the_app_and_one_message_then_is_reached_without_graph()
 {
    let stack = reach_stack(true, StackOptions::default()).await;
    let (tenant, ann) = tenant_with_a_newcomer(&stack);

    // Named as the directory knows her, in another case: names compare without it.
    let upn = ann.user_principal_name.to_uppercase();
    let first = notify(
        &stack,
        json!({"tenantId": tenant, "userPrincipalName": upn}),
        "Welcome aboard",
    )
    .await;
    let record = stack.api().wait_for_status(&first, "delivered").await;
    let chat = stack.emulator.personal_conversation_id(&ann.teams_user());
    // Teams' id of the chat, or Graph's: the emulator, like Teams, takes either.
    let graph_chat = stack.emulator.graph_chat_id(&ann.teams_user());
    assert!(
        record["conversationId"] == chat.as_str()
            || record["conversationId"] == graph_chat.as_str(),
        "{record}"
    );
    let installed = stack
        .emulator
        .app_installation(&tenant, &ann.id)
        .expect("the app is installed for her");
    assert_eq!(installed.source, InstallSource::Graph);
    let calls = graph_calls(&stack);
    for operation in [
        Operation::GraphGetUser,
        Operation::GraphListCatalogApps,
        Operation::GraphInstallApp,
        Operation::GraphGetInstallationChat,
    ] {
        assert_eq!(count(&calls, operation), 1, "{operation:?}: {calls:#?}");
    }

    // The same name again: the chat is stored, Graph is not asked.
    let second = notify(
        &stack,
        json!({"tenantId": tenant, "userPrincipalName": ann.user_principal_name}),
        "Your badge is ready",
    )
    .await;
    stack.api().wait_for_status(&second, "delivered").await;
    assert_eq!(graph_calls(&stack).len(), calls.len(), "no Graph call");

    // By mail, which is not her sign-in name: one lookup by `mail`, no install.
    let third = notify(
        &stack,
        json!({"tenantId": tenant, "email": ann.mail.clone().unwrap()}),
        "Lunch is on us",
    )
    .await;
    stack.api().wait_for_status(&third, "delivered").await;
    let after = graph_calls(&stack);
    assert_eq!(count(&after, Operation::GraphListUsers), 1, "{after:#?}");
    assert_eq!(count(&after, Operation::GraphInstallApp), 1);

    // The install Teams told the bot of was Herald's: no welcome, no reminder (its delay,
    // 2 s, has passed by the time this looks).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        texts(&stack, &ann),
        ["Welcome aboard", "Your badge is ready", "Lunch is on us"]
    );
    stack.stop().await;
}

/// Once her name is resolved, a job that names her by it keeps her clock: the quiet hours
/// stored under her object id hold it, as they hold one that names her by that id.
#[tokio::test(flavor = "multi_thread")]
async fn a_user_named_by_sign_in_name_keeps_the_quiet_hours_stored_under_her_object_id() {
    let stack = reach_stack(true, StackOptions::default()).await;
    let (tenant, ann) = tenant_with_a_newcomer(&stack);
    let by_name = json!({"tenantId": tenant, "userPrincipalName": ann.user_principal_name});
    let first = notify(&stack, by_name.clone(), "Welcome aboard").await;
    stack.api().wait_for_status(&first, "delivered").await;

    let now = time::OffsetDateTime::now_utc();
    let hh_mm = time::macros::format_description!("[hour]:[minute]");
    let quiet = json!({
        "timeZone": "Etc/UTC",
        "quietHours": {
            "from": (now - Duration::from_secs(3600)).format(hh_mm).unwrap(),
            "to": (now + Duration::from_secs(3 * 3600)).format(hh_mm).unwrap(),
        },
    });
    let (status, profile) = stack.api().patch_user(&tenant, &ann.id, &quiet).await;
    assert_eq!(status, 200, "{profile}");

    let second = notify(&stack, by_name, "Your badge is ready").await;
    let record = stack.api().wait_for_status(&second, "scheduled").await;
    let deliver_at = time::OffsetDateTime::parse(
        record["deliverAt"].as_str().expect("it says when it goes"),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(
        deliver_at > now + Duration::from_secs(2 * 3600),
        "it waits for her quiet hours to end: {record}"
    );
    assert_eq!(texts(&stack, &ann), ["Welcome aboard"]);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_installs_off_a_newcomer_fails_saying_the_app_is_not_installed_and_how_to_install_it()
{
    let stack = reach_stack(false, StackOptions::default()).await;
    let (tenant, ann) = tenant_with_a_newcomer(&stack);
    let id = notify(
        &stack,
        json!({"tenantId": tenant, "aadObjectId": ann.id}),
        "Hello",
    )
    .await;
    let reason = failure_reason(&stack, &id).await;
    assert!(reason.contains("not installed"), "{reason}");
    assert!(reason.contains("HERALD_PROACTIVE_INSTALL=on"), "{reason}");
    assert_eq!(count(&graph_calls(&stack), Operation::GraphInstallApp), 0);
    assert!(stack.emulator.app_installation(&tenant, &ann.id).is_none());
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_who_removed_the_app_is_never_installed_for_again() {
    let stack = reach_stack(true, StackOptions::default()).await;
    let (tenant, ann) = tenant_with_a_newcomer(&stack);
    let teams_user = ann.teams_user();
    let chat = stack.install(&teams_user).await;
    stack.emulator.uninstall(&teams_user).await.unwrap();
    wait_until(
        "the removal to be recorded",
        Duration::from_secs(10),
        || async {
            let address = stack.conversations.address(&chat).await.unwrap();
            address.is_some_and(|a| a.removed_reason.is_some())
        },
    )
    .await;

    for user in [
        json!({"tenantId": tenant, "aadObjectId": ann.id}),
        json!({"tenantId": tenant, "userPrincipalName": ann.user_principal_name}),
    ] {
        let id = notify(&stack, user, "Come back?").await;
        let reason = failure_reason(&stack, &id).await;
        assert!(reason.contains("removed"), "{reason}");
    }
    assert_eq!(count(&graph_calls(&stack), Operation::GraphInstallApp), 0);
    assert!(stack.emulator.app_installation(&tenant, &ann.id).is_none());
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn graph_throttling_then_an_outage_are_waited_out_and_the_app_is_installed_once() {
    let stack = reach_stack(true, StackOptions::default()).await;
    let (tenant, ann) = tenant_with_a_newcomer(&stack);
    let install = |status, retry_after: Option<&str>| Fault {
        tenant_id: Some(tenant.clone()),
        operation: Some(Operation::GraphInstallApp),
        status,
        retry_after: retry_after.map(str::to_owned),
        times: 1,
        ..Fault::default()
    };
    stack.emulator.inject_fault(install(429, Some("2")));
    stack.emulator.inject_fault(install(503, None));

    let id = notify(
        &stack,
        json!({"tenantId": tenant, "aadObjectId": ann.id}),
        "Hello at last",
    )
    .await;
    stack.api().wait_for_status(&id, "delivered").await;
    let installs: Vec<RecordedRequest> = graph_calls(&stack)
        .into_iter()
        .filter(|r| r.operation == Operation::GraphInstallApp)
        .collect();
    let statuses: Vec<u16> = installs.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 503, 201], "one install in the end");
    let waited = installs[1].at - installs[0].at;
    assert!(
        waited >= time::Duration::seconds(2),
        "the next call came {waited} after a 429 with Retry-After: 2"
    );
    assert_eq!(texts(&stack, &ann), ["Hello at last"]);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_graph_permission_fails_every_job_of_the_tenant_at_once_after_one_call() {
    let stack = reach_stack(true, StackOptions::default()).await;
    let (tenant, _) = tenant_with_a_newcomer(&stack);
    stack.emulator.withhold_graph_permissions(
        &tenant,
        &[GraphPermission::TeamsAppInstallationReadWriteSelfForUserAll],
    );
    let users: Vec<DirectoryUser> = (0..6)
        .map(|i| newcomer(&stack, &tenant, &format!("user{i}")))
        .collect();

    // Five at once, then one more after the first refusal.
    let mut ids = Vec::new();
    for user in &users[..5] {
        ids.push(
            notify(
                &stack,
                json!({"tenantId": tenant, "aadObjectId": user.id}),
                "Hi",
            )
            .await,
        );
    }
    let names_the_permission =
        |reason: &str| reason.contains("TeamsAppInstallation.ReadWriteSelfForUser.All");
    for id in &ids {
        let reason = failure_reason(&stack, id).await;
        assert!(names_the_permission(&reason), "{reason}");
    }
    let late = json!({"tenantId": tenant, "aadObjectId": users[5].id});
    let late = notify(&stack, late, "Hi").await;
    let reason = failure_reason(&stack, &late).await;
    assert!(names_the_permission(&reason), "{reason}");
    let refused: Vec<RecordedRequest> = graph_calls(&stack)
        .into_iter()
        .filter(|r| r.status == 403)
        .collect();
    assert_eq!(
        refused.len(),
        1,
        "one refused call, not one per job: {refused:#?}"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn each_tenant_s_graph_calls_carry_that_tenant_s_token() {
    let stack = reach_stack(true, StackOptions::default()).await;
    let (first_tenant, ann) = tenant_with_a_newcomer(&stack);
    let (second_tenant, bob) = tenant_with_a_newcomer(&stack);
    let mut ids = Vec::new();
    for (tenant, user) in [(&first_tenant, &ann), (&second_tenant, &bob)] {
        let to = json!({"tenantId": tenant, "userPrincipalName": user.user_principal_name});
        ids.push(notify(&stack, to, "Hello").await);
    }
    for id in &ids {
        stack.api().wait_for_status(id, "delivered").await;
    }
    // The emulator answers a Graph call from the directory of the token's tenant, and
    // records that tenant: every call about a tenant's user carried that tenant's token.
    let calls = graph_calls(&stack);
    for (tenant, user) in [(&first_tenant, &ann), (&second_tenant, &bob)] {
        let about: Vec<&RecordedRequest> = calls
            .iter()
            .filter(|r| r.path.contains(&user.id) || r.path.contains(&user.user_principal_name))
            .collect();
        assert!(about.len() >= 3, "{about:#?}");
        assert!(
            about
                .iter()
                .all(|r| r.tenant_id.as_deref() == Some(tenant.as_str())),
            "{about:#?}"
        );
    }
    // One token per tenant, each asked of that tenant's token endpoint.
    let tokens: Vec<RecordedRequest> = stack
        .emulator
        .requests()
        .into_iter()
        .filter(|r| r.operation == Operation::GraphToken)
        .collect();
    let mut token_tenants: Vec<_> = tokens.iter().filter_map(|r| r.tenant_id.clone()).collect();
    token_tenants.sort();
    let mut expected = vec![first_tenant.clone(), second_tenant.clone()];
    expected.sort();
    assert_eq!(token_tenants, expected, "{tokens:#?}");
    stack.stop().await;
}

/// A stack that sends as fast as it can, Graph paced far above its own limit (which the
/// emulator does not enforce without limits).
fn fast() -> StackOptions {
    StackOptions::unlimited().with_env("HERALD_GRAPH_RATE", "2000")
}

async fn broadcast(stack: &TestStack, id: &str, audience: Value) -> Value {
    let body = json!({"id": id, "audience": audience, "message": {"text": "All hands at noon"}});
    let (status, accepted) = stack
        .api()
        .call(reqwest::Method::POST, "/broadcasts", Some(&body))
        .await;
    assert_eq!(status, 202, "{accepted}");
    let path = format!("/broadcasts/{id}");
    wait_until(
        &format!("broadcast {id} to complete"),
        Duration::from_secs(180),
        || async {
            let (_, record) = stack.api().call(reqwest::Method::GET, &path, None).await;
            record["status"] == "completed"
        },
    )
    .await;
    stack.api().call(reqwest::Method::GET, &path, None).await.1
}

#[tokio::test(flavor = "multi_thread")]
async fn a_group_of_3000_with_nested_groups_reaches_every_member_once() {
    let stack = reach_stack(true, fast()).await;
    let tenant = uuid::Uuid::new_v4().to_string();
    stack.emulator.put_app_in_catalog(&tenant);
    // 3,000 staff who have the app, in three groups that overlap and nest (in a circle), and
    // five newcomers without it, whom Herald installs the app for.
    let staff = stack
        .emulator
        .generate_tenant_users(&tenant, "staff", 3_000);
    let newcomers: Vec<DirectoryUser> = (0..5)
        .map(|i| newcomer(&stack, &tenant, &format!("new{i}")))
        .collect();
    let mut all = DirectoryGroup::new(&tenant, "Everyone");
    let mut sales = DirectoryGroup::new(&tenant, "Sales");
    let mut emea = DirectoryGroup::new(&tenant, "Sales EMEA").with_generated(&staff, 2_000..3_000);
    for user in &newcomers {
        emea = emea.with_user(&user.id);
    }
    sales = sales.with_generated(&staff, 1_000..2_200).with_group(&emea);
    all = all.with_generated(&staff, 0..1_200).with_group(&sales);
    emea = emea.with_group(&all);
    for group in [&all, &sales, &emea] {
        stack.emulator.create_group(group);
    }
    let before = stack.emulator.received_counts(Some(&tenant));

    let done = broadcast(
        &stack,
        "all-hands",
        json!({"group": {"tenantId": tenant, "groupId": all.id}}),
    )
    .await;
    assert_eq!(done["counts"]["total"], 3_005, "{done}");
    assert_eq!(done["counts"]["delivered"], 3_005, "{done}");
    assert_eq!(
        done["audience"],
        json!({"kind": "group", "tenantId": tenant, "groupId": all.id})
    );
    // One message in each of 3,005 chats, and nothing else (no welcome for the installs).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = stack.emulator.received_counts(Some(&tenant));
    assert_eq!(after.activities - before.activities, 3_005);
    for user in staff.users().step_by(101) {
        let chat = stack.emulator.personal_conversation_id(&user);
        assert_eq!(
            stack.emulator.received_count(&chat),
            1,
            "{}",
            user.aad_object_id
        );
    }
    for user in &newcomers {
        assert_eq!(texts(&stack, user), ["All hands at noon"]);
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_directory_audience_is_every_enabled_user_of_the_tenant() {
    let stack = reach_stack(true, fast()).await;
    let tenant = uuid::Uuid::new_v4().to_string();
    stack.emulator.put_app_in_catalog(&tenant);
    let people = stack
        .emulator
        .generate_directory_users(&tenant, "people", 40);
    let gone = DirectoryUser::member(&tenant, format!("gone@{tenant}.example"), "Gone").disabled();
    stack.emulator.add_directory_user(&gone);

    let done = broadcast(
        &stack,
        "directory",
        json!({"tenant": {"tenantId": tenant, "source": "directory"}}),
    )
    .await;
    assert_eq!(done["counts"]["total"], 40, "{done}");
    assert_eq!(done["counts"]["delivered"], 40, "{done}");
    for user in people.users() {
        let chat = stack.emulator.personal_conversation_id(&user);
        assert_eq!(stack.emulator.received_count(&chat), 1);
    }
    let chat = stack.emulator.personal_conversation_id(&gone.teams_user());
    assert_eq!(
        stack.emulator.received_count(&chat),
        0,
        "a disabled account is left out"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_name_fails_saying_the_directory_has_no_such_user() {
    let stack = reach_stack(true, StackOptions::default()).await;
    let (tenant, _) = tenant_with_a_newcomer(&stack);
    let id = notify(
        &stack,
        json!({"tenantId": tenant, "userPrincipalName": "nobody@nowhere.example"}),
        "Hello?",
    )
    .await;
    let reason = failure_reason(&stack, &id).await;
    assert!(
        reason.contains("no user with userPrincipalName"),
        "{reason}"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn first_contacts_beyond_the_tenant_s_graph_pace_wait_their_turn_and_none_fails() {
    // Five Graph calls a second, and a single attempt per job: a job held back by the pace
    // must come back for its turn, not spend its one attempt.
    let options = StackOptions::default()
        .with_env("HERALD_GRAPH_RATE", "5")
        .with_env("HERALD_MAX_ATTEMPTS", "1");
    let stack = reach_stack(true, options).await;
    let (tenant, first) = tenant_with_a_newcomer(&stack);
    let mut newcomers = vec![first];
    newcomers.extend((1..8).map(|i| newcomer(&stack, &tenant, &format!("user{i}"))));
    let mut ids = Vec::new();
    for user in &newcomers {
        ids.push(
            notify(
                &stack,
                json!({"tenantId": tenant, "aadObjectId": user.id}),
                "Hi",
            )
            .await,
        );
    }
    for id in &ids {
        let record = wait_for_end(&stack, id, Duration::from_secs(60)).await;
        assert_eq!(record["status"], "delivered", "{record}");
    }
    // Three calls each and the catalog once, at five a second: never more in any second, so
    // Graph never throttled.
    let calls = graph_calls(&stack);
    assert_eq!(calls.len(), 1 + 3 * newcomers.len(), "{calls:#?}");
    let times: Vec<_> = calls.iter().map(|r| r.at).collect();
    let busiest = herald_tests::busiest(&times, Duration::from_secs(1));
    assert!(busiest <= 6, "{busiest} Graph calls in one second");
    assert_eq!(stack.emulator.stats().graph_throttled, 0);
    stack.stop().await;
}

/// Waits for the notification to end (delivered, failed, expired or cancelled).
async fn wait_for_end(stack: &TestStack, id: &str, within: Duration) -> Value {
    let ended = |record: &Value| {
        ["delivered", "failed", "expired", "cancelled"]
            .contains(&record["status"].as_str().unwrap_or(""))
    };
    wait_until(&format!("notification {id} to end"), within, || async {
        ended(&stack.api().get(id).await.1)
    })
    .await;
    stack.api().get(id).await.1
}

//! Broadcasts end to end: one message to a whole audience, each recipient once, with counts,
//! per-recipient results and exports that agree with what "Teams" (the emulator) received;
//! lists uploaded in parts; bad input refused naming the line or field, creating nothing.

use std::time::Duration;

use herald_emulator::{Fault, Operation, TeamsTeam, TeamsUser};
use herald_tests::{StackOptions, TestStack, events::EventQueue, wait_until};
use serde_json::{Value, json};

/// A stack whose install reminders stay out of the way (installs send a welcome only).
async fn stack() -> TestStack {
    TestStack::start_with(StackOptions {
        reminder_delay: Duration::from_secs(3600),
        ..Default::default()
    })
    .await
}

async fn call(
    stack: &TestStack,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    stack.api().call(method, path, body.as_ref()).await
}

/// Sends an upload; the connection may close before an answer when it is refused unread.
async fn send_upload(
    stack: &TestStack,
    id: &str,
    content_type: &str,
    body: String,
) -> reqwest::Result<reqwest::Response> {
    stack
        .http
        .post(format!(
            "{}/v1/broadcasts/{id}/recipients",
            stack.ingress_url
        ))
        .bearer_auth(herald_tests::API_KEY)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
}

async fn upload(stack: &TestStack, id: &str, content_type: &str, body: String) -> (u16, Value) {
    let response = send_upload(stack, id, content_type, body).await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn export(stack: &TestStack, id: &str, accept: &str) -> String {
    let response = stack
        .http
        .get(format!(
            "{}/v1/broadcasts/{id}/recipients",
            stack.ingress_url
        ))
        .bearer_auth(herald_tests::API_KEY)
        .header("accept", accept)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    response.text().await.unwrap()
}

/// Waits for the broadcast to reach `status`, and answers it.
async fn wait_for_broadcast(stack: &TestStack, id: &str, status: &str, within: Duration) -> Value {
    let path = format!("/broadcasts/{id}");
    wait_until(
        &format!("broadcast {id} to be {status}"),
        within,
        || async { call(stack, reqwest::Method::GET, &path, None).await.1["status"] == status },
    )
    .await;
    call(stack, reqwest::Method::GET, &path, None).await.1
}

/// A team of a new tenant with the app added by its owner, once Herald has recorded the
/// install: the tenant, the owner, the team and its id.
async fn team_with_the_app(stack: &TestStack) -> (String, TeamsUser, TeamsTeam, String) {
    let tenant = uuid::Uuid::new_v4().to_string();
    let owner = TeamsUser::new(&tenant, uuid::Uuid::new_v4().to_string(), "Owner");
    let team = TeamsTeam::random_in(&tenant);
    stack.emulator.install_team(&team, &owner).await.unwrap();
    let team_id = stack.emulator.team_conversation_id(&team);
    wait_until(
        "the team install to be recorded",
        Duration::from_secs(10),
        || async {
            stack
                .conversations
                .address(&team_id)
                .await
                .unwrap()
                .is_some()
        },
    )
    .await;
    (tenant, owner, team, team_id)
}

fn messages_with(stack: &TestStack, user: &TeamsUser, text: &str) -> usize {
    stack
        .emulator
        .activities(&stack.emulator.personal_conversation_id(user))
        .iter()
        .filter(|a| a.text.as_deref() == Some(text))
        .count()
}

fn user_json(user: &TeamsUser) -> Value {
    json!({"tenantId": user.tenant_id, "aadObjectId": user.aad_object_id})
}

#[tokio::test(flavor = "multi_thread")]
async fn an_inline_audience_gets_one_message_each_and_the_results_say_so() {
    let stack = stack().await;
    let tenant = uuid::Uuid::new_v4().to_string();
    let mut users = Vec::new();
    for _ in 0..12 {
        let user = TeamsUser::new(&tenant, uuid::Uuid::new_v4().to_string(), "Reader");
        stack.install(&user).await;
        users.push(user);
    }
    let mut told = EventQueue::bind(&stack.namespace, "herald.broadcast.completed").await;
    let body = json!({
        "id": "all-hands",
        "audience": {"users": users.iter().map(user_json).collect::<Vec<_>>()},
        "message": {"text": "All hands at 3"},
    });
    let (status, accepted) = call(
        &stack,
        reqwest::Method::POST,
        "/broadcasts",
        Some(body.clone()),
    )
    .await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["id"], "all-hands");
    // The same request again is the same broadcast; another with its id is refused.
    let (again, _) = call(&stack, reqwest::Method::POST, "/broadcasts", Some(body)).await;
    assert_eq!(again, 202);
    let other = json!({"id": "all-hands", "audience": {"users": [user_json(&users[0])]},
        "message": {"text": "something else"}});
    let (conflict, problem) = call(&stack, reqwest::Method::POST, "/broadcasts", Some(other)).await;
    assert_eq!(conflict, 409, "{problem}");

    let done = wait_for_broadcast(&stack, "all-hands", "completed", Duration::from_secs(30)).await;
    assert_eq!(done["counts"]["total"], 12, "{done}");
    assert_eq!(done["counts"]["delivered"], 12, "{done}");
    assert_eq!(done["counts"]["pending"], 0, "{done}");
    assert!(done["completedAt"].is_string(), "{done}");
    for user in &users {
        assert_eq!(messages_with(&stack, user, "All hands at 3"), 1);
    }
    // The calling service is told, with the counts as it settled.
    let completed = told
        .next_about("all-hands", Duration::from_secs(10))
        .await
        .expect("the broadcast's completion is told");
    assert_eq!(completed.kind, "herald.broadcast.completed");
    let data: Value = completed.data_as().unwrap();
    assert_eq!(data["broadcastId"], "all-hands");
    assert_eq!(data["counts"]["delivered"], 12, "{data}");
    assert_eq!(data["counts"]["pending"], 0, "{data}");

    // Two recipients read it: the broadcast counts two reads, and a read told again (a
    // receipt handled a second time after a failure) counts nothing more.
    let broadcast_message = |user: &TeamsUser| {
        stack
            .emulator
            .activities(&stack.emulator.personal_conversation_id(user))
            .into_iter()
            .find(|a| a.text.as_deref() == Some("All hands at 3"))
            .unwrap()
    };
    for user in &users[..2] {
        let status = stack
            .emulator
            .send_read_receipt(user, &broadcast_message(user).id)
            .await
            .unwrap();
        assert_eq!(status, 200);
    }
    let read = || async {
        call(&stack, reqwest::Method::GET, "/broadcasts/all-hands", None)
            .await
            .1["counts"]["read"]
            .as_u64()
    };
    wait_until("two reads counted", Duration::from_secs(10), || async {
        read().await == Some(2)
    })
    .await;
    let (_, listed) = call(
        &stack,
        reqwest::Method::GET,
        "/broadcasts/all-hands/recipients?limit=1000",
        None,
    )
    .await;
    let read_ones: Vec<&Value> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|item| item["readAt"].is_string())
        .collect();
    assert_eq!(read_ones.len(), 2, "{listed}");
    let store = herald_shared::store::BroadcastStore::new(
        herald_shared::store::Redis::new(
            &herald_tests::redis_url().parse().unwrap(),
            stack.namespace.parse().unwrap(),
        )
        .unwrap(),
        Duration::from_secs(3600),
    );
    for item in read_ones {
        let notification = item["notificationId"].as_str().unwrap();
        store.count_read("all-hands", notification).await.unwrap();
    }
    assert_eq!(read().await, Some(2));

    // Each recipient's notification is followed like any other.
    let (_, page) = call(
        &stack,
        reqwest::Method::GET,
        "/broadcasts/all-hands/recipients?limit=5",
        None,
    )
    .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 5, "{page}");
    let first = &page["items"][0];
    assert_eq!(first["status"], "delivered");
    let (status, notification) = call(
        &stack,
        reqwest::Method::GET,
        &format!(
            "/notifications/{}",
            first["notificationId"].as_str().unwrap()
        ),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(notification["broadcastId"], "all-hands");
    assert_eq!(notification["status"], "delivered");
    // Paging on from `next` visits every recipient once.
    let mut seen = page["items"].as_array().unwrap().len();
    let mut next = page["next"].as_str().map(str::to_owned);
    while let Some(cursor) = next {
        let (_, page) = call(
            &stack,
            reqwest::Method::GET,
            &format!("/broadcasts/all-hands/recipients?limit=5&cursor={cursor}"),
            None,
        )
        .await;
        seen += page["items"].as_array().unwrap().len();
        next = page["next"].as_str().map(str::to_owned);
    }
    assert_eq!(seen, 12);

    let csv = export(&stack, "all-hands", "text/csv").await;
    let mut lines = csv.lines();
    assert!(lines.next().unwrap().starts_with("tenantId,aadObjectId,"));
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 12, "{csv}");
    assert!(rows.iter().all(|r| r.contains(",delivered,")), "{csv}");
    let ndjson = export(&stack, "all-hands", "application/x-ndjson").await;
    let delivered = ndjson
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["status"] == "delivered")
        .count();
    assert_eq!(delivered, 12);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_list_is_uploaded_in_parts_checked_line_by_line_then_released() {
    let stack = stack().await;
    let tenant = uuid::Uuid::new_v4().to_string();
    let mut users = Vec::new();
    for _ in 0..6 {
        let user = TeamsUser::new(&tenant, uuid::Uuid::new_v4().to_string(), "Reader");
        stack.install(&user).await;
        users.push(user);
    }
    let (status, accepted) = call(
        &stack,
        reqwest::Method::POST,
        "/broadcasts",
        Some(json!({"id": "policy", "audience": {"list": {}}, "message": {"text": "New policy"}})),
    )
    .await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["status"], "draft");

    let ndjson: String = users[..4]
        .iter()
        .map(|u| format!("{}\n", user_json(u)))
        .collect();
    let (status, added) = upload(&stack, "policy", "application/x-ndjson", ndjson).await;
    assert_eq!(status, 200, "{added}");
    assert_eq!(added, json!({"added": 4, "total": 4}));
    // A part repeating two of them, as CSV: only the new ones count.
    let csv = std::iter::once("tenantId,aadObjectId\n".to_owned())
        .chain(
            users[2..]
                .iter()
                .map(|u| format!("{},{}\n", u.tenant_id, u.aad_object_id)),
        )
        .collect::<String>();
    let (status, added) = upload(&stack, "policy", "text/csv", csv).await;
    assert_eq!(status, 200, "{added}");
    assert_eq!(added, json!({"added": 2, "total": 6}));
    // A malformed line is named, and nothing of its part is added.
    let bad = format!(
        "{}\n{{\"tenantId\": \"{tenant}\"}}\n",
        user_json(&TeamsUser::new(
            &tenant,
            uuid::Uuid::new_v4().to_string(),
            "New"
        ))
    );
    let (status, problem) = upload(&stack, "policy", "application/x-ndjson", bad).await;
    assert_eq!(status, 400, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().starts_with("line 2:"),
        "{problem}"
    );
    // The same when the bad line comes after more good ones than are added at a time.
    let mut long: String = (0..9_000)
        .map(|i| format!("{{\"tenantId\":\"{tenant}\",\"aadObjectId\":\"listed-{i}\"}}\n"))
        .collect();
    long.push_str("{\"tenantId\":\"t\",\"aadObjectId\":\"a|b\"}\n");
    let (status, problem) = upload(&stack, "policy", "application/x-ndjson", long).await;
    assert_eq!(status, 400, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .starts_with("line 9001:"),
        "{problem}"
    );
    // A part over 10 MiB is refused whole, before it is read: with a 413, or, when the
    // connection closes before the client reads the answer, with no answer at all.
    let huge = format!("{}\n", user_json(&users[0])).repeat(11 * 1024 * 1024 / 100);
    let refused = send_upload(&stack, "policy", "application/x-ndjson", huge).await;
    if let Ok(response) = refused {
        assert_eq!(response.status().as_u16(), 413);
    }
    let (_, draft) = call(&stack, reqwest::Method::GET, "/broadcasts/policy", None).await;
    assert_eq!(draft["counts"]["total"], 6, "{draft}");
    // Nothing is sent before the release.
    assert!(
        users
            .iter()
            .all(|u| messages_with(&stack, u, "New policy") == 0)
    );

    let (status, released) = call(
        &stack,
        reqwest::Method::POST,
        "/broadcasts/policy/release",
        None,
    )
    .await;
    assert_eq!(status, 202, "{released}");
    let (status, _) = upload(
        &stack,
        "policy",
        "text/csv",
        "tenantId,aadObjectId\n".into(),
    )
    .await;
    assert_eq!(status, 409, "a released list takes no more uploads");
    let done = wait_for_broadcast(&stack, "policy", "completed", Duration::from_secs(30)).await;
    assert_eq!(done["counts"]["delivered"], 6, "{done}");
    for user in &users {
        assert_eq!(messages_with(&stack, user, "New policy"), 1);
    }
    // Each already had a chat with the bot, stored at install: none was created for them.
    let created = stack
        .emulator
        .requests()
        .into_iter()
        .filter(|r| {
            r.operation == Operation::CreateConversation
                && r.tenant_id.as_deref() == Some(tenant.as_str())
        })
        .count();
    assert_eq!(created, 0, "a recipient with a chat got a second one");
}

/// A draft cancelled before anything was handed out settles at once, and the ingress tells
/// it; the cancel retried tells it again under the same id.
#[tokio::test(flavor = "multi_thread")]
async fn a_draft_cancelled_is_told_as_settled_with_every_recipient_cancelled() {
    let stack = stack().await;
    let tenant = uuid::Uuid::new_v4().to_string();
    let user = TeamsUser::new(&tenant, uuid::Uuid::new_v4().to_string(), "Reader");
    let mut told = EventQueue::bind(&stack.namespace, "herald.broadcast.completed").await;
    let body = json!({"id": "never", "audience": {"list": {}}, "message": {"text": "Never sent"}});
    let (status, _) = call(&stack, reqwest::Method::POST, "/broadcasts", Some(body)).await;
    assert_eq!(status, 202);
    let (status, added) = upload(
        &stack,
        "never",
        "application/x-ndjson",
        format!("{}\n", user_json(&user)),
    )
    .await;
    assert_eq!(status, 200, "{added}");

    let mut ids = Vec::new();
    for _ in 0..2 {
        let (status, cancelled) =
            call(&stack, reqwest::Method::DELETE, "/broadcasts/never", None).await;
        assert_eq!(status, 200, "{cancelled}");
        let completed = told
            .next_about("never", Duration::from_secs(10))
            .await
            .expect("the cancelled draft is told");
        let data: Value = completed.data_as().unwrap();
        assert_eq!(data["counts"]["cancelled"], 1, "{data}");
        assert_eq!(data["counts"]["pending"], 0, "{data}");
        ids.push(completed.id);
    }
    assert_eq!(ids[0], ids[1], "one id, however often told");
    assert_eq!(messages_with(&stack, &user, "Never sent"), 0);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_audience_herald_cannot_reach_is_refused_naming_the_field_and_nothing_is_created() {
    let stack = stack().await;
    let (tenant, _, _, team_id) = team_with_the_app(&stack).await;

    let cases = [
        (
            json!({"team": {"tenantId": tenant, "teamId": "19:unknown@thread.tacv2"}}),
            422,
            "audience.team.teamId: Herald has no install in team",
        ),
        (
            json!({"channels": [{"tenantId": "another-tenant", "teamId": team_id, "channelId": team_id}]}),
            422,
            "audience.channels[0].tenantId: team",
        ),
        (
            json!({"tenant": {"tenantId": "a-tenant-no-one-wrote-from"}}),
            422,
            "audience.tenant.tenantId",
        ),
        (
            json!({"users": [{"tenantId": tenant, "aadObjectId": "a|b"}]}),
            400,
            "audience: users[0].aadObjectId",
        ),
    ];
    for (i, (audience, status, detail)) in cases.into_iter().enumerate() {
        let id = format!("refused-{i}");
        let body = json!({"id": id, "audience": audience, "message": {"text": "hi"}});
        let (answered, problem) =
            call(&stack, reqwest::Method::POST, "/broadcasts", Some(body)).await;
        assert_eq!(answered, status, "{problem}");
        assert!(
            problem["detail"].as_str().unwrap().starts_with(detail),
            "{problem}"
        );
        let (looked_up, _) = call(
            &stack,
            reqwest::Method::GET,
            &format!("/broadcasts/{id}"),
            None,
        )
        .await;
        assert_eq!(looked_up, 404, "nothing was created for case {i}");
    }
}

/// A stack that sends as fast as it can: no rate limits in "Teams" or in Herald.
async fn fast_stack(extra: &[(&str, &str)]) -> TestStack {
    let mut options = StackOptions::unlimited();
    for (key, value) in extra {
        options = options.with_env(key, value);
    }
    TestStack::start_with(options).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_team_of_2000_gets_one_message_each_and_the_counts_and_csv_agree_with_teams() {
    let stack = fast_stack(&[]).await;
    let (tenant, owner, team, team_id) = team_with_the_app(&stack).await;
    // 2,000 members who never installed the app: Herald creates each 1:1 chat by the member's
    // roster id, which the team install allows.
    let members = stack.emulator.generate_team_members(&team, 2_000);
    let before = stack.emulator.received_counts(Some(&tenant));

    let body = json!({"id": "town-hall", "audience": {"team": {"tenantId": tenant, "teamId": team_id}},
        "message": {"text": "Town hall at noon"}});
    let (status, accepted) = call(&stack, reqwest::Method::POST, "/broadcasts", Some(body)).await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["status"], "expanding");
    // The roster is the 2,000 and the owner who added the app.
    let done = wait_for_broadcast(&stack, "town-hall", "completed", Duration::from_secs(120)).await;
    assert_eq!(done["counts"]["total"], 2_001, "{done}");
    assert_eq!(done["counts"]["delivered"], 2_001, "{done}");
    assert_eq!(
        done["audience"],
        json!({"kind": "team", "tenantId": tenant, "teamId": team_id})
    );

    // Teams received one message in each of 2,001 chats, and nothing else.
    let after = stack.emulator.received_counts(Some(&tenant));
    assert_eq!(after.activities - before.activities, 2_001);
    for user in members.users().step_by(97) {
        let conversation = stack.emulator.personal_conversation_id(&user);
        assert_eq!(
            stack.emulator.received_count(&conversation),
            1,
            "{}",
            user.aad_object_id
        );
    }
    // The CSV export names every member once, delivered, with the activity Teams gave.
    let csv = export(&stack, "town-hall", "text/csv").await;
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(rows.len(), 2_001);
    let mut members_seen: Vec<&str> = rows.iter().map(|r| r[1]).collect();
    members_seen.sort_unstable();
    members_seen.dedup();
    assert_eq!(members_seen.len(), 2_001, "each member once");
    let owner_id = owner.aad_object_id.to_ascii_lowercase();
    assert!(
        members_seen
            .iter()
            .all(|aad| members.index_of(aad).is_some() || *aad == owner_id)
    );
    assert!(rows.iter().all(|r| r[5] == "delivered" && !r[7].is_empty()));
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelled_at_half_nothing_more_is_sent_and_a_retraction_deletes_every_delivered_message() {
    // 20 a second, so that half of 200 is a moment to catch.
    let stack = TestStack::start_with(
        StackOptions {
            reminder_delay: Duration::from_secs(3600),
            ..Default::default()
        }
        .with_env("HERALD_TENANT_RATE", "20/1s"),
    )
    .await;
    let tenant = uuid::Uuid::new_v4().to_string();
    let users = stack.emulator.generate_tenant_users(&tenant, "staff", 200);
    let mut told = EventQueue::bind(&stack.namespace, "herald.broadcast.completed").await;
    let body = json!({"id": "drill", "audience": {"users": users.users().map(|u| user_json(&u)).collect::<Vec<_>>()},
        "message": {"text": "Fire drill at 2"}});
    let (status, _) = call(&stack, reqwest::Method::POST, "/broadcasts", Some(body)).await;
    assert_eq!(status, 202);
    let delivered = || async {
        users
            .users()
            .map(|u| messages_with(&stack, &u, "Fire drill at 2"))
            .sum::<usize>()
    };
    wait_until("half the messages", Duration::from_secs(30), || async {
        delivered().await >= 100
    })
    .await;
    let (status, cancelled) =
        call(&stack, reqwest::Method::DELETE, "/broadcasts/drill", None).await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    let at_cancel = delivered().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Nothing more is sent, but for the sends that were in flight at that moment (at 20 a
    // second, a handful).
    let later = delivered().await;
    assert!(
        later - at_cancel <= 5,
        "{at_cancel} at the cancel, {later} after"
    );
    let settled = wait_for_broadcast(&stack, "drill", "cancelled", Duration::from_secs(10)).await;
    wait_until(
        "every recipient to have ended",
        Duration::from_secs(20),
        || async {
            call(&stack, reqwest::Method::GET, "/broadcasts/drill", None)
                .await
                .1["counts"]["pending"]
                == 0
        },
    )
    .await;
    let (_, counts) = call(&stack, reqwest::Method::GET, "/broadcasts/drill", None).await;
    let counts = &counts["counts"];
    // Settled by the fan-out once it counted what it never handed out, and told so.
    let completed = told
        .next_about("drill", Duration::from_secs(10))
        .await
        .expect("the cancelled broadcast's end is told");
    assert_eq!(completed.data_as::<Value>().unwrap()["counts"], *counts);
    assert_eq!(counts["delivered"], later as u64, "{settled}");
    assert_eq!(
        counts["cancelled"].as_u64().unwrap() + later as u64,
        200,
        "{counts}"
    );

    // A retraction deletes every delivered message in Teams.
    let (status, retracting) = call(
        &stack,
        reqwest::Method::DELETE,
        "/broadcasts/drill?retract=true",
        None,
    )
    .await;
    assert_eq!(status, 202, "{retracting}");
    wait_until(
        "every delivered message to be deleted",
        Duration::from_secs(60),
        || async {
            users.users().all(|u| {
                stack
                    .emulator
                    .activities(&stack.emulator.personal_conversation_id(&u))
                    .iter()
                    .filter(|a| a.text.as_deref() == Some("Fire drill at 2"))
                    .all(|a| a.deleted)
            })
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edit_changes_every_delivered_message() {
    let stack = fast_stack(&[]).await;
    let tenant = uuid::Uuid::new_v4().to_string();
    let users = stack.emulator.generate_tenant_users(&tenant, "staff", 30);
    let body = json!({"id": "menu", "audience": {"users": users.users().map(|u| user_json(&u)).collect::<Vec<_>>()},
        "message": {"text": "Lunch: soup"}});
    call(&stack, reqwest::Method::POST, "/broadcasts", Some(body)).await;
    wait_for_broadcast(&stack, "menu", "completed", Duration::from_secs(30)).await;
    let (status, edited) = call(
        &stack,
        reqwest::Method::PATCH,
        "/broadcasts/menu",
        Some(json!({"message": {"text": "Lunch: soup and bread"}})),
    )
    .await;
    assert_eq!(status, 202, "{edited}");
    wait_until(
        "every message to be edited",
        Duration::from_secs(30),
        || async {
            users.users().all(|u| {
                let activities = stack
                    .emulator
                    .activities(&stack.emulator.personal_conversation_id(&u));
                // One message, now with the new text; the old one is among its edits.
                activities.len() == 1
                    && activities[0].text.as_deref() == Some("Lunch: soup and bread")
                    && activities[0]
                        .edits
                        .iter()
                        .any(|e| e["text"] == "Lunch: soup")
            })
        },
    )
    .await;
    // A message Teams would refuse is refused, naming the field.
    let (status, problem) = call(
        &stack,
        reqwest::Method::PATCH,
        "/broadcasts/menu",
        Some(json!({"message": {}})),
    )
    .await;
    assert_eq!(status, 400, "{problem}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reminder_goes_ahead_of_a_broadcast_of_its_tenant_another_tenant_is_not_slowed_and_nothing_is_throttled()
 {
    // Teams' own limits in the emulator, and Herald's default 50 a second per tenant.
    let stack = stack().await;
    let (elsewhere, elsewhere_conversation) = stack.installed_user().await;
    let tenant = uuid::Uuid::new_v4().to_string();
    let users = stack.emulator.generate_tenant_users(&tenant, "staff", 600);
    let body = json!({"id": "all-staff", "audience": {"users": users.users().map(|u| user_json(&u)).collect::<Vec<_>>()},
        "message": {"text": "Quarterly results"}});
    let (status, _) = call(&stack, reqwest::Method::POST, "/broadcasts", Some(body)).await;
    assert_eq!(status, 202);
    // Once the broadcast fills the tenant's rate, a reminder due 2 s later to a user of the
    // same tenant.
    wait_until(
        "the broadcast to be sending at the rate",
        Duration::from_secs(20),
        || async { stack.emulator.received_counts(Some(&tenant)).activities >= 150 },
    )
    .await;
    let reader = users.user(0);
    let due = time::OffsetDateTime::now_utc() + Duration::from_secs(2);
    let (status, accepted) = call(
        &stack,
        reqwest::Method::POST,
        "/notifications",
        Some(
            json!({"to": {"user": user_json(&reader)}, "message": {"text": "Your 1:1 starts now"},
            "deliverAt": due.format(&time::format_description::well_known::Rfc3339).unwrap()}),
        ),
    )
    .await;
    assert_eq!(status, 202, "{accepted}");
    // Meanwhile, a notification to someone of another tenant is not slowed by the broadcast.
    let asked = time::OffsetDateTime::now_utc();
    let (status, accepted) = call(
        &stack,
        reqwest::Method::POST,
        "/notifications",
        Some(json!({"to": {"user": user_json(&elsewhere)}, "message": {"text": "Build is green"}})),
    )
    .await;
    assert_eq!(status, 202, "{accepted}");
    wait_until(
        "the other tenant's notification",
        Duration::from_secs(10),
        || async { messages_with(&stack, &elsewhere, "Build is green") == 1 },
    )
    .await;
    let arrived = stack
        .emulator
        .activities(&elsewhere_conversation)
        .into_iter()
        .find(|a| a.text.as_deref() == Some("Build is green"))
        .unwrap()
        .received_at;
    let took = (arrived - asked).as_seconds_f64();
    assert!(
        took <= 2.0,
        "another tenant's notification took {took:.2} s behind the broadcast"
    );
    let conversation = stack.emulator.personal_conversation_id(&reader);
    wait_until("the reminder", Duration::from_secs(10), || async {
        messages_with(&stack, &reader, "Your 1:1 starts now") == 1
    })
    .await;
    let arrived = stack
        .emulator
        .activities(&conversation)
        .into_iter()
        .find(|a| a.text.as_deref() == Some("Your 1:1 starts now"))
        .unwrap()
        .received_at;
    let late = (arrived - due).as_seconds_f64();
    assert!(
        late <= 2.0,
        "the reminder arrived {late:.2} s after it was due"
    );
    // The broadcast still has most of its 600 recipients to go: the reminder did not wait
    // for it.
    let (_, broadcast) = call(&stack, reqwest::Method::GET, "/broadcasts/all-staff", None).await;
    assert!(
        broadcast["counts"]["pending"].as_u64().unwrap() > 100,
        "{broadcast}"
    );
    let done = wait_for_broadcast(&stack, "all-staff", "completed", Duration::from_secs(60)).await;
    assert_eq!(done["counts"]["delivered"], 600, "{done}");
    assert_eq!(
        stack.emulator.throttled_count(),
        0,
        "Teams never answered 429"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_audience_is_every_user_with_the_app_and_not_one_who_removed_it() {
    let stack = stack().await;
    let tenant = uuid::Uuid::new_v4().to_string();
    let mut users = Vec::new();
    for _ in 0..5 {
        let user = TeamsUser::new(&tenant, uuid::Uuid::new_v4().to_string(), "Reader");
        stack.install(&user).await;
        users.push(user);
    }
    let gone = users.pop().unwrap();
    stack.emulator.uninstall(&gone).await.unwrap();
    // Someone of another tenant is not in this one's audience.
    let (elsewhere, _) = stack.installed_user().await;
    wait_until(
        "the uninstall to be recorded",
        Duration::from_secs(10),
        || async {
            let address = stack
                .conversations
                .personal_conversation(&gone.tenant_id, &gone.aad_object_id)
                .await
                .unwrap();
            address.is_some_and(|a| a.removed_reason.is_some())
        },
    )
    .await;

    let body = json!({"id": "tenant-wide", "audience": {"tenant": {"tenantId": tenant}},
        "message": {"text": "Quarterly survey"}});
    let (status, accepted) = call(&stack, reqwest::Method::POST, "/broadcasts", Some(body)).await;
    assert_eq!(status, 202, "{accepted}");
    let done =
        wait_for_broadcast(&stack, "tenant-wide", "completed", Duration::from_secs(30)).await;
    assert_eq!(done["counts"]["total"], 4, "{done}");
    assert_eq!(done["counts"]["delivered"], 4, "{done}");
    for user in &users {
        assert_eq!(messages_with(&stack, user, "Quarterly survey"), 1);
    }
    assert_eq!(messages_with(&stack, &gone, "Quarterly survey"), 0);
    assert_eq!(messages_with(&stack, &elsewhere, "Quarterly survey"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_channel_audience_starts_a_thread_in_each_channel() {
    let stack = stack().await;
    let (tenant, _, _, first) = team_with_the_app(&stack).await;
    let second_team = TeamsTeam::random_in(&tenant);
    let owner = TeamsUser::new(&tenant, uuid::Uuid::new_v4().to_string(), "Owner");
    stack
        .emulator
        .install_team(&second_team, &owner)
        .await
        .unwrap();
    let second = stack.emulator.team_conversation_id(&second_team);
    wait_until(
        "the second team's install",
        Duration::from_secs(10),
        || async {
            stack
                .conversations
                .address(&second)
                .await
                .unwrap()
                .is_some()
        },
    )
    .await;
    let channels: Vec<Value> = [&first, &second]
        .iter()
        .map(|c| json!({"tenantId": tenant, "teamId": c, "channelId": c}))
        .collect();
    let body = json!({"id": "release-notes", "audience": {"channels": channels},
        "message": {"text": "Release 7.2 is out"}});
    let (status, accepted) = call(&stack, reqwest::Method::POST, "/broadcasts", Some(body)).await;
    assert_eq!(status, 202, "{accepted}");
    let done = wait_for_broadcast(
        &stack,
        "release-notes",
        "completed",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(done["counts"]["delivered"], 2, "{done}");
    let (_, page) = call(
        &stack,
        reqwest::Method::GET,
        "/broadcasts/release-notes/recipients",
        None,
    )
    .await;
    for item in page["items"].as_array().unwrap() {
        assert!(
            item["channelId"].is_string() && item["aadObjectId"].is_null(),
            "{item}"
        );
        let (_, record) = call(
            &stack,
            reqwest::Method::GET,
            &format!(
                "/notifications/{}",
                item["notificationId"].as_str().unwrap()
            ),
            None,
        )
        .await;
        let thread = record["conversationId"].as_str().unwrap();
        assert!(
            thread.starts_with(item["channelId"].as_str().unwrap())
                && thread.contains(";messageid=")
        );
        assert_eq!(
            stack.emulator.activities(thread)[0].text.as_deref(),
            Some("Release 7.2 is out")
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_sends_again_to_the_transient_failures_only() {
    // Two attempts, a moment apart, before a job is given up.
    let stack = TestStack::start_with(
        StackOptions {
            reminder_delay: Duration::from_secs(3600),
            ..Default::default()
        }
        .with_env("HERALD_MAX_ATTEMPTS", "2")
        .with_env("HERALD_RETRY_SCHEDULE", "200ms"),
    )
    .await;
    let tenant = uuid::Uuid::new_v4().to_string();
    let mut users = Vec::new();
    for _ in 0..6 {
        let user = TeamsUser::new(&tenant, uuid::Uuid::new_v4().to_string(), "Reader");
        stack.install(&user).await;
        users.push(user);
    }
    // Teams is busy for two chats (503 every time) and has blocked the bot in a third.
    for user in &users[..2] {
        let conversation = stack.emulator.personal_conversation_id(user);
        stack.emulator.inject_fault(
            Fault::new(503)
                .conversation(conversation)
                .operation(Operation::SendToConversation)
                .times(1_000),
        );
    }
    stack.emulator.inject_fault(
        Fault::message_writes_blocked()
            .conversation(stack.emulator.personal_conversation_id(&users[2]))
            .operation(Operation::SendToConversation)
            .times(1_000),
    );
    let body = json!({"id": "survey", "audience": {"users": users.iter().map(user_json).collect::<Vec<_>>()},
        "message": {"text": "Take the survey"}});
    call(&stack, reqwest::Method::POST, "/broadcasts", Some(body)).await;
    let done = wait_for_broadcast(&stack, "survey", "completed", Duration::from_secs(30)).await;
    assert_eq!(done["counts"]["delivered"], 3, "{done}");
    assert_eq!(done["counts"]["failed"], 3, "{done}");

    stack.emulator.clear_faults();
    let (status, retried) = call(
        &stack,
        reqwest::Method::POST,
        "/broadcasts/survey/retry",
        None,
    )
    .await;
    assert_eq!(status, 202, "{retried}");
    wait_until(
        "the busy chats' messages",
        Duration::from_secs(30),
        || async {
            users[..2]
                .iter()
                .all(|u| messages_with(&stack, u, "Take the survey") == 1)
        },
    )
    .await;
    let done = wait_for_broadcast(&stack, "survey", "completed", Duration::from_secs(30)).await;
    assert_eq!(done["counts"]["delivered"], 5, "{done}");
    assert_eq!(
        done["counts"]["failed"], 1,
        "the blocked chat is not tried again: {done}"
    );
    assert_eq!(messages_with(&stack, &users[2], "Take the survey"), 0);
    for user in &users[3..] {
        assert_eq!(messages_with(&stack, user, "Take the survey"), 1);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn recipients_waiting_for_their_window_do_not_hold_back_the_others() {
    // At most 4 in flight: if the ones waiting for their window counted, the first few handed
    // out (the audience's order mixes the two zones) would hold back everyone else for hours.
    let stack = fast_stack(&[("HERALD_BROADCAST_AHEAD", "4")]).await;
    let tenant = uuid::Uuid::new_v4().to_string();
    let users = stack.emulator.generate_tenant_users(&tenant, "staff", 24);
    // Half the users live twelve hours behind UTC: a two-hour window open now in UTC is
    // closed for them.
    let all: Vec<TeamsUser> = users.users().collect();
    let open: Vec<&TeamsUser> = all.iter().step_by(2).collect();
    let closed: Vec<&TeamsUser> = all.iter().skip(1).step_by(2).collect();
    for user in &closed {
        let (status, answer) = stack
            .api()
            .patch_user(
                &user.tenant_id,
                &user.aad_object_id,
                &json!({"timeZone": "Etc/GMT+12"}),
            )
            .await;
        assert_eq!(status, 200, "{answer}");
    }
    let hour = time::OffsetDateTime::now_utc().hour();
    let window = json!({"from": format!("{hour:02}:00"), "to": format!("{:02}:00", (hour + 2) % 24),
        "timeZone": "recipient"});
    let body = json!({"id": "window", "audience": {"users": users.users().map(|u| user_json(&u)).collect::<Vec<_>>()},
        "message": {"text": "Within your hours"}, "window": window});
    let (status, accepted) = call(&stack, reqwest::Method::POST, "/broadcasts", Some(body)).await;
    assert_eq!(status, 202, "{accepted}");
    wait_until(
        "every recipient whose window is open",
        Duration::from_secs(30),
        || async {
            open.iter()
                .all(|u| messages_with(&stack, u, "Within your hours") == 1)
        },
    )
    .await;
    assert!(
        closed
            .iter()
            .all(|u| messages_with(&stack, u, "Within your hours") == 0)
    );
    let (_, broadcast) = call(&stack, reqwest::Method::GET, "/broadcasts/window", None).await;
    assert_eq!(broadcast["status"], "sending", "{broadcast}");
    assert_eq!(broadcast["counts"]["delivered"], 12, "{broadcast}");
    assert_eq!(broadcast["counts"]["pending"], 12, "{broadcast}");
    // Each waiting recipient's notification says when it goes, and whose it is (the last of
    // them may still be on its way from the fan-out to its timer).
    let scheduled = || async {
        call(
            &stack,
            reqwest::Method::GET,
            "/broadcasts/window/recipients?status=scheduled",
            None,
        )
        .await
        .1["items"]
            .as_array()
            .map_or(0, Vec::len)
    };
    wait_until(
        "every closed window's recipient scheduled",
        Duration::from_secs(10),
        || async { scheduled().await == 12 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn users_stored_before_tenant_indexes_existed_are_indexed_once() {
    let stack = stack().await;
    let tenant = uuid::Uuid::new_v4().to_string();
    for _ in 0..3 {
        stack
            .install(&TeamsUser::new(
                &tenant,
                uuid::Uuid::new_v4().to_string(),
                "Reader",
            ))
            .await;
    }
    // As a store written before the index: the index and the migration's mark are gone.
    let client = redis::Client::open(herald_tests::redis_url()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let index = format!("{}:tenant-users:{tenant}", stack.namespace);
    let mark = format!("{}:migrations:tenant-users", stack.namespace);
    redis::cmd("DEL")
        .arg(&index)
        .arg(&mark)
        .query_async::<()>(&mut redis)
        .await
        .unwrap();

    assert_eq!(
        stack.conversations.backfill_tenant_users().await.unwrap(),
        Some(3)
    );
    assert_eq!(
        stack.conversations.backfill_tenant_users().await.unwrap(),
        None,
        "once"
    );
    let body = json!({"id": "after-upgrade", "audience": {"tenant": {"tenantId": tenant}},
        "message": {"text": "hello again"}});
    call(&stack, reqwest::Method::POST, "/broadcasts", Some(body)).await;
    let done = wait_for_broadcast(
        &stack,
        "after-upgrade",
        "completed",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(done["counts"]["delivered"], 3, "{done}");
}

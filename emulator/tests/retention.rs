//! Long runs in bounded memory: the request log and the activity bodies keep only the last
//! ones, while every count — requests, messages, 429s, per tenant and per conversation —
//! stays exact, so a run can still be checked message by message after the bodies are gone.

mod common;

use std::collections::BTreeMap;

use common::{bot_token, call, config, send_text, start_with_bot};
use futures_util::StreamExt as _;
use herald_emulator::{EmulatorConfig, Fault, ReceivedCounts, TeamsUser};
use reqwest::Method;
use serde_json::{Value, json};

fn small(
    keep_requests: usize,
    keep_per_conversation: usize,
    keep_activities: usize,
) -> EmulatorConfig {
    EmulatorConfig {
        rate_limits: false,
        keep_requests,
        keep_per_conversation,
        keep_activities,
        ..config()
    }
}

async fn get(url: String) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_thousand_chats_each_got_one_message_though_few_bodies_were_kept() {
    let (emulator, _bot) = start_with_bot(small(50, 3, 100)).await;
    let tenant = uuid::Uuid::new_v4().to_string();
    let staff = emulator.generate_tenant_users(&tenant, "staff", 2_000);
    let token = bot_token(&emulator).await;
    let url = emulator.service_url(&tenant);

    // A broadcast: one message to each, 32 at a time, on one connection pool.
    let chats: Vec<String> = staff
        .users()
        .map(|user| emulator.personal_conversation_id(&user))
        .collect();
    let client = reqwest::Client::new();
    let statuses: Vec<u16> = futures_util::stream::iter(&chats)
        .map(|chat| {
            client
                .post(format!("{url}v3/conversations/{chat}/activities"))
                .bearer_auth(&token)
                .json(&json!({"type": "message", "text": "The office is closed on Friday"}))
                .send()
        })
        .buffer_unordered(32)
        .map(|response| response.unwrap().status().as_u16())
        .collect()
        .await;
    assert!(statuses.iter().all(|&status| status == 201));

    // Every count is exact…
    let stats = emulator.stats();
    assert_eq!(
        (stats.requests, stats.sends, stats.throttled),
        (2_000, 2_000, 0)
    );
    let ours = &stats.tenants[&tenant];
    assert_eq!(
        (ours.requests, ours.sends, ours.throttled),
        (2_000, 2_000, 0)
    );
    let counts = emulator.received_counts(Some(&tenant));
    assert_eq!(
        counts,
        ReceivedCounts {
            conversations: 2_000,
            activities: 2_000,
            histogram: BTreeMap::from([(1, 2_000)]),
        }
    );
    assert!(chats.iter().all(|chat| emulator.received_count(chat) == 1));
    // …though only the last 50 requests (of 2,000 and a token request) and 100 bodies remain.
    assert_eq!(emulator.requests().len(), 50);
    assert_eq!(stats.requests_dropped, 1_951);
    assert_eq!(
        (stats.activities_kept, stats.activities_dropped),
        (100, 1_900)
    );
    let kept: usize = chats
        .iter()
        .map(|chat| emulator.activities(chat).len())
        .sum();
    assert_eq!(kept, 100);

    // The same over HTTP.
    let base = emulator.base_url();
    let counts = get(format!(
        "{base}/_emulator/received-counts?tenantId={tenant}"
    ))
    .await;
    assert_eq!(
        counts,
        json!({"conversations": 2_000, "activities": 2_000, "histogram": {"1": 2_000}})
    );
    let stats = get(format!("{base}/_emulator/stats")).await;
    assert_eq!(stats["sends"], 2_000);
    assert_eq!(stats["tenants"][&tenant]["sends"], 2_000);
    assert_eq!(stats["activitiesDropped"], 1_900);
    // Conversations page by page, with what each received and what each still has.
    let all = get(format!("{base}/_emulator/conversations?tenantId={tenant}")).await;
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 2_000);
    let page = get(format!(
        "{base}/_emulator/conversations?tenantId={tenant}&offset=1500&limit=500"
    ))
    .await;
    assert_eq!(page.as_array().unwrap()[..], all[1_500..]);
    assert!(all.iter().all(|c| c["receivedCount"] == 1));
    let bodies: u64 = all
        .iter()
        .map(|c| c["activityCount"].as_u64().unwrap())
        .sum();
    assert_eq!(bodies, 100);
    let info = get(format!("{base}/_emulator/info")).await;
    assert_eq!(
        info["retention"],
        json!({"keepRequests": 50, "keepPerConversation": 3, "keepActivities": 100})
    );
}

#[tokio::test]
async fn a_busy_chat_keeps_its_last_messages_and_counts_them_all() {
    let (emulator, _bot) = start_with_bot(small(100, 3, 1_000)).await;
    let user = TeamsUser::random();
    let chat = emulator.install(&user).await.unwrap().conversation_id;
    let token = bot_token(&emulator).await;
    let url = emulator.service_url(&user.tenant_id);
    let mut ids = Vec::new();
    for i in 0..5 {
        let answer = send_text(&url, &chat, &token, &format!("m{i}")).await;
        ids.push(answer.body["id"].as_str().unwrap().to_owned());
    }
    let texts: Vec<_> = emulator
        .activities(&chat)
        .into_iter()
        .filter_map(|activity| activity.text)
        .collect();
    assert_eq!(texts, ["m2", "m3", "m4"]);
    assert_eq!(emulator.received_count(&chat), 5);

    // A message whose body is gone is gone for the bot too.
    let update = json!({"type": "message", "text": "edited"});
    let answer = call(
        Method::PUT,
        &format!("{url}v3/conversations/{chat}/activities/{}", ids[0]),
        Some(&token),
        Some(&update),
    )
    .await;
    assert_eq!(
        (answer.status, answer.code()),
        (404, Some("ActivityNotFoundInConversation"))
    );

    // What Teams posted to the bot is kept the same way: install, bot added, then messages.
    for text in ["a", "b", "c"] {
        emulator.send_user_message(&user, text).await.unwrap();
    }
    let inbound = get(format!(
        "{}/_emulator/conversations/{}/inbound",
        emulator.base_url(),
        common::encoded(&chat)
    ))
    .await;
    let kinds: Vec<_> = inbound
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            i["activity"]["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(kinds, ["a", "b", "c"]);

    let listed = get(format!(
        "{}/_emulator/conversations?kind=personal",
        emulator.base_url()
    ))
    .await;
    assert_eq!(listed[0]["activityCount"], 3);
    assert_eq!(listed[0]["receivedCount"], 5);
}

#[tokio::test]
async fn every_429_is_counted_for_its_tenant_after_the_log_forgot_it() {
    let (emulator, _bot) = start_with_bot(small(3, 10, 100)).await;
    let user = TeamsUser::random();
    let chat = emulator.install(&user).await.unwrap().conversation_id;
    let token = bot_token(&emulator).await;
    let url = emulator.service_url(&user.tenant_id);

    emulator.inject_fault(Fault::throttled("2").times(4));
    for _ in 0..4 {
        assert_eq!(send_text(&url, &chat, &token, "x").await.status, 429);
    }
    for _ in 0..3 {
        assert_eq!(send_text(&url, &chat, &token, "y").await.status, 201);
    }
    // The log has the three sends only; the counters have everything.
    assert!(
        emulator
            .requests()
            .iter()
            .all(|request| request.status == 201)
    );
    let stats = emulator.stats();
    assert_eq!(stats.throttled, 4);
    assert_eq!(stats.requests_dropped, 5);
    let tenant = &stats.tenants[&user.tenant_id];
    assert_eq!((tenant.requests, tenant.sends, tenant.throttled), (7, 3, 4));
}

//! Watching a broadcast: per tenant, how many messages Teams accepted, how fast over the
//! last seconds against the tenant limit, and the 429s given — what the page's traffic panel
//! shows every second.

mod common;

use std::time::{Duration, Instant};

use common::{bot_token, config, send_text, start_with_bot};
use herald_emulator::{EmulatorConfig, Fault};
use serde_json::Value;

async fn traffic(base: &str, query: &str) -> Value {
    reqwest::get(format!("{base}/_emulator/traffic{query}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn each_tenant_shows_its_messages_its_rate_and_its_429s() {
    let (emulator, _bot) = start_with_bot(EmulatorConfig {
        rate_limits: false,
        ..config()
    })
    .await;
    let base = emulator.base_url();
    let token = bot_token(&emulator).await;
    let busy = uuid::Uuid::new_v4().to_string();
    let quiet = uuid::Uuid::new_v4().to_string();
    let busy_users = emulator.generate_tenant_users(&busy, "staff", 30);
    let quiet_users = emulator.generate_tenant_users(&quiet, "staff", 5);

    for user in busy_users.users() {
        let chat = emulator.personal_conversation_id(&user);
        let answer = send_text(&emulator.service_url(&busy), &chat, &token, "hi").await;
        assert_eq!(answer.status, 201);
    }
    emulator.inject_fault(Fault::throttled("1").tenant(&quiet).times(2));
    let mut statuses = Vec::new();
    for user in quiet_users.users() {
        let chat = emulator.personal_conversation_id(&user);
        let url = emulator.service_url(&quiet);
        statuses.push(send_text(&url, &chat, &token, "hi").await.status);
    }
    assert_eq!(statuses, [429, 429, 201, 201, 201]);

    // Rates cover whole seconds that have passed: wait for the sends' second to pass.
    let deadline = Instant::now() + Duration::from_secs(5);
    let report = loop {
        let report = traffic(&base, "").await;
        if report["total"]["sendsPerSecond"].as_f64().unwrap() > 0.0 || Instant::now() > deadline {
            break report;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(report["limitPerSecond"], 50);
    assert_eq!(report["windowSeconds"], 5);
    assert_eq!(report["tenantCount"], 2);
    let first = &report["tenants"][0];
    assert_eq!(first["tenantId"], busy.as_str());
    assert_eq!(
        (first["sends"].as_u64(), first["requests"].as_u64()),
        (Some(30), Some(30))
    );
    let rate = first["sendsPerSecond"].as_f64().unwrap();
    assert!(rate > 0.0 && rate <= 30.0, "{rate}");
    let second = &report["tenants"][1];
    assert_eq!(second["tenantId"], quiet.as_str());
    assert_eq!(
        (second["sends"].as_u64(), second["throttled"].as_u64()),
        (Some(3), Some(2))
    );
    assert_eq!(report["total"]["sends"], 33);
    assert_eq!(report["total"]["throttled"], 2);

    // The page asks for the busiest few.
    let top = traffic(&base, "?limit=1").await;
    assert_eq!(top["tenants"].as_array().unwrap().len(), 1);
    assert_eq!(top["tenantCount"], 2);
}

#[tokio::test]
async fn the_page_has_a_traffic_panel_refreshed_every_second() {
    let (emulator, _bot) = start_with_bot(config()).await;
    let page = reqwest::get(format!("{}/", emulator.base_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains(r#"id="traffic-rows""#));
    assert!(page.contains("/_emulator/traffic?limit="));
    assert!(page.contains("setInterval(tick, 1000)"));
    // Offline: nothing is fetched from elsewhere.
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "an external asset"
    );
}

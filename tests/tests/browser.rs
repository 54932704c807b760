//! The emulator's page in a real browser, the way a person uses it: headless Chromium opens the
//! page, clicks Install, and sees the bot's welcome at once and the reminder after the delay.
//! The browser side is `tests/browser/emulator-page.mjs` (Playwright driving Debian's
//! Chromium); its screenshot is kept at `target/artifacts/emulator-page.png`. This side runs
//! the stack and checks through the emulator's inspection API that what the page showed is
//! what Teams received.
//!
//! Needs `/usr/bin/chromium` and the script's modules: `scripts/ensure-browser` installs both
//! (`scripts/test` runs it).

use std::{path::Path, process::Stdio, time::Duration};

use herald_emulator::{ReceivedActivity, TeamsUser};
use herald_tests::{StackOptions, TestStack, repository};
use serde_json::Value;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

const WELCOME: &str = "Hi! I am going to remind you to say something to me soon!";
const REMINDER: &str = "Hey! It's been a while. How are you?";
/// Long enough to tell "at once" from "after the delay" on the page, short enough for a test.
const REMINDER_DELAY: Duration = Duration::from_secs(4);
const CHROMIUM: &str = "/usr/bin/chromium";

#[tokio::test(flavor = "multi_thread")]
async fn a_user_installed_on_the_page_sees_the_welcome_and_then_the_reminder() {
    // Without a browser this test cannot say anything about the page: fail, saying how to get
    // one, rather than pass without having looked.
    let browser_dir = repository().join("tests").join("browser");
    let script = browser_dir.join("emulator-page.mjs");
    for (what, path) in [
        ("Chromium", Path::new(CHROMIUM).to_path_buf()),
        (
            "the page script's modules",
            browser_dir.join("node_modules").join("playwright-core"),
        ),
    ] {
        assert!(
            path.exists(),
            "{what} missing ({}): run `scripts/ensure-browser` first",
            path.display()
        );
    }

    let stack = TestStack::start_with(StackOptions {
        reminder_delay: REMINDER_DELAY,
        ..Default::default()
    })
    .await;

    // The page acts as the user its address names, so this side knows whose chat to inspect.
    let user = TeamsUser::random();
    let page = reqwest::Url::parse_with_params(
        &format!("{}/", stack.emulator.base_url()),
        [
            ("tenantId", user.tenant_id.as_str()),
            ("aadObjectId", user.aad_object_id.as_str()),
            ("name", user.name.as_str()),
        ],
    )
    .unwrap();

    // A screenshot from an earlier run must not pass for this one's.
    let screenshot = repository()
        .canonicalize()
        .expect("the repository's root exists")
        .join("target")
        .join("artifacts")
        .join("emulator-page.png");
    let _ = std::fs::remove_file(&screenshot);

    // The browser clicks Install and waits for both messages on the page; each of its steps has
    // its own timeout, this one only bounds the whole run.
    let run = tokio::process::Command::new("node")
        .arg(&script)
        .arg(page.as_str())
        .arg(&screenshot)
        .env("HERALD_CHROMIUM", CHROMIUM)
        .env("HERALD_WELCOME_TEXT", WELCOME)
        .env("HERALD_REMINDER_TEXT", REMINDER)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the page script finishes within 3 minutes")
        .expect("node runs (Node.js 20 or later is needed)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the page script failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    eprint!("{stdout}");
    assert!(
        screenshot.exists(),
        "no screenshot at {}",
        screenshot.display()
    );

    // What the page showed is what Teams holds: the emulator's inspection API knows the user's
    // personal chat, with the bot installed in it…
    let base = stack.emulator.base_url();
    let conversations = get_json(&stack, &format!("{base}/_emulator/conversations")).await;
    let conversations = conversations.as_array().expect("a list of conversations");
    let conversation = conversations
        .iter()
        .find(|c| {
            c["kind"] == "personal"
                && c["user"]["tenantId"] == user.tenant_id.as_str()
                && c["user"]["aadObjectId"] == user.aad_object_id.as_str()
        })
        .unwrap_or_else(|| panic!("no personal chat of the page's user in {conversations:#?}"));
    assert_eq!(conversation["botInstalled"], true, "{conversation:#}");
    let conversation_id = conversation["id"].as_str().unwrap();
    assert_eq!(
        conversation_id,
        stack.emulator.personal_conversation_id(&user)
    );
    let path = format!(
        "{base}/_emulator/conversations/{}",
        urlencode(conversation_id)
    );

    // …the welcome and the reminder, once each, in that order…
    let received: Vec<ReceivedActivity> =
        serde_json::from_value(get_json(&stack, &format!("{path}/activities")).await)
            .expect("the activities parse");
    let texts: Vec<_> = received.iter().map(|a| a.text.as_deref()).collect();
    assert_eq!(texts, [Some(WELCOME), Some(REMINDER)]);
    assert!(received.iter().all(|a| !a.deleted && a.edits.is_empty()));
    let (welcome, reminder) = (&received[0], &received[1]);

    // …and the times: the reminder is due the delay after the ingress took the install, which
    // is after Teams stamped the install activity, so it cannot arrive sooner than that stamp
    // plus the delay; the welcome comes at once, well before the reminder is due.
    let inbound = get_json(&stack, &format!("{path}/inbound")).await;
    let inbound = inbound.as_array().expect("a list of inbound activities");
    let install = inbound
        .iter()
        .find(|i| i["activity"]["type"] == "installationUpdate")
        .unwrap_or_else(|| panic!("no installationUpdate posted to the bot: {inbound:#?}"));
    assert_eq!(install["status"], 200, "{install:#}");
    let installed_at = install["activity"]["timestamp"]
        .as_str()
        .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
        .unwrap_or_else(|| panic!("the install activity has a timestamp: {install:#}"));
    let install_to_welcome = welcome.received_at - installed_at;
    let install_to_reminder = reminder.received_at - installed_at;
    let welcome_to_reminder = reminder.received_at - welcome.received_at;
    assert!(
        install_to_welcome >= time::Duration::ZERO && install_to_welcome < REMINDER_DELAY,
        "the welcome did not come at once: {install_to_welcome} after the install"
    );
    assert!(
        install_to_reminder >= REMINDER_DELAY,
        "the reminder came early: {install_to_reminder} after the install (delay {REMINDER_DELAY:?})"
    );
    eprintln!(
        "install→welcome {install_to_welcome:.3}, install→reminder {install_to_reminder:.3}, \
         welcome→reminder {welcome_to_reminder:.3} (delay {REMINDER_DELAY:?}); screenshot {}",
        screenshot.display()
    );
    stack.stop().await;
}

async fn get_json(stack: &TestStack, url: &str) -> Value {
    let response = stack
        .http
        .get(url)
        .send()
        .await
        .expect("the emulator answers");
    assert!(
        response.status().is_success(),
        "{url}: {}",
        response.status()
    );
    response.json().await.expect("the emulator answers JSON")
}

/// A conversation id as one path segment (`a:1…` ids hold characters a path may not).
fn urlencode(segment: &str) -> String {
    let mut url = reqwest::Url::parse("http://x/").unwrap();
    url.path_segments_mut().unwrap().push(segment);
    url.path()[1..].to_owned()
}

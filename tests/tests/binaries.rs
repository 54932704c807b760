//! The real binaries, as an operator meets them: a bad setting stops them with one line naming
//! it, secrets never reach the logs, and SIGTERM drains the dispatcher and exits 0.

use std::{process::Stdio, time::Duration};

use herald_emulator::TeamsUser;
use herald_shared::{amqp::queue_depth, store::JobStatus};
use herald_tests::{
    StackOptions, TestStack, binary, closed_port, job_for, publish_jobs, wait_until,
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
};

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_or_malformed_setting_stops_the_binary_with_one_line_naming_it() {
    for name in ["herald-ingress", "herald-dispatcher"] {
        let missing = Command::new(binary(name))
            .env_clear()
            .output()
            .await
            .unwrap();
        assert_eq!(missing.status.code(), Some(2), "{name}");
        let stderr = String::from_utf8(missing.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{name}: {stderr}");
        assert!(
            stderr.contains("HERALD_APP_ID") && stderr.contains("required"),
            "{name}: {stderr}"
        );

        let malformed = Command::new(binary(name))
            .env_clear()
            .env("HERALD_APP_ID", "app")
            .env("HERALD_APP_PASSWORD", "secret")
            .env("HERALD_REMINDER_DELAY", "soonish")
            .env("HERALD_PREFETCH", "lots")
            .env("HERALD_CLOUD", "mars")
            .output()
            .await
            .unwrap();
        assert_eq!(malformed.status.code(), Some(2), "{name}");
        let stderr = String::from_utf8(malformed.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{name}: {stderr}");
        assert!(
            stderr.contains("HERALD_CLOUD") && stderr.contains("mars"),
            "{name}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_reach_the_logs() {
    let mut child = Command::new(binary("herald-ingress"))
        .env_clear()
        .env("HERALD_APP_ID", "app")
        .env("HERALD_APP_PASSWORD", "pa55-word-never-logged")
        .env(
            "HERALD_AMQP_URL",
            "amqp://guest:amqp-secret-never-logged@127.0.0.1:5672/%2f",
        )
        .env(
            "HERALD_REDIS_URL",
            "redis://:redis-secret-never-logged@127.0.0.1:6379",
        )
        .env("HERALD_API_KEYS", "key-never-logged")
        .env("HERALD_HTTP_ADDR", "127.0.0.1:0")
        .env("HERALD_ADMIN_ADDR", "127.0.0.1:0")
        .env("HERALD_NAMESPACE", herald_tests::fresh_namespace())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut logged = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(line)) = lines.next_line().await {
            let listening = line.contains("ingress listening");
            logged.push(line);
            if listening {
                break;
            }
        }
    })
    .await;
    child.start_kill().unwrap();
    let all = logged.join("\n");
    assert!(
        all.contains("starting herald-ingress"),
        "the effective config is logged: {all}"
    );
    assert!(
        all.contains(r#"app_id: \"app\""#),
        "non-secret values are shown: {all}"
    );
    for secret in [
        "pa55-word-never-logged",
        "amqp-secret-never-logged",
        "redis-secret-never-logged",
        "key-never-logged",
    ] {
        assert!(!all.contains(secret), "{secret} leaked into the logs");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_the_work_in_flight_and_exits_zero() {
    // Pacing off: the ten jobs go to one conversation and must all be in flight at once.
    let mut stack = TestStack::start_with(
        StackOptions {
            start_dispatcher: false,
            rate_limits: false,
            reminder_delay: Duration::from_secs(3600),
            ..Default::default()
        }
        .with_env("HERALD_CONVERSATION_RATES", "off"),
    )
    .await;
    let user = TeamsUser::random();
    stack.emulator.install(&user).await.unwrap();
    let conversation = stack.emulator.personal_conversation_id(&user);
    let admin = closed_port().await;
    let mut child = Command::new(binary("herald-dispatcher"))
        .env_clear()
        .envs(stack.env().vars())
        .env("HERALD_ADMIN_ADDR", admin.to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let ready = format!("http://{admin}/readyz");
    wait_until(
        "the dispatcher binary to be ready",
        Duration::from_secs(30),
        || async {
            reqwest::get(&ready)
                .await
                .is_ok_and(|r| r.status().is_success())
        },
    )
    .await;
    stack
        .wait_for_activities(&conversation, 1, Duration::from_secs(10))
        .await; // the welcome

    // Slow answers: the jobs are mid-send when SIGTERM arrives.
    stack.emulator.set_latency(Duration::from_millis(1500));
    let jobs: Vec<_> = (0..10)
        .map(|i| job_for(&user, &format!("in flight {i}")))
        .collect();
    publish_jobs(&stack.namespace, &jobs.iter().collect::<Vec<_>>()).await;
    wait_until("the sends to start", Duration::from_secs(10), || async {
        let mut sending = 0;
        for job in &jobs {
            sending += usize::from(
                stack
                    .status(&job.id)
                    .await
                    .is_some_and(|s| s.status == JobStatus::Sending),
            );
        }
        sending == jobs.len()
    })
    .await;
    // The container healthcheck asks the running dispatcher through its admin port.
    let healthcheck = || {
        Command::new(binary("herald-dispatcher"))
            .env_clear()
            .envs(stack.env().vars())
            .env("HERALD_ADMIN_ADDR", admin.to_string())
            .arg("healthcheck")
            .status()
    };
    assert!(
        healthcheck().await.unwrap().success(),
        "the healthcheck sees a ready dispatcher"
    );
    let pid = child.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap()
            .success()
    );
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("it exits within the grace")
        .unwrap();
    assert_eq!(exit.code(), Some(0), "a clean exit");
    assert!(
        !healthcheck().await.unwrap().success(),
        "nothing answers once it has stopped"
    );
    // Finished work was acked, not handed back: nothing is waiting in the queue.
    let topology = herald_shared::amqp::Topology::new(stack.namespace.parse().unwrap());
    let connection = lapin::Connection::connect(&herald_tests::amqp_url(), Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = queue_depth(&channel, &topology.dispatch_queue())
        .await
        .unwrap();
    assert_eq!(
        queue.messages, 0,
        "deliveries finished during shutdown were returned unacked"
    );
    // Everything that was in flight was finished, not dropped.
    for job in &jobs {
        assert_eq!(
            stack.status(&job.id).await.unwrap().status,
            JobStatus::Delivered,
            "{}",
            job.id
        );
    }
    stack.emulator.set_latency(Duration::ZERO);
    stack.start_dispatcher().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let texts: Vec<_> = stack
        .emulator
        .activities(&conversation)
        .into_iter()
        .filter_map(|a| a.text)
        .collect();
    assert_eq!(
        texts.iter().filter(|t| t.starts_with("in flight")).count(),
        jobs.len(),
        "each exactly once"
    );
    stack.stop().await;
}

//! When Redis or RabbitMQ cannot take a write, the bot endpoint answers 503 (Teams retries)
//! and `/readyz` says unready: never a 200 for something that was not stored.

use std::time::Duration;

use herald_emulator::{Emulator, EmulatorConfig, TeamsUser, TokenVariant};
use herald_ingress::Ingress;
use herald_shared::config::IngressConfig;
use herald_tests::{
    NamespaceGuard, closed_port, fresh_namespace, listener, service_env, wait_until,
};

struct Started {
    emulator: Emulator,
    admin_url: String,
    stop: tokio_util::sync::CancellationToken,
    _guard: NamespaceGuard,
}

async fn ingress_with(key: &str, value: String) -> Started {
    herald_tests::init_logging();
    let namespace = fresh_namespace();
    let emulator = Emulator::start(EmulatorConfig::default(), listener().await)
        .await
        .unwrap();
    let mut env = service_env(&namespace, &emulator);
    env.set(key, value);
    let ingress = Ingress::build(
        IngressConfig::from_env(&env).unwrap(),
        listener().await,
        listener().await,
    )
    .unwrap();
    emulator.set_bot_endpoint(&format!("http://{}/api/messages", ingress.http_addr()));
    let admin_url = format!("http://{}", ingress.admin_addr());
    let stop = tokio_util::sync::CancellationToken::new();
    let until = stop.clone();
    tokio::spawn(ingress.run(async move { until.cancelled().await }));
    Started {
        emulator,
        admin_url,
        stop,
        _guard: NamespaceGuard::new(&namespace),
    }
}

async fn readyz(admin_url: &str) -> (u16, String) {
    let response = reqwest::get(format!("{admin_url}/readyz")).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn without_redis_activities_get_503_and_the_ingress_is_unready() {
    let down = closed_port().await;
    let started = ingress_with("HERALD_REDIS_URL", format!("redis://{down}")).await;
    let user = TeamsUser::random();
    for activity in [
        started.emulator.message_activity(&user, "hi"),
        started.emulator.install_activity(&user),
    ] {
        let (status, body) = started
            .emulator
            .post_activity(&activity, TokenVariant::Valid)
            .await
            .unwrap();
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("could not be stored"), "{body}");
    }
    let (status, body) = readyz(&started.admin_url).await;
    assert_eq!(status, 503);
    assert!(body.contains(r#""redis":"down""#), "{body}");
    started.stop.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn without_rabbitmq_an_install_gets_503_and_the_ingress_is_unready() {
    let down = closed_port().await;
    let started = ingress_with("HERALD_AMQP_URL", format!("amqp://guest:guest@{down}/%2f")).await;
    let user = TeamsUser::random();
    // The install cannot queue its greeting: 503, so that Teams delivers it again later.
    let install = started.emulator.install_activity(&user);
    let (status, body) = started
        .emulator
        .post_activity(&install, TokenVariant::Valid)
        .await
        .unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("greeting could not be queued"), "{body}");
    // A plain message needs only Redis: it is stored and acknowledged.
    let message = started.emulator.message_activity(&user, "hello");
    assert_eq!(
        started
            .emulator
            .post_activity(&message, TokenVariant::Valid)
            .await
            .unwrap()
            .0,
        200
    );
    let (status, body) = readyz(&started.admin_url).await;
    assert_eq!(status, 503);
    assert!(
        body.contains(r#""rabbitmq":"down""#) && body.contains(r#""redis":"up""#),
        "{body}"
    );
    started.stop.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn with_both_up_the_ingress_turns_ready() {
    let started = ingress_with("HERALD_LOG_FORMAT", "pretty".into()).await;
    wait_until("readiness", Duration::from_secs(20), || async {
        readyz(&started.admin_url).await.0 == 200
    })
    .await;
    let health = reqwest::get(format!("{}/healthz", started.admin_url))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    started.stop.cancel();
}

/// RabbitMQ is cut off while a user installs: the install gets 503, and when Teams delivers the
/// install again after the broker is back, the greeting goes out: one welcome, one reminder.
#[tokio::test(flavor = "multi_thread")]
async fn an_install_refused_during_an_outage_is_greeted_once_when_teams_retries() {
    use herald_tests::{StackOptions, TestStack, proxy::Proxy};

    let proxy = Proxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let amqp = format!("amqp://guest:guest@{}/%2f", proxy.addr());
    let stack = TestStack::start_with(
        StackOptions {
            reminder_delay: Duration::from_secs(2),
            start_dispatcher: false,
            ..Default::default()
        }
        .with_env("HERALD_AMQP_URL", &amqp),
    )
    .await;
    let user = TeamsUser::random();
    let ready = format!("{}/readyz", stack.ingress_admin_url);

    proxy.cut();
    wait_until("the ingress to notice", Duration::from_secs(15), || async {
        reqwest::get(&ready).await.is_ok_and(|r| r.status() == 503)
    })
    .await;
    let (status, body) = stack
        .emulator
        .post_activity(&stack.emulator.install_activity(&user), TokenVariant::Valid)
        .await
        .unwrap();
    assert_eq!(status, 503, "{body}");

    proxy.restore();
    wait_until(
        "the ingress to reconnect",
        Duration::from_secs(15),
        || async { reqwest::get(&ready).await.is_ok_and(|r| r.status() == 200) },
    )
    .await;
    // Teams retries; here its second activity for the same install arrives first.
    let (status, body) = stack
        .emulator
        .post_activity(
            &stack.emulator.bot_added_activity(&user),
            TokenVariant::Valid,
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, _) = stack
        .emulator
        .post_activity(&stack.emulator.install_activity(&user), TokenVariant::Valid)
        .await
        .unwrap();
    assert_eq!(status, 200);

    let mut stack = stack;
    stack.start_dispatcher().await;
    let conversation = stack.emulator.personal_conversation_id(&user);
    stack
        .wait_for_activities(&conversation, 2, Duration::from_secs(15))
        .await;
    let exactly_two = herald_tests::holds_for(Duration::from_secs(3), || async {
        stack.emulator.activities(&conversation).len() == 2
    })
    .await;
    assert!(
        exactly_two,
        "{:?}",
        stack
            .emulator
            .activities(&conversation)
            .iter()
            .map(|a| a.text.clone())
            .collect::<Vec<_>>()
    );
    stack.stop().await;
}

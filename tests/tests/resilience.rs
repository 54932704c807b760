//! Outages and crashes: a job whose handler keeps dying ends in the dead-letter queue, cut
//! connections heal by themselves with nothing lost or left unacked, and Redis with an
//! append-only file keeps everything across a restart.

use std::time::Duration;

use herald_emulator::TeamsUser;
use herald_shared::{
    amqp::{Topology, queue_depth, topology::DISPATCH_DELIVERY_LIMIT},
    job::Job,
    store::JobStatus,
};
use herald_tests::{
    StackOptions, TestStack, job_for, proxy::Proxy, publish_jobs, publish_raw, redis_server,
    wait_until,
};
use lapin::options::{BasicGetOptions, BasicNackOptions};

/// A handler that dies on a job, again and again (simulated by returning the delivery to the
/// queue the way a dead consumer's channel does): RabbitMQ gives up after the delivery limit and
/// dead-letters it, instead of looping forever.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_that_keeps_crashing_its_handler_ends_in_the_dead_letter_queue() {
    let stack = TestStack::start_with(StackOptions {
        start_dispatcher: false,
        ..Default::default()
    })
    .await;
    let topology = Topology::new(stack.namespace.parse().unwrap());
    publish_raw(&stack.namespace, "crasher", br#"{"id":"crasher","to":{"user":{"tenantId":"t","aadObjectId":"u"}},"message":{"text":"boom"}}"#)
        .await
        .unwrap();
    let connection = lapin::Connection::connect(&herald_tests::amqp_url(), Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut deliveries = 0;
    loop {
        let got = channel
            .basic_get(
                topology.dispatch_queue().as_str().into(),
                BasicGetOptions::default(),
            )
            .await
            .unwrap();
        let Some(message) = got else { break };
        deliveries += 1;
        message
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(
            deliveries <= DISPATCH_DELIVERY_LIMIT + 2,
            "the job was never given up"
        );
    }
    assert!(
        deliveries > DISPATCH_DELIVERY_LIMIT,
        "handed out {deliveries} times"
    );
    // Dead-lettering is at-least-once and asynchronous: the dead letter lands a moment later.
    let mut dead = None;
    for _ in 0..100 {
        let queue = topology.dead_queue();
        dead = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap();
        if dead.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dead = dead.expect("the job is in the dead-letter queue");
    assert_eq!(
        dead.properties.message_id().as_ref().map(|m| m.as_str()),
        Some("crasher")
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cut_connections_heal_by_themselves_and_no_job_is_lost_or_left_unacked() {
    let amqp = Proxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let redis = Proxy::start("127.0.0.1:6379".parse().unwrap()).await;
    let stack = TestStack::start_with(
        StackOptions {
            reminder_delay: Duration::from_secs(3600),
            rate_limits: false,
            ..Default::default()
        }
        .with_env(
            "HERALD_AMQP_URL",
            &format!("amqp://guest:guest@{}/%2f", amqp.addr()),
        )
        .with_env("HERALD_REDIS_URL", &format!("redis://{}", redis.addr()))
        .with_env("HERALD_CONVERSATION_RATES", "off"),
    )
    .await;
    let users: Vec<TeamsUser> = (0..5).map(|_| TeamsUser::random()).collect();
    for user in &users {
        stack.emulator.install(user).await.unwrap();
    }
    let dispatcher_ready = format!("{}/readyz", stack.dispatcher_admin_url.clone().unwrap());
    let status_of = |url: String| async move {
        reqwest::get(url)
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };

    // Jobs go in while the links are cut, one after the other.
    stack.emulator.set_latency(Duration::from_millis(50));
    let jobs: Vec<Job> = (0..100)
        .map(|i| job_for(&users[i % users.len()], &format!("through the cut {i}")))
        .collect();
    publish_jobs(&stack.namespace, &jobs[..50].iter().collect::<Vec<_>>()).await;
    for proxy in [&amqp, &redis] {
        proxy.cut();
        wait_until("unready", Duration::from_secs(20), || async {
            status_of(dispatcher_ready.clone()).await == 503
        })
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        proxy.restore();
        wait_until("ready again", Duration::from_secs(30), || async {
            status_of(dispatcher_ready.clone()).await == 200
        })
        .await;
    }
    publish_jobs(&stack.namespace, &jobs[50..].iter().collect::<Vec<_>>()).await;

    stack
        .wait_all_delivered(&jobs, Duration::from_secs(60))
        .await;
    // Nothing left behind in the broker: no job waiting, none unacked.
    let topology = Topology::new(stack.namespace.parse().unwrap());
    let connection = lapin::Connection::connect(&herald_tests::amqp_url(), Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    wait_until(
        "the dispatch queue to be empty",
        Duration::from_secs(10),
        || async {
            queue_depth(&channel, &topology.dispatch_queue())
                .await
                .unwrap()
                .messages
                == 0
        },
    )
    .await;
    let mut texts: Vec<String> = users
        .iter()
        .flat_map(|u| {
            stack
                .emulator
                .activities(&stack.emulator.personal_conversation_id(u))
        })
        .filter_map(|a| a.text)
        .filter(|t| t.starts_with("through the cut"))
        .collect();
    texts.sort();
    texts.dedup();
    assert_eq!(texts.len(), jobs.len(), "every job reached Teams");
    stack.stop().await;
}

/// A Redis of the test's own, with an append-only file, on a spare port.
struct DurableRedis {
    dir: std::path::PathBuf,
    port: u16,
    child: Option<std::process::Child>,
}

impl DurableRedis {
    fn start(dir: std::path::PathBuf, port: u16) -> Self {
        let mut redis = Self {
            dir,
            port,
            child: None,
        };
        redis.launch();
        redis
    }

    fn launch(&mut self) {
        let durable = ["--appendonly", "yes", "--appendfsync", "always"];
        self.child = Some(redis_server(self.port, &durable, Some(&self.dir)));
    }

    /// Stops it the hard way (SIGKILL: no chance to save anything) and starts it again.
    fn crash_and_restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
        self.launch();
    }
}

impl Drop for DurableRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_an_append_only_file_a_redis_crash_loses_no_reference_or_status() {
    let port = herald_tests::closed_port().await.port();
    let dir = std::env::temp_dir().join(format!("herald-aof-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut redis = DurableRedis::start(dir, port);
    let stack = TestStack::start_with(
        StackOptions {
            reminder_delay: Duration::from_secs(4),
            ..Default::default()
        }
        .with_env("HERALD_REDIS_URL", &format!("redis://127.0.0.1:{port}")),
    )
    .await;
    // The stack's own stores read the Redis the services were pointed at.
    let (conversations, statuses) = (stack.conversations.clone(), stack.statuses.clone());
    let user = TeamsUser::random();
    stack.emulator.install(&user).await.unwrap();
    let conversation = stack.emulator.personal_conversation_id(&user);
    stack
        .wait_for_activities(&conversation, 1, Duration::from_secs(10))
        .await;
    let welcome =
        herald_ingress::greeting::greeting_job_id(&stack.namespace, &conversation, 1, "welcome");
    let reminder =
        herald_ingress::greeting::greeting_job_id(&stack.namespace, &conversation, 1, "reminder");
    wait_until("the welcome's status", Duration::from_secs(10), || async {
        statuses
            .get(&welcome)
            .await
            .ok()
            .flatten()
            .is_some_and(|s| s.status == JobStatus::Delivered)
    })
    .await;

    // Redis dies mid-run, between the welcome and the reminder, and comes back.
    redis.crash_and_restart();
    // The first command on a connection to the dead process fails; the next reconnects.
    wait_until("Redis to answer again", Duration::from_secs(10), || async {
        conversations.get(&conversation).await.is_ok()
    })
    .await;
    let reference = conversations
        .get(&conversation)
        .await
        .unwrap()
        .expect("the reference survived");
    assert_eq!(
        reference.user_aad_object_id.as_deref(),
        Some(user.aad_object_id.as_str())
    );
    assert_eq!(
        statuses
            .get(&welcome)
            .await
            .unwrap()
            .expect("the welcome's status survived")
            .status,
        JobStatus::Delivered
    );
    assert!(
        statuses.get(&reminder).await.unwrap().is_some(),
        "the reminder's status survived"
    );

    // And the story goes on: the reminder arrives, once.
    stack
        .wait_for_activities(&conversation, 2, Duration::from_secs(20))
        .await;
    wait_until("the reminder's status", Duration::from_secs(10), || async {
        statuses
            .get(&reminder)
            .await
            .ok()
            .flatten()
            .is_some_and(|s| s.status == JobStatus::Delivered)
    })
    .await;
    assert_eq!(stack.emulator.activities(&conversation).len(), 2);
    stack.stop().await;
}

/// 20,000 jobs wait as timers; then every process of the delay machinery is SIGKILLed (both
/// dispatcher replicas, whose pumps publish due timers) and Redis crashes and comes back from
/// its append-only file. When they are due, every job is sent once, none early, by two new
/// replicas side by side.
#[tokio::test(flavor = "multi_thread")]
async fn waiting_jobs_survive_sigkill_of_every_dispatcher_and_a_redis_crash_and_fire_once() {
    const USERS: usize = 100;
    const JOBS: usize = 20_000;
    let port = herald_tests::closed_port().await.port();
    let dir = std::env::temp_dir().join(format!("herald-aof-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut redis = DurableRedis::start(dir, port);
    let redis_url = format!("redis://127.0.0.1:{port}");
    let stack = TestStack::start_with(
        StackOptions {
            start_dispatcher: false,
            ..StackOptions::unlimited()
        }
        .with_env("HERALD_REDIS_URL", &redis_url),
    )
    .await;
    let users: Vec<TeamsUser> = (0..USERS).map(|_| TeamsUser::random()).collect();
    for user in &users {
        stack.emulator.install(user).await.unwrap();
    }
    let dispatchers = || {
        (0..2)
            .map(|_| {
                herald_tests::service_command("herald-dispatcher", &stack.env())
                    .env("HERALD_ADMIN_ADDR", "127.0.0.1:0")
                    .spawn()
                    .expect("the dispatcher starts")
            })
            .collect::<Vec<_>>()
    };
    let mut first = dispatchers();

    // Due 60 s from now: published straight to the jobs exchange, each is taken early by a
    // dispatcher, recorded `scheduled` and parked.
    let due = time::OffsetDateTime::now_utc() + Duration::from_secs(60);
    let jobs: Vec<Job> = (0..JOBS)
        .map(|i| {
            let mut job = job_for(&users[i % USERS], &format!("waited {i}"));
            job.deliver_at = Some(due);
            job
        })
        .collect();
    publish_jobs(&stack.namespace, &jobs.iter().collect::<Vec<_>>()).await;
    let timers = herald_shared::store::TimerStore::new(
        herald_shared::store::Redis::new(
            &redis_url.parse().unwrap(),
            stack.namespace.parse().unwrap(),
        )
        .unwrap(),
    );
    // Every job parked, and the greetings' reminders too (an hour off).
    wait_until(
        "every job to be parked",
        Duration::from_secs(50),
        || async { timers.waiting().await.unwrap_or(0) >= (JOBS + USERS) as u64 },
    )
    .await;
    let parked_at = time::OffsetDateTime::now_utc();
    assert!(
        parked_at < due,
        "parking took too long for the test to mean anything"
    );

    // Every process that moves timers dies without a chance to finish anything, and Redis
    // crashes and restarts from its append-only file.
    for dispatcher in &mut first {
        dispatcher.start_kill().unwrap();
        dispatcher.wait().await.unwrap();
    }
    redis.crash_and_restart();
    wait_until("Redis to answer again", Duration::from_secs(10), || async {
        timers.waiting().await.is_ok()
    })
    .await;
    assert_eq!(
        timers.waiting().await.unwrap(),
        (JOBS + USERS) as u64,
        "every timer survived"
    );
    let _second = dispatchers();

    let sent = |stack: &TestStack| -> Vec<(String, time::OffsetDateTime)> {
        users
            .iter()
            .flat_map(|u| {
                stack
                    .emulator
                    .activities(&stack.emulator.personal_conversation_id(u))
            })
            .filter_map(|a| Some((a.text?, a.received_at)))
            .filter(|(text, _)| text.starts_with("waited "))
            .collect()
    };
    wait_until("every job to be sent", Duration::from_secs(180), || async {
        sent(&stack).len() >= JOBS
    })
    .await;
    // A little longer, for a copy that would come late.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sent = sent(&stack);
    let mut texts: Vec<&str> = sent.iter().map(|(t, _)| t.as_str()).collect();
    texts.sort_unstable();
    texts.dedup();
    assert_eq!(texts.len(), JOBS, "every job arrived");
    assert_eq!(sent.len(), JOBS, "and each once");
    let early = sent.iter().filter(|(_, at)| *at < due).count();
    assert_eq!(early, 0, "none before its due time");
    let last = sent.iter().map(|(_, at)| *at).max().unwrap();
    eprintln!(
        "{JOBS} jobs parked in {:.1} s, survived the kills and the Redis crash; the last sent {:.1} s after its due time",
        (parked_at - (due - Duration::from_secs(60))).as_seconds_f64(),
        (last - due).as_seconds_f64()
    );
    stack.stop().await;
}

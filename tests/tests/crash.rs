//! The dispatcher process killed with SIGKILL mid-flight, then started again: every job is
//! delivered, and the duplicates (the sends that were in flight when it died, re-sent once
//! their lease lapsed) number at most the prefetch.

use std::{collections::HashMap, time::Duration};

use herald_emulator::TeamsUser;
use herald_shared::job::{Job, Message, Target, UserTarget};
use herald_tests::{StackOptions, TestStack, publish_raw_many, service_command, wait_until};
use tokio::process::Child;

const JOBS: usize = 300;
const PREFETCH: usize = 32;

fn spawn_dispatcher(stack: &TestStack) -> Child {
    let mut command = service_command("herald-dispatcher", &stack.env());
    command
        .env("HERALD_ADMIN_ADDR", "127.0.0.1:0")
        .env("HERALD_PREFETCH", PREFETCH.to_string());
    command.spawn().expect("the dispatcher binary starts")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dispatcher_killed_mid_flight_loses_no_job_and_duplicates_at_most_the_prefetch() {
    let stack = TestStack::start_with(StackOptions {
        start_dispatcher: false,
        rate_limits: false,
        ..Default::default()
    })
    .await;
    // Slow answers keep a full prefetch of sends in flight when the process dies.
    stack.emulator.set_latency(Duration::from_millis(300));
    let users: Vec<TeamsUser> = (0..10).map(|_| TeamsUser::random()).collect();
    for user in &users {
        stack.emulator.install(user).await.unwrap();
    }
    let jobs: Vec<Job> = (0..JOBS)
        .map(|i| {
            let user = &users[i % users.len()];
            Job::new(
                uuid::Uuid::new_v4().into(),
                Target::User(UserTarget {
                    tenant_id: user.tenant_id.clone(),
                    aad_object_id: user.aad_object_id.clone(),
                }),
                Message::text(format!("job {i}")),
                None,
                None,
            )
            .unwrap()
        })
        .collect();
    let bodies: Vec<(String, Vec<u8>)> = jobs
        .iter()
        .map(|j| (j.id.to_string(), serde_json::to_vec(j).unwrap()))
        .collect();
    publish_raw_many(&stack.namespace, &bodies).await.unwrap();

    let received_jobs = |stack: &TestStack| -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for user in &users {
            for activity in stack
                .emulator
                .activities(&stack.emulator.personal_conversation_id(user))
            {
                if let Some(text) = activity.text.filter(|t| t.starts_with("job ")) {
                    *counts.entry(text).or_insert(0) += 1;
                }
            }
        }
        counts
    };

    let mut first = spawn_dispatcher(&stack);
    wait_until(
        "a quarter of the jobs to arrive",
        Duration::from_secs(60),
        || async { received_jobs(&stack).len() >= JOBS / 4 },
    )
    .await;
    first.start_kill().unwrap(); // SIGKILL: no shutdown, no acks, leases left behind
    first.wait().await.unwrap();
    let at_kill = received_jobs(&stack).len();

    let mut second = spawn_dispatcher(&stack);
    stack
        .wait_all_delivered(&jobs, Duration::from_secs(120))
        .await;
    let counts = received_jobs(&stack);
    assert_eq!(counts.len(), JOBS, "every job reached Teams");
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    eprintln!(
        "killed after {at_kill} of {JOBS} jobs; duplicates after the restart: {duplicates} (prefetch {PREFETCH})"
    );
    assert!(
        duplicates <= PREFETCH,
        "{duplicates} duplicates, more than the prefetch"
    );
    second.start_kill().unwrap();
    let _ = second.wait().await;
    stack.stop().await;
}

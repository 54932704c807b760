//! The OpenAPI document tells the whole truth: schemathesis (pinned in
//! `tests/conformance/requirements.txt`) generates requests from `/v1/openapi.json`, valid and
//! invalid, follows the document's links from `POST` to `GET`/`PATCH`/`DELETE` with real ids,
//! and checks every answer against the document. Any finding fails the test.
//!
//! Two runs: a fixed seed, so a finding reproduces, and a random one (printed; set
//! `HERALD_CONFORMANCE_SEED` to replay it), so the search goes on finding new cases.
//! `scripts/api-conformance` runs only this test and shows schemathesis' report.

use std::process::Stdio;

use herald_tests::{API_KEY, TestStack, repository};

/// The seed every run uses first.
const FIXED_SEED: u64 = 20_261_206;

/// Cases per operation and generation phase.
const MAX_EXAMPLES: &str = "40";

#[tokio::test(flavor = "multi_thread")]
async fn the_api_answers_as_its_openapi_document_says() {
    let stack = TestStack::start().await;
    let random_seed = std::env::var("HERALD_CONFORMANCE_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| u64::from(rand_seed()));
    for seed in [FIXED_SEED, random_seed] {
        let report = schemathesis(&stack.ingress_url, seed).await;
        assert!(
            report.passed,
            "schemathesis found the document and the service disagreeing (seed {seed}); \
             replay with HERALD_CONFORMANCE_SEED={seed} scripts/api-conformance\n{}",
            report.output
        );
        eprintln!("seed {seed}: no findings\n{}", report.output);
    }
    stack.stop().await;
}

struct Report {
    passed: bool,
    output: String,
}

async fn schemathesis(ingress_url: &str, seed: u64) -> Report {
    let conformance = repository().join("tests/conformance");
    let st = repository().join("target/python/bin/st");
    assert!(
        st.exists(),
        "schemathesis is missing: run scripts/ensure-python (scripts/test does)"
    );
    // Its example database and reports go to target/, not into the working tree.
    let scratch = repository().join("target/conformance");
    std::fs::create_dir_all(&scratch).unwrap();
    let output = tokio::process::Command::new(st)
        .arg("--config-file")
        .arg(conformance.join("schemathesis.toml"))
        .arg("--no-color")
        .arg("run")
        .arg(format!("{ingress_url}/v1/openapi.json"))
        .args(["--header", &format!("Authorization: Bearer {API_KEY}")])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--seed", &seed.to_string()])
        .env("SCHEMATHESIS_HOOKS", conformance.join("hooks.py"))
        .current_dir(&scratch)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("schemathesis runs");
    Report {
        passed: output.status.success(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// A seed that differs from run to run.
fn rand_seed() -> u32 {
    uuid::Uuid::new_v4().as_fields().0
}

//! The binary refuses a bad environment with one line naming the variable, and exit code 2.

use std::process::Command;

fn run(vars: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald-emulator"));
    for var in [
        "HERALD_APP_ID",
        "HERALD_APP_PASSWORD",
        "HERALD_EMULATOR_ADDR",
        "HERALD_EMULATOR_PUBLIC_URL",
        "HERALD_EMULATOR_BOT_ENDPOINT",
        "HERALD_TOKEN_ISSUER",
        "HERALD_EMULATOR_RATE_LIMITS",
        "HERALD_EMULATOR_LATENCY",
        "HERALD_LOG_FORMAT",
    ] {
        command.env_remove(var);
    }
    command.envs(vars.iter().copied());
    let output = command.output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_missing_secret_is_named() {
    let (code, stderr) = run(&[("HERALD_APP_ID", "app")]);
    assert_eq!(code, Some(2));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("HERALD_APP_PASSWORD"), "{stderr}");
}

#[test]
fn a_malformed_latency_is_named() {
    let (code, stderr) = run(&[
        ("HERALD_APP_ID", "app"),
        ("HERALD_APP_PASSWORD", "pw"),
        ("HERALD_EMULATOR_LATENCY", "a while"),
    ]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("HERALD_EMULATOR_LATENCY"), "{stderr}");
}

//! The real `paystream` binary refuses the repository's development secrets unless it runs in
//! dev mode (`PAYSTREAM_DEV_MODE=1`, which dev/lib.sh exports): `paystream api` for its JWT
//! and webhook secrets, `paystream provider-sim` for its signing secret. Each exits non-zero
//! at once, naming the variable to fix. No stack is needed: the check comes first.

use std::time::Duration;

use paystream_api::secrets::{DEV_JWT_HS256_SECRET, DEV_MODE_VARIABLE, DEV_PROVIDER_WEBHOOK_SECRET};

/// How long the binary may take to refuse (it checks before connecting to anything).
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
/// A secret nobody published.
const OWN_SECRET: &str = "a-secret-chosen-by-the-operator-of-this-deployment";

/// Runs `paystream <args>` outside dev mode with `env`; its exit status and stderr.
async fn run(args: &[&str], env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_paystream"));
    command
        .args(args)
        .env_remove(DEV_MODE_VARIABLE)
        .env_remove("PAYSTREAM_JWT_HS256_SECRET")
        .env_remove("PAYSTREAM_PROVIDER_WEBHOOK_SECRETS")
        // Should a check let a secret through, the process fails fast on a database that is
        // not there instead of serving; the assertions on the message then fail.
        .env("PAYSTREAM_WALLET_DB_URL", "postgres://nobody@127.0.0.1:1/none")
        .env("PAYSTREAM_LEDGER_DB_URL", "postgres://nobody@127.0.0.1:1/none")
        .envs(env.iter().copied())
        .kill_on_drop(true);
    let output = tokio::time::timeout(EXIT_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("paystream {args:?} did not exit within {EXIT_TIMEOUT:?}"))
        .expect("the paystream binary runs");
    (output.status, String::from_utf8_lossy(&output.stderr).into_owned())
}

fn assert_refused(what: &str, (status, stderr): (std::process::ExitStatus, String), variable: &str) {
    assert!(!status.success(), "{what}: exited {status}; stderr: {stderr}");
    assert!(
        stderr.contains(variable)
            && stderr.contains("development secret")
            && stderr.contains("PAYSTREAM_DEV_MODE=1"),
        "{what}: the error names {variable} and dev mode; stderr: {stderr}"
    );
}

#[tokio::test]
async fn paystream_api_refuses_the_published_secrets_outside_dev_mode() {
    let api = ["api", "--timeout-s", "1", "--listen", "127.0.0.1:0"];
    let dev_jwt = run(
        &api,
        &[
            ("PAYSTREAM_JWT_HS256_SECRET", DEV_JWT_HS256_SECRET),
            ("PAYSTREAM_PROVIDER_WEBHOOK_SECRETS", OWN_SECRET),
        ],
    )
    .await;
    assert_refused("the dev JWT secret", dev_jwt, "PAYSTREAM_JWT_HS256_SECRET");
    let dev_webhook = run(
        &api,
        &[
            ("PAYSTREAM_JWT_HS256_SECRET", OWN_SECRET),
            (
                "PAYSTREAM_PROVIDER_WEBHOOK_SECRETS",
                format!("{OWN_SECRET},{DEV_PROVIDER_WEBHOOK_SECRET}").as_str(),
            ),
        ],
    )
    .await;
    assert_refused("the dev webhook secret", dev_webhook, "PAYSTREAM_PROVIDER_WEBHOOK_SECRETS");
    // A typo in the switch is refused too, rather than read as "off" or "on".
    let (status, stderr) = run(
        &api,
        &[
            (DEV_MODE_VARIABLE, "yes"),
            ("PAYSTREAM_JWT_HS256_SECRET", DEV_JWT_HS256_SECRET),
            ("PAYSTREAM_PROVIDER_WEBHOOK_SECRETS", DEV_PROVIDER_WEBHOOK_SECRET),
        ],
    )
    .await;
    assert!(!status.success() && stderr.contains(DEV_MODE_VARIABLE), "{stderr}");
}

#[tokio::test]
async fn paystream_provider_sim_refuses_the_published_secret_outside_dev_mode() {
    let sim = ["provider-sim", "--listen", "127.0.0.1:0"];
    let refused = run(&sim, &[("PAYSTREAM_PROVIDER_WEBHOOK_SECRETS", DEV_PROVIDER_WEBHOOK_SECRET)]).await;
    assert_refused("the simulator's dev signing secret", refused, "PAYSTREAM_PROVIDER_WEBHOOK_SECRETS");
}

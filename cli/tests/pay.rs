//! `paystream wallet` and `paystream pay --follow` as a person runs them: the binary against the
//! API's handlers on 127.0.0.1:0 (the real wallet database and registry), with a token the binary
//! mints itself in dev mode.
//!
//! The payment's `PaymentInitiated` goes to a topic of this test's own (the API's outbox topics
//! are settings), so no saga takes it up; the test settles it through settlement's own
//! transaction while `--follow` watches. The read side does not know the payment, so `--follow`
//! reads it from the wallet's balance, as it does wherever no payment view runs. (Through the
//! whole flow, with the view, `paystream pay --follow` is what the README's session by hand runs.)

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{api, Api, SECRET};
use paystream_processors::settlement::apply::{self, Outcome};
use paystream_schemas::events::{PaymentResult, PaymentResultStatus};
use paystream_schemas::{time, Amount};
use paystream_stack::testkit;
use tokio::io::{AsyncBufReadExt, BufReader};
use uuid::Uuid;

/// How long one run of the command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// `paystream <args>` in dev mode against `api`, stdout piped (not a terminal: plain lines).
fn command(api: &Api, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_paystream"));
    command
        .args(args)
        .env("PAYSTREAM_DEV_MODE", "1")
        .env("PAYSTREAM_JWT_HS256_SECRET", SECRET)
        .env("PAYSTREAM_API_URL", &api.url)
        .env_remove("PAYSTREAM_TOKEN")
        .kill_on_drop(true);
    command
}

/// Runs `paystream <args>` to its end; stdout, after checking it succeeded.
async fn run(api: &Api, args: &[&str]) -> String {
    let output = tokio::time::timeout(COMMAND_TIMEOUT, command(api, args).output())
        .await
        .unwrap_or_else(|_| panic!("paystream {args:?} did not end within {COMMAND_TIMEOUT:?}"))
        .expect("run paystream");
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).expect("utf-8 output");
    assert!(output.status.success(), "paystream {args:?}: {}", text(output.stderr));
    text(output.stdout)
}

/// The next line `paystream pay` prints (bounded).
async fn next_line(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> String {
    tokio::time::timeout(COMMAND_TIMEOUT, lines.next_line())
        .await
        .expect("paystream pay printed nothing in time")
        .unwrap()
        .expect("paystream pay ended early")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_by_hand_creates_a_wallet_deposits_pays_and_follows_the_payment_to_its_end() {
    let api = api().await;
    let user = Uuid::new_v4().to_string();

    let wallet = run(&api, &["wallet", "create", "--user", &user, "--name", "pay cli test"]).await;
    let wallet = wallet.trim().to_owned();
    Uuid::parse_str(&wallet).unwrap_or_else(|_| panic!("a wallet id: {wallet:?}"));
    let again = run(&api, &["wallet", "create", "--user", &user]).await;
    assert_eq!(again.trim(), wallet, "the user's wallet again");
    let deposited = run(&api, &["wallet", "deposit", "--wallet", &wallet, "--amount", "100.00"]).await;
    assert!(deposited.contains("available 100.00  reserved 0.00"), "{deposited}");

    let payment_id = Uuid::new_v4();
    let mut follow = command(
        &api,
        &[
            "pay",
            "--user",
            &user,
            "--wallet",
            &wallet,
            "--amount",
            "12.50",
            "--kind",
            "mobile",
            "--payment-id",
            &payment_id.to_string(),
            "--follow",
            "--timeout-s",
            "60",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("paystream pay");
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let accepted = next_line(&mut lines).await;
    assert!(accepted.starts_with(&format!("payment {payment_id} accepted at ")), "{accepted}");
    assert!(accepted.contains("12.50 RUB"), "{accepted}");
    let reserved = next_line(&mut lines).await;
    assert!(reserved.contains("RESERVED (wallet: available 87.50, reserved 12.50)"), "{reserved}");

    // Settlement applies the payment's result, as it would after the provider charged it.
    let db = testkit::wallet_db(&api.settings).await;
    let result = PaymentResult {
        payment_result_id: PaymentResult::id_for(payment_id, PaymentResultStatus::Completed),
        payment_id,
        wallet_id: wallet.parse().unwrap(),
        amount: Amount::from_minor(1_250).unwrap(),
        status: PaymentResultStatus::Completed,
        reason: "charged".into(),
        decided_at: time::now(),
    };
    assert!(matches!(apply::apply(&db, &result).await.unwrap(), Outcome::Applied(_)));

    let completed = next_line(&mut lines).await;
    assert!(completed.contains("  COMPLETED (from the wallet's balance)"), "{completed}");
    assert!(completed.split_whitespace().nth(1).is_some_and(|t| t.starts_with('+')), "a time: {completed}");
    let summary = next_line(&mut lines).await;
    assert!(summary.starts_with(&format!("payment {payment_id} COMPLETED")), "{summary}");
    assert!(summary.contains("(12.50 RUB)"), "{summary}");
    let status = tokio::time::timeout(COMMAND_TIMEOUT, follow.wait()).await.expect("it ends").unwrap();
    assert!(status.success());

    let shown = run(&api, &["wallet", "show", "--user", &user]).await;
    assert_eq!(shown.trim(), format!("{wallet}  RUB  available 87.50  reserved 0.00"));
    drop(api);
}

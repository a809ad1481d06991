//! `paystream reservations` as an operator runs it: the binary against the real wallet database.
//!
//! The queries and the nudge themselves are proven in `processors/tests/stranded.rs` (through
//! Debezium, the saga and settlement); this test holds the command to its interface: the table,
//! the exit codes, and refusals that write nothing. It nudges nothing real, because a nudge goes
//! to the production `payments.initiated`, which a running `dev/run` or whole-flow test consumes.

use std::time::Duration;

use paystream_processors::settlement::apply::{self, Outcome};
use paystream_schemas::events::{PaymentResult, PaymentResultStatus};
use paystream_schemas::{time, Amount};
use paystream_stack::testkit;
use paystream_stack::StackSettings;
use uuid::Uuid;

/// How long one run of the command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `paystream <args>`; its exit code, stdout and stderr.
async fn paystream(args: &[&str]) -> (Option<i32>, String, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_paystream"));
    command.args(args).kill_on_drop(true);
    let output = tokio::time::timeout(COMMAND_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("paystream {args:?} did not end within {COMMAND_TIMEOUT:?}"))
        .expect("run paystream");
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).expect("utf-8 output");
    (output.status.code(), text(output.stdout), text(output.stderr))
}

#[tokio::test(flavor = "multi_thread")]
async fn stranded_lists_a_pending_payment_in_a_table_and_nudge_refuses_what_it_cannot_resolve() {
    let settings = StackSettings::from_env();
    let db = testkit::wallet_db(&settings).await;
    // A payment accepted 10 minutes ago whose event was lost: reserved and PENDING, no outbox row.
    let (user_id, wallet_id, payment_id) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let amount: Amount = "42.00".parse().unwrap();
    let mut tx = db.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO users (user_id, name, phone) VALUES ($1, 'reservations cli test', '+70000000000')",
    )
    .bind(user_id)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO wallets (wallet_id, user_id, currency, available, reserved) VALUES ($1, $2, 'RUB', 0, $3)",
    )
    .bind(wallet_id)
    .bind(user_id)
    .bind(amount.to_decimal())
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query("INSERT INTO deposits (idempotency_key, wallet_id, amount) VALUES ($1, $2, $3)")
        .bind(testkit::unique("it-reservations-deposit"))
        .bind(wallet_id)
        .bind(amount.to_decimal())
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO wallet_transactions (payment_id, wallet_id, amount, kind, description, requested_at, accepted_at)
         VALUES ($1, $2, $3, 'mobile', 'cli test', now() - interval '601 seconds', now() - interval '600 seconds')",
    )
    .bind(payment_id)
    .bind(wallet_id)
    .bind(amount.to_decimal())
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let wallet = wallet_id.to_string();
    let (code, stdout, stderr) = paystream(&["reservations", "stranded", "--wallet", &wallet]).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["paymentId", "wallet", "amount", "accepted", "at", "(UTC)", "age"],
        "{stdout}"
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(&row[..4], [payment_id.to_string().as_str(), wallet.as_str(), "42.00", "RUB"], "{stdout}");
    assert!(row[5].starts_with("10m"), "about ten minutes old: {stdout}");
    assert!(
        lines[2].starts_with("1 stranded reservation(s): PENDING and accepted more than 170 s ago"),
        "{stdout}"
    );
    // Younger than the threshold asked for: not listed, still exit 0.
    let (code, stdout, _) =
        paystream(&["reservations", "stranded", "--wallet", &wallet, "--older-than-s", "3600"]).await;
    assert_eq!(
        (code, stdout.lines().next()),
        (Some(0), Some("0 stranded reservation(s): PENDING and accepted more than 3600 s ago"))
    );

    // Refusals: an unknown payment (exit 1, nothing written), no payment named (usage, exit 2).
    let unknown = Uuid::new_v4().to_string();
    let (code, _, stderr) = paystream(&["reservations", "nudge", &unknown]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(&format!("no payment {unknown} was accepted")), "{stderr}");
    let (code, _, stderr) = paystream(&["reservations", "nudge"]).await;
    assert_eq!(code, Some(2), "{stderr}");

    // Settled through settlement's own transaction, it is listed no more — and not nudged.
    let result = PaymentResult {
        payment_result_id: PaymentResult::id_for(payment_id, PaymentResultStatus::FailedTimeout),
        payment_id,
        wallet_id,
        amount,
        status: PaymentResultStatus::FailedTimeout,
        reason: "settled by the cli test".into(),
        decided_at: time::now(),
    };
    assert!(matches!(apply::apply(&db, &result).await.unwrap(), Outcome::Applied(_)));
    let (code, stdout, _) = paystream(&["reservations", "stranded", "--wallet", &wallet]).await;
    assert_eq!((code, stdout.lines().count()), (Some(0), 1), "only the summary: {stdout}");
    let (code, _, stderr) = paystream(&["reservations", "nudge", &payment_id.to_string()]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("is CANCELLED, not PENDING"), "{stderr}");
}

//! Money is conserved in the real wallet database: random histories of deposits,
//! reservations, confirmations and compensations, each step through the crate's functions
//! in its own transaction on a fresh wallet, checked against the database after every step.
//!
//! The pure rules have the large property test (`src/rules.rs`); this one proves the SQL
//! does what they say: the row after each step is the rules' balance, accepted steps bump
//! `version` by one, refused steps leave the row exactly as it was, and
//! `available + reserved = deposits − confirmed`, `reserved = Σ pending` hold in Postgres.

use paystream_schemas::money::AMOUNT_MAX_MINOR;
use paystream_schemas::Amount;
use paystream_stack::{testkit, StackSettings};
use paystream_wallet::{self as wallet, Balance, Movement, Refusal, WalletError, MAX_BALANCE};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use rust_decimal::Decimal;
use sqlx::PgPool;
use tokio::runtime::Runtime;
use uuid::Uuid;

/// Fresh wallets (cases) per run, and steps per wallet: a few dozen statements each,
/// enough to meet every refusal without making the test slow.
const CASES: u32 = 6;
const STEPS_MAX: usize = 40;

/// A step: settling steps pick a pending payment by index, or with `over` settle more than
/// the whole reservation (an invariant breach the crate must refuse).
#[derive(Clone, Debug)]
enum Step {
    Deposit(i64),
    Reserve(i64),
    Confirm { pick: usize, over: bool },
    Compensate { pick: usize, over: bool },
}

fn step() -> impl Strategy<Value = Step> {
    let amount = prop_oneof![1..=50_000i64, 1..=AMOUNT_MAX_MINOR];
    let over = prop_oneof![4 => Just(false), 1 => Just(true)];
    prop_oneof![
        amount.clone().prop_map(Step::Deposit),
        amount.prop_map(Step::Reserve),
        (any::<usize>(), over.clone()).prop_map(|(pick, over)| Step::Confirm { pick, over }),
        (any::<usize>(), over).prop_map(|(pick, over)| Step::Compensate { pick, over }),
    ]
}

/// What the wallet held before the history: nothing, or a balance near the cap (so
/// deposits meet it within a few dozen steps).
fn opening() -> impl Strategy<Value = Decimal> {
    prop_oneof![Just(Decimal::ZERO), Just(MAX_BALANCE - Decimal::new(2 * AMOUNT_MAX_MINOR, 2))]
}

/// A user and an empty wallet, then `opening` in it (counted as a deposit by the caller).
async fn fresh_wallet(db: &PgPool, opening: Decimal) -> Uuid {
    let user_id = Uuid::new_v4();
    let wallet_id = Uuid::new_v4();
    sqlx::query("INSERT INTO users (user_id, name) VALUES ($1, 'wallet conservation test')")
        .bind(user_id)
        .execute(db)
        .await
        .expect("insert user");
    sqlx::query("INSERT INTO wallets (wallet_id, user_id, currency, available) VALUES ($1, $2, 'RUB', $3)")
        .bind(wallet_id)
        .bind(user_id)
        .bind(opening)
        .execute(db)
        .await
        .expect("insert wallet");
    wallet_id
}

async fn row(db: &PgPool, wallet_id: Uuid) -> (Balance, i64) {
    let (available, reserved, version): (Decimal, Decimal, i64) =
        sqlx::query_as("SELECT available, reserved, version FROM wallets WHERE wallet_id = $1")
            .bind(wallet_id)
            .fetch_one(db)
            .await
            .expect("read wallet");
    (Balance { available, reserved }, version)
}

/// The amount just over the whole reservation, if it is a valid amount.
fn over_reservation(reserved: Decimal) -> Option<Amount> {
    let mut over = reserved + Decimal::new(1, 2);
    over.rescale(2);
    Amount::from_minor(i64::try_from(over.mantissa()).ok()?).ok()
}

async fn run_history(db: &PgPool, opening: Decimal, steps: &[Step]) -> Result<(), TestCaseError> {
    let wallet_id = fresh_wallet(db, opening).await;
    let mut deposited = opening;
    let mut confirmed = Decimal::ZERO;
    let mut pending: Vec<Amount> = Vec::new();
    let (mut model, mut version) = row(db, wallet_id).await;
    for step in steps {
        let pick = |pick: usize, over: bool| match (over, pending.is_empty()) {
            (false, false) => Some((pending[pick % pending.len()], Some(pick % pending.len()))),
            _ => over_reservation(model.reserved).map(|a| (a, None)),
        };
        let amount_of = |minor| Amount::from_minor(minor).expect("a valid amount");
        let (movement, settles) = match *step {
            Step::Deposit(minor) => (Movement::Deposit(amount_of(minor)), None),
            Step::Reserve(minor) => (Movement::Reserve(amount_of(minor)), None),
            Step::Confirm { pick: p, over } => match pick(p, over) {
                Some((a, i)) => (Movement::Confirm(a), i),
                None => continue,
            },
            Step::Compensate { pick: p, over } => match pick(p, over) {
                Some((a, i)) => (Movement::Compensate(a), i),
                None => continue,
            },
        };
        let mut tx = db.begin().await.expect("begin");
        let moved = match movement {
            Movement::Deposit(a) => wallet::deposit(&mut tx, wallet_id, a).await,
            Movement::Reserve(a) => wallet::reserve(&mut tx, wallet_id, a).await,
            Movement::Confirm(a) => wallet::confirm(&mut tx, wallet_id, a).await,
            Movement::Compensate(a) => wallet::compensate(&mut tx, wallet_id, a).await,
        };
        let predicted = model.after(movement);
        match (moved, predicted) {
            (Ok(moved), Ok(next)) => {
                tx.commit().await.expect("commit");
                prop_assert_eq!(moved.balance, next, "{:?}", movement);
                prop_assert_eq!(moved.version, version + 1, "every movement bumps the version");
                let value = movement.amount().to_decimal();
                match movement {
                    Movement::Deposit(_) => deposited += value,
                    Movement::Reserve(a) => pending.push(a),
                    Movement::Confirm(_) | Movement::Compensate(_) => {
                        let index = settles.expect("only a pending payment's settlement may apply");
                        pending.swap_remove(index);
                        if matches!(movement, Movement::Confirm(_)) {
                            confirmed += value;
                        }
                    }
                }
                model = next;
                version += 1;
            }
            (Err(WalletError::Refused(refusal)), Err(expected)) => {
                // A refusal leaves the transaction usable; the step's transaction ends
                // without a write.
                tx.rollback().await.expect("rollback");
                prop_assert_eq!(&refusal, &expected);
                prop_assert!(settles.is_none(), "a pending payment's settlement was refused: {}", refusal);
                let breach = WalletError::Refused(refusal.clone()).is_invariant_breach();
                prop_assert_eq!(breach, matches!(refusal, Refusal::ReservationShort { .. }));
            }
            (moved, predicted) => {
                return Err(TestCaseError::fail(format!(
                    "{movement:?} on {model:?}: the database said {moved:?}, the rules {predicted:?}"
                )))
            }
        }
        let (stored, stored_version) = row(db, wallet_id).await;
        prop_assert_eq!(stored, model, "the row after {:?}", movement);
        prop_assert_eq!(stored_version, version, "the version after {:?}", movement);
        prop_assert_eq!(stored.available + stored.reserved, deposited - confirmed);
        prop_assert_eq!(stored.reserved, pending.iter().map(|a| a.to_decimal()).sum::<Decimal>());
    }
    Ok(())
}

#[test]
fn money_is_conserved_in_the_database_across_random_histories() {
    let runtime = Runtime::new().expect("tokio runtime");
    let db = runtime.block_on(testkit::wallet_db(&StackSettings::from_env()));
    let mut runner = TestRunner::new(Config { cases: CASES, ..Config::default() });
    let history = (opening(), proptest::collection::vec(step(), 1..=STEPS_MAX));
    runner
        .run(&history, |(opening, steps)| runtime.block_on(run_history(&db, opening, &steps)))
        .unwrap_or_else(|failure| panic!("{failure}"));
}

/// A movement on a wallet that does not exist is refused as missing, and writes nothing.
#[test]
fn a_missing_wallet_is_named() {
    let runtime = Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        let db = testkit::wallet_db(&StackSettings::from_env()).await;
        let nowhere = Uuid::new_v4();
        let mut tx = db.begin().await.expect("begin");
        let error = wallet::deposit(&mut tx, nowhere, Amount::from_minor(100).unwrap()).await.unwrap_err();
        assert!(matches!(error, WalletError::Missing(id) if id == nowhere), "{error}");
        assert!(!error.is_invariant_breach());
        // The transaction is still usable after a refusal.
        let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut *tx).await.expect("tx usable");
        assert_eq!(one, 1);
    });
}

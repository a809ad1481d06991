//! Seed 004's Kafka door: the `pay.order` inbox consumer, and the answers settlement writes.
//!
//! The orders service never calls HTTP. It sends a `PayOrder` command on `pay.order` (keyed by
//! order id) and hears back exactly one `OrderPaid` (on `order.paid`) or `OrderPaymentFailed`
//! (on `order.payment_failed`) per order. Between the two the payment takes the HTTP door's
//! money path: reserve + `wallet_transactions` + `PaymentInitiated` in the outbox, the saga,
//! settlement.
//!
//! The inbox consumer runs on the shared consumer loop ([`crate::consumer`]: `read_committed`,
//! offsets committed after the database commit, retries, DLQ) and handles each command in one
//! wallet-database transaction ([`inbox`]). What becomes of a command:
//!
//! | command | handling |
//! |---|---|
//! | valid, funds available | payment opened (paymentId = UUIDv5 of the order id), `PaymentInitiated` out; settlement answers later ([`answer`]) |
//! | insufficient funds | `OrderPaymentFailed` (INSUFFICIENT_FUNDS) at once, nothing reserved |
//! | can never succeed: invalid amount or description, unknown wallet, someone else's, another currency | `OrderPaymentFailed` with the reason, at once, nothing reserved |
//! | the same command again, or another command for the same order | nothing: the order's answer is its first command's |
//! | garbage bytes, an unknown schema id, a contract violation | `payments.dlq` (the loop's decode reasons) |
//! | no order id (empty), or one longer than [`PayOrder::ORDER_ID_CHARS_MAX`] | `payments.dlq`, reason `no-order-id` / `order-id-too-long` |
//! | a data error of the database on this record (SQLSTATE class 22/23) | `payments.dlq` with the error's kind |
//! | the database or the registry away | retried with back-off, never dead-lettered |
//! | a wallet invariant broken, any other database error | the consumer stops, offset uncommitted |
//!
//! # Layout
//! - [`inbox`]: judging a command (pure) and its one transaction.
//! - [`answer`]: the `OrderPaid` / `OrderPaymentFailed` settlement writes in the transaction
//!   that applies the payment's result.
//! - [`client`]: the orders service's side (a command sent on `pay.order`), for
//!   `paystream orders pay` and the tests.
//! - this module: configuration, metrics, the [`Handler`] and [`run`].

pub mod answer;
pub mod client;
pub mod inbox;

use std::sync::Arc;
use std::time::Duration;

use paystream_schemas::events::{topics, PayOrder};
use paystream_schemas::EventCodec;
use paystream_stack::postgres;
use paystream_stack::wait::NotReady;
use paystream_stack::StackSettings;
use paystream_topology::ShutdownHandle;
use prometheus::{IntCounterVec, Opts, Registry};
use sqlx::PgPool;

use crate::consumer::{
    self, ConsumerConfig, ConsumerError, ConsumerMetrics, Context, Handled, Handler, Labels,
};
use crate::dlq;
use crate::retry::RetryPolicy;
use crate::settlement::apply::DataErrorKind;

pub use inbox::{InboxError, Recorded};

/// The processor's name: `dlq.processor`, and part of the client ids.
pub const PROCESSOR: &str = "orders";
/// The consumer group of the deployed inbox consumers.
pub const DEFAULT_GROUP_ID: &str = "paystream-orders";
/// How long start-up waits for the wallet database.
pub const STARTUP_TIMEOUT_MS: u64 = 30_000;
/// The inbox's own `dlq.reason`s: a command without a usable order id, and the database's
/// refusals of one record's data.
pub const DLQ_REASONS: &[&str] = &[
    "no-order-id",
    "order-id-too-long",
    "numeric-overflow",
    "data-exception",
    "check-violation",
    "constraint-violation",
];
/// The handler's retried operations.
pub const OPERATIONS: &[&str] = &["record"];
/// The `outcome` label of the commands counter.
pub const OUTCOMES: &[&str] = &["reserved", "refused", "duplicate"];

/// Where an order's events go: the outbox rows' `aggregatetype`s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderTopics {
    /// The saga's input (`payments.initiated`).
    pub initiated: String,
    /// `order.paid`.
    pub paid: String,
    /// `order.payment_failed`.
    pub failed: String,
}

impl Default for OrderTopics {
    fn default() -> Self {
        Self {
            initiated: topics::PAYMENTS_INITIATED.to_owned(),
            paid: topics::ORDER_PAID.to_owned(),
            failed: topics::ORDER_PAYMENT_FAILED.to_owned(),
        }
    }
}

/// The inbox consumer's counters.
#[derive(Clone, Debug)]
pub struct OrdersMetrics {
    /// Commands handled, by `outcome` (reserved, refused, duplicate).
    commands: IntCounterVec,
    /// The loop's counters under `paystream_orders`.
    consumer: ConsumerMetrics,
}

impl OrdersMetrics {
    /// Creates the counters and registers them in `registry` (one inbox consumer per registry).
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let consumer = ConsumerMetrics::register(
            registry,
            Labels { prefix: "paystream_orders", reasons: DLQ_REASONS, operations: OPERATIONS },
        )?;
        let commands = IntCounterVec::new(
            Opts::new("paystream_orders_commands_total", "PayOrder commands handled, by outcome."),
            &["outcome"],
        )?;
        registry.register(Box::new(commands.clone()))?;
        for outcome in OUTCOMES {
            commands.with_label_values(&[outcome]);
        }
        Ok(Self { commands, consumer })
    }

    /// The loop's counters.
    pub fn consumer(&self) -> &ConsumerMetrics {
        &self.consumer
    }

    /// Commands handled with `outcome` so far.
    pub fn commands_total(&self, outcome: &str) -> u64 {
        self.commands.with_label_values(&[outcome]).get()
    }

    fn record(&self, recorded: &Recorded) {
        let outcome = match recorded {
            Recorded::Reserved { .. } => "reserved",
            Recorded::Refused(_) => "refused",
            Recorded::Duplicate { .. } => "duplicate",
        };
        self.commands.with_label_values(&[outcome]).inc();
    }
}

/// Everything the inbox consumer needs to run.
#[derive(Clone, Debug)]
pub struct OrdersConfig {
    /// Kafka bootstrap servers.
    pub kafka_bootstrap: String,
    /// The Schema Registry's Confluent API.
    pub schema_registry_url: String,
    /// The wallet database: inbox, balances, payments, outbox.
    pub wallet_db_url: String,
    /// The commands' topic (`pay.order`); tests use their own.
    pub commands_topic: String,
    /// Where the events go; tests use their own.
    pub topics: OrderTopics,
    /// Where unusable commands go (`payments.dlq`).
    pub dlq_topic: String,
    /// The consumer group: its committed offsets are the inbox's progress.
    pub group_id: String,
    /// How long start-up waits for the wallet database.
    pub startup_timeout: Duration,
    /// Back-off and bound for transient failures (registry, database, DLQ, broker).
    pub retry: RetryPolicy,
    /// Where the counters go; registered by the caller.
    pub metrics: OrdersMetrics,
}

impl OrdersConfig {
    /// The deployed configuration: the stack's addresses, the door's topics, the default group.
    pub fn new(stack: &StackSettings, metrics: OrdersMetrics) -> Self {
        Self {
            kafka_bootstrap: stack.kafka_bootstrap.clone(),
            schema_registry_url: stack.schema_registry_url.clone(),
            wallet_db_url: stack.wallet_db_url.clone(),
            commands_topic: topics::PAY_ORDER.to_owned(),
            topics: OrderTopics::default(),
            dlq_topic: dlq::DEFAULT_TOPIC.to_owned(),
            group_id: DEFAULT_GROUP_ID.to_owned(),
            startup_timeout: Duration::from_millis(STARTUP_TIMEOUT_MS),
            retry: RetryPolicy::default(),
            metrics,
        }
    }

    /// The shared loop's part of the configuration.
    pub fn consumer(&self) -> ConsumerConfig {
        ConsumerConfig::builder(PROCESSOR, &self.kafka_bootstrap, &self.schema_registry_url)
            .reads(&self.commands_topic, &self.group_id, &self.dlq_topic)
            .retry(self.retry)
            .build()
    }
}

/// Why the inbox consumer stopped other than by a requested shutdown.
#[derive(Debug, thiserror::Error)]
pub enum OrdersError {
    /// The wallet database did not accept connections at start.
    #[error(transparent)]
    DatabaseNotReady(#[from] NotReady),
    /// The consumer loop stopped (see [`ConsumerError`]); the command's offset is not committed.
    #[error(transparent)]
    Consumer(#[from] ConsumerError<InboxError>),
}

/// Runs the inbox consumer until `shutdown` is requested or an error stops it.
pub async fn run(config: OrdersConfig, shutdown: ShutdownHandle) -> Result<(), OrdersError> {
    let pool = postgres::connect(&config.wallet_db_url, config.startup_timeout).await?;
    let codec = EventCodec::new(&config.schema_registry_url)
        .map_err(|e| OrdersError::Consumer(ConsumerError::Registry(e)))?;
    let handler = Arc::new(Inbox {
        pool: pool.clone(),
        codec,
        topics: config.topics.clone(),
        metrics: config.metrics.clone(),
    });
    tracing::info!(
        commands = %config.commands_topic,
        paid = %config.topics.paid,
        failed = %config.topics.failed,
        initiated = %config.topics.initiated,
        "pay.order inbox started"
    );
    let consumed =
        consumer::run(config.consumer(), handler, config.metrics.consumer().clone(), shutdown).await;
    pool.close().await;
    consumed.map_err(OrdersError::from)
}

/// Why a command's order id cannot be recorded, as a `dlq.reason`: no answer can be keyed by it.
pub fn unusable_order_id(order_id: &str) -> Option<&'static str> {
    if order_id.is_empty() {
        Some("no-order-id")
    } else if order_id.chars().count() > PayOrder::ORDER_ID_CHARS_MAX {
        Some("order-id-too-long")
    } else {
        None
    }
}

/// The inbox's meaning of a command.
struct Inbox {
    /// The wallet database.
    pool: PgPool,
    /// Encodes the events written into the outbox.
    codec: EventCodec,
    /// Where they go.
    topics: OrderTopics,
    metrics: OrdersMetrics,
}

impl Handler for Inbox {
    type Event = PayOrder;
    type Error = InboxError;

    async fn handle(&self, command: &PayOrder, _context: &mut Context<'_>) -> Handled<InboxError> {
        if let Some(reason) = unusable_order_id(&command.order_id) {
            return Handled::Poison {
                reason,
                detail: format!(
                    "command {}: the order id must be 1 to {} characters",
                    command.command_id,
                    PayOrder::ORDER_ID_CHARS_MAX
                ),
            };
        }
        match inbox::handle(&self.pool, &self.codec, &self.topics, command).await {
            Ok(recorded) => {
                self.metrics.record(&recorded);
                match &recorded {
                    Recorded::Duplicate { first_command } if *first_command != command.command_id => {
                        tracing::info!(
                            order_id = %command.order_id,
                            command_id = %command.command_id,
                            %first_command,
                            "another command for an order already recorded; its answer is the first command's"
                        );
                    }
                    _ => tracing::debug!(order_id = %command.order_id, ?recorded, "command handled"),
                }
                Handled::Done
            }
            Err(error) if error.is_retriable() => {
                Handled::Retriable { operation: "record", error: error.to_string() }
            }
            Err(error) => match error.sqlstate().as_deref().and_then(DataErrorKind::of_sqlstate) {
                Some(kind) => Handled::Poison {
                    reason: kind.as_str(),
                    detail: format!("command {} of order {}: {error}", command.command_id, command.order_id),
                },
                None => Handled::Fatal(error),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deployed_inbox_reads_pay_order_committed_and_answers_on_the_order_topics() {
        let metrics = OrdersMetrics::register(&Registry::new()).unwrap();
        let config = OrdersConfig::new(&StackSettings::from_env(), metrics);
        assert_eq!(config.commands_topic, "pay.order");
        assert_eq!(config.topics.paid, "order.paid");
        assert_eq!(config.topics.failed, "order.payment_failed");
        assert_eq!(config.topics.initiated, "payments.initiated");
        let client = consumer::client_config(&config.consumer());
        assert_eq!(client.get("isolation.level"), Some("read_committed"));
        assert_eq!(client.get("enable.auto.commit"), Some("false"));
        assert_eq!(client.get("group.id"), Some(DEFAULT_GROUP_ID));
    }

    #[test]
    fn an_order_id_must_be_there_and_fit() {
        assert_eq!(unusable_order_id(""), Some("no-order-id"));
        assert_eq!(unusable_order_id(&"я".repeat(PayOrder::ORDER_ID_CHARS_MAX)), None);
        assert_eq!(
            unusable_order_id(&"x".repeat(PayOrder::ORDER_ID_CHARS_MAX + 1)),
            Some("order-id-too-long")
        );
        for reason in ["no-order-id", "order-id-too-long"] {
            assert!(DLQ_REASONS.contains(&reason));
        }
        for kind in [
            DataErrorKind::NumericOverflow,
            DataErrorKind::DataException,
            DataErrorKind::CheckViolation,
            DataErrorKind::ConstraintViolation,
        ] {
            assert!(DLQ_REASONS.contains(&kind.as_str()), "{}", kind.as_str());
        }
    }
}

//! Reading a [`Snapshot`]: the wallet database, the results and timers topics (each read to its
//! end, read_committed, twice, and once read_uncommitted for the log checks), and the provider's
//! ledger.
//!
//! The audit is meant for a quiet moment: it reads each source once, not at one instant, so a
//! payment that moves while it reads shows up as a violation of "nothing in flight" at worst.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use paystream_processors::retry::{Backoff, RetryPolicy};
use paystream_schemas::events::{
    topics, PaymentResult, PaymentResultStatus, TimerChange, TimerEvent, TimerKind,
};
use paystream_schemas::EventCodec;
use paystream_stack::kafka::EndOfPartitionIsNoError;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use rust_decimal::Decimal;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::checks::{
    FiredTimeout, LedgerStatus, LogAnomaly, Payment, ProviderCharge, ResultRecord, Snapshot, Wallet,
};

/// Longest time one read of a topic to its end may take.
pub const TOPIC_READ_TIMEOUT: Duration = Duration::from_secs(120);
/// Poll timeout while reading a topic.
const POLL_TIMEOUT: Duration = Duration::from_millis(200);
/// Budget of one question to the provider.
pub const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);
/// Questions to the provider on the wire at once.
const PROVIDER_CONCURRENCY_MAX: usize = 16;

/// Why a snapshot could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The wallet database.
    #[error("wallet database: {0}")]
    Database(#[from] sqlx::Error),
    /// Kafka.
    #[error("reading {topic}: {source}")]
    Kafka {
        /// The topic.
        topic: String,
        /// The error.
        #[source]
        source: KafkaError,
    },
    /// A topic was not read to its end in time (an open transaction holds the read_committed
    /// end back, or the broker is away).
    #[error("reading {topic}: not at its end after {timeout:?} ({remaining} partitions left)")]
    TopicTimeout {
        /// The topic.
        topic: String,
        /// The budget.
        timeout: Duration,
        /// Partitions not at their end.
        remaining: usize,
    },
    /// The registry could not be reached to decode a record.
    #[error("decoding {topic} {partition}@{offset}: {detail}")]
    Decode {
        /// The topic.
        topic: String,
        /// Where.
        partition: i32,
        /// Where.
        offset: i64,
        /// Why.
        detail: String,
    },
    /// The provider's ledger answered something unexpected.
    #[error("provider ledger for {payment_id}: {detail}")]
    Provider {
        /// The payment asked about.
        payment_id: Uuid,
        /// What went wrong.
        detail: String,
    },
    /// The codec could not be built.
    #[error("schema registry client: {0}")]
    Registry(String),
}

/// Which wallets the audit covers.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Only these wallets (all when `None`).
    pub wallets: Option<Vec<Uuid>>,
    /// Only wallets created at or after this time.
    pub since: Option<DateTime<Utc>>,
}

/// Where to read from.
#[derive(Debug, Clone)]
pub struct Sources {
    /// Kafka bootstrap servers.
    pub kafka_bootstrap: String,
    /// The Confluent-compatible registry.
    pub registry_url: String,
    /// The results topic.
    pub results_topic: String,
    /// The timers topic.
    pub timers_topic: String,
    /// The provider's base URL (`GET {url}/v1/charges/{paymentId}`); `None` skips that check.
    pub provider_url: Option<String>,
}

impl Sources {
    /// The production topics on `settings`' stack, with the provider at `provider_url`.
    pub fn new(settings: &paystream_stack::StackSettings, provider_url: Option<String>) -> Self {
        Self {
            kafka_bootstrap: settings.kafka_bootstrap.clone(),
            registry_url: settings.schema_registry_url.clone(),
            results_topic: topics::PAYMENTS_RESULTS.into(),
            timers_topic: topics::PAYMENTS_TIMERS.into(),
            provider_url,
        }
    }
}

/// Reads everything the audit checks.
pub async fn read(db: &PgPool, sources: &Sources, scope: &Scope) -> Result<Snapshot, SnapshotError> {
    let codec = EventCodec::new(&sources.registry_url).map_err(|e| SnapshotError::Registry(e.to_string()))?;
    let (wallets, payments, known_payment_ids) = read_wallets(db, scope).await?;
    let mut log_anomalies = Vec::new();
    let results_raw =
        read_log_twice(&sources.kafka_bootstrap, &sources.results_topic, &mut log_anomalies).await?;
    let mut poison = BTreeMap::new();
    let mut results = Vec::with_capacity(results_raw.len());
    for raw in &results_raw {
        if let Some(result) =
            decode::<PaymentResult>(&codec, &sources.results_topic, raw, &mut poison).await?
        {
            results.push(ResultRecord { position: (raw.partition, raw.offset), result });
        }
    }
    let timers_raw =
        read_to_end(&sources.kafka_bootstrap, &sources.timers_topic, Isolation::Committed).await?;
    let mut fired_timeouts = Vec::new();
    for raw in &timers_raw {
        let Some(timer) = decode::<TimerEvent>(&codec, &sources.timers_topic, raw, &mut poison).await? else {
            continue;
        };
        if let (TimerKind::PaymentTimeout, TimerChange::Fired { fired_at }) = (timer.kind, timer.change) {
            fired_timeouts.push(FiredTimeout {
                payment_id: timer.payment_id,
                due_at: timer.due_at,
                fired_at,
            });
        }
    }
    let provider = match &sources.provider_url {
        Some(url) => read_provider(url, &payments).await?,
        None => HashMap::new(),
    };
    Ok(Snapshot {
        wallets,
        payments,
        known_payment_ids,
        results,
        fired_timeouts,
        provider,
        log_anomalies,
        poison,
    })
}

/// Decodes one record of `topic`. A record that is not the topic's contract (garbage, an unknown
/// schema id, another record type) is poison: the consumers dead-letter it, and the audit counts
/// it and reads on. A registry that cannot be reached fails the snapshot.
async fn decode<E: paystream_schemas::Event>(
    codec: &EventCodec,
    topic: &str,
    raw: &LogRecord,
    poison: &mut BTreeMap<String, usize>,
) -> Result<Option<E>, SnapshotError> {
    let Some(value) = &raw.value else { return Ok(None) };
    match codec.decode::<E>(value).await {
        Ok(event) => Ok(Some(event)),
        Err(e) if e.is_retriable() => Err(SnapshotError::Decode {
            topic: topic.to_owned(),
            partition: raw.partition,
            offset: raw.offset,
            detail: e.to_string(),
        }),
        Err(e) => {
            tracing::debug!(topic, partition = raw.partition, offset = raw.offset, error = %e, "poison record skipped");
            *poison.entry(topic.to_owned()).or_default() += 1;
            Ok(None)
        }
    }
}

async fn read_wallets(
    db: &PgPool,
    scope: &Scope,
) -> Result<(Vec<Wallet>, Vec<Payment>, BTreeSet<Uuid>), SnapshotError> {
    // One statement each, filtered the same way: `$1` null or the wallet in it, `$2` null or
    // the wallet created since.
    const IN_SCOPE: &str =
        "($1::uuid[] IS NULL OR w.wallet_id = ANY($1)) AND ($2::timestamptz IS NULL OR w.created_at >= $2)";
    let wallet_rows = sqlx::query(&format!(
        "SELECT w.wallet_id, w.available, w.reserved,
                COALESCE((SELECT sum(d.amount) FROM deposits d WHERE d.wallet_id = w.wallet_id), 0) AS deposited
           FROM wallets w WHERE {IN_SCOPE} ORDER BY w.wallet_id"
    ))
    .bind(scope.wallets.as_deref())
    .bind(scope.since)
    .fetch_all(db)
    .await?;
    let wallets = wallet_rows
        .iter()
        .map(|r| -> Result<Wallet, sqlx::Error> {
            Ok(Wallet {
                wallet_id: r.try_get("wallet_id")?,
                available: r.try_get("available")?,
                reserved: r.try_get("reserved")?,
                deposited: r.try_get::<Decimal, _>("deposited")?,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let payment_rows = sqlx::query(&format!(
        "SELECT t.payment_id, t.wallet_id, t.amount, t.status, t.payment_result_id, t.result_status, t.accepted_at
           FROM wallet_transactions t JOIN wallets w ON w.wallet_id = t.wallet_id
          WHERE {IN_SCOPE} ORDER BY t.accepted_at"
    ))
    .bind(scope.wallets.as_deref())
    .bind(scope.since)
    .fetch_all(db)
    .await?;
    let mut payments = Vec::with_capacity(payment_rows.len());
    for r in &payment_rows {
        let status: String = r.try_get("status")?;
        let settled_status: Option<String> = r.try_get("result_status")?;
        payments.push(Payment {
            payment_id: r.try_get("payment_id")?,
            wallet_id: r.try_get("wallet_id")?,
            amount: r.try_get("amount")?,
            status: match status.as_str() {
                "PENDING" => LedgerStatus::Pending,
                "COMPLETED" => LedgerStatus::Completed,
                _ => LedgerStatus::Cancelled,
            },
            settled_result_id: r.try_get("payment_result_id")?,
            settled_status: settled_status.as_deref().map(PaymentResultStatus::from_symbol),
            accepted_at: r.try_get("accepted_at")?,
        });
    }
    let known: Vec<Uuid> =
        sqlx::query_scalar("SELECT payment_id FROM wallet_transactions").fetch_all(db).await?;
    Ok((wallets, payments, known.into_iter().collect()))
}

/// One record as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Value (`None` for a tombstone).
    pub value: Option<Vec<u8>>,
}

/// Which records a read sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Only committed transactions (what every paystream consumer reads).
    Committed,
    /// Everything written, aborted transactions included.
    Uncommitted,
}

/// Reads `topic` read_committed twice and read_uncommitted once; records where the reads
/// disagree as anomalies and returns the first read_committed one.
async fn read_log_twice(
    bootstrap: &str,
    topic: &str,
    anomalies: &mut Vec<LogAnomaly>,
) -> Result<Vec<LogRecord>, SnapshotError> {
    let first = read_to_end(bootstrap, topic, Isolation::Committed).await?;
    let second = read_to_end(bootstrap, topic, Isolation::Committed).await?;
    let everything = read_to_end(bootstrap, topic, Isolation::Uncommitted).await?;
    anomalies.extend(compare_reads(topic, &first, &second, &everything));
    Ok(first)
}

/// The log checks: the two committed reads agree at every offset both reached, and every
/// committed record is in the uncommitted read with the same bytes.
pub fn compare_reads(
    topic: &str,
    first: &[LogRecord],
    second: &[LogRecord],
    everything: &[LogRecord],
) -> Vec<LogAnomaly> {
    let index = |records: &[LogRecord]| -> BTreeMap<(i32, i64), Option<Vec<u8>>> {
        records.iter().map(|r| ((r.partition, r.offset), r.value.clone())).collect()
    };
    let (second, everything) = (index(second), index(everything));
    let mut anomalies = Vec::new();
    for r in first {
        let at = (r.partition, r.offset);
        if second.get(&at).is_some_and(|v| *v != r.value) {
            anomalies.push(LogAnomaly {
                topic: topic.into(),
                position: at,
                what: "two read_committed reads returned different values".into(),
            });
        }
        match everything.get(&at) {
            Some(v) if *v == r.value => {}
            Some(_) => anomalies.push(LogAnomaly {
                topic: topic.into(),
                position: at,
                what: "read_uncommitted returned other bytes at this offset".into(),
            }),
            None => anomalies.push(LogAnomaly {
                topic: topic.into(),
                position: at,
                what: "a read_committed record that read_uncommitted never saw".into(),
            }),
        }
    }
    anomalies
}

/// Reads every partition of `topic` from the beginning to its end (for read_committed, the
/// last stable offset), on a blocking thread.
pub async fn read_to_end(
    bootstrap: &str,
    topic: &str,
    isolation: Isolation,
) -> Result<Vec<LogRecord>, SnapshotError> {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || read_to_end_blocking(&bootstrap, &topic, isolation))
        .await
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic.into_panic()))
}

fn read_to_end_blocking(
    bootstrap: &str,
    topic: &str,
    isolation: Isolation,
) -> Result<Vec<LogRecord>, SnapshotError> {
    let kafka = |source| SnapshotError::Kafka { topic: topic.to_owned(), source };
    let consumer: BaseConsumer<EndOfPartitionIsNoError> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        // No group: the audit assigns partitions itself and commits nothing.
        .set("group.id", "paystream-audit")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set(
            "isolation.level",
            match isolation {
                Isolation::Committed => "read_committed",
                Isolation::Uncommitted => "read_uncommitted",
            },
        )
        // The end of a partition is reported, so the read knows when it is done.
        .set("enable.partition.eof", "true")
        .create_with_context(EndOfPartitionIsNoError)
        .map_err(kafka)?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).map_err(kafka)?;
    let partitions: Vec<i32> =
        metadata.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
    let mut assignment = TopicPartitionList::new();
    let mut remaining = BTreeSet::new();
    for &p in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).map_err(kafka)?;
        if high > low {
            assignment.add_partition_offset(topic, p, Offset::Beginning).map_err(kafka)?;
            remaining.insert(p);
        }
    }
    let mut records = Vec::new();
    if remaining.is_empty() {
        return Ok(records);
    }
    consumer.assign(&assignment).map_err(kafka)?;
    let started = Instant::now();
    while !remaining.is_empty() {
        if started.elapsed() > TOPIC_READ_TIMEOUT {
            return Err(SnapshotError::TopicTimeout {
                topic: topic.into(),
                timeout: TOPIC_READ_TIMEOUT,
                remaining: remaining.len(),
            });
        }
        match consumer.poll(POLL_TIMEOUT) {
            None => {}
            Some(Ok(m)) => records.push(LogRecord {
                partition: m.partition(),
                offset: m.offset(),
                value: m.payload().map(<[u8]>::to_vec),
            }),
            Some(Err(KafkaError::PartitionEOF(p))) => {
                remaining.remove(&p);
            }
            Some(Err(e)) => return Err(kafka(e)),
        }
    }
    Ok(records)
}

/// How the audit retries a provider that answers 5xx or cannot be reached (a provider has
/// outages of its own; the simulator's seeded faults answer 503 to status queries too).
const PROVIDER_RETRY: RetryPolicy = RetryPolicy {
    backoff_initial: Duration::from_millis(50),
    backoff_max: Duration::from_secs(2),
    attempts_max: 20,
    elapsed_max: Duration::from_secs(60),
};

/// Asks the provider about every payment.
async fn read_provider(
    url: &str,
    payments: &[Payment],
) -> Result<HashMap<Uuid, ProviderCharge>, SnapshotError> {
    let client = reqwest::Client::builder()
        .timeout(PROVIDER_TIMEOUT)
        .build()
        .map_err(|e| SnapshotError::Provider { payment_id: Uuid::nil(), detail: e.to_string() })?;
    let base = url.trim_end_matches('/');
    futures::stream::iter(payments.iter().map(|p| p.payment_id))
        .map(|id| {
            let client = client.clone();
            async move { ask_provider(&client, base, id).await.map(|charge| (id, charge)) }
        })
        .buffer_unordered(PROVIDER_CONCURRENCY_MAX)
        .try_collect()
        .await
}

/// `GET {base}/v1/charges/{id}`, retried while the provider is away or answers 5xx.
async fn ask_provider(
    client: &reqwest::Client,
    base: &str,
    id: Uuid,
) -> Result<ProviderCharge, SnapshotError> {
    let failed = |detail: String| SnapshotError::Provider { payment_id: id, detail };
    let mut backoff = Backoff::new(PROVIDER_RETRY);
    loop {
        let transient = match client.get(format!("{base}/v1/charges/{id}")).send().await {
            Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => return Ok(ProviderCharge::NotCharged),
            Ok(r) if r.status().is_success() => {
                let body: serde_json::Value = r.json().await.map_err(|e| failed(e.to_string()))?;
                return Ok(provider_charge(&body));
            }
            Ok(r) if r.status().is_server_error() => format!("answered {}", r.status()),
            Ok(r) => return Err(failed(format!("answered {}", r.status()))),
            Err(e) => e.to_string(),
        };
        match backoff.next_delay() {
            Some(delay) => tokio::time::sleep(delay).await,
            None => return Err(failed(format!("{transient}, {} attempts", backoff.failures()))),
        }
    }
}

/// Reads the provider simulator's answer to `GET /v1/charges/{key}`. A `charged` flag, where the
/// provider gives one, is its word; otherwise an accepted charge with a SUCCEEDED verdict is
/// money taken, unless it was voided or refunded since.
pub fn provider_charge(body: &serde_json::Value) -> ProviderCharge {
    if let Some(charged) = body.get("charged").and_then(serde_json::Value::as_bool) {
        return if charged { ProviderCharge::Charged } else { ProviderCharge::NotCharged };
    }
    let field = |name: &str| body.get(name).and_then(serde_json::Value::as_str);
    let undone = ["refunded", "voided"]
        .iter()
        .any(|k| body.get(*k).and_then(serde_json::Value::as_bool) == Some(true));
    match (field("state"), field("verdict")) {
        (Some("ACCEPTED"), Some("SUCCEEDED")) if !undone => ProviderCharge::Charged,
        (Some("ACCEPTED"), Some(_)) => ProviderCharge::NotCharged,
        (Some("REFUSED" | "VOIDED" | "REFUNDED"), _) => ProviderCharge::NotCharged,
        _ => ProviderCharge::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_providers_answers_are_read() {
        assert_eq!(
            provider_charge(&json!({"state": "ACCEPTED", "verdict": "SUCCEEDED"})),
            ProviderCharge::Charged
        );
        assert_eq!(
            provider_charge(&json!({"state": "ACCEPTED", "verdict": "FAILED"})),
            ProviderCharge::NotCharged
        );
        assert_eq!(provider_charge(&json!({"state": "REFUSED", "attempts": 3})), ProviderCharge::NotCharged);
        assert_eq!(
            provider_charge(&json!({"state": "ACCEPTED", "verdict": "SUCCEEDED", "refunded": true})),
            ProviderCharge::NotCharged
        );
        assert_eq!(provider_charge(&json!({"charged": true, "state": "WHATEVER"})), ProviderCharge::Charged);
        assert_eq!(provider_charge(&json!({"state": "NEW_STATE"})), ProviderCharge::Unknown);
    }

    fn rec(partition: i32, offset: i64, value: &str) -> LogRecord {
        LogRecord { partition, offset, value: Some(value.as_bytes().to_vec()) }
    }

    #[test]
    fn reads_that_disagree_are_anomalies() {
        let first = [rec(0, 0, "a"), rec(0, 1, "b")];
        assert!(compare_reads("t", &first, &first, &first).is_empty());
        // Aborted records are only in the uncommitted read: fine.
        assert!(
            compare_reads("t", &first, &first, &[rec(0, 0, "a"), rec(0, 1, "b"), rec(0, 2, "x")]).is_empty()
        );
        assert_eq!(compare_reads("t", &first, &[rec(0, 0, "a"), rec(0, 1, "c")], &first).len(), 1);
        assert_eq!(compare_reads("t", &first, &first, &[rec(0, 0, "a")]).len(), 1);
    }
}

//! Peer (a): the ceiling. Plain rdkafka consume → produce in Kafka transactions, with no state:
//! every input record is forwarded unchanged to OUT (two outputs per key), and the consumed
//! offsets commit in the same transaction as the outputs. What is left between this and the
//! join peers is the cost of state: the store, its changelog, the join logic.
//!
//! It is a benchmark peer but it is exactly-once all the same, or it would not be a fair ceiling:
//! a failed commit aborts the transaction and rewinds the consumer to the committed offsets, and
//! a revocation aborts what is open (the partitions' next owner — after an eager rebalance, this
//! instance again — starts from the committed offsets).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use paystream_stack::kafka;
use paystream_topology::runtime::flush_in_steps;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use super::env::PeerEnv;

/// Longest wait in one consumer poll: bounds how late a commit can be.
const POLL_TIMEOUT: Duration = Duration::from_millis(10);
/// Budget of each transactional call (init, send offsets, commit, abort) and of the offset
/// lookup when rewinding.
const TXN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to serve delivery reports when the producer's queue is full before trying again.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(5);
/// A retriable commit error is retried this often before it is treated as abortable.
const COMMIT_ATTEMPTS: u32 = 3;

/// Notices revocations, so that the loop aborts the open transaction before it could commit
/// offsets of partitions it no longer owns (the broker would reject them anyway under EOS v2; a
/// re-assignment of the same partitions would otherwise re-read records already produced).
#[derive(Default)]
struct RevokeFlag(Arc<AtomicBool>);

impl ClientContext for RevokeFlag {}

impl ConsumerContext for RevokeFlag {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if matches!(rebalance, Rebalance::Revoke(_)) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

/// Where the open transaction has read to, per input partition: (is LEFT, partition) → next
/// offset. Kept without topic strings so the per-record bookkeeping allocates nothing.
type Positions = std::collections::HashMap<(bool, i32), i64>;

/// Runs until `stop` is set (SIGTERM), then commits what is open and returns.
pub fn run(env: &PeerEnv, stop: &AtomicBool) -> anyhow::Result<()> {
    let revoked = Arc::new(AtomicBool::new(false));
    let consumer: BaseConsumer<RevokeFlag> = kafka::read_committed_consumer(&env.bootstrap, &env.app_id)
        .create_with_context(RevokeFlag(revoked.clone()))
        .context("creating the consumer")?;
    consumer.subscribe(&[env.left.as_str(), env.right.as_str()]).context("subscribing")?;
    // transactional_producer sets linger.ms=5 and partitioner=murmur2_random (Java's), as the
    // other peers' producers have.
    let mut config = kafka::transactional_producer(&env.bootstrap, &format!("{}-raw", env.app_id));
    config.set("compression.type", "lz4");
    let producer: BaseProducer = config.create().context("creating the producer")?;
    producer.init_transactions(TXN_TIMEOUT).context("initialising transactions")?;
    producer.begin_transaction().context("beginning a transaction")?;
    eprintln!("raw peer RUNNING");

    let interval = Duration::from_millis(env.commit_interval_ms);
    let mut positions = Positions::new();
    let mut last_commit = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let polled = consumer.poll(POLL_TIMEOUT);
        if revoked.swap(false, Ordering::SeqCst) {
            // A message returned by this same poll belongs to the new assignment: dropping it is
            // right, the rewind below puts the consumer back on the committed offsets.
            eprintln!("raw peer: partitions revoked; aborting the open transaction");
            abort_and_rewind(&consumer, &producer, &mut positions)?;
            continue;
        }
        match polled {
            Some(Ok(message)) => {
                forward(&producer, &env.out, message.key(), message.payload()).context("producing")?;
                positions.insert((message.topic() == env.left, message.partition()), message.offset() + 1);
            }
            // Consumer errors are reports (a broker went away, a fetch failed); librdkafka retries.
            Some(Err(error)) => eprintln!("raw peer: consumer: {error}"),
            None => {}
        }
        producer.poll(Duration::ZERO);
        if last_commit.elapsed() >= interval {
            if !positions.is_empty() {
                commit(&consumer, &producer, env, &mut positions)?;
            }
            last_commit = Instant::now();
        }
    }
    if !positions.is_empty() {
        commit(&consumer, &producer, env, &mut positions)?;
    }
    eprintln!("raw peer closed");
    Ok(())
}

/// Sends one record, waiting out a full queue.
fn forward(
    producer: &BaseProducer,
    out: &str,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
) -> KafkaResult<()> {
    let mut record = BaseRecord::<[u8], [u8]>::to(out);
    if let Some(key) = key {
        record = record.key(key);
    }
    if let Some(payload) = payload {
        record = record.payload(payload);
    }
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                producer.poll(QUEUE_FULL_WAIT);
            }
            Err((error, _)) => return Err(error),
        }
    }
}

/// Whether a transactional error leaves the producer usable after an abort. A retriable error
/// that outlived its retries is not: the transaction is still committing, so it ends the peer.
fn abortable(error: &KafkaError) -> bool {
    matches!(error, KafkaError::Transaction(e) if e.txn_requires_abort())
}

fn retriable(error: &KafkaError) -> bool {
    matches!(error, KafkaError::Transaction(e) if e.is_retriable())
}

/// Runs `call` again while it fails with a retriable error, at most `COMMIT_ATTEMPTS` times.
fn retrying(mut call: impl FnMut() -> KafkaResult<()>) -> KafkaResult<()> {
    let mut attempt = 1;
    loop {
        match call() {
            Err(error) if retriable(&error) && attempt < COMMIT_ATTEMPTS => attempt += 1,
            result => return result,
        }
    }
}

/// Commits the open transaction with the consumed offsets, then opens the next one. An
/// abortable failure aborts and rewinds instead; a fatal one ends the peer.
fn commit(
    consumer: &BaseConsumer<RevokeFlag>,
    producer: &BaseProducer,
    env: &PeerEnv,
    positions: &mut Positions,
) -> anyhow::Result<()> {
    let mut offsets = TopicPartitionList::new();
    for (&(is_left, partition), &next) in positions.iter() {
        let topic = if is_left { &env.left } else { &env.right };
        offsets.add_partition_offset(topic, partition, Offset::Offset(next))?;
    }
    let group = consumer.group_metadata().context("the consumer has no group metadata")?;
    // Flushed in 1 ms steps first, as the runtime's commit does: rdkafka's `commit_transaction`
    // starts with its own flush, which polls 100 ms between two looks at the queue and so put a
    // 100 ms floor under every commit of this peer.
    let committed = retrying(|| producer.send_offsets_to_transaction(&offsets, &group, TXN_TIMEOUT))
        .and_then(|()| flush_in_steps(producer, TXN_TIMEOUT))
        .and_then(|()| retrying(|| producer.commit_transaction(TXN_TIMEOUT)));
    match committed {
        Ok(()) => {
            positions.clear();
            producer.begin_transaction().context("beginning a transaction")?;
            Ok(())
        }
        Err(error) if abortable(&error) => {
            eprintln!("raw peer: commit failed ({error}); aborting and rewinding to the committed offsets");
            abort_and_rewind(consumer, producer, positions)
        }
        Err(error) => Err(error).context("committing a transaction"),
    }
}

/// Aborts the open transaction, puts the consumer back on the committed offsets of its
/// assignment and opens the next transaction.
fn abort_and_rewind(
    consumer: &BaseConsumer<RevokeFlag>,
    producer: &BaseProducer,
    positions: &mut Positions,
) -> anyhow::Result<()> {
    producer.abort_transaction(TXN_TIMEOUT).context("aborting a transaction")?;
    positions.clear();
    let assignment = consumer.assignment().context("reading the assignment")?;
    if assignment.count() > 0 {
        let committed =
            consumer.committed_offsets(assignment, TXN_TIMEOUT).context("reading committed offsets")?;
        let mut seek = TopicPartitionList::new();
        for element in committed.elements() {
            // No committed offset yet: auto.offset.reset=earliest, i.e. the beginning.
            let offset = match element.offset() {
                Offset::Offset(offset) => Offset::Offset(offset),
                _ => Offset::Beginning,
            };
            seek.add_partition_offset(element.topic(), element.partition(), offset)?;
        }
        let sought = consumer.seek_partitions(seek, TXN_TIMEOUT).context("rewinding")?;
        for element in sought.elements() {
            element
                .error()
                .with_context(|| format!("rewinding {}-{}", element.topic(), element.partition()))?;
        }
    }
    producer.begin_transaction().context("beginning a transaction")?;
    Ok(())
}

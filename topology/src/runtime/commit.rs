//! Commit and recovery: how the stream thread makes the active tasks' work durable, and what it
//! does when that fails.
//!
//! Order of a commit under exactly-once v2 (see `StreamThread::commit`):
//! 1. send each dirty store's changelog records (last value per key) to the task's partition;
//! 2. `send_offsets_to_transaction` with the consumer's group metadata (fences zombies by
//!    generation);
//! 3. `commit_transaction`;
//! 4. only now write the buffered store changes to RocksDB, and at most every
//!    `checkpoint_interval` sync the WAL and write the checkpoint.
//!
//! On failure: an abortable error aborts; an ambiguous one (a timed-out commit or abort) drops
//! the producer and makes a new one with the same `transactional.id`, because librdkafka has no
//! KIP-890 and a late EndTxn could otherwise land on the next transaction. In every case the
//! tasks drop their uncommitted work and the consumer seeks back to the committed offsets (a
//! Kafka consumer does not rewind by itself: KAFKA-17582). A fenced or fatal producer ends the
//! session: the thread leaves the group and joins again after a back-off.
//!
//! It is its own module because it is the part where exactly-once is won or lost: every path
//! that ends a transaction (commit, abort, a failure of either) goes through here.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::producer::Producer as _;
use rdkafka::{Offset, TopicPartitionList};

use super::clients::TRANSACTION_CALL_TIMEOUT;
use super::producer::{classify, TransactionFailure, TransactionalProducer};
use super::stream_thread::{lock, now_ms, StreamThread};
use super::StreamsError;

/// Timeout of committed-offset lookups and seeks when rewinding.
const REWIND_TIMEOUT: Duration = Duration::from_secs(30);

impl<K: Clone + Send + 'static, V: Clone + Send + 'static> StreamThread<K, V> {
    /// Whether the open transaction should be committed now: a task asked for it, or the commit
    /// interval has passed.
    pub(super) fn commit_due(&mut self) -> bool {
        // Every task's request is read (and cleared), not just the first one's.
        let mut requested = false;
        for owned in self.tasks.active.values_mut() {
            requested |= owned.task.take_commit_request();
        }
        self.in_transaction && (requested || self.interval_started.elapsed() >= self.config.commit_interval)
    }

    /// Commits, and on failure recovers; returns a rejoin reason if the producer was fenced.
    pub(super) fn commit_or_recover<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<Option<String>, StreamsError> {
        if let Some(error) = self.fatal.take() {
            self.abort_quietly();
            return Err(error);
        }
        if !self.in_transaction {
            return Ok(None);
        }
        let started = Instant::now();
        match self.commit(consumer) {
            Ok(()) => {
                self.metrics.commits.with_label_values(&["committed"]).inc();
                self.metrics.commit_latency.observe(started.elapsed().as_secs_f64());
                self.after_commit()?;
                Ok(None)
            }
            Err(failure) => self.recover(consumer, failure),
        }
    }

    /// One commit of every active task's work (see the module's doc for the order).
    pub(super) fn commit<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), TransactionFailure> {
        let now = now_ms();
        let mut offsets = TopicPartitionList::new();
        let mut changelog = Vec::new();
        for (partition, owned) in &self.tasks.active {
            changelog.extend(owned.task.changelog_records(now));
            for (topic, next) in owned.task.consumed() {
                offsets
                    .add_partition_offset(topic, *partition, Offset::Offset(*next))
                    .map_err(|e| TransactionFailure::Abortable(format!("offsets: {e}")))?;
            }
        }
        for record in &changelog {
            self.producer.send(record).map_err(|e| classify("sending changelog", &e))?;
        }
        if self.producer.transactional {
            if offsets.count() > 0 {
                let metadata = consumer.group_metadata().ok_or_else(|| {
                    TransactionFailure::Abortable("no group metadata (not in a group)".into())
                })?;
                self.producer
                    .producer
                    .send_offsets_to_transaction(&offsets, &metadata, TRANSACTION_CALL_TIMEOUT)
                    .map_err(|e| classify("send_offsets_to_transaction", &e))?;
            }
            self.producer
                .producer
                .commit_transaction(TRANSACTION_CALL_TIMEOUT)
                .map_err(|e| classify("commit_transaction", &e))?;
        } else {
            self.producer.producer.flush(TRANSACTION_CALL_TIMEOUT).map_err(|e| classify("flush", &e))?;
            if let Some(failure) = lock(&self.producer.tracker.failure).take() {
                return Err(TransactionFailure::Ambiguous(format!("delivery failed: {failure}")));
            }
            if offsets.count() > 0 {
                consumer
                    .commit(&offsets, CommitMode::Sync)
                    .map_err(|e| TransactionFailure::Abortable(format!("commit offsets: {e}")))?;
            }
        }
        self.in_transaction = false;
        Ok(())
    }

    /// After a commit: stores catch up with what is now durable in Kafka, then maybe checkpoint.
    pub(super) fn after_commit(&mut self) -> Result<(), StreamsError> {
        let delivered = std::mem::take(&mut *lock(&self.producer.tracker.changelog_offsets));
        self.tasks.committed(&delivered)?;
        if self.last_checkpoint.elapsed() >= self.config.checkpoint_interval {
            self.tasks.checkpoint_all()?;
            self.last_checkpoint = Instant::now();
        }
        Ok(())
    }

    /// A commit failed: drop the uncommitted work, replace the producer if its state is unknown,
    /// and rewind, or ask to rejoin if fenced.
    fn recover<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        failure: TransactionFailure,
    ) -> Result<Option<String>, StreamsError> {
        let (outcome, reason, replace, rejoin) = match failure {
            TransactionFailure::Abortable(reason) => {
                let aborted = self.producer.abort();
                let replace = aborted.is_err();
                ("aborted", reason, replace, false)
            }
            TransactionFailure::Ambiguous(reason) => ("ambiguous", reason, true, false),
            TransactionFailure::Fenced(reason) | TransactionFailure::Fatal(reason) => {
                ("fenced", reason, true, true)
            }
        };
        tracing::warn!(%reason, outcome, "commit failed; dropping uncommitted work and rewinding");
        self.metrics.commits.with_label_values(&[outcome]).inc();
        self.drop_uncommitted()?;
        if replace && !rejoin {
            // Same transactional.id: init_transactions fences the old epoch and aborts whatever
            // it left open.
            self.producer = TransactionalProducer::new(&self.config)?;
        }
        if rejoin {
            return Ok(Some(reason));
        }
        rewind(consumer, self.tasks.active_partitions())?;
        Ok(None)
    }

    /// Aborts the open transaction on the way out (an error, a stop), where a failure to abort
    /// changes nothing: the broker aborts it on transaction timeout.
    pub(super) fn abort_quietly(&mut self) {
        if self.in_transaction && self.producer.transactional {
            if let Err(error) = self.producer.abort() {
                tracing::warn!(%error, "abort failed while stopping; the broker aborts on transaction timeout");
            }
        }
        self.in_transaction = false;
        self.tasks.aborted_quietly();
    }

    /// The transaction is gone (aborted, or its producer replaced): every task drops what it had
    /// not committed and is revived as it was after its last commit.
    pub(super) fn drop_uncommitted(&mut self) -> Result<(), StreamsError> {
        self.in_transaction = false;
        lock(&self.producer.tracker.changelog_offsets).clear();
        lock(&self.producer.tracker.failure).take();
        self.tasks.aborted()
    }
}

/// Seeks every assigned partition of `partitions` back to its committed offset.
pub(super) fn rewind<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    partitions: Vec<i32>,
) -> Result<(), StreamsError> {
    let assignment = consumer.assignment().map_err(StreamsError::kafka("reading the assignment"))?;
    let mut wanted = TopicPartitionList::new();
    for element in assignment.elements() {
        if partitions.contains(&element.partition()) {
            wanted.add_partition(element.topic(), element.partition());
        }
    }
    if wanted.count() == 0 {
        return Ok(());
    }
    let committed = consumer
        .committed_offsets(wanted, REWIND_TIMEOUT)
        .map_err(StreamsError::kafka("reading committed offsets"))?;
    let mut seek = TopicPartitionList::new();
    for element in committed.elements() {
        let offset = match element.offset() {
            Offset::Offset(o) => Offset::Offset(o),
            _ => Offset::Beginning,
        };
        seek.add_partition_offset(element.topic(), element.partition(), offset)
            .map_err(StreamsError::kafka("building the seek list"))?;
    }
    let result = consumer
        .seek_partitions(seek, REWIND_TIMEOUT)
        .map_err(StreamsError::kafka("seeking back to committed offsets"))?;
    for element in result.elements() {
        if let Err(error) = element.error() {
            return Err(StreamsError::Kafka { context: "seeking back to committed offsets", source: error });
        }
    }
    Ok(())
}

//! Commit and recovery: how the stream thread makes the active tasks' work durable, and what it
//! does when that fails.
//!
//! Order of a commit under exactly-once v2 (see `StreamThread::commit`):
//! 1. send each dirty store's changelog records (last value per key) to the task's partition;
//! 2. `send_offsets_to_transaction` with the consumer's group metadata, so the group generation
//!    fences a zombie. A transaction that wrote records always carries offsets: those of the
//!    records it consumed, and for every other input partition of an active task its current
//!    (unchanged) position. Without them a punctuation-only transaction (the timers app's)
//!    would carry no group metadata at all, and a paused instance the group has moved on from
//!    could still commit timer firings and changelog deletes its successor also made;
//! 3. `commit_transaction`;
//! 4. only now write the buffered store changes to RocksDB, and at most every
//!    `checkpoint_interval` sync the WAL and write the checkpoint.
//!
//! On failure, by class ([`TransactionFailure`]):
//! - abortable: abort, then replace the producer anyway. librdkafka bumps the epoch only after
//!   some idempotence errors, not after an abort, and has no KIP-890: a delayed produce request
//!   of the aborted transaction could land in the next one (KAFKA-17754). A new producer with the
//!   same `transactional.id` gets a new epoch, which fences every request of the old one.
//! - ambiguous (a timeout: the broker may or may not have committed): replace the producer; its
//!   `init_transactions` returns only once the old transaction is complete, committed or
//!   aborted. Then ask the broker which: the committed offsets, read with `require_stable`
//!   (librdkafka sets it under `read_committed`), against those the transaction carried for the
//!   records it consumed. Equal: it committed, and the buffered store writes are applied as
//!   after any commit. Behind: it aborted, and they are dropped. A transaction that consumed
//!   nothing (punctuation only) cannot be told by its offsets: every store is caught up from its
//!   changelog instead (Kafka Streams' corrupted-task path), which applies exactly what
//!   committed. Dropping the buffer unconditionally, as before, lost the writes of a commit that
//!   had happened while its offsets moved on: the store silently diverged from its changelog.
//! - fenced or fatal: the session ends; the thread leaves the group and joins again after a
//!   back-off.
//!
//! Unless the commit turned out to have happened, the tasks drop their uncommitted work and the
//! consumer seeks back to the committed offsets (a Kafka consumer does not rewind by itself:
//! KAFKA-17582).
//!
//! It is its own module because it is the part where exactly-once is won or lost: every path
//! that ends a transaction (commit, abort, a failure of either) goes through here.

use std::collections::{BTreeSet, HashMap};
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

/// Input offsets a transaction carried for the records it consumed: (topic, partition) → next
/// offset. What an ambiguous commit is judged by.
pub(super) type Carried = HashMap<(String, i32), i64>;

/// What the broker says became of a transaction whose commit was ambiguous.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Its offsets are committed: so are its outputs and changelog records.
    Committed,
    /// Its offsets are not: it was aborted.
    Aborted,
    /// It consumed nothing, so its offsets cannot tell.
    Unknown,
}

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
        let mut carried = Carried::new();
        match self.commit(consumer, &mut carried) {
            Ok(()) => {
                self.metrics.commits.with_label_values(&["committed"]).inc();
                self.metrics.commit_latency.observe(started.elapsed().as_secs_f64());
                self.after_commit()?;
                Ok(None)
            }
            Err(failure) => self.recover(consumer, failure, &carried),
        }
    }

    /// One commit of every active task's work (see the module's doc for the order).
    ///
    /// `carried` receives the offsets of the records the transaction consumed, for the recovery
    /// of an ambiguous commit.
    pub(super) fn commit<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        carried: &mut Carried,
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
                carried.insert((topic.clone(), *partition), *next);
            }
        }
        for record in &changelog {
            self.producer.send(record).map_err(|e| classify("sending changelog", &e))?;
        }
        if self.producer.transactional {
            if self.producer.records_in_transaction() > 0 {
                self.add_fencing_offsets(consumer, &mut offsets)?;
            }
            if offsets.count() > 0 {
                let metadata = consumer.group_metadata().ok_or_else(|| {
                    TransactionFailure::Abortable("no group metadata (not in a group)".into())
                })?;
                self.producer
                    .producer
                    .send_offsets_to_transaction(&offsets, &metadata, TRANSACTION_CALL_TIMEOUT)
                    .map_err(|e| classify("send_offsets_to_transaction", &e))?;
            }
            self.producer.commit_transaction()?;
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
        self.producer.transaction_over();
        self.in_transaction = false;
        Ok(())
    }

    /// After a commit: stores catch up with what is now durable in Kafka, then maybe checkpoint.
    pub(super) fn after_commit(&mut self) -> Result<(), StreamsError> {
        let delivered = std::mem::take(&mut *lock(&self.producer.tracker.changelog_offsets));
        self.applied(&delivered)
    }

    /// A transaction committed whose changelog records were delivered at `delivered`: stores
    /// catch up, then maybe checkpoint.
    fn applied(&mut self, delivered: &HashMap<(String, i32), i64>) -> Result<(), StreamsError> {
        self.tasks.committed(delivered)?;
        if self.last_checkpoint.elapsed() >= self.config.checkpoint_interval {
            self.tasks.checkpoint_all()?;
            self.last_checkpoint = Instant::now();
        }
        Ok(())
    }

    /// A commit failed: find out what became of the transaction (see the module's doc), keep
    /// what committed, drop the rest and rewind, or ask to rejoin if fenced.
    fn recover<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        failure: TransactionFailure,
        carried: &Carried,
    ) -> Result<Option<String>, StreamsError> {
        tracing::warn!(reason = %failure.reason(), "commit failed");
        match failure {
            TransactionFailure::Abortable(_) => {
                self.abort_and_replace()?;
                self.metrics.commits.with_label_values(&["aborted"]).inc();
            }
            TransactionFailure::Ambiguous(_) => {
                // The old producer's delivery reports say where its changelog records landed,
                // should the transaction turn out committed.
                let delivered = std::mem::take(&mut *lock(&self.producer.tracker.changelog_offsets));
                // Same transactional.id: init_transactions completes (or aborts) the old
                // transaction before it returns, so the broker's offsets are final below.
                self.producer = TransactionalProducer::new(&self.config)?;
                let outcome = outcome(consumer, carried)?;
                tracing::warn!(?outcome, "ambiguous commit resolved");
                match outcome {
                    Outcome::Committed => {
                        self.metrics.commits.with_label_values(&["ambiguous_committed"]).inc();
                        self.in_transaction = false;
                        // As after any commit: the consumer is already past what it carried.
                        self.applied(&delivered)?;
                        return Ok(None);
                    }
                    Outcome::Aborted => {
                        self.metrics.commits.with_label_values(&["ambiguous_aborted"]).inc();
                        self.drop_uncommitted()?;
                    }
                    Outcome::Unknown => {
                        self.metrics.commits.with_label_values(&["ambiguous_restored"]).inc();
                        self.drop_uncommitted()?;
                        self.tasks.reopen_active()?;
                    }
                }
            }
            TransactionFailure::Fenced(reason) | TransactionFailure::Fatal(reason) => {
                self.metrics.commits.with_label_values(&["fenced"]).inc();
                self.drop_uncommitted()?;
                return Ok(Some(reason));
            }
        }
        rewind(consumer, self.tasks.active_partitions())?;
        Ok(None)
    }

    /// Aborts the open transaction, if any, and replaces the producer: a new epoch, so that no
    /// delayed request of the aborted transaction can land in the next one (KAFKA-17754). The
    /// tasks drop their uncommitted work; the caller rewinds.
    pub(super) fn abort_and_replace(&mut self) -> Result<(), StreamsError> {
        if self.in_transaction && self.producer.transactional {
            if let Err(error) = self.producer.abort() {
                // The new producer's init_transactions aborts whatever the old one left open.
                tracing::warn!(%error, "abort failed; the new producer aborts the transaction");
            }
            self.producer = TransactionalProducer::new(&self.config)?;
        }
        self.drop_uncommitted()
    }

    /// The offsets that fence this transaction by group generation even where it consumed
    /// nothing: for every assigned input partition of an active task that `offsets` lacks, where
    /// it stands, which is its committed offset: the first record still in the task's input
    /// buffer if there is one (the consumer's position has run ahead of it: those records are
    /// polled, not processed), else the consumer's position (every record polled is processed,
    /// or the consumer was rewound). Before the first record of a partition there is no position: its
    /// committed offset is read from the group instead, and with none yet, the offset
    /// `auto.offset.reset = earliest` starts from.
    fn add_fencing_offsets<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        offsets: &mut TopicPartitionList,
    ) -> Result<(), TransactionFailure> {
        let unavailable = |what: &str, e: rdkafka::error::KafkaError| {
            TransactionFailure::Abortable(format!("fencing offsets: {what}: {e}"))
        };
        let active: BTreeSet<i32> = self.tasks.active.keys().copied().collect();
        let carried: BTreeSet<(String, i32)> =
            offsets.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
        let mut wanted = TopicPartitionList::new();
        for element in consumer.assignment().map_err(|e| unavailable("assignment", e))?.elements() {
            let key = (element.topic().to_string(), element.partition());
            if active.contains(&element.partition()) && !carried.contains(&key) {
                wanted.add_partition(element.topic(), element.partition());
            }
        }
        if wanted.count() == 0 {
            return Ok(());
        }
        let positions = consumer.position().map_err(|e| unavailable("positions", e))?;
        let mut unknown = TopicPartitionList::new();
        for element in wanted.elements() {
            if let Some(next) = self.tasks.next_buffered_offset(element.topic(), element.partition()) {
                add(offsets, element.topic(), element.partition(), next)?;
                continue;
            }
            match positions.find_partition(element.topic(), element.partition()).map(|p| p.offset()) {
                Some(Offset::Offset(next)) => add(offsets, element.topic(), element.partition(), next)?,
                _ => {
                    unknown.add_partition(element.topic(), element.partition());
                }
            }
        }
        if unknown.count() == 0 {
            return Ok(());
        }
        let committed = consumer
            .committed_offsets(unknown, REWIND_TIMEOUT)
            .map_err(|e| unavailable("committed offsets", e))?;
        for element in committed.elements() {
            let (topic, partition) = (element.topic(), element.partition());
            match element.offset() {
                Offset::Offset(next) => add(offsets, topic, partition, next)?,
                _ if self.config.auto_offset_reset == "earliest" => {
                    let (low, _) = consumer
                        .fetch_watermarks(topic, partition, REWIND_TIMEOUT)
                        .map_err(|e| unavailable("watermarks", e))?;
                    add(offsets, topic, partition, low)?;
                }
                // Nothing committed and no earliest to fall back on: the partitions that do have
                // offsets still carry the group metadata that fences the transaction.
                _ => tracing::debug!(%topic, partition, "no offset to fence with"),
            }
        }
        Ok(())
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
        self.producer.transaction_over();
        lock(&self.producer.tracker.changelog_offsets).clear();
        lock(&self.producer.tracker.failure).take();
        self.tasks.aborted()
    }
}

fn add(
    offsets: &mut TopicPartitionList,
    topic: &str,
    partition: i32,
    next: i64,
) -> Result<(), TransactionFailure> {
    offsets
        .add_partition_offset(topic, partition, Offset::Offset(next))
        .map_err(|e| TransactionFailure::Abortable(format!("fencing offsets: {e}")))
}

/// What became of a transaction that carried `carried`, by the group's committed offsets (read
/// with `require_stable`, so a commit still being completed is waited for, not misread).
fn outcome<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    carried: &Carried,
) -> Result<Outcome, StreamsError> {
    if carried.is_empty() {
        return Ok(Outcome::Unknown);
    }
    let mut asked = TopicPartitionList::new();
    for (topic, partition) in carried.keys() {
        asked.add_partition(topic, *partition);
    }
    let committed = consumer
        .committed_offsets(asked, REWIND_TIMEOUT)
        .map_err(StreamsError::kafka("reading committed offsets after an ambiguous commit"))?;
    let found: HashMap<(String, i32), Offset> =
        committed.elements().iter().map(|e| ((e.topic().to_string(), e.partition()), e.offset())).collect();
    Ok(judge(carried, &found))
}

/// Committed when every carried offset is the committed one, aborted when none is. A mix cannot
/// come from one atomic transaction: told apart from the changelog instead, to be safe.
fn judge(carried: &Carried, committed: &HashMap<(String, i32), Offset>) -> Outcome {
    let equal =
        carried.iter().filter(|(key, next)| committed.get(*key) == Some(&Offset::Offset(**next))).count();
    match equal {
        0 => Outcome::Aborted,
        n if n == carried.len() => Outcome::Committed,
        _ => {
            tracing::error!(?carried, ?committed, "a transaction's offsets are committed in part");
            Outcome::Unknown
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ambiguous_commit_is_judged_by_the_offsets_it_carried() {
        let carried: Carried = [(("in".to_string(), 0), 10), (("in".to_string(), 1), 7)].into();
        let committed = |a: Offset, b: Offset| -> HashMap<(String, i32), Offset> {
            [(("in".to_string(), 0), a), (("in".to_string(), 1), b)].into()
        };
        assert_eq!(judge(&carried, &committed(Offset::Offset(10), Offset::Offset(7))), Outcome::Committed);
        assert_eq!(judge(&carried, &committed(Offset::Offset(4), Offset::Offset(2))), Outcome::Aborted);
        assert_eq!(
            judge(&carried, &committed(Offset::Invalid, Offset::Invalid)),
            Outcome::Aborted,
            "nothing committed yet"
        );
        assert_eq!(judge(&carried, &committed(Offset::Offset(10), Offset::Offset(2))), Outcome::Unknown);
    }
}

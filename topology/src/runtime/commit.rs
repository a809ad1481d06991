//! Commit and recovery: how the stream thread makes the active tasks' work durable, and what it
//! does when that fails.
//!
//! Order of a commit under exactly-once v2 (see `StreamThread::commit`):
//! 1. send each dirty store's changelog records (last value per key) to the task's partition;
//! 2. `send_offsets_to_transaction` with the consumer's group metadata, so the group generation
//!    fences a zombie. A transaction that wrote records always carries offsets: those of the
//!    records it consumed, or, if it consumed none (punctuation only: the timers app), one input
//!    partition's committed offset, unchanged ([`FenceOffset`]). Without it such a transaction
//!    would carry no group metadata at all, and a paused instance the group has moved on from
//!    could still commit timer firings and changelog deletes its successor also made. One
//!    partition is enough: the broker checks the generation once per request;
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

use std::collections::HashMap;
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

/// One input partition's committed offset, which a transaction that consumed nothing carries
/// (unchanged) so that its `send_offsets_to_transaction` takes the group metadata along and the
/// group generation can refuse a zombie. Valid for one assignment: `generation` counts the
/// assignments seen, and a partition that moved away and back may have been committed further by
/// another member meanwhile, so the offset is looked up again (sending an older one would move
/// the group's offset back).
#[derive(Debug, Default)]
pub(super) struct FenceOffset {
    /// The assignment this was found in (`paystream_topology_rebalances_total{kind="assigned"}`).
    generation: Option<u64>,
    /// (topic, partition) → its committed next offset; `None` when nothing is committed yet.
    known: Option<((String, i32), i64)>,
}

impl FenceOffset {
    /// A transaction committed `carried`: its offsets are the committed ones now.
    fn committed(&mut self, carried: &Carried) {
        if let Some(((topic, partition), next)) = carried.iter().next() {
            self.known = Some(((topic.clone(), *partition), *next));
        }
    }
}

/// The group's committed offset of one assigned input partition of the active tasks `active`
/// (one OffsetFetch). Not the consumer's position: records polled but not yet processed (buffered
/// for timestamp order, say) put it ahead of what is committed, and sending it would skip them.
/// `None` when the group has committed nothing for any of them yet, or the lookup failed (the
/// next assignment looks again).
fn find_fence_offset<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    active: &[i32],
) -> Option<((String, i32), i64)> {
    let assignment = consumer.assignment().ok()?;
    let mut wanted = TopicPartitionList::new();
    for element in assignment.elements() {
        if active.contains(&element.partition()) {
            wanted.add_partition(element.topic(), element.partition());
        }
    }
    if wanted.count() == 0 {
        return None;
    }
    match consumer.committed_offsets(wanted, REWIND_TIMEOUT) {
        Ok(committed) => committed.elements().iter().find_map(|e| match e.offset() {
            Offset::Offset(next) => Some(((e.topic().to_string(), e.partition()), next)),
            _ => None,
        }),
        Err(error) => {
            tracing::warn!(%error, "reading a committed offset to fence with");
            None
        }
    }
}

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
                self.fence.committed(&carried);
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
            if offsets.count() == 0 && self.producer.records_in_transaction() > 0 {
                self.add_fencing_offset(consumer, &mut offsets)?;
            }
            if offsets.count() > 0 {
                let metadata = consumer.group_metadata().ok_or_else(|| {
                    TransactionFailure::Abortable("no group metadata (not in a group)".into())
                })?;
                self.producer.send_offsets(&offsets, &metadata)?;
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
                        self.fence.committed(carried);
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

    /// Adds the fencing offset to a transaction that wrote records but consumed none (see
    /// [`FenceOffset`]). Looked up once per assignment at most, and not at all while the tasks
    /// consume: a consuming transaction's own offsets carry the group metadata.
    fn add_fencing_offset<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        offsets: &mut TopicPartitionList,
    ) -> Result<(), TransactionFailure> {
        let generation = self.metrics.rebalances.with_label_values(&["assigned"]).get();
        if self.fence.generation != Some(generation) {
            let active = self.tasks.active_partitions();
            self.fence =
                FenceOffset { generation: Some(generation), known: find_fence_offset(consumer, &active) };
        }
        match &self.fence.known {
            Some(((topic, partition), next)) => add(offsets, topic, *partition, *next),
            None => {
                tracing::debug!(
                    "no committed input offset yet: a punctuation-only transaction goes unfenced"
                );
                Ok(())
            }
        }
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

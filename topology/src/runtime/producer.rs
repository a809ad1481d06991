//! The transactional producer wrapper: how the runtime's one producer is made, remade, aborted
//! and fed, and how its failures are classified.
//!
//! It is its own module because the rules for a Kafka producer under exactly-once are subtle and
//! must live in one place: `init_transactions` fences every earlier producer with the same
//! `transactional.id`; an abort must serve delivery reports first; and a failure of a
//! transactional call falls into exactly one class ([`TransactionFailure`]) that decides the
//! recovery (abort on this producer, replace it, or leave the group).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};

use super::clients::{self, TRANSACTION_CALL_TIMEOUT};
use super::faults::{self, CommitFault, FaultSite};
use super::stream_thread::lock;
use super::{ProcessingGuarantee, StreamsConfig, StreamsError};
use crate::record::OutputRecord;

/// Tracks delivered offsets of changelog records (for checkpoints) and delivery failures.
#[derive(Default, Clone)]
pub(super) struct DeliveryTracker {
    /// (topic, partition) → highest delivered offset, changelogs only.
    pub changelog_offsets: Arc<Mutex<HashMap<(String, i32), i64>>>,
    /// First delivery error since the last reset.
    pub failure: Arc<Mutex<Option<String>>>,
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(message) if message.topic().ends_with("-changelog") => {
                let mut offsets = lock(&self.changelog_offsets);
                let entry = offsets.entry((message.topic().to_string(), message.partition())).or_insert(-1);
                *entry = (*entry).max(message.offset());
            }
            Ok(_) => {}
            Err((error, message)) => {
                let mut failure = lock(&self.failure);
                if failure.is_none() {
                    *failure = Some(format!("{}-{}: {error}", message.topic(), message.partition()));
                }
            }
        }
    }
}

/// The runtime's producer: transactional under exactly-once v2 (one per instance, with a
/// `transactional.id` stable per instance), idempotent under at-least-once.
pub(super) struct TransactionalProducer {
    /// librdkafka's producer.
    pub producer: BaseProducer<DeliveryTracker>,
    /// Its delivery reports.
    pub tracker: DeliveryTracker,
    /// Whether transactions are used (exactly-once v2).
    pub transactional: bool,
    /// Its `transactional.id`, which names the injected faults meant for it.
    transactional_id: String,
    /// Records sent since the transaction began: a transaction that wrote nothing needs no
    /// fencing offsets (and librdkafka completes it without a request).
    records_in_transaction: AtomicUsize,
}

impl TransactionalProducer {
    /// A new producer; under EOS `init_transactions` fences any earlier producer with this
    /// `transactional.id` and aborts its open transaction.
    pub fn new(config: &StreamsConfig) -> Result<Self, StreamsError> {
        let tracker = DeliveryTracker::default();
        let producer = clients::producer(config, tracker.clone())
            .map_err(StreamsError::kafka("creating the producer"))?;
        let transactional = config.guarantee == ProcessingGuarantee::ExactlyOnceV2;
        if transactional {
            producer
                .init_transactions(TRANSACTION_CALL_TIMEOUT)
                .map_err(StreamsError::kafka("initializing transactions"))?;
        }
        Ok(Self {
            producer,
            tracker,
            transactional,
            transactional_id: config.transactional_id(),
            records_in_transaction: AtomicUsize::new(0),
        })
    }

    /// Records sent in the open transaction.
    pub fn records_in_transaction(&self) -> usize {
        self.records_in_transaction.load(Ordering::Relaxed)
    }

    /// The transaction is over (committed, aborted, or its producer about to be replaced).
    pub fn transaction_over(&self) {
        self.records_in_transaction.store(0, Ordering::Relaxed);
    }

    /// Commits the open transaction: flushes (serving every delivery report), then EndTxn.
    ///
    /// This is also the one seam where a test's injected fault ([`faults`]) acts: a timeout
    /// before the EndTxn leaves the transaction open on the broker, a timeout after it leaves
    /// it committed, and both come back as [`TransactionFailure::Ambiguous`], as a real timeout
    /// does.
    pub fn commit_transaction(&self) -> Result<(), TransactionFailure> {
        let commit = || {
            // Flushed here first: rdkafka's own flush (which its commit_transaction starts with)
            // would find nothing left to wait for.
            self.flush(TRANSACTION_CALL_TIMEOUT).map_err(|e| classify("flush", &e))?;
            self.producer
                .commit_transaction(TRANSACTION_CALL_TIMEOUT)
                .map_err(|e| classify("commit_transaction", &e))
        };
        match faults::take_commit_fault(&self.transactional_id, FaultSite::Commit) {
            None => commit(),
            Some(CommitFault::TimeoutBeforeCommit) => {
                // Delivered but never ended, as when the EndTxn request is lost.
                self.producer.flush(TRANSACTION_CALL_TIMEOUT).map_err(|e| classify("flush", &e))?;
                Err(TransactionFailure::Ambiguous(
                    "commit_transaction: timed out (injected, before the EndTxn)".into(),
                ))
            }
            Some(CommitFault::TimeoutAfterCommit) => {
                commit()?;
                Err(TransactionFailure::Ambiguous(
                    "commit_transaction: timed out (injected, after the commit)".into(),
                ))
            }
            Some(CommitFault::Abortable) => {
                Err(TransactionFailure::Abortable("commit_transaction: abortable error (injected)".into()))
            }
            Some(other) => unreachable!("{other:?} is not a commit_transaction fault"),
        }
    }

    /// Adds the consumed offsets to the open transaction, with the consumer's group metadata
    /// (which lets the group generation fence a zombie). Also a seam of the injected faults: a
    /// timeout before the request reaches the broker, or a refusal that needs an abort.
    pub fn send_offsets(
        &self,
        offsets: &rdkafka::TopicPartitionList,
        metadata: &rdkafka::consumer::ConsumerGroupMetadata,
    ) -> Result<(), TransactionFailure> {
        match faults::take_commit_fault(&self.transactional_id, FaultSite::SendOffsets) {
            None => self
                .producer
                .send_offsets_to_transaction(offsets, metadata, TRANSACTION_CALL_TIMEOUT)
                .map_err(|e| classify("send_offsets_to_transaction", &e)),
            Some(CommitFault::SendOffsetsTimeout) => {
                Err(TransactionFailure::Ambiguous("send_offsets_to_transaction: timed out (injected)".into()))
            }
            Some(CommitFault::SendOffsetsAbortable) => Err(TransactionFailure::Abortable(
                "send_offsets_to_transaction: abortable error (injected)".into(),
            )),
            Some(other) => unreachable!("{other:?} is not a send_offsets_to_transaction fault"),
        }
    }

    /// Aborts the open transaction. librdkafka's abort waits until every outstanding message is
    /// purged or delivered *and its delivery report served*, which a `BaseProducer` does only when
    /// polled: without the flush first (which polls, as rdkafka's `commit_transaction` does), an
    /// abort with records in flight times out and the producer has to be replaced.
    pub fn abort(&self) -> Result<(), KafkaError> {
        if let Err(error) = self.producer.flush(TRANSACTION_CALL_TIMEOUT) {
            // The abort below still decides; a failed delivery only makes it more necessary.
            tracing::debug!(%error, "flush before abort failed");
        }
        if faults::take_commit_fault(&self.transactional_id, FaultSite::Abort).is_some() {
            // As a timed-out abort: the transaction is left open on the broker.
            return Err(KafkaError::Global(RDKafkaErrorCode::OperationTimedOut));
        }
        self.producer.abort_transaction(TRANSACTION_CALL_TIMEOUT)
    }

    /// Waits until every record sent is delivered and its report served, polling in steps of
    /// [`FLUSH_POLL_STEP`].
    ///
    /// Not rdkafka's `flush`: between two looks at librdkafka's queue it polls for up to 100 ms,
    /// and `BaseProducer::poll` returns only when its timeout is over, not after the first event.
    /// Every commit with a record in flight (all of them) so waited 100 ms or more after the last
    /// delivery: the floor of a commit, and of every hop through the runtime.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        flush_in_steps(&self.producer, timeout)
    }

    /// Sends one record, waiting while librdkafka's queue is full.
    pub fn send(&self, record: &OutputRecord) -> Result<(), KafkaError> {
        let mut base: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(&record.topic).timestamp(record.timestamp_ms);
        // Native headers cost an allocation in librdkafka even when empty: only when there are some.
        if !record.headers.is_empty() {
            let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
            for (key, value) in &record.headers {
                headers = headers.insert(Header { key, value: Some(value) });
            }
            base = base.headers(headers);
        }
        if let Some(key) = &record.key {
            base = base.key(key.as_slice());
        }
        if let Some(value) = &record.value {
            base = base.payload(value.as_slice());
        }
        if let Some(partition) = record.partition {
            base = base.partition(partition);
        }
        loop {
            match self.producer.send(base) {
                Ok(()) => {
                    self.records_in_transaction.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    base = back;
                    self.producer.poll(Duration::from_millis(10));
                }
                Err((error, _)) => return Err(error),
            }
        }
    }
}

/// Waits until every record `producer` sent is delivered and its report served, polling in
/// steps of [`FLUSH_POLL_STEP`] instead of rdkafka's 100 ms (see [`TransactionalProducer::flush`]).
/// Public for the join benchmark's raw rdkafka peer, which must not carry a floor the runtime
/// does not.
pub fn flush_in_steps<C: ProducerContext>(
    producer: &BaseProducer<C>,
    timeout: Duration,
) -> Result<(), KafkaError> {
    let deadline = Instant::now() + timeout;
    loop {
        match producer.flush(Duration::ZERO) {
            Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)) if Instant::now() < deadline => {
                producer.poll(FLUSH_POLL_STEP);
            }
            done => return done,
        }
    }
}

/// How long [`TransactionalProducer::flush`] polls between two looks at librdkafka's queue: a
/// produce round trip on one broker is about a millisecond.
pub(super) const FLUSH_POLL_STEP: Duration = Duration::from_millis(1);

/// Why a transactional call failed, and so how to recover.
#[derive(Debug)]
pub(super) enum TransactionFailure {
    /// The transaction can be aborted on this producer.
    Abortable(String),
    /// The outcome is unknown (a timeout, a lost connection): replace the producer.
    Ambiguous(String),
    /// Fenced: another producer owns our `transactional.id`, or the group moved on. Rejoin.
    Fenced(String),
    /// librdkafka put the producer in a fatal state: it is unusable. Rejoin with a new one.
    Fatal(String),
}

impl TransactionFailure {
    /// The failure's description.
    pub fn reason(&self) -> &str {
        match self {
            Self::Abortable(r) | Self::Ambiguous(r) | Self::Fenced(r) | Self::Fatal(r) => r,
        }
    }
}

/// The class of `error`, met while `context`.
pub(super) fn classify(context: &str, error: &KafkaError) -> TransactionFailure {
    let text = format!("{context}: {error}");
    let code = error.rdkafka_error_code();
    if matches!(code, Some(RDKafkaErrorCode::ProducerFenced) | Some(RDKafkaErrorCode::InvalidProducerEpoch)) {
        return TransactionFailure::Fenced(text);
    }
    match error {
        KafkaError::Transaction(e) if e.is_fatal() => TransactionFailure::Fatal(text),
        KafkaError::Transaction(e) if e.txn_requires_abort() => TransactionFailure::Abortable(text),
        _ => TransactionFailure::Ambiguous(text),
    }
}

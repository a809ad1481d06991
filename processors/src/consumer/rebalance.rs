//! The partitions a consumer loop owns, their workers, and what a rebalance does to them.
//!
//! # Why this exists
//!
//! Each assigned partition has a worker task with a bounded queue of records already
//! fetched. If a partition moved to another instance while its worker kept going, both
//! instances would work the same records: the new owner starts at the last committed
//! offset, the old one works through its queue (issue 11, scenario 5: two dispatchers
//! charging one payment). So a revocation is finished here, before librdkafka gives the
//! partition up:
//!
//! 1. [`ConsumerContext::pre_rebalance`] with `Revoke(partitions)` runs inside the loop's
//!    `recv()` (rdkafka serves rebalance events from the consumer queue), before
//!    librdkafka unassigns anything. For each revoked partition it removes the worker from
//!    the routing table (no new record reaches it), signals its stop and drops its queue
//!    sender. The worker drops the records it had not started; a record in flight
//!    finishes (its handler sees the stop only at its own pauses: a back-off, a wait for a
//!    permit), and its offset is stored.
//! 2. It waits for those workers to exit, for at most [`REVOKE_DRAIN_MAX_MS`]. A worker
//!    still busy then is aborted (its future dropped at its next await), given
//!    [`ABORT_GRACE_MS`] more, and counted (`*_revoke_timeouts_total`); its record was not
//!    committed, so the new owner does it again, after it, not alongside it.
//! 3. It commits the stored offsets synchronously, so the new owner starts after every
//!    record that finished here.
//! 4. Only then does the callback return and librdkafka unassign the partitions
//!    (`incremental_unassign` under the cooperative protocol this loop asks for,
//!    `assign(NULL)` under an eager one). Records still in librdkafka's queues for them
//!    are discarded by librdkafka, and a partition assigned again later is fetched from
//!    its committed offset, so the dropped records are read again, not lost.
//!
//! [`ConsumerContext::post_rebalance`] with `Assign(partitions)` records the new
//! partitions; their workers start with their first record. A record of a partition not
//! in the assignment (none should come) is dropped, never worked.
//!
//! The wait in step 2 blocks the thread running `recv()`. It goes through
//! [`tokio::task::block_in_place`], so the runtime moves its other tasks (the workers
//! being waited for among them) to other threads; the loop therefore refuses to start on
//! a current-thread runtime ([`super::ConsumerError::Runtime`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use paystream_topology::ShutdownHandle;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedMessage;
use rdkafka::TopicPartitionList;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::metrics::ConsumerMetrics;

/// How long a revocation waits for the records in flight on the revoked partitions. It
/// covers one dispatcher HTTP attempt (5 s) and the produce of its outcome, or one
/// settlement transaction (a 5 s pool acquire included), and stays far below the group's
/// rebalance timeout (`max.poll.interval.ms`, 5 minutes), which the whole group waits on.
pub const REVOKE_DRAIN_MAX_MS: u64 = 15_000;
/// How long an aborted worker is given to be dropped after the drain bound passed.
pub const ABORT_GRACE_MS: u64 = 1_000;

/// A partition: topic and number.
pub type Partition = (String, i32);

/// Set once a worker has exited, however it exited (returned, failed, panicked, aborted):
/// a [`ExitGuard`] held by the worker's future sets it when dropped.
#[derive(Debug, Default)]
pub(crate) struct Exited {
    done: Mutex<bool>,
    changed: Condvar,
}

impl Exited {
    fn set(&self) {
        *self.done.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.changed.notify_all();
    }

    /// Blocks until set or `deadline`; whether it was set.
    fn wait_until(&self, deadline: Instant) -> bool {
        let mut done = self.done.lock().unwrap_or_else(PoisonError::into_inner);
        while !*done {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            done = self.changed.wait_timeout(done, left).unwrap_or_else(PoisonError::into_inner).0;
        }
        true
    }
}

/// Held by a worker's future; marks the worker exited when dropped.
pub(crate) struct ExitGuard(Arc<Exited>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        self.0.set();
    }
}

/// A running worker, as the loop and the rebalance callback see it. Dropping it (a revocation,
/// a replacement, the loop's end) stops the worker.
struct Worker {
    /// Feeds the worker; dropped to close its queue.
    queue: mpsc::Sender<OwnedMessage>,
    /// The worker's stop, requested when this entry goes.
    stop: ShutdownHandle,
    /// Set when the worker has exited.
    exited: Arc<Exited>,
    /// Aborts the worker when it outlasts the drain bound.
    abort: AbortHandle,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.request();
    }
}

/// What a new worker needs, handed out by [`Partitions::prepare`].
pub(crate) struct WorkerStart {
    /// The worker's queue.
    pub queue: mpsc::Receiver<OwnedMessage>,
    /// Requested when the partition is revoked or the loop ends.
    pub stop: ShutdownHandle,
    /// Dropped when the worker exits.
    pub exit: ExitGuard,
}

/// The loop's half of a [`WorkerStart`], kept until the task is spawned.
pub(crate) struct WorkerSlot {
    queue: mpsc::Sender<OwnedMessage>,
    stop: ShutdownHandle,
    exited: Arc<Exited>,
}

impl WorkerSlot {
    /// A sender into the new worker's queue.
    pub fn queue(&self) -> mpsc::Sender<OwnedMessage> {
        self.queue.clone()
    }
}

/// The partitions assigned to this member and the workers working them. Shared by the
/// loop (routes records, starts workers) and the rebalance callback (stops them); every
/// lock is held for a map operation only, never across an `.await` or a wait.
#[derive(Default)]
pub(crate) struct Partitions {
    /// The current assignment, as the rebalance callbacks reported it.
    assigned: Mutex<HashSet<Partition>>,
    /// One worker per partition that has received a record since it was assigned.
    workers: Mutex<HashMap<Partition, Worker>>,
}

impl Partitions {
    fn assigned(&self) -> MutexGuard<'_, HashSet<Partition>> {
        self.assigned.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn workers(&self) -> MutexGuard<'_, HashMap<Partition, Worker>> {
        self.workers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `partition` is assigned to this member now.
    pub fn is_assigned(&self, partition: &Partition) -> bool {
        self.assigned().contains(partition)
    }

    /// The queue of `partition`'s worker, if it runs.
    pub fn queue(&self, partition: &Partition) -> Option<mpsc::Sender<OwnedMessage>> {
        self.workers().get(partition).map(|worker| worker.queue.clone())
    }

    /// The channels of a new worker with a queue of `queue_max` records.
    pub fn prepare(queue_max: usize) -> (WorkerSlot, WorkerStart) {
        let (queue_tx, queue_rx) = mpsc::channel(queue_max.max(1));
        let stop = ShutdownHandle::new();
        let exited = Arc::new(Exited::default());
        let slot = WorkerSlot { queue: queue_tx, stop: stop.clone(), exited: exited.clone() };
        (slot, WorkerStart { queue: queue_rx, stop, exit: ExitGuard(exited) })
    }

    /// Records the worker spawned for `partition`, replacing (and stopping) a previous one
    /// that had already exited.
    pub fn insert(&self, partition: Partition, slot: WorkerSlot, abort: AbortHandle) {
        let worker = Worker { queue: slot.queue, stop: slot.stop, exited: slot.exited, abort };
        // Dropping the previous entry stops its worker.
        drop(self.workers().insert(partition, worker));
    }

    /// Stops every worker and closes its queue (the loop is ending).
    pub fn clear(&self) {
        self.workers().clear();
    }

    fn assign(&self, list: &TopicPartitionList) {
        let mut assigned = self.assigned();
        assigned.extend(partitions_of(list));
    }

    /// Takes `revoked` out of the assignment and their workers out of the routing table,
    /// signalling each to stop and closing its queue; the workers, to be waited for.
    fn revoke(&self, revoked: &[Partition]) -> Vec<(Partition, Arc<Exited>, AbortHandle)> {
        {
            let mut assigned = self.assigned();
            for partition in revoked {
                assigned.remove(partition);
            }
        }
        let mut workers = self.workers();
        revoked
            .iter()
            .filter_map(|partition| workers.remove(partition).map(|worker| (partition.clone(), worker)))
            .map(|(partition, worker)| {
                // Dropping `worker` here stops it and closes its queue: the worker drops what it
                // holds.
                (partition, worker.exited.clone(), worker.abort.clone())
            })
            .collect()
    }
}

fn partitions_of(list: &TopicPartitionList) -> Vec<Partition> {
    list.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect()
}

/// Waits, blocking, until every worker in `stopping` has exited or the bounds pass;
/// aborts the ones that outlast [`REVOKE_DRAIN_MAX_MS`]. Returns the partitions whose
/// worker had to be abandoned.
fn drain(stopping: Vec<(Partition, Arc<Exited>, AbortHandle)>, bound: Duration) -> Vec<Partition> {
    let deadline = Instant::now() + bound;
    let mut late = Vec::new();
    for (partition, exited, abort) in stopping {
        if !exited.wait_until(deadline) {
            abort.abort();
            let grace = Instant::now() + Duration::from_millis(ABORT_GRACE_MS);
            if !exited.wait_until(grace) {
                tracing::error!(
                    topic = %partition.0,
                    partition = partition.1,
                    "an aborted worker was not dropped within the grace period"
                );
            }
            late.push(partition);
        }
    }
    late
}

/// Runs `wait` where blocking is allowed: through `block_in_place` on a worker thread of
/// a multi-thread runtime (its other tasks move to other threads), directly elsewhere (a
/// blocking thread, as when the consumer is closed in `spawn_blocking`).
fn blocking<T>(wait: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        _ => wait(),
    }
}

/// The consumer's context: the rebalance callbacks of one loop.
pub(crate) struct LoopContext {
    /// The processor's name, for the logs.
    pub processor: &'static str,
    /// Shared with the loop.
    pub partitions: Arc<Partitions>,
    /// [`REVOKE_DRAIN_MAX_MS`] unless a test says otherwise.
    pub revoke_drain: Duration,
    /// Revocations and abandoned records are counted here.
    pub metrics: ConsumerMetrics,
}

impl ClientContext for LoopContext {}

impl ConsumerContext for LoopContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(list) = rebalance else {
            if let Rebalance::Error(error) = rebalance {
                tracing::warn!(processor = self.processor, %error, "rebalance error");
            }
            return;
        };
        let revoked = partitions_of(list);
        self.metrics.record_revoked(revoked.len());
        let stopping = self.partitions.revoke(&revoked);
        let started = Instant::now();
        let late =
            if stopping.is_empty() { Vec::new() } else { blocking(|| drain(stopping, self.revoke_drain)) };
        for partition in &late {
            self.metrics.record_revoke_timeout();
            tracing::warn!(
                processor = self.processor,
                topic = %partition.0,
                partition = partition.1,
                bound_ms = self.revoke_drain.as_millis() as u64,
                "revoked partition's record in flight outlasted the bound; abandoned uncommitted"
            );
        }
        // The offsets of everything that finished, before the partitions change hands.
        let committed = blocking(|| consumer.commit_consumer_state(CommitMode::Sync));
        match committed {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => tracing::warn!(
                processor = self.processor,
                %error,
                "committing before giving partitions up failed; their new owner repeats what finished since the last commit"
            ),
        }
        tracing::info!(
            processor = self.processor,
            partitions = ?revoked,
            drained_ms = started.elapsed().as_millis() as u64,
            "partitions revoked: workers stopped, queues dropped, offsets committed"
        );
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            self.partitions.assign(list);
            tracing::info!(processor = self.processor, partitions = ?partitions_of(list), "partitions assigned");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exit_is_seen_by_a_waiter_and_a_missing_one_times_out() {
        let exited = Arc::new(Exited::default());
        assert!(!exited.wait_until(Instant::now() + Duration::from_millis(10)));
        let guard = ExitGuard(exited.clone());
        let waiter = {
            let exited = exited.clone();
            std::thread::spawn(move || exited.wait_until(Instant::now() + Duration::from_secs(30)))
        };
        drop(guard);
        assert!(waiter.join().unwrap(), "the waiter saw the exit");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn revoking_stops_the_worker_closes_its_queue_and_waits_for_it() {
        let partitions = Partitions::default();
        let partition: Partition = ("t".into(), 0);
        let mut list = TopicPartitionList::new();
        list.add_partition("t", 0);
        partitions.assign(&list);
        assert!(partitions.is_assigned(&partition));

        let (slot, mut start) = Partitions::prepare(4);
        let (finished_tx, finished_rx) = std::sync::mpsc::channel();
        let task = tokio::spawn(async move {
            let _exit = start.exit;
            // Stands for a record in flight: it finishes after the stop, then the worker ends.
            start.stop.requested().await;
            tokio::task::yield_now().await;
            let closed = start.queue.recv().await.is_none();
            finished_tx.send(closed).unwrap();
        });
        partitions.insert(partition.clone(), slot, task.abort_handle());
        assert!(partitions.queue(&partition).is_some());

        let stopping = partitions.revoke(std::slice::from_ref(&partition));
        let late = blocking(|| drain(stopping, Duration::from_secs(30)));
        assert!(late.is_empty(), "the worker finished within the bound");
        assert!(finished_rx.try_recv().unwrap(), "the queue was closed before the worker ended");
        assert!(!partitions.is_assigned(&partition));
        assert!(partitions.queue(&partition).is_none(), "no more records are routed to it");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_worker_that_outlasts_the_bound_is_aborted() {
        let partitions = Partitions::default();
        let partition: Partition = ("t".into(), 1);
        let (slot, start) = Partitions::prepare(1);
        let task = tokio::spawn(async move {
            let _exit = start.exit;
            std::future::pending::<()>().await;
        });
        partitions.insert(partition.clone(), slot, task.abort_handle());
        let stopping = partitions.revoke(std::slice::from_ref(&partition));
        let late = blocking(|| drain(stopping, Duration::from_millis(50)));
        assert_eq!(late, [partition]);
        assert!(task.await.unwrap_err().is_cancelled());
    }
}

//! Injected transaction faults: how the failure tests make a commit fail, on the real broker, in
//! the ways that matter for exactly-once.
//!
//! A commit that times out is ambiguous: the broker may have committed (the answer was lost) or
//! not (the request was). Neither can be produced on demand from outside the process:
//! rdkafka's `MockCluster` injects an error code per API key but is no broker (its EndTxn writes
//! no transaction markers, so "committed" and "aborted" look alike to a `read_committed`
//! reader), and `stack::fault_proxy` relays bytes, while the broker's metadata sends clients
//! straight to its advertised address, around any proxy. So the fault is injected at the one
//! seam the runtime has, the producer's commit ([`super::producer`]), and everything around it
//! stays real: the broker commits or keeps the transaction open, the new producer's
//! `init_transactions` completes or aborts it, and recovery reads the broker's committed offsets.
//!
//! A fault is armed for one `transactional.id` and used by that producer's next transactional
//! call it is meant for ([`CommitFault`]: `send_offsets_to_transaction`, `commit_transaction` or
//! `abort_transaction`), in the order armed. Nothing is armed in production: the check is one load of an
//! atomic flag per commit.
//!
//! Restore faults ([`RestoreFault`]) act the same way at the restore consumer's poll, for the
//! same reason: cutting the restore consumer's connection from outside would need a proxy the
//! broker's metadata does not send clients around (it advertises its own address, and
//! rust-rdkafka exposes no hook to resolve broker addresses). The error is the one librdkafka
//! reports after such a cut; the re-fetch from the restored position, and the wipe after an
//! offset out of range, are real.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// How the next commit fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitFault {
    /// `commit_transaction` times out before its EndTxn reaches the broker: the transaction stays
    /// open until the next producer with this `transactional.id` aborts it.
    TimeoutBeforeCommit,
    /// The broker commits and the answer is lost: `commit_transaction` reports a timeout after
    /// the transaction, its outputs and its offsets are committed.
    TimeoutAfterCommit,
    /// The commit fails in a way that needs an abort (as a rejected `send_offsets_to_transaction`
    /// does): the transaction is aborted on this producer.
    Abortable,
    /// `send_offsets_to_transaction` times out before its request reaches the broker: the
    /// transaction's outcome is unknown to the runtime (the broker holds it open, without the
    /// offsets, until the next producer with this `transactional.id` aborts it).
    SendOffsetsTimeout,
    /// `send_offsets_to_transaction` is refused in a way that needs an abort (as a stale group
    /// generation is).
    SendOffsetsAbortable,
    /// `abort_transaction` fails (as a timeout does) without aborting: the transaction stays
    /// open until the next producer aborts it. Armed after a fault that leads to an abort.
    AbortFails,
}

/// Where a [`CommitFault`] strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FaultSite {
    /// `commit_transaction`.
    Commit,
    /// `send_offsets_to_transaction`.
    SendOffsets,
    /// `abort_transaction`.
    Abort,
}

impl CommitFault {
    fn site(self) -> FaultSite {
        match self {
            Self::TimeoutBeforeCommit | Self::TimeoutAfterCommit | Self::Abortable => FaultSite::Commit,
            Self::SendOffsetsTimeout | Self::SendOffsetsAbortable => FaultSite::SendOffsets,
            Self::AbortFails => FaultSite::Abort,
        }
    }
}

/// Faults armed per client identity (a `transactional.id`), each used once, in order. One
/// mechanism for every kind of fault: a static queue per kind.
struct Armed<F> {
    /// Whether any fault of this kind is armed at all: the fast path of every use.
    any: AtomicBool,
    /// Armed faults, by `transactional.id`, in the order they will be used.
    by_id: Mutex<BTreeMap<String, VecDeque<F>>>,
}

impl<F: Copy> Armed<F> {
    const fn new() -> Self {
        Self { any: AtomicBool::new(false), by_id: Mutex::new(BTreeMap::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, VecDeque<F>>> {
        // The map holds plain values: a test that panicked holding the lock left it usable.
        self.by_id.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn arm(&self, id: &str, fault: F) {
        self.lock().entry(id.to_string()).or_default().push_back(fault);
        self.any.store(true, Ordering::SeqCst);
    }

    fn count(&self, id: &str) -> usize {
        self.lock().get(id).map_or(0, VecDeque::len)
    }

    /// The next fault armed for `id`, used up, if `here` accepts it (a fault meant for another
    /// call stays armed for that one).
    fn take(&self, id: &str, here: impl Fn(F) -> bool) -> Option<F> {
        if !self.any.load(Ordering::SeqCst) {
            return None;
        }
        let mut armed = self.lock();
        let queue = armed.get_mut(id)?;
        let fault = queue.front().copied().filter(|f| here(*f)).and_then(|_| queue.pop_front());
        armed.retain(|_, faults| !faults.is_empty());
        if armed.is_empty() {
            self.any.store(false, Ordering::SeqCst);
        }
        fault
    }
}

static COMMIT_FAULTS: Armed<CommitFault> = Armed::new();
static RESTORE_FAULTS: Armed<RestoreFault> = Armed::new();

/// Arms `fault` for the next commit of the producer with `transactional_id`
/// ([`super::StreamsConfig::transactional_id`]). Faults armed for one id are used in order.
pub fn arm_commit_fault(transactional_id: &str, fault: CommitFault) {
    COMMIT_FAULTS.arm(transactional_id, fault);
}

/// Faults armed for `transactional_id` and not used yet: a test awaits zero to know its fault hit.
pub fn armed_commit_faults(transactional_id: &str) -> usize {
    COMMIT_FAULTS.count(transactional_id)
}

/// The fault the call at `site` of the producer `transactional_id` must suffer now, if any (and
/// it is used up). Faults strike in the order armed: one meant for another site waits for it.
pub(crate) fn take_commit_fault(transactional_id: &str, site: FaultSite) -> Option<CommitFault> {
    COMMIT_FAULTS.take(transactional_id, |fault| fault.site() == site)
}

/// How the restore consumer's next fetch fails, mid-restore. The error is the one librdkafka's
/// poll reports; the records the same poll had fetched are lost with it (the fetch position is
/// past them), so a resume that did not seek back to the restored position would skip them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreFault {
    /// The connection to the broker broke (`BrokerTransportFailure`), as when it restarts.
    Transport,
    /// Every broker is away (`AllBrokersDown`).
    AllBrokersDown,
    /// The partition's leader moved on (`FencedLeaderEpoch`).
    FencedLeaderEpoch,
    /// The changelog no longer holds the restore's position (`OffsetOutOfRange`): it was
    /// truncated beyond it.
    OffsetOutOfRange,
}

/// Arms `fault` for a restore fetch of the instance whose producer has `transactional_id`: it
/// strikes the first poll of the restore consumer that returns a record after this instance has
/// applied at least one changelog record, so always in the middle of a restore.
pub fn arm_restore_fault(transactional_id: &str, fault: RestoreFault) {
    RESTORE_FAULTS.arm(transactional_id, fault);
}

/// Restore faults armed for `transactional_id` and not used yet.
pub fn armed_restore_faults(transactional_id: &str) -> usize {
    RESTORE_FAULTS.count(transactional_id)
}

/// The fault the restore fetch of `transactional_id` must suffer now, if any (and it is used up).
pub(crate) fn take_restore_fault(transactional_id: &str) -> Option<RestoreFault> {
    RESTORE_FAULTS.take(transactional_id, |_| true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_used_once_in_order_and_only_by_their_producer() {
        let id = "faults-unit-test";
        let commit = FaultSite::Commit;
        assert_eq!(take_commit_fault(id, commit), None);
        arm_commit_fault(id, CommitFault::TimeoutAfterCommit);
        arm_commit_fault(id, CommitFault::Abortable);
        arm_commit_fault(id, CommitFault::AbortFails);
        assert_eq!(armed_commit_faults(id), 3);
        assert_eq!(take_commit_fault("another-producer", commit), None);
        assert_eq!(take_commit_fault(id, FaultSite::Abort), None, "not the abort's turn yet");
        assert_eq!(take_commit_fault(id, commit), Some(CommitFault::TimeoutAfterCommit));
        assert_eq!(take_commit_fault(id, commit), Some(CommitFault::Abortable));
        assert_eq!(take_commit_fault(id, commit), None, "the next one is the abort's");
        assert_eq!(take_commit_fault(id, FaultSite::Abort), Some(CommitFault::AbortFails));
        assert_eq!(armed_commit_faults(id), 0);
    }

    #[test]
    fn restore_faults_are_queued_apart_from_commit_faults() {
        let id = "restore-faults-unit-test";
        arm_restore_fault(id, RestoreFault::Transport);
        assert_eq!(take_commit_fault(id, FaultSite::Commit), None);
        assert_eq!(armed_restore_faults(id), 1);
        assert_eq!(take_restore_fault(id), Some(RestoreFault::Transport));
        assert_eq!(take_restore_fault(id), None);
    }
}

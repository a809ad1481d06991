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
//! A fault is armed for one `transactional.id` and used by that producer's next commit that
//! carries records or offsets. Nothing is armed in production: the check is one load of an
//! atomic flag per commit.

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
}

/// Whether any fault is armed at all: the fast path of every commit.
static ANY_ARMED: AtomicBool = AtomicBool::new(false);
/// Armed faults, by `transactional.id`, in the order they will be used.
static ARMED: Mutex<BTreeMap<String, VecDeque<CommitFault>>> = Mutex::new(BTreeMap::new());

fn armed() -> std::sync::MutexGuard<'static, BTreeMap<String, VecDeque<CommitFault>>> {
    // The map holds plain values: a test that panicked holding the lock left it usable.
    ARMED.lock().unwrap_or_else(|p| p.into_inner())
}

/// Arms `fault` for the next commit of the producer with `transactional_id`
/// ([`super::StreamsConfig::transactional_id`]). Faults armed for one id are used in order.
pub fn arm_commit_fault(transactional_id: &str, fault: CommitFault) {
    armed().entry(transactional_id.to_string()).or_default().push_back(fault);
    ANY_ARMED.store(true, Ordering::SeqCst);
}

/// Faults armed for `transactional_id` and not used yet: a test awaits zero to know its fault hit.
pub fn armed_commit_faults(transactional_id: &str) -> usize {
    armed().get(transactional_id).map_or(0, VecDeque::len)
}

/// The fault the commit of `transactional_id` must suffer now, if any (and it is used up).
pub(crate) fn take_commit_fault(transactional_id: &str) -> Option<CommitFault> {
    if !ANY_ARMED.load(Ordering::SeqCst) {
        return None;
    }
    let mut armed = armed();
    let fault = armed.get_mut(transactional_id).and_then(VecDeque::pop_front);
    armed.retain(|_, faults| !faults.is_empty());
    if armed.is_empty() {
        ANY_ARMED.store(false, Ordering::SeqCst);
    }
    fault
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_used_once_in_order_and_only_by_their_producer() {
        let id = "faults-unit-test";
        assert_eq!(take_commit_fault(id), None);
        arm_commit_fault(id, CommitFault::TimeoutAfterCommit);
        arm_commit_fault(id, CommitFault::Abortable);
        assert_eq!(armed_commit_faults(id), 2);
        assert_eq!(take_commit_fault("another-producer"), None);
        assert_eq!(take_commit_fault(id), Some(CommitFault::TimeoutAfterCommit));
        assert_eq!(take_commit_fault(id), Some(CommitFault::Abortable));
        assert_eq!(take_commit_fault(id), None);
        assert_eq!(armed_commit_faults(id), 0);
    }
}

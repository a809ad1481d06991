//! `BufferedStore` against a model: three `BTreeMap`s (committed, this interval's writes, the
//! current record's writes) driven by random sequences of puts, deletes, gets, scans, record
//! boundaries, commits (`apply`), aborts (`discard`) and reopens of the backend, on both the
//! in-memory backend and RocksDB. After every step the store must answer exactly as the model,
//! and the backend must hold exactly the model's committed state.
//!
//! A reopen is a crash of the process: what was applied survives (RocksDB's WAL), the buffers do
//! not. That is the property the runtime builds exactly-once on: the backend only ever holds
//! committed state, and reads see the layers in the order staged → dirty → committed.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use paystream_topology::store::buffered::BufferedStore;
use paystream_topology::store::memory::MemoryBackend;
use paystream_topology::store::rocks::RocksBackend;
use paystream_topology::store::{prefix_end, Entry, SharedBackend, UNLIMITED};
use paystream_topology::KeyValueStore;
use proptest::prelude::*;

/// Steps per generated sequence: long enough for several commit intervals and reopens.
const MAX_STEPS: usize = 60;
/// Cases per backend. RocksDB opens a database per case (and per reopen), so it gets fewer.
const MEMORY_CASES: u32 = 512;
/// Cases run against RocksDB.
const ROCKS_CASES: u32 = 64;

type Layer = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

#[derive(Debug, Clone)]
enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    Get(Vec<u8>),
    Range(Vec<u8>, Vec<u8>, usize),
    RangeFrom(Vec<u8>, usize),
    Prefix(Vec<u8>, usize),
    /// The record was processed: its writes join the interval.
    KeepRecord,
    /// The record failed: its writes go.
    DropRecord,
    /// The transaction committed: the interval reaches the backend.
    Apply,
    /// The transaction aborted: both layers go.
    Discard,
    /// The process crashed and started again on the same backend.
    Reopen,
}

/// Keys from a tiny alphabet, so that puts, deletes and scans collide often; 0xff bytes make
/// `prefix_end` work at its edge.
fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(vec![0u8, 1, 2, 0xff]), 0..3)
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..3)
}

fn limit() -> impl Strategy<Value = usize> {
    prop_oneof![Just(UNLIMITED), 0usize..4]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (key(), value()).prop_map(|(k, v)| Op::Put(k, v)),
        3 => key().prop_map(Op::Delete),
        3 => key().prop_map(Op::Get),
        2 => (key(), key(), limit()).prop_map(|(f, t, l)| Op::Range(f, t, l)),
        1 => (key(), limit()).prop_map(|(f, l)| Op::RangeFrom(f, l)),
        1 => (key(), limit()).prop_map(|(p, l)| Op::Prefix(p, l)),
        4 => Just(Op::KeepRecord),
        1 => Just(Op::DropRecord),
        2 => Just(Op::Apply),
        1 => Just(Op::Discard),
        1 => Just(Op::Reopen),
    ]
}

/// What the store should hold.
#[derive(Default)]
struct Model {
    committed: BTreeMap<Vec<u8>, Vec<u8>>,
    dirty: Layer,
    staged: Layer,
}

impl Model {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        match self.staged.get(key).or_else(|| self.dirty.get(key)) {
            Some(pending) => pending.clone(),
            None => self.committed.get(key).cloned(),
        }
    }

    /// The merged view, in key order.
    fn view(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let mut view = self.committed.clone();
        for (k, v) in self.dirty.iter().chain(&self.staged) {
            match v {
                Some(v) => view.insert(k.clone(), v.clone()),
                None => view.remove(k),
            };
        }
        view
    }

    fn scan(&self, from: &[u8], to: Option<&[u8]>, limit: usize) -> Vec<Entry> {
        if to.is_some_and(|to| to <= from) {
            return Vec::new();
        }
        let upper = to.map_or(Bound::Unbounded, |t| Bound::Excluded(t.to_vec()));
        self.view()
            .range((Bound::Included(from.to_vec()), upper))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn keep_record(&mut self) {
        let staged = std::mem::take(&mut self.staged);
        self.dirty.extend(staged);
    }

    fn apply(&mut self) -> usize {
        let dirty = std::mem::take(&mut self.dirty);
        let count = dirty.len();
        for (k, v) in dirty {
            match v {
                Some(v) => self.committed.insert(k, v),
                None => self.committed.remove(&k),
            };
        }
        count
    }

    fn discard(&mut self) {
        self.staged.clear();
        self.dirty.clear();
    }
}

/// Opens the backend under test, again after a reopen.
trait Backends {
    fn open(&mut self) -> SharedBackend;
}

/// A memory backend lives as long as the test: a reopen keeps the same map (a restart with the
/// state kept), which is what the runtime's in-memory stores get from their changelog.
struct Memory(Arc<MemoryBackend>);

impl Backends for Memory {
    fn open(&mut self) -> SharedBackend {
        self.0.clone()
    }
}

/// A RocksDB database in a directory of its own; a reopen closes and opens it.
struct Rocks(tempfile::TempDir);

impl Backends for Rocks {
    fn open(&mut self) -> SharedBackend {
        Arc::new(RocksBackend::open("s", &self.0.path().join("s")).expect("opening RocksDB"))
    }
}

fn assert_backend_holds(backend: &SharedBackend, model: &Model) -> Result<(), TestCaseError> {
    let held: BTreeMap<Vec<u8>, Vec<u8>> =
        backend.range(b"", None, UNLIMITED).expect("backend scan").into_iter().collect();
    prop_assert_eq!(&held, &model.committed, "the backend holds committed state only");
    Ok(())
}

fn run(ops: &[Op], backends: &mut dyn Backends) -> Result<(), TestCaseError> {
    let mut model = Model::default();
    let mut store = BufferedStore::new("s", backends.open());
    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Put(k, v) => {
                store.put(k, v).expect("put");
                model.staged.insert(k.clone(), Some(v.clone()));
            }
            Op::Delete(k) => {
                store.delete(k).expect("delete");
                model.staged.insert(k.clone(), None);
            }
            Op::Get(k) => {
                prop_assert_eq!(store.get(k).expect("get"), model.get(k), "step {}: get {:?}", step, k)
            }
            Op::Range(f, t, l) => {
                prop_assert_eq!(
                    store.range(f, t, *l).expect("range"),
                    model.scan(f, Some(t), *l),
                    "step {}",
                    step
                )
            }
            Op::RangeFrom(f, l) => {
                prop_assert_eq!(
                    store.range_from(f, *l).expect("range_from"),
                    model.scan(f, None, *l),
                    "step {}",
                    step
                )
            }
            Op::Prefix(p, l) => {
                let end = prefix_end(p);
                prop_assert_eq!(
                    store.prefix(p, *l).expect("prefix"),
                    model.scan(p, end.as_deref(), *l),
                    "step {}",
                    step
                )
            }
            Op::KeepRecord => {
                store.keep_record();
                model.keep_record();
            }
            Op::DropRecord => {
                store.drop_record();
                model.staged.clear();
            }
            Op::Apply => {
                let applied = store.apply().expect("apply");
                prop_assert_eq!(applied, model.apply(), "step {}: keys applied", step);
            }
            Op::Discard => {
                store.discard();
                model.discard();
            }
            Op::Reopen => {
                drop(store);
                model.discard();
                store = BufferedStore::new("s", backends.open());
            }
        }
        prop_assert_eq!(store.is_dirty(), !model.dirty.is_empty(), "step {}: dirty", step);
        let pending: Layer = store.pending().map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec))).collect();
        prop_assert_eq!(
            &pending,
            &model.dirty,
            "step {}: the changelog records are the interval's last writes",
            step
        );
        assert_backend_holds(store.backend(), &model)?;
    }
    // The whole view, once more, through the unbounded scan.
    prop_assert_eq!(
        store.range_from(b"", UNLIMITED).expect("scan"),
        model.view().into_iter().collect::<Vec<_>>()
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(MEMORY_CASES))]
    #[test]
    fn buffered_store_over_memory_matches_the_model(ops in prop::collection::vec(op(), 0..MAX_STEPS)) {
        run(&ops, &mut Memory(Arc::new(MemoryBackend::new())))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(ROCKS_CASES))]
    #[test]
    fn buffered_store_over_rocksdb_matches_the_model_across_reopens(ops in prop::collection::vec(op(), 0..MAX_STEPS)) {
        let dir = tempfile::tempdir().expect("temp dir");
        run(&ops, &mut Rocks(dir))?;
    }
}

/// A sanity check of the harness itself: a store whose writes reached the backend before the
/// commit would be caught (the model says the backend holds committed state only).
#[test]
fn the_model_catches_a_write_that_reaches_the_backend_early() {
    let backend: SharedBackend = Arc::new(MemoryBackend::new());
    let model = Model::default();
    backend.write_batch(&mut std::iter::once((&b"k"[..], Some(&b"v"[..])))).unwrap();
    assert!(assert_backend_holds(&backend, &model).is_err());
}

//! Interactive queries: read-only access to one store across the tasks this instance owns.
//!
//! Reads see committed state only (the write buffer of the open transaction is invisible), so a
//! query never returns a value that an abort could take back.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::partitioner::partition_for_key;
use crate::store::{Entry, SharedBackend, StoreError};

/// Per store name, the backends of the tasks this instance owns, by partition.
pub(crate) type QueryRegistry = Arc<RwLock<BTreeMap<String, BTreeMap<i32, SharedBackend>>>>;

/// Where a key lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyQueryMetadata {
    /// The partition (and so the task) that owns the key, by Kafka's default partitioner.
    pub partition: i32,
    /// Whether this instance owns that task right now.
    pub local: bool,
}

/// A read-only handle to store `name` on this instance.
#[derive(Clone)]
pub struct StoreQuery {
    /// The store.
    name: String,
    /// Partitions of the source topics, to place keys.
    partitions: i32,
    /// Live task backends.
    registry: QueryRegistry,
}

impl StoreQuery {
    pub(crate) fn new(name: &str, partitions: i32, registry: QueryRegistry) -> Self {
        Self { name: name.to_string(), partitions, registry }
    }

    fn backends(&self) -> BTreeMap<i32, SharedBackend> {
        let registry = self.registry.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        registry.get(&self.name).cloned().unwrap_or_default()
    }

    /// Which partition owns `key` (the key's serialized bytes, as the sources read them) and
    /// whether it is local. A remote owner is the group member assigned that partition
    /// (`kafka-consumer-groups --describe --group <application.id>` names it).
    pub fn metadata_for_key(&self, key: &[u8]) -> KeyQueryMetadata {
        let partition = partition_for_key(key, self.partitions);
        KeyQueryMetadata { partition, local: self.backends().contains_key(&partition) }
    }

    /// The committed value of `key`, if this instance owns its partition; `Ok(None)` also when it
    /// does not (check [`StoreQuery::metadata_for_key`]).
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let partition = partition_for_key(key, self.partitions);
        match self.backends().get(&partition) {
            Some(backend) => backend.get(key),
            None => Ok(None),
        }
    }

    /// Committed entries with `from <= key < to` across local tasks, in key order.
    pub fn range(&self, from: &[u8], to: Option<&[u8]>, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let mut merged = BTreeMap::new();
        for backend in self.backends().values() {
            merged.extend(backend.range(from, to, limit)?);
        }
        Ok(merged.into_iter().take(limit).collect())
    }

    /// Approximate number of keys across local tasks.
    pub fn approximate_len(&self) -> Result<u64, StoreError> {
        self.backends().values().map(|b| b.approximate_len()).sum()
    }

    /// Partitions of this store held locally.
    pub fn local_partitions(&self) -> Vec<i32> {
        self.backends().keys().copied().collect()
    }
}

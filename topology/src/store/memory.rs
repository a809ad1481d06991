//! An in-memory backend: the test driver's store, and a reference for the RocksDB one.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::RwLock;

use super::{Entry, ReadOnlyKeyValueStore, StoreBackend, StoreError};

/// Committed state in a `BTreeMap`, behind a lock so interactive queries can read it.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    /// Key-ordered entries.
    entries: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemoryBackend {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        // A poisoned lock means a writer panicked mid-batch; the map itself is still a valid
        // map, and the test that panicked has already failed.
        self.entries.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ReadOnlyKeyValueStore for MemoryBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.read().get(key).cloned())
    }

    fn range(&self, from: &[u8], to: Option<&[u8]>, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let upper = match to {
            Some(to) => Bound::Excluded(to.to_vec()),
            None => Bound::Unbounded,
        };
        if to.is_some_and(|to| to <= from) {
            return Ok(Vec::new());
        }
        Ok(self
            .read()
            .range((Bound::Included(from.to_vec()), upper))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn approximate_len(&self) -> Result<u64, StoreError> {
        Ok(self.read().len() as u64)
    }
}

impl StoreBackend for MemoryBackend {
    fn write_batch(&self, batch: &mut dyn Iterator<Item = (&[u8], Option<&[u8]>)>) -> Result<(), StoreError> {
        let mut entries = self.entries.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        for (key, value) in batch {
            match value {
                Some(value) => entries.insert(key.to_vec(), value.to_vec()),
                None => entries.remove(key),
            };
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

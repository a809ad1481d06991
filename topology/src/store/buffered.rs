//! A store as a task sees it: two layers of uncommitted writes over committed state.
//!
//! - `staged`: writes of the record being processed. Dropped if processing it fails, so a
//!   poison record leaves nothing half-applied.
//! - `dirty`: writes of this commit interval. They become changelog records in the
//!   transaction, reach the backend after it commits, and vanish if it aborts.
//!
//! Reads look through `staged`, then `dirty`, then the backend.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::{Entry, KeyValueStore, SharedBackend, StoreError};

/// `Some(value)` is a put, `None` a delete.
type Layer = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// One store of one task.
pub struct BufferedStore {
    /// Store name.
    name: String,
    /// Committed state.
    backend: SharedBackend,
    /// The current record's writes.
    staged: Layer,
    /// The commit interval's writes.
    dirty: Layer,
}

impl BufferedStore {
    /// A store with no pending writes over `backend`.
    pub fn new(name: &str, backend: SharedBackend) -> Self {
        Self { name: name.to_string(), backend, staged: Layer::new(), dirty: Layer::new() }
    }

    /// Committed state, shared with interactive queries.
    pub fn backend(&self) -> &SharedBackend {
        &self.backend
    }

    /// The current record was processed: keep its writes for the commit.
    pub fn keep_record(&mut self) {
        let staged = std::mem::take(&mut self.staged);
        self.dirty.extend(staged);
    }

    /// The current record failed: forget its writes.
    pub fn drop_record(&mut self) {
        self.staged.clear();
    }

    /// Whether this interval has writes to log.
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// The interval's writes, last value per key, in key order: the changelog records.
    pub fn pending(&self) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
        self.dirty.iter().map(|(k, v)| (k.as_slice(), v.as_deref()))
    }

    /// The transaction committed: write the interval to the backend.
    pub fn apply(&mut self) -> Result<usize, StoreError> {
        let count = self.dirty.len();
        if count > 0 {
            self.backend.write_batch(&mut self.dirty.iter().map(|(k, v)| (k.as_slice(), v.as_deref())))?;
            self.dirty.clear();
        }
        Ok(count)
    }

    /// The transaction aborted: forget everything not committed.
    pub fn discard(&mut self) {
        self.staged.clear();
        self.dirty.clear();
    }

    fn pending_value(&self, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        self.staged.get(key).or_else(|| self.dirty.get(key))
    }

    /// Merges the backend's entries in `[from, to)` with the two layers.
    fn merged(&self, from: &[u8], to: Option<&[u8]>, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let upper = match to {
            Some(to) if to <= from => return Ok(Vec::new()),
            Some(to) => Bound::Excluded(to.to_vec()),
            None => Bound::Unbounded,
        };
        let bounds = (Bound::Included(from.to_vec()), upper);
        let mut overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        for (k, v) in self.dirty.range(bounds.clone()).chain(self.staged.range(bounds)) {
            overlay.insert(k.clone(), v.clone());
        }
        // Each overlay key can hide at most one backend entry, so this many backend entries are
        // enough to fill `limit` after the merge.
        let fetch = limit.saturating_add(overlay.len());
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> =
            self.backend.range(from, to, fetch)?.into_iter().collect();
        for (k, v) in overlay {
            match v {
                Some(v) => merged.insert(k, v),
                None => merged.remove(&k),
            };
        }
        Ok(merged.into_iter().take(limit).collect())
    }
}

impl KeyValueStore for BufferedStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.pending_value(key) {
            Some(value) => Ok(value.clone()),
            None => self.backend.get(key),
        }
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.staged.insert(key.to_vec(), Some(value.to_vec()));
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<(), StoreError> {
        self.staged.insert(key.to_vec(), None);
        Ok(())
    }

    fn range(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError> {
        self.merged(from, Some(to), limit)
    }

    fn range_from(&self, from: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError> {
        self.merged(from, None, limit)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::memory::MemoryBackend;
    use crate::store::{ReadOnlyKeyValueStore, UNLIMITED};

    fn store() -> (BufferedStore, Arc<MemoryBackend>) {
        let backend = Arc::new(MemoryBackend::new());
        (BufferedStore::new("s", backend.clone()), backend)
    }

    #[test]
    fn writes_reach_the_backend_only_on_apply() {
        let (mut s, backend) = store();
        s.put(b"a", b"1").unwrap();
        s.keep_record();
        assert_eq!(s.get(b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(backend.get(b"a").unwrap(), None);
        assert_eq!(s.apply().unwrap(), 1);
        assert_eq!(backend.get(b"a").unwrap(), Some(b"1".to_vec()));
    }

    #[test]
    fn a_failed_record_leaves_nothing_and_an_abort_drops_the_interval() {
        let (mut s, backend) = store();
        s.put(b"a", b"1").unwrap();
        s.keep_record();
        s.put(b"b", b"2").unwrap();
        s.drop_record();
        assert_eq!(s.get(b"b").unwrap(), None);
        s.discard();
        assert_eq!(s.get(b"a").unwrap(), None);
        assert_eq!(s.apply().unwrap(), 0);
        assert_eq!(backend.approximate_len().unwrap(), 0);
    }

    #[test]
    fn scans_merge_layers_over_committed_state() {
        let (mut s, _backend) = store();
        for k in [b"a", b"b", b"c", b"d"] {
            s.put(k, b"old").unwrap();
        }
        s.keep_record();
        s.apply().unwrap();
        s.delete(b"b").unwrap();
        s.put(b"bb", b"new").unwrap();
        s.keep_record();
        s.put(b"c", b"staged").unwrap();
        let keys: Vec<_> = s.range_from(b"", UNLIMITED).unwrap();
        assert_eq!(
            keys,
            vec![
                (b"a".to_vec(), b"old".to_vec()),
                (b"bb".to_vec(), b"new".to_vec()),
                (b"c".to_vec(), b"staged".to_vec()),
                (b"d".to_vec(), b"old".to_vec()),
            ]
        );
        assert_eq!(s.range(b"a", b"c", 1).unwrap(), vec![(b"a".to_vec(), b"old".to_vec())]);
        assert_eq!(s.prefix(b"b", UNLIMITED).unwrap(), vec![(b"bb".to_vec(), b"new".to_vec())]);
        assert_eq!(s.range(b"b", b"d", 2).unwrap().len(), 2, "a hidden backend key does not shrink the page");
    }
}

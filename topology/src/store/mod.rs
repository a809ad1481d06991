//! State stores: what processors read and write, and what keeps it.
//!
//! Processors see a [`KeyValueStore`]. Behind it the runtime keeps a [`buffered::BufferedStore`]:
//! this commit interval's writes in memory, over a [`StoreBackend`] (RocksDB in production,
//! memory in the test driver) that only ever holds committed state. The buffer becomes
//! changelog records inside the transaction and reaches the backend after the commit; an
//! abort simply drops it. That ordering is what keeps a store from running ahead of its
//! changelog after a crash (KAFKA-16017 and friends).

pub mod buffered;
pub mod memory;
pub mod rocks;

use std::sync::Arc;

/// No limit on the number of entries a scan returns.
pub const UNLIMITED: usize = usize::MAX;

/// A key and its value, as stores return them from scans.
pub type Entry = (Vec<u8>, Vec<u8>);

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// RocksDB refused an operation (I/O, corruption, a lock held by another process).
    #[error("store {store}: rocksdb: {source}")]
    Rocks {
        /// The store.
        store: String,
        /// RocksDB's error.
        #[source]
        source: rocksdb::Error,
    },
    /// A processor asked for a store that is not attached to it in the topology.
    #[error("store {store} is not attached to processor {processor}")]
    NotAttached {
        /// The store asked for.
        store: String,
        /// The processor that asked.
        processor: String,
    },
    /// The store's files or checkpoint could not be read or written.
    #[error("store {store}: {context}: {source}")]
    Io {
        /// The store.
        store: String,
        /// What was being done.
        context: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// The key-value store API processors use, after Kafka Streams' `KeyValueStore<Bytes, byte[]>`.
///
/// Keys and values are bytes; processors choose their own encoding. Scans return entries in
/// key order (bytewise), at most `limit` of them.
pub trait KeyValueStore {
    /// The store's name in the topology.
    fn name(&self) -> &str;
    /// The value of `key`, if any.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Sets `key` to `value`.
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
    /// Removes `key` (a tombstone in the changelog).
    fn delete(&mut self, key: &[u8]) -> Result<(), StoreError>;
    /// Entries with `from <= key < to`, in key order.
    fn range(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError>;
    /// Entries whose key starts with `prefix`, in key order.
    fn prefix(&self, prefix: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError> {
        match prefix_end(prefix) {
            Some(end) => self.range(prefix, &end, limit),
            None => self.range_from(prefix, limit),
        }
    }
    /// Entries with `from <= key`, in key order.
    fn range_from(&self, from: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError>;
}

/// Read-only access to committed state, shared with interactive queries.
pub trait ReadOnlyKeyValueStore: Send + Sync {
    /// The value of `key` in committed state.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Entries with `from <= key < to` (`to = None`: to the end), in key order.
    fn range(&self, from: &[u8], to: Option<&[u8]>, limit: usize) -> Result<Vec<Entry>, StoreError>;
    /// An estimate of the number of keys (exact for the memory store).
    fn approximate_len(&self) -> Result<u64, StoreError>;
}

/// Where committed state lives. Writes come only from the runtime, in batches, after commits
/// and during restoration.
pub trait StoreBackend: ReadOnlyKeyValueStore {
    /// Applies `batch` atomically: `Some(value)` puts, `None` deletes.
    fn write_batch(&self, batch: &mut dyn Iterator<Item = (&[u8], Option<&[u8]>)>) -> Result<(), StoreError>;
    /// Makes everything written so far durable on disk (before a checkpoint names it).
    fn sync(&self) -> Result<(), StoreError>;
    /// Applies a batch read from the changelog. A backend may skip its own write-ahead log
    /// here: the changelog is the log, and [`StoreBackend::finish_restore`] makes it durable.
    fn restore_batch(
        &self,
        batch: &mut dyn Iterator<Item = (&[u8], Option<&[u8]>)>,
    ) -> Result<(), StoreError> {
        self.write_batch(batch)
    }
    /// Restoration is over: make what `restore_batch` wrote durable.
    fn finish_restore(&self) -> Result<(), StoreError> {
        self.sync()
    }
}

/// A backend shared between its task and interactive queries.
pub type SharedBackend = Arc<dyn StoreBackend>;

/// The smallest key greater than every key starting with `prefix`, or `None` if there is none
/// (the prefix is empty or all 0xff).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_increments_the_last_byte_that_can_be() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(b""), None);
    }
}

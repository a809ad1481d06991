//! The RocksDB backend: one database per task and store, under
//! `<state.dir>/<application.id>/<task>/<store>`.

use std::path::{Path, PathBuf};

use rocksdb::{Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};

use super::{Entry, ReadOnlyKeyValueStore, StoreBackend, StoreError};

/// A RocksDB database holding one store's committed state for one task.
pub struct RocksBackend {
    /// Store name, for errors.
    name: String,
    /// Where the database lives; wiped when its checkpoint is unusable.
    path: PathBuf,
    /// The database. `DB` is `Send + Sync`: interactive queries read it from other threads.
    db: DB,
}

impl std::fmt::Debug for RocksBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksBackend").field("name", &self.name).field("path", &self.path).finish()
    }
}

impl RocksBackend {
    /// Opens (or creates) the database at `path`.
    pub fn open(name: &str, path: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(path).map_err(|source| StoreError::Io {
            store: name.to_string(),
            context: "creating the store directory",
            source,
        })?;
        let db = DB::open(&options(), path).map_err(|source| rocks(name, source))?;
        Ok(Self { name: name.to_string(), path: path.to_path_buf(), db })
    }

    /// Deletes the database at `path`: its state cannot be trusted (no usable checkpoint).
    pub fn destroy(name: &str, path: &Path) -> Result<(), StoreError> {
        if !path.exists() {
            return Ok(());
        }
        DB::destroy(&options(), path).map_err(|source| rocks(name, source))?;
        std::fs::remove_dir_all(path).or_else(ignore_missing).map_err(|source| StoreError::Io {
            store: name.to_string(),
            context: "removing the store directory",
            source,
        })
    }
}

fn ignore_missing(error: std::io::Error) -> std::io::Result<()> {
    if error.kind() == std::io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(error)
    }
}

/// Options for a store: created on demand, LZ4 for the bulk levels, a modest write buffer
/// (many stores can live in one process; Kafka Streams defaults to 16 MiB per store too).
fn options() -> Options {
    let mut options = Options::default();
    options.create_if_missing(true);
    options.set_compression_type(rocksdb::DBCompressionType::Lz4);
    // Kafka Streams' memtables: 16 MiB, up to three, so a bulk restore flushes without stalling
    // writes (two 8 MiB memtables halved restore speed here).
    options.set_write_buffer_size(16 * 1024 * 1024);
    options.set_max_write_buffer_number(3);
    options.set_keep_log_file_num(2);
    // A bloom filter per table file, as Kafka Streams configures: most lookups of a join or a
    // saga are for keys that are not there yet, and the filter answers those without a read.
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_bloom_filter(10.0, false);
    table.set_block_size(4 * 1024);
    options.set_block_based_table_factory(&table);
    options
}

fn rocks(name: &str, source: rocksdb::Error) -> StoreError {
    StoreError::Rocks { store: name.to_string(), source }
}

impl ReadOnlyKeyValueStore for RocksBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db.get(key).map_err(|source| rocks(&self.name, source))
    }

    fn range(&self, from: &[u8], to: Option<&[u8]>, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let mut entries = Vec::new();
        for item in self.db.iterator(IteratorMode::From(from, Direction::Forward)) {
            if entries.len() >= limit {
                break;
            }
            let (key, value) = item.map_err(|source| rocks(&self.name, source))?;
            if to.is_some_and(|to| key.as_ref() >= to) {
                break;
            }
            entries.push((key.into_vec(), value.into_vec()));
        }
        Ok(entries)
    }

    fn approximate_len(&self) -> Result<u64, StoreError> {
        let keys = self
            .db
            .property_int_value("rocksdb.estimate-num-keys")
            .map_err(|source| rocks(&self.name, source))?;
        Ok(keys.unwrap_or(0))
    }
}

/// One RocksDB write batch of puts (`Some`) and deletes (`None`).
fn to_write_batch(batch: &mut dyn Iterator<Item = (&[u8], Option<&[u8]>)>) -> WriteBatch {
    let mut writes = WriteBatch::default();
    for (key, value) in batch {
        match value {
            Some(value) => writes.put(key, value),
            None => writes.delete(key),
        }
    }
    writes
}

impl StoreBackend for RocksBackend {
    fn write_batch(&self, batch: &mut dyn Iterator<Item = (&[u8], Option<&[u8]>)>) -> Result<(), StoreError> {
        let writes = to_write_batch(batch);
        // The WAL stays on (a process crash keeps it in the page cache); `sync` below makes it
        // durable before a checkpoint claims the data is there.
        let mut options = WriteOptions::default();
        options.set_sync(false);
        self.db.write_opt(writes, &options).map_err(|source| rocks(&self.name, source))
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.db.flush_wal(true).map_err(|source| rocks(&self.name, source))
    }

    fn restore_batch(
        &self,
        batch: &mut dyn Iterator<Item = (&[u8], Option<&[u8]>)>,
    ) -> Result<(), StoreError> {
        let writes = to_write_batch(batch);
        // No WAL while restoring (Kafka Streams does the same): a crash mid-restore leaves no
        // checkpoint naming this data, so the next start restores again.
        let mut options = WriteOptions::default();
        options.disable_wal(true);
        self.db.write_opt(writes, &options).map_err(|source| rocks(&self.name, source))
    }

    fn finish_restore(&self) -> Result<(), StoreError> {
        // Unlogged writes are only in memtables: flush them to table files before a checkpoint.
        self.db.flush().map_err(|source| rocks(&self.name, source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_ranges_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        {
            let store = RocksBackend::open("s", &path).unwrap();
            let mut batch =
                vec![(&b"a"[..], Some(&b"1"[..])), (b"b", Some(b"2")), (b"c", Some(b"3")), (b"b", None)]
                    .into_iter();
            store.write_batch(&mut batch).unwrap();
            store.sync().unwrap();
            assert_eq!(store.get(b"a").unwrap(), Some(b"1".to_vec()));
            assert_eq!(store.get(b"b").unwrap(), None);
            let all = store.range(b"", None, usize::MAX).unwrap();
            assert_eq!(all, vec![(b"a".to_vec(), b"1".to_vec()), (b"c".to_vec(), b"3".to_vec())]);
            assert_eq!(store.range(b"a", Some(b"c"), 10).unwrap().len(), 1);
        }
        let store = RocksBackend::open("s", &path).unwrap();
        assert_eq!(store.get(b"c").unwrap(), Some(b"3".to_vec()), "survives reopen");
        drop(store);
        RocksBackend::destroy("s", &path).unwrap();
        assert!(!path.exists());
    }
}

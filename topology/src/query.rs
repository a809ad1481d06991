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

/// The group member that owns a partition, from the group coordinator's view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyOwner {
    /// The partition (task) that owns the key.
    pub partition: i32,
    /// The owning instance's id (its consumer's `client.id` is `<application_id>-<instance>-consumer`),
    /// `None` while no member holds the partition (a rebalance is in progress).
    pub instance_id: Option<String>,
    /// The owning member's host as the broker saw it.
    pub host: Option<String>,
}

/// Why a consumer-protocol assignment could not be read.
#[derive(Debug, thiserror::Error)]
#[error("malformed consumer-protocol assignment at byte {0}")]
pub struct MalformedAssignment(pub usize);

/// Topic → partitions of one member, decoded from the classic consumer protocol's
/// `MemberAssignment` (version int16, [topic string, [partition int32]], user data bytes).
pub fn decode_assignment(bytes: &[u8]) -> Result<BTreeMap<String, Vec<i32>>, MalformedAssignment> {
    struct Reader<'a>(&'a [u8], usize);
    impl Reader<'_> {
        fn take(&mut self, n: usize) -> Result<&[u8], MalformedAssignment> {
            let end = self
                .1
                .checked_add(n)
                .filter(|end| *end <= self.0.len())
                .ok_or(MalformedAssignment(self.1))?;
            let slice = &self.0[self.1..end];
            self.1 = end;
            Ok(slice)
        }
        fn i16(&mut self) -> Result<i16, MalformedAssignment> {
            Ok(i16::from_be_bytes(self.take(2)?.try_into().map_err(|_| MalformedAssignment(self.1))?))
        }
        fn i32(&mut self) -> Result<i32, MalformedAssignment> {
            Ok(i32::from_be_bytes(self.take(4)?.try_into().map_err(|_| MalformedAssignment(self.1))?))
        }
    }
    let mut assignment = BTreeMap::new();
    if bytes.is_empty() {
        return Ok(assignment);
    }
    let mut r = Reader(bytes, 0);
    let _version = r.i16()?;
    let topics = r.i32()?;
    for _ in 0..topics.max(0) {
        let len = r.i16()?;
        let name = String::from_utf8_lossy(r.take(len.max(0) as usize)?).into_owned();
        let count = r.i32()?;
        let mut partitions = Vec::new();
        for _ in 0..count.max(0) {
            partitions.push(r.i32()?);
        }
        assignment.insert(name, partitions);
    }
    Ok(assignment)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_consumer_protocol_assignment() {
        let mut bytes = vec![0, 1, 0, 0, 0, 1, 0, 3];
        bytes.extend(b"abc");
        bytes.extend([0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3]);
        bytes.extend([0, 0, 0, 0]);
        let decoded = decode_assignment(&bytes).unwrap();
        assert_eq!(decoded, BTreeMap::from([("abc".to_string(), vec![0, 3])]));
        assert!(decode_assignment(&bytes[..9]).is_err());
        assert!(decode_assignment(&[]).unwrap().is_empty());
    }
}

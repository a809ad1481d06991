//! The state directory: where an instance keeps what it knows locally, and the rules for trusting
//! it. Kafka Streams' `StateDirectory`.
//!
//! Layout: `<state_dir>/<application_id>/instance-id` (this instance's stable identity, part of
//! its `transactional.id`) and one directory per task, `0_<partition>/`, holding one RocksDB per
//! persistent store and the task's `.checkpoint`.
//!
//! The checkpoint file of a task: for each logged store, the changelog offset up to which the
//! local RocksDB is known to hold the committed state. Restoration starts there.
//!
//! It is written after the store's WAL is synced and replaced atomically (write, fsync, rename),
//! so it never claims more than the disk holds. Missing or unreadable: restore from the start.
//! A store whose checkpoint cannot be used is wiped before it is rebuilt, because its files may
//! hold anything (uncommitted-then-crashed writes, another changelog's state).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::StreamsError;
use crate::store::rocks::RocksBackend;
use crate::store::StoreError;

/// File holding the instance id inside the application directory.
pub const INSTANCE_ID_FILE: &str = "instance-id";

/// The directory of the task of `partition` under the application directory `app_dir`.
pub fn task_dir(app_dir: &Path, partition: i32) -> PathBuf {
    app_dir.join(format!("0_{partition}"))
}

/// Creates the application directory if needed.
pub fn create_app_dir(app_dir: &Path) -> Result<(), StreamsError> {
    std::fs::create_dir_all(app_dir)
        .map_err(|source| StreamsError::StateDir { path: app_dir.to_path_buf(), source })
}

/// The instance id kept in `<app_dir>/instance-id`, created on first start.
pub fn instance_id(app_dir: &Path) -> Result<String, StreamsError> {
    let path = app_dir.join(INSTANCE_ID_FILE);
    let io = |source| StreamsError::StateDir { path: path.clone(), source };
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_string()),
        _ => {
            let id = uuid::Uuid::new_v4().to_string();
            std::fs::write(&path, &id).map_err(io)?;
            Ok(id)
        }
    }
}

/// Wipes the persistent store `name` at `path`: its local files cannot be trusted.
pub fn wipe_store(name: &str, path: &Path) -> Result<(), StoreError> {
    RocksBackend::destroy(name, path)
}

/// File name inside the task directory.
pub const CHECKPOINT_FILE: &str = ".checkpoint";

/// Store name → next changelog offset to restore from.
pub type Offsets = BTreeMap<String, i64>;

/// The checkpoint path of the task directory `task_dir`.
pub fn checkpoint_path(task_dir: &Path) -> PathBuf {
    task_dir.join(CHECKPOINT_FILE)
}

/// Reads the checkpoint; `None` if absent or unreadable (then the stores are rebuilt).
pub fn read_checkpoint(task_dir: &Path) -> Option<Offsets> {
    let text = std::fs::read_to_string(checkpoint_path(task_dir)).ok()?;
    match serde_json::from_str(&text) {
        Ok(offsets) => Some(offsets),
        Err(error) => {
            tracing::warn!(dir = %task_dir.display(), %error, "unreadable checkpoint; restoring from the changelog start");
            None
        }
    }
}

/// Replaces the checkpoint atomically.
pub fn write_checkpoint(task_dir: &Path, offsets: &Offsets) -> std::io::Result<()> {
    std::fs::create_dir_all(task_dir)?;
    let tmp = task_dir.join(format!("{CHECKPOINT_FILE}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(serde_json::to_string(offsets).map_err(std::io::Error::other)?.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, checkpoint_path(task_dir))
}

/// Removes the checkpoint: from now on the local state must not be trusted (it is about to
/// run ahead of it, or is being wiped).
pub fn remove_checkpoint(task_dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(checkpoint_path(task_dir)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_checkpoint(dir.path()), None);
        let offsets: Offsets = [("s".to_string(), 42)].into();
        write_checkpoint(dir.path(), &offsets).unwrap();
        assert_eq!(read_checkpoint(dir.path()), Some(offsets));
        std::fs::write(checkpoint_path(dir.path()), "{not json").unwrap();
        assert_eq!(read_checkpoint(dir.path()), None);
        remove_checkpoint(dir.path()).unwrap();
        remove_checkpoint(dir.path()).unwrap();
    }
}

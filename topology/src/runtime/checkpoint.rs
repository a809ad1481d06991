//! The checkpoint file of a task: for each logged store, the changelog offset up to which the
//! local RocksDB is known to hold the committed state. Restoration starts there.
//!
//! It is written after the store's WAL is synced and replaced atomically (write, fsync, rename),
//! so it never claims more than the disk holds. Missing or unreadable: restore from the start.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// File name inside the task directory.
pub const FILE_NAME: &str = ".checkpoint";

/// Store name → next changelog offset to restore from.
pub type Offsets = BTreeMap<String, i64>;

/// The checkpoint path of the task directory `task_dir`.
pub fn path(task_dir: &Path) -> PathBuf {
    task_dir.join(FILE_NAME)
}

/// Reads the checkpoint; `None` if absent or unreadable (then the stores are rebuilt).
pub fn read(task_dir: &Path) -> Option<Offsets> {
    let text = std::fs::read_to_string(path(task_dir)).ok()?;
    match serde_json::from_str(&text) {
        Ok(offsets) => Some(offsets),
        Err(error) => {
            tracing::warn!(dir = %task_dir.display(), %error, "unreadable checkpoint; restoring from the changelog start");
            None
        }
    }
}

/// Replaces the checkpoint atomically.
pub fn write(task_dir: &Path, offsets: &Offsets) -> std::io::Result<()> {
    std::fs::create_dir_all(task_dir)?;
    let tmp = task_dir.join(format!("{FILE_NAME}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(serde_json::to_string(offsets).map_err(std::io::Error::other)?.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path(task_dir))
}

/// Removes the checkpoint: from now on the local state must not be trusted (it is about to
/// run ahead of it, or is being wiped).
pub fn remove(task_dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path(task_dir)) {
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
        assert_eq!(read(dir.path()), None);
        let offsets: Offsets = [("s".to_string(), 42)].into();
        write(dir.path(), &offsets).unwrap();
        assert_eq!(read(dir.path()), Some(offsets));
        std::fs::write(path(dir.path()), "{not json").unwrap();
        assert_eq!(read(dir.path()), None);
        remove(dir.path()).unwrap();
        remove(dir.path()).unwrap();
    }
}

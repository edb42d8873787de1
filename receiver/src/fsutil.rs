//! Durable file writes. Every file the receiver keeps (cached audio, the
//! schedule, queued reports, the play ledger) is written the same way: into
//! a temporary file in the same directory, flushed with `fsync`, renamed over
//! the final name, and the directory entry flushed too. A power cut therefore
//! leaves either the old file or the new one, never a half-written one; at
//! worst a leftover `*.tmp` file, which [`remove_temp_files`] deletes at
//! startup.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Suffix of every temporary file the receiver creates.
pub const TEMP_SUFFIX: &str = ".tmp";

/// A new temporary file in `dir`, named `.{stem}.XXXXXX.tmp`, deleted when
/// dropped unless persisted.
pub fn temp_file_in(dir: &Path, stem: &str) -> io::Result<tempfile::NamedTempFile> {
    tempfile::Builder::new()
        .prefix(&format!(".{stem}."))
        .suffix(TEMP_SUFFIX)
        .tempfile_in(dir)
}

/// Flushes a file's data, renames it to `path` and flushes the directory
/// entry, so the rename survives a power cut.
pub fn persist(temp: tempfile::NamedTempFile, path: &Path) -> io::Result<()> {
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|e| e.error)?;
    sync_parent(path)
}

/// Writes `bytes` to `path` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = parent(path);
    let stem = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut temp = temp_file_in(&dir, &stem)?;
    temp.write_all(bytes)?;
    persist(temp, path)
}

/// Removes `path` (if present) and flushes the directory entry.
pub fn remove_durably(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_parent(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Flushes the directory holding `path`, making renames and removals in it durable.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    sync_dir(&parent(path))
}

/// Flushes a directory's entries (after files in it were renamed or removed).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Deletes leftover temporary files in `dir` (from a write a power cut or
/// kill interrupted) and returns how many there were.
pub fn remove_temp_files(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().ends_with(TEMP_SUFFIX) && entry.file_type()?.is_file() {
            tracing::warn!(file = %entry.path().display(), "removing half-written file left by an interrupted write");
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    if removed > 0 {
        sync_dir(dir)?;
    }
    Ok(removed)
}

/// Whether an I/O error means the disk (or the user's quota) is full.
pub fn is_disk_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn leftover_temp_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".x.abc.tmp"), b"half").unwrap();
        std::fs::write(dir.path().join("keep.json"), b"{}").unwrap();
        assert_eq!(remove_temp_files(dir.path()).unwrap(), 1);
        assert!(dir.path().join("keep.json").exists());
        assert!(!dir.path().join(".x.abc.tmp").exists());
    }

    #[test]
    fn disk_full_is_recognised() {
        assert!(is_disk_full(&io::Error::from(io::ErrorKind::StorageFull)));
        assert!(is_disk_full(&io::Error::from_raw_os_error(28))); // ENOSPC
        assert!(!is_disk_full(&io::Error::from(io::ErrorKind::NotFound)));
    }
}

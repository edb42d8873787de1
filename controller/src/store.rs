//! The audio store: programme files under `DIR/audio/<sha256>.opus`, named by
//! the SHA-256 of their bytes, so identical uploads share one file and a
//! receiver can verify what it downloads. Files arrive through `DIR/tmp`
//! (same filesystem) and are fsynced, then renamed into place, so a crash
//! never leaves a partial file under a content name. `DIR/tmp` is emptied at
//! startup: whatever is there belongs to an upload that died with the process.

use std::collections::HashSet;
use std::io::{Read, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tempfile::TempPath;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

/// A store operation failed (disk full, permissions, a vanished file).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0:?} is not a SHA-256 hex digest")]
    BadDigest(String),
    #[error("audio file {0} is missing from the store")]
    Missing(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A file now in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAudio {
    /// Hex SHA-256 of the bytes; also the file's name.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Whether an identical file was already stored (and reused).
    pub reused: bool,
}

/// Handle to the audio store. Cloning is cheap.
#[derive(Clone, Debug)]
pub struct AudioStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `DIR/audio`: the content-addressed files.
    audio: PathBuf,
    /// `DIR/tmp`: uploads and transcoder output before they are stored.
    tmp: PathBuf,
    /// Serialises "store a file, insert its row, or undo" against the
    /// removal of unreferenced files, so a concurrent failure never deletes
    /// a file another upload has just started to use.
    commit: tokio::sync::Mutex<()>,
}

impl AudioStore {
    /// Opens the store under `data_dir`, creating `audio/` and `tmp/` and
    /// removing anything left in `tmp/`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let audio = data_dir.join("audio");
        let tmp = data_dir.join("tmp");
        std::fs::create_dir_all(&audio).map_err(io_err(&audio))?;
        std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        let mut removed = 0usize;
        for entry in std::fs::read_dir(&tmp).map_err(io_err(&tmp))? {
            let path = entry.map_err(io_err(&tmp))?.path();
            let result = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match result {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove stale temporary file")
                }
            }
        }
        if removed > 0 {
            tracing::info!(removed, "removed stale temporary upload files");
        }
        Ok(AudioStore {
            inner: Arc::new(Inner {
                audio,
                tmp,
                commit: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// `DIR/tmp`, where uploads are written before they are stored.
    pub fn tmp_dir(&self) -> &Path {
        &self.inner.tmp
    }

    /// `DIR/audio`.
    pub fn audio_dir(&self) -> &Path {
        &self.inner.audio
    }

    /// A new empty temporary file under `DIR/tmp`, deleted when dropped.
    pub fn temp_file(&self, suffix: &str) -> Result<tempfile::NamedTempFile, StoreError> {
        tempfile::Builder::new()
            .prefix("upload-")
            .suffix(suffix)
            .tempfile_in(&self.inner.tmp)
            .map_err(io_err(&self.inner.tmp))
    }

    /// Where the file with this digest lives (whether or not it exists).
    pub fn path_for(&self, sha256: &str) -> Result<PathBuf, StoreError> {
        let ok = sha256.len() == 64
            && sha256
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
        if !ok {
            return Err(StoreError::BadDigest(sha256.to_string()));
        }
        Ok(self.inner.audio.join(format!("{sha256}.opus")))
    }

    /// Takes the lock that keeps [`AudioStore::put`] + row insert + undo atomic
    /// with respect to [`AudioStore::remove_unreferenced`].
    pub async fn commit_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.commit.lock().await
    }

    /// Moves a finished temporary file into the store under its SHA-256:
    /// hashes it, fsyncs it, renames it into place and fsyncs the directory.
    /// If an identical file is already stored, the temporary one is deleted
    /// and the stored one reused. Blocking; call from `spawn_blocking`.
    pub fn put_blocking(&self, temp: TempPath) -> Result<StoredAudio, StoreError> {
        let mut file = std::fs::File::open(&temp).map_err(io_err(&temp))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut bytes = 0u64;
        loop {
            let n = file.read(&mut buf).map_err(io_err(&temp))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            bytes += n as u64;
        }
        let sha256 = hex::encode(hasher.finalize());
        let target = self.path_for(&sha256)?;
        if target.exists() {
            // `temp` is dropped (deleted) on return.
            return Ok(StoredAudio {
                sha256,
                bytes,
                reused: true,
            });
        }
        file.sync_all().map_err(io_err(&temp))?;
        drop(file);
        temp.persist(&target).map_err(|e| StoreError::Io {
            path: target.clone(),
            source: e.error,
        })?;
        sync_dir(&self.inner.audio)?;
        tracing::info!(sha256, bytes, "stored programme audio");
        Ok(StoredAudio {
            sha256,
            bytes,
            reused: false,
        })
    }

    /// [`AudioStore::put_blocking`] on the blocking pool.
    pub async fn put(&self, temp: TempPath) -> Result<StoredAudio, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.put_blocking(temp))
            .await
            .map_err(|e| StoreError::Io {
                path: PathBuf::new(),
                source: std::io::Error::other(e.to_string()),
            })?
    }

    /// Deletes the stored file with this digest (used to undo a store whose
    /// row could not be inserted). Caller holds [`AudioStore::commit_lock`]
    /// and has checked that no row refers to it.
    pub async fn remove(&self, sha256: &str) -> Result<(), StoreError> {
        let path = self.path_for(sha256)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Deletes stored files whose digest is not in `referenced` (left by a
    /// crash between storing a file and inserting its row). Returns how many.
    pub async fn remove_unreferenced(
        &self,
        referenced: &HashSet<String>,
    ) -> Result<usize, StoreError> {
        let _guard = self.commit_lock().await;
        let dir = &self.inner.audio;
        let mut entries = tokio::fs::read_dir(dir).await.map_err(io_err(dir))?;
        let mut removed = 0;
        while let Some(entry) = entries.next_entry().await.map_err(io_err(dir))? {
            let name = entry.file_name();
            let Some(digest) = name.to_str().and_then(|n| n.strip_suffix(".opus")) else {
                continue;
            };
            if !referenced.contains(digest) {
                tokio::fs::remove_file(entry.path())
                    .await
                    .map_err(io_err(dir))?;
                tracing::info!(sha256 = digest, "removed unreferenced audio file");
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Opens a stored file and returns its length.
    pub async fn open_audio(&self, sha256: &str) -> Result<(tokio::fs::File, u64), StoreError> {
        let path = self.path_for(sha256)?;
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::Missing(sha256.to_string()));
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        let len = file.metadata().await.map_err(io_err(&path))?.len();
        Ok((file, len))
    }

    /// A stream of bytes `start..start+len` of an opened stored file, for
    /// answering HTTP Range requests without reading the file into memory.
    pub async fn range_stream(
        mut file: tokio::fs::File,
        start: u64,
        len: u64,
    ) -> std::io::Result<ReaderStream<tokio::io::Take<tokio::fs::File>>> {
        file.seek(SeekFrom::Start(start)).await?;
        Ok(ReaderStream::new(file.take(len)))
    }
}

/// Fsyncs a directory so a rename into it survives a power cut.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn put_names_files_by_digest_and_reuses_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let store = AudioStore::open(dir.path()).unwrap();
        let mut a = store.temp_file(".opus").unwrap();
        a.write_all(b"hello").unwrap();
        let stored = store.put_blocking(a.into_temp_path()).unwrap();
        assert_eq!(
            stored.sha256,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert!(!stored.reused);
        assert_eq!(
            std::fs::read(store.path_for(&stored.sha256).unwrap()).unwrap(),
            b"hello"
        );
        let mut b = store.temp_file(".opus").unwrap();
        b.write_all(b"hello").unwrap();
        assert!(store.put_blocking(b.into_temp_path()).unwrap().reused);
        assert_eq!(std::fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn open_empties_tmp_and_digests_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        std::fs::write(dir.path().join("tmp/left-over"), b"x").unwrap();
        let store = AudioStore::open(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
        assert!(store.path_for("../../etc/passwd").is_err());
        assert!(store.path_for(&"A".repeat(64)).is_err());
    }

    #[tokio::test]
    async fn unreferenced_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = AudioStore::open(dir.path()).unwrap();
        let mut keep = HashSet::new();
        for content in [&b"a"[..], b"b"] {
            let mut f = store.temp_file(".opus").unwrap();
            f.write_all(content).unwrap();
            let s = store.put(f.into_temp_path()).await.unwrap();
            if content == b"a" {
                keep.insert(s.sha256);
            }
        }
        assert_eq!(store.remove_unreferenced(&keep).await.unwrap(), 1);
        assert_eq!(std::fs::read_dir(store.audio_dir()).unwrap().count(), 1);
    }
}

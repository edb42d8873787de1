//! The programme audio cache: Ogg Opus files under `DIR/audio/`, named by
//! the SHA-256 of their bytes (`<sha256>.opus`), so every file can be checked
//! against its own name without any index. Files arrive through
//! [`Cache::begin`] → [`Download::commit`], which verifies size and hash and
//! only then renames the durable temporary file into place. At startup
//! [`Cache::recover`] deletes what a power cut or a bad disk left behind:
//! temporary files, foreign files and files whose content no longer matches
//! their name. Those programmes are simply fetched again.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use loa_protocol::ProgrammeRef;
use sha2::{Digest, Sha256};

use crate::fsutil;

/// Extension of cached programme files.
const EXTENSION: &str = "opus";

/// Why the cache could not store or check a file.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("disk full while caching audio {sha256} ({bytes} bytes expected): {source}")]
    DiskFull {
        sha256: String,
        bytes: u64,
        source: io::Error,
    },
    #[error("audio is {actual} bytes, expected {expected}")]
    WrongSize { expected: u64, actual: u64 },
    #[error("audio SHA-256 is {actual}, expected {expected}")]
    WrongHash { expected: String, actual: String },
    #[error("{0:?} is not a SHA-256 hex digest")]
    BadDigest(String),
    #[error("cache I/O on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// What [`Cache::recover`] found at startup.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Verified programme files kept.
    pub kept: usize,
    /// Half-written temporary files deleted.
    pub temp_removed: usize,
    /// Files deleted because their content did not match their name, or
    /// because they were not cache files at all.
    pub corrupt_removed: usize,
}

/// Handle to the audio cache directory. Cheap to clone; all state is on disk.
#[derive(Debug, Clone)]
pub struct Cache {
    /// `DIR/audio`, holding one `<sha256>.opus` per cached programme.
    dir: PathBuf,
}

impl Cache {
    /// Opens (creating if needed) the cache under `cache_root/audio`.
    pub fn open(cache_root: &Path) -> Result<Cache, CacheError> {
        let dir = cache_root.join("audio");
        std::fs::create_dir_all(&dir).map_err(|source| CacheError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(Cache { dir })
    }

    /// The directory holding the audio files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Deletes temporary, foreign and corrupt files and re-verifies every
    /// programme file against its name. Blocking; reads every cached byte.
    pub fn recover(&self) -> Result<Recovery, CacheError> {
        let io_err = |source| CacheError::Io {
            path: self.dir.clone(),
            source,
        };
        let mut recovery = Recovery {
            temp_removed: fsutil::remove_temp_files(&self.dir).map_err(io_err)?,
            ..Default::default()
        };
        for entry in std::fs::read_dir(&self.dir).map_err(io_err)? {
            let path = entry.map_err(io_err)?.path();
            let verdict = match digest_of_name(&path) {
                None => Err("not a cache file name".to_string()),
                Some(expected) => match sha256_file(&path) {
                    Ok((actual, _)) if actual == expected => Ok(()),
                    Ok((actual, _)) => {
                        Err(format!("content hash {actual} does not match its name"))
                    }
                    Err(e) => Err(format!("unreadable: {e}")),
                },
            };
            match verdict {
                Ok(()) => recovery.kept += 1,
                Err(why) => {
                    tracing::warn!(file = %path.display(), %why, "deleting corrupt cache file; it will be fetched again");
                    remove_any(&path).map_err(|source| CacheError::Io {
                        path: path.clone(),
                        source,
                    })?;
                    recovery.corrupt_removed += 1;
                }
            }
        }
        if recovery.corrupt_removed > 0 {
            fsutil::sync_dir(&self.dir).map_err(io_err)?;
        }
        tracing::info!(?recovery, "audio cache checked");
        Ok(recovery)
    }

    /// Where the file with this content hash lives (whether or not it exists).
    pub fn path_for(&self, sha256: &str) -> Result<PathBuf, CacheError> {
        if !is_sha256_hex(sha256) {
            return Err(CacheError::BadDigest(sha256.to_string()));
        }
        Ok(self
            .dir
            .join(format!("{}.{EXTENSION}", sha256.to_ascii_lowercase())))
    }

    /// Whether audio with this hash is cached.
    pub fn contains(&self, sha256: &str) -> bool {
        self.path_for(sha256).map(|p| p.is_file()).unwrap_or(false)
    }

    /// Hashes of every cached file (not re-verified).
    pub fn list(&self) -> Result<Vec<String>, CacheError> {
        let io_err = |source| CacheError::Io {
            path: self.dir.clone(),
            source,
        };
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io_err)? {
            if let Some(sha) = digest_of_name(&entry.map_err(io_err)?.path()) {
                out.push(sha);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Ids of the programmes in `programmes` whose audio is cached.
    pub fn cached_programmes(&self, programmes: &BTreeMap<String, ProgrammeRef>) -> Vec<String> {
        programmes
            .iter()
            .filter(|(_, r)| self.contains(&r.sha256))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Re-reads a cached file and checks it still matches `expected`.
    pub fn verify(&self, expected: &ProgrammeRef) -> Result<PathBuf, CacheError> {
        let path = self.path_for(&expected.sha256)?;
        let (actual, bytes) = sha256_file(&path).map_err(|source| CacheError::Io {
            path: path.clone(),
            source,
        })?;
        if bytes != expected.bytes {
            return Err(CacheError::WrongSize {
                expected: expected.bytes,
                actual: bytes,
            });
        }
        if !actual.eq_ignore_ascii_case(&expected.sha256) {
            return Err(CacheError::WrongHash {
                expected: expected.sha256.clone(),
                actual,
            });
        }
        Ok(path)
    }

    /// Deletes the cached file with this hash, if any.
    pub fn remove(&self, sha256: &str) -> Result<(), CacheError> {
        let path = self.path_for(sha256)?;
        fsutil::remove_durably(&path).map_err(|source| CacheError::Io { path, source })
    }

    /// Starts storing a file expected to match `expected`. Write the bytes
    /// with [`Download::write`], then [`Download::commit`]; dropping the
    /// download deletes the temporary file.
    pub fn begin(&self, expected: &ProgrammeRef) -> Result<Download, CacheError> {
        let final_path = self.path_for(&expected.sha256)?;
        let temp = fsutil::temp_file_in(&self.dir, &expected.sha256)
            .map_err(|e| self.write_error(expected, e))?;
        Ok(Download {
            temp,
            final_path,
            expected: expected.clone(),
            hasher: Sha256::new(),
            written: 0,
        })
    }

    fn write_error(&self, expected: &ProgrammeRef, source: io::Error) -> CacheError {
        if fsutil::is_disk_full(&source) {
            CacheError::DiskFull {
                sha256: expected.sha256.clone(),
                bytes: expected.bytes,
                source,
            }
        } else {
            CacheError::Io {
                path: self.dir.clone(),
                source,
            }
        }
    }
}

/// A file being written into the cache. Nothing is visible under the final
/// name until [`commit`](Self::commit) has verified it.
pub struct Download {
    /// The temporary file in the cache directory (deleted on drop).
    temp: tempfile::NamedTempFile,
    /// `<sha256>.opus`, the name the file gets once verified.
    final_path: PathBuf,
    /// Size and hash the bytes must have.
    expected: ProgrammeRef,
    /// Running hash of the bytes written so far.
    hasher: Sha256,
    /// Bytes written so far.
    written: u64,
}

impl Download {
    /// Appends bytes. Refuses to grow past the expected size, so a lying or
    /// hostile server cannot fill the disk.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), CacheError> {
        let after = self.written + chunk.len() as u64;
        if after > self.expected.bytes {
            return Err(CacheError::WrongSize {
                expected: self.expected.bytes,
                actual: after,
            });
        }
        self.temp.write_all(chunk).map_err(|e| self.error(e))?;
        self.hasher.update(chunk);
        self.written = after;
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Verifies size and hash, then durably moves the file into place.
    pub fn commit(self) -> Result<PathBuf, CacheError> {
        if self.written != self.expected.bytes {
            return Err(CacheError::WrongSize {
                expected: self.expected.bytes,
                actual: self.written,
            });
        }
        let actual = hex::encode(self.hasher.clone().finalize());
        if !actual.eq_ignore_ascii_case(&self.expected.sha256) {
            return Err(CacheError::WrongHash {
                expected: self.expected.sha256.clone(),
                actual,
            });
        }
        let path = self.final_path.clone();
        let (sha256, bytes) = (self.expected.sha256.clone(), self.expected.bytes);
        fsutil::persist(self.temp, &path).map_err(|source| {
            if fsutil::is_disk_full(&source) {
                CacheError::DiskFull {
                    sha256,
                    bytes,
                    source,
                }
            } else {
                CacheError::Io {
                    path: path.clone(),
                    source,
                }
            }
        })?;
        Ok(path)
    }

    fn error(&self, source: io::Error) -> CacheError {
        if fsutil::is_disk_full(&source) {
            CacheError::DiskFull {
                sha256: self.expected.sha256.clone(),
                bytes: self.expected.bytes,
                source,
            }
        } else {
            CacheError::Io {
                path: self.temp.path().to_path_buf(),
                source,
            }
        }
    }
}

/// Whether `s` is 64 hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// SHA-256 (lowercase hex) and length of a file's bytes.
pub fn sha256_file(path: &Path) -> io::Result<(String, u64)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), total))
}

/// The lowercase digest a cache file name claims, if it is a cache file name.
fn digest_of_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(&format!(".{EXTENSION}"))?;
    (is_sha256_hex(stem) && stem.bytes().all(|b| !b.is_ascii_uppercase()) && path.is_file())
        .then(|| stem.to_string())
}

fn remove_any(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

//! A full disk while fetching: a clear `DiskFull` error, nothing half-written
//! left in the cache, and the cache works again once there is room. Uses a
//! 256 KiB tmpfs, so it needs root (as the project's test command runs);
//! unprivileged runs skip it with a notice.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use loa_receiver::cache::{Cache, CacheError};
use loa_receiver::fetcher::{FetchError, Fetcher};

/// A small tmpfs mounted for the test's lifetime.
struct SmallDisk {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let uid = Command::new("id").arg("-u").output().ok()?;
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            eprintln!("NOTICE: disk-full test skipped: mounting a tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success(), "running as root but cannot mount a tmpfs");
        Some(SmallDisk { path, _dir: dir })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

#[tokio::test]
async fn a_full_disk_is_reported_and_leaves_nothing_behind() {
    let Some(disk) = SmallDisk::mount("256k") else {
        return;
    };
    let cache = Cache::open(&disk.path).unwrap();
    // 400 KB of arbitrary bytes: more than the disk holds.
    let big: Vec<u8> = (0..400_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let big_ref = common::programme_ref(&big, 10_000);

    let mut download = cache.begin(&big_ref).unwrap();
    let err = big
        .chunks(16 * 1024)
        .try_for_each(|c| download.write(c))
        .unwrap_err();
    assert!(matches!(err, CacheError::DiskFull { .. }), "{err}");
    assert!(err.to_string().contains("disk full"), "{err}");
    drop(download);
    assert_eq!(entries(cache.dir()), 0, "the half-written file is gone");

    // Through the fetcher, as in service.
    let server = common::AudioServer::start("t");
    server.add("big", big.clone());
    let fetcher = Fetcher::new(&server.url(), "t", cache.clone(), Duration::from_secs(60)).unwrap();
    let err = fetcher.fetch("big", &big_ref).await.unwrap_err();
    assert!(
        matches!(err, FetchError::Cache(CacheError::DiskFull { .. })),
        "{err}"
    );
    assert_eq!(entries(cache.dir()), 0);

    // Room for a normal programme is still there afterwards.
    let small = common::ogg_opus(&common::tone(440.0, 1.0, 0.3));
    let small_ref = common::programme_ref(&small, 1000);
    server.add("small", small);
    fetcher.fetch("small", &small_ref).await.unwrap();
    assert!(cache.verify(&small_ref).is_ok());
}

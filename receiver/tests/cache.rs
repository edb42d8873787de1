//! The audio cache: verified atomic stores and recovery from what a power
//! cut or a bad disk leaves behind.

mod common;

use loa_protocol::ProgrammeRef;
use loa_receiver::cache::{Cache, CacheError};

fn files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_verified_download_becomes_visible_only_on_commit() {
    let root = tempfile::tempdir().unwrap();
    let cache = Cache::open(root.path()).unwrap();
    let bytes = common::ogg_opus(&common::tone(440.0, 0.5, 0.3));
    let r = common::programme_ref(&bytes, 500);
    let mut download = cache.begin(&r).unwrap();
    download.write(&bytes[..100]).unwrap();
    assert!(!cache.contains(&r.sha256), "visible before commit");
    download.write(&bytes[100..]).unwrap();
    let path = download.commit().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert!(cache.contains(&r.sha256));
    assert_eq!(cache.verify(&r).unwrap(), path);
    assert_eq!(files(cache.dir()), vec![format!("{}.opus", r.sha256)]);
    assert_eq!(cache.list().unwrap(), vec![r.sha256.clone()]);
    let programmes = [
        ("p1".to_string(), r.clone()),
        (
            "p2".to_string(),
            ProgrammeRef {
                sha256: "0".repeat(64),
                ..r
            },
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(cache.cached_programmes(&programmes), vec!["p1".to_string()]);
}

#[test]
fn wrong_hash_wrong_size_or_abandoned_downloads_leave_nothing() {
    let root = tempfile::tempdir().unwrap();
    let cache = Cache::open(root.path()).unwrap();
    let bytes = b"not what the schedule promised".to_vec();
    let mut r = common::programme_ref(&bytes, 1000);
    r.sha256 = "ab".repeat(32);

    let mut download = cache.begin(&r).unwrap();
    download.write(&bytes).unwrap();
    assert!(matches!(
        download.commit(),
        Err(CacheError::WrongHash { .. })
    ));

    let short = common::programme_ref(&bytes, 1000);
    let mut download = cache.begin(&short).unwrap();
    download.write(&bytes[..10]).unwrap();
    assert!(
        matches!(download.commit(), Err(CacheError::WrongSize { expected, actual: 10 }) if expected == bytes.len() as u64)
    );

    let mut download = cache.begin(&short).unwrap();
    download.write(&bytes).unwrap();
    let err = download.write(b"more than announced").unwrap_err();
    assert!(matches!(err, CacheError::WrongSize { .. }), "{err}");
    drop(download);

    let download = cache.begin(&short).unwrap();
    drop(download); // e.g. the connection broke

    assert!(files(cache.dir()).is_empty(), "{:?}", files(cache.dir()));
    assert!(!cache.contains(&short.sha256));
}

#[test]
fn recovery_deletes_half_written_foreign_and_corrupt_files_and_keeps_good_ones() {
    let root = tempfile::tempdir().unwrap();
    let cache = Cache::open(root.path()).unwrap();
    let good = common::ogg_opus(&common::tone(440.0, 0.3, 0.3));
    let good_ref = common::put_in_cache(&cache, &good, 300);

    // A power cut in the middle of a download leaves its temporary file.
    let other = common::ogg_opus(&common::tone(880.0, 0.3, 0.3));
    let other_ref = common::programme_ref(&other, 300);
    std::fs::write(
        cache
            .dir()
            .join(format!(".{}.Xy12ab.tmp", other_ref.sha256)),
        &other[..other.len() / 2],
    )
    .unwrap();
    // A file whose bytes rotted (or was truncated) after it was stored.
    let rotten_ref = common::programme_ref(b"original bytes", 1);
    std::fs::write(
        cache.dir().join(format!("{}.opus", rotten_ref.sha256)),
        b"original bytez",
    )
    .unwrap();
    // Something that is not a cache file at all.
    std::fs::write(cache.dir().join("notes.txt"), b"hello").unwrap();

    let recovery = Cache::open(root.path()).unwrap().recover().unwrap();
    assert_eq!(recovery.kept, 1);
    assert_eq!(recovery.temp_removed, 1);
    assert_eq!(recovery.corrupt_removed, 2);
    assert_eq!(
        files(cache.dir()),
        vec![format!("{}.opus", good_ref.sha256)]
    );
    assert!(cache.verify(&good_ref).is_ok());
    assert!(!cache.contains(&rotten_ref.sha256));

    // The removed programme can be stored again.
    common::put_in_cache(&cache, &other, 300);
    assert!(cache.contains(&other_ref.sha256));
}

#[test]
fn verify_catches_corruption_after_store() {
    let root = tempfile::tempdir().unwrap();
    let cache = Cache::open(root.path()).unwrap();
    let bytes = common::ogg_opus(&common::tone(440.0, 0.3, 0.3));
    let r = common::put_in_cache(&cache, &bytes, 300);
    let path = cache.path_for(&r.sha256).unwrap();
    let mut damaged = bytes.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xff;
    std::fs::write(&path, &damaged).unwrap();
    assert!(matches!(
        cache.verify(&r),
        Err(CacheError::WrongHash { .. })
    ));
    cache.remove(&r.sha256).unwrap();
    assert!(!path.exists());
}

#[test]
fn digests_that_could_escape_the_directory_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let cache = Cache::open(root.path()).unwrap();
    for bad in ["../../etc/passwd", "", &"g".repeat(64), &"a".repeat(63)] {
        assert!(
            matches!(cache.path_for(bad), Err(CacheError::BadDigest(_))),
            "{bad:?}"
        );
    }
}

//! The schedule kept on disk: versions, ownership, validation, restarts.

mod common;

use chrono::Utc;
use loa_protocol::Priority;
use loa_receiver::schedule_store::{Refusal, ScheduleStore};

fn sample(receiver: &str, version: u64) -> loa_protocol::ReceiverSchedule {
    let r = common::programme_ref(b"audio", 1000);
    let at = Utc::now() + chrono::Duration::hours(1);
    common::schedule(
        receiver,
        version,
        &[("bulletin", &r)],
        vec![common::event("s1", "bulletin", at, 1000, Priority::Normal)],
    )
}

#[test]
fn only_newer_versions_for_this_receiver_are_taken_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = ScheduleStore::open(dir.path(), "thon-1").unwrap();
    assert!(store.current().is_none());

    store.offer(sample("thon-1", 5)).unwrap().unwrap();
    assert_eq!(store.version(), Some(5));

    assert_eq!(
        store.offer(sample("thon-1", 5)).unwrap(),
        Err(Refusal::NotNewer {
            offered: 5,
            kept: 5
        })
    );
    assert_eq!(
        store.offer(sample("thon-1", 4)).unwrap(),
        Err(Refusal::NotNewer {
            offered: 4,
            kept: 5
        })
    );
    assert_eq!(
        store.offer(sample("thon-2", 9)).unwrap(),
        Err(Refusal::WrongReceiver("thon-2".into()))
    );
    assert_eq!(store.version(), Some(5));

    let newer = sample("thon-1", 6);
    store.offer(newer.clone()).unwrap().unwrap();
    drop(store);

    // A restart (or power cut) brings back exactly the last accepted schedule.
    let store = ScheduleStore::open(dir.path(), "thon-1").unwrap();
    assert_eq!(store.current(), Some(&newer));
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("schedule.json")]);
}

#[test]
fn invalid_schedules_are_refused_and_the_kept_one_stays() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = ScheduleStore::open(dir.path(), "thon-1").unwrap();
    store.offer(sample("thon-1", 1)).unwrap().unwrap();

    let mut escaping = sample("thon-1", 2);
    let r = escaping.programmes.remove("bulletin").unwrap();
    escaping.programmes.insert("../../etc".into(), r);
    assert!(matches!(
        store.offer(escaping).unwrap(),
        Err(Refusal::Invalid(_))
    ));

    let mut bad_hash = sample("thon-1", 3);
    bad_hash.programmes.get_mut("bulletin").unwrap().sha256 = "../x".into();
    assert!(matches!(
        store.offer(bad_hash).unwrap(),
        Err(Refusal::Invalid(_))
    ));

    let mut dangling = sample("thon-1", 4);
    dangling.events[0].programme_id = "unknown".into();
    assert!(matches!(
        store.offer(dangling).unwrap(),
        Err(Refusal::Invalid(_))
    ));

    assert_eq!(store.version(), Some(1));
}

#[test]
fn a_damaged_or_foreign_schedule_file_is_set_aside_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("schedule.json"),
        b"{\"receiver_id\": \"thon-1\", \"vers",
    )
    .unwrap();
    let store = ScheduleStore::open(dir.path(), "thon-1").unwrap();
    assert!(store.current().is_none());
    assert!(dir.path().join("schedule.json.rejected").exists());

    // A schedule written for another receiver id (say the cache directory was copied).
    let other = sample("thon-2", 3);
    std::fs::write(
        dir.path().join("schedule.json"),
        serde_json::to_vec(&other).unwrap(),
    )
    .unwrap();
    let mut store = ScheduleStore::open(dir.path(), "thon-1").unwrap();
    assert!(store.current().is_none());
    // Version 1 is accepted: the foreign file's version does not count.
    store.offer(sample("thon-1", 1)).unwrap().unwrap();
}

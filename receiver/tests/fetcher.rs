//! The fetcher against an HTTP server standing in for the controller:
//! bearer token, verification, refusal of tampered audio, order, clean-up.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration as StdDuration;

use chrono::{Duration, Utc};
use loa_protocol::Priority;
use loa_receiver::cache::{Cache, CacheError};
use loa_receiver::fetcher::{FetchError, Fetcher, needed};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "tok-123";

#[tokio::test]
async fn fetches_with_the_token_and_verifies_what_arrives() {
    let server = common::AudioServer::start(TOKEN);
    let good = common::ogg_opus(&common::tone(1000.0, 0.5, 0.4));
    let good_ref = common::programme_ref(&good, 500);
    server.add("good", good.clone());
    let genuine = common::ogg_opus(&common::tone(500.0, 0.5, 0.4));
    let tampered_ref = common::programme_ref(&genuine, 500);
    let mut tampered = genuine.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    server.add("tampered", tampered);

    let root = tempfile::tempdir().unwrap();
    let cache = Cache::open(root.path()).unwrap();
    let fetcher = Fetcher::new(
        &format!("{}/", server.url()),
        TOKEN,
        cache.clone(),
        StdDuration::from_secs(60),
    )
    .unwrap();

    fetcher.fetch("good", &good_ref).await.unwrap();
    assert_eq!(
        std::fs::read(cache.path_for(&good_ref.sha256).unwrap()).unwrap(),
        good
    );

    let err = fetcher.fetch("tampered", &tampered_ref).await.unwrap_err();
    assert!(
        matches!(err, FetchError::Cache(CacheError::WrongHash { .. })),
        "{err}"
    );
    assert!(!cache.contains(&tampered_ref.sha256));

    let err = fetcher.fetch("absent", &tampered_ref).await.unwrap_err();
    assert!(
        matches!(err, FetchError::Status { status, .. } if status == 404),
        "{err}"
    );
    assert_eq!(server.unauthorised.load(Ordering::SeqCst), 0);

    let intruder = Fetcher::new(
        &server.url(),
        "wrong",
        cache.clone(),
        StdDuration::from_secs(60),
    )
    .unwrap();
    let err = intruder.fetch("good", &good_ref).await.unwrap_err();
    assert!(
        matches!(err, FetchError::Status { status, .. } if status == 401),
        "{err}"
    );
    assert_eq!(server.unauthorised.load(Ordering::SeqCst), 1);

    // Only the verified file is in the cache directory: no temporary leftovers.
    assert_eq!(std::fs::read_dir(cache.dir()).unwrap().count(), 1);
}

#[test]
fn soonest_needed_first_and_past_programmes_not_at_all() {
    let a = common::programme_ref(b"a", 1000);
    let b = common::programme_ref(b"b", 1000);
    let c = common::programme_ref(b"c", 1000);
    let now = Utc::now();
    let events = vec![
        common::event("s1", "a", now + Duration::hours(5), 1000, Priority::Normal),
        common::event("s2", "b", now + Duration::hours(1), 1000, Priority::Normal),
        common::event("s1", "a", now + Duration::hours(2), 1000, Priority::Normal),
        common::event("s3", "c", now - Duration::hours(1), 1000, Priority::Normal),
    ];
    let schedule = common::schedule("r", 1, &[("a", &a), ("b", &b), ("c", &c)], events);
    let order: Vec<String> = needed(&schedule).into_iter().map(|(id, _)| id).collect();
    assert_eq!(order, vec!["b", "a"]);
}

#[tokio::test]
async fn keeps_the_cache_in_step_with_the_schedule() {
    let server = common::AudioServer::start(TOKEN);
    let wanted = common::ogg_opus(&common::tone(1000.0, 0.3, 0.4));
    let wanted_ref = common::programme_ref(&wanted, 300);
    server.add("wanted", wanted);
    let root = tempfile::tempdir().unwrap();
    let cache = Cache::open(root.path()).unwrap();
    let stale = common::put_in_cache(
        &cache,
        &common::ogg_opus(&common::tone(300.0, 0.3, 0.4)),
        300,
    );

    let schedule = common::schedule(
        "r",
        1,
        &[("wanted", &wanted_ref)],
        vec![common::event(
            "s1",
            "wanted",
            Utc::now() + Duration::hours(1),
            300,
            Priority::Normal,
        )],
    );
    let (_tx, rx) = watch::channel(Some(Arc::new(schedule)));
    let (cached_tx, mut cached_rx) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let fetcher = Fetcher::new(&server.url(), TOKEN, cache.clone(), StdDuration::ZERO).unwrap();
    let task = tokio::spawn(fetcher.run(rx, cached_tx, stop.clone()));
    for _ in 0..2 {
        tokio::time::timeout(StdDuration::from_secs(5), cached_rx.recv())
            .await
            .unwrap()
            .unwrap();
    }
    assert!(cache.contains(&wanted_ref.sha256));
    assert!(
        !cache.contains(&stale.sha256),
        "audio no longer scheduled is removed after the grace period"
    );
    stop.cancel();
    task.await.unwrap();
}

//! Distribution against the embedded broker: each receiver gets, retained,
//! the events of the schedules targeting it or its zone, computed in the
//! schedule's time zone (Asia/Ho_Chi_Minh, UTC+7 all year); bad schedules are
//! skipped; deleting a schedule publishes a newer, empty schedule; unchanged
//! schedules are not republished unless the receiver comes online.

mod mqtt_common;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, DurationRound, NaiveDateTime, Utc};
use loa_controller::broker::EmbeddedBroker;
use loa_controller::bus::Bus;
use loa_controller::distribution::Distributor;
use loa_protocol::topics::ReceiverTopic;
use loa_protocol::{Priority, ProgrammeRef, ReceiverSchedule};
use mqtt_common::*;
use tokio_util::sync::CancellationToken;

const HCM: &str = "Asia/Ho_Chi_Minh";

/// Local wall time in Vietnam (UTC+7, no daylight saving), as stored in `start_local`.
fn vietnam_wall_time(t: DateTime<Utc>) -> String {
    let local: NaiveDateTime = (t + chrono::Duration::hours(7)).naive_utc();
    local.format("%Y-%m-%dT%H:%M:%S").to_string()
}

async fn next_schedule(
    client: &mut TestClient,
    receiver: &str,
    timeout: Duration,
) -> Option<ReceiverSchedule> {
    let topic = ReceiverTopic::Schedule.for_receiver(receiver);
    let publish = client.next_on(&topic, timeout).await?;
    Some(open(&publish))
}

async fn subscribed(url: &str, receiver: &str) -> TestClient {
    let mut client = TestClient::connect(url, receiver, None).await;
    client
        .subscribe(&ReceiverTopic::Schedule.for_receiver(receiver))
        .await;
    client
}

#[tokio::test]
async fn receivers_get_their_events_and_deletions_clear_them() {
    let broker = EmbeddedBroker::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let url = broker.url();
    let (db, _dir) = database().await;
    add_zone(&db, "z1").await;
    add_zone(&db, "z2").await;
    for (r, z) in [("r1", "z1"), ("r2", "z1"), ("r3", "z2"), ("r4", "z2")] {
        add_receiver(&db, r, z).await;
    }
    let sha1 = add_programme(&db, "p1", 60_000).await;
    let sha2 = add_programme(&db, "p2", 60_000).await;

    let now = Utc::now();
    // Daily, three hours from now (well clear of the window's edges), started
    // two days ago: exactly 7 occurrences in a 7-day horizon.
    let first = (now + chrono::Duration::hours(3))
        .duration_trunc(chrono::Duration::minutes(1))
        .unwrap();
    let daily_start = vietnam_wall_time(first - chrono::Duration::days(2));
    add_schedule(
        &db,
        "s1",
        "p1",
        (&daily_start, HCM, Some("FREQ=DAILY")),
        "normal",
        &[("zone", "z1")],
    )
    .await;
    // A one-off emergency for r3 alone, and a programme r3 is playing right now.
    let once = (now + chrono::Duration::hours(2))
        .duration_trunc(chrono::Duration::minutes(1))
        .unwrap();
    add_schedule(
        &db,
        "s2",
        "p1",
        (&vietnam_wall_time(once), HCM, None),
        "emergency",
        &[("receiver", "r3")],
    )
    .await;
    let playing = (now - chrono::Duration::seconds(10))
        .duration_trunc(chrono::Duration::seconds(1))
        .unwrap();
    add_schedule(
        &db,
        "s3",
        "p2",
        (&vietnam_wall_time(playing), HCM, None),
        "priority",
        &[("receiver", "r3")],
    )
    .await;
    // Broken rows that must not stop the others.
    add_schedule(
        &db,
        "bad-tz",
        "p1",
        (&daily_start, "Mars/Olympus", None),
        "normal",
        &[("zone", "z1")],
    )
    .await;
    add_schedule(
        &db,
        "bad-rule",
        "p1",
        (&daily_start, HCM, Some("FREQ=SOMETIMES")),
        "normal",
        &[("zone", "z1")],
    )
    .await;

    let mut clients = Vec::new();
    for r in ["r1", "r2", "r3", "r4"] {
        clients.push(subscribed(&url, r).await);
    }
    let [mut c1, mut c2, mut c3, mut c4] = clients.try_into().ok().unwrap();

    let shutdown = CancellationToken::new();
    let (bus, _events) = Bus::connect(&url, "ctl-distribution", signer())
        .await
        .unwrap();
    let distributor = Distributor::spawn(
        db.clone(),
        bus.clone(),
        chrono::Duration::days(7),
        shutdown.clone(),
    );

    let s1 = next_schedule(&mut c1, "r1", WAIT)
        .await
        .expect("r1 schedule");
    assert_eq!(s1.receiver_id, "r1");
    assert!(s1.version > 0);
    let expected: Vec<DateTime<Utc>> = (0..7).map(|k| first + chrono::Duration::days(k)).collect();
    assert_eq!(
        s1.events.iter().map(|e| e.starts_at).collect::<Vec<_>>(),
        expected
    );
    for e in &s1.events {
        assert_eq!(
            (e.schedule_id.as_str(), e.programme_id.as_str()),
            ("s1", "p1")
        );
        assert_eq!((e.duration_ms, e.priority), (60_000, Priority::Normal));
        assert_eq!(e.id, format!("s1@{}", e.starts_at.timestamp_millis()));
        assert_eq!(
            vietnam_wall_time(e.starts_at)[11..],
            vietnam_wall_time(first)[11..],
            "same local time daily"
        );
    }
    let p1 = ProgrammeRef {
        sha256: sha1.clone(),
        bytes: 12345,
        duration_ms: 60_000,
    };
    assert_eq!(
        s1.programmes,
        BTreeMap::from([("p1".to_string(), p1.clone())])
    );
    assert!(s1.horizon_end >= now + chrono::Duration::days(7));

    let s2 = next_schedule(&mut c2, "r2", WAIT)
        .await
        .expect("r2 schedule");
    assert_eq!(s2.events, s1.events, "same zone, same events");

    let s3 = next_schedule(&mut c3, "r3", WAIT)
        .await
        .expect("r3 schedule");
    let got: Vec<_> = s3
        .events
        .iter()
        .map(|e| (e.schedule_id.as_str(), e.starts_at, e.priority))
        .collect();
    assert_eq!(
        got,
        vec![
            ("s3", playing, Priority::Priority),
            ("s2", once, Priority::Emergency)
        ]
    );
    let p2 = ProgrammeRef {
        sha256: sha2,
        bytes: 12345,
        duration_ms: 60_000,
    };
    assert_eq!(
        s3.programmes,
        BTreeMap::from([("p1".to_string(), p1), ("p2".to_string(), p2)])
    );

    let s4 = next_schedule(&mut c4, "r4", WAIT)
        .await
        .expect("r4 gets an empty schedule");
    assert!(s4.events.is_empty() && s4.programmes.is_empty());

    // Deleting the daily schedule clears r1 and r2 with a newer version; r3 is unchanged.
    sqlx::query("DELETE FROM schedules WHERE id = 's1'")
        .execute(&db)
        .await
        .unwrap();
    distributor.schedules_changed();
    let cleared = next_schedule(&mut c1, "r1", WAIT)
        .await
        .expect("r1 republished");
    assert!(
        cleared.version > s1.version,
        "{} > {}",
        cleared.version,
        s1.version
    );
    assert!(cleared.events.is_empty() && cleared.programmes.is_empty());
    assert!(
        next_schedule(&mut c2, "r2", WAIT)
            .await
            .expect("r2 republished")
            .events
            .is_empty()
    );
    assert_eq!(
        next_schedule(&mut c3, "r3", Duration::from_secs(1)).await,
        None,
        "unchanged: not republished"
    );

    // A receiver coming online gets its schedule again, same version.
    distributor.receiver_online("r3");
    let again = next_schedule(&mut c3, "r3", WAIT)
        .await
        .expect("republished on online");
    assert_eq!((again.version, &again.events), (s3.version, &s3.events));

    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT receiver_id, version FROM distributions ORDER BY receiver_id")
            .fetch_all(&db)
            .await
            .unwrap();
    let ids: Vec<&str> = rows.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(ids, ["r1", "r2", "r3", "r4"]);
    assert_eq!(rows[0].1 as u64, cleared.version);
    shutdown.cancel();
}

#[tokio::test]
async fn a_pass_reports_bad_schedules_and_skips_unchanged_receivers() {
    let broker = EmbeddedBroker::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let (db, _dir) = database().await;
    add_zone(&db, "z1").await;
    add_receiver(&db, "r1", "z1").await;
    add_programme(&db, "p1", 1_000).await;
    let start = vietnam_wall_time(Utc::now() + chrono::Duration::hours(1));
    add_schedule(
        &db,
        "good",
        "p1",
        (&start, HCM, None),
        "normal",
        &[("zone", "z1")],
    )
    .await;
    add_schedule(
        &db,
        "bad",
        "p1",
        ("yesterday at noon", HCM, None),
        "normal",
        &[("zone", "z1")],
    )
    .await;
    let (bus, _events) = Bus::connect(&broker.url(), "ctl-pass", signer())
        .await
        .unwrap();
    let horizon = chrono::Duration::days(7);
    use loa_controller::distribution::{Force, run_pass};

    let first = run_pass(&db, &bus, horizon, Utc::now(), &Force::Nothing)
        .await
        .unwrap();
    assert_eq!(first.published, ["r1"]);
    assert_eq!(first.bad_schedules, ["bad"]);
    let second = run_pass(&db, &bus, horizon, Utc::now(), &Force::Nothing)
        .await
        .unwrap();
    assert_eq!((second.published.len(), second.unchanged), (0, 1));
    let forced = run_pass(&db, &bus, horizon, Utc::now(), &Force::All)
        .await
        .unwrap();
    assert_eq!(forced.published, ["r1"]);
    // After half the horizon without a change the schedule is refreshed anyway.
    let later = Utc::now() + chrono::Duration::days(4);
    let refreshed = run_pass(&db, &bus, horizon, later, &Force::Nothing)
        .await
        .unwrap();
    assert_eq!(refreshed.published, ["r1"]);
}

//! Scenarios run against both the embedded broker and Mosquitto: the
//! controller's [`Bus`] and ingest on one side, plain MQTT clients acting as
//! receivers on the other.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use loa_controller::bus::{Bus, BusEvent};
use loa_controller::distribution::Distributor;
use loa_protocol::topics::ReceiverTopic;
use loa_protocol::{
    PlayEvent, PlayOutcome, PlayReport, Priority, ProgrammeRef, ReceiverSchedule, ReceiverStatus,
    ReportAck,
};
use rumqttc::{LastWill, QoS};
use tokio_util::sync::CancellationToken;

use super::*;

/// A client id no other test uses.
fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

fn sample_schedule(receiver_id: &str) -> ReceiverSchedule {
    let starts_at = DateTime::from_timestamp(1_900_000_000, 0).unwrap();
    ReceiverSchedule {
        receiver_id: receiver_id.into(),
        version: 42,
        generated_at: Utc::now(),
        horizon_end: starts_at + chrono::Duration::days(7),
        programmes: BTreeMap::from([(
            "p1".to_string(),
            ProgrammeRef {
                sha256: "ab".repeat(32),
                bytes: 1000,
                duration_ms: 5000,
            },
        )]),
        events: vec![PlayEvent {
            id: PlayEvent::occurrence_id("s1", starts_at),
            schedule_id: "s1".into(),
            programme_id: "p1".into(),
            starts_at,
            duration_ms: 5000,
            priority: Priority::Normal,
        }],
        zone: None,
    }
}

/// The controller publishes a schedule retained; a receiver that subscribes
/// only afterwards still gets it, marked retained.
pub async fn retained_schedule_reaches_late_subscriber(url: &str) {
    let receiver = unique("r");
    let topic = ReceiverTopic::Schedule.for_receiver(&receiver);
    let (bus, _events) = Bus::connect(url, &unique("ctl"), signer()).await.unwrap();
    assert!(bus.wait_ready(WAIT).await, "controller bus ready");
    let mut early = TestClient::connect(url, &unique("early"), None).await;
    early.subscribe(&topic).await;

    let schedule = sample_schedule(&receiver);
    bus.publish_retained_schedule(&schedule).await.unwrap();
    let live = early.next_on(&topic, WAIT).await.expect("live schedule");
    assert_eq!(open::<ReceiverSchedule>(&live), schedule);

    let mut late = TestClient::connect(url, &unique("late"), None).await;
    late.subscribe(&topic).await;
    let retained = late
        .next_on(&topic, WAIT)
        .await
        .expect("retained schedule for a late subscriber");
    assert!(retained.retain, "delivered from the retained store");
    assert_eq!(open::<ReceiverSchedule>(&retained), schedule);
}

/// A receiver that vanishes without DISCONNECT gets its last will published,
/// and the will is retained for later subscribers.
pub async fn last_will_is_published_when_a_receiver_drops(url: &str) {
    let receiver = unique("r");
    let topic = ReceiverTopic::Status.for_receiver(&receiver);
    let mut watcher = TestClient::connect(url, &unique("watch"), None).await;
    watcher.subscribe(&ReceiverTopic::Status.for_all()).await;

    let will = LastWill::new(
        &topic,
        loa_protocol::encode(&ReceiverStatus::offline(&receiver)),
        QoS::AtLeastOnce,
        true,
    );
    let client = TestClient::connect(url, &receiver, Some(will)).await;
    let mut online = ReceiverStatus::offline(&receiver);
    online.online = true;
    client
        .publish(&topic, loa_protocol::encode(&online), true)
        .await;
    let first = watcher.next_on(&topic, WAIT).await.expect("online status");
    assert!(
        loa_protocol::decode::<ReceiverStatus>(&first.payload)
            .unwrap()
            .online
    );

    client.kill().await;
    let will = watcher
        .next_on(&topic, WAIT)
        .await
        .expect("last will after the connection dropped");
    let will = loa_protocol::decode::<ReceiverStatus>(&will.payload).unwrap();
    assert_eq!(
        (will.receiver_id.as_str(), will.online),
        (receiver.as_str(), false)
    );

    let mut late = TestClient::connect(url, &unique("late"), None).await;
    late.subscribe(&topic).await;
    let retained = late
        .next_on(&topic, WAIT)
        .await
        .expect("retained last will");
    assert!(
        !loa_protocol::decode::<ReceiverStatus>(&retained.payload)
            .unwrap()
            .online
    );
}

pub fn report(receiver: &str, report_id: &str) -> PlayReport {
    let scheduled_at = DateTime::from_timestamp(1_900_000_000, 0).unwrap();
    PlayReport {
        report_id: report_id.into(),
        receiver_id: receiver.into(),
        event_id: PlayEvent::occurrence_id("s1", scheduled_at),
        programme_id: "p1".into(),
        schedule_id: "s1".into(),
        scheduled_at,
        started_at: Some(scheduled_at + chrono::Duration::milliseconds(20)),
        ended_at: Some(scheduled_at + chrono::Duration::seconds(5)),
        outcome: PlayOutcome::Completed,
        detail: None,
        interruptions: Vec::new(),
    }
}

async fn next_ack(client: &mut TestClient, receiver: &str) -> ReportAck {
    let topic = ReceiverTopic::Acks.for_receiver(receiver);
    let ack = client.next_on(&topic, WAIT).await.expect("report ack");
    open(&ack)
}

/// Statuses and reports go through the controller's ingest into the
/// database; reports are stored once and acknowledged; malformed, forged and
/// unknown-receiver messages change nothing; a dropped receiver goes offline.
pub async fn ingest_stores_statuses_and_acks_reports(url: &str) {
    let (db, _dir) = database().await;
    add_zone(&db, "z1").await;
    add_receiver(&db, "r1", "z1").await;
    add_receiver(&db, "r2", "z1").await;
    let shutdown = CancellationToken::new();
    let (bus, events) = Bus::connect(url, &unique("ctl"), signer()).await.unwrap();
    let ingest = loa_controller::ingest::spawn(
        db.clone(),
        bus.clone(),
        events,
        Distributor::default(),
        shutdown.clone(),
    );
    assert!(bus.wait_ready(WAIT).await, "controller bus ready");

    let status_topic = ReceiverTopic::Status.for_receiver("r1");
    let will = LastWill::new(
        &status_topic,
        loa_protocol::encode(&ReceiverStatus::offline("r1")),
        QoS::AtLeastOnce,
        true,
    );
    let mut r1 = TestClient::connect(url, "r1", Some(will)).await;
    r1.subscribe(&ReceiverTopic::Acks.for_receiver("r1")).await;
    let mut r2 = TestClient::connect(url, "r2", None).await;
    r2.subscribe(&ReceiverTopic::Acks.for_receiver("r2")).await;

    let mut status = ReceiverStatus::offline("r1");
    status.online = true;
    status.cached = vec!["p1".into()];
    status.schedule_version = Some(7);
    let before = Utc::now().timestamp_millis();
    r1.publish(&status_topic, loa_protocol::encode(&status), true)
        .await;
    eventually("r1 online", || async {
        let row: (bool, Option<i64>, String, Option<i64>) = sqlx::query_as(
            "SELECT online, last_seen, cached, schedule_version FROM receivers WHERE id = 'r1'",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        row.0
            && row.1.is_some_and(|t| t >= before - 1000)
            && row.2 == r#"["p1"]"#
            && row.3 == Some(7)
    })
    .await;

    let plays_r1 = ReceiverTopic::Plays.for_receiver("r1");
    let first = report("r1", "rep-1");
    r1.publish(&plays_r1, loa_protocol::encode(&first), false)
        .await;
    r1.publish(&plays_r1, loa_protocol::encode(&first), false)
        .await;
    let ack = next_ack(&mut r1, "r1").await;
    assert!(
        ack.report_ids.iter().all(|id| id == "rep-1") && !ack.report_ids.is_empty(),
        "{ack:?}"
    );

    // Malformed, forged (r2's report on r1's topic), unknown receiver, and
    // r2 claiming r1's report id: none stored, none acknowledged.
    r1.publish(&plays_r1, b"{not json".to_vec(), false).await;
    r1.publish(
        &plays_r1,
        loa_protocol::encode(&report("r2", "forged")),
        false,
    )
    .await;
    r1.publish(
        &ReceiverTopic::Plays.for_receiver("r9"),
        loa_protocol::encode(&report("r9", "unknown")),
        false,
    )
    .await;
    let plays_r2 = ReceiverTopic::Plays.for_receiver("r2");
    r2.publish(
        &plays_r2,
        loa_protocol::encode(&report("r2", "rep-1")),
        false,
    )
    .await;
    r2.publish(
        &plays_r2,
        loa_protocol::encode(&report("r2", "rep-2")),
        false,
    )
    .await;
    assert_eq!(
        next_ack(&mut r2, "r2").await.report_ids,
        vec!["rep-2".to_string()]
    );
    let second = report("r1", "rep-3");
    r1.publish(&plays_r1, loa_protocol::encode(&second), false)
        .await;
    loop {
        let ack = next_ack(&mut r1, "r1").await;
        assert!(
            ack.report_ids
                .iter()
                .all(|id| id == "rep-1" || id == "rep-3"),
            "{ack:?}"
        );
        if ack.report_ids.contains(&"rep-3".to_string()) {
            break;
        }
    }
    let rows: Vec<(String, String, i64, String)> = sqlx::query_as(
        "SELECT report_id, receiver_id, scheduled_at, outcome FROM plays ORDER BY report_id",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    let t = first.scheduled_at.timestamp_millis();
    assert_eq!(
        rows,
        vec![
            ("rep-1".into(), "r1".into(), t, "completed".into()),
            ("rep-2".into(), "r2".into(), t, "completed".into()),
            ("rep-3".into(), "r1".into(), t, "completed".into()),
        ]
    );

    r1.kill().await;
    eventually("r1 offline after its last will", || async {
        let online: bool = sqlx::query_scalar("SELECT online FROM receivers WHERE id = 'r1'")
            .fetch_one(&db)
            .await
            .unwrap();
        !online
    })
    .await;

    shutdown.cancel();
    tokio::time::timeout(WAIT, ingest)
        .await
        .expect("ingest stops")
        .unwrap();
}

/// A report published while the controller is disconnected reaches it when
/// it reconnects with the same client id (persistent session).
pub async fn reports_sent_while_controller_away_arrive_on_reconnect(url: &str) {
    let controller_id = unique("ctl");
    let receiver = unique("r");
    let (bus, events) = Bus::connect(url, &controller_id, signer()).await.unwrap();
    assert!(bus.wait_ready(WAIT).await, "controller bus ready");
    drop((bus, events));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let client = TestClient::connect(url, &receiver, None).await;
    let sent = report(&receiver, "while-away");
    client
        .publish(
            &ReceiverTopic::Plays.for_receiver(&receiver),
            loa_protocol::encode(&sent),
            false,
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (bus, mut events) = Bus::connect(url, &controller_id, signer()).await.unwrap();
    let got = tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Some(BusEvent::Play(report)) => return report,
                Some(_) => {}
                None => panic!("bus closed"),
            }
        }
    })
    .await
    .expect("report sent while away is delivered");
    assert_eq!(got, sent);
    drop(bus);
}

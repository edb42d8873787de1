//! Ingest against the embedded broker: statuses update receivers, play
//! reports are stored once and acknowledged, bad messages change nothing.

mod mqtt_common;

use loa_controller::broker::EmbeddedBroker;
use mqtt_common::scenarios;

#[tokio::test]
async fn ingest_stores_statuses_and_acknowledges_reports() {
    let broker = EmbeddedBroker::start("127.0.0.1:0".parse().unwrap()).unwrap();
    scenarios::ingest_stores_statuses_and_acks_reports(&broker.url()).await;
}

/// A receiver coming online, or reporting an old schedule version long after
/// a publication, gets its schedule republished; an up-to-date one does not.
#[tokio::test]
async fn receivers_coming_online_or_lagging_get_their_schedule_again() {
    use loa_controller::bus::Bus;
    use loa_controller::distribution::Distributor;
    use loa_protocol::topics::ReceiverTopic;
    use loa_protocol::{ReceiverSchedule, ReceiverStatus};
    use mqtt_common::*;
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;

    let broker = EmbeddedBroker::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let url = broker.url();
    let (db, _dir) = database().await;
    add_zone(&db, "z1").await;
    add_receiver(&db, "r1", "z1").await;
    let schedule_topic = ReceiverTopic::Schedule.for_receiver("r1");
    let status_topic = ReceiverTopic::Status.for_receiver("r1");
    let mut r1 = TestClient::connect(&url, "r1", None).await;
    r1.subscribe(&schedule_topic).await;

    let shutdown = CancellationToken::new();
    let (bus, events) = Bus::connect(&url, "ctl-online", signer()).await.unwrap();
    let horizon = chrono::Duration::days(7);
    let distributor = Distributor::spawn(db.clone(), bus.clone(), horizon, shutdown.clone());
    let ingest = loa_controller::ingest::spawn(
        db.clone(),
        bus.clone(),
        events,
        distributor,
        shutdown.clone(),
    );
    assert!(bus.wait_ready(WAIT).await);
    let next = async |r1: &mut TestClient, timeout| {
        let p = r1.next_on(&schedule_topic, timeout).await?;
        Some(open::<ReceiverSchedule>(&p))
    };
    let first = next(&mut r1, WAIT).await.expect("initial schedule");

    let mut status = ReceiverStatus::offline("r1");
    status.online = true;
    status.schedule_version = Some(first.version);
    r1.publish(&status_topic, loa_protocol::encode(&status), true)
        .await;
    let again = next(&mut r1, WAIT)
        .await
        .expect("republished when r1 comes online");
    assert_eq!(
        again.version, first.version,
        "unchanged content keeps its version"
    );

    // Up to date: nothing more.
    r1.publish(&status_topic, loa_protocol::encode(&status), true)
        .await;
    assert_eq!(next(&mut r1, Duration::from_secs(1)).await, None);

    // On an old version just after the publication: give it time.
    status.schedule_version = Some(first.version - 1);
    r1.publish(&status_topic, loa_protocol::encode(&status), true)
        .await;
    assert_eq!(
        next(&mut r1, Duration::from_secs(1)).await,
        None,
        "within the grace period"
    );

    // Still on an old version two minutes after the publication: republished.
    sqlx::query("UPDATE distributions SET published_at = published_at - 120000")
        .execute(&db)
        .await
        .unwrap();
    r1.publish(&status_topic, loa_protocol::encode(&status), true)
        .await;
    let lagging = next(&mut r1, WAIT)
        .await
        .expect("republished to a lagging receiver");
    assert_eq!(lagging.version, first.version);
    shutdown.cancel();
    tokio::time::timeout(WAIT, ingest).await.unwrap().unwrap();
}

/// Rejections a receiver lists in its statuses are stored once each, newest
/// kept, and survive a status that lists none (e.g. after its restart).
#[tokio::test]
async fn rejections_reported_by_receivers_are_kept() {
    use loa_controller::bus::Bus;
    use loa_controller::distribution::Distributor;
    use loa_protocol::ReceiverStatus;
    use loa_protocol::signed::Rejection;
    use loa_protocol::topics::ReceiverTopic;
    use mqtt_common::*;
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;

    let broker = EmbeddedBroker::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let url = broker.url();
    let (db, _dir) = database().await;
    add_zone(&db, "z1").await;
    add_receiver(&db, "r1", "z1").await;
    let status_topic = ReceiverTopic::Status.for_receiver("r1");
    let r1 = TestClient::connect(&url, "r1", None).await;
    let shutdown = CancellationToken::new();
    let (bus, events) = Bus::connect(&url, "ctl-rejections", signer())
        .await
        .unwrap();
    let ingest = loa_controller::ingest::spawn(
        db.clone(),
        bus.clone(),
        events,
        Distributor::default(),
        shutdown.clone(),
    );
    assert!(bus.wait_ready(WAIT).await);

    let stored = async || -> Vec<Rejection> {
        let json: String =
            sqlx::query_scalar("SELECT rejected_messages FROM receivers WHERE id = 'r1'")
                .fetch_one(&db)
                .await
                .unwrap();
        serde_json::from_str(&json).unwrap()
    };
    let at = chrono::Utc::now();
    let forged = Rejection {
        topic: ReceiverTopic::Schedule.for_receiver("r1"),
        reason: "bad_signature".into(),
        at,
    };
    let mut status = ReceiverStatus::offline("r1");
    status.online = true;
    status.rejected = vec![forged.clone()];
    // Sent twice (two heartbeats), then a status with none.
    for _ in 0..2 {
        r1.publish(&status_topic, loa_protocol::encode(&status), true)
            .await;
    }
    status.rejected.clear();
    r1.publish(&status_topic, loa_protocol::encode(&status), true)
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while stored().await.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the later statuses be handled too.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stored().await, vec![forged.clone()]);

    let replayed = Rejection {
        reason: "replayed".into(),
        at: at + chrono::Duration::seconds(1),
        ..forged.clone()
    };
    status.rejected = vec![forged.clone(), replayed.clone()];
    r1.publish(&status_topic, loa_protocol::encode(&status), true)
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while stored().await.len() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stored().await, vec![forged, replayed]);
    // Each new one is in the audit log once.
    let audited: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT path, object_id, detail FROM audit_log
         WHERE action = 'receiver.message_rejected' ORDER BY at",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    let topic = ReceiverTopic::Schedule.for_receiver("r1");
    assert_eq!(
        audited,
        vec![
            (
                topic.clone(),
                "r1".into(),
                r#"{"reason":"bad_signature"}"#.into()
            ),
            (topic, "r1".into(), r#"{"reason":"replayed"}"#.into()),
        ]
    );
    shutdown.cancel();
    tokio::time::timeout(WAIT, ingest).await.unwrap().unwrap();
}

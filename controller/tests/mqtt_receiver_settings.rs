//! Receiver settings and commands over the embedded broker: the distributor
//! publishes, retained and signed, the settings of every receiver whose
//! volume was set from the console when it starts (none for the others, so
//! they keep their `--volume`), and again with the newer version after a
//! change; a test tone command goes out on the receiver's commands topic.

mod mqtt_common;

use std::time::Duration;

use loa_controller::broker::EmbeddedBroker;
use loa_controller::bus::Bus;
use loa_controller::distribution::Distributor;
use loa_protocol::topics::ReceiverTopic;
use loa_protocol::{CommandKind, ReceiverCommand, ReceiverSettings};
use mqtt_common::*;
use tokio_util::sync::CancellationToken;

async fn set_volume(db: &sqlx::SqlitePool, receiver: &str, volume: i64, version: i64) {
    sqlx::query("UPDATE receivers SET volume = $1, settings_version = $2 WHERE id = $3")
        .bind(volume)
        .bind(version)
        .bind(receiver)
        .execute(db)
        .await
        .unwrap();
}

#[tokio::test]
async fn settings_are_published_at_start_and_on_change_and_commands_go_out() {
    let broker = EmbeddedBroker::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let url = broker.url();
    let (db, _dir) = database().await;
    add_zone(&db, "z1").await;
    add_receiver(&db, "r1", "z1").await;
    add_receiver(&db, "r2", "z1").await;
    set_volume(&db, "r1", 30, 5).await;

    let mut client = TestClient::connect(&url, "settings-watcher", None).await;
    for r in ["r1", "r2"] {
        client
            .subscribe(&ReceiverTopic::Settings.for_receiver(r))
            .await;
    }
    client
        .subscribe(&ReceiverTopic::Commands.for_receiver("r1"))
        .await;
    let shutdown = CancellationToken::new();
    let (bus, _events) = Bus::connect(&url, "ctl-settings", signer()).await.unwrap();
    let distributor =
        Distributor::spawn(db.clone(), bus, chrono::Duration::days(7), shutdown.clone());

    let r1 = ReceiverTopic::Settings.for_receiver("r1");
    let publish = client
        .next_on(&r1, Duration::from_secs(10))
        .await
        .expect("r1's settings are published at start");
    let settings: ReceiverSettings = open(&publish);
    assert_eq!(
        settings,
        ReceiverSettings {
            receiver_id: "r1".into(),
            version: 5,
            volume: 30,
            emergency_volume: None,
        }
    );
    // Retained: a receiver subscribing later gets them from the broker.
    let mut late = TestClient::connect(&url, "late-r1", None).await;
    late.subscribe(&r1).await;
    let kept = late
        .next_on(&r1, Duration::from_secs(5))
        .await
        .expect("retained settings");
    assert!(kept.retain);
    assert_eq!(open::<ReceiverSettings>(&kept), settings);
    let r2 = ReceiverTopic::Settings.for_receiver("r2");
    assert!(
        client.next_on(&r2, Duration::from_secs(1)).await.is_none(),
        "no settings for a receiver whose volume was never set"
    );

    set_volume(&db, "r1", 60, 6).await;
    distributor.settings_changed("r1");
    let settings: ReceiverSettings = open(
        &client
            .next_on(&r1, Duration::from_secs(10))
            .await
            .expect("new settings after a change"),
    );
    assert_eq!((settings.version, settings.volume), (6, 60));
    assert_eq!(settings.emergency_volume, None);

    // An emergency volume set from the console travels with it.
    sqlx::query("UPDATE receivers SET emergency_volume = 85, settings_version = 7 WHERE id = 'r1'")
        .execute(&db)
        .await
        .unwrap();
    distributor.settings_changed("r1");
    let settings: ReceiverSettings = open(
        &client
            .next_on(&r1, Duration::from_secs(10))
            .await
            .expect("new settings after the emergency volume changed"),
    );
    assert_eq!(
        (settings.version, settings.volume, settings.emergency_volume),
        (7, 60, Some(85))
    );

    let command = ReceiverCommand {
        command_id: "c-1".into(),
        issued_at: chrono::Utc::now(),
        kind: CommandKind::TestTone { seconds: 5 },
    };
    distributor.send_command("r1", &command).await.unwrap();
    let publish = client
        .next_on(
            &ReceiverTopic::Commands.for_receiver("r1"),
            Duration::from_secs(10),
        )
        .await
        .expect("the command is published");
    assert!(!publish.retain, "commands are not retained");
    let received: ReceiverCommand = open(&publish);
    assert_eq!(received, command);
    shutdown.cancel();
}

//! The embedded broker and the controller's bus against it: retained
//! messages, last wills, large payloads, persistent sessions, and a bus that
//! starts before its broker.

mod mqtt_common;

use std::time::Duration;

use loa_controller::broker::EmbeddedBroker;
use loa_controller::bus::{Bus, BusError};
use loa_protocol::MAX_PAYLOAD_BYTES;
use loa_protocol::topics::ReceiverTopic;
use mqtt_common::{TestClient, WAIT, free_port, open, scenarios, signer};
use rumqttc::QoS;

fn broker() -> EmbeddedBroker {
    EmbeddedBroker::start("127.0.0.1:0".parse().unwrap()).expect("embedded broker starts")
}

#[tokio::test]
async fn retained_schedule_reaches_a_late_subscriber() {
    let broker = broker();
    scenarios::retained_schedule_reaches_late_subscriber(&broker.url()).await;
}

#[tokio::test]
async fn last_will_is_published_when_a_receiver_drops() {
    let broker = broker();
    scenarios::last_will_is_published_when_a_receiver_drops(&broker.url()).await;
}

#[tokio::test]
async fn reports_sent_while_the_controller_is_away_arrive_on_reconnect() {
    let broker = broker();
    scenarios::reports_sent_while_controller_away_arrive_on_reconnect(&broker.url()).await;
}

#[tokio::test]
async fn payloads_up_to_the_protocol_limit_pass_and_larger_are_refused() {
    let broker = broker();
    let url = broker.url();
    let (bus, _events) = Bus::connect(&url, "ctl-large", signer()).await.unwrap();
    assert!(bus.wait_ready(WAIT).await);
    let topic = ReceiverTopic::Schedule.for_receiver("big");
    let mut client = TestClient::connect(&url, "big", None).await;
    client.subscribe(&topic).await;

    // A JSON message just under the limit once signed (the envelope adds
    // a few hundred bytes) is delivered intact.
    let text: String = (0..MAX_PAYLOAD_BYTES - 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let payload = serde_json::to_vec(&text).unwrap();
    bus.publish(topic.clone(), payload.clone(), QoS::AtLeastOnce, false)
        .await
        .unwrap();
    let got = client
        .next_on(&topic, WAIT)
        .await
        .expect("4 MiB payload delivered");
    assert_eq!(open::<String>(&got), text, "payload intact");

    let too_big = vec![b' '; MAX_PAYLOAD_BYTES + 1];
    let err = bus
        .publish(topic.clone(), too_big, QoS::AtLeastOnce, false)
        .await
        .unwrap_err();
    assert!(
        matches!(err, BusError::TooLarge(n) if n == MAX_PAYLOAD_BYTES + 1),
        "{err}"
    );
    // At the limit itself, the signed envelope would exceed it.
    let at_limit = vec![b' '; MAX_PAYLOAD_BYTES];
    let err = bus
        .publish(topic.clone(), at_limit, QoS::AtLeastOnce, false)
        .await
        .unwrap_err();
    assert!(
        matches!(err, BusError::TooLarge(n) if n > MAX_PAYLOAD_BYTES),
        "{err}"
    );
    // Only text can be signed.
    let err = bus
        .publish(topic, vec![0xff, 0xfe], QoS::AtLeastOnce, false)
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::Signing(_)), "{err}");
}

#[tokio::test]
async fn the_bus_waits_for_a_broker_that_starts_later() {
    let port = free_port();
    let url = format!("mqtt://127.0.0.1:{port}");
    let (bus, _events) = Bus::connect(&url, "ctl-early", signer())
        .await
        .expect("connect returns without a broker");
    assert!(!bus.is_ready());
    let schedule_topic = ReceiverTopic::Schedule.for_receiver("early");
    bus.publish(
        schedule_topic.clone(),
        b"{\"queued\":true}".to_vec(),
        QoS::AtLeastOnce,
        true,
    )
    .await
    .expect("publishing queues while disconnected");
    tokio::time::sleep(Duration::from_millis(700)).await;

    let broker = EmbeddedBroker::start(format!("127.0.0.1:{port}").parse().unwrap()).unwrap();
    assert_eq!(broker.url(), url);
    assert!(
        bus.wait_ready(Duration::from_secs(15)).await,
        "bus connects once the broker is up"
    );
    let mut client = TestClient::connect(&url, "early", None).await;
    client.subscribe(&schedule_topic).await;
    let got = client
        .next_on(&schedule_topic, WAIT)
        .await
        .expect("queued retained publish delivered");
    assert_eq!(
        open::<serde_json::Value>(&got),
        serde_json::json!({"queued": true})
    );
}

#[tokio::test]
async fn bad_broker_urls_are_refused() {
    for url in ["http://127.0.0.1:1883", "127.0.0.1:1883", "ws://h:8883"] {
        assert!(
            matches!(
                Bus::connect(url, "x", signer()).await,
                Err(BusError::InvalidUrl { .. })
            ),
            "{url}"
        );
    }
    // TLS is supported, but only with the CA that signed the broker's certificate.
    assert!(matches!(
        Bus::connect("mqtts://h:8883", "x", signer()).await,
        Err(BusError::MissingCa(_))
    ));
}

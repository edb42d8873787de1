//! The same MQTT scenarios against an external Mosquitto (the `--broker`
//! path). Mosquitto is started as a child process; the test fails if the
//! binary is missing, since the test set-up installs it.

mod mqtt_common;

use mqtt_common::{Mosquitto, scenarios};

fn mosquitto() -> Mosquitto {
    Mosquitto::start().expect("mosquitto is installed (apt-get install mosquitto)")
}

#[tokio::test]
async fn retained_schedule_reaches_a_late_subscriber() {
    let broker = mosquitto();
    scenarios::retained_schedule_reaches_late_subscriber(&broker.url).await;
}

#[tokio::test]
async fn last_will_is_published_when_a_receiver_drops() {
    let broker = mosquitto();
    scenarios::last_will_is_published_when_a_receiver_drops(&broker.url).await;
}

#[tokio::test]
async fn ingest_stores_statuses_and_acknowledges_reports() {
    let broker = mosquitto();
    scenarios::ingest_stores_statuses_and_acks_reports(&broker.url).await;
}

#[tokio::test]
async fn reports_sent_while_the_controller_is_away_arrive_on_reconnect() {
    let broker = mosquitto();
    scenarios::reports_sent_while_controller_away_arrive_on_reconnect(&broker.url).await;
}

//! Proof of play with interruptions: a receiver's report listing the live
//! broadcasts that interrupted a scheduled play is stored by ingest and
//! shown by `GET /plays` (JSON: the list; CSV: their count).

mod live_common;

use std::time::Duration;

use chrono::{TimeZone, Utc};
use live_common::{LiveTest, WAIT, open, signer, unique};
use loa_controller::bus::Bus;
use loa_controller::distribution::Distributor;
use loa_protocol::topics::ReceiverTopic;
use loa_protocol::{Interruption, PlayOutcome, PlayReport, ReportAck};
use reqwest::StatusCode;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interruptions_are_stored_and_reported() {
    let t = LiveTest::start().await;
    t.receiver("thon-1", "loa-1").await;
    let (bus, events) = Bus::connect(&t.broker_url, &unique("ctl"), signer())
        .await
        .unwrap();
    assert!(bus.wait_ready(WAIT).await);
    let _ingest = loa_controller::ingest::spawn(
        t.db.clone(),
        bus,
        events,
        Distributor::default(),
        t.tasks.child_token(),
    );

    // A receiver reporting a play interrupted twice by live broadcasts.
    let (host, port) = loa_controller::bus::parse_broker_url(&t.broker_url).unwrap();
    let mut options = MqttOptions::new(unique("loa-1"), host, port);
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let (tx, mut acks) = tokio::sync::mpsc::unbounded_channel();
    let (sub_tx, mut subacks) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => drop(tx.send(p)),
                Ok(Event::Incoming(Packet::SubAck(_))) => drop(sub_tx.send(())),
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    client
        .subscribe(ReceiverTopic::Acks.for_receiver("loa-1"), QoS::AtLeastOnce)
        .await
        .unwrap();
    tokio::time::timeout(WAIT, subacks.recv()).await.unwrap();
    let at = |s: u32| Utc.with_ymd_and_hms(2026, 11, 24, 6, 30, s).unwrap();
    let interruptions = vec![
        Interruption {
            broadcast_id: "6f1c2d3e-0000-4000-8000-000000000001".into(),
            from: at(10),
            to: at(25),
        },
        Interruption {
            broadcast_id: "6f1c2d3e-0000-4000-8000-000000000002".into(),
            from: at(40),
            to: at(45),
        },
    ];
    let report = |id: &str, interruptions: Vec<Interruption>| PlayReport {
        report_id: id.into(),
        receiver_id: "loa-1".into(),
        event_id: "s1@1795000000000".into(),
        programme_id: "ban-tin".into(),
        schedule_id: "s1".into(),
        scheduled_at: at(0),
        started_at: Some(at(0)),
        ended_at: Some(at(59)),
        outcome: PlayOutcome::Completed,
        detail: None,
        interruptions,
    };
    for r in [
        report("r-1", interruptions.clone()),
        report("r-2", Vec::new()),
    ] {
        client
            .publish(
                ReceiverTopic::Plays.for_receiver("loa-1"),
                QoS::AtLeastOnce,
                false,
                loa_protocol::encode(&r),
            )
            .await
            .unwrap();
    }
    let mut acked = Vec::new();
    while acked.len() < 2 {
        let p = tokio::time::timeout(WAIT, acks.recv())
            .await
            .expect("ack")
            .unwrap();
        let ack: ReportAck = open(&p);
        acked.extend(ack.report_ids);
    }

    let (status, plays) = t.get("/plays?receiver=loa-1").await;
    assert_eq!(status, StatusCode::OK);
    let by_id = |id: &str| {
        plays
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["report_id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(
        by_id("r-1")["interruptions"],
        json!([
            {"broadcast_id": "6f1c2d3e-0000-4000-8000-000000000001",
             "from": "2026-11-24T06:30:10Z", "to": "2026-11-24T06:30:25Z"},
            {"broadcast_id": "6f1c2d3e-0000-4000-8000-000000000002",
             "from": "2026-11-24T06:30:40Z", "to": "2026-11-24T06:30:45Z"}
        ])
    );
    assert_eq!(by_id("r-2")["interruptions"], json!([]));

    let csv = t
        .client
        .get(format!("{}/plays?receiver=loa-1&format=csv", t.base))
        .bearer_auth(&t.token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_string)
        .collect();
    let col = header
        .iter()
        .position(|h| h == "interruptions")
        .expect("interruptions column");
    let report_col = header.iter().position(|h| h == "report_id").unwrap();
    let mut counts: Vec<(String, String)> = reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            (r[report_col].to_string(), r[col].to_string())
        })
        .collect();
    counts.sort();
    assert_eq!(
        counts,
        vec![("r-1".into(), "2".into()), ("r-2".into(), "0".into())]
    );
    task.abort();
}

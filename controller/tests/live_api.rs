//! `POST/GET/DELETE /api/v1/broadcasts`: validation and errors, in the
//! project's error shape; the clock responder on the live link.

mod live_common;

use std::time::Duration;

use live_common::{LiveTest, WAIT, unique};
use loa_protocol::live::{ClockReply, ClockRequest, clock_reply_topic, clock_request_topic};
use reqwest::StatusCode;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;

#[tokio::test]
async fn broadcast_requests_are_validated() {
    let t = LiveTest::start().await;
    t.receiver("thon-1", "loa-1").await;
    let post = |body: serde_json::Value| t.post("/broadcasts", body);
    let relay = |url: &str| json!({"source": {"type": "relay", "url": url}, "targets": {"zones": ["thon-1"]}});

    // Without a token.
    let anonymous = t
        .client
        .post(format!("{}/broadcasts", t.base))
        .json(&json!({"source": {"type": "microphone"}, "targets": {"zones": ["thon-1"]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    let cases = [
        (
            json!({"source": {"type": "television"}, "targets": {"zones": ["thon-1"]}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_fields",
        ),
        (
            json!({"targets": {"zones": ["thon-1"]}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_fields",
        ),
        (
            json!({"source": {"type": "programme", "id": "p"}, "targets": {}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "no_targets",
        ),
        (
            json!({"source": {"type": "programme", "id": "p"}, "targets": {"zones": ["khong-co"]}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_zone",
        ),
        (
            json!({"source": {"type": "programme", "id": "p"}, "targets": {"receivers": ["khong-co"]}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_receiver",
        ),
        (
            json!({"source": {"type": "programme", "id": "p"}, "targets": {"zones": ["a/b"]}}),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            json!({"source": {"type": "programme", "id": "khong-co"}, "targets": {"zones": ["thon-1"]}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_programme",
        ),
        (
            json!({"source": {"type": "browser"}, "targets": {"zones": ["thon-1"]}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_source",
        ),
        (
            json!({"source": {"type": "microphone"}, "targets": {"zones": ["thon-1"]}, "priority": "urgent"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_fields",
        ),
        (
            json!({"source": {"type": "programme", "id": "p"}, "targets": {"zones": ["thon-1"]}, "duration_ms": 10}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_duration",
        ),
        (
            relay("ftp://127.0.0.1/x.mp3"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_relay_url",
        ),
        (
            relay("không phải địa chỉ"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_relay_url",
        ),
    ];
    for (body, status, code) in cases {
        let reply = post(body.clone()).await;
        LiveTest::assert_error(&reply, status, code);
    }

    // A relay URL nobody answers on: refused with a clear error, at once.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let reply = post(relay(&format!("http://127.0.0.1:{closed}/vov1.mp3"))).await;
    LiveTest::assert_error(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "relay_unreachable",
    );
    assert!(
        reply.1["error"].as_str().unwrap().contains("127.0.0.1"),
        "{}",
        reply.1
    );

    // Nothing went on air, and nothing was recorded.
    let (status, list) = t.get("/broadcasts").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list, json!([]));
    let (_, all) = t.get("/broadcasts?all=true").await;
    assert_eq!(all, json!([]));

    // Ids in the path.
    LiveTest::assert_error(
        &t.get("/broadcasts/abc").await,
        StatusCode::BAD_REQUEST,
        "invalid_id",
    );
    let unknown = uuid::Uuid::new_v4();
    LiveTest::assert_error(
        &t.get(&format!("/broadcasts/{unknown}")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    LiveTest::assert_error(
        &t.delete(&format!("/broadcasts/{unknown}")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

#[tokio::test]
async fn a_disabled_hub_says_so() {
    // The API tests' state has no live link: starting is refused with 503, not a panic.
    let dir = tempfile::tempdir().unwrap();
    let db = loa_controller::db::open(dir.path()).await.unwrap();
    let store = loa_controller::store::AudioStore::open(dir.path()).unwrap();
    let state = loa_controller::state::AppState::new(
        db,
        store,
        loa_controller::distribution::Distributor::default(),
        1024,
    );
    let err = state
        .live
        .start_broadcast(loa_controller::live::StartRequest {
            source: loa_controller::live::SourceSpec::Microphone,
            targets: Default::default(),
            priority: Default::default(),
            duration: None,
            created_by: "admin".into(),
            occurrence: None,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, loa_controller::live::LiveError::Disabled),
        "{err}"
    );
    assert!(state.live.list_on_air().is_empty());
}

#[tokio::test]
async fn the_clock_responder_answers_each_request() {
    let t = LiveTest::start().await;
    let (host, port) = loa_controller::bus::parse_broker_url(&t.broker_url).unwrap();
    let mut options = MqttOptions::new(unique("clock"), host, port);
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let (tx, mut replies) = tokio::sync::mpsc::unbounded_channel();
    let (ack_tx, mut acks) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let t4 = loa_controller::live::clock::now_us();
                    drop(tx.send((p, t4)));
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => drop(ack_tx.send(())),
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    client
        .subscribe(clock_reply_topic("loa-7"), QoS::AtMostOnce)
        .await
        .unwrap();
    tokio::time::timeout(WAIT, acks.recv()).await.unwrap();

    // A malformed request is ignored; the next ones are answered in turn.
    client
        .publish(
            clock_request_topic("loa-7"),
            QoS::AtMostOnce,
            false,
            b"{nope".to_vec(),
        )
        .await
        .unwrap();
    for seq in 1..=5u64 {
        let t1 = loa_controller::live::clock::now_us();
        let request = ClockRequest { seq, t1_us: t1 };
        client
            .publish(
                clock_request_topic("loa-7"),
                QoS::AtMostOnce,
                false,
                serde_json::to_vec(&request).unwrap(),
            )
            .await
            .unwrap();
        let (publish, t4) = tokio::time::timeout(WAIT, replies.recv())
            .await
            .expect("a clock reply")
            .unwrap();
        assert_eq!(publish.topic, clock_reply_topic("loa-7"));
        let reply: ClockReply = serde_json::from_slice(&publish.payload).unwrap();
        assert_eq!((reply.seq, reply.t1_us), (seq, t1));
        // One machine, one clock: t1 ≤ t2 ≤ t3 ≤ t4.
        assert!(
            t1 <= reply.t2_us && reply.t2_us <= reply.t3_us && reply.t3_us <= t4,
            "t1 {t1} t2 {} t3 {} t4 {t4}",
            reply.t2_us,
            reply.t3_us
        );
    }
    // Replies go only to the asking receiver's topic.
    client
        .publish(
            clock_request_topic("loa-8"),
            QoS::AtMostOnce,
            false,
            serde_json::to_vec(&ClockRequest { seq: 9, t1_us: 1 }).unwrap(),
        )
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), replies.recv())
            .await
            .is_err(),
        "no reply on another receiver's topic"
    );
    task.abort();
}

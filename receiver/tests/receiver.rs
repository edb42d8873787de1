//! The whole receiver (`loa_receiver::run`) against a real Mosquitto broker
//! and an HTTP server standing in for the controller's audio endpoint:
//! retained schedule → fetch (with retries while the controller is down) →
//! play into a WAV file → proof of play over MQTT → deleted on ack; forged
//! and malformed messages ignored; after a restart with broker and
//! controller down, it still plays from disk and delivers the report once
//! the broker is back.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration as StdDuration, Instant};

use chrono::{Duration, Utc};
use loa_hardware::OutputSpec;
use loa_protocol::topics::ReceiverTopic;
use loa_protocol::{PlayOutcome, PlayReport, Priority, ReceiverStatus, ReportAck, decode, encode};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::{mpsc, oneshot};

const ID: &str = "thon-1";
const TOKEN: &str = "secret-token-1";

/// A test-side MQTT client playing the controller's part.
struct Controller {
    client: AsyncClient,
    messages: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Controller {
    async fn connect(port: u16) -> Controller {
        static CONNECTIONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = CONNECTIONS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut options = MqttOptions::new(format!("test-controller-{n}"), "127.0.0.1", port);
        options.set_max_packet_size(8 << 20, 8 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (tx, messages) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(StdDuration::from_millis(100)).await,
                }
            }
        });
        for kind in [ReceiverTopic::Status, ReceiverTopic::Plays] {
            client
                .subscribe(kind.for_receiver(ID), QoS::AtLeastOnce)
                .await
                .unwrap();
        }
        Controller {
            client,
            messages,
            task,
        }
    }

    /// Publishes `payload` signed, as the controller does.
    async fn publish(&self, kind: ReceiverTopic, retain: bool, payload: Vec<u8>) {
        let topic = kind.for_receiver(ID);
        let signed = common::sign(&topic, &payload);
        self.publish_raw(kind, retain, signed).await;
    }

    /// Publishes exactly `payload` (unsigned or forged).
    async fn publish_raw(&self, kind: ReceiverTopic, retain: bool, payload: Vec<u8>) {
        self.client
            .publish(kind.for_receiver(ID), QoS::AtLeastOnce, retain, payload)
            .await
            .unwrap();
    }

    /// Waits for a message on `kind` that `accept` takes.
    async fn expect<T: serde::de::DeserializeOwned + std::fmt::Debug>(
        &mut self,
        kind: ReceiverTopic,
        timeout: StdDuration,
        accept: impl Fn(&T) -> bool,
    ) -> T {
        let topic = kind.for_receiver(ID);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (t, payload) = tokio::time::timeout_at(deadline, self.messages.recv())
                .await
                .unwrap_or_else(|_| panic!("no matching message on {topic}"))
                .unwrap();
            if t == topic
                && let Ok(message) = decode::<T>(&payload)
                && accept(&message)
            {
                return message;
            }
        }
    }
}

struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn start_receiver(cache: &Path, wav: &Path, controller: &str, broker_port: u16) -> Running {
    let config = loa_receiver::Config {
        receiver_id: ID.into(),
        token: TOKEN.into(),
        controller: controller.into(),
        broker: format!("mqtt://127.0.0.1:{broker_port}").parse().unwrap(),
        cache_dir: cache.to_path_buf(),
        output: OutputSpec::Wav {
            path: wav.to_path_buf(),
        },
        amplifier: "none".into(),
        heartbeat: StdDuration::from_secs(1),
        prepare: StdDuration::from_millis(1500),
        cache_grace: StdDuration::from_secs(3600),
        volume: 1.0,
        emergency_volume: 1.0,
        controller_key: Some(common::controller_public_key()),
        controller_tls: Default::default(),
    };
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(loa_receiver::run(config, async move {
        let _ = stopped.await;
    }));
    Running { stop, task }
}

impl Running {
    async fn shutdown(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(StdDuration::from_secs(10), self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

fn report_file(cache: &Path, report: &PlayReport) -> PathBuf {
    cache
        .join("reports")
        .join(format!("{}.json", report.report_id))
}

async fn wait_until(what: &str, timeout: StdDuration, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(StdDuration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetches_plays_reports_and_keeps_going_offline() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("info,loa_receiver=debug")
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let broker = common::Mosquitto::start();
    let http_port = common::free_port();
    let controller_url = format!("http://127.0.0.1:{http_port}");
    let mut controller = Controller::connect(broker.port).await;

    let audio = common::ogg_opus(&common::tone(1000.0, 1.0, 0.5));
    let programme = common::programme_ref(&audio, 1000);
    let t0 = Utc::now();
    let first = common::event(
        "s1",
        "bulletin",
        t0 + Duration::seconds(6),
        1000,
        Priority::Normal,
    );
    let second = common::event(
        "s1",
        "bulletin",
        t0 + Duration::seconds(15),
        1000,
        Priority::Normal,
    );
    let mut schedule = common::schedule(
        ID,
        1,
        &[("bulletin", &programme)],
        vec![first.clone(), second.clone()],
    );
    schedule.generated_at = t0;
    controller
        .publish(ReceiverTopic::Schedule, true, encode(&schedule))
        .await;

    // The controller's HTTP side is down at first: the receiver must retry.
    let receiver = start_receiver(
        &cache,
        &dir.path().join("out1.wav"),
        &controller_url,
        broker.port,
    );
    tokio::time::sleep(StdDuration::from_millis(2000)).await;
    assert!(
        !cache
            .join("audio")
            .join(format!("{}.opus", programme.sha256))
            .exists()
    );
    let server =
        common::AudioServer::start_on(TcpListener::bind(("127.0.0.1", http_port)).unwrap(), TOKEN);
    server.add("bulletin", audio.clone());

    // Forged, stale and malformed messages change nothing.
    let mut forged = schedule.clone();
    forged.receiver_id = "thon-2".into();
    forged.version = 50;
    forged.events.clear();
    controller
        .publish(ReceiverTopic::Schedule, false, encode(&forged))
        .await;
    controller
        .publish(
            ReceiverTopic::Schedule,
            false,
            b"{\"receiver_id\":".to_vec(),
        )
        .await;
    controller
        .publish(ReceiverTopic::Acks, false, b"[1,2,3]".to_vec())
        .await;
    controller
        .publish_raw(ReceiverTopic::Acks, false, b"[1,2,3]".to_vec())
        .await;

    let status: ReceiverStatus = controller
        .expect(
            ReceiverTopic::Status,
            StdDuration::from_secs(10),
            |s: &ReceiverStatus| s.online && s.cached == vec!["bulletin".to_string()],
        )
        .await;
    assert_eq!(status.schedule_version, Some(1));
    assert_eq!(status.heartbeat_secs, Some(1));
    assert!(server.requests.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    assert_eq!(
        server
            .unauthorised
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );

    let playing: ReceiverStatus = controller
        .expect(
            ReceiverTopic::Status,
            StdDuration::from_secs(10),
            |s: &ReceiverStatus| s.now_playing.is_some(),
        )
        .await;
    assert_eq!(playing.now_playing.unwrap().event_id, first.id);

    let report: PlayReport = controller
        .expect(
            ReceiverTopic::Plays,
            StdDuration::from_secs(10),
            |r: &PlayReport| r.event_id == first.id,
        )
        .await;
    assert_eq!(report.outcome, PlayOutcome::Completed, "{report:?}");
    assert_eq!(
        (report.receiver_id.as_str(), report.schedule_id.as_str()),
        (ID, "s1")
    );
    let late = (report.started_at.unwrap() - first.starts_at)
        .num_microseconds()
        .unwrap() as f64
        / 1000.0;
    println!("first play started {late:+.2} ms from its instant");
    assert!(late.abs() <= 20.0);

    // Kept on disk until acknowledged; re-sent meanwhile.
    assert!(report_file(&cache, &report).exists());
    tokio::time::sleep(StdDuration::from_millis(500)).await;
    assert!(report_file(&cache, &report).exists());
    let ack = ReportAck {
        report_ids: vec![report.report_id.clone()],
    };
    controller
        .publish(ReceiverTopic::Acks, false, encode(&ack))
        .await;
    wait_until(
        "the acknowledged report is deleted",
        StdDuration::from_secs(5),
        || !report_file(&cache, &report).exists(),
    )
    .await;

    receiver.shutdown().await;
    let offline: ReceiverStatus = controller
        .expect(
            ReceiverTopic::Status,
            StdDuration::from_secs(5),
            |s: &ReceiverStatus| !s.online,
        )
        .await;
    assert_eq!(offline.receiver_id, ID);
    let samples = common::read_wav(&dir.path().join("out1.wav"));
    let heard = common::offset(&samples, 0.05).unwrap() - common::onset(&samples, 0.05).unwrap();
    assert!(
        (heard as f64 / 48_000.0 - 1.0).abs() < 0.01,
        "{heard} samples of tone"
    );

    // Restart with the broker and the controller both down: the schedule and
    // the audio on disk are enough to play, and the report waits on disk.
    let port = broker.port;
    drop(broker);
    drop(server);
    drop(controller);
    let receiver = start_receiver(&cache, &dir.path().join("out2.wav"), &controller_url, port);
    let expected_report = cache.join("reports").join(format!(
        "{}.json",
        loa_receiver::reports::report_id_for(ID, &second.id)
    ));
    let wait = (second.natural_end() - Utc::now()).to_std().unwrap() + StdDuration::from_secs(3);
    wait_until("the offline play is reported on disk", wait, || {
        expected_report.exists()
    })
    .await;
    let offline_report: PlayReport =
        serde_json::from_slice(&std::fs::read(&expected_report).unwrap()).unwrap();
    assert_eq!(
        offline_report.outcome,
        PlayOutcome::Completed,
        "{offline_report:?}"
    );

    // The broker comes back (without the retained schedule): the queued report arrives.
    let broker = common::Mosquitto::start_on(port);
    let mut controller = Controller::connect(port).await;
    let delivered: PlayReport = controller
        .expect(
            ReceiverTopic::Plays,
            StdDuration::from_secs(40),
            |r: &PlayReport| r.event_id == second.id,
        )
        .await;
    assert_eq!(delivered, offline_report);
    let ack = ReportAck {
        report_ids: vec![delivered.report_id.clone()],
    };
    controller
        .publish(ReceiverTopic::Acks, false, encode(&ack))
        .await;
    wait_until(
        "the delivered report is deleted",
        StdDuration::from_secs(5),
        || !expected_report.exists(),
    )
    .await;
    let status: ReceiverStatus = controller
        .expect(
            ReceiverTopic::Status,
            StdDuration::from_secs(5),
            |s: &ReceiverStatus| s.online,
        )
        .await;
    assert_eq!(
        status.schedule_version,
        Some(1),
        "the schedule kept on disk is still followed"
    );
    receiver.shutdown().await;
    drop(broker);
}

//! Only the controller's signed messages are obeyed: the whole receiver
//! (`loa_receiver::run`) against a real Mosquitto broker, with messages
//! published straight to the broker as an attacker on the network could.
//! The receiver learns the controller's key on first use (from the HTTP
//! stand-in), refuses forged, unsigned, replayed, misdirected and stale
//! messages, reports each in its status, and still follows the signed
//! schedule; the last sequence numbers survive a restart.

mod common;

use std::path::Path;
use std::time::Duration as StdDuration;

use chrono::{Duration, Utc};
use loa_hardware::OutputSpec;
use loa_protocol::signed::{self, SigningKey};
use loa_protocol::topics::ReceiverTopic;
use loa_protocol::{ReceiverStatus, ReportAck, encode};
use rumqttc::{AsyncClient, QoS};
use tokio::sync::{mpsc, oneshot};

const ID: &str = "thon-signed";
const TOKEN: &str = "secret-token-signed";

/// An MQTT client on the broker: publishes anything, collects statuses.
struct Peer {
    client: AsyncClient,
    statuses: mpsc::UnboundedReceiver<ReceiverStatus>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Peer {
    async fn connect(port: u16) -> Peer {
        let (client, statuses, task) = common::status_peer(port, "signed-test-peer", ID).await;
        Peer {
            client,
            statuses,
            task,
        }
    }

    async fn publish(&self, kind: ReceiverTopic, retain: bool, payload: Vec<u8>) {
        self.client
            .publish(kind.for_receiver(ID), QoS::AtLeastOnce, retain, payload)
            .await
            .unwrap();
    }

    /// The first status (within 10 s) that `accept` takes.
    async fn status(
        &mut self,
        what: &str,
        accept: impl Fn(&ReceiverStatus) -> bool,
    ) -> ReceiverStatus {
        let deadline = tokio::time::Instant::now() + StdDuration::from_secs(10);
        loop {
            let status = tokio::time::timeout_at(deadline, self.statuses.recv())
                .await
                .unwrap_or_else(|_| panic!("no status showing {what}"))
                .unwrap();
            if status.online && accept(&status) {
                return status;
            }
        }
    }
}

fn has(status: &ReceiverStatus, kind: ReceiverTopic, reason: &str) -> bool {
    let topic = kind.for_receiver(ID);
    status
        .rejected
        .iter()
        .any(|r| r.topic == topic && r.reason == reason)
}

struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn start(cache: &Path, controller: &str, port: u16, key: Option<String>) -> Running {
    let config = loa_receiver::Config {
        receiver_id: ID.into(),
        token: TOKEN.into(),
        controller: controller.into(),
        broker: format!("mqtt://127.0.0.1:{port}").parse().unwrap(),
        cache_dir: cache.to_path_buf(),
        output: OutputSpec::Wav {
            path: cache.with_extension("wav"),
        },
        amplifier: "none".into(),
        heartbeat: StdDuration::from_secs(1),
        prepare: StdDuration::from_millis(1500),
        cache_grace: StdDuration::from_secs(3600),
        volume: 1.0,
        emergency_volume: 1.0,
        controller_key: key,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_and_stale_messages_are_refused_and_reported() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("info,loa_receiver=debug")
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let broker = common::Mosquitto::start();
    let server = common::AudioServer::start(TOKEN);
    let mut peer = Peer::connect(broker.port).await;
    let schedule_topic = ReceiverTopic::Schedule.for_receiver(ID);

    // A forged schedule (signed by another key) is retained on the broker
    // before the receiver ever starts.
    let attacker = SigningKey::from_bytes(&[13; 32]);
    let mut forged = common::schedule(ID, 50, &[], Vec::new());
    forged.generated_at = Utc::now();
    let forged = signed::seal(
        &attacker,
        &schedule_topic,
        1 << 40,
        Utc::now(),
        &encode(&forged),
    )
    .unwrap();
    peer.publish(ReceiverTopic::Schedule, true, forged).await;

    // No --controller-key: the receiver trusts the key the controller serves.
    let receiver = start(&cache, &server.url(), broker.port, None);
    let status = peer
        .status("the forged schedule refused", |s| {
            has(s, ReceiverTopic::Schedule, "bad_signature")
        })
        .await;
    assert_eq!(
        status.schedule_version, None,
        "the forged schedule was not followed"
    );
    let kept = std::fs::read_to_string(cache.join(loa_receiver::trust::KEY_FILE)).unwrap();
    assert_eq!(
        kept.trim(),
        common::controller_public_key(),
        "key kept after first use"
    );

    // Unsigned, as before signing existed.
    let plain = common::schedule(ID, 60, &[], Vec::new());
    peer.publish(ReceiverTopic::Schedule, false, encode(&plain))
        .await;
    peer.status("the unsigned schedule refused", |s| {
        has(s, ReceiverTopic::Schedule, "malformed")
    })
    .await;

    // Signed for another receiver, replayed to this one.
    let other = common::sign(
        &ReceiverTopic::Schedule.for_receiver("thon-other"),
        &encode(&common::schedule(ID, 70, &[], Vec::new())),
    );
    peer.publish(ReceiverTopic::Schedule, false, other).await;
    peer.status("the misdirected schedule refused", |s| {
        has(s, ReceiverTopic::Schedule, "wrong_topic")
    })
    .await;

    // Two genuine schedules; the later-signed one (version 1) goes out first.
    let older_envelope = common::sign(
        &schedule_topic,
        &encode(&common::schedule(ID, 9, &[], Vec::new())),
    );
    let genuine = common::sign(
        &schedule_topic,
        &encode(&common::schedule(ID, 1, &[], Vec::new())),
    );
    peer.publish(ReceiverTopic::Schedule, true, genuine).await;
    peer.status("the signed schedule followed", |s| {
        s.schedule_version == Some(1)
    })
    .await;
    // The earlier-signed one, replayed: refused despite its higher version.
    peer.publish(ReceiverTopic::Schedule, false, older_envelope.clone())
        .await;
    let status = peer
        .status("the replayed schedule refused", |s| {
            has(s, ReceiverTopic::Schedule, "replayed")
        })
        .await;
    assert_eq!(status.schedule_version, Some(1));

    // An ack issued an hour ago is stale.
    let stale = common::sign_at(
        &ReceiverTopic::Acks.for_receiver(ID),
        &encode(&ReportAck {
            report_ids: vec!["x".into()],
        }),
        Utc::now() - Duration::hours(1),
    );
    peer.publish(ReceiverTopic::Acks, false, stale).await;
    peer.status("the stale ack refused", |s| {
        has(s, ReceiverTopic::Acks, "stale")
    })
    .await;
    receiver.shutdown().await;

    // After a restart (key and sequence numbers from disk, HTTP stand-in
    // gone): the retained genuine schedule is not a refusal, the replay
    // still is.
    drop(server);
    let receiver = start(&cache, "http://127.0.0.1:9", broker.port, None);
    let status = peer
        .status("the schedule still followed", |s| {
            s.schedule_version == Some(1)
        })
        .await;
    assert!(status.rejected.is_empty(), "{:?}", status.rejected);
    peer.publish(ReceiverTopic::Schedule, false, older_envelope)
        .await;
    let status = peer
        .status("the replay refused after a restart", |s| {
            has(s, ReceiverTopic::Schedule, "replayed")
        })
        .await;
    assert_eq!(status.schedule_version, Some(1));
    receiver.shutdown().await;
}

#[tokio::test]
async fn a_bad_pinned_key_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(
        dir.path(),
        "http://127.0.0.1:9",
        9,
        Some("not-a-key".into()),
    );
    let error = running.task.await.unwrap().unwrap_err().to_string();
    assert!(error.contains("--controller-key"), "{error}");
}

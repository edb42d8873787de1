//! Helpers shared by the `mqtt_*` integration tests: a plain rumqttc client
//! standing in for a receiver (the part under test is the controller side),
//! a Mosquitto child process, and a database with a few rows.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::Utc;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, Publish, QoS};
use sqlx::SqlitePool;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub mod scenarios;

/// How long a test waits for something that should happen promptly.
pub const WAIT: Duration = Duration::from_secs(10);

/// A free port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A raw MQTT client: collects every publish it receives.
pub struct TestClient {
    /// Request handle.
    pub client: AsyncClient,
    /// Publishes received, in order.
    publishes: mpsc::UnboundedReceiver<Publish>,
    /// SUBACKs received.
    subacks: mpsc::UnboundedReceiver<()>,
    /// The task polling the event loop; aborting it drops the TCP
    /// connection without DISCONNECT, like a crash.
    task: JoinHandle<()>,
}

impl TestClient {
    /// Connects (clean session) and waits for the CONNACK.
    pub async fn connect(url: &str, id: &str, will: Option<LastWill>) -> TestClient {
        let (host, port) = loa_controller::bus::parse_broker_url(url).unwrap();
        let mut options = MqttOptions::new(id, host, port);
        options.set_keep_alive(Duration::from_secs(5));
        options.set_max_packet_size(8 << 20, 8 << 20);
        if let Some(will) = will {
            options.set_last_will(will);
        }
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (pub_tx, publishes) = mpsc::unbounded_channel();
        let (sub_tx, subacks) = mpsc::unbounded_channel();
        let (conn_tx, mut connected) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => drop(conn_tx.send(())),
                    Ok(Event::Incoming(Packet::SubAck(_))) => drop(sub_tx.send(())),
                    Ok(Event::Incoming(Packet::Publish(p))) => drop(pub_tx.send(p)),
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(WAIT, connected.recv())
            .await
            .expect("test client connects");
        TestClient {
            client,
            publishes,
            subacks,
            task,
        }
    }

    /// Subscribes with QoS 1 and waits for the SUBACK.
    pub async fn subscribe(&mut self, filter: &str) {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        tokio::time::timeout(WAIT, self.subacks.recv())
            .await
            .expect("SUBACK")
            .unwrap();
    }

    /// Publishes with QoS 1.
    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>, retain: bool) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload.into())
            .await
            .unwrap();
    }

    /// The next publish on `topic` within `timeout`, skipping others.
    pub async fn next_on(&mut self, topic: &str, timeout: Duration) -> Option<Publish> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let p = tokio::time::timeout_at(deadline, self.publishes.recv())
                .await
                .ok()??;
            if p.topic == topic {
                return Some(p);
            }
        }
    }

    /// Simulates a crash: the connection drops without DISCONNECT.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// A Mosquitto broker run as a child process for one test.
pub struct Mosquitto {
    /// The broker process; killed on drop.
    child: Child,
    /// Holds the config file.
    _dir: tempfile::TempDir,
    /// `mqtt://127.0.0.1:PORT`.
    pub url: String,
}

impl Mosquitto {
    /// Starts Mosquitto on a free port, or returns `None` when the
    /// `mosquitto` binary is not installed.
    pub fn start() -> Option<Mosquitto> {
        let binary = [
            "/usr/sbin/mosquitto",
            "/usr/bin/mosquitto",
            "/usr/local/sbin/mosquitto",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\n"),
        )
        .unwrap();
        let child = Command::new(binary)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto starts");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = std::time::Instant::now() + WAIT;
        while TcpStream::connect(addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "mosquitto did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Mosquitto {
            child,
            _dir: dir,
            url: format!("mqtt://{addr}"),
        })
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh controller database (migrations applied) in a temporary directory.
pub async fn database() -> (SqlitePool, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let db = loa_controller::db::open(dir.path()).await.unwrap();
    (db, dir)
}

/// Inserts a zone.
pub async fn add_zone(db: &SqlitePool, id: &str) {
    sqlx::query("INSERT INTO zones (id, name, created_at) VALUES ($1, $1, $2)")
        .bind(id)
        .bind(Utc::now().timestamp_millis())
        .execute(db)
        .await
        .unwrap();
}

/// Inserts a receiver in `zone`.
pub async fn add_receiver(db: &SqlitePool, id: &str, zone: &str) {
    sqlx::query(
        "INSERT INTO receivers (id, name, zone_id, token_hash, created_at) VALUES ($1, $1, $2, 'token-' || $1, $3)",
    )
    .bind(id)
    .bind(zone)
    .bind(Utc::now().timestamp_millis())
    .execute(db)
    .await
    .unwrap();
}

/// Inserts a programme of `duration_ms`; its sha256 is derived from the id.
pub async fn add_programme(db: &SqlitePool, id: &str, duration_ms: i64) -> String {
    let sha = format!("{:0>64}", hex_of(id));
    sqlx::query(
        "INSERT INTO programmes (id, title, category, duration_ms, sha256, bytes, bitrate, created_at)
         VALUES ($1, $1, 'news', $2, $3, 12345, 32000, $4)",
    )
    .bind(id)
    .bind(duration_ms)
    .bind(&sha)
    .bind(Utc::now().timestamp_millis())
    .execute(db)
    .await
    .unwrap();
    sha
}

fn hex_of(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Inserts a schedule (`when` = start_local, timezone, rrule) with its
/// targets (`("zone"|"receiver", id)`).
pub async fn add_schedule(
    db: &SqlitePool,
    id: &str,
    programme: &str,
    (start_local, timezone, rrule): (&str, &str, Option<&str>),
    priority: &str,
    targets: &[(&str, &str)],
) {
    sqlx::query(
        "INSERT INTO schedules (id, programme_id, start_local, timezone, rrule, priority, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(id)
    .bind(programme)
    .bind(start_local)
    .bind(timezone)
    .bind(rrule)
    .bind(priority)
    .bind(Utc::now().timestamp_millis())
    .execute(db)
    .await
    .unwrap();
    for (kind, target) in targets {
        sqlx::query(
            "INSERT INTO schedule_targets (schedule_id, kind, target_id) VALUES ($1, $2, $3)",
        )
        .bind(id)
        .bind(kind)
        .bind(target)
        .execute(db)
        .await
        .unwrap();
    }
}

/// Polls `check` every 50 ms until it returns true or [`WAIT`] passes.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The controller signing key every bus of this test binary signs with
/// (created once, in a directory kept for the run).
pub fn signer() -> std::sync::Arc<loa_controller::signing::Signer> {
    static SIGNER: std::sync::OnceLock<std::sync::Arc<loa_controller::signing::Signer>> =
        std::sync::OnceLock::new();
    SIGNER
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap().keep();
            std::sync::Arc::new(loa_controller::signing::Signer::open(&dir).unwrap())
        })
        .clone()
}

/// Checks that `publish` is signed by [`signer`] for its topic and decodes
/// the message inside.
pub fn open<T: serde::de::DeserializeOwned>(publish: &rumqttc::Publish) -> T {
    let mut verifier =
        loa_protocol::signed::Verifier::new(signer().public_key(), Default::default());
    let opened = verifier
        .verify(
            &publish.topic,
            &publish.payload,
            chrono::Utc::now(),
            loa_protocol::signed::Freshness::WithinSecs(600),
        )
        .expect("signed by the test controller for this topic");
    loa_protocol::decode(opened.payload.as_bytes()).expect("message decodes")
}

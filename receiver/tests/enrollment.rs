//! Enrollment end to end: a real receiver started with no token (as
//! `loa-receiver run` without `--token` does: [`loa_receiver::enroll`] then
//! [`loa_receiver::run`]) against the real controller HTTP API (served on
//! 127.0.0.1) and a real Mosquitto broker. The receiver creates its key,
//! asks to be enrolled and waits; a technician (the admin) sees its code and
//! accepts it; the receiver collects its credential, pins the controller's
//! key (no trust on first use), comes online, refuses a schedule signed by
//! another key and plays the one signed by the controller's key. Restarted,
//! it uses the kept credential without asking again.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration as StdDuration;

use chrono::{Duration, Utc};
use loa_hardware::OutputSpec;
use loa_protocol::signed::{self, SigningKey};
use loa_protocol::topics::ReceiverTopic;
use loa_protocol::{Priority, ReceiverStatus, decode, encode};
use loa_receiver::enroll::{self, EnrollOptions};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

const ID: &str = "loa-cong-cho";
const PASSWORD: &str = "mật-khẩu-thử-nghiệm";

/// The real controller API on a free port.
struct Controller {
    url: String,
    signer: loa_controller::signing::Signer,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Controller {
    async fn start() -> Controller {
        use loa_controller::{db, distribution::Distributor, state::AppState, store::AudioStore};
        let dir = tempfile::tempdir().unwrap();
        let pool = db::open(dir.path()).await.unwrap();
        db::ensure_admin(&pool, Some(PASSWORD)).await.unwrap();
        let store = AudioStore::open(dir.path()).unwrap();
        let signer = loa_controller::signing::Signer::open(dir.path()).unwrap();
        let state = AppState::new(pool, store, Distributor::default(), 1 << 20)
            .with_controller_key(signer.public_key());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app =
            loa_controller::server::app(state).into_make_service_with_connect_info::<SocketAddr>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Controller {
            url: format!("http://{addr}"),
            signer,
            _dir: dir,
            task,
        }
    }
}

/// The admin's HTTP client.
struct Admin {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Admin {
    async fn login(controller: &Controller) -> Admin {
        let client = reqwest::Client::new();
        let base = format!("{}/api/v1", controller.url);
        let login: Value = client
            .post(format!("{base}/login"))
            .json(&json!({"username": "admin", "password": PASSWORD}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        Admin {
            token: login["token"].as_str().unwrap().to_string(),
            client,
            base,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

/// Collects the receiver's statuses from the broker.
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
        let options = MqttOptions::new("enrollment-test-peer", "127.0.0.1", port);
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (tx, statuses) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Ok(s) = decode::<ReceiverStatus>(&p.payload) {
                            let _ = tx.send(s);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(StdDuration::from_millis(100)).await,
                }
            }
        });
        client
            .subscribe(ReceiverTopic::Status.for_receiver(ID), QoS::AtLeastOnce)
            .await
            .unwrap();
        Peer {
            client,
            statuses,
            task,
        }
    }

    /// The first online status within `secs` that `accept` takes.
    async fn status(
        &mut self,
        what: &str,
        secs: u64,
        accept: impl Fn(&ReceiverStatus) -> bool,
    ) -> ReceiverStatus {
        let deadline = tokio::time::Instant::now() + StdDuration::from_secs(secs);
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

struct Running {
    stop: oneshot::Sender<()>,
    enrolling: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Starts the receiver as `loa-receiver run` without `--token` does.
fn start(cache: &Path, controller: &str, port: u16) -> Running {
    let (stop, stopped) = oneshot::channel::<()>();
    let enrolling = CancellationToken::new();
    let cache = cache.to_path_buf();
    let controller = controller.to_string();
    let cancel = enrolling.clone();
    let task = tokio::spawn(async move {
        let options = EnrollOptions {
            controller: controller.clone(),
            hostname: "may-loa-cong-cho".into(),
            requested_id: Some(ID.into()),
            poll: StdDuration::from_millis(200),
            tls: Default::default(),
        };
        let Some(credentials) = enroll::enroll(&cache, &options, &cancel).await? else {
            return Ok(());
        };
        let config = loa_receiver::Config {
            receiver_id: credentials.receiver_id,
            token: credentials.token,
            controller,
            broker: format!("mqtt://127.0.0.1:{port}").parse().unwrap(),
            cache_dir: cache.clone(),
            output: OutputSpec::Wav {
                path: cache.with_extension("wav"),
            },
            amplifier: "none".into(),
            heartbeat: StdDuration::from_secs(1),
            prepare: StdDuration::from_millis(500),
            cache_grace: StdDuration::from_secs(3600),
            volume: 1.0,
            emergency_volume: 1.0,
            controller_key: None,
            controller_tls: Default::default(),
        };
        loa_receiver::run(config, async move {
            let _ = stopped.await;
        })
        .await
    });
    Running {
        stop,
        enrolling,
        task,
    }
}

impl Running {
    async fn shutdown(self) {
        self.enrolling.cancel();
        let _ = self.stop.send(());
        tokio::time::timeout(StdDuration::from_secs(10), self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_with_no_token_enrolls_and_follows_signed_schedules() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("info,loa_receiver=debug")
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let controller = Controller::start().await;
    let broker = common::Mosquitto::start();
    let mut peer = Peer::connect(broker.port).await;
    let admin = Admin::login(&controller).await;
    let (status, _) = admin
        .call(
            reqwest::Method::POST,
            "/zones",
            Some(json!({"id": "z1", "name": "Thôn Một"})),
        )
        .await;
    assert_eq!(status, 201);

    let receiver = start(&cache, &controller.url, broker.port);

    // The technician sees the request, with the code the device shows.
    let mut listed = Value::Null;
    for _ in 0..100 {
        let (status, body) = admin.call(reqwest::Method::GET, "/enrollments", None).await;
        assert_eq!(status, 200);
        if body.as_array().is_some_and(|a| !a.is_empty()) {
            listed = body;
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
    let device = enroll::device_key(&cache).unwrap();
    let code = loa_protocol::enroll::enrollment_code(&device.verifying_key());
    assert_eq!(listed[0]["code"], code.as_str(), "{listed}");
    assert_eq!(listed[0]["hostname"], "may-loa-cong-cho");
    assert_eq!(listed[0]["requested_id"], ID);
    assert_eq!(listed[0]["remote_addr"], "127.0.0.1");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(cache.join(enroll::DEVICE_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Nothing runs, and no credential exists, before acceptance.
    assert!(!cache.join(enroll::CREDENTIALS_FILE).exists());
    assert!(!receiver.task.is_finished());

    let (status, body) = admin
        .call(
            reqwest::Method::POST,
            &format!("/enrollments/{code}/accept"),
            Some(json!({"id": ID, "name": "Loa cổng chợ", "zone": "z1"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    // The receiver comes online with its new credential.
    peer.status("the enrolled receiver online", 15, |_| true)
        .await;
    let kept = enroll::stored_credentials(&cache).unwrap().unwrap();
    assert_eq!(kept.receiver_id, ID);
    // The controller's key is pinned from the enrollment answer.
    let pinned = std::fs::read_to_string(cache.join(loa_receiver::trust::KEY_FILE)).unwrap();
    assert_eq!(
        pinned.trim(),
        signed::public_key_base64(&controller.signer.public_key())
    );
    // The token is the receiver's credential on the controller.
    let r = reqwest::Client::new()
        .get(format!("{}/api/v1/controller-key", controller.url))
        .bearer_auth(&kept.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A schedule signed by another key is refused; the controller's is played.
    let topic = ReceiverTopic::Schedule.for_receiver(ID);
    let bytes = common::ogg_opus(&common::tone(440.0, 1.0, 0.5));
    let cache_handle = loa_receiver::cache::Cache::open(&cache).unwrap();
    let programme = common::put_in_cache(&cache_handle, &bytes, 1000);
    let at = Utc::now() + Duration::seconds(2);
    let schedule = common::schedule(
        ID,
        5,
        &[("p1", &programme)],
        vec![common::event("s1", "p1", at, 1000, Priority::Normal)],
    );
    let forged = signed::seal(
        &SigningKey::from_bytes(&[13; 32]),
        &topic,
        1 << 40,
        Utc::now(),
        &encode(&common::schedule(ID, 99, &[], Vec::new())),
    )
    .unwrap();
    peer.client
        .publish(&topic, QoS::AtLeastOnce, false, forged)
        .await
        .unwrap();
    peer.status("the forged schedule refused", 10, |s| {
        s.rejected
            .iter()
            .any(|r| r.topic == topic && r.reason == "bad_signature")
    })
    .await;
    let genuine = controller.signer.seal(&topic, &encode(&schedule)).unwrap();
    peer.client
        .publish(&topic, QoS::AtLeastOnce, true, genuine)
        .await
        .unwrap();
    let status = peer
        .status("the signed schedule played", 15, |s| {
            s.now_playing.is_some()
        })
        .await;
    assert_eq!(status.schedule_version, Some(5));
    assert_eq!(status.now_playing.unwrap().programme_id, "p1");
    peer.status("the play over", 10, |s| s.now_playing.is_none())
        .await;
    receiver.shutdown().await;
    while peer.statuses.try_recv().is_ok() {}

    // Restarted: the kept credential is used, nothing is asked again. (A
    // status of the first run may still be on its way: wait for one sent
    // after the restart.)
    let restarted_at = Utc::now();
    let receiver = start(&cache, &controller.url, broker.port);
    let status = peer
        .status("the receiver back online", 15, |s| {
            s.sent_at >= restarted_at && s.schedule_version == Some(5)
        })
        .await;
    assert!(status.rejected.is_empty(), "{:?}", status.rejected);
    let (_, pending) = admin.call(reqwest::Method::GET, "/enrollments", None).await;
    assert_eq!(pending, json!([]));
    receiver.shutdown().await;
}

//! Shared set-up for the `live_*` integration tests: a controller's real
//! parts (database, store, embedded MQTT broker, live link, live hub, HTTP
//! router served on 127.0.0.1), a plain rumqttc client standing in for
//! receivers, speech made with espeak-ng, and the envelope comparison of
//! `../shared/TESTING.md`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use loa_controller::broker::EmbeddedBroker;
use loa_controller::bus::Bus;
use loa_controller::live::{LiveConfig, LiveHub};
use loa_controller::state::AppState;
use loa_controller::store::AudioStore;
use loa_controller::{db, server};
use loa_protocol::live::{FRAME_SAMPLES, FrameKind, LiveFrame};
use reqwest::StatusCode;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use sqlx::SqlitePool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The admin password of the test database.
pub const PASSWORD: &str = "mật-khẩu-phát-trực-tiếp";
/// How long a test waits for something that should happen promptly.
pub const WAIT: Duration = Duration::from_secs(10);

/// A unique suffix for MQTT client ids.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// A controller's live parts over a temporary data directory.
pub struct LiveTest {
    /// Data directory (deleted on drop).
    pub dir: tempfile::TempDir,
    /// The database.
    pub db: SqlitePool,
    /// The audio store.
    pub store: AudioStore,
    /// `mqtt://127.0.0.1:PORT` of the embedded broker.
    pub broker_url: String,
    /// The live link.
    pub bus: Bus,
    /// The hub under test.
    pub hub: LiveHub,
    /// Cancels the hub's timer.
    pub tasks: CancellationToken,
    /// `http://127.0.0.1:PORT/api/v1`.
    pub base: String,
    /// The HTTP address.
    pub http: SocketAddr,
    /// An admin token.
    pub token: String,
    /// HTTP client.
    pub client: reqwest::Client,
    /// Keeps the broker's thread.
    _broker: EmbeddedBroker,
}

impl LiveTest {
    /// Starts everything with the default playout delay. `RUST_LOG` (e.g.
    /// `loa_controller=debug`) shows the controller's log.
    pub async fn start() -> LiveTest {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
        let dir = tempfile::tempdir().unwrap();
        let db = db::open(dir.path()).await.unwrap();
        db::ensure_admin(&db, Some(PASSWORD)).await.unwrap();
        let store = AudioStore::open(dir.path()).unwrap();
        let broker = EmbeddedBroker::start("127.0.0.1:0".parse().unwrap()).unwrap();
        let broker_url = broker.url();
        let bus = Bus::connect_live(&broker_url, &unique("live"), signer())
            .await
            .unwrap();
        assert!(bus.wait_ready(WAIT).await, "live link connects");
        let tasks = CancellationToken::new();
        let hub = LiveHub::start(
            db.clone(),
            store.clone(),
            bus.clone(),
            LiveConfig::default(),
            tasks.child_token(),
        )
        .await
        .unwrap();
        let (base, http) = serve(&db, &store, &hub).await;
        let client = reqwest::Client::new();
        let login: Value = client
            .post(format!("{base}/login"))
            .json(&json!({"username": "admin", "password": PASSWORD}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = login["token"].as_str().unwrap().to_string();
        LiveTest {
            dir,
            db,
            store,
            broker_url,
            bus,
            hub,
            tasks,
            base,
            http,
            token,
            client,
            _broker: broker,
        }
    }

    /// Replaces the hub by a new one over the same database and link, as
    /// after a controller restart (the old one is shut down first).
    pub async fn restart_hub(&mut self) {
        self.hub.shutdown().await;
        self.tasks.cancel();
        self.tasks = CancellationToken::new();
        self.hub = LiveHub::start(
            self.db.clone(),
            self.store.clone(),
            self.bus.clone(),
            LiveConfig::default(),
            self.tasks.child_token(),
        )
        .await
        .unwrap();
        let (base, http) = serve(&self.db, &self.store, &self.hub).await;
        self.base = base;
        self.http = http;
    }

    /// Sends a JSON request as the admin; returns the status and JSON body
    /// (`Null` for an empty body).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let bytes = response.bytes().await.unwrap();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
        };
        (status, value)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    /// Creates a zone (if needed) and a receiver in it.
    pub async fn receiver(&self, zone: &str, receiver: &str) {
        let (status, _) = self.get(&format!("/zones/{zone}")).await;
        if status == StatusCode::NOT_FOUND {
            let (status, body) = self
                .post(
                    "/zones",
                    json!({"id": zone, "name": format!("Thôn {zone}")}),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
        }
        let (status, body) = self
            .post(
                "/receivers",
                json!({"id": receiver, "name": "Loa đầu làng", "zone": zone}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    /// Uploads a WAV as a programme through the real transcoder.
    pub async fn upload_programme(&self, id: &str, wav: Vec<u8>) {
        let form = reqwest::multipart::Form::new()
            .text("id", id.to_string())
            .text("title", "Bản tin thử")
            .text("category", "thời sự")
            .part(
                "file",
                reqwest::multipart::Part::bytes(wav)
                    .file_name("ban-tin.wav")
                    .mime_str("audio/wav")
                    .unwrap(),
            );
        let response = self
            .client
            .post(format!("{}/programmes", self.base))
            .bearer_auth(&self.token)
            .multipart(form)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    /// Asserts an API error: status, code, and a Vietnamese message.
    #[track_caller]
    pub fn assert_error(reply: &(StatusCode, Value), status: StatusCode, code: &str) {
        assert_eq!(reply.0, status, "{}", reply.1);
        assert_eq!(reply.1["code"], code, "{}", reply.1);
        let vi = reply.1["message_vi"].as_str().unwrap_or_default();
        assert!(!vi.is_empty() && !vi.is_ascii(), "message_vi: {vi:?}");
        assert!(reply.1["error"].as_str().is_some_and(|e| !e.is_empty()));
    }

    /// Waits until the broadcast is no longer on air; returns it.
    pub async fn wait_ended(&self, id: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let (status, b) = self.get(&format!("/broadcasts/{id}")).await;
            assert_eq!(status, StatusCode::OK, "{b}");
            if b["on_air"] == false {
                return b;
            }
            assert!(
                Instant::now() < deadline,
                "broadcast {id} still on air: {b}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Serves the router on a free 127.0.0.1 port.
async fn serve(db: &SqlitePool, store: &AudioStore, hub: &LiveHub) -> (String, SocketAddr) {
    let state = AppState::new(
        db.clone(),
        store.clone(),
        loa_controller::distribution::Distributor::default(),
        64 * 1024 * 1024,
    )
    .with_live(hub.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, server::app(state)).await;
    });
    (format!("http://{addr}/api/v1"), addr)
}

/// A frame as a test receiver got it.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub frame: LiveFrame,
    /// Arrival, on the test's monotonic clock.
    pub at: Instant,
}

/// A plain MQTT client subscribed to live topics (standing in for receivers).
pub struct FrameListener {
    pub client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Received>,
    raw: mpsc::UnboundedReceiver<rumqttc::Publish>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FrameListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FrameListener {
    /// Connects and subscribes (QoS 0) to `topics`, waiting for the SUBACKs.
    pub async fn subscribe(broker_url: &str, topics: &[String]) -> FrameListener {
        let (host, port) = loa_controller::bus::parse_broker_url(broker_url).unwrap();
        let mut options = MqttOptions::new(unique("rx"), host, port);
        options.set_keep_alive(Duration::from_secs(5));
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (tx, rx) = mpsc::unbounded_channel();
        let (raw_tx, raw) = mpsc::unbounded_channel();
        let (ack_tx, mut acks) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => drop(ack_tx.send(())),
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let at = Instant::now();
                        match LiveFrame::decode_verified(&p.payload, &signer().public_key()) {
                            Ok(frame) => drop(tx.send(Received {
                                topic: p.topic.clone(),
                                frame,
                                at,
                            })),
                            Err(_) => drop(raw_tx.send(p)),
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        for topic in topics {
            client
                .subscribe(topic.clone(), QoS::AtMostOnce)
                .await
                .unwrap();
            tokio::time::timeout(WAIT, acks.recv())
                .await
                .expect("SUBACK")
                .unwrap();
        }
        FrameListener {
            client,
            rx,
            raw,
            task,
        }
    }

    /// The next frame within `within`.
    pub async fn next(&mut self, within: Duration) -> Option<Received> {
        tokio::time::timeout(within, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next non-frame message within `within`.
    pub async fn next_raw(&mut self, within: Duration) -> Option<rumqttc::Publish> {
        tokio::time::timeout(within, self.raw.recv())
            .await
            .ok()
            .flatten()
    }

    /// Frames until the first `End` frame of `broadcast` (included) or
    /// until no frame came for `idle`.
    pub async fn until_end(&mut self, idle: Duration) -> Vec<Received> {
        let mut out = Vec::new();
        while let Some(r) = self.next(idle).await {
            let end = r.frame.kind == FrameKind::End;
            out.push(r);
            if end {
                break;
            }
        }
        out
    }

    /// Frames already arrived, without waiting.
    pub fn drain(&mut self) -> Vec<Received> {
        let mut out = Vec::new();
        while let Ok(r) = self.rx.try_recv() {
            out.push(r);
        }
        out
    }
}

/// Speech from espeak-ng (Vietnamese voice) as a mono 16-bit WAV file's
/// bytes and its samples in -1..1 with the rate.
pub fn speech(text: &str, dir: &Path) -> (Vec<u8>, Vec<f32>, u32) {
    let path = dir.join(format!("speech-{}.wav", uuid::Uuid::new_v4().simple()));
    let status = Command::new("espeak-ng")
        .args(["-v", "vi", "-s", "150", "-w"])
        .arg(&path)
        .arg(text)
        .status()
        .expect("espeak-ng is installed (scripts/setup.sh)");
    assert!(status.success(), "espeak-ng failed");
    let bytes = std::fs::read(&path).unwrap();
    let mut reader = hound::WavReader::new(std::io::Cursor::new(&bytes)).unwrap();
    let spec = reader.spec();
    assert_eq!(spec.channels, 1);
    let samples: Vec<f32> = reader
        .samples::<i16>()
        .map(|s| f32::from(s.unwrap()) / 32768.0)
        .collect();
    (bytes, samples, spec.sample_rate)
}

/// MP3 of a WAV file, made with lame.
pub fn mp3_of(wav: &[u8], dir: &Path) -> Vec<u8> {
    let input = dir.join(format!("in-{}.wav", uuid::Uuid::new_v4().simple()));
    let output = input.with_extension("mp3");
    std::fs::write(&input, wav).unwrap();
    let status = Command::new("lame")
        .args(["--quiet", "-b", "64"])
        .arg(&input)
        .arg(&output)
        .status()
        .expect("lame is installed (scripts/setup.sh)");
    assert!(status.success(), "lame failed");
    std::fs::read(&output).unwrap()
}

/// Decodes a broadcast's audio frames in sequence order; a missing frame
/// is concealed (FEC from the next one, else PLC), as a receiver would.
pub fn decode_frames(frames: &[LiveFrame]) -> Vec<f32> {
    let mut audio: Vec<&LiveFrame> = frames
        .iter()
        .filter(|f| f.kind == FrameKind::Audio)
        .collect();
    audio.sort_by_key(|f| f.seq);
    let mut decoder = opus::Decoder::new(48_000, opus::Channels::Mono).unwrap();
    let mut out = Vec::new();
    let mut pcm = vec![0f32; FRAME_SAMPLES];
    let mut expected = audio.first().map_or(0, |f| f.seq);
    for f in audio {
        while expected < f.seq {
            let n = decoder.decode_float(&[], &mut pcm, false).unwrap();
            out.extend_from_slice(&pcm[..n]);
            expected += 1;
        }
        let n = decoder.decode_float(&f.opus, &mut pcm, false).unwrap();
        out.extend_from_slice(&pcm[..n]);
        expected = f.seq + 1;
    }
    out
}

/// Resamples by linear interpolation (good enough for 10 ms envelopes).
pub fn to_rate(samples: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from == to {
        return samples.to_vec();
    }
    let n = (samples.len() as u64 * u64::from(to) / u64::from(from)) as usize;
    (0..n)
        .map(|i| {
            let x = i as f64 * f64::from(from) / f64::from(to);
            let j = x.floor() as usize;
            let frac = (x - j as f64) as f32;
            let a = samples.get(j).copied().unwrap_or(0.0);
            let b = samples.get(j + 1).copied().unwrap_or(a);
            a + (b - a) * frac
        })
        .collect()
}

/// 10 ms RMS envelope of 48 kHz audio.
pub fn envelope(samples: &[f32]) -> Vec<f32> {
    samples
        .chunks(480)
        .map(|c| (c.iter().map(|s| s * s).sum::<f32>() / c.len() as f32).sqrt())
        .collect()
}

/// The best normalised cross-correlation of two envelopes over lags in
/// `-max_lag..=max_lag` windows, and that lag (positive: `b` is late).
pub fn best_correlation(a: &[f32], b: &[f32], max_lag: isize) -> (f64, isize) {
    let mut best = (f64::MIN, 0);
    for lag in -max_lag..=max_lag {
        let pairs: Vec<(f64, f64)> = (0..a.len() as isize)
            .filter_map(|i| {
                let j = i + lag;
                (j >= 0 && (j as usize) < b.len())
                    .then(|| (f64::from(a[i as usize]), f64::from(b[j as usize])))
            })
            .collect();
        if pairs.len() < 20 {
            continue;
        }
        let n = pairs.len() as f64;
        let (ma, mb) = (
            pairs.iter().map(|p| p.0).sum::<f64>() / n,
            pairs.iter().map(|p| p.1).sum::<f64>() / n,
        );
        let cov: f64 = pairs.iter().map(|p| (p.0 - ma) * (p.1 - mb)).sum();
        let va: f64 = pairs.iter().map(|p| (p.0 - ma).powi(2)).sum();
        let vb: f64 = pairs.iter().map(|p| (p.1 - mb).powi(2)).sum();
        if va > 0.0 && vb > 0.0 {
            let r = cov / (va * vb).sqrt();
            if r > best.0 {
                best = (r, lag);
            }
        }
    }
    best
}

/// Checks a broadcast's frames as receivers see them: one broadcast id,
/// sequence numbers 0.. in order without loss, capture instants 20 ms
/// apart (a gap only forward), ending with an `End` frame. Returns the
/// audio frames.
#[track_caller]
pub fn check_stream(received: &[Received], broadcast_id: &str) -> Vec<LiveFrame> {
    let id = uuid::Uuid::parse_str(broadcast_id).unwrap();
    assert!(!received.is_empty(), "no frames");
    for r in received {
        assert_eq!(r.frame.broadcast_id, *id.as_bytes());
        assert_eq!(r.frame.playout_delay_ms, 120);
    }
    let last = received.last().unwrap();
    assert_eq!(
        last.frame.kind,
        FrameKind::End,
        "the stream ends with an End frame"
    );
    let audio: Vec<LiveFrame> = received
        .iter()
        .filter(|r| r.frame.kind == FrameKind::Audio)
        .map(|r| r.frame.clone())
        .collect();
    for (i, f) in audio.iter().enumerate() {
        assert_eq!(f.seq as usize, i, "frames in order, none lost");
        assert!(!f.opus.is_empty());
    }
    let steps: Vec<i64> = audio
        .windows(2)
        .map(|w| w[1].capture_us - w[0].capture_us)
        .collect();
    assert!(
        steps.iter().all(|&s| s >= 20_000),
        "capture instants never overlap: {steps:?}"
    );
    let exact = steps.iter().filter(|&&s| s == 20_000).count();
    assert!(
        exact * 100 >= steps.len() * 95,
        "capture instants 20 ms apart: {exact} of {} steps",
        steps.len()
    );
    assert_eq!(
        last.frame.seq as usize,
        audio.len(),
        "End follows the last audio frame"
    );
    audio
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

//! Helpers shared by the receiver's integration tests: test audio (tones
//! encoded to Ogg Opus with libopus, as the controller does), WAV analysis,
//! schedules, a tiny HTTP server standing in for the controller's audio
//! endpoint, and a Mosquitto broker on a free port.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use loa_protocol::{PlayEvent, Priority, ProgrammeRef, ReceiverSchedule};
use sha2::{Digest, Sha256};

pub const RATE: usize = 48_000;

/// The signing key of the test controller.
pub fn controller_key() -> loa_protocol::signed::SigningKey {
    loa_protocol::signed::SigningKey::from_bytes(&[42; 32])
}

/// Its public key as `--controller-key` takes it (base64).
pub fn controller_public_key() -> String {
    loa_protocol::signed::public_key_base64(&controller_key().verifying_key())
}

/// Wraps `payload` for `topic` in an envelope signed by the test
/// controller, with the next sequence number of this test binary.
pub fn sign(topic: &str, payload: &[u8]) -> Vec<u8> {
    sign_at(topic, payload, Utc::now())
}

/// Like [`sign`], issued at `at`.
pub fn sign_at(topic: &str, payload: &[u8], at: DateTime<Utc>) -> Vec<u8> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::SeqCst) + 1;
    loa_protocol::signed::seal(&controller_key(), topic, seq, at, payload).unwrap()
}

/// A sine tone of `secs` seconds.
pub fn tone(freq: f32, secs: f32, amplitude: f32) -> Vec<f32> {
    let n = (secs * RATE as f32) as usize;
    (0..n)
        .map(|i| amplitude * (2.0 * std::f32::consts::PI * freq * i as f32 / RATE as f32).sin())
        .collect()
}

/// Encodes mono 48 kHz samples as an Ogg Opus file (RFC 7845) and returns its bytes.
pub fn ogg_opus(samples: &[f32]) -> Vec<u8> {
    let mut encoder =
        opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Audio).unwrap();
    encoder.set_bitrate(opus::Bitrate::Bits(64_000)).unwrap();
    let pre_skip = encoder.get_lookahead().unwrap() as u16;
    let mut out = Vec::new();
    {
        let mut writer = ogg::PacketWriter::new(&mut out);
        let serial = 0x4c6f61;
        let mut head = b"OpusHead".to_vec();
        head.push(1);
        head.push(1);
        head.extend_from_slice(&pre_skip.to_le_bytes());
        head.extend_from_slice(&48_000u32.to_le_bytes());
        head.extend_from_slice(&0i16.to_le_bytes());
        head.push(0);
        writer
            .write_packet(head, serial, ogg::PacketWriteEndInfo::EndPage, 0)
            .unwrap();
        let mut tags = b"OpusTags".to_vec();
        let vendor = b"loa-test";
        tags.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
        tags.extend_from_slice(vendor);
        tags.extend_from_slice(&0u32.to_le_bytes());
        writer
            .write_packet(tags, serial, ogg::PacketWriteEndInfo::EndPage, 0)
            .unwrap();
        let mut padded = samples.to_vec();
        padded.extend(std::iter::repeat_n(0.0, pre_skip as usize));
        let frames: Vec<&[f32]> = padded.chunks(960).collect();
        let total = pre_skip as u64 + samples.len() as u64;
        for (i, frame) in frames.iter().enumerate() {
            let mut buf = frame.to_vec();
            buf.resize(960, 0.0);
            let packet = encoder.encode_vec_float(&buf, 4000).unwrap();
            let last = i + 1 == frames.len();
            let granule = if last { total } else { (i as u64 + 1) * 960 };
            let info = if last {
                ogg::PacketWriteEndInfo::EndStream
            } else {
                ogg::PacketWriteEndInfo::NormalPacket
            };
            writer.write_packet(packet, serial, info, granule).unwrap();
        }
    }
    out
}

/// The reference a schedule carries for these file bytes.
pub fn programme_ref(bytes: &[u8], duration_ms: u64) -> ProgrammeRef {
    ProgrammeRef {
        sha256: hex::encode(Sha256::digest(bytes)),
        bytes: bytes.len() as u64,
        duration_ms,
    }
}

/// Stores file bytes in the receiver cache under `dir` as a download would.
pub fn put_in_cache(
    cache: &loa_receiver::cache::Cache,
    bytes: &[u8],
    duration_ms: u64,
) -> ProgrammeRef {
    let r = programme_ref(bytes, duration_ms);
    let mut d = cache.begin(&r).unwrap();
    d.write(bytes).unwrap();
    d.commit().unwrap();
    r
}

/// One play event.
pub fn event(
    schedule_id: &str,
    programme_id: &str,
    at: DateTime<Utc>,
    duration_ms: u64,
    priority: Priority,
) -> PlayEvent {
    PlayEvent {
        id: PlayEvent::occurrence_id(schedule_id, at),
        schedule_id: schedule_id.into(),
        programme_id: programme_id.into(),
        starts_at: at,
        duration_ms,
        priority,
    }
}

/// A schedule for `receiver_id`.
pub fn schedule(
    receiver_id: &str,
    version: u64,
    programmes: &[(&str, &ProgrammeRef)],
    events: Vec<PlayEvent>,
) -> ReceiverSchedule {
    let now = Utc::now();
    ReceiverSchedule {
        receiver_id: receiver_id.into(),
        version,
        generated_at: now - chrono::Duration::minutes(1),
        horizon_end: now + chrono::Duration::days(7),
        programmes: programmes
            .iter()
            .map(|(id, r)| (id.to_string(), (*r).clone()))
            .collect::<BTreeMap<_, _>>(),
        events,
        zone: None,
    }
}

/// Every sample of a mono float WAV file.
pub fn read_wav(path: &Path) -> Vec<f32> {
    let mut reader = hound::WavReader::open(path).unwrap();
    reader.samples::<f32>().map(Result::unwrap).collect()
}

/// Power of `freq` in `window` (Goertzel), normalised so a full-scale sine gives ~0.25.
pub fn power_at(window: &[f32], freq: f32) -> f32 {
    let k = 2.0 * (2.0 * std::f32::consts::PI * freq / RATE as f32).cos();
    let (mut s1, mut s2) = (0.0f32, 0.0f32);
    for &x in window {
        let s = x + k * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    let p = s1 * s1 + s2 * s2 - k * s1 * s2;
    p / (window.len() as f32 * window.len() as f32)
}

/// Index of the first sample whose 1 ms neighbourhood is louder than `threshold` (absolute value).
pub fn onset(samples: &[f32], threshold: f32) -> Option<usize> {
    samples.iter().position(|s| s.abs() > threshold)
}

/// Index of the last sample louder than `threshold`.
pub fn offset(samples: &[f32], threshold: f32) -> Option<usize> {
    samples.iter().rposition(|s| s.abs() > threshold)
}

/// The dominant one of `freqs` in each 10 ms window (or `None` when quiet).
pub fn dominant(samples: &[f32], freqs: &[f32]) -> Vec<Option<f32>> {
    samples
        .chunks(480)
        .map(|w| {
            let best = freqs
                .iter()
                .map(|&f| (f, power_at(w, f)))
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .unwrap();
            (best.1 > 0.01).then_some(best.0)
        })
        .collect()
}

/// A minimal HTTP/1.1 server standing in for the controller's audio
/// endpoint: `GET /api/v1/programmes/{id}/audio` with the right bearer token
/// (and `GET /api/v1/controller-key`, answering [`controller_public_key`]).
pub struct AudioServer {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
    pub unauthorised: Arc<AtomicUsize>,
    pub files: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
    stop: Arc<AtomicBool>,
}

impl AudioServer {
    pub fn start(token: &str) -> AudioServer {
        Self::start_on(TcpListener::bind("127.0.0.1:0").unwrap(), token)
    }

    pub fn start_on(listener: TcpListener, token: &str) -> AudioServer {
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let unauthorised = Arc::new(AtomicUsize::new(0));
        let files: Arc<Mutex<BTreeMap<String, Vec<u8>>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (r, u, f, s, token) = (
            requests.clone(),
            unauthorised.clone(),
            files.clone(),
            stop.clone(),
            token.to_string(),
        );
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        serve_one(stream, &token, &f, &r, &u);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        AudioServer {
            addr,
            requests,
            unauthorised,
            files,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn add(&self, id: &str, bytes: Vec<u8>) {
        self.files.lock().unwrap().insert(id.into(), bytes);
    }
}

impl Drop for AudioServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve_one(
    stream: TcpStream,
    token: &str,
    files: &Mutex<BTreeMap<String, Vec<u8>>>,
    requests: &AtomicUsize,
    unauthorised: &AtomicUsize,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut authorised = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("authorization")
            && value.trim() == format!("Bearer {token}")
        {
            authorised = true;
        }
    }
    requests.fetch_add(1, Ordering::SeqCst);
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string();
    let id = path
        .strip_prefix("/api/v1/programmes/")
        .and_then(|p| p.strip_suffix("/audio"));
    let mut stream = stream;
    let (status, body) = if !authorised {
        unauthorised.fetch_add(1, Ordering::SeqCst);
        ("401 Unauthorized", b"{\"error\":\"unauthorised\"}".to_vec())
    } else if path == "/api/v1/controller-key" {
        let key = controller_public_key();
        (
            "200 OK",
            format!("{{\"public_key\":\"{key}\",\"fingerprint\":\"x\"}}").into_bytes(),
        )
    } else {
        match id.and_then(|id| files.lock().unwrap().get(id).cloned()) {
            Some(bytes) => ("200 OK", bytes),
            None => ("404 Not Found", b"{\"error\":\"not found\"}".to_vec()),
        }
    };
    let header = format!(
        "HTTP/1.1 {status}\r\nContent-Type: audio/ogg\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(header.as_bytes());
    let _ = stream.write_all(&body);
    let _ = stream.flush();
    let mut rest = Vec::new();
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    let _ = stream.read_to_end(&mut rest);
}

/// A free 127.0.0.1 port (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Debian's Mosquitto on a free 127.0.0.1 port, killed on drop.
pub struct Mosquitto {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let conf: PathBuf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is installed (apt-get install mosquitto)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Mosquitto {
            port,
            child,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An MQTT client standing in for the controller: connects as `client_id`,
/// subscribes to `receiver_id`'s status and forwards every status it
/// decodes. Returns the client, the statuses and the polling task (abort it
/// when done).
pub async fn status_peer(
    port: u16,
    client_id: &str,
    receiver_id: &str,
) -> (
    rumqttc::AsyncClient,
    tokio::sync::mpsc::UnboundedReceiver<loa_protocol::ReceiverStatus>,
    tokio::task::JoinHandle<()>,
) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let options = MqttOptions::new(client_id, "127.0.0.1", port);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let (tx, statuses) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Ok(s) = loa_protocol::decode::<loa_protocol::ReceiverStatus>(&p.payload)
                    {
                        let _ = tx.send(s);
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    client
        .subscribe(
            loa_protocol::topics::ReceiverTopic::Status.for_receiver(receiver_id),
            QoS::AtLeastOnce,
        )
        .await
        .unwrap();
    (client, statuses, task)
}

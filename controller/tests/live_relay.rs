//! Relay ("tiếp sóng") from an HTTP stream the test serves itself on
//! 127.0.0.1: an MP3 made with espeak-ng and lame, sent with chunked
//! transfer encoding as Icecast does. (A real Icecast server is exercised
//! by the end-to-end tests.) Also relay schedules.

mod live_common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use live_common::{
    FrameListener, LiveTest, best_correlation, check_stream, decode_frames, envelope, mp3_of,
    speech, to_rate,
};
use loa_protocol::live::{FrameKind, zone_live_topic};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A tiny stream server: `/stream.mp3` (the MP3 once), `/endless.mp3` (the
/// MP3 over and over), `/drop.mp3` (the first connection breaks off half
/// way, later ones get the whole MP3), `/page.html`, anything else 404.
struct StreamServer {
    port: u16,
    /// Requests served, per path kind.
    drop_requests: Arc<AtomicUsize>,
}

impl StreamServer {
    async fn start(mp3: Vec<u8>) -> StreamServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mp3 = Arc::new(mp3);
        let drop_requests = Arc::new(AtomicUsize::new(0));
        let drops = drop_requests.clone();
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    break;
                };
                let mp3 = mp3.clone();
                let drops = drops.clone();
                tokio::spawn(async move {
                    let _ = serve(socket, &mp3, &drops).await;
                });
            }
        });
        StreamServer {
            port,
            drop_requests,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

async fn serve(mut socket: TcpStream, mp3: &[u8], drops: &AtomicUsize) -> std::io::Result<()> {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&request);
    let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
    let head = |ct: &str| {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\nTransfer-Encoding: chunked\r\nicy-name: Loa test\r\n\r\n"
        )
    };
    async fn chunk(socket: &mut TcpStream, data: &[u8]) -> std::io::Result<()> {
        socket
            .write_all(format!("{:x}\r\n", data.len()).as_bytes())
            .await?;
        socket.write_all(data).await?;
        socket.write_all(b"\r\n").await
    }
    match path.as_str() {
        "/stream.mp3" | "/drop.mp3" | "/endless.mp3" => {
            let first_drop = path == "/drop.mp3" && drops.fetch_add(1, Ordering::SeqCst) == 0;
            socket.write_all(head("audio/mpeg").as_bytes()).await?;
            let rounds = if path == "/endless.mp3" { 1000 } else { 1 };
            for _ in 0..rounds {
                let limit = if first_drop { mp3.len() / 2 } else { mp3.len() };
                for piece in mp3[..limit].chunks(2048) {
                    chunk(&mut socket, piece).await?;
                }
                if first_drop {
                    // Break off without the last chunk: an error for the client.
                    return Ok(());
                }
            }
            socket.write_all(b"0\r\n\r\n").await?;
        }
        "/page.html" => {
            socket.write_all(head("text/html").as_bytes()).await?;
            let page = "<!doctype html><html><body>Đài truyền thanh — trang này không phải âm thanh</body></html>"
                .repeat(40);
            chunk(&mut socket, page.as_bytes()).await?;
            socket.write_all(b"0\r\n\r\n").await?;
        }
        _ => {
            socket
                .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found")
                .await?;
        }
    }
    socket.flush().await
}

fn relay(url: &str) -> Value {
    json!({"source": {"type": "relay", "url": url}, "targets": {"zones": ["thon-1"]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mp3_stream_is_relayed_in_real_time_and_ends_with_it() {
    let t = LiveTest::start().await;
    t.receiver("thon-1", "loa-1").await;
    let (wav, source, rate) = speech(
        "Đây là Đài Tiếng nói Việt Nam, phát thanh từ thủ đô Hà Nội. Bản tin thời sự buổi sáng.",
        t.dir.path(),
    );
    let server = StreamServer::start(mp3_of(&wav, t.dir.path())).await;

    // Refusals first: not found, not audio.
    LiveTest::assert_error(
        &t.post("/broadcasts", relay(&server.url("/missing.mp3")))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "relay_http_error",
    );
    LiveTest::assert_error(
        &t.post("/broadcasts", relay(&server.url("/page.html")))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "relay_not_audio",
    );

    let mut listener = FrameListener::subscribe(&t.broker_url, &[zone_live_topic("thon-1")]).await;
    let started = Instant::now();
    let (status, b) = t
        .post("/broadcasts", relay(&server.url("/stream.mp3")))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{b}");
    let id = b["id"].as_str().unwrap().to_string();
    assert_eq!(b["source"]["url"], server.url("/stream.mp3"));
    let received = listener.until_end(Duration::from_secs(3)).await;
    let elapsed = started.elapsed();
    let audio = check_stream(&received, &id);
    let secs = source.len() as f64 / f64::from(rate);
    println!(
        "relayed {} frames of a {secs:.2} s stream in {elapsed:?}",
        audio.len()
    );
    // The server sent it all at once; the relay still took real time.
    assert!(
        elapsed.as_secs_f64() >= secs * 0.95,
        "faster than real time: {elapsed:?}"
    );
    // MP3 adds encoder delay and padding (tens of ms).
    assert!(
        (audio.len() as f64 * 0.02 - secs).abs() < 0.2,
        "{} frames",
        audio.len()
    );
    let decoded = decode_frames(&audio);
    let (r, lag) = best_correlation(
        &envelope(&to_rate(&source, rate, 48_000)),
        &envelope(&decoded),
        50,
    );
    println!("envelope correlation {r:.3} at lag {lag} × 10 ms");
    assert!(r > 0.9, "envelope correlation {r:.3}");
    let ended = t.wait_ended(&id, Duration::from_secs(5)).await;
    assert_eq!(ended["end_reason"], "source_ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_connection_is_reconnected() {
    let t = LiveTest::start().await;
    t.receiver("thon-1", "loa-1").await;
    let (wav, source, rate) = speech(
        "Một hai ba bốn năm sáu bảy tám chín mười, mười một mười hai mười ba.",
        t.dir.path(),
    );
    let server = StreamServer::start(mp3_of(&wav, t.dir.path())).await;
    let mut listener = FrameListener::subscribe(&t.broker_url, &[zone_live_topic("thon-1")]).await;
    let (status, b) = t.post("/broadcasts", relay(&server.url("/drop.mp3"))).await;
    assert_eq!(status, StatusCode::CREATED, "{b}");
    let id = b["id"].as_str().unwrap().to_string();
    let received = listener.until_end(Duration::from_secs(5)).await;
    let audio = check_stream_allowing_gaps(&received, &id);
    // Half the stream, then (after the reconnection) all of it.
    let secs = source.len() as f64 / f64::from(rate);
    assert!(
        server.drop_requests.load(Ordering::SeqCst) >= 2,
        "reconnected"
    );
    assert!(
        audio.len() as f64 * 0.02 > secs * 1.3,
        "{} frames for {secs:.2} s",
        audio.len()
    );
    let ended = t.wait_ended(&id, Duration::from_secs(5)).await;
    assert_eq!(ended["end_reason"], "source_ended");
}

/// Like [`check_stream`] but a reconnection may leave a gap in capture time.
fn check_stream_allowing_gaps(
    received: &[live_common::Received],
    id: &str,
) -> Vec<loa_protocol::live::LiveFrame> {
    let audio: Vec<_> = received
        .iter()
        .filter(|r| r.frame.kind == FrameKind::Audio)
        .map(|r| r.frame.clone())
        .collect();
    assert_eq!(received.last().unwrap().frame.kind, FrameKind::End);
    let uuid = uuid::Uuid::parse_str(id).unwrap();
    for (i, f) in audio.iter().enumerate() {
        assert_eq!(f.seq as usize, i);
        assert_eq!(f.broadcast_id, *uuid.as_bytes());
    }
    assert!(
        audio
            .windows(2)
            .all(|w| w[1].capture_us - w[0].capture_us >= 20_000)
    );
    audio
}

/// Local wall time in Vietnam `secs` from now, as a schedule `start`.
fn vietnam_in(secs: i64) -> String {
    let tz: chrono_tz::Tz = "Asia/Ho_Chi_Minh".parse().unwrap();
    (Utc::now() + chrono::Duration::seconds(secs))
        .with_timezone(&tz)
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string()
}

/// The broadcasts (on air or not) started by `schedule`.
async fn broadcasts_of(t: &LiveTest, schedule: &str) -> Vec<Value> {
    let (status, all) = t.get("/broadcasts?all=true").await;
    assert_eq!(status, StatusCode::OK);
    all.as_array()
        .unwrap()
        .iter()
        .filter(|b| b["schedule_id"] == schedule)
        .cloned()
        .collect()
}

/// Waits until `check` holds for the broadcasts of `schedule`.
async fn wait_for(
    t: &LiveTest,
    schedule: &str,
    within: Duration,
    check: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let list = broadcasts_of(t, schedule).await;
        if check(&list) {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "broadcasts of {schedule}: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_schedules_start_at_each_occurrence_for_their_duration() {
    let mut t = LiveTest::start().await;
    t.receiver("thon-1", "loa-1").await;
    let (wav, _, _) = speech("Tiếp sóng Đài Tiếng nói Việt Nam.", t.dir.path());
    let server = StreamServer::start(mp3_of(&wav, t.dir.path())).await;
    let url = server.url("/endless.mp3");

    // Refusals specific to relay schedules.
    let base = json!({"source": {"type": "relay", "url": url}, "duration_ms": 3000,
                      "targets": {"zones": ["thon-1"]}, "start": vietnam_in(2)});
    let with = |key: &str, value: Value| {
        let mut b = base.clone();
        b[key] = value;
        b
    };
    let cases = [
        (with("duration_ms", json!(null)), "invalid_duration"),
        (with("duration_ms", json!(500)), "invalid_duration"),
        (with("programme_id", json!("ban-tin")), "invalid_schedule"),
        (
            with("source", json!({"type": "relay", "url": "ftp://x/y"})),
            "invalid_relay_url",
        ),
        (
            with("source", json!({"type": "microphone"})),
            "invalid_source",
        ),
    ];
    for (body, code) in cases {
        LiveTest::assert_error(
            &t.post("/schedules", body.clone()).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            code,
        );
    }

    let mut listener = FrameListener::subscribe(&t.broker_url, &[zone_live_topic("thon-1")]).await;
    let (status, s) = t
        .post("/schedules", with("id", json!("tiep-song-sang")))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{s}");
    assert_eq!(s["source"], json!({"type": "relay", "url": url}));
    assert_eq!(s["duration_ms"], 3000);
    assert!(s.get("programme_id").is_none(), "{s}");
    assert_eq!(s["next_occurrences"].as_array().unwrap().len(), 1);
    let (_, listed) = t.get("/schedules/tiep-song-sang").await;
    assert_eq!(listed["source"]["url"], url.as_str());

    // At the occurrence it goes on air, and ends after its duration.
    let first = listener
        .next(Duration::from_secs(8))
        .await
        .expect("the relay starts at the occurrence");
    assert_eq!(first.frame.seq, 0);
    let on_air = wait_for(&t, "tiep-song-sang", Duration::from_secs(5), |l| {
        !l.is_empty()
    })
    .await;
    assert_eq!(on_air[0]["created_by"], "schedule");
    assert!(
        on_air[0]["occurrence_id"]
            .as_str()
            .unwrap()
            .starts_with("tiep-song-sang@")
    );
    let id = on_air[0]["id"].as_str().unwrap().to_string();
    let ended = t.wait_ended(&id, Duration::from_secs(8)).await;
    assert_eq!(ended["end_reason"], "duration_elapsed");
    let mut rest = vec![first];
    rest.extend(listener.until_end(Duration::from_secs(2)).await);
    let audio = check_stream_allowing_gaps(&rest, &id);
    println!("scheduled relay: {} frames for 3 s", audio.len());
    assert!((130..=160).contains(&audio.len()), "{} frames", audio.len());
    // Not started again for the same occurrence.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(broadcasts_of(&t, "tiep-song-sang").await.len(), 1);

    // A longer occurrence survives a controller restart: the new hub starts
    // it again for what remains.
    let (status, s) = t
        .post("/schedules", {
            let mut b = with("id", json!("tiep-song-trua"));
            b["duration_ms"] = json!(20_000);
            b["start"] = json!(vietnam_in(1));
            b
        })
        .await;
    assert_eq!(status, StatusCode::CREATED, "{s}");
    let list = wait_for(&t, "tiep-song-trua", Duration::from_secs(8), |l| {
        l.len() == 1
    })
    .await;
    let occurrence = list[0]["occurrence_id"].clone();
    t.restart_hub().await;
    let list = wait_for(&t, "tiep-song-trua", Duration::from_secs(10), |l| {
        l.iter().any(|b| b["on_air"] == true)
    })
    .await;
    let resumed: Vec<&Value> = list.iter().filter(|b| b["on_air"] == true).collect();
    assert_eq!(resumed.len(), 1, "{list:?}");
    assert_eq!(resumed[0]["occurrence_id"], occurrence);
    assert!(resumed[0]["duration_ms"].as_u64().unwrap() < 20_000);
    let before: Vec<&Value> = list.iter().filter(|b| b["on_air"] == false).collect();
    assert_eq!(before[0]["end_reason"], "controller_shutdown");

    // Deleting the schedule ends its broadcast.
    let (status, _) = t.delete("/schedules/tiep-song-trua").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let id = resumed[0]["id"].as_str().unwrap();
    let ended = t.wait_ended(id, Duration::from_secs(5)).await;
    assert_eq!(ended["end_reason"], "schedule_deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_relay_runs_until_deleted() {
    let t = LiveTest::start().await;
    t.receiver("thon-1", "loa-1").await;
    let (wav, _, _) = speech("Tiếp sóng.", t.dir.path());
    let server = StreamServer::start(mp3_of(&wav, t.dir.path())).await;
    let mut listener = FrameListener::subscribe(&t.broker_url, &[zone_live_topic("thon-1")]).await;
    let (status, b) = t
        .post("/broadcasts", relay(&server.url("/endless.mp3")))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{b}");
    let id = b["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, on_air) = t.get(&format!("/broadcasts/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(on_air["on_air"], true);
    assert!(
        on_air["stats"]["frames_sent"].as_u64().unwrap() >= 80,
        "{on_air}"
    );
    assert_eq!(on_air["stats"]["frames_unsent"], 0);
    let (status, ended) = t.delete(&format!("/broadcasts/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ended["end_reason"], "stopped");
    let received = listener.until_end(Duration::from_secs(2)).await;
    let audio = check_stream(&received, &id);
    assert!(
        (80..=150).contains(&audio.len()),
        "{} frames in about 2 s",
        audio.len()
    );
}

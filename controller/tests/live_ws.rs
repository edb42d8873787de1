//! `GET /api/v1/live/ws`: a scripted browser client (tokio-tungstenite)
//! streaming PCM speech in real time; errors before and after the upgrade.

mod live_common;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use live_common::{
    FrameListener, LiveTest, best_correlation, check_stream, decode_frames, envelope, speech,
    to_rate,
};
use loa_protocol::Priority;
use loa_protocol::live::zone_live_topic;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

fn ws_url(t: &LiveTest, query: &str) -> String {
    format!("ws://{}/api/v1/live/ws{query}", t.http)
}

/// The next text message as JSON (skipping pings), or `None` once closed.
async fn next_json(socket: &mut Socket) -> Option<Value> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .ok()??
        {
            Ok(Message::Text(text)) => return Some(serde_json::from_str(text.as_str()).unwrap()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// The close frame's code, reading past other messages.
async fn close_code(socket: &mut Socket) -> Option<CloseCode> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .ok()??
        {
            Ok(Message::Close(frame)) => return frame.map(|f| f.code),
            Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// s16le bytes of samples in -1..1.
fn s16le(samples: &[f32]) -> Vec<u8> {
    samples
        .iter()
        .flat_map(|s| ((s.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes())
        .collect()
}

/// Sends `samples` at `rate` in 20 ms messages, in real time.
async fn stream(socket: &mut Socket, samples: &[f32], rate: u32) {
    let per_message = rate as usize / 50;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for piece in samples.chunks(per_message) {
        tick.tick().await;
        socket.send(Message::binary(s16le(piece))).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_microphone_goes_on_air_for_the_session() {
    let t = LiveTest::start().await;
    t.receiver("thon-1", "loa-1").await;
    let (_, source, rate) = speech(
        "Alô alô, xin mời bà con thôn một ra đình làng họp khẩn.",
        t.dir.path(),
    );
    let mut listener = FrameListener::subscribe(&t.broker_url, &[zone_live_topic("thon-1")]).await;

    // The token in the first message (what a web page does).
    let (mut socket, _) = connect_async(ws_url(&t, "?zones=thon-1&priority=priority"))
        .await
        .unwrap();
    socket
        .send(Message::text(
            json!({"sample_rate": rate, "format": "s16le", "token": t.token}).to_string(),
        ))
        .await
        .unwrap();
    let started = next_json(&mut socket).await.expect("started");
    assert_eq!(started["type"], "started", "{started}");
    let b = &started["broadcast"];
    let id = b["id"].as_str().unwrap().to_string();
    assert_eq!(b["source"], json!({"type": "browser"}));
    assert_eq!(b["priority"], "priority");
    assert_eq!(b["on_air"], true);
    let (_, list) = t.get("/broadcasts").await;
    assert_eq!(list[0]["id"], id.as_str());

    stream(&mut socket, &source, rate).await;
    socket.close(None).await.unwrap();

    let received = listener.until_end(Duration::from_secs(3)).await;
    let audio = check_stream(&received, &id);
    assert!(audio.iter().all(|f| f.priority == Priority::Priority));
    let secs = source.len() as f64 / f64::from(rate);
    println!("{} frames for {secs:.2} s of browser audio", audio.len());
    assert!(
        (audio.len() as f64 * 0.02 - secs).abs() < 0.3,
        "{} frames",
        audio.len()
    );
    // Stamped on arrival, sent as it arrives: capture instants are recent.
    let decoded = decode_frames(&audio);
    let (r, lag) = best_correlation(
        &envelope(&to_rate(&source, rate, 48_000)),
        &envelope(&decoded),
        50,
    );
    println!("envelope correlation {r:.3} at lag {lag} × 10 ms");
    assert!(r > 0.9, "envelope correlation {r:.3}");
    let ended = t.wait_ended(&id, Duration::from_secs(5)).await;
    assert_eq!(ended["end_reason"], "client_closed");
    assert_eq!(ended["created_by"], "admin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_ends_a_browser_session() {
    let t = LiveTest::start().await;
    t.receiver("thon-1", "loa-1").await;
    // The token in the Authorization header, targets in the first message.
    let mut request = ws_url(&t, "").into_client_request().unwrap();
    request.headers_mut().insert(
        AUTHORIZATION,
        format!("Bearer {}", t.token).parse().unwrap(),
    );
    let (mut socket, _) = connect_async(request).await.unwrap();
    socket
        .send(Message::text(
            json!({"sample_rate": 48000, "format": "f32le", "receivers": ["loa-1"], "priority": "emergency"})
                .to_string(),
        ))
        .await
        .unwrap();
    let started = next_json(&mut socket).await.expect("started");
    let id = started["broadcast"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        started["broadcast"]["targets"]["receivers"],
        json!(["loa-1"])
    );
    let tone: Vec<u8> = (0..48_000)
        .flat_map(|i| ((i as f32 * 0.05).sin() * 0.3).to_le_bytes())
        .collect();
    for piece in tone.chunks(3840).take(10) {
        socket.send(Message::binary(piece.to_vec())).await.unwrap();
    }
    let (status, ended) = t.delete(&format!("/broadcasts/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{ended}");
    assert_eq!(ended["end_reason"], "stopped");
    let message = next_json(&mut socket).await.expect("ended message");
    assert_eq!(message, json!({"type": "ended", "reason": "stopped"}));
    assert_eq!(close_code(&mut socket).await, Some(CloseCode::Normal));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sessions_are_refused_clearly() {
    let t = LiveTest::start().await;
    t.receiver("thon-1", "loa-1").await;

    // Before the upgrade: the API's usual errors.
    match connect_async(ws_url(&t, "?zones=thon-1&token=sai")).await {
        Err(WsError::Http(response)) => assert_eq!(response.status().as_u16(), 401),
        other => panic!("expected 401, got {other:?}"),
    }
    let token = &t.token;
    match connect_async(ws_url(&t, &format!("?zones=khong-co&token={token}"))).await {
        Err(WsError::Http(response)) => {
            assert_eq!(response.status().as_u16(), 422);
            let body: Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["code"], "unknown_zone");
        }
        other => panic!("expected 422, got {other:?}"),
    }
    let plain = t
        .client
        .get(format!("{}/live/ws", t.base))
        .send()
        .await
        .unwrap();
    assert!(plain.status().is_client_error());
    let body: Value = plain.json().await.unwrap();
    assert_eq!(body["code"], "websocket_required");

    // After it: an error message, then a close code of 4000 + HTTP status.
    let cases = [
        (
            json!({"sample_rate": 48000, "format": "f32le"}),
            "unauthorized",
            4401,
        ),
        (
            json!({"sample_rate": 48000, "format": "mp3", "token": token}),
            "invalid_hello",
            4400,
        ),
        (
            json!({"format": "s16le", "token": token}),
            "invalid_hello",
            4400,
        ),
        (
            json!({"sample_rate": 1000, "format": "s16le", "token": token}),
            "invalid_audio_format",
            4422,
        ),
        (
            json!({"sample_rate": 16000, "format": "s16le", "token": token, "zones": []}),
            "no_targets",
            4422,
        ),
    ];
    for (hello, code, close) in cases {
        let (mut socket, _) = connect_async(ws_url(&t, "")).await.unwrap();
        socket.send(Message::text(hello.to_string())).await.unwrap();
        let error = next_json(&mut socket).await.expect("error message");
        assert_eq!(error["type"], "error", "{error}");
        assert_eq!(error["code"], code, "{hello}: {error}");
        let vi = error["message_vi"].as_str().unwrap();
        assert!(!vi.is_ascii(), "{vi}");
        assert_eq!(
            close_code(&mut socket).await,
            Some(CloseCode::from(close)),
            "{hello}"
        );
    }
    // Nothing went on air.
    let (_, list) = t.get("/broadcasts?all=true").await;
    assert_eq!(list, json!([]));
}

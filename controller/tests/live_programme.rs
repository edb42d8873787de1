//! A stored programme played live: through the embedded broker to a test
//! subscriber on each target group's topic, paced in real time, decodable
//! back to the programme's speech.

mod live_common;

use std::time::Duration;

use live_common::{
    FrameListener, LiveTest, best_correlation, check_stream, decode_frames, envelope, speech,
    to_rate,
};
use loa_protocol::Priority;
use loa_protocol::live::{FrameKind, receiver_live_topic, zone_live_topic};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_programme_goes_out_paced_once_per_target_group() {
    let t = LiveTest::start().await;
    t.receiver("thon-1", "loa-1").await;
    t.receiver("thon-2", "loa-2").await;
    let (wav, source, rate) = speech(
        "Thông báo khẩn cấp của ủy ban xã. Bão số ba sắp đổ bộ. Bà con hãy vào nơi trú ẩn an toàn.",
        t.dir.path(),
    );
    t.upload_programme("thong-bao-bao", wav).await;

    let mut listener = FrameListener::subscribe(
        &t.broker_url,
        &[
            zone_live_topic("thon-1"),
            receiver_live_topic("loa-1"),
            receiver_live_topic("loa-2"),
            zone_live_topic("thon-2"),
        ],
    )
    .await;
    // loa-1 is in thon-1 (reached through its zone), loa-2 is not.
    let (status, b) = t
        .post(
            "/broadcasts",
            json!({"source": {"type": "programme", "id": "thong-bao-bao"},
                   "targets": {"zones": ["thon-1"], "receivers": ["loa-1", "loa-2", "loa-2"]},
                   "priority": "emergency"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{b}");
    let id = b["id"].as_str().unwrap().to_string();
    assert_eq!(b["on_air"], true);
    assert_eq!(b["priority"], "emergency");
    assert_eq!(
        b["source"],
        json!({"type": "programme", "id": "thong-bao-bao"})
    );
    assert_eq!(
        b["targets"],
        json!({"zones": ["thon-1"], "receivers": ["loa-1", "loa-2"]})
    );
    assert_eq!(b["created_by"], "admin");
    assert_eq!(b["playout_delay_ms"], 120);

    let (status, list) = t.get("/broadcasts").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["id"], id.as_str());

    // Everything until both End frames are in (or nothing comes for 2 s).
    let mut received = Vec::new();
    let mut ends = 0;
    while let Some(r) = listener.next(Duration::from_secs(2)).await {
        if r.frame.kind == FrameKind::End {
            ends += 1;
        }
        received.push(r);
        if ends >= 2 * loa_controller::live::frames::END_REPEATS {
            break;
        }
    }
    let on = |topic: String| -> Vec<live_common::Received> {
        let mut v: Vec<_> = received
            .iter()
            .filter(|r| r.topic == topic)
            .cloned()
            .collect();
        // The End frame is repeated: keep its first copy.
        if let Some(first_end) = v.iter().position(|r| r.frame.kind == FrameKind::End) {
            v.truncate(first_end + 1);
        }
        v
    };
    let zone = on(zone_live_topic("thon-1"));
    let direct = on(receiver_live_topic("loa-2"));
    assert!(
        on(receiver_live_topic("loa-1")).is_empty(),
        "loa-1 hears it through its zone only"
    );
    assert!(
        on(zone_live_topic("thon-2")).is_empty(),
        "thon-2 is not a target"
    );
    let audio = check_stream(&zone, &id);
    let audio_direct = check_stream(&direct, &id);
    assert_eq!(audio.len(), audio_direct.len());
    assert!(audio.iter().all(|f| f.priority == Priority::Emergency));

    // As long as the programme, give or take a frame and the padding.
    let secs = source.len() as f64 / f64::from(rate);
    let frames = audio.len() as f64;
    assert!(
        (frames * 0.02 - secs).abs() < 0.1,
        "{frames} frames for {secs:.2} s"
    );

    // Paced in real time: 50 frames a second, never a burst.
    let zone_audio: Vec<_> = zone
        .iter()
        .filter(|r| r.frame.kind == FrameKind::Audio)
        .collect();
    let span = zone_audio.last().unwrap().at - zone_audio.first().unwrap().at;
    let nominal = Duration::from_millis(20 * (zone_audio.len() as u64 - 1));
    println!(
        "{} frames arrived over {span:?} (nominal {nominal:?})",
        zone_audio.len()
    );
    assert!(
        span >= nominal.mul_f64(0.95),
        "faster than real time: {span:?} for {nominal:?}"
    );
    assert!(
        span <= nominal.mul_f64(1.5) + Duration::from_millis(500),
        "far too slow: {span:?}"
    );
    // Capture instants are the sending times: 20 ms apart (a stall of the
    // machine may only add a gap).
    let first_capture = audio[0].capture_us;
    let last_capture = audio.last().unwrap().capture_us;
    assert!(last_capture - first_capture >= 20_000 * (audio.len() as i64 - 1));

    // Decoded, it is the programme's speech.
    let decoded = decode_frames(&audio);
    let reference = to_rate(&source, rate, 48_000);
    let (r, lag) = best_correlation(&envelope(&reference), &envelope(&decoded), 50);
    println!("envelope correlation {r:.3} at lag {lag} × 10 ms");
    assert!(r > 0.9, "envelope correlation {r:.3}");

    // It ended by itself; the record says why.
    let ended = t.wait_ended(&id, Duration::from_secs(5)).await;
    assert_eq!(ended["end_reason"], "source_ended");
    assert!(ended["ended_at"].is_string());
    let (_, list) = t.get("/broadcasts").await;
    assert_eq!(list, json!([]));
    let (_, all) = t.get("/broadcasts?all=true").await;
    assert_eq!(all[0]["id"], id.as_str());
    assert_eq!(all[0]["on_air"], false);
    LiveTest::assert_error(
        &t.delete(&format!("/broadcasts/{id}")).await,
        StatusCode::CONFLICT,
        "broadcast_ended",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_ends_a_broadcast_with_end_frames_and_a_restart_closes_orphans() {
    let mut t = LiveTest::start().await;
    t.receiver("thon-1", "loa-1").await;
    let (wav, _, _) = speech(
        "Một hai ba bốn năm sáu bảy tám chín mười. Một hai ba bốn năm sáu bảy tám chín mười.",
        t.dir.path(),
    );
    t.upload_programme("dem-so", wav).await;
    let mut listener =
        FrameListener::subscribe(&t.broker_url, &[receiver_live_topic("loa-1")]).await;
    let start = |priority: &str| {
        t.post(
            "/broadcasts",
            json!({"source": {"type": "programme", "id": "dem-so"},
                   "targets": {"receivers": ["loa-1"]}, "priority": priority}),
        )
    };
    let (status, b) = start("normal").await;
    assert_eq!(status, StatusCode::CREATED, "{b}");
    let id = b["id"].as_str().unwrap().to_string();
    // Let some audio go out, then stop it.
    let first = listener.next(Duration::from_secs(5)).await.expect("frames");
    assert_eq!(first.frame.seq, 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, ended) = t.delete(&format!("/broadcasts/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{ended}");
    assert_eq!(ended["on_air"], false);
    assert_eq!(ended["end_reason"], "stopped");
    let mut rest = vec![first];
    rest.extend(listener.until_end(Duration::from_secs(2)).await);
    check_stream(&rest, &id);
    assert!(rest.len() < 60, "stopped early: {} frames", rest.len());

    // A second broadcast ends when the controller shuts down.
    let (status, b) = start("priority").await;
    assert_eq!(status, StatusCode::CREATED, "{b}");
    let id = b["id"].as_str().unwrap().to_string();
    t.restart_hub().await;
    let (status, b) = t.get(&format!("/broadcasts/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(b["on_air"], false, "{b}");
    assert_eq!(b["end_reason"], "controller_shutdown");

    // One left on air by a controller that died: the next start closes it.
    let orphan = uuid::Uuid::new_v4().to_string();
    sqlx::query(
        "INSERT INTO broadcasts (id, source, targets, priority, playout_delay_ms, started_at, created_by) \
         VALUES ($1, '{\"type\":\"microphone\"}', '{\"zones\":[\"thon-1\"],\"receivers\":[]}', \
                 'emergency', 120, 1, 'admin')",
    )
    .bind(&orphan)
    .execute(&t.db)
    .await
    .unwrap();
    let (_, b) = t.get(&format!("/broadcasts/{orphan}")).await;
    assert_eq!(b["on_air"], true);
    t.restart_hub().await;
    let (status, b) = t.get(&format!("/broadcasts/{orphan}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(b["on_air"], false, "{b}");
    assert_eq!(b["end_reason"], "controller_restart");
    assert_eq!(b["source"], json!({"type": "microphone"}));
}

//! The controller's microphone through cpal's real ALSA path, with the
//! sample-exact ALSA set-up of `../shared/TESTING.md` (a `file` plugin in
//! front of `null`, its `infile` as the capture): one microphone broadcast
//! at a time, frames on the target's topic, `End` frames when it stops.
//! (That device runs far faster than real time, so this test checks the
//! plumbing and the timeline's catching up, not the audio; the end-to-end
//! tests play speech through a real-time JACK rig.)

mod live_common;

use std::time::Duration;

use live_common::{FrameListener, LiveTest, check_stream};
use loa_protocol::live::{FrameKind, receiver_live_topic};
use reqwest::StatusCode;
use serde_json::json;

#[test]
fn one_microphone_broadcast_at_a_time() {
    // ALSA reads `$HOME/.asoundrc` once per process, at its first use: set
    // it up before anything starts (this binary has this one test).
    let home = tempfile::tempdir().unwrap();
    let mic = home.path().join("mic.f32");
    let tone: Vec<u8> = (0..48_000)
        .flat_map(|i| {
            ((i as f32 * 440.0 * std::f32::consts::TAU / 48_000.0).sin() * 0.3).to_le_bytes()
        })
        .collect();
    std::fs::write(&mic, tone).unwrap();
    std::fs::write(
        home.path().join(".asoundrc"),
        format!(
            "pcm.!default {{\n  type file\n  slave.pcm \"null\"\n  file \"/dev/null\"\n  infile \"{}\"\n  format \"raw\"\n}}\n",
            mic.display()
        ),
    )
    .unwrap();
    // SAFETY: no other thread exists yet in this test binary's only test.
    unsafe { std::env::set_var("HOME", home.path()) };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let t = LiveTest::start().await;
        t.receiver("thon-1", "loa-1").await;
        let mut listener =
            FrameListener::subscribe(&t.broker_url, &[receiver_live_topic("loa-1")]).await;
        let body = json!({"source": {"type": "microphone"}, "targets": {"receivers": ["loa-1"]},
                          "priority": "emergency"});
        let (status, b) = t.post("/broadcasts", body.clone()).await;
        assert_eq!(status, StatusCode::CREATED, "{b}");
        let id = b["id"].as_str().unwrap().to_string();
        assert_eq!(b["source"], json!({"type": "microphone"}));

        // A second one is refused while the first is on air.
        let reply = t.post("/broadcasts", body.clone()).await;
        LiveTest::assert_error(&reply, StatusCode::CONFLICT, "microphone_busy");
        assert!(
            reply.1["error"].as_str().unwrap().contains(&id),
            "{}",
            reply.1
        );

        let first = listener
            .next(Duration::from_secs(5))
            .await
            .expect("microphone frames");
        assert_eq!(first.frame.kind, FrameKind::Audio);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (status, ended) = t.delete(&format!("/broadcasts/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{ended}");
        let mut received = vec![first];
        received.extend(listener.until_end(Duration::from_secs(2)).await);
        let audio = check_stream(&received, &id);
        // The device delivers far faster than real time; the timeline keeps
        // the frames to the wall clock by dropping the excess.
        println!(
            "{} frames in about 1 s; stats {}",
            audio.len(),
            ended["stats"]
        );
        assert!(
            audio.len() < 120,
            "{} frames: not kept to real time",
            audio.len()
        );
        let span = audio.last().unwrap().capture_us - audio[0].capture_us;
        assert!(
            span < 3_000_000,
            "capture instants follow the wall clock: {span} µs"
        );

        // The microphone is free again.
        let (status, b) = t.post("/broadcasts", body).await;
        assert_eq!(status, StatusCode::CREATED, "{b}");
        let id = b["id"].as_str().unwrap().to_string();
        let (status, _) = t.delete(&format!("/broadcasts/{id}")).await;
        assert_eq!(status, StatusCode::OK);
    });
}

//! Self-tests of the live-broadcast harness, without Loa's binaries: the
//! recorder's source port heard through ALSA capture, the Icecast station,
//! and the lossy MQTT link. If one of these fails, the live tests' verdicts
//! would mean nothing.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use loa_e2e::icecast::Icecast;
use loa_e2e::jack::{RATE, capture_asoundrc};
use loa_e2e::live::{Clip, PER_MS, chunk_latencies, locate, quantile};
use loa_e2e::lossy::LossyLink;
use loa_e2e::process::{ChildProcess, run_tool};
use loa_e2e::{Artifacts, JackServer, Mosquitto, Recorder, serial};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

const SEC: usize = RATE as usize;

/// `arecord | aplay` in one process environment whose ALSA default PCM
/// captures from the recorder's source port and plays into its input 1: the
/// source clip must come back on input 1, a little later, on the same clock.
#[test]
fn source_port_is_heard_by_alsa_capture_on_the_recorders_clock() -> Result<()> {
    let _serial = serial();
    let mut art = Artifacts::new("live_rig_source")?;
    let clip = Clip::generate(&art.dir, "clip", "Một, hai, ba, bốn, năm.", 1000, 0.3)?;
    let jack = JackServer::start(&art)?;
    let mut recorder = Recorder::start_with_source(
        Path::new(env!("CARGO_BIN_EXE_loa-jack-recorder")),
        &jack,
        &art,
        1,
    )?;
    let home = art.subdir("loop-home")?;
    let rc = capture_asoundrc(&recorder.source_port())
        .replace("system:playback_1", &recorder.port_name(1));
    std::fs::write(home.join(".asoundrc"), rc)?;
    let raw = "-f FLOAT_LE -r 48000 -c 1 -t raw --buffer-time=40000 --period-time=10000";
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("arecord -q {raw} | aplay -q {raw}"))
        .env("HOME", &home);
    jack.apply_env(&mut cmd);
    let mut pipe = ChildProcess::spawn("arecord|aplay", cmd, &art.path("loop.log"))?;
    std::thread::sleep(Duration::from_secs(1));
    let n = recorder.play(&clip.raw)?;
    std::thread::sleep(Duration::from_millis(clip.duration_ms() + 800));
    pipe.ensure_running()?;
    drop(pipe);
    let recording = recorder.stop()?;
    recording.save_rig_wav(&art.path("rig.wav"))?;

    let source = recording.source.as_ref().context("no source track")?;
    let (start, _) = *recording
        .clip_starts
        .iter()
        .find(|(_, k)| *k == n)
        .context("clip start not logged")?;
    let in_source = locate(&clip.samples, source, 0, usize::MAX).context("source too short")?;
    ensure!(
        in_source.lag.abs_diff(start) <= 12 && in_source.correlation > 0.99,
        "source track: clip at {} (logged {start}), correlation {:.3}",
        in_source.lag,
        in_source.correlation
    );
    let back = locate(&clip.samples, &recording.tracks[0], start, usize::MAX)
        .context("loop track too short")?;
    let latency = (back.lag as f64 - start as f64) / PER_MS;
    let chunks = chunk_latencies(&clip.samples, start, &recording.tracks[0], latency, 20.0);
    art.figure(format!(
        "ALSA capture → playback loop: correlation {:.3}, latency {latency:.2} ms \
         (chunks: n {} min {:.2} max {:.2} ms)",
        back.correlation,
        chunks.len(),
        quantile(&chunks, 0.0),
        quantile(&chunks, 1.0)
    ));
    ensure!(
        back.correlation > 0.95,
        "loop correlation {:.3}",
        back.correlation
    );
    ensure!(
        (0.0..500.0).contains(&latency),
        "loop latency {latency:.1} ms"
    );
    ensure!(
        quantile(&chunks, 1.0) - quantile(&chunks, 0.0) < 2.0,
        "latency varies along the clip: {chunks:?}"
    );
    Ok(())
}

/// Icecast fed by ffmpeg in a loop: a listener (ffmpeg decoding the URL)
/// hears the clip.
#[test]
fn icecast_station_streams_the_looping_clip() -> Result<()> {
    let _serial = serial();
    let mut art = Artifacts::new("live_rig_icecast")?;
    let clip = Clip::generate(
        &art.dir,
        "station",
        "Đây là đài phát thanh thử nghiệm.",
        660,
        0.8,
    )?;
    let mut icecast = Icecast::start(&art, &clip.mp3)?;
    let out = art.path("heard.f32");
    let seconds = (clip.duration_ms() * 2 / 1000 + 2).to_string();
    run_tool(
        Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-i"])
            .arg(icecast.url())
            .args([
                "-t", &seconds, "-f", "f32le", "-ar", "48000", "-ac", "1", "-y",
            ])
            .arg(&out)
            .stdout(Stdio::null()),
    )?;
    icecast.ensure_running()?;
    let bytes = std::fs::read(&out)?;
    let heard: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let found = locate(&clip.samples, &heard, 0, usize::MAX).context("heard too little")?;
    art.figure(format!(
        "listener heard {:.1} s; clip found at {:.2} s with envelope correlation {:.3}",
        heard.len() as f64 / SEC as f64,
        found.lag as f64 / SEC as f64,
        found.correlation
    ));
    ensure!(
        found.correlation > 0.9,
        "correlation {:.3}",
        found.correlation
    );
    Ok(())
}

/// Through the lossy link to a real broker: about 10 % of the QoS 0 live
/// publishes are lost, every other message arrives.
#[test]
fn lossy_link_drops_a_tenth_of_live_frames_only() -> Result<()> {
    let _serial = serial();
    let mut art = Artifacts::new("live_rig_lossy")?;
    let mut mosquitto = Mosquitto::start(&art)?;
    let link = LossyLink::start(([127, 0, 0, 1], mosquitto.port).into(), 0.1, 7)?;
    let (live, other) = tokio::runtime::Runtime::new()?.block_on(async {
        let mut opts = MqttOptions::new("lossy-sub", "127.0.0.1", link.port);
        opts.set_keep_alive(Duration::from_secs(5));
        let (sub, mut sub_loop) = AsyncClient::new(opts, 64);
        sub.subscribe("loa/v1/live/zones/z", QoS::AtMostOnce)
            .await?;
        sub.subscribe("loa/v1/receivers/r/clock-reply", QoS::AtMostOnce)
            .await?;
        let mut opts = MqttOptions::new("lossy-pub", "127.0.0.1", mosquitto.port);
        opts.set_keep_alive(Duration::from_secs(5));
        let (publ, mut pub_loop) = AsyncClient::new(opts, 64);
        tokio::spawn(async move { while pub_loop.poll().await.is_ok() {} });
        // Wait for the subscriptions to be in place.
        let mut acks = 0;
        while acks < 2 {
            if let Event::Incoming(Packet::SubAck(_)) = sub_loop.poll().await? {
                acks += 1;
            }
        }
        let sender = tokio::spawn(async move {
            for i in 0..1000u32 {
                publ.publish(
                    "loa/v1/live/zones/z",
                    QoS::AtMostOnce,
                    false,
                    i.to_be_bytes().to_vec(),
                )
                .await?;
                publ.publish(
                    "loa/v1/receivers/r/clock-reply",
                    QoS::AtMostOnce,
                    false,
                    b"{}".to_vec(),
                )
                .await?;
                if i % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            anyhow::Ok(())
        });
        let (mut live, mut other) = (0u32, 0u32);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while other < 1000 {
            match tokio::time::timeout_at(deadline, sub_loop.poll()).await {
                Err(_) => break,
                Ok(Err(e)) => return Err(e.into()),
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    if p.topic.starts_with("loa/v1/live/") {
                        live += 1;
                    } else {
                        other += 1;
                    }
                    if other == 1000 {
                        // Everything has passed: the clock replies came after their frames.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        break;
                    }
                }
                Ok(Ok(_)) => {}
            }
        }
        sender.await??;
        anyhow::Ok((live, other))
    })?;
    mosquitto.ensure_running()?;
    let counts = link.counts();
    art.figure(format!(
        "received {live} live frames and {other} other messages of 1000 each; link counted {:?} \
         live, {} dropped",
        counts.live_publishes, counts.dropped
    ));
    ensure!(other == 1000, "non-live messages lost: {other} of 1000");
    ensure!(
        (850..=950).contains(&live),
        "live frames received: {live} of 1000"
    );
    ensure!(
        u64::from(live) + counts.dropped == 1000,
        "counts {counts:?}"
    );
    Ok(())
}

//! Self-test of the audio rig the end-to-end tests rely on: two `aplay`
//! clients play the test bulletin through ALSA → JACK into the recorder, and
//! the recorder must find it sample-for-sample, heard no earlier than each
//! `aplay` was launched and with the launch gap between them preserved.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use loa_e2e::jack::asoundrc;
use loa_e2e::playout::measure;
use loa_e2e::process::ChildProcess;
use loa_e2e::{Artifacts, JackServer, Recorder, TestBulletin, serial};

fn unix_nanos() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128
}

#[test]
fn rig_records_alsa_clients_on_one_clock_in_utc() -> Result<()> {
    let _serial = serial();
    let mut art = Artifacts::new("rig")?;
    let bulletin = TestBulletin::generate(&art.dir)?;
    let jack = JackServer::start(&art)?;
    let recorder = Recorder::start(
        Path::new(env!("CARGO_BIN_EXE_loa-jack-recorder")),
        &jack,
        &art,
        2,
    )?;

    let gap = Duration::from_millis(150);
    let mut players = Vec::new();
    let mut launched = Vec::new();
    for k in 1..=2 {
        let home = art.subdir(&format!("aplay-{k}"))?;
        std::fs::write(home.join(".asoundrc"), asoundrc(&recorder.port_name(k)))?;
        let mut cmd = Command::new("aplay");
        cmd.arg("-q").arg(&bulletin.wav).env("HOME", &home);
        jack.apply_env(&mut cmd);
        launched.push(unix_nanos());
        players.push(ChildProcess::spawn(
            &format!("aplay {k}"),
            cmd,
            &art.path(&format!("aplay-{k}.log")),
        )?);
        std::thread::sleep(gap);
    }
    for player in &mut players {
        let status = player.wait_exit(Duration::from_secs(30))?;
        assert!(status.success(), "aplay failed: {}", player.log_tail(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    let recording = recorder.stop()?;

    let mut played = Vec::new();
    for k in 1..=2 {
        let p = measure(
            &recording,
            k,
            &format!("aplay-{k}"),
            &bulletin.reference,
            launched[k - 1],
        )?;
        recording.save_wav(k, &art.path(&format!("aplay-{k}.wav")))?;
        art.figure(format!(
            "{} (offset = first sample heard − aplay launch)",
            p.summary()
        ));
        played.push(p);
    }
    let launch_gap_ms = (launched[1] - launched[0]) as f64 / 1e6;
    let heard_gap_ms =
        (played[1].first_sample_unix_ns - played[0].first_sample_unix_ns) as f64 / 1e6;
    art.figure(format!(
        "launch gap {launch_gap_ms:.2} ms, heard gap {heard_gap_ms:.2} ms"
    ));

    for p in &played {
        // A lossless path: only an xrun of the loaded machine may dent it.
        assert!(p.correlation > 0.95, "{}", p.summary());
        // Not before the launch, and not absurdly late.
        assert!((0.0..1000.0).contains(&p.offset_ms), "{}", p.summary());
        assert!(p.outside_ratio < 0.01, "{}", p.summary());
    }
    assert!(
        (heard_gap_ms - launch_gap_ms).abs() < 100.0,
        "launch gap {launch_gap_ms} ms, heard gap {heard_gap_ms} ms"
    );
    Ok(())
}

//! The officers' web console in a real browser (issue 4): Debian's Chromium,
//! headless, driven by Playwright (`tests/browser/console.test.mjs`), against
//! the real controller and two real receivers whose loudspeaker output is a
//! WAV file (`--output wav:PATH`, written in real time).
//!
//! The browser script logs in as an editor, drops an MP3 on the upload area
//! (progress bar observed) and submits it; logs in as the approver,
//! approves it and schedules it twice a week (one of the days today, a few
//! seconds ahead); waits for the play to appear in the report once the
//! receivers have played it; then starts an emergency broadcast from the
//! top bar with Chromium's fake microphone playing a Vietnamese sentence;
//! on Cụm loa moves the first receiver's volume slider to 40 % and presses
//! "Phát âm thử" (checking the receiver reports the volume and its
//! amplifier going on and off); and takes screenshots of every page at desktop and phone width
//! (`tests/artifacts/console/`). It counts actions and clicks and times
//! "click to sound" from the receivers' WAV files.
//!
//! This test then checks, from the receivers' WAV files, that both played
//! the bulletin and the microphone's speech, that the first one played a
//! 5 s 1 kHz test tone at −12 dBFS × 40 %, and that the controller holds
//! the proof of play. It needs `npm ci` in `tests/browser` first, so it is
//! run by `scripts/browser-test.sh` (`--ignored`), a step of
//! `scripts/test.sh`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use loa_e2e::audio::{align, read_wav_mono};
use loa_e2e::controller::BrokerMode;
use loa_e2e::net::free_port;
use loa_e2e::process::{ChildProcess, log_tail, run_tool};
use loa_e2e::{Api, Artifacts, Binaries, Controller, TestBulletin, serial};
use reqwest::Method;
use serde_json::{Value, json};

/// Receivers, in zones thon-1 and thon-2 of the commune.
const RECEIVERS: [(&str, &str, f64, f64); 2] = [
    ("loa-cho", "thon-1", 21.6330, 105.6410),
    ("loa-van-hoa", "thon-2", 21.6371, 105.6475),
];
/// Everyone's password in this test.
const PASSWORD: &str = "mật-khẩu-thử-nghiệm";
/// The issue's targets.
const MAX_EMERGENCY_CLICKS: u64 = 2;
const MAX_EMERGENCY_SECONDS: f64 = 5.0;
const MAX_BULLETIN_ACTIONS: u64 = 8;
/// Least envelope correlation of the bulletin (MP3 → Opus) with its source.
const MIN_BULLETIN_CORRELATION: f64 = 0.9;
/// Least envelope correlation of the microphone speech with its source:
/// lower than the bulletin's because the browser's capture processing
/// (noise suppression, automatic gain) and a live 20 ms Opus stream sit in
/// between; silence or another sound scores far below.
const MIN_SPEECH_CORRELATION: f64 = 0.7;

#[test]
#[ignore = "needs tests/browser/node_modules (npm ci) and Chromium: run scripts/browser-test.sh"]
fn console_in_chromium_against_real_controller_and_receivers() -> Result<()> {
    let _serial = serial();
    let mut art = Artifacts::new("console")?;
    let result = tokio::runtime::Runtime::new()?.block_on(scenario(&mut art));
    if let Err(e) = &result {
        println!("console: FAILED: {e:#}");
        for log in [
            "controller.log",
            "loa-cho.log",
            "loa-van-hoa.log",
            "browser.log",
        ] {
            let path = art.path(log);
            if path.exists() {
                println!(
                    "--- last lines of {}:\n{}",
                    path.display(),
                    log_tail(&path, 25)
                );
            }
        }
        println!("(logs and screenshots: {})", art.dir.display());
    }
    result
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A Vietnamese sentence for the fake microphone: 48 kHz mono 16-bit WAV
/// (what Chromium's `--use-file-for-fake-audio-capture` reads; it loops it),
/// with a second of silence after, so the loop has a clear shape.
fn microphone_speech(dir: &Path) -> Result<PathBuf> {
    let raw = dir.join("mic-raw.wav");
    let out = dir.join("mic.wav");
    run_tool(
        Command::new("espeak-ng")
            .args(["-v", "vi", "-s", "140", "-w"])
            .arg(&raw)
            .arg("Khẩn cấp. Bà con chú ý, nước lũ đang lên, hãy di chuyển lên chỗ cao."),
    )?;
    run_tool(
        Command::new("sox")
            .arg(&raw)
            .args(["-r", "48000", "-c", "1", "-b", "16"])
            .arg(&out)
            .args(["norm", "-3", "pad", "0", "1"]),
    )?;
    Ok(out)
}

async fn scenario(art: &mut Artifacts) -> Result<()> {
    let browser_dir = repo_root().join("tests/browser");
    ensure!(
        browser_dir.join("node_modules/playwright-core").exists(),
        "tests/browser/node_modules is missing: run `npm ci` there (scripts/browser-test.sh does)"
    );
    let chromium = std::env::var("LOA_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    ensure!(
        Path::new(&chromium).exists(),
        "{chromium} not found: install Debian's chromium (scripts/setup.sh)"
    );
    let bins = Binaries::locate()?;
    let media = art.subdir("media")?;
    let bulletin = TestBulletin::generate(&media)?;
    // The officer's file, named as an officer would.
    let mp3 = media.join("Bản tin chuyển đổi số.mp3");
    std::fs::copy(&bulletin.mp3, &mp3)?;
    let mic = microphone_speech(&media)?;

    let controller =
        Controller::start(&bins, art, BrokerMode::Embedded { port: free_port() }).await?;
    let admin = controller.admin_api().await?;
    for (id, kind, parent, name) in [
        ("tinh-tn", "province", "root", "Tỉnh Thái Nguyên"),
        ("huyen-dt", "district", "tinh-tn", "Huyện Đại Từ"),
        ("xa-tl", "commune", "huyen-dt", "Xã Tân Linh"),
        ("xa-hs", "commune", "huyen-dt", "Xã Hùng Sơn"),
    ] {
        admin
            .ok(
                Method::POST,
                "/api/v1/units",
                Some(&json!({"id": id, "name": name, "kind": kind, "parent_id": parent})),
            )
            .await?;
    }
    // Quiet hours only where the test does not schedule (it runs at any hour).
    for (id, name, unit, quiet) in [
        ("thon-1", "Thôn Làng Cả", "xa-tl", None),
        ("thon-2", "Thôn Đồng Tâm", "xa-tl", None),
        ("thon-3", "Thôn Hùng Sơn", "xa-hs", Some("22:00-05:00")),
    ] {
        admin
            .ok(
                Method::POST,
                "/api/v1/zones",
                Some(&json!({"id": id, "name": name, "unit_id": unit, "quiet_hours": quiet})),
            )
            .await?;
    }
    for (username, role, name) in [
        ("bientap", "editor", "Nguyễn Thị Lan"),
        ("duyet", "approver", "Trần Văn Hùng"),
    ] {
        admin
            .ok(
                Method::POST,
                "/api/v1/users",
                Some(
                    &json!({"username": username, "password": PASSWORD, "role": role,
                    "unit_id": "xa-tl", "display_name": name}),
                ),
            )
            .await?;
    }

    let mut receivers = Vec::new();
    let mut wavs = Vec::new();
    for (id, zone, lat, lon) in RECEIVERS {
        let r = admin
            .ok(
                Method::POST,
                "/api/v1/receivers",
                Some(&json!({"id": id, "name": format!("Loa {id}"), "zone": zone})),
            )
            .await?;
        let token = r["token"].as_str().context("receiver token")?.to_string();
        admin
            .ok(
                Method::PATCH,
                &format!("/api/v1/receivers/{id}"),
                Some(&json!({"lat": lat, "lon": lon})),
            )
            .await?;
        let root = art.subdir(id)?;
        let wav = art.path(&format!("{id}.wav"));
        let mut cmd = Command::new(&bins.receiver);
        cmd.args([
            "run",
            "--id",
            id,
            "--token",
            &token,
            "--controller",
            &controller.url(),
        ])
        .args(["--broker", &controller.broker_url(), "--cache"])
        .arg(root.join("cache"))
        .arg("--output")
        .arg(format!("wav:{}", wav.display()))
        .env("RUST_LOG", "info,loa_receiver=debug");
        receivers.push(ChildProcess::spawn(
            &format!("receiver {id}"),
            cmd,
            &art.path(&format!("{id}.log")),
        )?);
        wavs.push(wav);
    }
    wait_online(&admin, Duration::from_secs(30)).await?;

    let results = art.path("browser-results.json");
    let config = json!({
        "base": controller.url(),
        "chromium": chromium,
        "admin": {"username": "admin", "password": controller.admin_password},
        "editor": {"username": "bientap", "password": PASSWORD},
        "approver": {"username": "duyet", "password": PASSWORD},
        "mp3": mp3,
        "mic": mic,
        "screenshots": art.dir,
        "receiverWavs": wavs,
        "receiverIds": RECEIVERS.iter().map(|r| r.0).collect::<Vec<_>>(),
        "results": results,
    });
    let config_path = art.path("browser-config.json");
    std::fs::write(&config_path, serde_json::to_vec_pretty(&config)?)?;

    let mut node = Command::new("node");
    node.arg("--test")
        .arg("--test-reporter=spec")
        .arg(browser_dir.join("console.test.mjs"))
        .current_dir(&browser_dir)
        .env("LOA_CONSOLE_CONFIG", &config_path);
    let started = Instant::now();
    let mut browser = ChildProcess::spawn("browser tests", node, &art.path("browser.log"))?;
    let status = browser.wait_exit(Duration::from_secs(600))?;
    println!(
        "--- browser tests ({:.0} s):\n{}",
        started.elapsed().as_secs_f64(),
        log_tail(&art.path("browser.log"), 80)
    );
    for r in &mut receivers {
        r.ensure_running()?;
    }
    ensure!(status.success(), "browser tests failed ({status})");
    let r: Value = serde_json::from_slice(&std::fs::read(&results)?)
        .context("reading the browser's results")?;

    // Figures the issue asks for.
    let actions = r["bulletin_actions"].as_u64().context("bulletin_actions")?;
    let clicks = r["emergency_clicks"].as_u64().context("emergency_clicks")?;
    let seconds: Vec<f64> = r["emergency_seconds"]
        .as_array()
        .context("emergency_seconds")?
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    let slowest = seconds.iter().copied().fold(0.0, f64::max);
    art.figure(format!(
        "console: bulletin uploaded, approved and scheduled twice a week in {actions} actions (target ≤ {MAX_BULLETIN_ACTIONS}): {}",
        r["bulletin_steps"]
    ));
    art.figure(format!(
        "console: emergency {clicks} clicks, {} s from first click to sound (slowest receiver; target ≤ {MAX_EMERGENCY_CLICKS} clicks, ≤ {MAX_EMERGENCY_SECONDS} s)",
        seconds.iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>().join(" / ")
    ));
    art.figure(format!(
        "console: upload progress values seen: {}",
        r["upload_progress"]
    ));
    ensure!(
        actions <= MAX_BULLETIN_ACTIONS,
        "bulletin needed {actions} actions"
    );
    ensure!(
        clicks <= MAX_EMERGENCY_CLICKS,
        "emergency needed {clicks} clicks"
    );
    ensure!(
        seconds.len() == RECEIVERS.len() && slowest <= MAX_EMERGENCY_SECONDS,
        "emergency took {seconds:?} s to sound"
    );

    // Proof of play at the controller: one completed play per receiver.
    let schedule = r["schedule_id"].as_str().context("schedule_id")?;
    let plays = admin
        .ok(
            Method::GET,
            &format!("/api/v1/plays?schedule={schedule}"),
            None,
        )
        .await?;
    let plays = plays.as_array().context("plays")?;
    for (id, ..) in RECEIVERS {
        ensure!(
            plays
                .iter()
                .any(|p| p["receiver_id"] == id && p["outcome"] == "completed"),
            "no completed play of {schedule} on {id}: {plays:?}"
        );
    }

    // What the loudspeakers played: the bulletin, then the microphone.
    let (speech, _) = read_wav_mono(&mic)?;
    let speech_end = speech
        .iter()
        .rposition(|s| s.abs() > 0.01)
        .context("the microphone file is silent")?;
    let speech = &speech[..speech_end];
    let spans = r["emergency_spans"].as_array().context("emergency_spans")?;
    for (i, wav) in wavs.iter().enumerate() {
        let (samples, rate) = read_wav_mono(wav)?;
        ensure!(rate == 48_000, "{} is not 48 kHz", wav.display());
        let from = spans[i][0].as_u64().context("span start")? as usize;
        let to = (spans[i][1].as_u64().context("span end")? as usize).min(samples.len());
        ensure!(from < to, "no emergency audio in {}", wav.display());
        let before = &samples[..from];
        let bulletin_match = align(&bulletin.reference, before)
            .with_context(|| format!("{} holds less audio than the bulletin", wav.display()))?;
        let live = &samples[from..to];
        let speech_match = align(speech, live).with_context(|| {
            format!(
                "{}: the emergency lasted {:.1} s, shorter than the speech",
                wav.display(),
                live.len() as f64 / 48_000.0
            )
        })?;
        art.figure(format!(
            "console: {}: bulletin correlation {:.3}, emergency speech correlation {:.3} (at {:.2} s into the broadcast)",
            RECEIVERS[i].0,
            bulletin_match.correlation,
            speech_match.correlation,
            speech_match.lag as f64 / 48_000.0
        ));
        ensure!(
            bulletin_match.correlation >= MIN_BULLETIN_CORRELATION,
            "{}: bulletin correlation {:.3}",
            wav.display(),
            bulletin_match.correlation
        );
        ensure!(
            speech_match.correlation >= MIN_SPEECH_CORRELATION,
            "{}: speech correlation {:.3}",
            wav.display(),
            speech_match.correlation
        );
    }
    // The test tone from the Cụm loa page: 5 s of 1 kHz at −12 dBFS × the
    // volume the slider set, in the first receiver's output.
    let volume = r["tone_volume"].as_f64().context("tone_volume")? / 100.0;
    let span = r["tone_span"].as_array().context("tone_span")?;
    let (samples, _) = read_wav_mono(&wavs[0])?;
    let from = span[0].as_u64().context("tone span start")? as usize;
    let to = (span[1].as_u64().context("tone span end")? as usize).min(samples.len());
    let tone = &samples[from.min(to)..to];
    let expected_peak = 10f64.powf(-12.0 / 20.0) * volume;
    let loud = |s: &&f32| f64::from(s.abs()) > expected_peak / 2.0;
    let on = tone
        .iter()
        .position(|s| loud(&s))
        .context("no test tone in the output")?;
    let off = tone
        .iter()
        .rposition(|s| loud(&s))
        .context("no test tone in the output")?;
    let seconds = (off - on) as f64 / 48_000.0;
    ensure!(seconds > 1.0, "test tone of {seconds:.2} s");
    let middle = &tone[on + 24_000..off - 24_000];
    let peak = middle.iter().fold(0f64, |m, s| m.max(f64::from(s.abs())));
    let crossings = middle
        .windows(2)
        .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
        .count();
    let hz = crossings as f64 / 2.0 / (middle.len() as f64 / 48_000.0);
    art.figure(format!(
        "console: test tone on {}: {seconds:.3} s, {hz:.1} Hz, peak {peak:.4} (expected {expected_peak:.4} = −12 dBFS × {volume:.2})",
        RECEIVERS[0].0
    ));
    ensure!(
        (seconds - 5.0).abs() < 0.05,
        "test tone lasted {seconds:.3} s"
    );
    ensure!((hz - 1000.0).abs() < 5.0, "test tone at {hz:.1} Hz");
    ensure!(
        (peak - expected_peak).abs() < 0.03 * expected_peak,
        "test tone peak {peak:.4}, expected {expected_peak:.4}"
    );

    let shots = std::fs::read_dir(&art.dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "png"))
        .count();
    art.figure(format!(
        "console: {shots} screenshots in {}",
        art.dir.display()
    ));
    ensure!(
        shots >= 16,
        "expected screenshots of every page at two widths, found {shots}"
    );
    Ok(())
}

async fn wait_online(api: &Api, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let list = api.ok(Method::GET, "/api/v1/receivers", None).await?;
        let online = list
            .as_array()
            .map(|a| a.iter().filter(|r| r["online"] == true).count())
            .unwrap_or(0);
        if online == RECEIVERS.len() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("receivers not online after {timeout:?}: {list}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

//! The end-to-end scenarios, on the real binaries: a generated
//! Vietnamese MP3 is uploaded, scheduled a few seconds ahead, and two
//! receivers on the cpal backend (ALSA → JACK → recorder) must play it —
//! checked on the recording, not on the receivers' word — within 100 ms of
//! the instant; the controller must then hold the proof of play.
//!
//! Scenarios: the embedded broker; external Mosquitto; and the controller
//! (with its embedded broker) killed after distribution, where the receivers
//! must still play on time and their reports arrive once it is restarted.
//!
//! Figures (offsets, spread, correlation) are printed (`-- --nocapture`) and
//! written to `tests/artifacts/<test>/figures.txt`, next to every process's
//! log and the recordings as WAV files.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Asia::Ho_Chi_Minh;
use loa_e2e::api::Programme;
use loa_e2e::controller::BrokerMode;
use loa_e2e::net::free_port;
use loa_e2e::playout::{Playout, measure};
use loa_e2e::process::log_tail;
use loa_e2e::receiver::ReceiverConfig;
use loa_e2e::{
    Api, Artifacts, Binaries, Controller, JackServer, Mosquitto, Receiver, Recorder, TestBulletin,
    serial, wait,
};
use serde_json::{Value, json};

/// Receivers under test, all in zone `thon-1`.
const RECEIVERS: [&str; 2] = ["loa-1", "loa-2"];
/// Required start accuracy (the figure).
const MAX_OFFSET_MS: f64 = 100.0;
/// Minimum envelope correlation with the source. MP3 → Opus at ~32 kb/s
/// with loudness normalisation keeps speech envelopes very close; a wrong
/// programme, silence or garbled audio falls far below.
const MIN_CORRELATION: f64 = 0.9;
/// Largest RMS outside the programme relative to inside: nothing else
/// (no second play, no noise) may come out of the speaker.
const MAX_OUTSIDE_RATIO: f64 = 0.05;

/// What differs between the three scenarios.
struct Scenario {
    /// Artifact directory name.
    name: &'static str,
    /// External Mosquitto instead of the embedded broker.
    mosquitto: bool,
    /// Target the two receivers by id instead of by zone.
    target_receivers: bool,
    /// Kill the controller once the receivers hold the audio.
    kill_controller: bool,
    /// Seconds from scheduling to the instant.
    lead_secs: i64,
}

#[test]
fn embedded_broker_receivers_play_on_time() -> Result<()> {
    run(Scenario {
        name: "embedded_broker",
        mosquitto: false,
        target_receivers: false,
        kill_controller: false,
        lead_secs: 8,
    })
}

#[test]
fn external_mosquitto_receivers_play_on_time() -> Result<()> {
    run(Scenario {
        name: "external_mosquitto",
        mosquitto: true,
        target_receivers: true,
        kill_controller: false,
        lead_secs: 8,
    })
}

#[test]
fn receivers_play_on_time_while_controller_is_dead() -> Result<()> {
    run(Scenario {
        name: "controller_killed",
        mosquitto: false,
        target_receivers: false,
        kill_controller: true,
        lead_secs: 20,
    })
}

fn run(scenario: Scenario) -> Result<()> {
    let _serial = serial();
    let mut art = Artifacts::new(scenario.name)?;
    let result = tokio::runtime::Runtime::new()?.block_on(scheduled_bulletin(&scenario, &mut art));
    if let Err(e) = &result {
        println!("{}: FAILED: {e:#}", scenario.name);
        for log in [
            "controller.log",
            "loa-1.log",
            "loa-2.log",
            "mosquitto.log",
            "jackd.log",
        ] {
            let path = art.path(log);
            if path.exists() {
                println!(
                    "--- last lines of {}:\n{}",
                    path.display(),
                    log_tail(&path, 15)
                );
            }
        }
        println!("(all logs, recordings and figures: {})", art.dir.display());
    }
    result
}

async fn scheduled_bulletin(scenario: &Scenario, art: &mut Artifacts) -> Result<()> {
    let bins = Binaries::locate()?;
    let bulletin = TestBulletin::generate(&art.dir)?;
    let mut jack = JackServer::start(art)?;
    let mut recorder = Recorder::start(
        Path::new(env!("CARGO_BIN_EXE_loa-jack-recorder")),
        &jack,
        art,
        RECEIVERS.len(),
    )?;
    let mut mosquitto = if scenario.mosquitto {
        Some(Mosquitto::start(art)?)
    } else {
        None
    };
    let broker = match &mosquitto {
        Some(m) => BrokerMode::External { url: m.url() },
        None => BrokerMode::Embedded { port: free_port() },
    };
    let mut controller = Controller::start(&bins, art, broker).await?;
    let mut api = controller.admin_api().await?;

    api.create_zone("thon-1", "Thôn 1").await?;
    let mut receivers = Vec::new();
    for (k, id) in RECEIVERS.iter().enumerate() {
        let token = api
            .create_receiver(id, &format!("Loa {}", k + 1), "thon-1")
            .await?;
        let config = ReceiverConfig {
            id,
            token: &token,
            controller: &controller.url(),
            broker: &controller.broker_url(),
            playback_port: &recorder.port_name(k + 1),
        };
        receivers.push(Receiver::start(&bins, art, &jack, &config)?);
    }
    wait::until(
        "both receivers online",
        Duration::from_secs(40),
        async || {
            check_alive(&mut receivers)?;
            let list = api.receivers().await?;
            Ok(RECEIVERS
                .iter()
                .all(|id| find(&list, id).is_some_and(|r| r["online"] == json!(true)))
                .then_some(()))
        },
    )
    .await?;

    let programme = api
        .upload_programme(&bulletin.mp3, "Bản tin chuyển đổi số", "chuyen-doi-so")
        .await?;
    art.figure(format!(
        "programme {}: source {} ms, stored {} ms, {} bytes Ogg Opus at {} b/s",
        programme.id,
        bulletin.duration_ms(),
        programme.duration_ms,
        programme.bytes,
        programme.bitrate
    ));

    // A whole second, `lead_secs` ahead, as local wall time in Vietnam.
    let instant = Utc
        .timestamp_opt(Utc::now().timestamp() + scenario.lead_secs + 1, 0)
        .unwrap();
    let local = instant
        .with_timezone(&Ho_Chi_Minh)
        .naive_local()
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string();
    let targets = if scenario.target_receivers {
        json!({"zones": [], "receivers": RECEIVERS})
    } else {
        json!({"zones": ["thon-1"], "receivers": []})
    };
    let schedule = api
        .create_schedule(&json!({
            "programme_id": programme.id, "targets": targets, "start": local,
            "timezone": "Asia/Ho_Chi_Minh", "priority": "normal"
        }))
        .await?;
    art.figure(format!(
        "scheduled at {local} Asia/Ho_Chi_Minh = {instant}; response {schedule}"
    ));
    let next = schedule["next_occurrences"]
        .as_array()
        .context("schedule response without next_occurrences")?;
    ensure!(
        next.first()
            .and_then(Value::as_str)
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            == Some(instant.into()),
        "next_occurrences {next:?} should start with {instant}"
    );

    if scenario.kill_controller {
        let deadline = (instant - Utc::now())
            .to_std()
            .unwrap_or_default()
            .saturating_sub(Duration::from_secs(3));
        wait::until(
            "both receivers to report the programme cached",
            deadline,
            async || {
                check_alive(&mut receivers)?;
                let list = api.receivers().await?;
                Ok(RECEIVERS
                    .iter()
                    .all(|id| {
                        find(&list, id).is_some_and(|r| {
                            r["cached"]
                                .as_array()
                                .is_some_and(|c| c.contains(&json!(programme.id)))
                        })
                    })
                    .then_some(()))
            },
        )
        .await?;
        controller.kill9()?;
        art.figure(format!(
            "controller (and its embedded broker) killed with SIGKILL {:.1} s before the instant",
            (instant - Utc::now()).num_milliseconds() as f64 / 1000.0
        ));
    }

    // Let the programme play out, watching that nothing dies meanwhile.
    let end = instant
        + chrono::Duration::milliseconds(
            programme.duration_ms.max(bulletin.duration_ms()) as i64 + 3000,
        );
    while Utc::now() < end {
        check_alive(&mut receivers)?;
        jack.ensure_running()?;
        recorder.ensure_running()?;
        if let Some(m) = mosquitto.as_mut() {
            m.ensure_running()?;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let recording = recorder.stop()?;
    let instant_ns = instant.timestamp_nanos_opt().unwrap() as i128;
    let mut played = Vec::new();
    for (k, id) in RECEIVERS.iter().enumerate() {
        recording.save_wav(k + 1, &art.path(&format!("{id}.wav")))?;
        let p = measure(&recording, k + 1, id, &bulletin.reference, instant_ns)?;
        art.figure(p.summary());
        played.push(p);
    }
    let spread_ms =
        (played[0].first_sample_unix_ns - played[1].first_sample_unix_ns).abs() as f64 / 1e6;
    art.figure(format!("spread between receivers: {spread_ms:.2} ms"));
    check_playout(&played, &receivers)?;

    if scenario.kill_controller {
        controller.restart().await?;
        api = controller.admin_api().await?;
        art.figure("controller restarted on the same data directory");
    }
    let timeout = Duration::from_secs(if scenario.kill_controller { 60 } else { 30 });
    let plays = wait::until("proof of play from both receivers", timeout, async || {
        if !scenario.kill_controller {
            controller.ensure_running()?;
        }
        let rows = api.plays(&format!("programme={}", programme.id)).await?;
        let done: BTreeSet<&str> = rows
            .iter()
            .filter(|r| r["outcome"] == "completed")
            .filter_map(|r| r["receiver_id"].as_str())
            .collect();
        Ok((done.len() == RECEIVERS.len()).then_some(rows.clone()))
    })
    .await?;
    check_plays(art, &plays, &programme, instant)?;
    check_csv(&api, &programme).await?;
    Ok(())
}

/// `Err` with its log if a receiver has exited.
fn check_alive(receivers: &mut [Receiver]) -> Result<()> {
    receivers.iter_mut().try_for_each(Receiver::ensure_running)
}

/// The list entry with `"id": id`.
fn find<'a>(list: &'a [Value], id: &str) -> Option<&'a Value> {
    list.iter().find(|r| r["id"] == id)
}

/// The recording-based checks, all reported together.
fn check_playout(played: &[Playout], receivers: &[Receiver]) -> Result<()> {
    let mut failures = Vec::new();
    for (p, r) in played.iter().zip(receivers) {
        if p.correlation < MIN_CORRELATION {
            failures.push(format!(
                "{}: envelope correlation {:.3} < {MIN_CORRELATION} ({} xruns of the JACK rig during the play)",
                p.receiver, p.correlation, p.rig_xruns
            ));
        }
        if p.offset_ms.abs() > MAX_OFFSET_MS {
            failures.push(format!(
                "{}: started {:+.1} ms from the instant (limit ±{MAX_OFFSET_MS} ms)",
                p.receiver, p.offset_ms
            ));
        }
        if p.outside_ratio > MAX_OUTSIDE_RATIO {
            failures.push(format!(
                "{}: sound outside the programme (RMS ratio {:.3})",
                p.receiver, p.outside_ratio
            ));
        }
        if !failures.is_empty() {
            failures.push(format!("{} log tail:\n{}", r.id, r.log_tail(25)));
        }
    }
    if !failures.is_empty() {
        bail!("playout checks failed:\n{}", failures.join("\n"));
    }
    Ok(())
}

/// The proof-of-play rows: one `completed` row per receiver for this instant.
fn check_plays(
    art: &mut Artifacts,
    plays: &[Value],
    programme: &Programme,
    instant: DateTime<Utc>,
) -> Result<()> {
    for id in RECEIVERS {
        let rows: Vec<&Value> = plays.iter().filter(|r| r["receiver_id"] == id).collect();
        ensure!(
            rows.len() == 1,
            "{id}: expected one play row for programme {}, got {rows:?}",
            programme.id
        );
        let row = rows[0];
        ensure!(row["outcome"] == "completed", "{id}: {row}");
        let at = |field: &str| {
            row[field]
                .as_str()
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.with_timezone(&Utc))
        };
        ensure!(
            at("scheduled_at") == Some(instant),
            "{id}: scheduled_at {} ≠ {instant}",
            row["scheduled_at"]
        );
        let (started, ended) = (
            at("started_at").context("no started_at")?,
            at("ended_at").context("no ended_at")?,
        );
        art.figure(format!(
            "{id}: reported started_at {:+} ms, ended_at {:+} ms after the instant (receiver's own report)",
            (started - instant).num_milliseconds(),
            (ended - instant).num_milliseconds()
        ));
    }
    Ok(())
}

/// `GET /plays?format=csv` holds the same rows.
async fn check_csv(api: &Api, programme: &Programme) -> Result<()> {
    let text = api
        .plays_csv(&format!("programme={}", programme.id))
        .await?;
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let headers = reader.headers()?.clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("CSV without {name} column: {text}"))
    };
    let (receiver, outcome, prog) = (
        column("receiver_id")?,
        column("outcome")?,
        column("programme_id")?,
    );
    let mut completed = BTreeSet::new();
    for record in reader.records() {
        let record = record?;
        if &record[prog] == programme.id.as_str() && &record[outcome] == "completed" {
            completed.insert(record[receiver].to_string());
        }
    }
    let expected: BTreeSet<String> = RECEIVERS.iter().map(|s| s.to_string()).collect();
    ensure!(
        completed == expected,
        "CSV export lists completed plays for {completed:?}, expected {expected:?}:\n{text}"
    );
    Ok(())
}

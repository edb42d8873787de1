//! Live-broadcast support: the rig a live test runs on ([`LiveRig`]: JACK,
//! a recorder whose source port is the controller's microphone, the
//! controller, receivers, optionally a lossy link), the broadcast API
//! (`/api/v1/broadcasts`), generated Vietnamese speech clips, and the
//! measurements taken from a recording — where a clip sits in a track, the
//! capture→playout latency against the source track, and the offset between
//! two receivers to the sample.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::api::{Api, list};
use crate::artifacts::Artifacts;
use crate::audio::{Alignment, align, pearson, read_wav_mono, rms, rms_envelope, write_f32};
use crate::bins::Binaries;
use crate::controller::{BrokerMode, Controller, ControllerOptions};
use crate::fleet::{Fleet, FleetFigures, figures};
use crate::jack::{JackServer, RATE, Recorder, capture_asoundrc};
use crate::lossy::LossyLink;
use crate::net::free_port;
use crate::process::run_tool;
use crate::receiver::{Receiver, ReceiverConfig};
use crate::recording::Recording;

/// The zone every rig receiver belongs to.
pub const ZONE: &str = "thon-1";

/// Samples per millisecond on the rig.
pub const PER_MS: f64 = RATE as f64 / 1000.0;

// ---------------------------------------------------------------------------
// Speech clips

/// A generated speech clip: a short chime (a crisp onset), a gap, Vietnamese
/// speech by `espeak-ng -v vi`, and trailing silence; as WAV (the
/// reference), MP3 (an upload or a radio station's stream) and raw f32 (what
/// the recorder's source port plays).
pub struct Clip {
    /// 48 kHz mono 16-bit WAV.
    pub wav: PathBuf,
    /// MP3 encoded from `wav` with `lame` at 64 kb/s.
    pub mp3: PathBuf,
    /// Raw f32 LE samples of `wav`.
    pub raw: PathBuf,
    /// `wav`'s samples.
    pub samples: Vec<f32>,
}

impl Clip {
    /// Generates `STEM.{wav,mp3,f32}` in `dir` saying `text`, starting with a
    /// 200 ms chime at `chime_hz` and ending with `tail_s` seconds of silence.
    pub fn generate(
        dir: &Path,
        stem: &str,
        text: &str,
        chime_hz: u32,
        tail_s: f32,
    ) -> Result<Self> {
        let p = |suffix: &str| dir.join(format!("{stem}-{suffix}"));
        let fmt = ["-r", "48000", "-c", "1", "-b", "16"];
        run_tool(
            Command::new("espeak-ng")
                .args(["-v", "vi", "-s", "150", "-w"])
                .arg(p("espeak.wav"))
                .arg(text),
        )?;
        run_tool(
            Command::new("sox")
                .arg("-n")
                .args(fmt)
                .arg(p("chime.wav"))
                .args(["synth", "0.2", "sine", &chime_hz.to_string(), "vol", "0.5"]),
        )?;
        run_tool(
            Command::new("sox")
                .arg("-n")
                .args(fmt)
                .arg(p("gap.wav"))
                .args(["trim", "0", "0.3"]),
        )?;
        run_tool(
            Command::new("sox")
                .arg(p("espeak.wav"))
                .args(fmt)
                .arg(p("speech.wav"))
                .args(["norm", "-3", "pad", "0", &tail_s.to_string()]),
        )?;
        let wav = dir.join(format!("{stem}.wav"));
        run_tool(
            Command::new("sox")
                .args([p("chime.wav"), p("gap.wav"), p("speech.wav")])
                .arg(&wav),
        )?;
        let mp3 = dir.join(format!("{stem}.mp3"));
        run_tool(
            Command::new("lame")
                .args(["--quiet", "-b", "64"])
                .arg(&wav)
                .arg(&mp3),
        )?;
        let (samples, rate) = read_wav_mono(&wav)?;
        if rate != RATE || samples.len() < RATE as usize * 2 {
            bail!(
                "generated clip {stem} is {} samples at {rate} Hz; expected ≥ 2 s at 48 kHz",
                samples.len()
            );
        }
        let raw = dir.join(format!("{stem}.f32"));
        write_f32(&raw, &samples)?;
        Ok(Clip {
            wav,
            mp3,
            raw,
            samples,
        })
    }

    /// Length in milliseconds.
    pub fn duration_ms(&self) -> u64 {
        self.samples.len() as u64 * 1000 / RATE as u64
    }
}

/// A click track like `jack_metro`'s: a 20 ms 1 kHz tone burst every
/// `period_s` seconds, `clicks` of them, the first at 0.5 s; as raw f32.
pub fn click_track(path: &Path, clicks: usize, period_s: f64) -> Result<Vec<f32>> {
    let period = (period_s * RATE as f64) as usize;
    let first = RATE as usize / 2;
    let burst = RATE as usize / 50;
    let mut samples = vec![0.0f32; first + clicks * period];
    for c in 0..clicks {
        let at = first + c * period;
        for i in 0..burst {
            let t = i as f32 / RATE as f32;
            samples[at + i] = 0.5 * (2.0 * std::f32::consts::PI * 1000.0 * t).sin();
        }
    }
    write_f32(path, &samples)?;
    Ok(samples)
}

/// Onsets in `x`: samples whose magnitude reaches `threshold`, at least
/// `min_gap` samples after the previous onset.
pub fn onsets(x: &[f32], threshold: f32, min_gap: usize) -> Vec<usize> {
    let mut out: Vec<usize> = Vec::new();
    for (i, s) in x.iter().enumerate() {
        if s.abs() >= threshold && out.last().is_none_or(|&last| i - last > min_gap) {
            out.push(i);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The broadcast API

/// `POST /api/v1/broadcasts`; `Err` unless 201 with an `id`.
pub async fn start_broadcast(api: &Api, body: &Value) -> Result<String> {
    let (status, value) = api
        .request(Method::POST, "/api/v1/broadcasts", Some(body))
        .await?;
    if status != StatusCode::CREATED {
        bail!("POST /api/v1/broadcasts {body} → {status}: {value}");
    }
    Ok(value["id"]
        .as_str()
        .with_context(|| format!("broadcast response without id: {value}"))?
        .to_string())
}

/// `DELETE /api/v1/broadcasts/{id}`; returns the status (2xx, or 409/404
/// if it had already ended).
pub async fn end_broadcast(api: &Api, id: &str) -> Result<StatusCode> {
    let (status, value) = api
        .request(Method::DELETE, &format!("/api/v1/broadcasts/{id}"), None)
        .await?;
    if !status.is_success() && status != StatusCode::NOT_FOUND && status != StatusCode::CONFLICT {
        bail!("DELETE /api/v1/broadcasts/{id} → {status}: {value}");
    }
    Ok(status)
}

/// `GET /api/v1/broadcasts`: the broadcasts on air.
pub async fn on_air(api: &Api) -> Result<Vec<Value>> {
    list(api.ok(Method::GET, "/api/v1/broadcasts", None).await?)
}

/// Whether broadcast `id` is listed on air.
pub async fn is_on_air(api: &Api, id: &str) -> Result<bool> {
    Ok(on_air(api).await?.iter().any(|b| b["id"] == id))
}

/// `GET /api/v1/broadcasts/{id}`: one broadcast, on air or ended.
pub async fn broadcast(api: &Api, id: &str) -> Result<Value> {
    api.ok(Method::GET, &format!("/api/v1/broadcasts/{id}"), None)
        .await
}

/// One line about an ended broadcast: why and when it ended.
pub async fn ended_summary(api: &Api, id: &str) -> Result<String> {
    let b = broadcast(api, id).await?;
    Ok(format!(
        "broadcast {id}: on_air {}, end_reason {}, started {}, ended {}",
        b["on_air"], b["end_reason"], b["started_at"], b["ended_at"]
    ))
}

/// The body of a broadcast to the rig's zone.
pub fn zone_broadcast(source: Value, priority: &str) -> Value {
    json!({"source": source, "targets": {"zones": [ZONE], "receivers": []}, "priority": priority})
}

// ---------------------------------------------------------------------------
// The rig

/// What a live test needs on its rig.
#[derive(Debug, Clone, Default)]
pub struct RigOptions {
    /// Number of receivers (`loa-1` …), all in zone [`ZONE`].
    pub receivers: usize,
    /// Give the recorder a source port and route the controller's cpal
    /// default input (its "microphone") to it.
    pub microphone: bool,
    /// Extra arguments for every receiver (e.g. `--volume 0.5`).
    pub receiver_args: Vec<String>,
    /// Extra arguments for the controller (e.g. `--live-delay-ms 120`).
    pub controller_args: Vec<String>,
    /// Put receiver `loa-1` behind a lossy link dropping this fraction of live frames.
    pub lossy_first: Option<f64>,
}

/// Everything a live test runs, torn down on drop (receivers first).
pub struct LiveRig {
    /// Receiver processes, `loa-1` first.
    pub receivers: Vec<Receiver>,
    /// The lossy link in front of `loa-1`, if asked for.
    pub lossy: Option<LossyLink>,
    /// A lightweight receiver ([`Fleet`] of one) on the zone's live topic:
    /// what went over the wire, to tell the controller's timing from a
    /// receiver's.
    pub observer: Option<Fleet>,
    /// Admin API client.
    pub api: Api,
    /// The controller (embedded broker).
    pub controller: Controller,
    /// The recorder (receivers' ports and maybe the source).
    pub recorder: Option<Recorder>,
    /// The JACK server.
    pub jack: JackServer,
    /// Receiver ids.
    pub ids: Vec<String>,
}

impl LiveRig {
    /// Starts JACK, the recorder, the controller and the receivers, and
    /// waits until every receiver is online.
    pub async fn start(art: &Artifacts, options: &RigOptions) -> Result<Self> {
        let bins = Binaries::locate()?;
        let recorder_bin = crate::bins::find(&crate::bins::profile_dir()?, "loa-jack-recorder")?;
        let jack = JackServer::start(art)?;
        let recorder = if options.microphone {
            Recorder::start_with_source(&recorder_bin, &jack, art, options.receivers)?
        } else {
            Recorder::start(&recorder_bin, &jack, art, options.receivers)?
        };
        let mut controller_options = ControllerOptions {
            args: options.controller_args.clone(),
            ..Default::default()
        };
        if options.microphone {
            let home = art.subdir("controller-home")?;
            std::fs::write(
                home.join(".asoundrc"),
                capture_asoundrc(&recorder.source_port()),
            )?;
            controller_options
                .env
                .push(("HOME".into(), home.display().to_string()));
            controller_options
                .env
                .extend(jack.env().map(|(k, v)| (k.to_string(), v)));
        }
        let controller = Controller::start_with(
            &bins,
            art,
            BrokerMode::Embedded { port: free_port() },
            controller_options,
        )
        .await?;
        let api = controller.admin_api().await?;
        api.create_zone(ZONE, "Thôn 1").await?;
        let lossy = match options.lossy_first {
            Some(fraction) => {
                let BrokerMode::Embedded { port } = controller.broker else {
                    bail!("the rig runs the embedded broker");
                };
                Some(LossyLink::start(
                    ([127, 0, 0, 1], port).into(),
                    fraction,
                    0x10a_5eed,
                )?)
            }
            None => None,
        };
        let extra: Vec<&str> = options.receiver_args.iter().map(String::as_str).collect();
        let mut receivers = Vec::new();
        let mut ids = Vec::new();
        for k in 1..=options.receivers {
            let id = format!("loa-{k}");
            let token = api.create_receiver(&id, &format!("Loa {k}"), ZONE).await?;
            let broker = match (&lossy, k) {
                (Some(link), 1) => link.url(),
                _ => controller.broker_url(),
            };
            let config = ReceiverConfig {
                id: &id,
                token: &token,
                controller: &controller.url(),
                broker: &broker,
                playback_port: &recorder.port_name(k),
            };
            receivers.push(Receiver::start_with_args(
                &bins, art, &jack, &config, &extra,
            )?);
            ids.push(id);
        }
        let observer = match controller.broker {
            BrokerMode::Embedded { port } => {
                // The broker lets only registered receivers in: the observer
                // is one, in the zone, with no loudspeaker behind it.
                let id = "e2e-observer".to_string();
                let token = api.create_receiver(&id, "E2E observer", ZONE).await?;
                Some(Fleet::start("127.0.0.1", port, ZONE, &[(id, token)]).await?)
            }
            BrokerMode::External { .. } => None,
        };
        let mut rig = LiveRig {
            receivers,
            lossy,
            observer,
            api,
            controller,
            recorder: Some(recorder),
            jack,
            ids,
        };
        rig.wait_online(Duration::from_secs(40)).await?;
        Ok(rig)
    }

    /// Waits until `GET /receivers` shows every rig receiver online.
    pub async fn wait_online(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            let list = self.api.receivers().await?;
            let online = self.ids.iter().all(|id| {
                list.iter()
                    .any(|r| r["id"] == id.as_str() && r["online"] == json!(true))
            });
            if online {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("receivers not all online after {timeout:?}: {list:?}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// `Err` with a log tail if any process of the rig has died.
    pub fn check_alive(&mut self) -> Result<()> {
        for r in &mut self.receivers {
            r.ensure_running()?;
        }
        self.controller.ensure_running()?;
        self.jack.ensure_running()?;
        if let Some(rec) = self.recorder.as_mut() {
            rec.ensure_running()?;
        }
        Ok(())
    }

    /// Sleeps `duration`, checking every 250 ms that nothing died.
    pub async fn watch(&mut self, duration: Duration) -> Result<()> {
        let end = Instant::now() + duration;
        while Instant::now() < end {
            self.check_alive()?;
            tokio::time::sleep(Duration::from_millis(250).min(end - Instant::now())).await;
        }
        Ok(())
    }

    /// The recorder (until [`finish`](Self::finish)).
    pub fn recorder(&mut self) -> Result<&mut Recorder> {
        self.recorder.as_mut().context("recorder already stopped")
    }

    /// Stops the wire observer and summarises what it saw: frames on the
    /// zone topic, their transport latency (arrival − capture instant) and
    /// how many arrived after their playout instant.
    pub async fn observed(&mut self) -> Option<FleetFigures> {
        let fleet = self.observer.take()?;
        Some(figures(&fleet.stop().await))
    }

    /// Stops the recorder and writes `rig.wav` (source first) and one WAV per receiver.
    pub fn finish(&mut self, art: &Artifacts) -> Result<Recording> {
        let recorder = self.recorder.take().context("recorder already stopped")?;
        let recording = recorder.stop()?;
        recording.save_rig_wav(&art.path("rig.wav"))?;
        for (k, id) in self.ids.iter().enumerate() {
            recording.save_wav(k + 1, &art.path(&format!("{id}.wav")))?;
        }
        Ok(recording)
    }
}

// ---------------------------------------------------------------------------
// Measurements

/// Where `reference` best matches `track` within samples `[from, to)`; the
/// returned lag is an index into the whole track.
pub fn locate(reference: &[f32], track: &[f32], from: usize, to: usize) -> Option<Alignment> {
    let to = to.min(track.len());
    let from = from.min(to);
    align(reference, &track[from..to]).map(|a| Alignment {
        lag: from + a.lag,
        correlation: a.correlation,
    })
}

/// Capture→playout latency along a clip: each 1 s chunk of `reference`
/// holding speech (RMS at least a fifth of the clip's) is located in
/// `track` within ±`span_ms` of `source_lag + chunk + expected_ms`; returns
/// the latencies in ms (chunk position in the track minus in the source).
pub fn chunk_latencies(
    reference: &[f32],
    source_lag: usize,
    track: &[f32],
    expected_ms: f64,
    span_ms: f64,
) -> Vec<f64> {
    let chunk = RATE as usize;
    let overall = rms(reference);
    let expected = (expected_ms * PER_MS) as isize;
    let span = (span_ms * PER_MS) as usize;
    let mut out = Vec::new();
    for start in (0..reference.len().saturating_sub(chunk)).step_by(chunk) {
        let piece = &reference[start..start + chunk];
        if rms(piece) < overall / 5.0 {
            continue;
        }
        let at = (source_lag + start) as isize + expected;
        if at < 0 {
            continue;
        }
        let from = (at as usize).saturating_sub(span);
        if let Some(a) = locate(piece, track, from, at as usize + chunk + span)
            && a.correlation > 0.8
        {
            out.push((a.lag as f64 - (source_lag + start) as f64) / PER_MS);
        }
    }
    out
}

/// The offset (samples) of `b` relative to `a` — `b[i + d]` matches `a[i]` —
/// by normalised waveform cross-correlation of `len` samples from `a_start`,
/// searching `d` within `expected ± span`; also returns the correlation.
/// Two receivers decoding the same Opus packets play the same waveform, so
/// this measures their offset to one sample.
pub fn waveform_offset(
    a: &[f32],
    b: &[f32],
    a_start: usize,
    len: usize,
    expected: isize,
    span: usize,
) -> Option<(isize, f64)> {
    let x = a.get(a_start..a_start + len)?;
    let mut best: Option<(isize, f64)> = None;
    for d in (expected - span as isize)..=(expected + span as isize) {
        let start = a_start as isize + d;
        if start < 0 {
            continue;
        }
        let Some(y) = b.get(start as usize..start as usize + len) else {
            continue;
        };
        let c = pearson(x, y);
        if best.is_none_or(|(_, bc)| c > bc) {
            best = Some((d, c));
        }
    }
    best
}

/// The loudest `len`-sample stretch of `x` within `[from, to)` (by 10 ms
/// RMS), where a waveform comparison has the most to go on.
pub fn loudest_window(x: &[f32], from: usize, to: usize, len: usize) -> usize {
    let to = to.min(x.len());
    if to <= from + len {
        return from;
    }
    let hop = crate::audio::COARSE_WINDOW;
    let env = rms_envelope(x, from, (to - from) / hop, hop, hop);
    let per = len / hop;
    (0..env.len().saturating_sub(per))
        .max_by(|&i, &j| {
            let si: f32 = env[i..i + per].iter().sum();
            let sj: f32 = env[j..j + per].iter().sum();
            si.total_cmp(&sj)
        })
        .map_or(from, |i| from + i * hop)
}

/// The `q`-quantile (0..=1) of `values` (nearest rank; `NaN` if empty).
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// The receiver's own account of a live broadcast it followed: the
/// `key=value` fields of the last `live broadcast ended` line of its log
/// (frames `played`, concealed with `fec` or `plc`, `skipped`, `late`, …).
pub fn live_summary_from_log(log: &Path) -> Option<std::collections::BTreeMap<String, String>> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("live broadcast ended"))?;
    let plain = strip_ansi(line);
    Some(
        plain
            .split_whitespace()
            .filter_map(|field| field.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
            .collect(),
    )
}

/// `s` without ANSI colour escapes (`ESC [ … letter`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Envelope correlation that tolerates the rig's xruns.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Piecewise {
    /// Pearson correlation of the 10 ms envelopes of the whole reference
    /// and of the track, each 1 s piece of the track re-aligned on its own.
    pub correlation: f64,
    /// Largest re-alignment of a piece against the first, ms.
    pub max_shift_ms: f64,
    /// Pieces compared.
    pub pieces: usize,
}

/// Compares `reference` with `track` from `lag` piece by piece (1 s): each
/// piece is placed within ±`slack_ms` of where the previous one ended, so a
/// skip or a repeat of a few milliseconds — what an xrun of the JACK rig
/// does to a recording — does not misalign the rest. Silent pieces of the
/// reference keep the running alignment and still count (sound where the
/// reference is silent lowers the correlation).
pub fn piecewise_correlation(
    reference: &[f32],
    track: &[f32],
    lag: usize,
    slack_ms: f64,
) -> Piecewise {
    let hop = crate::audio::COARSE_WINDOW;
    let piece = RATE as usize;
    let slack = (slack_ms * PER_MS) as isize;
    let step = 24isize; // 0.5 ms
    let overall = rms(reference);
    let mut shift = 0isize;
    let (mut all_ref, mut all_rec) = (Vec::new(), Vec::new());
    let mut max_shift = 0isize;
    let mut pieces = 0;
    for start in (0..reference.len()).step_by(piece) {
        let len = piece.min(reference.len() - start);
        let windows = len / hop;
        if windows == 0 {
            break;
        }
        let ref_env = rms_envelope(reference, start, windows, hop, hop);
        let at = |d: isize| (lag as isize + start as isize + d).max(0) as usize;
        if rms(&reference[start..start + len]) >= overall / 5.0 {
            let best = (-slack..=slack)
                .step_by(step as usize)
                .map(|d| {
                    let env = rms_envelope(track, at(shift + d), windows, hop, hop);
                    (d, pearson(&ref_env, &env))
                })
                .max_by(|a, b| a.1.total_cmp(&b.1));
            if let Some((d, _)) = best {
                shift += d;
            }
        }
        max_shift = max_shift.max(shift.abs());
        all_rec.extend(rms_envelope(track, at(shift), windows, hop, hop));
        all_ref.extend(ref_env);
        pieces += 1;
    }
    Piecewise {
        correlation: pearson(&all_ref, &all_rec),
        max_shift_ms: max_shift as f64 / PER_MS,
        pieces,
    }
}

/// Offsets (ms) of track `b` against track `a` by waveform
/// cross-correlation in up to `windows` loud 1 s windows of `a` from `from`
/// to `to`, each searched within ±10 ms of `expected` samples; pairs
/// (offset, correlation), loudest window first.
pub fn waveform_offsets(
    a: &[f32],
    b: &[f32],
    from: usize,
    to: usize,
    expected: isize,
    windows: usize,
) -> Vec<(f64, f64)> {
    let len = RATE as usize;
    let to = to.min(a.len());
    let mut starts: Vec<(usize, f64)> = (from..to.saturating_sub(len))
        .step_by(len)
        .map(|s| (s, rms(&a[s..s + len])))
        .collect();
    starts.sort_by(|x, y| y.1.total_cmp(&x.1));
    starts
        .iter()
        .take(windows)
        .filter_map(|&(s, _)| waveform_offset(a, b, s, len, expected, 480))
        .map(|(d, c)| (d as f64 / PER_MS, c))
        .collect()
}

//! Live broadcasts end to end, on the real binaries and the JACK rig
//! (`../shared/TESTING.md` set-up 3), checked on the recording:
//!
//! - microphone: the recorder's own source port is the controller's cpal
//!   default input; speech played into it must come out of two receivers
//!   (envelope correlation), with the capture→playout latency read on one
//!   sample clock (source channel against receiver channels) and the two
//!   receivers within 1 ms of each other;
//! - emergency: a stored announcement broadcast with priority emergency
//!   during a scheduled programme — the recording must show the programme,
//!   the announcement (louder: emergency volume), then the programme
//!   resumed where it stopped, and the proof of play must list the
//!   interruption;
//! - relay: a real Icecast server fed by `ffmpeg` relayed to two receivers;
//! - loss: one receiver behind a link that drops 10 % of the live frames
//!   must still play intelligible audio.
//!
//! Figures are printed (`-- --nocapture`) and written to
//! `tests/artifacts/<test>/figures.txt`, beside every log and the recordings
//! (`rig.wav`: source first, then one channel per receiver).

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use chrono::{TimeZone, Utc};
use chrono_tz::Asia::Ho_Chi_Minh;
use loa_e2e::audio::rms;
use loa_e2e::icecast::Icecast;
use loa_e2e::live::{
    Clip, LiveRig, PER_MS, RigOptions, ZONE, chunk_latencies, end_broadcast, ended_summary,
    is_on_air, live_summary_from_log, locate, on_air, piecewise_correlation, quantile,
    start_broadcast, waveform_offsets, zone_broadcast,
};
use loa_e2e::process::log_tail;
use loa_e2e::recording::Recording;
use loa_e2e::{Artifacts, serial, wait};
use serde_json::json;

/// Minimum envelope correlation of a receiver's output with the source.
const MIN_CORRELATION: f64 = 0.8;
/// The same behind the lossy link.
const MIN_LOSSY_CORRELATION: f64 = 0.7;
/// Largest offset between two receivers playing the same broadcast.
const MAX_SPREAD_MS: f64 = 1.0;
/// Largest capture→playout latency (the p99 target).
const MAX_LATENCY_MS: f64 = 250.0;
/// Samples per second on the rig.
const SEC: usize = 48_000;

/// What the commune leader says into the microphone.
const MIC_TEXT: &str = "Alô, alô. Ban chỉ huy phòng chống thiên tai xã thông báo: bão số ba \
    đang tiến vào đất liền. Bà con khẩn trương chằng chống nhà cửa, tàu thuyền không ra khơi.";
/// The scheduled programme the emergency interrupts.
const PROGRAMME_TEXT: &str = "Thông báo của Ủy ban nhân dân xã về chuyển đổi số. Từ tuần này, \
    bà con có thể làm thủ tục hành chính trên cổng dịch vụ công trực tuyến. Cán bộ văn hóa xã \
    sẽ hướng dẫn tại nhà văn hóa thôn vào sáng thứ bảy và chủ nhật.";
/// The emergency announcement.
const EMERGENCY_TEXT: &str = "Khẩn cấp, khẩn cấp. Nước sông đang lên nhanh. Bà con vùng trũng di chuyển ngay đến nơi an toàn.";
/// What the radio station relays.
const STATION_TEXT: &str =
    "Đây là Đài Tiếng nói Việt Nam, phát thanh từ Hà Nội. Mời quý vị nghe bản tin thời sự.";
/// The programme sent over the lossy link.
const LOSSY_TEXT: &str = "Thông báo lịch tiêm chủng mở rộng cho trẻ em dưới năm tuổi tại trạm \
    y tế xã, từ bảy giờ sáng đến mười một giờ trưa thứ năm tuần này.";

/// Attempts of one scenario at most: a scenario is run again only when it
/// failed while the JACK rig itself was disturbed (see [`RIG_DISTURBED_XRUNS`]).
const RIG_ATTEMPTS: usize = 3;
/// JACK xruns during one attempt from which the rig, not Loa, is suspect:
/// the dummy driver then runs late and catches up, so every sound card
/// clock on the rig jumps. A clean attempt has none or a handful.
const RIG_DISTURBED_XRUNS: usize = 20;

/// Runs one scenario with its artifact directory, printing log tails on
/// failure. A failure on a disturbed rig (a loaded 2-core machine can delay
/// JACK's real-time threads) is retried, up to [`RIG_ATTEMPTS`] in all; the
/// failed attempt's directory is kept as `NAME-attempt-N` and the final
/// figures say how many attempts it took. A failure on a quiet rig fails at once.
fn run<F, Fut>(name: &str, scenario: F) -> Result<()>
where
    F: Fn(Artifacts) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let _serial = serial();
    let mut earlier = Vec::new();
    for attempt in 1..=RIG_ATTEMPTS {
        let art = Artifacts::new(name)?;
        let dir = art.dir.clone();
        let result = tokio::runtime::Runtime::new()?.block_on(scenario(art));
        let Err(e) = &result else {
            if !earlier.is_empty() {
                let mut art = Artifacts::reopen(name)?;
                art.figure(format!(
                    "{name}: passed at attempt {attempt}; earlier attempts failed on a disturbed \
                     rig ({} JACK xruns): {}",
                    earlier.join(", "),
                    earlier
                        .iter()
                        .enumerate()
                        .map(|(k, _)| format!("{name}-attempt-{}", k + 1))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            return result;
        };
        println!("{name}: FAILED: {e:#}");
        for log in [
            "controller.log",
            "loa-1.log",
            "loa-2.log",
            "jackd.log",
            "recorder.log",
            "icecast.log",
            "ffmpeg-source.log",
        ] {
            let path = dir.join(log);
            if path.exists() {
                println!(
                    "--- last lines of {}:\n{}",
                    path.display(),
                    log_tail(&path, 15)
                );
            }
        }
        let xruns = rig_xruns(&dir);
        if xruns < RIG_DISTURBED_XRUNS || attempt == RIG_ATTEMPTS {
            println!("(all logs, recordings and figures: {})", dir.display());
            return result;
        }
        let kept = dir.with_file_name(format!("{name}-attempt-{attempt}"));
        let _ = std::fs::remove_dir_all(&kept);
        std::fs::rename(&dir, &kept)
            .with_context(|| format!("cannot keep {} as {}", dir.display(), kept.display()))?;
        println!(
            "{name}: attempt {attempt} failed with {xruns} JACK xruns on the rig; its logs are in \
             {}; running it again",
            kept.display()
        );
        earlier.push(xruns.to_string());
    }
    unreachable!("the last attempt returns")
}

/// Xruns JACK reported during an attempt: the recorder's count
/// (`recording/xruns.txt`), or else the server log's.
fn rig_xruns(dir: &std::path::Path) -> usize {
    if let Ok(text) = std::fs::read_to_string(dir.join("recording").join("xruns.txt")) {
        return text.lines().filter(|l| !l.trim().is_empty()).count();
    }
    std::fs::read_to_string(dir.join("jackd.log"))
        .map(|log| log.matches("JackEngine::XRun").count())
        .unwrap_or(0)
}

#[test]
fn microphone_live_reaches_two_receivers_in_sync() -> Result<()> {
    run("live_microphone", microphone)
}

async fn microphone(mut art: Artifacts) -> Result<()> {
    let clip = Clip::generate(&art.dir, "announcement", MIC_TEXT, 1000, 0.5)?;
    let mut rig = LiveRig::start(
        &art,
        &RigOptions {
            receivers: 2,
            microphone: true,
            ..Default::default()
        },
    )
    .await?;
    // Let the receivers' clock exchange settle.
    rig.watch(Duration::from_millis(1500)).await?;
    let id = start_broadcast(
        &rig.api,
        &zone_broadcast(json!({"type": "microphone"}), "priority"),
    )
    .await?;
    ensure!(
        is_on_air(&rig.api, &id).await?,
        "broadcast {id} not listed by GET /broadcasts: {:?}",
        on_air(&rig.api).await?
    );
    rig.watch(Duration::from_secs(1)).await?;
    let clip_no = rig.recorder()?.play(&clip.raw)?;
    rig.watch(Duration::from_millis(clip.duration_ms() + 1000))
        .await?;
    let status = end_broadcast(&rig.api, &id).await?;
    ensure!(
        status.is_success(),
        "DELETE of the microphone broadcast answered {status}"
    );
    ensure!(
        !is_on_air(&rig.api, &id).await?,
        "broadcast {id} still listed after DELETE"
    );
    rig.watch(Duration::from_millis(500)).await?;
    let wire = rig.observed().await;
    if let Some(w) = &wire {
        art.figure(w.wire_summary());
    }
    let recording = rig.finish(&art)?;

    let source = recording.source.as_ref().context("no source track")?;
    let src_lag = recording
        .clip_starts
        .iter()
        .find(|(_, n)| *n == clip_no)
        .map(|(at, _)| *at)
        .context("the recorder did not log the clip's start")?;
    let check = locate(
        &clip.samples,
        source,
        src_lag.saturating_sub(SEC),
        src_lag + clip.samples.len() + SEC,
    )
    .context("clip not found in the source track")?;
    ensure!(
        check.lag.abs_diff(src_lag) <= 12 && check.correlation > 0.99,
        "source track holds the clip at {} (logged {src_lag}), correlation {:.3}",
        check.lag,
        check.correlation
    );
    let mut lags = Vec::new();
    let mut failures = Vec::new();
    for (k, id) in rig.ids.iter().enumerate() {
        let track = &recording.tracks[k];
        let found = locate(
            &clip.samples,
            track,
            src_lag,
            src_lag + clip.samples.len() + 2 * SEC,
        )
        .with_context(|| format!("{id}: recording too short"))?;
        let whole_ms = (found.lag as f64 - src_lag as f64) / PER_MS;
        let chunks = chunk_latencies(&clip.samples, src_lag, track, whole_ms, 40.0);
        let latency_ms = if chunks.is_empty() {
            whole_ms
        } else {
            quantile(&chunks, 0.5)
        };
        let content = piecewise_correlation(&clip.samples, track, found.lag, 20.0);
        art.figure(format!(
            "{id}: envelope correlation {:.3} (1 s pieces re-aligned: {:.3}, largest shift \
             {:.2} ms); capture→playout latency {latency_ms:.1} ms (median of {} 1 s chunks: \
             min {:.1} max {:.1} ms; whole clip {whole_ms:.1} ms); rig xruns {}",
            found.correlation,
            content.correlation,
            content.max_shift_ms,
            chunks.len(),
            quantile(&chunks, 0.0),
            quantile(&chunks, 1.0),
            recording.xruns.len()
        ));
        if content.correlation < MIN_CORRELATION {
            failures.push(format!(
                "{id}: envelope correlation {:.3} < {MIN_CORRELATION}",
                content.correlation
            ));
        }
        if !(0.0..=MAX_LATENCY_MS).contains(&latency_ms) {
            failures.push(format!(
                "{id}: capture→playout latency {latency_ms:.1} ms outside 0..{MAX_LATENCY_MS}"
            ));
        }
        lags.push(found.lag);
    }
    // Frames the controller put on the wire after their playout instant
    // cannot be played in sync by any receiver: the controller's fault.
    if let Some(w) = wire.filter(|w| w.late * 20 > w.frames_sent) {
        failures.push(format!(
            "the controller published {} of {} frames after their playout instant \
             (arrival − capture p50 {:.1} ms, p99 {:.1} ms, in bursts of up to {} frames): its \
             capture path holds audio longer than the playout delay",
            w.late, w.frames_sent, w.transport_ms[0], w.transport_ms[1], w.burst[1]
        ));
    }
    match spread(&mut art, &recording, lags[0], lags[1], clip.samples.len()) {
        Ok(ms) if ms.abs() > MAX_SPREAD_MS => failures.push(format!(
            "receivers {ms:+.3} ms apart (limit ±{MAX_SPREAD_MS} ms)"
        )),
        Ok(_) => {}
        Err(e) => failures.push(format!("{e:#}")),
    }
    if !failures.is_empty() {
        bail!(
            "live microphone checks failed ({} xruns of the JACK rig during the recording):\n{}",
            recording.xruns.len(),
            failures.join("\n")
        );
    }
    Ok(())
}

/// Offset of receiver 2 against receiver 1 (ms, positive = later), to the
/// sample: waveform cross-correlation in the five loudest 1 s windows
/// around the envelope estimate; the median of the windows whose waveforms
/// match (an xrun of the rig can shift one window, not the median).
fn spread(
    art: &mut Artifacts,
    recording: &Recording,
    lag1: usize,
    lag2: usize,
    len: usize,
) -> Result<f64> {
    let (t1, t2) = (&recording.tracks[0], &recording.tracks[1]);
    let expected = lag2 as isize - lag1 as isize;
    let offsets = waveform_offsets(t1, t2, lag1, lag1 + len, expected, 5);
    let matched: Vec<f64> = offsets
        .iter()
        .filter(|(_, c)| *c > 0.8)
        .map(|(d, _)| *d)
        .collect();
    let shown: Vec<String> = offsets
        .iter()
        .map(|(d, c)| format!("{d:+.3} ms (r {c:.3})"))
        .collect();
    art.figure(format!(
        "sync spread between receivers: {:+.3} ms, median of waveform cross-correlations in \
         loud 1 s windows [{}]; envelope estimate {:+.2} ms; rig xruns {}",
        quantile(&matched, 0.5),
        shown.join(", "),
        expected as f64 / PER_MS,
        recording.xruns.len()
    ));
    ensure!(
        !matched.is_empty(),
        "the two receivers' waveforms do not match in any window: [{}]",
        shown.join(", ")
    );
    Ok(quantile(&matched, 0.5))
}

#[test]
fn emergency_interrupts_scheduled_programme_which_resumes() -> Result<()> {
    run("live_emergency", emergency)
}

async fn emergency(mut art: Artifacts) -> Result<()> {
    let programme = Clip::generate(&art.dir, "programme", PROGRAMME_TEXT, 880, 0.3)?;
    let announcement = Clip::generate(&art.dir, "emergency", EMERGENCY_TEXT, 1500, 0.3)?;
    let mut rig = LiveRig::start(
        &art,
        &RigOptions {
            receivers: 2,
            receiver_args: ["--volume", "0.5", "--emergency-volume", "1.0"]
                .map(String::from)
                .to_vec(),
            ..Default::default()
        },
    )
    .await?;
    let prog = rig
        .api
        .upload_programme(&programme.mp3, "Bản tin chuyển đổi số", "chuyen-doi-so")
        .await?;
    let ann = rig
        .api
        .upload_programme(&announcement.mp3, "Cảnh báo lũ", "khan-cap")
        .await?;

    let instant = Utc
        .timestamp_opt(Utc::now().timestamp() + 7, 0)
        .single()
        .context("instant")?;
    let local = instant
        .with_timezone(&Ho_Chi_Minh)
        .naive_local()
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string();
    rig.api
        .create_schedule(&json!({
            "programme_id": prog.id, "targets": {"zones": [ZONE], "receivers": []},
            "start": local, "timezone": "Asia/Ho_Chi_Minh", "priority": "normal"
        }))
        .await?;
    art.figure(format!(
        "programme {} ({} ms) scheduled at {instant}; announcement {} ({} ms)",
        prog.id, prog.duration_ms, ann.id, ann.duration_ms
    ));

    // Four seconds into the programme, the emergency.
    let cut = instant + chrono::Duration::seconds(4);
    rig.watch((cut - Utc::now()).to_std().unwrap_or_default())
        .await?;
    let sent_at = Utc::now();
    let id = start_broadcast(
        &rig.api,
        &zone_broadcast(json!({"type": "programme", "id": ann.id}), "emergency"),
    )
    .await?;
    art.figure(format!(
        "emergency broadcast {id} started {:+} ms after the programme's instant",
        (sent_at - instant).num_milliseconds()
    ));
    // A stored programme played live ends by itself.
    let ended_by_itself = wait::until(
        "the announcement broadcast to end by itself",
        Duration::from_millis(ann.duration_ms + 4000),
        async || Ok((!is_on_air(&rig.api, &id).await?).then_some(())),
    )
    .await;
    if let Err(e) = &ended_by_itself {
        art.figure(format!("NOTE: {e:#}; ending it with DELETE"));
        end_broadcast(&rig.api, &id).await?;
    }
    art.figure(ended_summary(&rig.api, &id).await?);
    let end = instant
        + chrono::Duration::milliseconds(
            (programme.duration_ms() + announcement.duration_ms()) as i64 + 4000,
        );
    rig.watch((end - Utc::now()).to_std().unwrap_or_default())
        .await?;
    if let Some(wire) = rig.observed().await {
        art.figure(wire.wire_summary());
    }
    let recording = rig.finish(&art)?;

    let instant_idx =
        recording.index_at_unix_nanos(instant.timestamp_nanos_opt().unwrap_or(0).into());
    let mut failures = Vec::new();
    for (k, rid) in rig.ids.clone().iter().enumerate() {
        match interrupted_playout(&recording.tracks[k], instant_idx, &programme, &announcement) {
            Ok(m) => {
                let heard = recording.unix_nanos_at(m.ann_lag);
                let posted = sent_at.timestamp_nanos_opt().unwrap_or(0) as i128;
                art.figure(format!(
                    "{rid}: {}; announcement heard {:.1} ms after POST /broadcasts",
                    m.summary(),
                    (heard - posted) as f64 / 1e6
                ));
                if m.level_ratio < 1.5 {
                    failures.push(format!(
                        "{rid}: announcement only {:.2}× the programme's level \
                         (--volume 0.5, --emergency-volume 1.0: expected ≈2×)",
                        m.level_ratio
                    ));
                }
            }
            Err(e) => failures.push(format!("{rid}: {e:#}")),
        }
    }
    if !failures.is_empty() {
        bail!(
            "emergency checks failed ({} xruns of the JACK rig during the recording):\n{}",
            recording.xruns.len(),
            failures.join("\n")
        );
    }

    // Proof of play: one row per receiver, listing the interruption.
    let ids = rig.ids.clone();
    let rows = wait::until(
        "proof of play of the interrupted programme from both receivers",
        Duration::from_secs(30),
        async || {
            let rows = rig.api.plays(&format!("programme={}", prog.id)).await?;
            Ok(ids
                .iter()
                .all(|r| rows.iter().any(|row| row["receiver_id"] == r.as_str()))
                .then_some(rows))
        },
    )
    .await?;
    for rid in &ids {
        let row = rows
            .iter()
            .find(|row| row["receiver_id"] == rid.as_str())
            .context("row")?;
        art.figure(format!("{rid}: play row {row}"));
        let interruptions = row["interruptions"]
            .as_array()
            .with_context(|| format!("{rid}: play row without `interruptions`: {row}"))?;
        let hit = interruptions
            .iter()
            .find(|i| i["broadcast_id"] == id.as_str())
            .with_context(|| {
                format!("{rid}: interruptions {interruptions:?} do not name broadcast {id}")
            })?;
        let at = |f: &str| {
            hit[f]
                .as_str()
                .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                .with_context(|| format!("{rid}: interruption without {f}: {hit}"))
        };
        let (from, to) = (at("from")?, at("to")?);
        let length = (to - from).num_milliseconds();
        ensure!(
            (length - announcement.duration_ms() as i64).abs() < 2000,
            "{rid}: interruption lasted {length} ms, the announcement {} ms",
            announcement.duration_ms()
        );
        ensure!(
            row["outcome"] == "completed",
            "{rid}: the resumed programme should be reported completed: {row}"
        );
    }
    Ok(())
}

/// What the recording shows of one receiver during the emergency scenario.
struct Interrupted {
    /// Where the programme started, relative to its instant (ms).
    start_ms: f64,
    /// Envelope correlation of the programme's part before the interruption.
    before_corr: f64,
    /// Programme heard before the announcement (ms).
    before_ms: f64,
    /// Envelope correlation of the announcement.
    announcement_corr: f64,
    /// Silence between the announcement's end and the programme again (ms).
    resume_gap_ms: f64,
    /// Envelope correlation of the resumed part.
    after_corr: f64,
    /// Announcement level over programme level, each against its source.
    level_ratio: f64,
    /// Where the announcement starts in the track.
    ann_lag: usize,
}

impl Interrupted {
    fn summary(&self) -> String {
        format!(
            "programme started {:+.1} ms from its instant, played {:.0} ms (correlation {:.3}), \
             then the announcement (correlation {:.3}), then the programme resumed {:.0} ms after \
             it (correlation {:.3}); announcement/programme level {:.2}×",
            self.start_ms,
            self.before_ms,
            self.before_corr,
            self.announcement_corr,
            self.resume_gap_ms,
            self.after_corr,
            self.level_ratio
        )
    }
}

/// Best correlation at which a piece counts as found (the verdict is then
/// the piecewise correlation against [`MIN_CORRELATION`]).
const FOUND: f64 = 0.5;

/// Programme, then announcement, then the programme from where it stopped.
fn interrupted_playout(
    track: &[f32],
    instant_idx: usize,
    programme: &Clip,
    announcement: &Clip,
) -> Result<Interrupted> {
    let a = &programme.samples;
    let b = &announcement.samples;
    let head = &a[..3 * SEC];
    let start = locate(
        head,
        track,
        instant_idx.saturating_sub(SEC / 2),
        instant_idx + 2 * SEC + head.len(),
    )
    .context("recording too short for the programme's start")?;
    if start.correlation < FOUND {
        bail!(
            "programme's first 3 s not found near its instant (best correlation {:.3})",
            start.correlation
        );
    }
    let ann = locate(b, track, start.lag + SEC, track.len())
        .context("recording too short for the announcement")?;
    if ann.correlation < FOUND {
        bail!(
            "announcement not found after the programme started (best correlation {:.3})",
            ann.correlation
        );
    }
    let before = ann.lag.saturating_sub(start.lag);
    if before < 2 * SEC || before > a.len() {
        bail!(
            "announcement began {:.0} ms into the programme; expected about 4 s",
            before as f64 / PER_MS
        );
    }
    let before_corr =
        piecewise_correlation(&a[..before - SEC / 10], track, start.lag, 20.0).correlation;
    let announcement_corr = piecewise_correlation(b, track, ann.lag, 20.0).correlation;
    // Resumed: the programme from where it stopped, within 2 s of the announcement's end.
    let ann_end = ann.lag + b.len();
    let skip = SEC / 2;
    let seg_from = (before + skip).min(a.len());
    let seg_to = (seg_from + 3 * SEC).min(a.len());
    if seg_to - seg_from < SEC {
        bail!("programme too short after the interruption point to check the resumption");
    }
    let segment = &a[seg_from..seg_to];
    let resumed = locate(
        segment,
        track,
        ann_end.saturating_sub(SEC / 2) + skip,
        ann_end + 2 * SEC + skip + segment.len(),
    )
    .context("recording too short for the resumed programme")?;
    if resumed.correlation < FOUND {
        bail!(
            "the programme did not resume where it stopped within 2 s of the announcement's end \
             (best correlation {:.3} for the programme's {:.1}–{:.1} s)",
            resumed.correlation,
            seg_from as f64 / SEC as f64,
            seg_to as f64 / SEC as f64
        );
    }
    let resume_at = resumed.lag - skip;
    let after_corr = piecewise_correlation(&a[before..], track, resume_at, 20.0).correlation;
    let level = |played: &[f32], source: &[f32]| rms(played) / rms(source).max(1e-9);
    let prog_level = level(&track[start.lag..start.lag + before], &a[..before]);
    let ann_level = level(&track[ann.lag..ann_end.min(track.len())], b);
    let m = Interrupted {
        start_ms: (start.lag as f64 - instant_idx as f64) / PER_MS,
        before_corr,
        before_ms: before as f64 / PER_MS,
        announcement_corr,
        resume_gap_ms: (resume_at as f64 - ann_end as f64) / PER_MS,
        after_corr,
        level_ratio: ann_level / prog_level.max(1e-9),
        ann_lag: ann.lag,
    };
    for (what, c) in [
        ("programme before the interruption", m.before_corr),
        ("announcement", m.announcement_corr),
        ("resumed programme", m.after_corr),
    ] {
        if c < MIN_CORRELATION {
            bail!(
                "{what}: envelope correlation {c:.3} < {MIN_CORRELATION} ({})",
                m.summary()
            );
        }
    }
    Ok(m)
}

#[test]
fn relay_from_icecast_reaches_receivers() -> Result<()> {
    run("live_relay", relay)
}

async fn relay(mut art: Artifacts) -> Result<()> {
    let station = Clip::generate(&art.dir, "station", STATION_TEXT, 660, 1.0)?;
    let mut icecast = Icecast::start(&art, &station.mp3)?;
    art.figure(format!(
        "Icecast on {} looping a {} ms clip",
        icecast.url(),
        station.duration_ms()
    ));
    let mut rig = LiveRig::start(
        &art,
        &RigOptions {
            receivers: 2,
            ..Default::default()
        },
    )
    .await?;
    rig.watch(Duration::from_secs(1)).await?;
    let id = start_broadcast(
        &rig.api,
        &zone_broadcast(json!({"type": "relay", "url": icecast.url()}), "normal"),
    )
    .await?;
    let listen = Duration::from_millis(station.duration_ms() * 5 / 2 + 2000);
    let end = std::time::Instant::now() + listen;
    while std::time::Instant::now() < end {
        icecast.ensure_running()?;
        rig.watch(Duration::from_millis(500)).await?;
    }
    ensure!(
        is_on_air(&rig.api, &id).await?,
        "relay broadcast {id} went off air by itself: {:?}",
        on_air(&rig.api).await?
    );
    end_broadcast(&rig.api, &id).await?;
    rig.watch(Duration::from_millis(500)).await?;
    if let Some(wire) = rig.observed().await {
        art.figure(wire.wire_summary());
    }
    let recording = rig.finish(&art)?;

    let mut lags = Vec::new();
    let mut failures = Vec::new();
    for (k, rid) in rig.ids.iter().enumerate() {
        let found = locate(&station.samples, &recording.tracks[k], 0, usize::MAX)
            .with_context(|| format!("{rid}: recording too short"))?;
        let content =
            piecewise_correlation(&station.samples, &recording.tracks[k], found.lag, 20.0);
        art.figure(format!(
            "{rid}: one loop of the station found at {:.2} s, envelope correlation {:.3} \
             (1 s pieces re-aligned: {:.3}, largest shift {:.2} ms)",
            found.lag as f64 / SEC as f64,
            found.correlation,
            content.correlation,
            content.max_shift_ms
        ));
        if content.correlation < MIN_CORRELATION {
            failures.push(format!(
                "{rid}: envelope correlation with the station {:.3} < {MIN_CORRELATION}",
                content.correlation
            ));
        }
        lags.push(found.lag);
    }
    // Both receivers' best loops may differ by whole loops; compare the same one.
    let loop_len = station.samples.len() as isize;
    let mut expected = lags[1] as isize - lags[0] as isize;
    expected -= (expected as f64 / loop_len as f64).round() as isize * loop_len;
    let lag2 = (lags[0] as isize + expected).max(0) as usize;
    match spread(&mut art, &recording, lags[0], lag2, station.samples.len()) {
        Ok(ms) if ms.abs() > MAX_SPREAD_MS => failures.push(format!(
            "receivers {ms:+.3} ms apart (limit ±{MAX_SPREAD_MS} ms)"
        )),
        Ok(_) => {}
        Err(e) => failures.push(format!("{e:#}")),
    }
    if !failures.is_empty() {
        bail!(
            "relay checks failed ({} xruns of the JACK rig during the recording):\n{}",
            recording.xruns.len(),
            failures.join("\n")
        );
    }
    Ok(())
}

#[test]
fn lossy_link_still_yields_intelligible_audio() -> Result<()> {
    run("live_lossy_link", lossy)
}

async fn lossy(mut art: Artifacts) -> Result<()> {
    let clip = Clip::generate(&art.dir, "vaccination", LOSSY_TEXT, 880, 0.3)?;
    let mut rig = LiveRig::start(
        &art,
        &RigOptions {
            receivers: 2,
            lossy_first: Some(0.10),
            ..Default::default()
        },
    )
    .await?;
    let prog = rig
        .api
        .upload_programme(&clip.mp3, "Lịch tiêm chủng", "y-te")
        .await?;
    rig.watch(Duration::from_secs(1)).await?;
    let id = start_broadcast(
        &rig.api,
        &zone_broadcast(json!({"type": "programme", "id": prog.id}), "normal"),
    )
    .await?;
    let ended = wait::until(
        "the programme broadcast to end by itself",
        Duration::from_millis(clip.duration_ms() + 5000),
        async || Ok((!is_on_air(&rig.api, &id).await?).then_some(())),
    )
    .await;
    if let Err(e) = &ended {
        art.figure(format!("NOTE: {e:#}; ending it with DELETE"));
        end_broadcast(&rig.api, &id).await?;
    }
    art.figure(ended_summary(&rig.api, &id).await?);
    rig.watch(Duration::from_secs(1)).await?;
    let counts = rig.lossy.as_ref().context("lossy link")?.counts();
    if let Some(wire) = rig.observed().await {
        art.figure(wire.wire_summary());
    }
    let recording = rig.finish(&art)?;

    let expected_frames = clip.duration_ms() / 20;
    art.figure(format!(
        "lossy link: {} live frames from the broker, {} dropped ({:.1} %), {} other packets, \
         {} connection(s); stored programme {} ms ≈ {expected_frames} frames",
        counts.live_publishes,
        counts.dropped,
        counts.dropped as f64 * 100.0 / counts.live_publishes.max(1) as f64,
        counts.other_packets,
        counts.connections,
        prog.duration_ms
    ));
    let runs = longest_run(&counts.dropped_seqs);
    art.figure(format!(
        "dropped sequence numbers (first 40): {:?}; longest run of consecutive drops {runs}",
        &counts.dropped_seqs[..counts.dropped_seqs.len().min(40)]
    ));
    ensure!(
        counts.live_publishes >= expected_frames * 8 / 10,
        "only {} live frames crossed the link for a {} ms broadcast",
        counts.live_publishes,
        clip.duration_ms()
    );
    ensure!(
        counts.dropped * 100 >= counts.live_publishes * 6,
        "the link dropped only {} of {} frames",
        counts.dropped,
        counts.live_publishes
    );
    for (k, r) in rig.receivers.iter().enumerate() {
        let summary = live_summary_from_log(r.log_path());
        let field = |name: &str| {
            summary
                .as_ref()
                .and_then(|s| s.get(name))
                .and_then(|v| v.parse::<u64>().ok())
        };
        let shown = |name: &str| field(name).map_or("?".to_string(), |v| v.to_string());
        let line = match (field("fec"), field("plc")) {
            (Some(fec), Some(plc)) => format!(
                "concealed frames {} (inband FEC {fec}, PLC {plc}), played {}, skipped {}, late {}",
                fec + plc,
                shown("played"),
                shown("skipped"),
                shown("late"),
            ),
            _ => "no `live broadcast ended` summary in its log".to_string(),
        };
        art.figure(format!(
            "{} ({}), the receiver's own count: {line}",
            r.id,
            if k == 0 { "lossy" } else { "clean" }
        ));
    }

    let mut failures = Vec::new();
    let mut lags = Vec::new();
    for (k, rid) in rig.ids.iter().enumerate() {
        let found = locate(&clip.samples, &recording.tracks[k], 0, usize::MAX)
            .with_context(|| format!("{rid}: recording too short"))?;
        let limit = if k == 0 {
            MIN_LOSSY_CORRELATION
        } else {
            MIN_CORRELATION
        };
        let content = piecewise_correlation(&clip.samples, &recording.tracks[k], found.lag, 20.0);
        art.figure(format!(
            "{rid} ({}): envelope correlation {:.3} (1 s pieces re-aligned: {:.3}; limit {limit})",
            if k == 0 {
                "10 % of frames dropped"
            } else {
                "clean link"
            },
            found.correlation,
            content.correlation
        ));
        if content.correlation < limit {
            failures.push(format!(
                "{rid}: envelope correlation {:.3} < {limit}",
                content.correlation
            ));
        }
        lags.push(found.lag);
    }
    art.figure(format!(
        "offset lossy vs clean receiver (envelope): {:+.2} ms",
        (lags[0] as f64 - lags[1] as f64) / PER_MS
    ));
    if !failures.is_empty() {
        bail!(
            "lossy link checks failed ({} xruns of the JACK rig during the recording):\n{}",
            recording.xruns.len(),
            failures.join("\n")
        );
    }
    Ok(())
}

/// The longest run of consecutive sequence numbers.
fn longest_run(seqs: &[u32]) -> usize {
    let mut best = usize::from(!seqs.is_empty());
    let mut run = best;
    for w in seqs.windows(2) {
        run = if w[1] == w[0] + 1 { run + 1 } else { 1 };
        best = best.max(run);
    }
    best
}

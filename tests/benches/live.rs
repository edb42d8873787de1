//! Live-broadcast benchmark (`bench/live.sh`, or `cargo bench -p loa-e2e
//! --bench live --profile dev` after `cargo build --bins`). Prints:
//!
//! 1. **Fan-out**, for 1, 10, 100 and 1,000 receivers on one machine: the
//!    real `loa-controller` (its embedded broker) plays a stored programme
//!    live to a zone; the receivers are lightweight in-process MQTT clients
//!    ([`loa_e2e::fleet`]) that subscribe to the zone's live topic, run the
//!    clock exchange with the controller and compute every frame's playout
//!    instant as a receiver does. Per count: frames lost, frames late,
//!    capture→playout latency p50/p99, sync spread between receivers
//!    (per frame, max − min of the playout instants) p50/p99/max.
//! 2. **JACK rig**, Loa beside Snapcast on the same rig
//!    (`../shared/TESTING.md` set-up 3): a click every 2.5 s from the
//!    recorder's source port into the controller's microphone, two real
//!    receivers on the cpal backend, all on one sample clock → latency
//!    (source click to loudspeaker click) and spread between the two; then
//!    `../shared/peers/snapcast_rig.py` for Snapcast (snapserver + two
//!    snapclients) on the same kind of rig.
//!
//! Options (after `--`): `--counts 1,10,100,1000`, `--no-fan-out`,
//! `--no-rig`, `--no-snapcast`, `--snapcast-buffers 1000,400`. Everything is bounded:
//! one programme (~10 s) per count, one 20 s click track, one Snapcast run
//! (~37 s) per buffer. Figures also go to `tests/artifacts/bench_live/figures.txt`.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use loa_e2e::audio::peak;
use loa_e2e::controller::BrokerMode;
use loa_e2e::fleet::{Fleet, FleetFigures, FleetOptions, figures, register};
use loa_e2e::live::{
    Clip, LiveRig, PER_MS, RigOptions, ZONE, click_track, end_broadcast, is_on_air, onsets,
    quantile, start_broadcast, zone_broadcast,
};
use loa_e2e::net::free_port;
use loa_e2e::{Artifacts, Binaries, Controller};
use loa_receiver::clock::BURST;
use serde_json::json;

/// What to run.
struct Options {
    counts: Vec<usize>,
    rig: bool,
    snapcast: bool,
    snapcast_buffers: Vec<u32>,
}

fn options() -> Result<Options> {
    let mut o = Options {
        counts: vec![1, 10, 100, 1000],
        rig: true,
        snapcast: true,
        snapcast_buffers: vec![1000, 400],
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--counts" => {
                o.counts = parse_list(&args.next().context("--counts needs a list")?)?;
                if o.counts.iter().any(|&n| n == 0 || n > 2000) {
                    anyhow::bail!("--counts: each count must be 1..=2000");
                }
            }
            "--snapcast-buffers" => {
                o.snapcast_buffers =
                    parse_list(&args.next().context("--snapcast-buffers needs a list")?)?
            }
            "--no-rig" => o.rig = false,
            "--no-fan-out" => o.counts.clear(),
            "--no-snapcast" => o.snapcast = false,
            // cargo bench passes --bench; libtest-style filters are not used here.
            _ => {}
        }
    }
    Ok(o)
}

fn parse_list<T: std::str::FromStr>(s: &str) -> Result<Vec<T>> {
    s.split(',')
        .map(|v| {
            v.trim()
                .parse::<T>()
                .ok()
                .context(format!("bad number {v:?}"))
        })
        .collect()
}

fn main() -> Result<()> {
    let options = options()?;
    let mut art = Artifacts::new("bench_live")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    art.figure(format!(
        "Loa live benchmark — {} CPU(s), {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    ));
    let mut rows = Vec::new();
    if !options.counts.is_empty() {
        match rt.block_on(fan_out(&mut art, &options.counts, &mut rows)) {
            Ok(()) => {}
            Err(e) => art.figure(format!("fan-out benchmark failed: {e:#}")),
        }
    }
    let mut rig_line = None;
    if options.rig {
        match rt.block_on(loa_rig(&mut art)) {
            Ok(line) => rig_line = Some(line),
            Err(e) => art.figure(format!("Loa on the JACK rig failed: {e:#}")),
        }
    }
    let mut snap_lines = Vec::new();
    if options.snapcast {
        for &buffer in &options.snapcast_buffers {
            snap_lines.push(snapcast(&mut art, buffer));
        }
    }

    art.figure("");
    art.figure("=== summary (targets: capture→playout p50 ≤ 150 ms, p99 ≤ 250 ms, spread ≤ 1 ms, no loss) ===");
    art.figure(format!(
        "{:>9} | {:>13} | {:>6} | {:>9} | {:>9} | {:>10} | {:>10} | {:>10} | target",
        "receivers", "lost", "late", "p50 ms", "p99 ms", "spread p50", "spread p99", "spread max"
    ));
    for f in &rows {
        let ok = f.lost == 0
            && f.playout_ms[0] <= 150.0
            && f.playout_ms[1] <= 250.0
            && f.spread_ms[2] <= 1.0;
        art.figure(format!(
            "{:>9} | {:>6}/{:<6} | {:>6} | {:>9.1} | {:>9.1} | {:>10.3} | {:>10.3} | {:>10.3} | {}",
            f.receivers,
            f.lost,
            f.expected,
            f.late,
            f.playout_ms[0],
            f.playout_ms[1],
            f.spread_ms[0],
            f.spread_ms[1],
            f.spread_ms[2],
            if ok { "met" } else { "NOT met" }
        ));
    }
    if let Some(line) = rig_line {
        art.figure(format!("JACK rig, Loa:      {line}"));
    }
    for line in snap_lines {
        art.figure(format!("JACK rig, Snapcast: {line}"));
    }
    println!("(figures: {})", art.path("figures.txt").display());
    Ok(())
}

/// Part 1: lightweight receivers against the real controller.
async fn fan_out(
    art: &mut Artifacts,
    counts: &[usize],
    rows: &mut Vec<FleetFigures>,
) -> Result<()> {
    let bins = Binaries::locate().context(
        "the benchmark starts the real controller: run bench/live.sh (it builds the binaries \
         in the dev profile and runs this with --profile dev)",
    )?;
    let clip = Clip::generate(
        &art.dir,
        "bench",
        "Thông báo của Ủy ban nhân dân xã: lịch tiêm chủng mở rộng cho trẻ em dưới năm tuổi \
         tại trạm y tế xã, từ bảy giờ sáng thứ năm.",
        880,
        0.3,
    )?;
    let port = free_port();
    let mut controller = Controller::start(&bins, art, BrokerMode::Embedded { port }).await?;
    let api = controller.admin_api().await?;
    api.create_zone(ZONE, "Thôn 1").await?;
    let programme = api
        .upload_programme(&clip.mp3, "Benchmark", "bench")
        .await?;
    art.figure(format!(
        "fan-out: stored programme of {} ms played live to zone {ZONE} through the embedded broker, \
         once per receiver count",
        programme.duration_ms
    ));
    art.figure(
        "sync spread = per frame, max − min over receivers of the true instant each would play it: \
         capture + playout delay − that receiver's own clock-offset estimate (receiver clock.rs: \
         Clock, OffsetFilter, SyncSchedule), converted to the system clock, which is the \
         controller's clock; so it is the spread of the receivers' clock-estimate errors. \
         Clock estimate error = estimate − true offset.",
    );
    for &n in counts {
        // The embedded broker lets only registered receivers in, each with
        // its own token.
        let ids: Vec<(String, String)> = (0..n)
            .map(|i| (format!("bench-{n}-{i}"), ZONE.to_string()))
            .collect();
        let members = register(&api, &ids, 4).await?;
        let started = std::time::Instant::now();
        let fleet =
            Fleet::start_with("127.0.0.1", port, &members, &FleetOptions::default()).await?;
        // Every member through its burst of clock requests, then a pause
        // for the connection traffic to drain.
        if let Err(e) = fleet
            .wait_ready(BURST as usize, Duration::from_secs(30 + n as u64 / 20))
            .await
        {
            art.figure(format!("{n:>5} receivers: {e:#}"));
            fleet.stop().await;
            continue;
        }
        let ready_s = started.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let id = start_broadcast(
            &api,
            &zone_broadcast(json!({"type": "programme", "id": programme.id}), "normal"),
        )
        .await?;
        let deadline =
            std::time::Instant::now() + Duration::from_millis(programme.duration_ms + 15_000);
        while is_on_air(&api, &id).await? && std::time::Instant::now() < deadline {
            controller.ensure_running()?;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        if is_on_air(&api, &id).await? {
            art.figure(format!(
                "{n:>5} receivers: broadcast still on air after its length; ended with DELETE"
            ));
            end_broadcast(&api, &id).await?;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let ends = fleet.ends();
        let fleet_truth = fleet.truth_us;
        let logs = fleet.stop().await;
        let f = figures(&logs);
        let truth_moved = loa_e2e::fleet::true_offset_us() - fleet_truth;
        if let Err(e) = write_logs(art, n, &logs) {
            art.figure(format!("{n:>5} receivers: could not write the logs: {e:#}"));
        }
        art.figure(format!(
            "{} (connected and synced in {ready_s:.1} s; End frames seen {ends}; \
             system clock moved {truth_moved} µs against the receivers' clock)",
            f.summary()
        ));
        rows.push(f);
    }
    Ok(())
}

/// Every member's clock exchanges and every 25th frame, as CSV, for a
/// closer look (`clock_{n}.csv`, `frames_{n}.csv`; errors against the true
/// offset, µs).
fn write_logs(art: &Artifacts, n: usize, logs: &[loa_e2e::fleet::MemberLog]) -> Result<()> {
    use std::io::Write;
    let mut w =
        std::io::BufWriter::new(std::fs::File::create(art.path(&format!("clock_{n}.csv")))?);
    writeln!(w, "member,t4_us,offset_error_us,rtt_us")?;
    for (m, l) in logs.iter().enumerate() {
        for c in &l.clock {
            writeln!(w, "{m},{},{},{}", c.local_us, c.offset_us, c.rtt_us)?;
        }
    }
    w.flush()?;
    let mut w =
        std::io::BufWriter::new(std::fs::File::create(art.path(&format!("frames_{n}.csv")))?);
    writeln!(
        w,
        "member,seq,capture_us,arrival_us,playout_us,offset_error_us"
    )?;
    for (m, l) in logs.iter().enumerate() {
        for f in l.frames.iter().step_by(25) {
            let opt = |v: Option<i64>| v.map_or(String::new(), |v| v.to_string());
            writeln!(
                w,
                "{m},{},{},{},{},{}",
                f.seq,
                f.capture_us,
                f.arrival_us,
                opt(f.playout_us),
                opt(f.offset_us)
            )?;
        }
    }
    w.flush()?;
    Ok(())
}

/// Part 2: Loa on the JACK rig, clicks into the controller's microphone,
/// two real receivers; returns a one-line summary.
async fn loa_rig(art: &mut Artifacts) -> Result<String> {
    let rig_art = Artifacts::new("bench_live_rig")?;
    let clicks = 8;
    let period_s = 2.5;
    let track_path = rig_art.path("clicks.f32");
    let track = click_track(&track_path, clicks, period_s)?;
    let mut rig = LiveRig::start(
        &rig_art,
        &RigOptions {
            receivers: 2,
            microphone: true,
            ..Default::default()
        },
    )
    .await?;
    rig.watch(Duration::from_millis(1500)).await?;
    let id = start_broadcast(
        &rig.api,
        &zone_broadcast(json!({"type": "microphone"}), "normal"),
    )
    .await?;
    rig.watch(Duration::from_secs(1)).await?;
    rig.recorder()?.play(&track_path)?;
    rig.watch(Duration::from_millis(
        (track.len() as f64 / PER_MS) as u64 + 1000,
    ))
    .await?;
    end_broadcast(&rig.api, &id).await?;
    let wire = rig.observed().await;
    let recording = rig.finish(&rig_art)?;
    if let Some(w) = wire {
        art.figure(format!("JACK rig, Loa, {}", w.wire_summary()));
    }
    let source = recording.source.as_ref().context("no source track")?;
    let gap = (PER_MS * 1000.0) as usize; // clicks are 2.5 s apart
    let src = onsets(source, 0.25, gap);
    let mut latencies = Vec::new();
    let mut per_receiver = Vec::new();
    for track in &recording.tracks {
        let threshold = 0.3 * peak(track);
        let heard = onsets(track, threshold.max(0.01), gap);
        let mut paired = Vec::new();
        for &h in &heard {
            if let Some(&s) = src.iter().rev().find(|&&s| s <= h)
                && h - s < (PER_MS * 1000.0) as usize
            {
                paired.push((s, h));
                latencies.push((h - s) as f64 / PER_MS);
            }
        }
        per_receiver.push(paired);
    }
    let spread: Vec<f64> = per_receiver[0]
        .iter()
        .filter_map(|&(s, h1)| {
            per_receiver[1]
                .iter()
                .find(|&&(s2, _)| s2 == s)
                .map(|&(_, h2)| (h2 as f64 - h1 as f64).abs() / PER_MS)
        })
        .collect();
    let line = format!(
        "source clicks {}, heard {} and {}; latency ms: min {:.1} median {:.1} max {:.1} (n={}); \
         sync spread ms: median {:.2} max {:.2} (n={}); rig xruns {}",
        src.len(),
        per_receiver[0].len(),
        per_receiver[1].len(),
        quantile(&latencies, 0.0),
        quantile(&latencies, 0.5),
        quantile(&latencies, 1.0),
        latencies.len(),
        quantile(&spread, 0.5),
        quantile(&spread, 1.0),
        spread.len(),
        recording.xruns.len()
    );
    art.figure(format!("JACK rig, Loa (playout delay 120 ms): {line}"));
    Ok(line)
}

/// Part 3: Snapcast on its rig script; returns its figures on one line.
fn snapcast(art: &mut Artifacts, buffer: u32) -> String {
    let script = std::env::var("LOA_SNAPCAST_RIG").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/peers/snapcast_rig.py"
        )
        .to_string()
    });
    if !std::path::Path::new(&script).is_file() {
        let line = format!("skipped: {script} not found");
        art.figure(format!("Snapcast: {line}"));
        return line;
    }
    let output = Command::new("python3")
        .arg(&script)
        .arg(buffer.to_string())
        .env_remove("JACK_DEFAULT_SERVER")
        .output();
    let line = match output {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            let figures: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("snapcast"))
                .map(|l| l.trim_start_matches("snapcast "))
                .collect();
            if figures.is_empty() {
                format!("buffer {buffer} ms: no figures; output: {}", text.trim())
            } else {
                figures.join("; ")
            }
        }
        Ok(out) => format!(
            "buffer {buffer} ms: failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => format!("buffer {buffer} ms: cannot run python3: {e}"),
    };
    art.figure(format!("Snapcast (snapcast_rig.py {buffer}): {line}"));
    line
}

//! The player thread on the real WAV sink (paced by the wall clock like a
//! sound card): on-time starts, planned and unplanned pre-emption, joining a
//! play in progress, missed plays, and never playing an event twice.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, Utc};
use loa_hardware::OutputSpec;
use loa_protocol::{PlayOutcome, PlayReport, Priority, ProgrammeRef};
use loa_receiver::cache::Cache;
use loa_receiver::player::{Player, PlayerConfig, PlayerEvent};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

const RATE: f64 = 48_000.0;

struct Rig {
    dir: tempfile::TempDir,
    cache: Cache,
    wav: std::path::PathBuf,
}

impl Rig {
    fn new() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let wav = dir.path().join("out.wav");
        Rig { dir, cache, wav }
    }

    fn programme(&self, freq: f32, secs: f32) -> ProgrammeRef {
        let bytes = common::ogg_opus(&common::tone(freq, secs, 0.5));
        common::put_in_cache(&self.cache, &bytes, (secs * 1000.0) as u64)
    }

    fn player(&self, done: HashSet<String>) -> (Player, UnboundedReceiver<PlayerEvent>) {
        let (tx, rx) = unbounded_channel();
        let config = PlayerConfig {
            receiver_id: "thon-1".into(),
            output: OutputSpec::Wav {
                path: self.wav.clone(),
            },
            amplifier: "none".into(),
            prepare: StdDuration::from_millis(1500),
            cache: self.cache.clone(),
            volume: 1.0,
            emergency_volume: 1.0,
            clock: loa_receiver::clock::Clock::new(),
        };
        (Player::spawn(config, done, tx).unwrap(), rx)
    }
}

/// Collects player events until `n` reports arrived.
fn reports(
    rx: &mut UnboundedReceiver<PlayerEvent>,
    n: usize,
    timeout: StdDuration,
) -> (Vec<PlayReport>, Vec<PlayerEvent>) {
    let deadline = Instant::now() + timeout;
    let (mut reports, mut all) = (Vec::new(), Vec::new());
    while reports.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} reports: {all:#?}",
            reports.len()
        );
        match rx.try_recv() {
            Ok(event) => {
                if let PlayerEvent::Finished { report, .. } = &event {
                    reports.push(report.clone());
                }
                all.push(event);
            }
            Err(_) => std::thread::sleep(StdDuration::from_millis(5)),
        }
    }
    (reports, all)
}

/// Whether nothing but amplifier switches (the relay going off after a
/// play) is waiting: no play started, finished or was announced.
fn nothing_played(rx: &mut UnboundedReceiver<PlayerEvent>) -> bool {
    let others: Vec<PlayerEvent> = std::iter::from_fn(|| rx.try_recv().ok())
        .filter(|e| !matches!(e, PlayerEvent::Amplifier(_)))
        .collect();
    if !others.is_empty() {
        println!("events: {others:#?}");
    }
    others.is_empty()
}

fn ms(d: Duration) -> i64 {
    d.num_milliseconds()
}

fn assert_near(label: &str, actual: DateTime<Utc>, expected: DateTime<Utc>, tolerance_ms: i64) {
    let diff = (actual - expected).num_microseconds().unwrap() as f64 / 1000.0;
    println!("{label}: {diff:+.2} ms");
    assert!(
        diff.abs() <= tolerance_ms as f64,
        "{label} off by {diff:.2} ms (tolerance {tolerance_ms} ms)"
    );
}

/// Seconds from the first loud sample to each 10 ms window's dominant tone.
fn tone_runs(wav: &Path) -> (usize, Vec<Option<f32>>) {
    let samples = common::read_wav(wav);
    let start = common::onset(&samples, 0.05).expect("something was played");
    (
        start,
        common::dominant(&samples[start..], &[1000.0, 2000.0]),
    )
}

fn windows_are(runs: &[Option<f32>], from_s: f64, to_s: f64, expected: Option<f32>) {
    let (a, b) = (
        (from_s * 100.0).round() as usize,
        (to_s * 100.0).round() as usize,
    );
    for (i, w) in runs.iter().enumerate().take(b.min(runs.len())).skip(a) {
        assert_eq!(
            *w,
            expected,
            "window at {:.2} s: {w:?}, expected {expected:?}",
            i as f64 / 100.0
        );
    }
}

#[test]
fn plays_on_time_and_reports_when_it_was_heard() {
    let rig = Rig::new();
    let a = rig.programme(1000.0, 2.0);
    let (player, mut rx) = rig.player(HashSet::new());
    let t0 = Utc::now();
    let at = t0 + Duration::seconds(1);
    let ev = common::event("s1", "a", at, 2000, Priority::Normal);
    player.set_schedule(Arc::new(common::schedule(
        "thon-1",
        1,
        &[("a", &a)],
        vec![ev.clone()],
    )));

    let (got, events) = reports(&mut rx, 1, StdDuration::from_secs(10));
    let report = &got[0];
    assert_eq!(report.outcome, PlayOutcome::Completed, "{report:?}");
    assert_eq!(report.event_id, ev.id);
    assert_eq!(report.scheduled_at, at);
    assert_near("started_at vs planned", report.started_at.unwrap(), at, 20);
    assert_near(
        "ended_at vs planned end",
        report.ended_at.unwrap(),
        at + Duration::seconds(2),
        50,
    );
    let now_playing: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            PlayerEvent::NowPlaying(n) => Some(n.as_ref().map(|n| n.event_id.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(now_playing, vec![Some(ev.id.clone()), None]);
    drop(player);

    // The WAV clock started when the output opened, at t0 or a few ms after.
    let samples = common::read_wav(&rig.wav);
    let start = common::onset(&samples, 0.05).unwrap();
    let end = common::offset(&samples, 0.05).unwrap();
    let onset_s = start as f64 / RATE;
    let lead = ms(at - t0) as f64 / 1000.0;
    println!(
        "tone at {onset_s:.4} s in the file; planned {lead:.4} s after the schedule was handed over"
    );
    assert!(
        onset_s <= lead + 0.002 && onset_s >= lead - 0.030,
        "tone at {onset_s:.4} s, expected just under {lead:.4} s"
    );
    let length = (end - start) as f64 / RATE;
    assert!((length - 2.0).abs() < 0.01, "tone lasted {length:.4} s");
    let (_, runs) = tone_runs(&rig.wav);
    windows_are(&runs, 0.01, 1.99, Some(1000.0));
}

#[test]
fn a_higher_priority_event_cuts_a_lower_one_at_its_instant() {
    let rig = Rig::new();
    let normal = rig.programme(1000.0, 3.0);
    let urgent = rig.programme(2000.0, 1.0);
    let (player, mut rx) = rig.player(HashSet::new());
    let t0 = Utc::now();
    let a = common::event(
        "bulletin",
        "normal",
        t0 + Duration::seconds(1),
        3000,
        Priority::Normal,
    );
    let b = common::event(
        "alert",
        "urgent",
        t0 + Duration::seconds(2),
        1000,
        Priority::Emergency,
    );
    let schedule = common::schedule(
        "thon-1",
        1,
        &[("normal", &normal), ("urgent", &urgent)],
        vec![a.clone(), b.clone()],
    );
    player.set_schedule(Arc::new(schedule));

    let (got, _) = reports(&mut rx, 2, StdDuration::from_secs(10));
    let ra = got.iter().find(|r| r.event_id == a.id).unwrap();
    let rb = got.iter().find(|r| r.event_id == b.id).unwrap();
    assert_eq!(ra.outcome, PlayOutcome::Preempted, "{ra:?}");
    assert_eq!(rb.outcome, PlayOutcome::Completed, "{rb:?}");
    assert_near("normal started", ra.started_at.unwrap(), a.starts_at, 20);
    assert_near("normal cut", ra.ended_at.unwrap(), b.starts_at, 20);
    assert_near("emergency started", rb.started_at.unwrap(), b.starts_at, 20);
    drop(player);

    // In the recording: 1 kHz for exactly 1 s, then 2 kHz for 1 s, then quiet.
    let (_, runs) = tone_runs(&rig.wav);
    windows_are(&runs, 0.01, 0.99, Some(1000.0));
    windows_are(&runs, 1.01, 1.99, Some(2000.0));
    windows_are(&runs, 2.02, 2.5, None);
}

#[test]
fn a_new_schedule_during_a_play_can_cut_in_or_remove_the_running_play() {
    let rig = Rig::new();
    let normal = rig.programme(1000.0, 3.0);
    let urgent = rig.programme(2000.0, 2.0);
    let progs = [("normal", &normal), ("urgent", &urgent)];
    let (player, mut rx) = rig.player(HashSet::new());
    let t0 = Utc::now();
    let a = common::event(
        "bulletin",
        "normal",
        t0 + Duration::milliseconds(800),
        3000,
        Priority::Normal,
    );
    player.set_schedule(Arc::new(common::schedule(
        "thon-1",
        1,
        &progs,
        vec![a.clone()],
    )));

    // While `a` plays, an emergency is scheduled 400 ms ahead.
    std::thread::sleep(
        ((a.starts_at - Utc::now()) + Duration::milliseconds(600))
            .to_std()
            .unwrap(),
    );
    let b = common::event(
        "alert",
        "urgent",
        Utc::now() + Duration::milliseconds(400),
        2000,
        Priority::Emergency,
    );
    player.set_schedule(Arc::new(common::schedule(
        "thon-1",
        2,
        &progs,
        vec![a.clone(), b.clone()],
    )));

    // While `b` plays, the operator deletes it: it stops at once and `a` does not come back.
    std::thread::sleep(
        ((b.starts_at - Utc::now()) + Duration::milliseconds(700))
            .to_std()
            .unwrap(),
    );
    let removed_at = Utc::now();
    player.set_schedule(Arc::new(common::schedule(
        "thon-1",
        3,
        &progs,
        vec![a.clone()],
    )));

    let (got, _) = reports(&mut rx, 2, StdDuration::from_secs(10));
    let ra = got.iter().find(|r| r.event_id == a.id).unwrap();
    let rb = got.iter().find(|r| r.event_id == b.id).unwrap();
    assert_eq!(ra.outcome, PlayOutcome::Preempted, "{ra:?}");
    assert_near(
        "normal cut where the emergency began",
        ra.ended_at.unwrap(),
        b.starts_at,
        20,
    );
    assert_near("emergency started", rb.started_at.unwrap(), b.starts_at, 20);
    assert_eq!(rb.outcome, PlayOutcome::Preempted, "{rb:?}");
    assert!(rb.detail.as_deref().unwrap().contains("removed"), "{rb:?}");
    let stop_delay = ms(rb.ended_at.unwrap() - removed_at);
    println!("removed play stopped {stop_delay} ms after the new schedule");
    assert!(
        (0..=150).contains(&stop_delay),
        "stopped {stop_delay} ms after removal"
    );
    std::thread::sleep(StdDuration::from_millis(600));
    assert!(nothing_played(&mut rx), "nothing else may play");
    drop(player);

    let (_, runs) = tone_runs(&rig.wav);
    let switch = ms(b.starts_at - a.starts_at) as f64 / 1000.0;
    let stop = ms(rb.ended_at.unwrap() - a.starts_at) as f64 / 1000.0;
    windows_are(&runs, 0.01, switch - 0.01, Some(1000.0));
    windows_are(&runs, switch + 0.01, stop - 0.01, Some(2000.0));
    windows_are(&runs, stop + 0.02, stop + 0.5, None);
}

#[test]
fn a_play_already_under_way_is_joined_at_the_right_offset() {
    let rig = Rig::new();
    let a = rig.programme(1000.0, 3.0);
    let (player, mut rx) = rig.player(HashSet::new());
    let at = Utc::now() - Duration::milliseconds(1500);
    let ev = common::event("s1", "a", at, 3000, Priority::Normal);
    player.set_schedule(Arc::new(common::schedule(
        "thon-1",
        1,
        &[("a", &a)],
        vec![ev.clone()],
    )));
    let (got, _) = reports(&mut rx, 1, StdDuration::from_secs(10));
    let r = &got[0];
    assert_eq!(r.outcome, PlayOutcome::Completed, "{r:?}");
    assert!(
        r.detail.as_deref().unwrap().contains("joined in progress"),
        "{r:?}"
    );
    let joined = ms(r.started_at.unwrap() - at);
    assert!((1500..1700).contains(&joined), "joined {joined} ms in");
    // The programme still ends on its planned timeline.
    assert_near("ended", r.ended_at.unwrap(), at + Duration::seconds(3), 30);
    drop(player);
    let samples = common::read_wav(&rig.wav);
    let heard = (common::offset(&samples, 0.05).unwrap() - common::onset(&samples, 0.05).unwrap())
        as f64
        / RATE;
    let expected = 3.0 - joined as f64 / 1000.0;
    assert!(
        (heard - expected).abs() < 0.03,
        "heard {heard:.3} s, expected {expected:.3} s"
    );
}

#[test]
fn missing_audio_and_past_events_are_reported_missed_and_nothing_plays_twice() {
    let rig = Rig::new();
    let cached = rig.programme(1000.0, 0.5);
    let absent = common::programme_ref(b"never downloaded", 500);
    let now = Utc::now();
    let past = common::event(
        "s1",
        "a",
        now - Duration::seconds(20),
        500,
        Priority::Normal,
    );
    let already = common::event(
        "s1",
        "a",
        now + Duration::milliseconds(300),
        500,
        Priority::Normal,
    );
    let no_audio = common::event(
        "s2",
        "b",
        now + Duration::milliseconds(1200),
        500,
        Priority::Normal,
    );
    let mut schedule = common::schedule(
        "thon-1",
        1,
        &[("a", &cached), ("b", &absent)],
        vec![past.clone(), already.clone(), no_audio.clone()],
    );
    schedule.generated_at = now - Duration::seconds(60);
    // `already` was played before a restart: it is in the ledger.
    let (player, mut rx) = rig.player([already.id.clone()].into_iter().collect());
    player.set_schedule(Arc::new(schedule));
    let (got, _) = reports(&mut rx, 2, StdDuration::from_secs(10));
    let r_past = got.iter().find(|r| r.event_id == past.id).unwrap();
    let r_absent = got.iter().find(|r| r.event_id == no_audio.id).unwrap();
    assert_eq!(r_past.outcome, PlayOutcome::Missed);
    assert!(
        r_past.detail.as_deref().unwrap().contains("not running"),
        "{r_past:?}"
    );
    assert_eq!(r_absent.outcome, PlayOutcome::Missed);
    assert!(
        r_absent
            .detail
            .as_deref()
            .unwrap()
            .contains("not in the cache"),
        "{r_absent:?}"
    );
    assert!(
        Utc::now() >= no_audio.starts_at,
        "audio is awaited until the planned start"
    );
    std::thread::sleep(StdDuration::from_millis(500));
    assert!(
        nothing_played(&mut rx),
        "the event already played must not play again"
    );
    drop(player);
    assert!(
        common::onset(&common::read_wav(&rig.wav), 0.05).is_none(),
        "nothing may have been heard"
    );
    let _ = &rig.dir;
}

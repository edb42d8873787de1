//! Live broadcasts in the player thread on the real WAV sink (paced by the
//! wall clock like a sound card), frames handed straight to its live feed
//! on a controller clock 1.7 s behind ours: loss concealment and late
//! frames counted, the volume of emergency audio, a higher-priority
//! broadcast taking over from a lower one, a scheduled emergency play
//! holding off a normal broadcast, and a play due during a broadcast
//! starting after it.

mod common;
mod live_common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, Utc};
use loa_hardware::OutputSpec;
use loa_protocol::live::LiveFrame;
use loa_protocol::{PlayOutcome, PlayReport, Priority};
use loa_receiver::cache::Cache;
use loa_receiver::clock::{Clock, Sample, local_now_us, utc_of_local};
use loa_receiver::player::{LiveEnd, LiveFeed, LiveSummary, Player, PlayerConfig, PlayerEvent};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use live_common::Broadcast;

/// The test controller's clock runs this far behind ours (µs).
const OFFSET_US: i64 = -1_700_000;

fn controller_now_us() -> i64 {
    local_now_us() + OFFSET_US
}

struct Rig {
    _dir: tempfile::TempDir,
    cache: Cache,
    wav: PathBuf,
    player: Player,
    events: UnboundedReceiver<PlayerEvent>,
}

impl Rig {
    fn new(volume: f32, emergency_volume: f32) -> Rig {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("info,loa_receiver=debug")
            .try_init();
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let wav = dir.path().join("out.wav");
        let clock = Clock::new();
        for _ in 0..3 {
            clock.add_sample(Sample {
                local_us: local_now_us(),
                offset_us: OFFSET_US,
                rtt_us: 200,
            });
        }
        let (tx, events) = unbounded_channel();
        let config = PlayerConfig {
            receiver_id: "loa-1".into(),
            output: OutputSpec::Wav { path: wav.clone() },
            amplifier: "none".into(),
            prepare: StdDuration::from_millis(1000),
            cache: cache.clone(),
            volume,
            emergency_volume,
            clock,
        };
        let player = Player::spawn(config, HashSet::new(), tx).unwrap();
        Rig {
            _dir: dir,
            cache,
            wav,
            player,
            events,
        }
    }

    /// Collects events until `done` says enough, or panics after `timeout`.
    fn events_until(
        &mut self,
        timeout: StdDuration,
        mut done: impl FnMut(&[PlayerEvent]) -> bool,
    ) -> Vec<PlayerEvent> {
        let deadline = Instant::now() + timeout;
        let mut all = Vec::new();
        while !done(&all) {
            assert!(Instant::now() < deadline, "timed out; events: {all:#?}");
            match self.events.try_recv() {
                Ok(e) => all.push(e),
                Err(_) => std::thread::sleep(StdDuration::from_millis(5)),
            }
        }
        all
    }

    /// Stops the player and returns what it played.
    fn recording(self) -> Vec<f32> {
        self.player.shutdown();
        common::read_wav(&self.wav)
    }
}

fn summaries(events: &[PlayerEvent]) -> Vec<LiveSummary> {
    events
        .iter()
        .filter_map(|e| match e {
            PlayerEvent::LiveEnded(s) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

fn reports(events: &[PlayerEvent]) -> Vec<PlayReport> {
    events
        .iter()
        .filter_map(|e| match e {
            PlayerEvent::Finished { report, .. } => Some(report.clone()),
            _ => None,
        })
        .collect()
}

/// A broadcast of `speech` whose first sample is heard `lead` from now.
fn broadcast(id: u8, priority: Priority, speech: &[f32], lead: StdDuration) -> Broadcast {
    let delay_ms = 120;
    Broadcast {
        id: [id; 16],
        priority,
        start_us: controller_now_us() + lead.as_micros() as i64 - delay_ms * 1000,
        delay_ms: delay_ms as u16,
        packets: live_common::encode(speech),
    }
}

/// Hands `b`'s frames to the player in real time: each (in `order`) at its
/// capture instant + 20 ms + its extra delay, then the end frame.
fn feed(feed: LiveFeed, b: &Broadcast, order: &[(u32, i64)]) -> JoinHandle<()> {
    let mut sends: Vec<(i64, LiveFrame)> = order
        .iter()
        .map(|&(seq, extra)| (b.capture_us(seq) + 20_000 + extra, b.frame(seq)))
        .collect();
    let end = b.end();
    sends.push((end.capture_us + 20_000, end));
    sends.sort_by_key(|(at, _)| *at);
    std::thread::spawn(move || {
        for (at, frame) in sends {
            let wait = at - controller_now_us();
            if wait > 0 {
                std::thread::sleep(StdDuration::from_micros(wait as u64));
            }
            assert!(feed.offer(frame, local_now_us()), "live queue full");
        }
    })
}

fn all_in_order(b: &Broadcast) -> Vec<(u32, i64)> {
    (0..b.packets.len() as u32).map(|s| (s, 0)).collect()
}

/// `t` (local) on the controller's clock, which schedules and reports use.
fn on_controller_clock(t: DateTime<Utc>) -> DateTime<Utc> {
    t + Duration::microseconds(OFFSET_US)
}

/// The local instant at which frame 0 of `b` must be heard.
fn heard_at(b: &Broadcast) -> DateTime<Utc> {
    utc_of_local(b.playout_us() - OFFSET_US)
}

#[test]
fn losses_are_concealed_and_late_frames_counted() {
    let mut rig = Rig::new(1.0, 1.0);
    // 3.2 s, so that the last frame held up in the network still arrives
    // before the broadcast ends.
    let speech = live_common::syllables(2000.0, 3.2, 0.6, 3);
    let b = broadcast(1, Priority::Normal, &speech, StdDuration::from_millis(500));
    let order = live_common::lossy_order(b.packets.len() as u32);
    let sender = feed(rig.player.live_feed(), &b, &order);
    let events = rig.events_until(StdDuration::from_secs(10), |e| !summaries(e).is_empty());
    sender.join().unwrap();
    let s = &summaries(&events)[0];
    println!("{s:#?}");
    assert_eq!(s.broadcast_id, b.uuid());
    assert_eq!(s.end, LiveEnd::EndFrame);
    let received = live_common::in_time(&order);
    let frames = b.packets.len() as u64;
    let lost = frames - received.len() as u64;
    assert_eq!(s.frames.played, received.len() as u64);
    assert_eq!(
        s.frames.fec + s.frames.plc,
        lost,
        "every lost frame concealed"
    );
    // Isolated losses and the second of each pair come back by FEC.
    assert!(
        s.frames.fec >= 2 * lost / 3,
        "{} of {lost} by FEC",
        s.frames.fec
    );
    assert!(s.frames.plc >= 1);
    let held_up = order.iter().filter(|(_, extra)| *extra >= 50_000).count() as u64;
    assert_eq!(s.frames.late, held_up, "the frames held up in the network");
    assert_eq!(s.late_at_write, 0);
    // The status named the broadcast while it played.
    assert!(events.iter().any(|e| matches!(e,
        PlayerEvent::NowPlaying(Some(n)) if n.event_id == b.uuid() && n.programme_id == format!("live:{}", b.uuid()))));
    assert!(matches!(events.last(), Some(PlayerEvent::LiveEnded(_))));

    let samples = rig.recording();
    let reference = live_common::decode_as_received(&b.packets, &received);
    let (_, corr) = live_common::locate(&samples, &reference, 0, 48_000);
    println!("envelope correlation with the concealed reference {corr:.3}");
    assert!(corr > 0.95, "{corr}");
}

#[test]
fn higher_priority_broadcast_takes_over_at_its_own_volume() {
    // Normal audio at half gain, emergency audio at full gain.
    let mut rig = Rig::new(0.5, 1.0);
    let normal_speech = live_common::syllables(1000.0, 3.0, 0.6, 11);
    let emergency_speech = live_common::syllables(2000.0, 1.0, 0.6, 12);
    let a = broadcast(
        0xa,
        Priority::Normal,
        &normal_speech,
        StdDuration::from_millis(400),
    );
    let b = broadcast(
        0xb,
        Priority::Emergency,
        &emergency_speech,
        StdDuration::from_millis(1400),
    );
    let feed_a = feed(rig.player.live_feed(), &a, &all_in_order(&a));
    let feed_b = feed(rig.player.live_feed(), &b, &all_in_order(&b));
    let events = rig.events_until(StdDuration::from_secs(10), |e| summaries(e).len() >= 3);
    feed_a.join().unwrap();
    feed_b.join().unwrap();
    let ended = summaries(&events);
    for s in &ended {
        println!(
            "{} {:?} {:?} played {}",
            s.broadcast_id, s.priority, s.end, s.frames.played
        );
    }
    // A was superseded by B, B ran to its end, then A came back to its end.
    assert_eq!(
        (ended[0].broadcast_id.as_str(), ended[0].end),
        (a.uuid().as_str(), LiveEnd::Superseded)
    );
    assert_eq!(
        (ended[1].broadcast_id.as_str(), ended[1].end),
        (b.uuid().as_str(), LiveEnd::EndFrame)
    );
    assert_eq!(
        (ended[2].broadcast_id.as_str(), ended[2].end),
        (a.uuid().as_str(), LiveEnd::EndFrame)
    );
    assert_eq!(ended[1].frames.played, b.packets.len() as u64);

    let samples = rig.recording();
    let onset = common::onset(&samples, 0.02).unwrap();
    // B is heard where it should be relative to A.
    let a_ref = live_common::decode(&a.packets);
    let b_ref = live_common::decode(&b.packets);
    let (a_at, _) = live_common::locate(&samples, &a_ref[..48_000], 0, onset + 4_800);
    let expected_b = a_at + ((b.playout_us() - a.playout_us()) as f64 * 0.048).round() as usize;
    let (b_at, corr) =
        live_common::locate(&samples, &b_ref, expected_b - 4_800, expected_b + 4_800);
    let off_ms = (b_at as f64 - expected_b as f64) / 48.0;
    println!("emergency broadcast {off_ms:+.2} ms from its instant (correlation {corr:.3})");
    assert!(off_ms.abs() <= 2.0 && corr > 0.95, "{off_ms} ms, {corr}");
    // Nothing of A while B plays; A at half the level of B.
    let windows = common::dominant(&samples[b_at..b_at + 48_000], &[1000.0, 2000.0]);
    assert!(windows.iter().all(|w| *w != Some(1000.0)), "{windows:?}");
    // (A's first 0.8 s: it stops being written a little before B begins.)
    let a_level =
        live_common::rms(&samples[a_at..a_at + 38_400]) / live_common::rms(&a_ref[..38_400]);
    let b_level = live_common::rms(&samples[b_at..b_at + 48_000]) / live_common::rms(&b_ref);
    println!("gain heard: normal {a_level:.3}, emergency {b_level:.3}");
    assert!((a_level - 0.5).abs() < 0.03, "normal gain {a_level}");
    assert!((b_level - 1.0).abs() < 0.05, "emergency gain {b_level}");
}

#[test]
fn a_scheduled_emergency_holds_off_a_normal_broadcast() {
    let mut rig = Rig::new(1.0, 1.0);
    let programme = common::ogg_opus(&common::tone(1000.0, 1.0, 0.5));
    let r = common::put_in_cache(&rig.cache, &programme, 1000);
    let start = on_controller_clock(Utc::now() + Duration::milliseconds(2500));
    let ev = common::event("alarm", "siren", start, 1000, Priority::Emergency);
    rig.player.set_schedule(Arc::new(common::schedule(
        "loa-1",
        1,
        &[("siren", &r)],
        vec![ev.clone()],
    )));
    // A normal broadcast from 1 s before the play to 2 s after its start.
    let speech = live_common::syllables(2000.0, 3.0, 0.6, 5);
    let b = broadcast(2, Priority::Normal, &speech, StdDuration::from_millis(1500));
    let sender = feed(rig.player.live_feed(), &b, &all_in_order(&b));
    let events = rig.events_until(StdDuration::from_secs(12), |e| {
        !reports(e).is_empty() && !summaries(e).is_empty()
    });
    sender.join().unwrap();
    let report = &reports(&events)[0];
    println!("{report:#?}");
    assert_eq!(report.outcome, PlayOutcome::Completed);
    assert!(report.interruptions.is_empty());
    let late_ms = (report.started_at.unwrap() - start)
        .num_microseconds()
        .unwrap() as f64
        / 1000.0;
    println!("emergency play started {late_ms:+.2} ms from its instant");
    assert!(late_ms.abs() < 5.0, "{late_ms}");
    let s = &summaries(&events)[0];
    assert_eq!(s.end, LiveEnd::EndFrame);
    assert!(
        s.frames.discarded >= 45,
        "frames dropped while held off: {}",
        s.frames.discarded
    );

    // Broadcast, siren (at its instant), broadcast again.
    let samples = rig.recording();
    let onset = common::onset(&samples, 0.02).unwrap();
    let b_ref = live_common::decode(&b.packets);
    let (b_at, _) = live_common::locate(&samples, &b_ref[..24_000], 0, onset + 4_800);
    let siren_at = b_at
        + ((start - on_controller_clock(heard_at(&b)))
            .num_microseconds()
            .unwrap() as f64
            * 0.048) as usize;
    let windows = common::dominant(&samples[b_at..], &[1000.0, 2000.0]);
    let siren = siren_at.saturating_sub(b_at) / 480;
    println!("siren expected at window {siren}");
    assert!(windows[..siren - 1].iter().all(|w| *w != Some(1000.0)));
    assert!(
        windows[siren + 1..siren + 99]
            .iter()
            .all(|w| *w == Some(1000.0)),
        "{:?}",
        &windows[siren..siren + 100]
    );
    assert!(
        windows[siren + 101..].contains(&Some(2000.0)),
        "the broadcast came back"
    );
}

#[test]
fn a_play_due_during_a_broadcast_starts_after_it() {
    let mut rig = Rig::new(1.0, 1.0);
    let programme = common::ogg_opus(&common::tone(1000.0, 1.0, 0.5));
    let r = common::put_in_cache(&rig.cache, &programme, 1000);
    let start = on_controller_clock(Utc::now() + Duration::milliseconds(2000));
    let ev = common::event("news", "bulletin", start, 1000, Priority::Priority);
    rig.player.set_schedule(Arc::new(common::schedule(
        "loa-1",
        1,
        &[("bulletin", &r)],
        vec![ev.clone()],
    )));
    // An emergency broadcast from 0.5 s before the play to 1 s after its start.
    let speech = live_common::syllables(2000.0, 1.5, 0.6, 9);
    let b = broadcast(
        3,
        Priority::Emergency,
        &speech,
        StdDuration::from_millis(1500),
    );
    let sender = feed(rig.player.live_feed(), &b, &all_in_order(&b));
    let events = rig.events_until(StdDuration::from_secs(12), |e| !reports(e).is_empty());
    sender.join().unwrap();
    let report = &reports(&events)[0];
    println!("{report:#?}");
    assert_eq!(report.outcome, PlayOutcome::Completed);
    assert_eq!(report.interruptions.len(), 1);
    let i = &report.interruptions[0];
    assert_eq!(i.broadcast_id, b.uuid());
    assert_eq!(i.from, start, "held from its planned start");
    let b_end = on_controller_clock(heard_at(&b)) + Duration::milliseconds(1500);
    let to_ms = (i.to - b_end).num_microseconds().unwrap() as f64 / 1000.0;
    let started_ms = (report.started_at.unwrap() - i.to)
        .num_microseconds()
        .unwrap() as f64
        / 1000.0;
    println!(
        "interruption ends {to_ms:+.2} ms from the broadcast's end; play starts {started_ms:+.2} ms after"
    );
    assert!(to_ms.abs() < 5.0 && started_ms.abs() < 5.0);
    let played = (report.ended_at.unwrap() - report.started_at.unwrap()).num_milliseconds();
    assert!(
        (played - 1000).abs() < 30,
        "played {played} ms: the whole programme"
    );

    let samples = rig.recording();
    let windows = common::dominant(&samples, &[1000.0, 2000.0]);
    let first_programme = windows.iter().position(|w| *w == Some(1000.0)).unwrap();
    let last_live = windows.iter().rposition(|w| *w == Some(2000.0)).unwrap();
    let programme = windows.iter().filter(|w| **w == Some(1000.0)).count();
    assert!(
        first_programme > last_live,
        "the programme came after the broadcast"
    );
    assert!(
        (98..=101).contains(&programme),
        "{programme} windows of programme"
    );
}

#[test]
fn a_broadcast_is_heard_even_without_a_usable_clock() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("info,loa_receiver=debug")
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("out.wav");
    // No clock exchange, and the controller's clock 1.7 s behind: by the
    // local clock alone every frame would be past its playout instant.
    let (tx, mut events) = unbounded_channel();
    let config = PlayerConfig {
        receiver_id: "loa-1".into(),
        output: OutputSpec::Wav { path: wav.clone() },
        amplifier: "none".into(),
        prepare: StdDuration::from_millis(1000),
        cache: Cache::open(dir.path()).unwrap(),
        volume: 1.0,
        emergency_volume: 1.0,
        clock: Clock::new(),
    };
    let player = Player::spawn(config, HashSet::new(), tx).unwrap();
    let speech = live_common::syllables(2000.0, 1.0, 0.6, 21);
    let b = broadcast(
        4,
        Priority::Emergency,
        &speech,
        StdDuration::from_millis(300),
    );
    let sender = feed(player.live_feed(), &b, &all_in_order(&b));
    let deadline = Instant::now() + StdDuration::from_secs(8);
    let summary = loop {
        assert!(Instant::now() < deadline, "the broadcast never ended");
        match events.try_recv() {
            Ok(PlayerEvent::LiveEnded(s)) => break s,
            Ok(_) => {}
            Err(_) => std::thread::sleep(StdDuration::from_millis(5)),
        }
    };
    sender.join().unwrap();
    println!("{summary:#?}");
    assert_eq!(summary.frames.played, b.packets.len() as u64);
    assert_eq!(summary.late_at_write, 0);
    player.shutdown();
    let samples = common::read_wav(&wav);
    let (_, corr) = live_common::locate(&samples, &live_common::decode(&b.packets), 0, 24_000);
    assert!(corr > 0.95, "{corr}");
}

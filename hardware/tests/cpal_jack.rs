//! `CpalSink` in real time: ALSA `default` → plug → file tap → JACK dummy
//! backend (TESTING.md set-up 1) on a JACK server of our own, so the real
//! cpal/ALSA path runs at the device's pace and every sample handed to the
//! device lands in the tap file.
//!
//! ALSA and libjack read `HOME` and `JACK_DEFAULT_SERVER` when cpal first
//! opens the device, so this binary holds a single test that sets them first.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use loa_hardware::sink::cpal::CpalSink;
use loa_hardware::{AudioSink, SAMPLE_RATE};

/// Our JACK server, stopped when the test ends, pass or fail. It gets
/// SIGTERM: a JACK server killed with SIGKILL keeps its slot in the shared
/// server registry (`/dev/shm/jack-shm-registry`), and after eight such
/// slots no JACK server can start on the machine.
struct Jackd(Child);

impl Jackd {
    /// Starts `jackd -n NAME` on the dummy backend and waits until it
    /// accepts clients; a few tries, as a server starting or stopping at the
    /// same moment can make the start fail.
    fn start(name: &str, log: &std::path::Path) -> Jackd {
        for attempt in 1..=3 {
            let out = std::fs::File::create(log).unwrap();
            let child = Command::new("jackd")
                .args(["-n", name, "--no-realtime", "-d", "dummy"])
                .args(["-r", "48000", "-p", "256"])
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .unwrap();
            let jackd = Jackd(child);
            let ready = Command::new("jack_wait")
                .args(["-s", name, "-w", "-t", "10"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap();
            if ready.success() {
                return jackd;
            }
            eprintln!(
                "jackd attempt {attempt} failed: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            drop(jackd);
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("jackd did not start (see the log above)");
    }
}

impl Drop for Jackd {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[test]
fn writes_are_paced_by_the_device_and_delay_predicts_playout() {
    if Command::new("jackd").arg("--version").output().is_err() {
        eprintln!("SKIPPED: jackd is not installed (apt-get install jackd2 libasound2-plugins)");
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let tap = home.path().join("played.f32");
    let server = format!("loa-hw-test-{}", std::process::id());
    common::write_asoundrc(
        home.path(),
        &format!(
            r#"pcm.!default {{
    type plug
    slave {{ pcm "loa_tap"  format FLOAT_LE  rate 48000  channels 1 }}
}}
pcm.loa_tap {{
    type file
    slave.pcm "loa_jack"
    file "|cat >> {}"
    format "raw"
}}
pcm.loa_jack {{
    type jack
    playback_ports {{ 0 system:playback_1 }}
    capture_ports {{ 0 system:capture_1 }}
}}
"#,
            tap.display()
        ),
    );
    let _jackd = Jackd::start(&server, &home.path().join("jackd.log"));
    // SAFETY: this binary runs one test and no other thread reads the
    // environment; ALSA and libjack read these when cpal opens the device.
    unsafe {
        std::env::set_var("HOME", home.path());
        std::env::set_var("JACK_DEFAULT_SERVER", &server);
    }

    let mut sink = CpalSink::new(None).unwrap();
    sink.start().unwrap();

    // 1. One second of tone: the writer is held to the device clock.
    let tone = common::tone(1.0, 0.5);
    let d0 = sink.delay();
    let latency = sink.output_latency();
    assert!(
        d0 > Duration::ZERO && d0 < Duration::from_millis(200),
        "delay before writing {d0:?}"
    );
    let t0 = Instant::now();
    let mut delays = Vec::new();
    for chunk in tone.chunks(960) {
        sink.write(chunk).unwrap();
        delays.push(sink.delay());
    }
    let written = t0.elapsed();
    // With nothing written, delay() counts down with the wall clock.
    let d1 = sink.delay();
    std::thread::sleep(Duration::from_millis(50));
    let d2 = sink.delay();
    let t_stop = Instant::now();
    sink.stop().unwrap();
    let stop_took = t_stop.elapsed();
    let (d_min, d_max) = (delays.iter().min().unwrap(), delays.iter().max().unwrap());
    eprintln!(
        "device latency {:.1} ms; delay before writing {:.1} ms, while writing {:.1}..{:.1} ms, \
         50 ms after the last write {:.1} -> {:.1} ms; 1 s written in {:.1} ms; \
         stop() took {:.1} ms; underruns {}, xruns {}",
        ms(latency),
        ms(d0),
        ms(*d_min),
        ms(*d_max),
        ms(d1),
        ms(d2),
        ms(written),
        ms(stop_took),
        sink.underruns(),
        sink.xruns(),
    );
    // All but the last 100 ms (the queue) had to wait for the device.
    assert!(
        written >= Duration::from_millis(850) && written <= Duration::from_millis(1000),
        "1 s of audio written in {written:?}"
    );
    assert!(
        *d_min > Duration::ZERO && *d_max < Duration::from_millis(200),
        "delay while writing {d_min:?}..{d_max:?}"
    );
    // A full queue (100 ms) plus the device's share.
    assert!(d1 >= Duration::from_millis(100) + latency / 2, "{d1:?}");
    let elapsed = ms(d1) - ms(d2);
    assert!(
        (elapsed - 50.0).abs() < 5.0,
        "delay fell {elapsed:.1} ms in 50 ms"
    );
    // stop() let the rest play out before closing the device.
    assert!(
        stop_took + Duration::from_millis(5) >= d2,
        "stop() took {stop_took:?}, delay {d2:?}"
    );
    assert!(
        stop_took < d2 + Duration::from_millis(500),
        "stop() took {stop_took:?}"
    );
    assert_eq!(sink.underruns(), 0, "the writer kept the queue filled");

    // 2. Pre-emption: clear() drops queued audio at once.
    sink.start().unwrap();
    let long = common::tone(0.5, 0.25);
    sink.write(&long).unwrap();
    let before = sink.delay();
    sink.clear();
    let after = sink.delay();
    assert!(before >= Duration::from_millis(100), "queued {before:?}");
    assert!(
        after <= sink.output_latency() + Duration::from_millis(25),
        "after clear {after:?}, device latency {:?}",
        sink.output_latency()
    );
    let marker = vec![0.75f32; SAMPLE_RATE as usize / 10];
    sink.write(&marker).unwrap();
    sink.stop().unwrap();

    // 3. The tap holds exactly what was played, on one sample clock.
    let played = common::read_f32_settled(&tap);
    let runs = common::sound_runs(&played);
    assert!(runs.len() >= 2, "sound runs {runs:?}");
    let (start, len) = runs[0];
    assert_eq!(len, tone.len(), "first play is one unbroken tone");
    for (i, (&got, &want)) in played[start..start + len].iter().zip(&tone).enumerate() {
        assert!((got - want).abs() < 1e-6, "sample {i}: {got} != {want}");
    }
    let second: Vec<f32> = runs[1..]
        .iter()
        .flat_map(|&(s, l)| played[s..s + l].iter().copied())
        .collect();
    let long_played = second.iter().filter(|&&s| s != 0.75).count();
    let marker_played = second.iter().filter(|&&s| s == 0.75).count();
    assert_eq!(
        marker_played,
        marker.len(),
        "all of the audio after clear()"
    );
    assert!(
        long_played + SAMPLE_RATE as usize / 20 <= long.len(),
        "clear() dropped {} of {} samples",
        long.len() - long_played,
        long.len()
    );
    assert!(second.ends_with(&marker), "the marker plays last");
}

//! The whole receiver (`loa_receiver::run`) against a real Mosquitto broker,
//! playing into a WAV file: settings from the console (volume 50 %, kept on
//! disk, newer versions only) and the test tone command — a 1 kHz tone at
//! −12 dBFS × the volume for the asked length, amplifier on and off around
//! it (reported in the status), stale and repeated commands ignored, and a
//! tone refused while a scheduled play is on air.

mod common;

use std::path::Path;
use std::time::Duration as StdDuration;

use chrono::{Duration, Utc};
use loa_hardware::OutputSpec;
use loa_protocol::topics::ReceiverTopic;
use loa_protocol::{
    CommandKind, Priority, ReceiverCommand, ReceiverSettings, ReceiverStatus, encode,
};
use rumqttc::{AsyncClient, QoS};
use tokio::sync::{mpsc, oneshot};

const ID: &str = "loa-tone";
const RATE: f64 = 48_000.0;

/// The controller's side: publishes settings and commands, reads statuses.
struct Controller {
    client: AsyncClient,
    statuses: mpsc::UnboundedReceiver<ReceiverStatus>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Controller {
    async fn connect(port: u16) -> Controller {
        let (client, statuses, task) = common::status_peer(port, "test-tone-controller", ID).await;
        Controller {
            client,
            statuses,
            task,
        }
    }

    /// Publishes `payload` signed as the controller signs it.
    async fn publish(&self, kind: ReceiverTopic, retain: bool, payload: Vec<u8>) {
        let topic = kind.for_receiver(ID);
        let signed = common::sign(&topic, &payload);
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, signed)
            .await
            .unwrap();
    }

    async fn tone(&self, command_id: &str, issued_ago: Duration, seconds: u32) {
        let command = ReceiverCommand {
            command_id: command_id.into(),
            issued_at: Utc::now() - issued_ago,
            kind: CommandKind::TestTone { seconds },
        };
        self.publish(ReceiverTopic::Commands, false, encode(&command))
            .await;
    }

    /// The first status `accept` takes, within `timeout`.
    async fn expect(
        &mut self,
        what: &str,
        timeout: StdDuration,
        accept: impl Fn(&ReceiverStatus) -> bool,
    ) -> ReceiverStatus {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let status = tokio::time::timeout_at(deadline, self.statuses.recv())
                .await
                .unwrap_or_else(|_| panic!("no status where {what}"))
                .unwrap();
            if status.online && accept(&status) {
                return status;
            }
        }
    }
}

fn config(cache: &Path, wav: &Path, broker_port: u16) -> loa_receiver::Config {
    loa_receiver::Config {
        receiver_id: ID.into(),
        token: "token".into(),
        controller: "http://127.0.0.1:9".into(),
        broker: format!("mqtt://127.0.0.1:{broker_port}").parse().unwrap(),
        cache_dir: cache.to_path_buf(),
        output: OutputSpec::Wav {
            path: wav.to_path_buf(),
        },
        amplifier: "none".into(),
        heartbeat: StdDuration::from_secs(30),
        prepare: StdDuration::from_millis(500),
        cache_grace: StdDuration::from_secs(3600),
        volume: 1.0,
        emergency_volume: 1.0,
        controller_key: Some(common::controller_public_key()),
        controller_tls: Default::default(),
    }
}

/// Stretches of `samples` (10 ms windows) where `freq` dominates, as
/// (first sample, samples).
fn stretches(samples: &[f32], freq: f32) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for (i, w) in samples.chunks(480).enumerate() {
        let (p500, p1k) = (common::power_at(w, 500.0), common::power_at(w, 1000.0));
        // A sine of peak A gives ~A²/4: anything above 0.02 peak counts.
        let (p, other) = if freq == 1000.0 {
            (p1k, p500)
        } else {
            (p500, p1k)
        };
        if p < 1e-4 || p < 10.0 * other {
            continue;
        }
        match out.last_mut() {
            Some((start, len)) if *start + *len == i * 480 => *len += 480,
            _ => out.push((i * 480, 480)),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_and_test_tone_through_the_wav_sink() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("info,loa_receiver=debug")
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("cache");
    std::fs::create_dir_all(&cache_dir).unwrap();
    let wav = dir.path().join("out.wav");
    let broker = common::Mosquitto::start();
    let mut controller = Controller::connect(broker.port).await;

    // A 4 s 500 Hz programme, already in the cache.
    let cache = loa_receiver::cache::Cache::open(&cache_dir).unwrap();
    let audio = common::ogg_opus(&common::tone(500.0, 4.0, 0.5));
    let programme = common::put_in_cache(&cache, &audio, 4000);

    let (stop, stopped) = oneshot::channel::<()>();
    let receiver = tokio::spawn(loa_receiver::run(
        config(&cache_dir, &wav, broker.port),
        async move {
            let _ = stopped.await;
        },
    ));
    let first = controller
        .expect("the receiver is up", StdDuration::from_secs(10), |_| true)
        .await;
    assert_eq!(
        first.volume,
        Some(100),
        "--volume 1.0 until settings arrive"
    );
    assert_eq!(first.amplifier_on, Some(false));

    // Settings: volume 50 %, kept on disk; an older version is ignored.
    let settings = ReceiverSettings {
        receiver_id: ID.into(),
        version: 7,
        volume: 50,
        emergency_volume: None,
    };
    controller
        .publish(ReceiverTopic::Settings, true, encode(&settings))
        .await;
    controller
        .expect("the volume is 50", StdDuration::from_secs(5), |s| {
            s.volume == Some(50)
        })
        .await;
    let kept: ReceiverSettings =
        serde_json::from_slice(&std::fs::read(cache_dir.join("settings.json")).unwrap()).unwrap();
    assert_eq!(kept, settings);
    let older = ReceiverSettings {
        version: 6,
        volume: 90,
        ..settings.clone()
    };
    controller
        .publish(ReceiverTopic::Settings, false, encode(&older))
        .await;

    // A stale command is ignored; a fresh 2 s tone plays, amplifier on then off.
    controller.tone("stale", Duration::seconds(120), 2).await;
    controller.tone("tone-1", Duration::zero(), 2).await;
    controller
        .expect("the amplifier is on", StdDuration::from_secs(5), |s| {
            s.amplifier_on == Some(true)
        })
        .await;
    let off = controller
        .expect("the amplifier is off", StdDuration::from_secs(6), |s| {
            s.amplifier_on == Some(false)
        })
        .await;
    assert_eq!(off.volume, Some(50), "the older settings were ignored");
    // The same command delivered again is not played again.
    controller.tone("tone-1", Duration::zero(), 2).await;
    tokio::time::sleep(StdDuration::from_millis(800)).await;

    // A scheduled play: a tone asked for while it is on air is refused.
    let at = Utc::now() + Duration::seconds(2);
    let event = common::event("s1", "prog", at, 4000, Priority::Normal);
    let schedule = common::schedule(ID, 1, &[("prog", &programme)], vec![event]);
    controller
        .publish(ReceiverTopic::Schedule, true, encode(&schedule))
        .await;
    controller
        .expect("the programme plays", StdDuration::from_secs(6), |s| {
            s.now_playing.is_some()
        })
        .await;
    tokio::time::sleep(StdDuration::from_millis(500)).await;
    controller.tone("tone-2", Duration::zero(), 2).await;
    controller
        .expect("the programme ended", StdDuration::from_secs(8), |s| {
            s.now_playing.is_none()
        })
        .await;
    // Nothing follows the programme (the refused tone must not play later).
    tokio::time::sleep(StdDuration::from_millis(3500)).await;
    let _ = stop.send(());
    tokio::time::timeout(StdDuration::from_secs(10), receiver)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    let samples = common::read_wav(&wav);
    let tones = stretches(&samples, 1000.0);
    let programmes = stretches(&samples, 500.0);
    println!("1 kHz stretches {tones:?}, 500 Hz stretches {programmes:?}");
    assert_eq!(
        tones.len(),
        1,
        "one tone, not the stale, repeated or refused ones"
    );
    assert_eq!(programmes.len(), 1, "the programme, uninterrupted");
    let (tone_at, tone_len) = tones[0];
    let (prog_at, _) = programmes[0];
    assert!(tone_at < prog_at);

    // Duration: from the first to the last sample above half the tone's peak.
    let expected_peak = loa_receiver::tone_amplitude() * 0.5;
    let region = &samples[tone_at.saturating_sub(4800)..(tone_at + tone_len + 4800).min(prog_at)];
    let on = common::onset(region, expected_peak / 2.0).unwrap();
    let off = common::offset(region, expected_peak / 2.0).unwrap();
    let seconds = (off - on) as f64 / RATE;
    let middle = &region[on + 4800..off - 4800];
    let peak = middle.iter().fold(0f32, |m, s| m.max(s.abs()));
    let rms = (middle.iter().map(|s| s * s).sum::<f32>() / middle.len() as f32).sqrt();
    let dbfs = 20.0 * (peak / 0.5).log10();
    println!(
        "test tone: {seconds:.4} s, peak {peak:.4} (expected {expected_peak:.4}), rms {rms:.4}, \
         {dbfs:.2} dBFS before the 50 % volume"
    );
    assert!((seconds - 2.0).abs() < 0.01, "{seconds} s of tone");
    assert!((peak - expected_peak).abs() < 0.01 * expected_peak);
    assert!((rms - expected_peak / 2f32.sqrt()).abs() < 0.01 * expected_peak);
    assert!((dbfs - loa_receiver::TONE_DBFS).abs() < 0.1);
    let window = &middle[..4800];
    assert!(common::power_at(window, 1000.0) > 100.0 * common::power_at(window, 1100.0));

    // The programme played at 50 % (sent at 0.5 peak), with no tone in it.
    let prog = &samples[prog_at..prog_at + 3 * 48_000];
    let prog_peak = prog.iter().fold(0f32, |m, s| m.max(s.abs()));
    println!("programme peak {prog_peak:.3} (0.5 sent × 50 %)");
    assert!(
        (prog_peak - 0.25).abs() < 0.03,
        "programme peak {prog_peak}"
    );
    drop(broker);
}

//! A live broadcast through the whole receiver (`loa_receiver::run`) against
//! a real Mosquitto broker: a test-side controller answers clock requests
//! with a clock 2.5 s ahead of ours and publishes an Opus broadcast on the
//! zone's live topic (with losses, a swap and a late frame) in the middle of
//! a scheduled programme. The WAV output must hold the programme, then the
//! broadcast at its playout instant (translated through the estimated clock
//! offset), then the programme again from where it stopped; the status must
//! show the broadcast while it plays, and the play report must list the
//! interruption. A forged emergency broadcast (frames signed by another
//! key) published on the same topic at the same time must be dropped and
//! reported, never heard.

mod common;
mod live_common;

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use loa_hardware::OutputSpec;
use loa_protocol::live::{
    ClockReply, ClockRequest, clock_reply_topic, clock_request_filter, zone_live_topic,
};
use loa_protocol::topics::ReceiverTopic;
use loa_protocol::{PlayOutcome, PlayReport, Priority, ReceiverStatus, decode, encode};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::{mpsc, oneshot};

use live_common::Broadcast;

const ID: &str = "loa-live-1";
const ZONE: &str = "thon-1";
const TOKEN: &str = "live-token";
/// The test controller's clock runs this far ahead of ours (µs).
const CONTROLLER_AHEAD_US: i64 = 2_500_000;

fn controller_now_us() -> i64 {
    Utc::now().timestamp_micros() + CONTROLLER_AHEAD_US
}

/// The test-side controller: answers clock requests at once, collects
/// statuses and reports.
struct Controller {
    client: AsyncClient,
    messages: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Controller {
    async fn connect(port: u16) -> Controller {
        let mut options = MqttOptions::new("test-live-controller", "127.0.0.1", port);
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 512);
        let (tx, messages) = mpsc::unbounded_channel();
        let replier = client.clone();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let t2 = controller_now_us();
                        if p.topic.ends_with("/clock") {
                            if let Ok(request) = decode::<ClockRequest>(&p.payload) {
                                let id = p.topic.split('/').nth(3).unwrap_or_default().to_string();
                                let reply = ClockReply {
                                    seq: request.seq,
                                    t1_us: request.t1_us,
                                    t2_us: t2,
                                    t3_us: controller_now_us(),
                                };
                                let _ = replier.try_publish(
                                    clock_reply_topic(&id),
                                    QoS::AtMostOnce,
                                    false,
                                    encode(&reply),
                                );
                            }
                            continue;
                        }
                        let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(StdDuration::from_millis(50)).await,
                }
            }
        });
        client
            .subscribe(clock_request_filter(), QoS::AtMostOnce)
            .await
            .unwrap();
        for kind in [ReceiverTopic::Status, ReceiverTopic::Plays] {
            client
                .subscribe(kind.for_receiver(ID), QoS::AtLeastOnce)
                .await
                .unwrap();
        }
        Controller {
            client,
            messages,
            task,
        }
    }

    /// Waits for a message on `kind` that `accept` takes; every status seen
    /// on the way is kept in `statuses`.
    async fn expect<T: serde::de::DeserializeOwned>(
        &mut self,
        kind: ReceiverTopic,
        timeout: StdDuration,
        statuses: &mut Vec<ReceiverStatus>,
        accept: impl Fn(&T) -> bool,
    ) -> T {
        let topic = kind.for_receiver(ID);
        let status_topic = ReceiverTopic::Status.for_receiver(ID);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (t, payload) = tokio::time::timeout_at(deadline, self.messages.recv())
                .await
                .unwrap_or_else(|_| panic!("no matching message on {topic}"))
                .unwrap();
            if t == status_topic
                && let Ok(s) = decode::<ReceiverStatus>(&payload)
            {
                statuses.push(s);
            }
            if t == topic
                && let Ok(message) = decode::<T>(&payload)
                && accept(&message)
            {
                return message;
            }
        }
    }
}

/// Publishes `broadcast` in real time on `topic`, frame by frame at its
/// capture instant + 20 ms (controller clock), through the lossy order of
/// [`live_common::lossy_order`], then its end frame.
async fn publish_broadcast(
    client: AsyncClient,
    topic: String,
    broadcast: Arc<Broadcast>,
    key: loa_protocol::signed::SigningKey,
) {
    let order = live_common::lossy_order(broadcast.packets.len() as u32);
    let mut sends: Vec<(i64, Vec<u8>)> = order
        .iter()
        .map(|&(seq, extra)| {
            (
                broadcast.capture_us(seq) + 20_000 + extra,
                broadcast.frame(seq).encode(&key),
            )
        })
        .collect();
    let end = broadcast.end();
    sends.push((end.capture_us + 20_000, end.encode(&key)));
    sends.sort_by_key(|(at, _)| *at);
    for (at, bytes) in sends {
        let wait = at - controller_now_us();
        if wait > 0 {
            tokio::time::sleep(StdDuration::from_micros(wait as u64)).await;
        }
        client
            .publish(&topic, QoS::AtMostOnce, false, bytes)
            .await
            .unwrap();
    }
}

fn at_us(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_broadcast_interrupts_and_resumes_a_programme_in_sync() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("info,loa_receiver=debug")
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let wav = dir.path().join("out.wav");
    let broker = common::Mosquitto::start();
    let mut controller = Controller::connect(broker.port).await;
    let server = common::AudioServer::start(TOKEN);

    // The programme: 4 s of 1 kHz whose level ramps up, so the level heard
    // after the broadcast tells where it resumed.
    let programme_audio = live_common::ramp_tone(1000.0, 4.0, 0.3, 0.7);
    let programme_file = common::ogg_opus(&programme_audio);
    server.add("bulletin", programme_file.clone());
    let programme = common::programme_ref(&programme_file, 4000);
    // `start` is local time; a schedule's instants are on the controller's
    // clock, which receivers keep time by.
    let start = Utc::now() + Duration::seconds(6);
    let ahead = Duration::microseconds(CONTROLLER_AHEAD_US);
    let event = common::event("s1", "bulletin", start + ahead, 4000, Priority::Normal);
    let mut schedule = common::schedule(ID, 1, &[("bulletin", &programme)], vec![event.clone()]);
    schedule.zone = Some(ZONE.into());
    controller
        .client
        .publish(
            ReceiverTopic::Schedule.for_receiver(ID),
            QoS::AtLeastOnce,
            true,
            common::sign(
                &ReceiverTopic::Schedule.for_receiver(ID),
                &encode(&schedule),
            ),
        )
        .await
        .unwrap();

    let config = loa_receiver::Config {
        receiver_id: ID.into(),
        token: TOKEN.into(),
        controller: server.url(),
        broker: broker.url().parse().unwrap(),
        cache_dir: cache.clone(),
        output: OutputSpec::Wav { path: wav.clone() },
        amplifier: "none".into(),
        heartbeat: StdDuration::from_secs(1),
        prepare: StdDuration::from_millis(1500),
        cache_grace: StdDuration::from_secs(3600),
        volume: 1.0,
        emergency_volume: 1.0,
        controller_key: Some(common::controller_public_key()),
        controller_tls: Default::default(),
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let receiver = tokio::spawn(loa_receiver::run(config, async move {
        let _ = stopped.await;
    }));

    let mut statuses = Vec::new();
    controller
        .expect(
            ReceiverTopic::Status,
            StdDuration::from_secs(5),
            &mut statuses,
            |s: &ReceiverStatus| s.online && s.cached == vec!["bulletin".to_string()],
        )
        .await;

    // The broadcast: 1.5 s of syllables at 2 kHz, heard from 1.5 s into the programme.
    let speech = live_common::syllables(2000.0, 1.5, 0.6, 7);
    let packets = live_common::encode(&speech);
    let heard_at = start + Duration::milliseconds(1500);
    let delay_ms = 120;
    let broadcast = Arc::new(Broadcast {
        id: *b"\x6b\x1e\x0a\x52\x93\x0c\x4f\x11\xa1\x7d\x00\x11\x22\x33\x44\x55",
        priority: Priority::Priority,
        start_us: at_us(heard_at) + CONTROLLER_AHEAD_US - delay_ms * 1000,
        delay_ms: delay_ms as u16,
        packets,
    });
    let publisher = tokio::spawn(publish_broadcast(
        controller.client.clone(),
        zone_live_topic(ZONE),
        broadcast.clone(),
        common::controller_key(),
    ));
    // An attacker's emergency broadcast, starting earlier: if it were
    // accepted it would take the loudspeaker.
    let forged = Arc::new(Broadcast {
        id: [0xee; 16],
        priority: Priority::Emergency,
        start_us: broadcast.start_us - 200_000,
        delay_ms: broadcast.delay_ms,
        packets: broadcast.packets.clone(),
    });
    let forger = tokio::spawn(publish_broadcast(
        controller.client.clone(),
        zone_live_topic(ZONE),
        forged,
        loa_protocol::signed::SigningKey::from_bytes(&[66; 32]),
    ));

    let report: PlayReport = controller
        .expect(
            ReceiverTopic::Plays,
            StdDuration::from_secs(20),
            &mut statuses,
            |r: &PlayReport| r.event_id == event.id,
        )
        .await;
    publisher.await.unwrap();
    forger.await.unwrap();
    // A heartbeat after the forged frames reports them.
    controller
        .expect(
            ReceiverTopic::Status,
            StdDuration::from_secs(5),
            &mut statuses,
            |s: &ReceiverStatus| {
                s.rejected
                    .iter()
                    .any(|r| r.reason == "bad_frame_signature" && r.topic == zone_live_topic(ZONE))
            },
        )
        .await;
    let _ = stop.send(());
    tokio::time::timeout(StdDuration::from_secs(10), receiver)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    // The report: completed, with the broadcast as its one interruption.
    println!("{report:#?}");
    assert_eq!(report.outcome, PlayOutcome::Completed, "{report:?}");
    assert_eq!(report.interruptions.len(), 1, "{report:?}");
    let interruption = &report.interruptions[0];
    assert_eq!(interruption.broadcast_id, broadcast.uuid());
    // Reported on the controller's clock.
    let from_err = (interruption.from - (heard_at + ahead))
        .num_microseconds()
        .unwrap() as f64
        / 1000.0;
    let length = (interruption.to - interruption.from).num_milliseconds();
    println!("interruption from {from_err:+.2} ms after the playout instant, {length} ms long");
    assert!(from_err.abs() < 5.0, "interruption began {from_err} ms off");
    assert!(
        (1450..1600).contains(&length),
        "interruption of {length} ms"
    );
    let ended = (report.ended_at.unwrap() - report.started_at.unwrap()).num_milliseconds();
    assert!(
        (ended - 4000 - length).abs() < 60,
        "the play took {ended} ms: 4 s of programme plus the interruption"
    );

    // The status showed the broadcast while it played.
    assert!(
        statuses
            .iter()
            .any(|s| s.now_playing.as_ref().is_some_and(|n| {
                n.programme_id == format!("live:{}", broadcast.uuid())
                    && n.event_id == broadcast.uuid()
            })),
        "no status showed the live broadcast"
    );

    // The recording.
    let samples = common::read_wav(&wav);
    let a0 = common::onset(&samples, 0.05).expect("the programme was played");
    let expected = a0 + ((at_us(heard_at) - at_us(start)) as f64 * 0.048).round() as usize;
    // What it should sound like with the frames lost on the way concealed.
    let order = live_common::lossy_order(broadcast.packets.len() as u32);
    let reference =
        live_common::decode_as_received(&broadcast.packets, &live_common::in_time(&order));
    let (found, corr) =
        live_common::locate(&samples, &reference, expected - 4_800, expected + 4_800);
    let offset_ms = (found as f64 - expected as f64) / 48.0;
    let (_, lossless) = live_common::locate(
        &samples,
        &live_common::decode(&broadcast.packets),
        expected - 4_800,
        expected + 4_800,
    );
    println!(
        "broadcast heard {offset_ms:+.2} ms from its playout instant, envelope correlation {corr:.3} \
         ({lossless:.3} with the source before losses)"
    );
    assert!(corr > 0.95, "envelope correlation {corr}");
    assert!(
        offset_ms.abs() <= 2.0,
        "broadcast {offset_ms} ms off its playout instant"
    );

    // Programme, broadcast, programme again: by 10 ms windows' dominant tone.
    let windows = common::dominant(&samples[a0..], &[1000.0, 2000.0]);
    let programme_windows = windows.iter().filter(|w| **w == Some(1000.0)).count();
    let first_live = windows.iter().position(|w| *w == Some(2000.0)).unwrap();
    let last_live = windows.iter().rposition(|w| *w == Some(2000.0)).unwrap();
    println!("programme windows {programme_windows}, broadcast windows {first_live}..={last_live}");
    assert!(
        (148..=152).contains(&first_live),
        "broadcast began at window {first_live}"
    );
    assert!(
        windows[first_live..=last_live]
            .iter()
            .all(|w| *w != Some(1000.0)),
        "programme audio during the broadcast"
    );
    // The whole programme was heard once: 400 windows (skipping ahead to
    // keep its timeline would leave 250, restarting it 550; losing the
    // audio queued before the switch, 392). A window at each switch may
    // be ambiguous.
    assert!(
        (396..=403).contains(&programme_windows),
        "{programme_windows} windows of programme"
    );
    // It resumed at the level it stopped at (the level ramps up over time).
    // The interruption is reported on the controller's clock.
    let index_of =
        |t: DateTime<Utc>| a0 + ((at_us(t) - at_us(start + ahead)) as f64 * 0.048).round() as usize;
    let cut = index_of(interruption.from);
    let resumed_at = index_of(interruption.to);
    let before = live_common::rms(&samples[cut - 4_800..cut - 480]);
    let after = live_common::rms(&samples[resumed_at + 480..resumed_at + 4_800]);
    println!("programme level before {before:.4}, after {after:.4}");
    assert!(
        (after / before - 1.0).abs() < 0.08,
        "resumed at level {after}, stopped at {before}"
    );
    drop(broker);
}

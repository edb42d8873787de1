//! Lightweight in-process receivers for the live benchmark: each is an MQTT
//! client (rumqttc) that does what a real receiver does on the network —
//! subscribes to its zone's live topic, runs the NTP-style clock exchange
//! with the controller with the receiver's own code (a
//! [`loa_receiver::clock::Clock`] stamping on the receiver's clock
//! [`local_now_us`], requests on a [`SyncSchedule`]), and computes every
//! frame's playout instant as the receiver's player does
//! (`capture_us + playout_delay_ms − clock.offset_us()`, on its own clock) —
//! and notes when each frame arrived. It decodes no audio and plays nothing,
//! so a thousand of them fit on one machine next to the real controller and
//! its embedded broker.
//!
//! Honest timing: the controller's clock is this machine's system clock, so
//! every instant a member computes on its own clock is converted back to the
//! system clock ([`now_us`] − [`local_now_us`], read together) before it is
//! recorded; the spread between members is then a spread of true instants.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};
use loa_protocol::live::{
    ClockReply, FrameKind, LiveFrame, clock_reply_topic, clock_request_topic, zone_live_topic,
};
use loa_receiver::clock::{Clock, SyncSchedule, local_now_us};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::task::JoinHandle;

/// Members connected at once by [`Fleet::start`].
pub const BATCH: usize = 50;
/// Pause between two batches.
pub const BATCH_GAP: Duration = Duration::from_millis(250);

/// What one member saw of one frame.
#[derive(Debug, Clone, Copy)]
pub struct FrameSeen {
    /// Sequence number.
    pub seq: u32,
    /// Capture instant, controller clock (Unix µs).
    pub capture_us: i64,
    /// When it arrived, true time (system clock, Unix µs).
    pub arrival_us: i64,
    /// When the member would play it, true time (system clock, Unix µs):
    /// `capture_us + playout_delay − estimated offset` on its own clock,
    /// converted to the system clock; `None` if it had no clock estimate yet.
    pub playout_us: Option<i64>,
    /// The error of the member's estimate of (controller − own clock) then,
    /// µs: estimate minus truth (the controller's clock is the system clock).
    pub offset_us: Option<i64>,
}

/// One clock exchange.
#[derive(Debug, Clone, Copy)]
pub struct ClockSample {
    /// When the reply arrived (`t4`), member's clock (Unix µs).
    pub local_us: i64,
    /// The error of this exchange's offset (controller minus member clock
    /// as the exchange says, minus the true offset), µs.
    pub offset_us: i64,
    /// Round trip minus the controller's turnaround, µs.
    pub rtt_us: i64,
}

/// What a member recorded.
#[derive(Debug, Default, Clone)]
pub struct MemberLog {
    /// Audio frames in arrival order.
    pub frames: Vec<FrameSeen>,
    /// Every clock exchange.
    pub clock: Vec<ClockSample>,
    /// `End` frames received.
    pub ends: usize,
    /// Whether the subscription was acknowledged.
    pub subscribed: bool,
}

/// A running fleet; [`Fleet::stop`] disconnects and hands back the logs.
pub struct Fleet {
    /// The true offset ([`true_offset_us`]) the members were measured against.
    pub truth_us: i64,
    logs: Vec<Arc<Mutex<MemberLog>>>,
    clients: Vec<AsyncClient>,
    tasks: Vec<JoinHandle<()>>,
}

/// Microseconds since the Unix epoch by the system clock.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// System clock minus the receivers' clock ([`local_now_us`]), µs: the true
/// offset the members estimate (the controller uses the system clock). Both
/// clocks are slewed alike (CLOCK_REALTIME and CLOCK_MONOTONIC), so this is
/// a constant unless the system clock is stepped; it is read once, as the
/// tightest of several brackets (local, system, local) — a thread preempted
/// between two reads would otherwise put milliseconds of error into it.
pub fn true_offset_us() -> i64 {
    let mut best = (i64::MAX, 0);
    for _ in 0..50 {
        let before = local_now_us();
        let system = now_us();
        let after = local_now_us();
        if after - before < best.0 {
            best = (after - before, system - (before + after) / 2);
        }
    }
    best.1
}

impl Fleet {
    /// Connects `members.len()` members (receiver id and token, as the
    /// controller issued them: its broker lets nobody else in) to the
    /// broker at `host:port`, all in `zone`, [`BATCH`] at a time every
    /// [`BATCH_GAP`] (boards do not all boot in the same millisecond; a
    /// connection storm would also skew every member's first clock samples).
    pub async fn start(
        host: &str,
        port: u16,
        zone: &str,
        members: &[(String, String)],
    ) -> Result<Self> {
        let truth = true_offset_us();
        let mut fleet = Fleet {
            truth_us: truth,
            logs: Vec::new(),
            clients: Vec::new(),
            tasks: Vec::new(),
        };
        for (k, (id, token)) in members.iter().enumerate() {
            if k > 0 && k % BATCH == 0 {
                tokio::time::sleep(BATCH_GAP).await;
            }
            let mut options = MqttOptions::new(id, host, port);
            options
                .set_keep_alive(Duration::from_secs(30))
                .set_clean_session(true)
                .set_credentials(id, token);
            let (client, mut eventloop) = AsyncClient::new(options, 64);
            let log = Arc::new(Mutex::new(MemberLog::default()));
            let live_topic = zone_live_topic(zone);
            let reply_topic = clock_reply_topic(id);
            let request_topic = clock_request_topic(id);
            let task_log = log.clone();
            let task_client = client.clone();
            // Clock requests from their own task, on the receiver's
            // schedule (same jitter, same burst), so the event loop is only
            // ever polled to completion (never cancelled mid-packet).
            let clock = Clock::new();
            let ticker_clock = clock.clone();
            let mut schedule = SyncSchedule::random(id);
            let connected = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let ticker_connected = connected.clone();
            let ticker = tokio::spawn(async move {
                // As run_sync: nothing before the link is up, then a burst
                // after a random delay.
                while !ticker_connected.load(std::sync::atomic::Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                tokio::time::sleep(schedule.on_connect()).await;
                loop {
                    let req = ticker_clock.request();
                    if let Ok(body) = serde_json::to_vec(&req) {
                        let _ =
                            task_client.try_publish(&request_topic, QoS::AtMostOnce, false, body);
                    }
                    tokio::time::sleep(schedule.after_request(ticker_clock.is_settled())).await;
                }
            });
            let sub_client = client.clone();
            let task = tokio::spawn(async move {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            let _ = sub_client.try_subscribe(&live_topic, QoS::AtMostOnce);
                            let _ = sub_client.try_subscribe(&reply_topic, QoS::AtMostOnce);
                            connected.store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            if let Ok(mut l) = task_log.lock() {
                                l.subscribed = true;
                            }
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            // As the receiver's link does: stamp on arrival.
                            let arrived = local_now_us();
                            if p.topic == live_topic {
                                let Ok(frame) = LiveFrame::decode(&p.payload) else {
                                    continue;
                                };
                                // As the receiver's player does (live_offset).
                                let offset = clock.offset_us();
                                let mut l = task_log.lock().unwrap_or_else(|e| e.into_inner());
                                match frame.kind {
                                    FrameKind::End => l.ends += 1,
                                    FrameKind::Audio => l.frames.push(FrameSeen {
                                        seq: frame.seq,
                                        capture_us: frame.capture_us,
                                        arrival_us: arrived + truth,
                                        playout_us: offset.map(|o| frame.playout_us() - o + truth),
                                        offset_us: offset.map(|o| o - truth),
                                    }),
                                }
                            } else if p.topic == reply_topic {
                                let Ok(reply) = serde_json::from_slice::<ClockReply>(&p.payload)
                                else {
                                    continue;
                                };
                                let Ok(sample) = clock.on_reply(&reply, arrived) else {
                                    continue;
                                };
                                if let Ok(mut l) = task_log.lock() {
                                    l.clock.push(ClockSample {
                                        local_us: sample.local_us,
                                        offset_us: sample.offset_us - truth,
                                        rtt_us: sample.rtt_us,
                                    });
                                }
                            }
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
            });
            fleet.tasks.push(ticker);
            fleet.logs.push(log);
            fleet.clients.push(client);
            fleet.tasks.push(task);
        }
        Ok(fleet)
    }

    /// Waits until every member is subscribed and has at least `samples`
    /// clock samples.
    pub async fn wait_ready(&self, samples: usize, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (subscribed, synced) = self.logs.iter().fold((0, 0), |(s, c), l| {
                let l = l.lock().unwrap_or_else(|e| e.into_inner());
                (
                    s + usize::from(l.subscribed),
                    c + usize::from(l.clock.len() >= samples),
                )
            });
            if subscribed == self.logs.len() && synced == self.logs.len() {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "fleet not ready after {timeout:?}: {subscribed}/{n} subscribed, \
                     {synced}/{n} with {samples} clock samples (does the controller answer clock requests?)",
                    n = self.logs.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Total `End` frames seen so far across members.
    pub fn ends(&self) -> usize {
        self.logs
            .iter()
            .map(|l| l.lock().unwrap_or_else(|e| e.into_inner()).ends)
            .sum()
    }

    /// Disconnects every member and returns what each recorded.
    pub async fn stop(self) -> Vec<MemberLog> {
        for client in &self.clients {
            let _ = client.try_disconnect();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
        self.logs
            .into_iter()
            .map(|l| l.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }
}

/// Figures for one fleet run.
#[derive(Debug, Clone)]
pub struct FleetFigures {
    /// Members.
    pub receivers: usize,
    /// Frames the controller sent (seq range seen by any member).
    pub frames_sent: u64,
    /// Frames a member should have received, summed (`frames_sent × receivers`).
    pub expected: u64,
    /// Frames never received.
    pub lost: u64,
    /// Frames received after their playout instant (a receiver would conceal them).
    pub late: u64,
    /// Frames received before the member had a clock estimate.
    pub unsynced: u64,
    /// Arrival minus capture (controller clock), ms: p50, p99, max.
    pub transport_ms: [f64; 3],
    /// Capture → playout (true clock), ms: p50, p99, max.
    pub playout_ms: [f64; 3],
    /// Per frame, max − min of the members' playout instants, ms: p50, p99, max.
    pub spread_ms: [f64; 3],
    /// Clock-exchange round trips, ms: p50, p99.
    pub rtt_ms: [f64; 2],
    /// Frames per burst (frames arriving within 5 ms of the previous one
    /// belong to its burst), p50 and max: a paced source sends bursts of 1.
    pub burst: [f64; 2],
    /// |clock offset estimate error| over members and frames, ms: p50, p99, max.
    pub clock_error_ms: [f64; 3],
}

/// Computes the figures. All members share the machine's clock with the
/// controller, so a member's playout instant is also a true instant and
/// `playout − capture` is the latency a listener would hear.
pub fn figures(logs: &[MemberLog]) -> FleetFigures {
    let seqs = logs.iter().flat_map(|l| l.frames.iter().map(|f| f.seq));
    let (first, last) = seqs.fold((u32::MAX, 0), |(a, b), s| (a.min(s), b.max(s)));
    let frames_sent = if first > last {
        0
    } else {
        u64::from(last - first) + 1
    };
    let mut transport = Vec::new();
    let mut playout = Vec::new();
    let mut per_seq: BTreeMap<u32, (i64, i64)> = BTreeMap::new();
    let (mut received, mut late, mut unsynced) = (0u64, 0u64, 0u64);
    for log in logs {
        let mut seen = std::collections::BTreeSet::new();
        for f in &log.frames {
            if !seen.insert(f.seq) {
                continue;
            }
            received += 1;
            transport.push((f.arrival_us - f.capture_us) as f64 / 1000.0);
            let Some(play) = f.playout_us else {
                unsynced += 1;
                continue;
            };
            if f.arrival_us > play {
                late += 1;
            }
            playout.push((play.max(f.arrival_us) - f.capture_us) as f64 / 1000.0);
            let e = per_seq.entry(f.seq).or_insert((play, play));
            e.0 = e.0.min(play);
            e.1 = e.1.max(play);
        }
    }
    let spread: Vec<f64> = per_seq
        .values()
        .map(|(lo, hi)| (hi - lo) as f64 / 1000.0)
        .collect();
    let rtt: Vec<f64> = logs
        .iter()
        .flat_map(|l| l.clock.iter().map(|c| c.rtt_us as f64 / 1000.0))
        .collect();
    let clock_error: Vec<f64> = logs
        .iter()
        .flat_map(|l| l.frames.iter().filter_map(|f| f.offset_us))
        .map(|o| o.abs() as f64 / 1000.0)
        .collect();
    let mut bursts = Vec::new();
    for log in logs {
        let mut size = 0usize;
        let mut last: Option<i64> = None;
        for f in &log.frames {
            match last {
                Some(t) if f.arrival_us - t < 5_000 => size += 1,
                _ => {
                    if size > 0 {
                        bursts.push(size as f64);
                    }
                    size = 1;
                }
            }
            last = Some(f.arrival_us);
        }
        if size > 0 {
            bursts.push(size as f64);
        }
    }
    let q3 = |v: &[f64]| {
        [
            crate::live::quantile(v, 0.5),
            crate::live::quantile(v, 0.99),
            crate::live::quantile(v, 1.0),
        ]
    };
    let expected = frames_sent * logs.len() as u64;
    FleetFigures {
        receivers: logs.len(),
        frames_sent,
        expected,
        lost: expected.saturating_sub(received),
        late,
        unsynced,
        transport_ms: q3(&transport),
        playout_ms: q3(&playout),
        spread_ms: q3(&spread),
        rtt_ms: [
            crate::live::quantile(&rtt, 0.5),
            crate::live::quantile(&rtt, 0.99),
        ],
        burst: [
            crate::live::quantile(&bursts, 0.5),
            crate::live::quantile(&bursts, 1.0),
        ],
        clock_error_ms: q3(&clock_error),
    }
}

impl FleetFigures {
    /// One line about a single observer on the wire.
    pub fn wire_summary(&self) -> String {
        format!(
            "on the wire (observer): {} frames, {} missing, {} after their playout instant; \
             arrival − capture p50 {:.1} ms p99 {:.1} ms max {:.1} ms; \
             frames per burst p50 {} max {}",
            self.frames_sent,
            self.lost,
            self.late,
            self.transport_ms[0],
            self.transport_ms[1],
            self.transport_ms[2],
            self.burst[0],
            self.burst[1]
        )
    }

    /// One line for the report.
    pub fn summary(&self) -> String {
        format!(
            "{:>5} receivers: frames sent {}, lost {} of {} ({:.3} %), late {}, before clock sync {}; \
             capture→playout p50 {:.1} ms p99 {:.1} ms max {:.1} ms; \
             transport (arrival−capture) p50 {:.1} ms p99 {:.1} ms max {:.1} ms; \
             sync spread p50 {:.3} ms p99 {:.3} ms max {:.3} ms; clock RTT p50 {:.2} ms p99 {:.2} ms; \
             clock estimate error p50 {:.3} ms p99 {:.3} ms max {:.3} ms",
            self.receivers,
            self.frames_sent,
            self.lost,
            self.expected,
            if self.expected > 0 {
                self.lost as f64 * 100.0 / self.expected as f64
            } else {
                0.0
            },
            self.late,
            self.unsynced,
            self.playout_ms[0],
            self.playout_ms[1],
            self.playout_ms[2],
            self.transport_ms[0],
            self.transport_ms[1],
            self.transport_ms[2],
            self.spread_ms[0],
            self.spread_ms[1],
            self.spread_ms[2],
            self.rtt_ms[0],
            self.rtt_ms[1],
            self.clock_error_ms[0],
            self.clock_error_ms[1],
            self.clock_error_ms[2],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u32, capture_us: i64, arrival_us: i64, playout_us: i64) -> FrameSeen {
        FrameSeen {
            seq,
            capture_us,
            arrival_us,
            playout_us: Some(playout_us),
            offset_us: Some(capture_us + 120_000 - playout_us),
        }
    }

    #[test]
    fn figures_count_loss_lateness_and_spread() {
        let a = MemberLog {
            frames: vec![
                frame(0, 0, 5_000, 120_000),
                frame(1, 20_000, 25_000, 140_000),
                frame(2, 40_000, 45_000, 160_000),
            ],
            ..Default::default()
        };
        let b = MemberLog {
            frames: vec![
                frame(0, 0, 6_000, 120_500),
                // seq 1 lost
                frame(2, 40_000, 170_000, 160_500), // late
            ],
            ..Default::default()
        };
        let f = figures(&[a, b]);
        assert_eq!((f.frames_sent, f.expected, f.lost, f.late), (3, 6, 1, 1));
        assert_eq!(f.spread_ms[2], 0.5);
        assert_eq!(f.playout_ms[2], 130.0);
        assert_eq!(f.clock_error_ms[2], 0.5);
    }
}

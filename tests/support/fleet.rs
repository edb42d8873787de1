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
//!
//! For the fault suite a member can also behave like a receiver towards the
//! schedule distribution ([`FleetOptions`]): subscribe to its own schedule
//! topic, check every envelope's signature with the controller's key
//! ([`loa_protocol::signed::Verifier`]) and record each schedule version it
//! gets, and publish a status (online, the version it holds) on connection
//! and every heartbeat, with the offline status as its last will. A member
//! subscribes and publishes only where the broker's topic ACL lets a
//! receiver: its own schedule and clock-reply topics and its zone's live
//! topic; its own status and clock-request topics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use chrono::Utc;
use loa_protocol::live::{
    ClockReply, FrameKind, LiveFrame, clock_reply_topic, clock_request_topic, zone_live_topic,
};
use loa_protocol::signed::{Freshness, Verifier, VerifyError, VerifyingKey};
use loa_protocol::topics::ReceiverTopic;
use loa_protocol::{ReceiverSchedule, ReceiverStatus};
use loa_receiver::clock::{Clock, SyncSchedule, local_now_us};
use rumqttc::{
    AsyncClient, Event, LastWill, MqttOptions, Packet, QoS, SubscribeFilter, SubscribeReasonCode,
};
use tokio::task::JoinHandle;

use crate::api::Api;

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

/// One schedule a member received on its own topic, signature checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduleSeen {
    /// [`ReceiverSchedule::version`].
    pub version: u64,
    /// The envelope's sequence number (a republication of the same
    /// version comes in a new envelope).
    pub seq: u64,
    /// Play events in it.
    pub events: usize,
    /// When it arrived, system clock (Unix µs).
    pub arrival_us: i64,
}

/// What a member recorded.
#[derive(Debug, Default, Clone)]
pub struct MemberLog {
    /// The receiver id it logged in as.
    pub id: String,
    /// Audio frames in arrival order.
    pub frames: Vec<FrameSeen>,
    /// Every clock exchange.
    pub clock: Vec<ClockSample>,
    /// `End` frames received.
    pub ends: usize,
    /// Whether the subscription was acknowledged.
    pub subscribed: bool,
    /// Schedules received and accepted, in arrival order
    /// ([`FleetOptions::schedule_key`]).
    pub schedules: Vec<ScheduleSeen>,
    /// Messages on its schedule topic it refused, with the reason
    /// ([`VerifyError::code`], `not_a_schedule`, `another_receiver`).
    pub refused: Vec<String>,
    /// `CONNACK`s received: 1 unless the connection dropped and came back.
    pub connects: usize,
    /// When the first `CONNACK` arrived, system clock (Unix µs).
    pub connected_us: Option<i64>,
    /// When the first `SUBACK` arrived, system clock (Unix µs).
    pub subscribed_us: Option<i64>,
    /// Subscriptions the broker refused (failure codes in a `SUBACK`).
    pub refused_subscriptions: usize,
    /// Connection errors (refused, dropped, timed out).
    pub errors: usize,
    /// The first few of them, as rumqttc put them.
    pub error_texts: Vec<String>,
    /// When the last one happened, system clock (Unix µs).
    pub last_error_us: Option<i64>,
    /// Connected, and its subscription acknowledged, now.
    pub up: bool,
}

impl MemberLog {
    /// The newest schedule version it holds.
    pub fn version(&self) -> Option<u64> {
        self.schedules.iter().map(|s| s.version).max()
    }

    /// When `version` first arrived (system clock, Unix µs).
    pub fn arrival_of(&self, version: u64) -> Option<i64> {
        self.schedules
            .iter()
            .find(|s| s.version == version)
            .map(|s| s.arrival_us)
    }
}

/// Connection errors a member keeps the text of.
const KEPT_ERRORS: usize = 4;
/// First pause before connecting again after an error; doubles up to
/// [`MAX_BACKOFF`] (the receiver's link does the same).
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest pause before connecting again.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A receiver as the fleet logs it in: the id and token the controller
/// issued (its broker lets nobody else in) and the zone it is registered in.
#[derive(Debug, Clone)]
pub struct Member {
    /// Receiver id (client id and username).
    pub id: String,
    /// Its token (password).
    pub token: String,
    /// Its zone: the live topic it follows.
    pub zone: String,
}

/// What members do besides following their zone's live frames.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Members connected at once.
    pub batch: usize,
    /// Pause between two batches.
    pub batch_gap: Duration,
    /// Subscribe (QoS 1, as the receiver does) to the member's own schedule
    /// topic and record every schedule whose envelope this key signed.
    pub schedule_key: Option<VerifyingKey>,
    /// Publish a status (retained, QoS 1) on every connection and then this
    /// often, saying online and the schedule version held; the offline
    /// status is the last will.
    pub heartbeat: Option<Duration>,
}

impl Default for FleetOptions {
    /// [`BATCH`] members every [`BATCH_GAP`], live frames and clock only.
    fn default() -> Self {
        FleetOptions {
            batch: BATCH,
            batch_gap: BATCH_GAP,
            schedule_key: None,
            heartbeat: None,
        }
    }
}

/// Registers `receivers` (id, zone) through `POST /api/v1/receivers`,
/// `parallel` requests at a time; returns them with their tokens, in order.
pub async fn register(
    api: &Api,
    receivers: &[(String, String)],
    parallel: usize,
) -> Result<Vec<Member>> {
    let mut tokens: Vec<Option<String>> = vec![None; receivers.len()];
    let mut running = tokio::task::JoinSet::new();
    for (k, (id, zone)) in receivers.iter().enumerate() {
        if running.len() >= parallel.max(1)
            && let Some(done) = running.join_next().await
        {
            let (i, token) = done?;
            tokens[i] = Some(token?);
        }
        let (api, id, zone) = (api.clone(), id.clone(), zone.clone());
        running.spawn(async move { (k, api.create_receiver(&id, &id, &zone).await) });
    }
    while let Some(done) = running.join_next().await {
        let (i, token) = done?;
        tokens[i] = Some(token?);
    }
    receivers
        .iter()
        .zip(tokens)
        .map(|((id, zone), token)| {
            Ok(Member {
                id: id.clone(),
                token: token.with_context(|| format!("no token for {id}"))?,
                zone: zone.clone(),
            })
        })
        .collect()
}

/// A running fleet; [`Fleet::stop`] disconnects and hands back the logs.
pub struct Fleet {
    /// The true offset ([`true_offset_us`]) the members were measured against.
    pub truth_us: i64,
    logs: Vec<Arc<Mutex<MemberLog>>>,
    clients: Vec<AsyncClient>,
    tasks: Vec<JoinHandle<()>>,
    /// Set by [`Fleet::stop`]: members no longer reconnect or record errors.
    stopping: Arc<AtomicBool>,
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

/// Checks a message from a member's schedule topic as the receiver does
/// (signature, topic, sequence; any age) and decodes the schedule: `None`
/// for the very envelope already accepted (a redelivery), the reason code
/// if it is refused.
fn open_schedule(
    verifier: &mut Verifier,
    id: &str,
    topic: &str,
    bytes: &[u8],
) -> std::result::Result<Option<ScheduleSeen>, String> {
    let opened = match verifier.verify(topic, bytes, Utc::now(), Freshness::AnyAge) {
        Ok(opened) => opened,
        Err(VerifyError::Duplicate { .. }) => return Ok(None),
        Err(e) => return Err(e.code().to_string()),
    };
    let schedule: ReceiverSchedule = loa_protocol::decode(opened.payload.as_bytes())
        .map_err(|_| "not_a_schedule".to_string())?;
    if schedule.receiver_id != id {
        return Err("another_receiver".to_string());
    }
    Ok(Some(ScheduleSeen {
        version: schedule.version,
        seq: opened.seq,
        events: schedule.events.len(),
        arrival_us: 0,
    }))
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
        let members: Vec<Member> = members
            .iter()
            .map(|(id, token)| Member {
                id: id.clone(),
                token: token.clone(),
                zone: zone.to_string(),
            })
            .collect();
        Self::start_with(host, port, &members, &FleetOptions::default()).await
    }

    /// Connects `members`, each following its own zone, as `options` say.
    pub async fn start_with(
        host: &str,
        port: u16,
        members: &[Member],
        options: &FleetOptions,
    ) -> Result<Self> {
        let truth = true_offset_us();
        let mut fleet = Fleet {
            truth_us: truth,
            logs: Vec::new(),
            clients: Vec::new(),
            tasks: Vec::new(),
            stopping: Arc::new(AtomicBool::new(false)),
        };
        for (k, member) in members.iter().enumerate() {
            if k > 0 && k % options.batch.max(1) == 0 {
                tokio::time::sleep(options.batch_gap).await;
            }
            fleet.connect(host, port, member, options, truth);
        }
        Ok(fleet)
    }

    /// Starts one member's client and tasks.
    fn connect(
        &mut self,
        host: &str,
        port: u16,
        member: &Member,
        options: &FleetOptions,
        truth: i64,
    ) {
        let id = member.id.as_str();
        let status_topic = ReceiverTopic::Status.for_receiver(id);
        let mut mqtt = MqttOptions::new(id, host, port);
        mqtt.set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true)
            .set_credentials(id, &member.token)
            // Schedules are larger than rumqttc's 10 kB default.
            .set_max_packet_size(
                loa_protocol::MAX_PAYLOAD_BYTES + 64 * 1024,
                loa_protocol::MAX_PAYLOAD_BYTES + 64 * 1024,
            );
        if options.heartbeat.is_some() {
            mqtt.set_last_will(LastWill::new(
                &status_topic,
                loa_protocol::encode(&ReceiverStatus::offline(id)),
                QoS::AtLeastOnce,
                true,
            ));
        }
        let (client, mut eventloop) = AsyncClient::new(mqtt, 64);
        let log = Arc::new(Mutex::new(MemberLog {
            id: id.to_string(),
            ..MemberLog::default()
        }));
        let live_topic = zone_live_topic(&member.zone);
        let reply_topic = clock_reply_topic(id);
        let request_topic = clock_request_topic(id);
        let schedule_topic = ReceiverTopic::Schedule.for_receiver(id);
        // Only the topics a receiver may read (the broker's ACL).
        let mut filters = vec![
            SubscribeFilter::new(live_topic.clone(), QoS::AtMostOnce),
            SubscribeFilter::new(reply_topic.clone(), QoS::AtMostOnce),
        ];
        if options.schedule_key.is_some() {
            filters.push(SubscribeFilter::new(
                schedule_topic.clone(),
                QoS::AtLeastOnce,
            ));
        }
        let mut verifier = options
            .schedule_key
            .map(|key| Verifier::new(key, BTreeMap::new()));
        // The schedule version held (0: none yet), for the status.
        let held = Arc::new(AtomicU64::new(0));
        let task_log = log.clone();
        let task_client = client.clone();
        // Clock requests from their own task, on the receiver's schedule
        // (same jitter, same burst), so the event loop is only ever polled
        // to completion (never cancelled mid-packet).
        let clock = Clock::new();
        let ticker_clock = clock.clone();
        let mut schedule = SyncSchedule::random(id);
        let connected = Arc::new(AtomicBool::new(false));
        let ticker_connected = connected.clone();
        let ticker = tokio::spawn(async move {
            // As run_sync: nothing before the link is up, then a burst
            // after a random delay.
            while !ticker_connected.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tokio::time::sleep(schedule.on_connect()).await;
            loop {
                let req = ticker_clock.request();
                if let Ok(body) = serde_json::to_vec(&req) {
                    let _ = task_client.try_publish(&request_topic, QoS::AtMostOnce, false, body);
                }
                tokio::time::sleep(schedule.after_request(ticker_clock.is_settled())).await;
            }
        });
        self.tasks.push(ticker);
        // Statuses: at every connection (from the event loop) and every
        // heartbeat, as the receiver's daemon does.
        let status = {
            let (id, topic, held) = (id.to_string(), status_topic, held.clone());
            move |client: &AsyncClient, every: Duration| {
                let version = held.load(Ordering::Relaxed);
                let status = ReceiverStatus {
                    online: true,
                    sent_at: Utc::now(),
                    schedule_version: (version > 0).then_some(version),
                    heartbeat_secs: Some(every.as_secs().max(1)),
                    ..ReceiverStatus::offline(&id)
                };
                let _ = client.try_publish(
                    &topic,
                    QoS::AtLeastOnce,
                    true,
                    loa_protocol::encode(&status),
                );
            }
        };
        if let Some(every) = options.heartbeat {
            let (client, status, connected) = (client.clone(), status.clone(), connected.clone());
            self.tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    if connected.load(Ordering::Relaxed) {
                        status(&client, every);
                    }
                }
            }));
        }
        let heartbeat = options.heartbeat;
        let stopping = self.stopping.clone();
        let sub_client = client.clone();
        let member_id = id.to_string();
        let task = tokio::spawn(async move {
            let mut backoff = FIRST_BACKOFF;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        backoff = FIRST_BACKOFF;
                        let _ = sub_client.try_subscribe_many(filters.clone());
                        if let Some(every) = heartbeat {
                            status(&sub_client, every);
                        }
                        connected.store(true, Ordering::Relaxed);
                        let mut l = task_log.lock().unwrap_or_else(|e| e.into_inner());
                        l.connects += 1;
                        l.connected_us.get_or_insert_with(now_us);
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        let mut l = task_log.lock().unwrap_or_else(|e| e.into_inner());
                        l.subscribed = true;
                        l.up = true;
                        l.subscribed_us.get_or_insert_with(now_us);
                        l.refused_subscriptions += ack
                            .return_codes
                            .iter()
                            .filter(|c| matches!(c, SubscribeReasonCode::Failure))
                            .count();
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
                            let Ok(reply) = serde_json::from_slice::<ClockReply>(&p.payload) else {
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
                        } else if p.topic == schedule_topic
                            && let Some(verifier) = verifier.as_mut()
                        {
                            let outcome = open_schedule(verifier, &member_id, &p.topic, &p.payload);
                            let mut l = task_log.lock().unwrap_or_else(|e| e.into_inner());
                            match outcome {
                                Ok(Some(mut seen)) => {
                                    seen.arrival_us = arrived + truth;
                                    held.fetch_max(seen.version, Ordering::Relaxed);
                                    l.schedules.push(seen);
                                }
                                Ok(None) => {}
                                Err(reason) => l.refused.push(reason),
                            }
                        }
                    }
                    Ok(_) => {}
                    // The disconnection asked for by `stop`.
                    Err(_) if stopping.load(Ordering::Relaxed) => break,
                    Err(e) => {
                        connected.store(false, Ordering::Relaxed);
                        {
                            let mut l = task_log.lock().unwrap_or_else(|e| e.into_inner());
                            l.errors += 1;
                            l.up = false;
                            l.last_error_us = Some(now_us());
                            if l.error_texts.len() < KEPT_ERRORS {
                                l.error_texts.push(e.to_string());
                            }
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
        });
        self.logs.push(log);
        self.clients.push(client);
        self.tasks.push(task);
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
                     {synced}/{n} with {samples} clock samples (does the controller answer clock requests?); {}",
                    self.connection_errors(),
                    n = self.logs.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until every member is connected and subscribed and none has
    /// had a connection error for `quiet` (the aftermath of a connection
    /// storm: retries, and a broker dropping a previous connection under
    /// the same client id).
    pub async fn wait_settled(&self, quiet: Duration, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let since = now_us() - quiet.as_micros() as i64;
            let unsettled = self
                .map(|l| !l.up || l.last_error_us.is_some_and(|t| t > since))
                .into_iter()
                .filter(|u| *u)
                .count();
            if unsettled == 0 {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "fleet not settled after {timeout:?}: {unsettled} of {} members down or with a \
                     connection error in the last {quiet:?}; {}",
                    self.logs.len(),
                    self.connection_errors()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `f` of every member's log so far, in member order.
    pub fn map<T>(&self, f: impl Fn(&MemberLog) -> T) -> Vec<T> {
        self.logs
            .iter()
            .map(|l| f(&l.lock().unwrap_or_else(|e| e.into_inner())))
            .collect()
    }

    /// Connection errors so far, in one line: how many members had any,
    /// and the first texts.
    pub fn connection_errors(&self) -> String {
        connection_errors(&self.map(|l| (l.errors, l.error_texts.clone())))
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
        self.stopping.store(true, Ordering::Relaxed);
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

/// One line about members' connection errors: (count, first texts) per member.
fn connection_errors(members: &[(usize, Vec<String>)]) -> String {
    let with = members.iter().filter(|(n, _)| *n > 0).count();
    if with == 0 {
        return "no connection errors".to_string();
    }
    let total: usize = members.iter().map(|(n, _)| n).sum();
    let mut texts: BTreeMap<&str, usize> = BTreeMap::new();
    for t in members.iter().flat_map(|(_, t)| t) {
        *texts.entry(t.as_str()).or_default() += 1;
    }
    let texts: Vec<String> = texts
        .into_iter()
        .take(5)
        .map(|(t, n)| format!("{n}× {t:?}"))
        .collect();
    format!(
        "{total} connection errors at {with} members ({})",
        texts.join(", ")
    )
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

/// Every schedule the controller published, per receiver, as (version,
/// when, system clock Unix µs), in the order published.
pub type Published = BTreeMap<String, Vec<(u64, i64)>>;

/// How the schedule distribution reached a fleet.
#[derive(Debug, Clone, Default)]
pub struct ScheduleFigures {
    /// Members.
    pub receivers: usize,
    /// Members holding the latest version the controller published to them.
    pub latest: usize,
    /// Members that do not (the loss figure): their ids.
    pub behind: Vec<String>,
    /// Versions published, distinct per receiver, summed over receivers.
    pub published: u64,
    /// Of those, received by their member (an intermediate version a
    /// member missed is made good by the next: the topic is retained, and
    /// a receiver follows only the newest).
    pub delivered: u64,
    /// Messages members refused on their schedule topic.
    pub refused: u64,
    /// Latest version: its arrival minus its first publication, ms: p50,
    /// p99, max over the members that hold it.
    pub delay_ms: [f64; 3],
    /// When the last member got its latest version (system clock, Unix µs).
    pub last_arrival_us: Option<i64>,
}

/// Compares what each member received with what the controller published.
pub fn schedule_figures(logs: &[MemberLog], published: &Published) -> ScheduleFigures {
    let mut f = ScheduleFigures {
        receivers: logs.len(),
        ..ScheduleFigures::default()
    };
    let mut delays = Vec::new();
    for log in logs {
        f.refused += log.refused.len() as u64;
        let sent = published
            .get(&log.id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let distinct: std::collections::BTreeSet<u64> = sent.iter().map(|(v, _)| *v).collect();
        let received: std::collections::BTreeSet<u64> =
            log.schedules.iter().map(|s| s.version).collect();
        f.published += distinct.len() as u64;
        f.delivered += distinct.intersection(&received).count() as u64;
        let latest = distinct.last().copied();
        let arrival = latest.and_then(|v| log.arrival_of(v));
        match (latest, arrival) {
            (Some(v), Some(at)) if log.version() == Some(v) => {
                f.latest += 1;
                if let Some((_, sent_at)) = sent.iter().find(|(s, _)| *s == v) {
                    delays.push((at - sent_at) as f64 / 1000.0);
                }
                f.last_arrival_us = Some(f.last_arrival_us.map_or(at, |t| t.max(at)));
            }
            _ => f.behind.push(log.id.clone()),
        }
    }
    f.delay_ms = [
        crate::live::quantile(&delays, 0.5),
        crate::live::quantile(&delays, 0.99),
        crate::live::quantile(&delays, 1.0),
    ];
    f
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

    fn seen(version: u64, arrival_us: i64) -> ScheduleSeen {
        ScheduleSeen {
            version,
            seq: version,
            events: 0,
            arrival_us,
        }
    }

    #[test]
    fn schedule_figures_count_who_holds_the_latest_version() {
        let log = |id: &str, schedules: Vec<ScheduleSeen>| MemberLog {
            id: id.to_string(),
            schedules,
            ..Default::default()
        };
        let logs = [
            // Got every version; the latest 30 ms after it was published.
            log("a", vec![seen(1, 1_000), seen(2, 2_000), seen(3, 33_000)]),
            // Missed version 2; has the latest.
            log("b", vec![seen(1, 1_000), seen(3, 13_000)]),
            // Stuck at version 2.
            log("c", vec![seen(1, 1_000), seen(2, 2_000)]),
        ];
        let mut published = Published::new();
        for id in ["a", "b", "c"] {
            // Version 3 republished (same version) after its first publication.
            published.insert(
                id.to_string(),
                vec![(1, 0), (2, 1_000), (3, 3_000), (3, 20_000)],
            );
        }
        let f = schedule_figures(&logs, &published);
        assert_eq!((f.latest, f.behind.clone()), (2, vec!["c".to_string()]));
        assert_eq!((f.published, f.delivered), (9, 7));
        assert_eq!(f.delay_ms[2], 30.0);
        assert_eq!(f.last_arrival_us, Some(33_000));
    }
}

//! The MQTT link to the controller (rumqttc), wrapped like mini-redis wraps
//! its connection: a clonable [`Link`] handle to publish with, and one task
//! that polls the event loop and hands typed protocol messages
//! ([`Inbound`]) to the receiver's main loop.
//!
//! - Client id = receiver id; username = receiver id, password = token (a
//!   broker that allows anonymous clients ignores them).
//! - Last will: [`ReceiverStatus::offline`], retained, on the status topic.
//! - On every (re)connection it subscribes to the receiver's schedule, settings,
//!   commands and acks topics and reports [`Inbound::Connected`], on which the main loop
//!   publishes its status and re-sends unacknowledged reports.
//! - Reconnects forever with exponential backoff (1 s … 10 s).
//! - Every message on a controller-to-receiver topic must be signed by the
//!   controller: [`Trust::open`] checks the envelope (signature, topic,
//!   sequence, age) before anything else looks at it; refusals are logged
//!   and listed in the status ([`Link::rejections`]).
//! - Malformed, oversize and forged messages (another receiver's topic or
//!   id) are logged and dropped; they never reach the rest of the receiver.
//! - Publishing never blocks: while the link is down, messages are dropped
//!   (statuses are periodic, reports stay queued on disk and are re-sent).
//! - Live broadcasts: it also subscribes (QoS 0) to the receiver's own live
//!   topic, to its zone's live topic once the schedule names the zone
//!   ([`Link::set_zone`], resubscribing when it changes) and to its clock
//!   replies. Live frames are decoded and their signature checked
//!   ([`Trust::decode_frame`]), then handed
//!   to the player thread through [`LiveFeed::offer`], which never blocks
//!   (a full queue drops the frame); malformed ones are dropped with a
//!   rate-limited log line. Clock replies are stamped on arrival and go
//!   straight to the [`Clock`].

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use loa_protocol::live::{
    ClockReply, ClockRequest, clock_reply_topic, clock_request_topic, receiver_live_topic,
    zone_live_topic,
};
use loa_protocol::topics::{ReceiverTopic, parse_receiver_topic};
use loa_protocol::{
    MAX_PAYLOAD_BYTES, PlayReport, ReceiverCommand, ReceiverSchedule, ReceiverSettings,
    ReceiverStatus, ReportAck, decode, encode,
};
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS, SubscribeFilter};
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, local_now_us};
use crate::live::LiveFeed;
use crate::trust::Trust;

/// First reconnection delay; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest reconnection delay.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Largest packet accepted from the broker. Twice the protocol's payload
/// limit, so an oversize payload is still received, refused and logged
/// rather than breaking the connection.
const MAX_INCOMING_PACKET: usize = 2 * MAX_PAYLOAD_BYTES;
/// Dropped live frames and clock replies are logged at most this often.
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A broker address from `--broker mqtt://HOST:PORT` or
/// `--broker mqtts://HOST:PORT` (TLS, with `--broker-ca`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    /// Host name or IP address (without brackets for IPv6).
    pub host: String,
    /// TCP port; 1883 when not given (8883 with TLS).
    pub port: u16,
    /// MQTT over TLS (`mqtts://`): the broker's certificate must be signed
    /// by [`BrokerAddr::ca_pem`] and name `host`.
    pub tls: bool,
    /// The PEM CA certificate(s) trusted for TLS ([`BrokerAddr::with_ca_file`]).
    pub ca_pem: Option<Vec<u8>>,
}

impl BrokerAddr {
    /// Loads the CA that signed a TLS broker's certificate (`--broker-ca`).
    /// A TLS broker needs one; a plain one must not have one (a CA given
    /// for nothing hints at a mistyped URL).
    pub fn with_ca_file(mut self, path: Option<&std::path::Path>) -> Result<Self, String> {
        match (self.tls, path) {
            (false, None) => Ok(self),
            (false, Some(_)) => Err("--broker-ca is only for an mqtts:// broker".into()),
            (true, None) => Err(
                "an mqtts:// broker needs --broker-ca PEM (the CA that signed the broker's certificate)"
                    .into(),
            ),
            (true, Some(path)) => {
                use rumqttc::tokio_rustls::rustls::pki_types::CertificateDer;
                use rumqttc::tokio_rustls::rustls::pki_types::pem::PemObject;
                let pem = std::fs::read(path)
                    .map_err(|e| format!("cannot read --broker-ca {}: {e}", path.display()))?;
                let certs = CertificateDer::pem_slice_iter(&pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("--broker-ca {} is not valid PEM: {e}", path.display()))?;
                if certs.is_empty() {
                    return Err(format!(
                        "--broker-ca {} holds no PEM certificate",
                        path.display()
                    ));
                }
                self.ca_pem = Some(pem);
                Ok(self)
            }
        }
    }
}

impl FromStr for BrokerAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (tls, rest) = match s.strip_prefix("mqtts://") {
            Some(rest) => (true, rest),
            None => (
                false,
                s.strip_prefix("mqtt://")
                    .or_else(|| s.strip_prefix("tcp://"))
                    .unwrap_or(s),
            ),
        };
        let rest = rest.trim_end_matches('/');
        let bad =
            || format!("invalid broker {s:?}: expected mqtt://HOST:PORT or mqtts://HOST:PORT");
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(bad)?;
            (host, after.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty() || host.contains('/') {
            return Err(bad());
        }
        let port = match port {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if tls => 8883,
            None => 1883,
        };
        Ok(BrokerAddr {
            host: host.to_string(),
            port,
            tls,
            ca_pem: None,
        })
    }
}

/// What the link hands to the receiver's main loop.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// Connected (again) and subscribed.
    Connected,
    /// A well-formed schedule addressed to this receiver.
    Schedule(ReceiverSchedule),
    /// The controller stored these reports.
    Ack(ReportAck),
    /// Output settings addressed to this receiver (not yet checked for
    /// version or range: the settings store does that).
    Settings(ReceiverSettings),
    /// A one-off command (not yet checked for age or repetition).
    Command(ReceiverCommand),
}

/// How to reach the broker.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// This receiver's id: client id, topic level and username.
    pub receiver_id: String,
    /// This receiver's token, sent as the MQTT password.
    pub token: String,
    /// The broker.
    pub broker: BrokerAddr,
    /// MQTT keep-alive; the broker publishes the last will after 1.5× this
    /// without traffic.
    pub keep_alive: Duration,
}

/// Where the link delivers live traffic.
#[derive(Clone)]
pub struct LiveHooks {
    /// Takes clock replies.
    pub clock: Clock,
    /// Takes live frames to the player thread.
    pub frames: LiveFeed,
}

/// Counts dropped messages of one kind and logs them at most every
/// [`DROP_LOG_INTERVAL`].
struct DropLog {
    what: &'static str,
    count: u64,
    last: Option<Instant>,
}

impl DropLog {
    const fn new(what: &'static str) -> Self {
        DropLog {
            what,
            count: 0,
            last: None,
        }
    }

    fn drop_one(&mut self, reason: &dyn std::fmt::Display) {
        self.count += 1;
        if self.last.is_none_or(|t| t.elapsed() >= DROP_LOG_INTERVAL) {
            tracing::warn!(what = self.what, dropped = self.count, last_reason = %reason, "dropping live messages");
            self.count = 0;
            self.last = Some(Instant::now());
        }
    }
}

/// The live side of the link: topics and where messages go.
struct LiveLink {
    hooks: LiveHooks,
    /// `loa/v1/live/receivers/{id}`.
    own_topic: String,
    /// `loa/v1/receivers/{id}/clock-reply`.
    reply_topic: String,
    /// The zone's live topic, once the schedule names the zone.
    zone_topic: Mutex<Option<String>>,
    frames_dropped: Mutex<DropLog>,
    replies_dropped: Mutex<DropLog>,
}

/// Handle for publishing; cheap to clone.
#[derive(Clone)]
pub struct Link {
    /// The rumqttc request handle.
    client: AsyncClient,
    /// This receiver's id, for topics.
    receiver_id: String,
    /// Whether the connection is up (set by the polling task).
    connected: Arc<AtomicBool>,
    /// Incremented at every (re)connection, after subscribing.
    generation: Arc<AtomicU64>,
    /// Live frames and clock replies.
    live: Arc<LiveLink>,
    /// Checks what claims to come from the controller.
    trust: Arc<Trust>,
}

impl Link {
    /// Starts the polling task. It runs until `shutdown`, then publishes an
    /// offline status and disconnects cleanly.
    pub fn start(
        config: LinkConfig,
        inbound: UnboundedSender<Inbound>,
        hooks: LiveHooks,
        trust: Arc<Trust>,
        shutdown: CancellationToken,
    ) -> (Link, JoinHandle<()>) {
        let status_topic = ReceiverTopic::Status.for_receiver(&config.receiver_id);
        let mut options =
            MqttOptions::new(&config.receiver_id, &config.broker.host, config.broker.port);
        options
            .set_keep_alive(config.keep_alive.max(Duration::from_secs(1)))
            .set_clean_session(true)
            .set_credentials(&config.receiver_id, &config.token)
            .set_max_packet_size(MAX_INCOMING_PACKET, MAX_PAYLOAD_BYTES + 64 * 1024)
            .set_last_will(LastWill::new(
                &status_topic,
                encode(&ReceiverStatus::offline(&config.receiver_id)),
                QoS::AtLeastOnce,
                true,
            ));
        if config.broker.tls {
            options.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Simple {
                    ca: config.broker.ca_pem.clone().unwrap_or_default(),
                    alpn: None,
                    client_auth: None,
                },
            ));
        }
        let (client, eventloop) = AsyncClient::new(options, 256);
        let live = LiveLink {
            hooks,
            own_topic: receiver_live_topic(&config.receiver_id),
            reply_topic: clock_reply_topic(&config.receiver_id),
            zone_topic: Mutex::new(None),
            frames_dropped: Mutex::new(DropLog::new("live frames")),
            replies_dropped: Mutex::new(DropLog::new("clock replies")),
        };
        let link = Link {
            client,
            receiver_id: config.receiver_id.clone(),
            connected: Arc::new(AtomicBool::new(false)),
            generation: Arc::new(AtomicU64::new(0)),
            live: Arc::new(live),
            trust,
        };
        let task = tokio::spawn(link.clone().poll(eventloop, inbound, shutdown));
        (link, task)
    }

    /// Whether the connection to the broker is up.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// How many times the link has connected (and subscribed) so far.
    pub fn connection_generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Follows the live topic of `zone` (the one the schedule names), or
    /// none; resubscribes at once when connected and the zone changed.
    /// Zones that are not valid ids are refused (they could be wildcards).
    pub fn set_zone(&self, zone: Option<&str>) {
        let zone = match zone {
            Some(z) if loa_protocol::is_valid_id(z) => Some(z),
            Some(z) => {
                tracing::warn!(zone = %z, "schedule names an invalid zone; not following its live topic");
                None
            }
            None => None,
        };
        let topic = zone.map(zone_live_topic);
        let old = {
            let mut current = self
                .live
                .zone_topic
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if *current == topic {
                return;
            }
            std::mem::replace(&mut *current, topic.clone())
        };
        tracing::info!(zone = ?zone, "following the zone's live broadcasts");
        if !self.is_connected() {
            return;
        }
        if let Some(old) = old
            && let Err(e) = self.client.try_unsubscribe(old)
        {
            tracing::warn!(error = %e, "cannot unsubscribe from the old zone's live topic");
        }
        if let Some(topic) = topic
            && let Err(e) = self.client.try_subscribe(topic, QoS::AtMostOnce)
        {
            tracing::error!(error = %e, "cannot subscribe to the zone's live topic");
        }
    }

    /// Publishes a clock request (QoS 0). False if not sent.
    pub fn publish_clock_request(&self, request: &ClockRequest) -> bool {
        if !self.is_connected() {
            return false;
        }
        self.client
            .try_publish(
                clock_request_topic(&self.receiver_id),
                QoS::AtMostOnce,
                false,
                encode(request),
            )
            .is_ok()
    }

    /// Publishes this receiver's status (retained). False if not sent.
    pub fn publish_status(&self, status: &ReceiverStatus) -> bool {
        self.publish(ReceiverTopic::Status, true, encode(status))
    }

    /// Publishes a proof-of-play report (QoS 1). False if not sent.
    pub fn publish_report(&self, report: &PlayReport) -> bool {
        self.publish(ReceiverTopic::Plays, false, encode(report))
    }

    fn publish(&self, kind: ReceiverTopic, retain: bool, payload: Vec<u8>) -> bool {
        if !self.is_connected() {
            return false;
        }
        let topic = kind.for_receiver(&self.receiver_id);
        match self
            .client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload)
        {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "MQTT request queue full; message dropped for now");
                false
            }
        }
    }

    /// The polling task.
    async fn poll(
        self,
        mut eventloop: EventLoop,
        inbound: UnboundedSender<Inbound>,
        shutdown: CancellationToken,
    ) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => break,
                event = eventloop.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    tracing::info!(host = ?eventloop.mqtt_options.broker_address(), "connected to the MQTT broker");
                    backoff = FIRST_BACKOFF;
                    self.connected.store(true, Ordering::SeqCst);
                    let mut filters: Vec<SubscribeFilter> = [
                        ReceiverTopic::Schedule,
                        ReceiverTopic::Acks,
                        ReceiverTopic::Settings,
                        ReceiverTopic::Commands,
                    ]
                    .map(|k| {
                        SubscribeFilter::new(k.for_receiver(&self.receiver_id), QoS::AtLeastOnce)
                    })
                    .into();
                    filters.push(SubscribeFilter::new(
                        self.live.own_topic.clone(),
                        QoS::AtMostOnce,
                    ));
                    filters.push(SubscribeFilter::new(
                        self.live.reply_topic.clone(),
                        QoS::AtMostOnce,
                    ));
                    if let Some(zone) = self.zone_topic() {
                        filters.push(SubscribeFilter::new(zone, QoS::AtMostOnce));
                    }
                    if let Err(e) = self.client.try_subscribe_many(filters) {
                        tracing::error!(error = %e, "cannot subscribe");
                    }
                    self.generation.fetch_add(1, Ordering::SeqCst);
                    let _ = inbound.send(Inbound::Connected);
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let arrived = local_now_us();
                    if self.take_live(&publish.topic, &publish.payload, arrived) {
                        continue;
                    }
                    let now = self.live.hooks.clock.now_utc();
                    let Some(payload) = self.trust.open(&publish.topic, &publish.payload, now)
                    else {
                        continue;
                    };
                    if let Some(message) = self.classify(&publish.topic, &payload) {
                        let _ = inbound.send(message);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let was_connected = self.connected.swap(false, Ordering::SeqCst);
                    if was_connected {
                        tracing::warn!(error = %e, "MQTT connection lost; reconnecting");
                    } else {
                        tracing::warn!(error = %e, retry_in = ?backoff, "cannot reach the MQTT broker");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        self.say_goodbye(&mut eventloop).await;
    }

    /// Messages and frames refused lately, for the status.
    pub fn rejections(&self) -> Vec<loa_protocol::signed::Rejection> {
        self.trust.rejections()
    }

    /// Subscribes to the controller-to-receiver topics again (unsubscribing
    /// first), so the broker re-sends their retained messages: called once
    /// the controller's key becomes known, as those received before it
    /// were dropped.
    pub fn refresh_controller_topics(&self) {
        if !self.is_connected() {
            return; // Subscribing on connection does it.
        }
        let topics: Vec<String> = [ReceiverTopic::Schedule, ReceiverTopic::Settings]
            .map(|k| k.for_receiver(&self.receiver_id))
            .into();
        for topic in &topics {
            let _ = self.client.try_unsubscribe(topic.clone());
        }
        let filters = topics
            .into_iter()
            .map(|t| SubscribeFilter::new(t, QoS::AtLeastOnce));
        if let Err(e) = self.client.try_subscribe_many(filters) {
            tracing::warn!(error = %e, "cannot subscribe again to the controller's topics");
        }
    }

    /// The zone's live topic, if the schedule named one.
    fn zone_topic(&self) -> Option<String> {
        self.live
            .zone_topic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Handles live frames and clock replies (true if `topic` is one of
    /// theirs). Never blocks.
    fn take_live(&self, topic: &str, payload: &[u8], arrived_us: i64) -> bool {
        let live = &self.live;
        if topic == live.reply_topic {
            let result = loa_protocol::decode::<ClockReply>(payload)
                .map_err(|e| e.to_string())
                .and_then(|reply| {
                    live.hooks
                        .clock
                        .on_reply(&reply, arrived_us)
                        .map_err(|e| e.to_string())
                });
            match result {
                Ok(sample) => tracing::trace!(?sample, "clock sample"),
                Err(e) => live
                    .replies_dropped
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .drop_one(&e),
            }
            return true;
        }
        let ours = topic == live.own_topic || self.zone_topic().is_some_and(|z| z == topic);
        if !ours {
            return topic.starts_with(&format!("{}/live/", loa_protocol::topics::PREFIX));
        }
        let controller_now = live.hooks.clock.controller_now_us();
        let reason = match self.trust.decode_frame(topic, payload, controller_now) {
            Ok(frame) => {
                if live.hooks.frames.offer(frame, arrived_us) {
                    return true;
                }
                "the player's live queue is full".to_string()
            }
            Err(e) => e.to_string(),
        };
        live.frames_dropped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drop_one(&reason);
        true
    }

    /// Turns a received publish into an [`Inbound`] message, or logs why not.
    fn classify(&self, topic: &str, payload: &[u8]) -> Option<Inbound> {
        let Some((id, kind)) = parse_receiver_topic(topic) else {
            tracing::warn!(%topic, "message on an unexpected topic dropped");
            return None;
        };
        if id != self.receiver_id {
            tracing::warn!(%topic, "message for another receiver dropped");
            return None;
        }
        match kind {
            ReceiverTopic::Schedule => match decode::<ReceiverSchedule>(payload) {
                Ok(s) if s.receiver_id == self.receiver_id => Some(Inbound::Schedule(s)),
                Ok(s) => {
                    tracing::warn!(claimed = %s.receiver_id, "forged schedule (names another receiver) dropped");
                    None
                }
                Err(_) if payload.is_empty() => {
                    tracing::info!(
                        "retained schedule cleared on the broker; keeping the schedule on disk"
                    );
                    None
                }
                Err(e) => {
                    tracing::warn!(error = %e, bytes = payload.len(), "malformed schedule dropped");
                    None
                }
            },
            ReceiverTopic::Acks => match decode::<ReportAck>(payload) {
                Ok(ack) => Some(Inbound::Ack(ack)),
                Err(e) => {
                    tracing::warn!(error = %e, bytes = payload.len(), "malformed report ack dropped");
                    None
                }
            },
            ReceiverTopic::Settings => match decode::<ReceiverSettings>(payload) {
                Ok(s) if s.receiver_id == self.receiver_id => Some(Inbound::Settings(s)),
                Ok(s) => {
                    tracing::warn!(claimed = %s.receiver_id, "forged settings (name another receiver) dropped");
                    None
                }
                Err(_) if payload.is_empty() => None,
                Err(e) => {
                    tracing::warn!(error = %e, bytes = payload.len(), "malformed settings dropped");
                    None
                }
            },
            ReceiverTopic::Commands => match decode::<ReceiverCommand>(payload) {
                Ok(c) => Some(Inbound::Command(c)),
                Err(e) => {
                    tracing::warn!(error = %e, bytes = payload.len(), "malformed command dropped");
                    None
                }
            },
            other => {
                tracing::warn!(
                    ?other,
                    "message on a topic this receiver does not read dropped"
                );
                None
            }
        }
    }

    /// On shutdown: replaces the retained status with an offline one (a
    /// clean disconnect does not trigger the last will) and disconnects,
    /// polling briefly so both go out.
    async fn say_goodbye(&self, eventloop: &mut EventLoop) {
        if !self.is_connected() {
            return;
        }
        self.publish_status(&ReceiverStatus::offline(&self.receiver_id));
        let _ = self.client.try_disconnect();
        let flush = async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), flush).await;
        self.connected.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_addresses_parse() {
        let a: BrokerAddr = "mqtt://127.0.0.1:1884".parse().unwrap();
        assert_eq!(
            a,
            BrokerAddr {
                host: "127.0.0.1".into(),
                port: 1884,
                tls: false,
                ca_pem: None,
            }
        );
        let b: BrokerAddr = "mqtt://broker.local".parse().unwrap();
        assert_eq!(b.port, 1883);
        let c: BrokerAddr = "mqtt://[::1]:2000".parse().unwrap();
        assert_eq!(
            c,
            BrokerAddr {
                host: "::1".into(),
                port: 2000,
                tls: false,
                ca_pem: None,
            }
        );
        assert!("mqtt://:1883".parse::<BrokerAddr>().is_err());
        assert!("mqtt://host:notaport".parse::<BrokerAddr>().is_err());
        let t: BrokerAddr = "mqtts://broker.local".parse().unwrap();
        assert_eq!((t.port, t.tls), (8883, true));
    }

    #[test]
    fn a_tls_broker_needs_a_readable_ca() {
        let tls: BrokerAddr = "mqtts://127.0.0.1:8883".parse().unwrap();
        let plain: BrokerAddr = "mqtt://127.0.0.1:1883".parse().unwrap();
        let err = tls.clone().with_ca_file(None).unwrap_err();
        assert!(err.contains("--broker-ca"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = tls.clone().with_ca_file(Some(&missing)).unwrap_err();
        assert!(err.contains("missing.pem"), "{err}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "hello").unwrap();
        let err = tls.with_ca_file(Some(&junk)).unwrap_err();
        assert!(err.contains("no PEM certificate"), "{err}");
        assert!(plain.clone().with_ca_file(Some(&junk)).is_err());
        assert_eq!(plain.clone().with_ca_file(None).unwrap(), plain);
    }
}

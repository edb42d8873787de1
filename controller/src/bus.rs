//! The controller's MQTT link, wrapped the way rumqttc itself is built: one
//! clonable [`Bus`] handle the rest of the controller publishes through, and
//! one task that polls rumqttc's event loop and hands out typed
//! [`BusEvent`]s through [`BusEvents`].
//!
//! Behaviour worth knowing:
//! - [`Bus::connect`] returns at once, even when the broker is not up yet:
//!   publications queue in rumqttc and go out when the link comes up. The
//!   task reconnects forever with exponential backoff (warning each time)
//!   and re-subscribes after every `CONNACK`; [`Bus::is_ready`] and
//!   [`Bus::wait_ready`] tell whether it is connected and subscribed.
//! - The session is persistent (`clean_session = false`, works with both
//!   rumqttd and Mosquitto): QoS 1 reports sent while the controller was
//!   briefly away are delivered when it returns.
//! - Everything received is checked before it becomes an event: the topic
//!   must be a Loa receiver topic, the payload must decode within
//!   [`MAX_PAYLOAD_BYTES`], and the receiver id inside must match the one in
//!   the topic. Anything else is logged at `warn` and dropped.
//! - Every message published to receivers ([`Bus::publish`] and the
//!   helpers built on it) goes out in a signed envelope made by the
//!   controller's [`Signer`] (see [`loa_protocol::signed`]); sequence
//!   numbers are assigned and queued in order under one lock, so a receiver
//!   never sees a topic's sequence go back. Live frames are signed by their
//!   publisher with [`Bus::signer`]'s key.
//! - When the last [`Bus`] clone is dropped the task disconnects cleanly
//!   (flushing what is queued) and ends; [`BusEvents::recv`] then returns `None`.
//!
//! Live broadcasts use a second connection, [`Bus::connect_live`], so that
//! nothing on the main link (a slow database write holding up the event
//! stream, a large retained schedule) delays their frames:
//! - a clean session with `TCP_NODELAY`, publishing each 20 ms frame with
//!   QoS 0 through [`Bus::publish_frame`], which never waits: a frame that
//!   cannot be queued at once (link down, queue full) is dropped, as a late
//!   frame would be useless;
//! - it subscribes to every receiver's clock requests and answers each one
//!   from inside the event loop, stamping `t2` as soon as the loop hands
//!   the request over and `t3` just before queueing the reply
//!   (see [`crate::live::clock`]).

use std::sync::Arc;
use std::time::Duration;

use loa_protocol::live::clock_request_filter;
use loa_protocol::topics::{ReceiverTopic, parse_receiver_topic};
use loa_protocol::{MAX_PAYLOAD_BYTES, PlayReport, ReceiverSchedule, ReceiverStatus, ReportAck};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS, SubscribeReasonCode};
use tokio::sync::{Mutex, mpsc, watch};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::signing::{Signer, SigningError};

/// First wait before reconnecting; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(250);
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Incoming packets larger than this break the connection in rumqttc, so it
/// is set well above the protocol limit; [`loa_protocol::decode`] refuses
/// what lies between.
const MAX_INCOMING_PACKET: usize = 4 * MAX_PAYLOAD_BYTES;
/// Headroom for topic and header over the payload limit.
const MAX_OUTGOING_PACKET: usize = MAX_PAYLOAD_BYTES + 64 * 1024;

/// Why the bus refused a request.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The broker URL is not `mqtt://HOST[:PORT]` or `mqtts://HOST[:PORT]`.
    #[error(
        "invalid broker URL {url:?}: {reason} (expected mqtt://HOST:PORT or mqtts://HOST:PORT)"
    )]
    InvalidUrl { url: String, reason: &'static str },
    /// An `mqtts://` broker needs the CA certificate that signed its certificate.
    #[error(
        "the broker {0} uses TLS (mqtts://): give the CA certificate that signed its certificate (--broker-ca PEM)"
    )]
    MissingCa(String),
    /// The payload would exceed what receivers accept.
    #[error("payload of {0} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit")]
    TooLarge(usize),
    /// The connection task has ended (the bus is shutting down).
    #[error("the MQTT connection task has stopped")]
    Closed,
    /// A live frame could not be queued at once: the link is down or its
    /// send queue is full. The frame is dropped.
    #[error("the MQTT link is down or its send queue is full; live frame dropped")]
    NotSent,
    /// The message could not be signed (not UTF-8 text, or the sequence
    /// could not be reserved on disk).
    #[error("cannot sign the message: {0}")]
    Signing(#[from] SigningError),
}

/// How the bus logs in to the broker and checks its certificate.
#[derive(Debug, Clone, Default)]
pub struct BrokerLogin {
    /// MQTT username and password (the embedded broker's internal
    /// credential, or the account on an external broker).
    pub credentials: Option<crate::mqtt_auth::Credentials>,
    /// PEM CA certificate(s) trusted for an `mqtts://` broker
    /// (see [`crate::mqtt_tls::read_ca`]).
    pub ca_pem: Option<Vec<u8>>,
}

/// What a connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Schedules, statuses, reports and acks (persistent session).
    Main,
    /// Live frames and clock replies (clean session, no event stream).
    Live,
}

/// Requests rumqttc may queue on the live link (frames of every target
/// group of every broadcast on air, plus clock replies).
const LIVE_QUEUE: usize = 4096;

/// A message from the broker, already validated.
#[derive(Debug, Clone, PartialEq)]
pub enum BusEvent {
    /// The link to the broker is (re)established and subscriptions are
    /// being renewed. Without `session_present` the broker kept nothing,
    /// so retained state it held may be gone too (e.g. it restarted).
    Connected { session_present: bool },
    /// A receiver's status (heartbeat, or its last will when `online` is false).
    Status {
        status: ReceiverStatus,
        /// Delivered from the broker's retained store on subscription, so
        /// it may be old; live heartbeats have `retained == false`.
        retained: bool,
    },
    /// A proof-of-play report, to be stored and acknowledged.
    Play(PlayReport),
}

/// Connection state shared between the task and the handles.
#[derive(Debug, Clone, Copy, Default)]
struct LinkState {
    /// A `CONNACK` was received and the connection has not failed since.
    connected: bool,
    /// The broker acknowledged our subscriptions on this connection.
    subscribed: bool,
}

/// Handle for publishing to the broker. Cloning is cheap; the connection
/// lives until the last clone is dropped.
#[derive(Clone)]
pub struct Bus {
    /// rumqttc's request handle; requests queue while disconnected.
    client: AsyncClient,
    /// Latest connection state published by the task.
    state: watch::Receiver<LinkState>,
    /// Signs what is published to receivers.
    signer: Arc<Signer>,
    /// Held from sequence assignment to queueing, so sequence numbers go
    /// out in order.
    order: Arc<Mutex<()>>,
    /// Cancels the connection task when the last handle goes away.
    _alive: Arc<DropGuard>,
}

/// The stream of validated incoming messages. There is one per bus; if it
/// is dropped, incoming messages are discarded but publishing still works.
pub struct BusEvents {
    /// Filled by the connection task.
    rx: mpsc::Receiver<BusEvent>,
}

impl BusEvents {
    /// The next event, or `None` once the bus has shut down.
    pub async fn recv(&mut self) -> Option<BusEvent> {
        self.rx.recv().await
    }

    /// The next event if one is waiting already.
    pub fn try_recv(&mut self) -> Option<BusEvent> {
        self.rx.try_recv().ok()
    }
}

impl Bus {
    /// Starts connecting to `broker_url` (`mqtt://HOST[:PORT]`, port 1883
    /// by default) as `client_id` and subscribes to every receiver's status
    /// and plays topics. Returns at once; see the module docs. What it
    /// publishes is signed by `signer`.
    ///
    /// Must be called within a tokio runtime.
    pub async fn connect(
        broker_url: &str,
        client_id: &str,
        signer: Arc<Signer>,
    ) -> Result<(Bus, BusEvents), BusError> {
        Self::connect_with(broker_url, client_id, signer, &BrokerLogin::default()).await
    }

    /// [`Bus::connect`] logging in as `login` says (credentials, TLS CA).
    pub async fn connect_with(
        broker_url: &str,
        client_id: &str,
        signer: Arc<Signer>,
        login: &BrokerLogin,
    ) -> Result<(Bus, BusEvents), BusError> {
        let (events_tx, rx) = mpsc::channel(1024);
        let bus = Self::start(
            broker_url,
            client_id,
            signer,
            login,
            Role::Main,
            Some(events_tx),
        )?;
        Ok((bus, BusEvents { rx }))
    }

    /// Starts the live link (see the module docs): a clean session with
    /// `TCP_NODELAY` that answers receivers' clock requests itself and
    /// carries live frames ([`Bus::publish_frame`]). Returns at once, like
    /// [`Bus::connect`]. `client_id` must differ from the main link's.
    pub async fn connect_live(
        broker_url: &str,
        client_id: &str,
        signer: Arc<Signer>,
    ) -> Result<Bus, BusError> {
        Self::connect_live_with(broker_url, client_id, signer, &BrokerLogin::default()).await
    }

    /// [`Bus::connect_live`] logging in as `login` says.
    pub async fn connect_live_with(
        broker_url: &str,
        client_id: &str,
        signer: Arc<Signer>,
        login: &BrokerLogin,
    ) -> Result<Bus, BusError> {
        Self::start(broker_url, client_id, signer, login, Role::Live, None)
    }

    fn start(
        broker_url: &str,
        client_id: &str,
        signer: Arc<Signer>,
        login: &BrokerLogin,
        role: Role,
        events: Option<mpsc::Sender<BusEvent>>,
    ) -> Result<Bus, BusError> {
        let (host, port, tls) = parse_broker_endpoint(broker_url)?;
        let mut options = MqttOptions::new(client_id, host, port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_session(role == Role::Live)
            .set_max_packet_size(MAX_INCOMING_PACKET, MAX_OUTGOING_PACKET)
            .set_inflight(100);
        if let Some(c) = &login.credentials {
            options.set_credentials(&c.username, &c.password);
        }
        if tls {
            let ca = login
                .ca_pem
                .clone()
                .ok_or_else(|| BusError::MissingCa(broker_url.to_string()))?;
            options.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Simple {
                    ca,
                    alpn: None,
                    client_auth: None,
                },
            ));
        }
        let capacity = match role {
            Role::Main => 256,
            Role::Live => LIVE_QUEUE,
        };
        let (client, mut eventloop) = AsyncClient::new(options, capacity);
        if role == Role::Live {
            // Frames are small and due now: never let Nagle hold one back.
            let mut network = eventloop.network_options();
            network.set_tcp_nodelay(true);
            eventloop.set_network_options(network);
        }
        let (state_tx, state) = watch::channel(LinkState::default());
        let stop = CancellationToken::new();
        let link = Link {
            eventloop,
            client: client.clone(),
            role,
            events,
            state: state_tx,
            stop: stop.clone(),
            broker: broker_url.to_string(),
        };
        tokio::spawn(link.run());
        Ok(Bus {
            client,
            state,
            signer,
            order: Arc::new(Mutex::new(())),
            _alive: Arc::new(stop.drop_guard()),
        })
    }

    /// Whether the bus is connected and its subscriptions are acknowledged.
    pub fn is_ready(&self) -> bool {
        let s = *self.state.borrow();
        s.connected && s.subscribed
    }

    /// Waits until [`Bus::is_ready`] or `timeout`; returns whether it is ready.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut state = self.state.clone();
        tokio::time::timeout(timeout, state.wait_for(|s| s.connected && s.subscribed))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The controller's signer (live publishers sign frames with its key).
    pub fn signer(&self) -> &Arc<Signer> {
        &self.signer
    }

    /// Publishes `payload` (a JSON message) on `topic` in a signed envelope
    /// (QoS 1 unless it is to be lost cheaply). Returns once queued;
    /// delivery follows when connected.
    pub async fn publish(
        &self,
        topic: String,
        payload: Vec<u8>,
        qos: QoS,
        retain: bool,
    ) -> Result<(), BusError> {
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(BusError::TooLarge(payload.len()));
        }
        let _in_order = self.order.lock().await;
        let payload = self.signer.seal(&topic, &payload)?;
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(BusError::TooLarge(payload.len()));
        }
        self.client
            .publish(topic, qos, retain, payload)
            .await
            .map_err(|_| BusError::Closed)
    }

    /// Publishes one live frame (QoS 0, not retained) without waiting. While
    /// the link is down, or when its queue is full, the frame is dropped and
    /// [`BusError::NotSent`] returned: queueing it would only deliver it
    /// after its playout instant.
    pub fn publish_frame(&self, topic: &str, payload: &[u8]) -> Result<(), BusError> {
        if !self.state.borrow().connected {
            return Err(BusError::NotSent);
        }
        self.client
            .try_publish(topic, QoS::AtMostOnce, false, payload.to_vec())
            .map_err(|_| BusError::NotSent)
    }

    /// Publishes a receiver's schedule retained with QoS 1, so the receiver
    /// gets it whenever it (re)connects.
    pub async fn publish_retained_schedule(
        &self,
        schedule: &ReceiverSchedule,
    ) -> Result<(), BusError> {
        let topic = ReceiverTopic::Schedule.for_receiver(&schedule.receiver_id);
        self.publish(
            topic,
            loa_protocol::encode(schedule),
            QoS::AtLeastOnce,
            true,
        )
        .await
    }

    /// Tells a receiver these reports are stored (QoS 1, not retained).
    pub async fn publish_ack(&self, receiver_id: &str, ack: &ReportAck) -> Result<(), BusError> {
        let topic = ReceiverTopic::Acks.for_receiver(receiver_id);
        self.publish(topic, loa_protocol::encode(ack), QoS::AtLeastOnce, false)
            .await
    }

    /// Publishes a receiver's output settings retained with QoS 1, so the
    /// receiver gets the latest whenever it (re)connects.
    pub async fn publish_retained_settings(
        &self,
        settings: &loa_protocol::ReceiverSettings,
    ) -> Result<(), BusError> {
        let topic = ReceiverTopic::Settings.for_receiver(&settings.receiver_id);
        self.publish(
            topic,
            loa_protocol::encode(settings),
            QoS::AtLeastOnce,
            true,
        )
        .await
    }

    /// Sends a receiver a one-off command (QoS 1, not retained).
    pub async fn publish_command(
        &self,
        receiver_id: &str,
        command: &loa_protocol::ReceiverCommand,
    ) -> Result<(), BusError> {
        let topic = ReceiverTopic::Commands.for_receiver(receiver_id);
        self.publish(
            topic,
            loa_protocol::encode(command),
            QoS::AtLeastOnce,
            false,
        )
        .await
    }
}

/// Splits `mqtt://HOST[:PORT][/]` (also `tcp://`) into host and port.
/// IPv6 hosts are written in brackets: `mqtt://[::1]:1883`.
pub fn parse_broker_url(url: &str) -> Result<(String, u16), BusError> {
    match parse_broker_endpoint(url)? {
        (host, port, false) => Ok((host, port)),
        (_, _, true) => Err(BusError::InvalidUrl {
            url: url.to_string(),
            reason: "only the mqtt:// scheme is supported here",
        }),
    }
}

/// Splits `mqtt://HOST[:PORT]` (port 1883 by default) or
/// `mqtts://HOST[:PORT]` (TLS, port 8883 by default) into host, port and
/// whether TLS is used.
pub fn parse_broker_endpoint(url: &str) -> Result<(String, u16, bool), BusError> {
    let bad = |reason| BusError::InvalidUrl {
        url: url.to_string(),
        reason,
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("missing scheme"))?;
    let tls = if scheme.eq_ignore_ascii_case("mqtts") || scheme.eq_ignore_ascii_case("ssl") {
        true
    } else if scheme.eq_ignore_ascii_case("mqtt") || scheme.eq_ignore_ascii_case("tcp") {
        false
    } else {
        return Err(bad("only the mqtt:// and mqtts:// schemes are supported"));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#', '@']) {
        return Err(bad("a path, query or credentials are not supported"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        match after {
            "" => (host, None),
            p => (
                host,
                Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ']'"))?),
            ),
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad("missing host"));
    }
    let port = match port {
        None if tls => 8883,
        None => 1883,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("invalid port"))?,
    };
    Ok((host.to_string(), port, tls))
}

/// The task that owns rumqttc's event loop.
struct Link {
    /// rumqttc's connection state machine; only this task polls it.
    eventloop: rumqttc::EventLoop,
    /// Used to renew subscriptions, answer clock requests and disconnect.
    client: AsyncClient,
    /// What this connection carries.
    role: Role,
    /// Where validated messages go (main link only).
    events: Option<mpsc::Sender<BusEvent>>,
    /// Published connection state.
    state: watch::Sender<LinkState>,
    /// Cancelled when the last [`Bus`] is dropped.
    stop: CancellationToken,
    /// For log messages.
    broker: String,
}

impl Link {
    async fn run(mut self) {
        let mut backoff = MIN_BACKOFF;
        let mut failures = 0u32;
        loop {
            let polled = tokio::select! {
                polled = self.eventloop.poll() => polled,
                () = self.stop.cancelled() => break,
            };
            // Clock requests want their arrival instant (t2) as early as possible.
            let received_us = crate::live::clock::now_us();
            match polled {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    tracing::info!(broker = %self.broker, session_present = ack.session_present,
                        "connected to MQTT broker");
                    backoff = MIN_BACKOFF;
                    failures = 0;
                    self.state.send_replace(LinkState {
                        connected: true,
                        subscribed: false,
                    });
                    self.subscribe();
                    if let Some(events) = &self.events {
                        let event = BusEvent::Connected {
                            session_present: ack.session_present,
                        };
                        forward(events, &self.stop, event).await;
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    if ack
                        .return_codes
                        .iter()
                        .all(|c| matches!(c, SubscribeReasonCode::Success(_)))
                    {
                        self.state.send_modify(|s| s.subscribed = true);
                    } else {
                        tracing::warn!(broker = %self.broker, codes = ?ack.return_codes,
                            "MQTT broker refused a subscription");
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => match self.role {
                    Role::Main => {
                        if let (Some(event), Some(events)) = (validate(&publish), &self.events) {
                            forward(events, &self.stop, event).await;
                        }
                    }
                    Role::Live => {
                        crate::live::clock::answer(&self.client, &publish, received_us);
                    }
                },
                Ok(_) => {}
                Err(error) => {
                    failures += 1;
                    self.state.send_replace(LinkState::default());
                    tracing::warn!(broker = %self.broker, %error, attempt = failures,
                        retry_in_ms = backoff.as_millis() as u64, "MQTT connection failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = self.stop.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        self.disconnect().await;
    }

    /// Renews the subscriptions from a separate task: awaiting the request
    /// channel here could deadlock with the poll loop that drains it.
    fn subscribe(&self) {
        let client = self.client.clone();
        let role = self.role;
        tokio::spawn(async move {
            let filters: Vec<rumqttc::SubscribeFilter> = match role {
                Role::Main => [
                    ReceiverTopic::Status.for_all(),
                    ReceiverTopic::Plays.for_all(),
                ]
                .into_iter()
                .map(|f| rumqttc::SubscribeFilter::new(f, QoS::AtLeastOnce))
                .collect(),
                Role::Live => vec![rumqttc::SubscribeFilter::new(
                    clock_request_filter(),
                    QoS::AtMostOnce,
                )],
            };
            if client.subscribe_many(filters).await.is_err() {
                tracing::debug!("bus closed before subscribing");
            }
        });
    }

    /// Sends DISCONNECT after what is queued, waiting at most a second.
    async fn disconnect(mut self) {
        self.state.send_replace(LinkState::default());
        if self.eventloop.network.is_none() || self.client.try_disconnect().is_err() {
            return;
        }
        let flush = async {
            loop {
                match self.eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), flush).await;
        tracing::info!(broker = %self.broker, "disconnected from MQTT broker");
    }
}

/// Hands an event to the consumer; waits if it is busy, drops the event if
/// nobody listens or the bus is stopping. (A free function: borrowing the
/// whole [`Link`] across the await would make its task non-`Send`.)
async fn forward(events: &mpsc::Sender<BusEvent>, stop: &CancellationToken, event: BusEvent) {
    tokio::select! {
        _ = events.send(event) => {}
        () = stop.cancelled() => {}
    }
}

/// Turns an incoming publish into an event, or logs why it is dropped.
fn validate(publish: &rumqttc::Publish) -> Option<BusEvent> {
    let topic = publish.topic.as_str();
    let Some((topic_id, kind)) = parse_receiver_topic(topic) else {
        tracing::warn!(topic, "dropping MQTT message on an unknown topic");
        return None;
    };
    if publish.payload.is_empty() {
        // A cleared retained message, not a message.
        tracing::debug!(topic, "ignoring empty MQTT payload");
        return None;
    }
    let claimed_id = match kind {
        ReceiverTopic::Status => match loa_protocol::decode::<ReceiverStatus>(&publish.payload) {
            Ok(status) => {
                let id = status.receiver_id.clone();
                (id == topic_id)
                    .then_some(BusEvent::Status {
                        status,
                        retained: publish.retain,
                    })
                    .ok_or(id)
            }
            Err(error) => {
                tracing::warn!(topic, %error, "dropping malformed receiver status");
                return None;
            }
        },
        ReceiverTopic::Plays => match loa_protocol::decode::<PlayReport>(&publish.payload) {
            Ok(report) => {
                let id = report.receiver_id.clone();
                (id == topic_id).then_some(BusEvent::Play(report)).ok_or(id)
            }
            Err(error) => {
                tracing::warn!(topic, %error, "dropping malformed play report");
                return None;
            }
        },
        ReceiverTopic::Schedule
        | ReceiverTopic::Acks
        | ReceiverTopic::Settings
        | ReceiverTopic::Commands => {
            tracing::warn!(
                topic,
                "dropping MQTT message on a controller-to-receiver topic"
            );
            return None;
        }
    };
    match claimed_id {
        Ok(event) => Some(event),
        Err(claimed) => {
            tracing::warn!(topic, claimed_receiver = %claimed,
                "dropping MQTT message whose receiver id does not match its topic");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        assert_eq!(
            parse_broker_url("mqtt://127.0.0.1:1884").unwrap(),
            ("127.0.0.1".into(), 1884)
        );
        assert_eq!(
            parse_broker_url("mqtt://broker.local").unwrap(),
            ("broker.local".into(), 1883)
        );
        assert_eq!(parse_broker_url("MQTT://h:1/").unwrap(), ("h".into(), 1));
        assert_eq!(
            parse_broker_url("mqtt://[::1]:1883").unwrap(),
            ("::1".into(), 1883)
        );
        for bad in [
            "127.0.0.1:1883",
            "http://h:1883",
            "mqtts://h:8883",
            "ws://h:1",
            "mqtt://",
            "mqtt://h:0",
            "mqtt://h:99999",
            "mqtt://h:x",
            "mqtt://u:p@h:1883",
            "mqtt://h:1883/path",
            "mqtt://[::1",
        ] {
            assert!(parse_broker_url(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn tls_broker_urls() {
        assert_eq!(
            parse_broker_endpoint("mqtts://broker.local").unwrap(),
            ("broker.local".into(), 8883, true)
        );
        assert_eq!(
            parse_broker_endpoint("mqtts://127.0.0.1:18883").unwrap(),
            ("127.0.0.1".into(), 18883, true)
        );
        assert_eq!(
            parse_broker_endpoint("mqtt://h").unwrap(),
            ("h".into(), 1883, false)
        );
    }

    #[tokio::test]
    async fn a_tls_broker_without_a_ca_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let signer = Arc::new(Signer::open(dir.path()).unwrap());
        let err = Bus::connect("mqtts://127.0.0.1:8883", "x", signer)
            .await
            .err()
            .expect("must fail");
        assert!(matches!(err, BusError::MissingCa(_)), "{err}");
        assert!(err.to_string().contains("--broker-ca"), "{err}");
    }

    fn publish(topic: &str, payload: &[u8]) -> rumqttc::Publish {
        rumqttc::Publish::new(topic, QoS::AtLeastOnce, payload.to_vec())
    }

    #[test]
    fn forged_malformed_and_stray_messages_are_dropped() {
        let status = loa_protocol::encode(&ReceiverStatus::offline("r1"));
        let topic = ReceiverTopic::Status.for_receiver("r1");
        assert!(matches!(
            validate(&publish(&topic, &status)),
            Some(BusEvent::Status { .. })
        ));
        let forged = ReceiverTopic::Status.for_receiver("r2");
        assert_eq!(validate(&publish(&forged, &status)), None);
        assert_eq!(validate(&publish(&topic, b"{nope")), None);
        assert_eq!(validate(&publish(&topic, b"")), None);
        assert_eq!(validate(&publish("elsewhere/r1/status", &status)), None);
        let plays = ReceiverTopic::Plays.for_receiver("r1");
        assert_eq!(
            validate(&publish(&plays, &status)),
            None,
            "a status is not a play report"
        );
        let acks = ReceiverTopic::Acks.for_receiver("r1");
        assert_eq!(validate(&publish(&acks, b"{\"report_ids\":[]}")), None);
    }
}

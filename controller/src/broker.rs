//! The embedded MQTT broker (rumqttd), so a commune can run Loa as one
//! process without installing Mosquitto (`serve --mqtt ADDR`).
//!
//! rumqttd runs its router and listener on threads of its own, away from
//! the controller's tokio runtime. [`EmbeddedBroker::start`] returns only
//! once the listener answers a real MQTT `CONNECT` with a `CONNACK`, or
//! fails with a clear error (for instance when the port is taken).
//!
//! It speaks MQTT 3.1.1 (rumqttd's "v4" server) on one address, keeps
//! retained messages and publishes last wills, and honours persistent
//! sessions (`clean_session = false`). Retained messages live in memory
//! only: after a restart the controller republishes every schedule (see
//! [`crate::distribution`]) and receivers republish their status. On a new
//! wildcard subscription rumqttd forwards at most 100 retained messages (its
//! fixed in-flight window), so a controller starting afresh learns the other
//! receivers' presence from their next heartbeat.
//!
//! rumqttd logs ordinary events (a client going away) at `error` level;
//! binaries should add [`LOG_DIRECTIVE`] to their `EnvFilter`.
//!
//! rumqttd has no way to stop a running broker, so it lives until the
//! process exits.
//!
//! Security (`serve` always uses [`EmbeddedBroker::start_with`] with
//! authentication): every client must log in, checked by
//! [`crate::mqtt_auth::MqttAuth`]; [`BrokerOptions::tls`] adds an MQTTS
//! listener ([`crate::mqtt_tls`]). rumqttd cannot restrict topics, so with
//! authentication it listens on loopback only and clients are served by
//! [`crate::mqtt_front_end`], which applies the topic ACLs
//! ([`crate::topic_acl`]). [`EmbeddedBroker::start`] runs an open broker
//! (anyone may connect, no front end) for in-process tests only.
#![cfg(feature = "embedded-broker")]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::path::PathBuf;
use std::sync::Arc;

use rumqttd::{Config, ConnectionSettings, RouterConfig, SegmentConfig, ServerSettings};

use crate::mqtt_auth::{Credentials, MqttAuth};
use crate::mqtt_tls::TlsError;

/// `tracing` directive that keeps rumqttd's chatter (it logs ordinary
/// disconnections at `error`) down to real warnings.
pub const LOG_DIRECTIVE: &str = "rumqttd=warn";

/// How long [`EmbeddedBroker::start`] waits for the listener to answer.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the embedded broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Another process (often a Mosquitto already running) holds the address.
    #[error("MQTT address {addr} is not available (is another broker running?): {source}")]
    AddrInUse {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The broker's threads could not be created.
    #[error("could not start the embedded MQTT broker: {0}")]
    Spawn(#[source] std::io::Error),
    /// The broker started but its listener never answered an MQTT CONNECT.
    #[error("embedded MQTT broker on {addr} did not start listening: {reason}")]
    NotListening { addr: SocketAddr, reason: String },
    /// The MQTTS listener could not be set up (certificate, key or address).
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// The MQTTS listener of the embedded broker.
#[derive(Debug, Clone)]
pub struct TlsListener {
    /// Where MQTTS is served.
    pub listen: SocketAddr,
    /// PEM certificate chain (server certificate first).
    pub cert: PathBuf,
    /// PEM private key of that certificate.
    pub key: PathBuf,
}

/// How [`EmbeddedBroker::start_with`] runs the broker.
pub struct BrokerOptions {
    /// Plain MQTT listen address (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Who may connect; `None` lets anyone in (tests only).
    pub auth: Option<Arc<MqttAuth>>,
    /// The credential the start-up probe logs in with; required with `auth`.
    pub probe: Option<Credentials>,
    /// An MQTTS listener in front of the plain one.
    pub tls: Option<TlsListener>,
}

/// A running embedded broker.
pub struct EmbeddedBroker {
    /// The address clients are given (the real port when port 0 was asked
    /// for): the front end's, or rumqttd's own for an open test broker.
    addr: SocketAddr,
    /// rumqttd's own listener (on loopback behind a front end).
    internal_addr: SocketAddr,
    /// The MQTTS address, if any.
    tls_addr: Option<SocketAddr>,
    /// The thread running rumqttd's servers; kept so the broker's lifetime is
    /// visible in the type even though rumqttd cannot be stopped.
    _thread: JoinHandle<()>,
}

impl EmbeddedBroker {
    /// Starts an open broker (no authentication: tests only) listening on
    /// `listen` (port 0 picks a free port) and returns once it accepts MQTT
    /// connections.
    pub fn start(listen: SocketAddr) -> Result<EmbeddedBroker, BrokerError> {
        Self::start_plain(listen, None, None)
    }

    /// Starts the broker as `options` say; returns once it accepts MQTT
    /// connections (and, with TLS, once the MQTTS listener is bound). Must be
    /// called within a tokio runtime.
    ///
    /// With `auth`, rumqttd listens on a loopback port of its own (the
    /// controller's clients use [`EmbeddedBroker::internal_url`]) and the
    /// addresses asked for are served by [`crate::mqtt_front_end`], which
    /// checks every login and topic.
    pub async fn start_with(options: BrokerOptions) -> Result<EmbeddedBroker, BrokerError> {
        // Check the certificate and key before anything listens.
        let tls_config = match &options.tls {
            Some(tls) => Some(crate::mqtt_tls::server_config(&tls.cert, &tls.key)?),
            None => None,
        };
        let probe = options.probe;
        let Some(auth) = options.auth else {
            let listen = options.listen;
            return tokio::task::spawn_blocking(move || Self::start_plain(listen, None, probe))
                .await
                .map_err(|e| BrokerError::Spawn(std::io::Error::other(e)))?;
        };
        // Fail on a taken public address before starting anything.
        let public = tokio::net::TcpListener::bind(options.listen)
            .await
            .map_err(|source| BrokerError::AddrInUse {
                addr: options.listen,
                source,
            })?;
        drop(public);
        let internal_listen = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0);
        let internal_auth = auth.clone();
        let mut broker = tokio::task::spawn_blocking(move || {
            Self::start_plain(internal_listen, Some(internal_auth), probe)
        })
        .await
        .map_err(|e| BrokerError::Spawn(std::io::Error::other(e)))??;
        let front = crate::mqtt_front_end::FrontEnd::new(auth, broker.internal_addr);
        broker.addr =
            front
                .listen(options.listen, None)
                .await
                .map_err(|source| BrokerError::AddrInUse {
                    addr: options.listen,
                    source,
                })?;
        if let (Some(tls), Some(config)) = (options.tls, tls_config) {
            let addr = front
                .listen(tls.listen, Some(config))
                .await
                .map_err(|source| TlsError::Bind {
                    addr: tls.listen,
                    source,
                })?;
            broker.tls_addr = Some(addr);
        }
        Ok(broker)
    }

    /// Starts rumqttd on `listen`; with `auth`, as the internal listener
    /// behind the front end ([`MqttAuth::verdict_internal_listener`]).
    fn start_plain(
        listen: SocketAddr,
        auth: Option<Arc<MqttAuth>>,
        probe: Option<Credentials>,
    ) -> Result<EmbeddedBroker, BrokerError> {
        // rumqttd binds on its own thread and only logs a failure there, so
        // check the address first to give the caller a real error.
        let addr = {
            let probe = TcpListener::bind(listen).map_err(|source| BrokerError::AddrInUse {
                addr: listen,
                source,
            })?;
            probe
                .local_addr()
                .map_err(|source| BrokerError::AddrInUse {
                    addr: listen,
                    source,
                })?
        };

        let mut broker = rumqttd::Broker::new(config(addr, auth));
        let thread = std::thread::Builder::new()
            .name("loa-mqtt-broker".into())
            .spawn(move || match broker.start() {
                Ok(()) => tracing::error!(%addr, "embedded MQTT broker stopped"),
                Err(e) => tracing::error!(%addr, error = %e, "embedded MQTT broker failed"),
            })
            .map_err(BrokerError::Spawn)?;

        let deadline = Instant::now() + START_TIMEOUT;
        let mut last_error = String::from("no answer");
        while Instant::now() < deadline {
            if thread.is_finished() {
                return Err(BrokerError::NotListening {
                    addr,
                    reason: "the broker thread ended (see the log for rumqttd's error)".into(),
                });
            }
            match mqtt_handshake(connect_addr(addr), probe.as_ref()) {
                Ok(()) => {
                    tracing::info!(%addr, "embedded MQTT broker listening");
                    return Ok(EmbeddedBroker {
                        addr,
                        internal_addr: addr,
                        tls_addr: None,
                        _thread: thread,
                    });
                }
                Err(e) => last_error = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(BrokerError::NotListening {
            addr,
            reason: last_error,
        })
    }

    /// The address the broker listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// URL clients use to reach the broker, e.g. `mqtt://127.0.0.1:1883`
    /// (a wildcard listen address is reached through loopback).
    pub fn url(&self) -> String {
        url("mqtt", connect_addr(self.addr))
    }

    /// URL of rumqttd's own listener, for the controller's own clients
    /// (the same as [`EmbeddedBroker::url`] without a front end).
    pub fn internal_url(&self) -> String {
        url("mqtt", connect_addr(self.internal_addr))
    }

    /// The MQTTS address, when TLS is served.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// `mqtts://HOST:PORT` of the MQTTS listener, when TLS is served.
    pub fn tls_url(&self) -> Option<String> {
        self.tls_addr.map(|a| url("mqtts", connect_addr(a)))
    }
}

fn url(scheme: &str, addr: SocketAddr) -> String {
    match addr.ip() {
        IpAddr::V4(ip) => format!("{scheme}://{ip}:{}", addr.port()),
        IpAddr::V6(ip) => format!("{scheme}://[{ip}]:{}", addr.port()),
    }
}

/// rumqttd's configuration for Loa: one MQTT 3.1.1 listener sized for a
/// commune's thousand receivers, payloads up to the protocol's limit.
fn config(listen: SocketAddr, auth: Option<Arc<MqttAuth>>) -> Config {
    let connections = ConnectionSettings {
        // Time a new TCP connection gets to send its CONNECT.
        connection_timeout_ms: 10_000,
        // Room for the largest protocol payload plus topic and header.
        max_payload_size: loa_protocol::MAX_PAYLOAD_BYTES + 64 * 1024,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        // Without this, a publish to a topic nobody subscribed to yet is
        // refused instead of being kept for later subscribers.
        dynamic_filters: true,
    };
    let mut connections = connections;
    if let Some(auth) = auth {
        connections.set_auth_handler(
            move |client_id: String, username: String, password: String| {
                let auth = auth.clone();
                async move { auth.check_internal_listener(&client_id, &username, &password) }
            },
        );
    }
    let server = ServerSettings {
        name: "loa-mqtt-v4".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    // Per-receiver topics carry few messages and their latest state is
    // retained anyway, so their in-memory logs stay small; the controller's
    // wildcard subscriptions get the larger default so reports sent while
    // it is away survive.
    let small = SegmentConfig {
        max_segment_size: 64 * 1024,
        max_segment_count: 1,
    };
    let custom_segment = ["schedule", "acks"]
        .iter()
        .map(|leaf| {
            (
                format!("{}/receivers/+/{leaf}", loa_protocol::topics::PREFIX),
                small.clone(),
            )
        })
        .collect();
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: 10_000,
            max_outgoing_packet_count: 200,
            max_segment_size: 4 * 1024 * 1024,
            max_segment_count: 4,
            custom_segment: Some(custom_segment),
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("1".to_string(), server)])),
        ..Default::default()
    }
}

/// The address to dial to reach a listener bound on `addr`.
fn connect_addr(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

/// Sends an MQTT 3.1.1 CONNECT (logging in with `credentials` if given),
/// expects an accepting CONNACK, then DISCONNECTs: proof that the broker,
/// not just a socket, is up.
fn mqtt_handshake(addr: SocketAddr, credentials: Option<&Credentials>) -> std::io::Result<()> {
    const CLIENT_ID: &[u8] = b"loa-controller-probe";
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let field = |bytes: &[u8], out: &mut Vec<u8>| {
        out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        out.extend_from_slice(bytes);
    };
    let flags = if credentials.is_some() { 0xc2 } else { 0x02 };
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, flags, 0x00, 0x0a];
    field(CLIENT_ID, &mut body);
    if let Some(c) = credentials {
        field(c.username.as_bytes(), &mut body);
        field(c.password.as_bytes(), &mut body);
    }
    // Remaining length fits one byte: ids and credentials are short.
    if body.len() > 127 {
        return Err(std::io::Error::other("probe credentials too long"));
    }
    let mut connect = vec![0x10, body.len() as u8];
    connect.extend_from_slice(&body);
    stream.write_all(&connect)?;
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack)?;
    if connack != [0x20, 0x02, 0x00, 0x00] {
        return Err(std::io::Error::other(format!(
            "unexpected CONNACK {connack:02x?}"
        )));
    }
    stream.write_all(&[0xe0, 0x00])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_is_a_clear_error() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let err = EmbeddedBroker::start(taken.local_addr().unwrap())
            .err()
            .expect("must fail");
        assert!(matches!(err, BrokerError::AddrInUse { .. }), "{err}");
    }

    #[test]
    fn port_zero_gets_a_real_port_and_answers_mqtt() {
        let broker = EmbeddedBroker::start("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_ne!(broker.local_addr().port(), 0);
        assert_eq!(
            broker.url(),
            format!("mqtt://127.0.0.1:{}", broker.local_addr().port())
        );
        mqtt_handshake(broker.local_addr(), None).unwrap();
    }
}

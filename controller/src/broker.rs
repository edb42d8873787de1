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
#![cfg(feature = "embedded-broker")]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rumqttd::{Config, ConnectionSettings, RouterConfig, SegmentConfig, ServerSettings};

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
}

/// A running embedded broker.
pub struct EmbeddedBroker {
    /// The address it listens on (the real port when port 0 was asked for).
    addr: SocketAddr,
    /// The thread running rumqttd's servers; kept so the broker's lifetime is
    /// visible in the type even though rumqttd cannot be stopped.
    _thread: JoinHandle<()>,
}

impl EmbeddedBroker {
    /// Starts the broker listening on `listen` (port 0 picks a free port)
    /// and returns once it accepts MQTT connections.
    pub fn start(listen: SocketAddr) -> Result<EmbeddedBroker, BrokerError> {
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

        let mut broker = rumqttd::Broker::new(config(addr));
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
            match mqtt_handshake(connect_addr(addr)) {
                Ok(()) => {
                    tracing::info!(%addr, "embedded MQTT broker listening");
                    return Ok(EmbeddedBroker {
                        addr,
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
        let addr = connect_addr(self.addr);
        match addr.ip() {
            IpAddr::V4(ip) => format!("mqtt://{ip}:{}", addr.port()),
            IpAddr::V6(ip) => format!("mqtt://[{ip}]:{}", addr.port()),
        }
    }
}

/// rumqttd's configuration for Loa: one MQTT 3.1.1 listener sized for a
/// commune's thousand receivers, payloads up to the protocol's limit.
fn config(listen: SocketAddr) -> Config {
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

/// Sends an MQTT 3.1.1 CONNECT, expects an accepting CONNACK, then
/// DISCONNECTs: proof that the broker, not just a socket, is up.
fn mqtt_handshake(addr: SocketAddr) -> std::io::Result<()> {
    const CLIENT_ID: &[u8] = b"loa-broker-probe";
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut connect = vec![0x10, (12 + CLIENT_ID.len()) as u8];
    connect.extend_from_slice(&[0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x0a]);
    connect.extend_from_slice(&(CLIENT_ID.len() as u16).to_be_bytes());
    connect.extend_from_slice(CLIENT_ID);
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
        mqtt_handshake(broker.local_addr()).unwrap();
    }
}

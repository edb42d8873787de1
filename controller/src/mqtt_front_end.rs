//! The embedded broker's public face: logins and topic ACLs.
//!
//! rumqttd authenticates but cannot restrict topics, so the address clients
//! are given (`--mqtt`, and `--mqtts` over TLS) is this front end, and
//! rumqttd listens on a loopback port of its own. For every connection the
//! front end:
//! 1. reads the `CONNECT` (within [`CONNECT_TIMEOUT`]) and checks the login
//!    with [`MqttAuth::verdict`]; a refusal is answered with the MQTT 3.1.1
//!    `CONNACK` "not authorized" and the connection closed;
//! 2. for a receiver, checks its last will topic, replaces its login with
//!    the per-process relay credential (the broker's own listener accepts
//!    nothing else from receivers) and passes the `CONNECT` on;
//! 3. then reads every packet the receiver sends: a `PUBLISH` to a topic
//!    it may not write, or a `SUBSCRIBE` to a filter it may not read
//!    ([`crate::topic_acl`]), is logged at `warn` and the connection is
//!    closed (MQTT 3.1.1 lets a server close the connection on an
//!    unauthorized packet); everything else goes on unchanged.
//!
//! What the broker sends back is copied as it comes (nothing per packet on
//! the live audio path). The controller's own clients use the internal
//! listener directly; if one logs in here with the internal credential it is
//! passed through without an ACL.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{Connect, Login, Packet};
use rumqttc::mqttbytes::{self, Protocol};
use sqlx::SqlitePool;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use crate::mqtt_auth::{INTERNAL_USERNAME, MqttAuth};
use crate::topic_acl;

/// Time a new connection gets to send its `CONNECT` (TLS handshake included).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Most client connections open at once (the broker's own limit).
const MAX_CONNECTIONS: usize = 10_000;

/// Largest packet a client may send: the protocol's largest payload plus
/// topic and header, as the broker allows.
const MAX_PACKET_BYTES: usize = loa_protocol::MAX_PAYLOAD_BYTES + 64 * 1024;

/// `CONNACK` refusing a connection: return code 5, not authorized.
const CONNACK_NOT_AUTHORIZED: [u8; 4] = [0x20, 0x02, 0x00, 0x05];

/// `CONNACK` refusing an unsupported protocol level (return code 1).
const CONNACK_BAD_PROTOCOL: [u8; 4] = [0x20, 0x02, 0x00, 0x01];

/// What the front end needs for every connection.
pub struct FrontEnd {
    auth: Arc<MqttAuth>,
    /// The broker's internal listener.
    upstream: SocketAddr,
}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("network: {0}")]
    Io(#[from] std::io::Error),
    #[error("no CONNECT within {0:?}")]
    ConnectTimeout(Duration),
    #[error("malformed MQTT packet: {0}")]
    Malformed(String),
    #[error("first packet is not CONNECT")]
    NotConnect,
    #[error("a second CONNECT")]
    SecondConnect,
    #[error("unsupported MQTT protocol level (only 3.1.1)")]
    Protocol,
    #[error("login refused: {0}")]
    Refused(crate::mqtt_auth::Refusal),
    #[error("denied: {0}")]
    Denied(String),
}

impl FrontEnd {
    /// A front end checking logins and topics with `auth`, handing
    /// connections on to the broker's internal listener `upstream`.
    pub fn new(auth: Arc<MqttAuth>, upstream: SocketAddr) -> Arc<FrontEnd> {
        Arc::new(FrontEnd { auth, upstream })
    }

    /// Listens on `listen` (MQTT, or MQTTS with `tls`) and serves every
    /// connection on the current tokio runtime. Returns the bound address.
    pub async fn listen(
        self: &Arc<Self>,
        listen: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let acceptor = tls.map(TlsAcceptor::from);
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let front = self.clone();
        let scheme = if acceptor.is_some() { "MQTTS" } else { "MQTT" };
        tokio::spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "{scheme} accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, "too many {scheme} connections; refusing one");
                    continue;
                };
                let front = front.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let _ = stream.set_nodelay(true);
                    let outcome = match acceptor {
                        None => front.serve(stream).await,
                        Some(acceptor) => {
                            match tokio::time::timeout(CONNECT_TIMEOUT, acceptor.accept(stream))
                                .await
                            {
                                Ok(Ok(tls)) => front.serve(tls).await,
                                Ok(Err(e)) => Err(SessionError::Io(e)),
                                Err(_) => Err(SessionError::ConnectTimeout(CONNECT_TIMEOUT)),
                            }
                        }
                    };
                    match outcome {
                        Ok(()) => {}
                        Err(SessionError::Io(error)) => {
                            tracing::debug!(%peer, %error, "{scheme} connection ended")
                        }
                        Err(error) => {
                            tracing::warn!(%peer, %error, "{scheme} connection closed")
                        }
                    }
                });
            }
        });
        tracing::info!(%addr, "{scheme} listening (front end of the embedded broker)");
        Ok(addr)
    }

    /// One client connection, from its `CONNECT` to its end.
    async fn serve<S>(&self, client: S) -> Result<(), SessionError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let (mut from_client, mut to_client) = tokio::io::split(client);
        let mut buffer = BytesMut::with_capacity(4096);
        let first =
            tokio::time::timeout(CONNECT_TIMEOUT, next_packet(&mut from_client, &mut buffer))
                .await
                .map_err(|_| SessionError::ConnectTimeout(CONNECT_TIMEOUT))??;
        let Some(first) = first else {
            return Ok(());
        };
        let Packet::Connect(mut connect) = parse(&first)? else {
            return Err(SessionError::NotConnect);
        };
        if connect.protocol != Protocol::V4 {
            let _ = to_client.write_all(&CONNACK_BAD_PROTOCOL).await;
            return Err(SessionError::Protocol);
        }
        let who = match self.admit(&connect).await {
            Ok(who) => who,
            Err(error) => {
                let _ = to_client.write_all(&CONNACK_NOT_AUTHORIZED).await;
                let _ = to_client.shutdown().await;
                return Err(error);
            }
        };
        if let Who::Receiver(id) = &who {
            let relay = self.auth.relay_credentials();
            connect.login = Some(Login::new(relay.username.clone(), relay.password.clone()));
            tracing::debug!(receiver = %id, "MQTT receiver admitted by the front end");
        }
        let mut connect_bytes = BytesMut::new();
        connect
            .write(&mut connect_bytes)
            .map_err(|e| SessionError::Malformed(e.to_string()))?;

        // A client that gave up waiting (rumqttc waits 5 s for its CONNACK)
        // has closed its side; handing its stale CONNECT on would make the
        // broker drop the newer connection it has opened under the same id.
        if client_gave_up(&mut from_client, &mut buffer).await? {
            return Err(SessionError::ConnectTimeout(CONNECT_TIMEOUT));
        }
        let upstream = TcpStream::connect(self.upstream).await?;
        upstream.set_nodelay(true)?;
        let (from_broker, mut to_broker) = upstream.into_split();
        to_broker.write_all(&connect_bytes).await?;

        let downstream = async move {
            let mut from_broker = BufReader::with_capacity(64 * 1024, from_broker);
            let copied = tokio::io::copy_buf(&mut from_broker, &mut to_client).await;
            let _ = to_client.shutdown().await;
            copied.map(|_| ())
        };
        let upstream = async move {
            let outcome = self
                .forward(&who, &mut from_client, &mut buffer, &mut to_broker)
                .await;
            let _ = to_broker.shutdown().await;
            outcome
        };
        // Whichever side ends first ends the connection.
        tokio::select! {
            result = downstream => result.map_err(SessionError::Io),
            result = upstream => result,
        }
    }

    /// Whether this login may proceed, and as whom.
    async fn admit(&self, connect: &Connect) -> Result<Who, SessionError> {
        let (username, password) = connect
            .login
            .as_ref()
            .map(|l| (l.username.as_str(), l.password.as_str()))
            .unwrap_or(("", ""));
        if let Err(reason) = self
            .auth
            .verdict(&connect.client_id, username, password)
            .await
        {
            tracing::warn!(client_id = %connect.client_id, username, %reason, "refused MQTT connection");
            return Err(SessionError::Refused(reason));
        }
        if username == INTERNAL_USERNAME {
            return Ok(Who::Controller);
        }
        let id = connect.client_id.clone();
        if let Some(will) = &connect.last_will
            && !topic_acl::may_publish(&id, &will.topic)
        {
            tracing::warn!(receiver = %id, topic = %will.topic, "refused MQTT connection: last will on a topic the receiver may not write");
            return Err(SessionError::Denied(format!(
                "last will on {:?}",
                will.topic
            )));
        }
        Ok(Who::Receiver(id))
    }

    /// Passes the client's packets on to the broker, checking each against
    /// the ACL of `who`.
    async fn forward<R, W>(
        &self,
        who: &Who,
        from_client: &mut R,
        buffer: &mut BytesMut,
        to_broker: &mut W,
    ) -> Result<(), SessionError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let Who::Receiver(id) = who else {
            // The controller's own credential: no ACL.
            to_broker.write_all(buffer).await?;
            tokio::io::copy(from_client, to_broker).await?;
            return Ok(());
        };
        while let Some(frame) = next_packet(from_client, buffer).await? {
            self.check(id, &frame).await?;
            to_broker.write_all(&frame).await?;
        }
        Ok(())
    }

    /// Checks one packet a receiver sent.
    async fn check(&self, id: &str, frame: &[u8]) -> Result<(), SessionError> {
        match frame[0] >> 4 {
            // CONNECT
            1 => Err(SessionError::SecondConnect),
            // PUBLISH
            3 => {
                let Packet::Publish(publish) = parse(frame)? else {
                    return Err(SessionError::Malformed("not a PUBLISH".into()));
                };
                if topic_acl::may_publish(id, &publish.topic) {
                    Ok(())
                } else {
                    tracing::warn!(receiver = %id, topic = %publish.topic, "MQTT publish denied by the topic ACL; closing the connection");
                    Err(SessionError::Denied(format!(
                        "publish to {:?}",
                        publish.topic
                    )))
                }
            }
            // SUBSCRIBE
            8 => {
                let Packet::Subscribe(subscribe) = parse(frame)? else {
                    return Err(SessionError::Malformed("not a SUBSCRIBE".into()));
                };
                let mut zone: Option<Option<String>> = None;
                for filter in &subscribe.filters {
                    let path = filter.path.as_str();
                    if topic_acl::may_subscribe(id, None, path) {
                        continue;
                    }
                    if topic_acl::is_zone_live_topic(path) {
                        if zone.is_none() {
                            zone = Some(self.zone_of(id).await?);
                        }
                        if topic_acl::may_subscribe(
                            id,
                            zone.as_ref().and_then(|z| z.as_deref()),
                            path,
                        ) {
                            continue;
                        }
                    }
                    tracing::warn!(receiver = %id, filter = %path, "MQTT subscription denied by the topic ACL; closing the connection");
                    return Err(SessionError::Denied(format!("subscription to {path:?}")));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The zone receiver `id` is registered in now.
    async fn zone_of(&self, id: &str) -> Result<Option<String>, SessionError> {
        zone_of(self.auth.db(), id).await.map_err(|error| {
            tracing::error!(receiver = %id, %error, "cannot look up a receiver's zone for its topic ACL");
            SessionError::Denied("zone look-up failed".into())
        })
    }
}

async fn zone_of(db: &SqlitePool, id: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT zone_id FROM receivers WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
}

/// Who a connection belongs to.
enum Who {
    Controller,
    Receiver(String),
}

/// Reads the next whole MQTT packet (fixed header included); `None` at a
/// clean end of stream between packets.
async fn next_packet<R>(
    reader: &mut R,
    buffer: &mut BytesMut,
) -> Result<Option<BytesMut>, SessionError>
where
    R: AsyncRead + Unpin,
{
    loop {
        match mqttbytes::check(buffer.iter(), MAX_PACKET_BYTES) {
            Ok(header) => return Ok(Some(buffer.split_to(header.frame_length()))),
            Err(mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(e) => return Err(SessionError::Malformed(e.to_string())),
        }
        buffer.reserve(4096);
        if reader.read_buf(buffer).await? == 0 {
            return if buffer.is_empty() {
                Ok(None)
            } else {
                Err(SessionError::Malformed(
                    "connection ended inside a packet".into(),
                ))
            };
        }
    }
}

/// Whether the client has closed its side already (checked without
/// waiting; anything it sent meanwhile stays in `buffer`).
async fn client_gave_up<R>(reader: &mut R, buffer: &mut BytesMut) -> std::io::Result<bool>
where
    R: AsyncRead + Unpin,
{
    buffer.reserve(4096);
    match tokio::time::timeout(Duration::ZERO, reader.read_buf(buffer)).await {
        Err(_) => Ok(false),
        Ok(Ok(0)) => Ok(true),
        Ok(Ok(_)) => Ok(false),
        Ok(Err(e)) => Err(e),
    }
}

/// Decodes one whole packet.
fn parse(frame: &[u8]) -> Result<Packet, SessionError> {
    Packet::read(&mut BytesMut::from(frame), MAX_PACKET_BYTES)
        .map_err(|e| SessionError::Malformed(e.to_string()))
}

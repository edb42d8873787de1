//! MQTT over TLS (rustls).
//!
//! - Server side (`serve --mqtts ADDR --mqtt-tls-cert PEM --mqtt-tls-key PEM`):
//!   rumqttd is built without its TLS listener, so [`start_proxy`] runs a
//!   rustls terminator on `ADDR` that carries each decrypted connection to
//!   the embedded broker's plain listener over loopback. Clients still
//!   authenticate in their `CONNECT` (see [`crate::mqtt_auth`]).
//! - Client side (`--broker mqtts://HOST:PORT --broker-ca PEM`): [`read_ca`]
//!   checks the CA file and returns it for rumqttc's rustls transport; a
//!   server certificate it does not sign fails the handshake, and the bus
//!   logs the TLS error on every attempt.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Time a client gets to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most MQTTS connections open at once (the broker's own limit).
const MAX_CONNECTIONS: usize = 10_000;

/// A TLS file or listener that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the {what} {path} holds no PEM certificate")]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("the {what} {path} is not valid PEM: {reason}")]
    BadPem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("the MQTT TLS key {path} holds no PEM private key: {reason}")]
    NoKey { path: PathBuf, reason: String },
    #[error("the MQTT TLS certificate and key cannot be used together: {0}")]
    Config(String),
    #[error("cannot listen for MQTTS on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The certificates in the PEM file `path` (at least one).
pub fn read_certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            what,
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Reads and checks a CA certificate file for an `mqtts://` broker; returns
/// its PEM text for rumqttc.
pub fn read_ca(path: &Path) -> Result<Vec<u8>, TlsError> {
    read_certificates("broker CA certificate", path)?;
    std::fs::read(path).map_err(|source| TlsError::Read {
        what: "broker CA certificate",
        path: path.to_path_buf(),
        source,
    })
}

/// The rustls server configuration for a certificate chain and its key.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = read_certificates("MQTT TLS certificate", cert)?;
    let key_pem = std::fs::read(key).map_err(|source| TlsError::Read {
        what: "MQTT TLS key",
        path: key.to_path_buf(),
        source,
    })?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::NoKey {
        path: key.to_path_buf(),
        reason: e.to_string(),
    })?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(Arc::new(config))
}

/// Listens for MQTTS on `listen` and relays each connection, decrypted, to
/// the plain listener at `upstream`. Returns the bound address; the relay
/// runs on the current tokio runtime until it shuts down.
pub async fn start_proxy(
    listen: SocketAddr,
    config: Arc<rustls::ServerConfig>,
    upstream: SocketAddr,
) -> Result<SocketAddr, TlsError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| TlsError::Bind {
            addr: listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| TlsError::Bind {
        addr: listen,
        source,
    })?;
    let acceptor = TlsAcceptor::from(config);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "MQTTS accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "too many MQTTS connections; refusing one");
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(error) = relay(acceptor, stream, upstream).await {
                    tracing::warn!(%peer, %error, "MQTTS connection failed");
                }
            });
        }
    });
    tracing::info!(%addr, "MQTTS listening (TLS relay to the embedded broker)");
    Ok(addr)
}

/// One connection: TLS handshake, then bytes both ways until either side closes.
async fn relay(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    upstream: SocketAddr,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
        .await
        .map_err(|_| std::io::Error::other("TLS handshake timed out"))??;
    let mut plain = TcpStream::connect(upstream).await?;
    plain.set_nodelay(true)?;
    match tokio::io::copy_bidirectional(&mut tls, &mut plain).await {
        Ok(_) => Ok(()),
        // A peer vanishing mid-stream is ordinary for MQTT clients.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_bad_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let err = read_ca(&missing).unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }), "{err}");
        assert!(err.to_string().contains("nope.pem"), "{err}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let err = read_ca(&junk).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
        let err = server_config(&junk, &junk).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
    }
}

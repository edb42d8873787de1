//! HTTPS for the API (`serve --https-cert PEM --https-key PEM`).
//!
//! [`TlsListener`] is an [`axum::serve::Listener`] whose `accept` yields
//! finished TLS streams. One task accepts TCP connections; each handshake
//! runs in its own task with a [`HANDSHAKE_TIMEOUT`], and finished streams
//! reach axum through a bounded channel — so a slow or broken client holds
//! up nobody else. Failed handshakes are logged and never end the server.
//! The accept task ends (and the port closes) when the listener is dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, AlertDescription};
use tokio_rustls::server::TlsStream;

use crate::tls_files::{self, Listener, TlsError};

/// Time a client gets to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most handshakes in progress at once; connections beyond are closed.
const MAX_HANDSHAKES: usize = 1024;

/// Finished handshakes waiting for axum to take them.
const READY_QUEUE: usize = 64;

/// The rustls configuration of the HTTPS listener (HTTP/1.1, the protocol
/// the API is served with).
pub fn server_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = tls_files::server_config(Listener::Https, cert, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A TCP listener that hands out TLS streams whose handshake is done.
pub struct TlsListener {
    /// Finished handshakes with their peer address, from the accept task.
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    /// The address the TCP listener is bound to.
    local_addr: SocketAddr,
}

impl TlsListener {
    /// Serves TLS with `config` on the bound `listener`; must be called on
    /// a tokio runtime (it spawns the accept task).
    pub fn new(
        listener: TcpListener,
        config: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<TlsListener> {
        let local_addr = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        tokio::spawn(accept_loop(listener, TlsAcceptor::from(config), tx));
        Ok(TlsListener { ready, local_addr })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept task only stops once this listener is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local_addr)
    }
}

/// Accepts TCP connections until the [`TlsListener`] is dropped, starting a
/// handshake task for each.
async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let (stream, peer) = tokio::select! {
            () = ready.closed() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    if !matches!(
                        error.kind(),
                        std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset
                    ) {
                        // E.g. out of file descriptors: wait for some to close.
                        tracing::warn!(%error, "HTTPS accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many HTTPS handshakes in progress; closing a connection");
            continue;
        };
        let (acceptor, ready) = (acceptor.clone(), ready.clone());
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
            drop(permit);
            match handshake {
                Ok(Ok(tls)) => {
                    // Fails only when the server is shutting down.
                    let _ = ready.send((tls, peer)).await;
                }
                Ok(Err(error)) => log_failed_handshake(peer, &error),
                Err(_) => tracing::debug!(%peer, "HTTPS handshake timed out"),
            }
        });
    }
}

/// A client refusing our certificate is worth a warning (wrong CA on the
/// device, expired certificate); scanners and plain-HTTP requests are not.
fn log_failed_handshake(peer: SocketAddr, error: &std::io::Error) {
    let alert = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(|e| match e {
            rustls::Error::AlertReceived(alert) => Some(*alert),
            _ => None,
        });
    match alert {
        Some(
            alert @ (AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate),
        ) => tracing::warn!(
            %peer,
            ?alert,
            "an HTTPS client refused the controller's certificate (does it trust the CA that signed --https-cert?)"
        ),
        _ => tracing::debug!(%peer, %error, "HTTPS handshake failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_name_the_flag_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("server.pem");
        let err = server_config(&missing, &dir.path().join("server.key")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("HTTPS certificate"), "{text}");
        assert!(text.contains("server.pem"), "{text}");
    }
}

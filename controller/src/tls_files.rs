//! PEM files of the controller's TLS listeners (`--mqtts` and `--https-*`)
//! and of the CAs it trusts: read once at start-up into rustls types, every
//! error naming the flag's file, so a bad certificate or key stops the
//! controller with a clear message instead of failing handshakes later.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

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
    #[error("the {what} {path} holds no PEM private key: {reason}")]
    NoKey {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("the {what} certificate {cert} and key {key} cannot be used together: {reason}")]
    Config {
        what: &'static str,
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    /// The embedded broker's MQTTS listener (`--mqtts`) cannot be bound.
    #[error("cannot listen for MQTTS on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The certificates in the PEM file `path` (at least one); `what` names the
/// file in errors, e.g. "HTTPS certificate".
pub fn read_certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
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

/// The (first) private key in the PEM file `path`.
pub fn read_private_key(
    what: &'static str,
    path: &Path,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(what, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::NoKey {
        what,
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Which TLS listener a certificate and key are for (names them in errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The embedded broker's `--mqtts` (`--mqtt-tls-cert`, `--mqtt-tls-key`).
    Mqtt,
    /// The HTTP API (`--https-cert`, `--https-key`).
    Https,
}

impl Listener {
    fn names(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Listener::Mqtt => ("MQTT TLS", "MQTT TLS certificate", "MQTT TLS key"),
            Listener::Https => ("HTTPS", "HTTPS certificate", "HTTPS key"),
        }
    }
}

/// The rustls server configuration of `listener` from its PEM certificate
/// chain (server certificate first) and its key; checks that the two
/// belong together.
pub fn server_config(
    listener: Listener,
    cert: &Path,
    key: &Path,
) -> Result<rustls::ServerConfig, TlsError> {
    let (what, cert_what, key_what) = listener.names();
    let chain = read_certificates(cert_what, cert)?;
    let key_der = read_private_key(key_what, key)?;
    rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| TlsError::Config {
            what,
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            reason: e.to_string(),
        })
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let err = server_config(Listener::Https, &missing, &missing).unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }), "{err}");
        assert!(err.to_string().contains("HTTPS certificate"), "{err}");
        assert!(err.to_string().contains("nope.pem"), "{err}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a key").unwrap();
        let err = read_private_key("HTTPS key", &junk).unwrap_err();
        assert!(matches!(err, TlsError::NoKey { .. }), "{err}");
        assert!(err.to_string().contains("junk.pem"), "{err}");
    }
}

//! MQTT over TLS (rustls).
//!
//! - Server side (`serve --mqtts ADDR --mqtt-tls-cert PEM --mqtt-tls-key PEM`):
//!   rumqttd is built without its TLS listener; [`server_config`] is what
//!   the broker's front end ([`crate::mqtt_front_end`]) terminates TLS with
//!   before it checks the login and topics like on the plain listener.
//! - Client side (`--broker mqtts://HOST:PORT --broker-ca PEM`): [`read_ca`]
//!   checks the CA file and returns it for rumqttc's rustls transport; a
//!   server certificate it does not sign fails the handshake, and the bus
//!   logs the TLS error on every attempt.
//!
//! The PEM files are read by [`crate::tls_files`], shared with HTTPS.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls;

use crate::tls_files::{self, Listener};
pub use crate::tls_files::{TlsError, read_certificates};

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
    Ok(Arc::new(tls_files::server_config(
        Listener::Mqtt,
        cert,
        key,
    )?))
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

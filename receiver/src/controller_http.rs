//! How the receiver reaches the controller's HTTP API — enrollment
//! ([`crate::enroll`]), the controller key ([`crate::trust`]) and audio
//! downloads ([`crate::fetcher`]) all build their client here, so
//! `--controller https://HOST:PORT` and `--controller-ca PEM` apply to all of
//! them. HTTPS trusts the system's CAs plus, with `--controller-ca`, the
//! private CA that signed the controller's certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A `--controller-ca` file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot read the controller CA certificate --controller-ca {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the controller CA certificate --controller-ca {path} is not valid PEM: {reason}")]
    BadPem { path: PathBuf, reason: String },
    #[error("the controller CA certificate --controller-ca {path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("the controller CA certificate --controller-ca {path} cannot be used: {reason}")]
    Unusable { path: PathBuf, reason: String },
    #[error("--controller-ca is only for an https:// controller, got --controller {0:?}")]
    PlainController(String),
}

/// The TLS trust of the receiver's HTTPS requests to the controller.
/// The default trusts the system's CAs only; cloning is cheap.
#[derive(Clone, Default)]
pub struct ControllerTls {
    /// `--controller-ca`: its file and certificates, trusted besides the system's.
    ca: Option<Arc<(PathBuf, Vec<reqwest::Certificate>)>>,
}

impl std::fmt::Debug for ControllerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerTls")
            .field("ca", &self.ca.as_ref().map(|ca| &ca.0))
            .finish()
    }
}

impl ControllerTls {
    /// Trust also the CA certificate(s) in the PEM file `path`; checked now,
    /// so a missing or unusable file stops start-up with a clear error.
    pub fn with_ca_file(path: &Path) -> Result<ControllerTls, CaError> {
        let pem = std::fs::read(path).map_err(|source| CaError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| CaError::BadPem {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if certs.is_empty() {
            return Err(CaError::NoCertificate {
                path: path.to_path_buf(),
            });
        }
        let tls = ControllerTls {
            ca: Some(Arc::new((path.to_path_buf(), certs))),
        };
        // rustls parses the certificates only when a client is built.
        tls.client(|b| b).map_err(|e| CaError::Unusable {
            path: path.to_path_buf(),
            reason: error_chain(&e),
        })?;
        Ok(tls)
    }

    /// The trust for `--controller URL [--controller-ca PEM]`: the CA
    /// file if given (refused with a plain `http://` URL, where it would
    /// silently do nothing), else the system's CAs only.
    pub fn for_controller(controller: &str, ca: Option<&Path>) -> Result<ControllerTls, CaError> {
        match ca {
            None => Ok(ControllerTls::default()),
            Some(_) if !controller.trim_start().starts_with("https://") => {
                Err(CaError::PlainController(controller.to_string()))
            }
            Some(path) => Self::with_ca_file(path),
        }
    }

    /// The file given with `--controller-ca`, if any.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca.as_ref().map(|ca| ca.0.as_path())
    }

    /// A client for requests to the controller with this trust; `configure`
    /// adds the caller's timeouts.
    ///
    /// A system without CA certificates (a minimal image) cannot build a
    /// client that trusts only the system's CAs; without `--controller-ca`
    /// the client then trusts no CA at all: plain `http://` still works,
    /// and an `https://` controller fails with an unknown-issuer error.
    pub fn client(
        &self,
        configure: impl Fn(reqwest::ClientBuilder) -> reqwest::ClientBuilder,
    ) -> reqwest::Result<reqwest::Client> {
        let builder = reqwest::Client::builder();
        match &self.ca {
            // Merged with the system's CAs, so a public certificate works too.
            Some(ca) => configure(builder.tls_certs_merge(ca.1.iter().cloned())).build(),
            None => configure(builder).build().or_else(|error| {
                tracing::warn!(
                    error = %error_chain(&error),
                    "no usable system CA certificates; an https:// controller needs --controller-ca"
                );
                configure(reqwest::Client::builder().tls_certs_only([])).build()
            }),
        }
    }
}

/// An error with its causes, e.g. `error sending request: …: invalid peer
/// certificate: UnknownIssuer` (reqwest's own message hides the TLS reason).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_ca_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let err = ControllerTls::with_ca_file(&missing).unwrap_err();
        assert!(matches!(err, CaError::Read { .. }), "{err}");
        assert!(err.to_string().contains("nope.pem"), "{err}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let err = ControllerTls::with_ca_file(&junk).unwrap_err();
        assert!(
            matches!(err, CaError::NoCertificate { .. } | CaError::BadPem { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("--controller-ca"), "{err}");
        let none = ControllerTls::for_controller("https://10.0.0.1:8443", None).unwrap();
        assert!(none.ca_file().is_none());
        let err = ControllerTls::for_controller("http://10.0.0.1:8080", Some(&junk)).unwrap_err();
        assert!(matches!(err, CaError::PlainController(_)), "{err}");
        ControllerTls::default().client(|b| b).unwrap();
    }
}

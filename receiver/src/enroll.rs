//! Enrollment (see [`loa_protocol::enroll`]): how a receiver started
//! without `--token` gets its credential with no shared secret.
//!
//! - Its Ed25519 device key is created once and kept in the cache directory
//!   ([`DEVICE_KEY_FILE`], mode 0600, written atomically).
//! - It prints its enrollment code (`Mã đăng ký: ABCD-EFGH`), sends an
//!   enrollment request, then claims its credential with a signed claim
//!   every few seconds (backing off up to [`MAX_POLL`]) until a technician
//!   accepts it.
//! - The answer's controller key is pinned (written where [`crate::trust`]
//!   keeps it, so trust on first use is never needed), then the id and
//!   token are kept in [`CREDENTIALS_FILE`] (0600). Next start uses them
//!   directly.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::Utc;
use loa_protocol::enroll::{self, EnrollmentGrant, EnrollmentRequest};
use loa_protocol::signed::{self, SigningKey};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::controller_http::{ControllerTls, error_chain};
use crate::fsutil;
use crate::trust;

/// The device's own signing key (hex of the 32-byte secret).
pub const DEVICE_KEY_FILE: &str = "device.key";
/// The id and token received at enrollment.
pub const CREDENTIALS_FILE: &str = "credentials.json";
/// Longest wait between two claims.
pub const MAX_POLL: Duration = Duration::from_secs(30);

/// What enrollment gives a receiver, kept in [`CREDENTIALS_FILE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// The id the technician chose.
    pub receiver_id: String,
    /// Bearer token for audio downloads and the MQTT password.
    pub token: String,
}

/// How to enroll.
#[derive(Debug, Clone)]
pub struct EnrollOptions {
    /// Controller base URL.
    pub controller: String,
    /// Shown to the technician next to the code.
    pub hostname: String,
    /// `--id`, suggested to the technician.
    pub requested_id: Option<String>,
    /// First wait between claims (it grows by half each time up to [`MAX_POLL`]).
    pub poll: Duration,
    /// Trust for an `https://` controller (`--controller-ca`).
    pub tls: ControllerTls,
}

/// Writes `bytes` to `path` atomically, readable by the owner only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let stem = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut temp = fsutil::temp_file_in(dir, &stem)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        temp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    temp.write_all(bytes)?;
    fsutil::persist(temp, path)
}

/// The credentials kept from an earlier enrollment, if any.
pub fn stored_credentials(dir: &Path) -> anyhow::Result<Option<Credentials>> {
    let path = dir.join(CREDENTIALS_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).with_context(|| {
            format!(
                "{} is damaged; delete it (and {DEVICE_KEY_FILE}) to enroll again",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The device key kept in `dir`, created on first use.
pub fn device_key(dir: &Path) -> anyhow::Result<SigningKey> {
    let path = dir.join(DEVICE_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let bytes: [u8; 32] = hex::decode(text.trim())
                .ok()
                .and_then(|b| b.try_into().ok())
                .with_context(|| {
                    format!(
                        "{} is damaged; delete it to enroll again with a new key",
                        path.display()
                    )
                })?;
            Ok(SigningKey::from_bytes(&bytes))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let key = SigningKey::from_bytes(&rand_secret()?);
            write_private(
                &path,
                format!("{}\n", hex::encode(key.to_bytes())).as_bytes(),
            )
            .with_context(|| format!("cannot keep the device key in {}", path.display()))?;
            tracing::info!(path = %path.display(), "created this device's key pair");
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// 32 random bytes from the operating system.
fn rand_secret() -> anyhow::Result<[u8; 32]> {
    use std::io::Read as _;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read random bytes from /dev/urandom")?;
    Ok(bytes)
}

/// This machine's host name (for the technician), or `loa-receiver`.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "loa-receiver".into())
}

/// Prints the code where a technician sees it (stdout and the log).
fn announce(code: &str, controller: &str) {
    println!("==============================================");
    println!("  Mã đăng ký: {code}");
    println!("  Enrollment code: {code}");
    println!("  Kỹ thuật viên: chấp nhận mã này trên bảng điều khiển ({controller}), mục Cụm loa.");
    println!("  Technician: accept this code in the console (Receivers page).");
    println!("==============================================");
    tracing::warn!(%code, %controller, "Mã đăng ký: {code} — waiting for a technician to accept this device");
}

/// Enrolls this receiver (see the module docs) unless credentials are kept
/// already. Returns `None` if `stop` is cancelled first; an error if the
/// enrollment was rejected or cannot go on without a human.
pub async fn enroll(
    dir: &Path,
    options: &EnrollOptions,
    stop: &CancellationToken,
) -> anyhow::Result<Option<Credentials>> {
    if let Some(kept) = stored_credentials(dir)? {
        return Ok(Some(kept));
    }
    let key = device_key(dir)?;
    let public_key = signed::public_key_base64(&key.verifying_key());
    let code = enroll::enrollment_code(&key.verifying_key());
    announce(&code, &options.controller);
    let base = format!(
        "{}/api/v1/enrollments",
        options.controller.trim_end_matches('/')
    );
    let client = options
        .tls
        .client(|b| b.timeout(Duration::from_secs(10)))
        .context("cannot build the HTTP client")?;
    let request = EnrollmentRequest {
        public_key,
        code: code.clone(),
        hostname: options.hostname.clone(),
        requested_id: options.requested_id.clone(),
    };
    let mut requested = false;
    let mut wait = options.poll;
    let mut polls = 0u64;
    loop {
        if !requested {
            match client.post(&base).json(&request).send().await {
                Ok(r) if r.status().is_success() => {
                    tracing::info!(%code, "enrollment request sent; waiting for acceptance");
                    requested = true;
                }
                Ok(r) if r.status() == StatusCode::FORBIDDEN => {
                    bail!(
                        "the controller rejected this device's enrollment (code {code}); \
                           delete {DEVICE_KEY_FILE} in the cache directory to start over with a new key"
                    )
                }
                Ok(r) => {
                    let status = r.status();
                    let body = r.text().await.unwrap_or_default();
                    tracing::warn!(%status, %body, retry_in = ?wait, "enrollment request refused");
                }
                Err(e) => {
                    tracing::warn!(error = %error_chain(&e), url = %base, retry_in = ?wait, "cannot reach the controller to enroll");
                }
            }
        }
        if requested {
            let claim = enroll::sign_claim(&key, Utc::now());
            match client
                .post(format!("{base}/claim"))
                .json(&claim)
                .send()
                .await
            {
                Ok(r) if r.status() == StatusCode::OK => {
                    let grant: EnrollmentGrant =
                        r.json().await.context("malformed enrollment answer")?;
                    return keep(dir, grant).map(Some);
                }
                Ok(r) if r.status() == StatusCode::ACCEPTED => {
                    polls += 1;
                    if polls.is_multiple_of(20) {
                        tracing::info!(%code, "Mã đăng ký: {code} — still waiting for a technician");
                    }
                }
                Ok(r) if matches!(r.status(), StatusCode::NOT_FOUND | StatusCode::GONE) => {
                    tracing::info!(%code, "the controller no longer has this enrollment request; sending it again");
                    requested = false;
                }
                Ok(r) if r.status() == StatusCode::FORBIDDEN => {
                    bail!(
                        "the controller rejected this device's enrollment (code {code}); \
                           delete {DEVICE_KEY_FILE} in the cache directory to start over with a new key"
                    )
                }
                Ok(r) if r.status() == StatusCode::CONFLICT => {
                    bail!(
                        "the controller already handed out this device's credential, and it is not \
                           kept here; have a technician issue a new token and start with --id and --token"
                    )
                }
                Ok(r) => {
                    let status = r.status();
                    let body = r.text().await.unwrap_or_default();
                    tracing::warn!(%status, %body, retry_in = ?wait, "enrollment claim refused (is this device's clock right?)");
                }
                Err(e) => {
                    tracing::warn!(error = %error_chain(&e), retry_in = ?wait, "cannot reach the controller to collect the credential");
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(None),
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait + wait / 2).min(MAX_POLL);
    }
}

/// Pins the controller's key, then keeps the credentials.
fn keep(dir: &Path, grant: EnrollmentGrant) -> anyhow::Result<Credentials> {
    let key = signed::parse_public_key(&grant.controller_key)
        .map_err(|e| anyhow::anyhow!("the controller key in the enrollment answer: {e}"))?;
    if !loa_protocol::is_valid_id(&grant.receiver_id) || grant.token.is_empty() {
        bail!("the enrollment answer has an invalid receiver id or an empty token");
    }
    let key_path = dir.join(trust::KEY_FILE);
    write_private(
        &key_path,
        format!("{}\n", signed::public_key_base64(&key)).as_bytes(),
    )
    .with_context(|| format!("cannot pin the controller key in {}", key_path.display()))?;
    let credentials = Credentials {
        receiver_id: grant.receiver_id,
        token: grant.token,
    };
    let path = dir.join(CREDENTIALS_FILE);
    write_private(&path, &loa_protocol::encode(&credentials))
        .with_context(|| format!("cannot keep the credentials in {}", path.display()))?;
    tracing::info!(receiver = %credentials.receiver_id, zone = %grant.zone,
        controller_key = %signed::fingerprint(&key),
        "enrolled: credential received and controller key pinned");
    println!(
        "Đã đăng ký: loa \"{}\" (khu vực \"{}\"). Enrolled as {}.",
        credentials.receiver_id, grant.zone, credentials.receiver_id
    );
    Ok(credentials)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_key_is_created_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let first = device_key(dir.path()).unwrap();
        let again = device_key(dir.path()).unwrap();
        assert_eq!(first.to_bytes(), again.to_bytes());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join(DEVICE_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(dir.path().join(DEVICE_KEY_FILE), "garbage").unwrap();
        assert!(device_key(dir.path()).is_err());
    }

    #[test]
    fn a_grant_pins_the_key_and_keeps_the_credentials() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(stored_credentials(dir.path()).unwrap(), None);
        let controller = SigningKey::from_bytes(&[9; 32]).verifying_key();
        let grant = EnrollmentGrant {
            receiver_id: "loa-cho".into(),
            token: "t0k3n".into(),
            controller_key: signed::public_key_base64(&controller),
            zone: "thon-1".into(),
        };
        let kept = keep(dir.path(), grant.clone()).unwrap();
        assert_eq!(stored_credentials(dir.path()).unwrap(), Some(kept));
        let trust = trust::Trust::load(dir.path(), None).unwrap();
        assert_eq!(trust.key(), Some(controller));
        let bad = EnrollmentGrant {
            receiver_id: "../x".into(),
            ..grant
        };
        assert!(keep(dir.path(), bad).is_err());
    }
}

//! Test certificates made with `openssl` (P-256, valid two days): a CA, a
//! server certificate it signs for `127.0.0.1` and `localhost`, and a second,
//! unrelated CA — for the controller's MQTTS and HTTPS listeners and the
//! clients that must (or must not) trust them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};

/// The PEM files generated in one directory.
#[derive(Debug, Clone)]
pub struct TestCerts {
    /// The CA that signed the server certificate (`ca.pem`).
    pub ca: PathBuf,
    /// Another CA, which signed nothing here (`other-ca.pem`).
    pub other_ca: PathBuf,
    /// Server certificate for `IP:127.0.0.1` and `DNS:localhost` (`server.pem`).
    pub server_cert: PathBuf,
    /// Its private key (`server.key`).
    pub server_key: PathBuf,
}

impl TestCerts {
    /// Generates the files in `dir`.
    pub fn generate(dir: &Path) -> Result<TestCerts> {
        make_ca(dir, "ca")?;
        make_ca(dir, "other-ca")?;
        make_server_cert(dir)?;
        Ok(TestCerts {
            ca: dir.join("ca.pem"),
            other_ca: dir.join("other-ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
        })
    }
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("openssl is installed (scripts/setup.sh)")?;
    ensure!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A self-signed CA: `NAME.pem` and `NAME.key` in `dir`.
fn make_ca(dir: &Path, name: &str) -> Result<()> {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    )
}

/// `server.pem` and `server.key` in `dir`, signed by `ca.pem`.
fn make_server_cert(dir: &Path) -> Result<()> {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    )?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    )
}

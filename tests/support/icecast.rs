//! A real Icecast server (Debian's `icecast2`) on a free 127.0.0.1 port,
//! fed by `ffmpeg -re -stream_loop -1 … -f mp3 icecast://…` in a loop: the
//! internet radio station a relay ("tiếp sóng") broadcast pulls from.
//!
//! Icecast refuses to run as root; when the tests run as root (CI) its
//! configuration drops privileges with `<changeowner>` to `nobody:nogroup`,
//! and its directory is made writable for that user.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::artifacts::Artifacts;
use crate::net::{free_port, wait_for_tcp};
use crate::process::ChildProcess;

/// Mount point the feeder publishes to.
pub const MOUNT: &str = "/loa-test.mp3";

/// A running Icecast server and its `ffmpeg` source; both killed on drop
/// (the feeder first).
pub struct Icecast {
    /// Listening port on 127.0.0.1.
    pub port: u16,
    /// Directory holding the configuration and Icecast's logs.
    pub dir: PathBuf,
    /// The `ffmpeg` source client (dropped first: declared first).
    feeder: ChildProcess,
    /// The server.
    server: ChildProcess,
}

impl Icecast {
    /// Starts Icecast and an `ffmpeg` source looping `mp3` (re-encoded with
    /// libmp3lame at 64 kb/s, paced in real time), and waits until a
    /// listener gets audio from the mount.
    pub fn start(artifacts: &Artifacts, mp3: &Path) -> Result<Self> {
        let dir = artifacts.subdir("icecast")?;
        let port = free_port();
        let password = format!("src-{}-{port}", std::process::id());
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let security = if root {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))?;
            "<security><chroot>0</chroot><changeowner><user>nobody</user>\
             <group>nogroup</group></changeowner></security>"
        } else {
            ""
        };
        let xml = format!(
            r#"<icecast>
  <location>loa-e2e</location>
  <admin>loa-e2e@localhost</admin>
  <limits>
    <clients>20</clients>
    <sources>2</sources>
    <queue-size>524288</queue-size>
    <client-timeout>30</client-timeout>
    <header-timeout>15</header-timeout>
    <source-timeout>10</source-timeout>
  </limits>
  <authentication>
    <source-password>{password}</source-password>
    <relay-password>{password}</relay-password>
    <admin-user>admin</admin-user>
    <admin-password>{password}</admin-password>
  </authentication>
  <hostname>127.0.0.1</hostname>
  <listen-socket><port>{port}</port><bind-address>127.0.0.1</bind-address></listen-socket>
  <fileserve>1</fileserve>
  <paths>
    <basedir>{dir}</basedir>
    <logdir>{dir}</logdir>
    <pidfile>{dir}/icecast.pid</pidfile>
    <webroot>/usr/share/icecast2/web</webroot>
    <adminroot>/usr/share/icecast2/admin</adminroot>
  </paths>
  <logging>
    <accesslog>access.log</accesslog>
    <errorlog>error.log</errorlog>
    <loglevel>3</loglevel>
  </logging>
  {security}
</icecast>
"#,
            dir = dir.display()
        );
        let conf = dir.join("icecast.xml");
        std::fs::write(&conf, xml)?;
        let mut cmd = Command::new("icecast2");
        cmd.arg("-c").arg(&conf);
        let mut server = ChildProcess::spawn("icecast2", cmd, &artifacts.path("icecast.log"))
            .context("is icecast2 installed? run scripts/setup.sh")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if let Err(e) = wait_for_tcp(addr, Duration::from_secs(10)) {
            server.ensure_running()?;
            bail!("{e:#}; icecast error log:\n{}", error_log_tail(&dir));
        }

        let mut cmd = Command::new("ffmpeg");
        cmd.args(["-hide_banner", "-nostdin", "-loglevel", "warning", "-re"])
            .args(["-stream_loop", "-1", "-i"])
            .arg(mp3)
            .args([
                "-c:a",
                "libmp3lame",
                "-b:a",
                "64k",
                "-ar",
                "48000",
                "-ac",
                "1",
            ])
            .args(["-content_type", "audio/mpeg", "-f", "mp3"])
            .arg(format!(
                "icecast://source:{password}@127.0.0.1:{port}{MOUNT}"
            ));
        let feeder =
            ChildProcess::spawn("ffmpeg source", cmd, &artifacts.path("ffmpeg-source.log"))
                .context("is ffmpeg installed? run scripts/setup.sh")?;
        let mut icecast = Icecast {
            port,
            dir,
            feeder,
            server,
        };
        icecast.wait_mount(Duration::from_secs(15))?;
        Ok(icecast)
    }

    /// The stream URL a listener (the controller's relay) opens.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}{MOUNT}", self.port)
    }

    /// `Err` with the logs if the server or the feeder has died.
    pub fn ensure_running(&mut self) -> Result<()> {
        self.server.ensure_running()?;
        self.feeder.ensure_running()
    }

    /// Waits until a GET of the mount answers 200 with audio bytes.
    fn wait_mount(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no answer");
        while Instant::now() < deadline {
            self.ensure_running()?;
            match probe(self.port) {
                Ok(()) => return Ok(()),
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!(
            "Icecast mount {} not live after {timeout:?}: {last}; icecast error log:\n{}",
            self.url(),
            error_log_tail(&self.dir)
        )
    }
}

/// One listener request: status 200 and at least 1 KiB of stream.
fn probe(port: u16) -> Result<()> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        stream,
        "GET {MOUNT} HTTP/1.0\r\nHost: 127.0.0.1\r\nUser-Agent: loa-e2e\r\n\r\n"
    )?;
    let mut buf = vec![0u8; 4096];
    let mut got = 0;
    while got < buf.len() {
        match stream.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(_) => break,
        }
    }
    let head = String::from_utf8_lossy(&buf[..got.min(64)]).into_owned();
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200") {
        bail!("mount answered {status:?}");
    }
    if got < 1024 {
        bail!("mount answered 200 but sent only {got} bytes");
    }
    Ok(())
}

fn error_log_tail(dir: &Path) -> String {
    crate::process::log_tail(&dir.join("error.log"), 15)
}

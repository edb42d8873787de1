//! Test-side handle of the `loa-jack-recorder` helper process.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use super::JackServer;
use crate::artifacts::Artifacts;
use crate::process::{ChildProcess, open_log};
use crate::recording::Recording;

/// A running recorder with one input port per receiver.
pub struct Recorder {
    /// The helper process.
    process: ChildProcess,
    /// Its stdin; closing it stops the recording.
    stdin: Option<ChildStdin>,
    /// Where the helper writes its files.
    dir: PathBuf,
    /// The JACK client name the server granted.
    client: String,
    /// Number of input ports.
    ports: usize,
}

impl Recorder {
    /// Starts recording `ports` ports on `jack` into `artifacts/recording/`.
    /// `bin` is the `loa-jack-recorder` executable (in this package's tests:
    /// `env!("CARGO_BIN_EXE_loa-jack-recorder")`).
    pub fn start(
        bin: &Path,
        jack: &JackServer,
        artifacts: &Artifacts,
        ports: usize,
    ) -> Result<Self> {
        let dir = artifacts.subdir("recording")?;
        let log = artifacts.path("recorder.log");
        let mut cmd = Command::new(bin);
        cmd.args([
            "--client",
            "loa_rec",
            "--ports",
            &ports.to_string(),
            "--out",
        ])
        .arg(&dir);
        jack.apply_env(&mut cmd);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(open_log(&log)?);
        let mut process = ChildProcess::spawn_configured("recorder", cmd, &log)?;
        let child = process.child_mut().context("recorder not running")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("recorder stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(name) = line.strip_prefix("ready ") {
                    let _ = tx.send(name.to_string());
                }
            }
        });
        let client = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(name) => name,
            Err(_) => {
                process.ensure_running()?;
                bail!(
                    "recorder not ready after 20 s; log:\n{}",
                    process.log_tail(20)
                );
            }
        };
        Ok(Recorder {
            process,
            stdin,
            dir,
            client,
            ports,
        })
    }

    /// Full JACK name of input port `k` (1-based), for a receiver's `.asoundrc`.
    pub fn port_name(&self, k: usize) -> String {
        assert!(
            k >= 1 && k <= self.ports,
            "recorder has ports 1..={}",
            self.ports
        );
        format!("{}:in_{k}", self.client)
    }

    /// `Err` with the log if the recorder has died.
    pub fn ensure_running(&mut self) -> Result<()> {
        self.process.ensure_running()
    }

    /// Stops recording and loads what was recorded.
    pub fn stop(mut self) -> Result<Recording> {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"stop\n");
        }
        let status = self.process.wait_exit(Duration::from_secs(20))?;
        if !status.success() {
            return Err(anyhow!(
                "recorder failed ({status}); log:\n{}",
                self.process.log_tail(20)
            ));
        }
        Recording::load(&self.dir, self.ports)
    }
}

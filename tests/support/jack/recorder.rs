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
    /// Whether the client has a `source` output port.
    source: bool,
    /// Lines the helper printed after `ready` (answers to `play`).
    answers: mpsc::Receiver<String>,
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
        Self::start_inner(bin, jack, artifacts, ports, false)
    }

    /// Like [`start`](Self::start), and the same client also has an output
    /// port ([`source_port`](Self::source_port)) that plays clips sent with
    /// [`play`](Self::play) and records them as the recording's
    /// [`source`](Recording::source) track, on the receivers' sample clock.
    pub fn start_with_source(
        bin: &Path,
        jack: &JackServer,
        artifacts: &Artifacts,
        ports: usize,
    ) -> Result<Self> {
        Self::start_inner(bin, jack, artifacts, ports, true)
    }

    fn start_inner(
        bin: &Path,
        jack: &JackServer,
        artifacts: &Artifacts,
        ports: usize,
        source: bool,
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
        if source {
            cmd.arg("--source");
        }
        jack.apply_env(&mut cmd);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(open_log(&log)?);
        let mut process = ChildProcess::spawn_configured("recorder", cmd, &log)?;
        let child = process.child_mut().context("recorder not running")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("recorder stdout")?;
        let (tx, rx) = mpsc::channel();
        let (answer_tx, answers) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(name) = line.strip_prefix("ready ") {
                    let _ = tx.send(name.to_string());
                } else {
                    let _ = answer_tx.send(line);
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
            source,
            answers,
        })
    }

    /// Full JACK name of the source output port, for the `.asoundrc` of
    /// the process that captures it (see [`super::capture_asoundrc`]).
    pub fn source_port(&self) -> String {
        assert!(self.source, "recorder was started without a source port");
        format!("{}:source", self.client)
    }

    /// Starts playing `clip` (raw f32 LE mono 48 kHz) on the source port at
    /// the next JACK cycle; returns the clip's number, which the recording's
    /// [`clip_starts`](Recording::clip_starts) refers to.
    pub fn play(&mut self, clip: &Path) -> Result<u32> {
        let stdin = self.stdin.as_mut().context("recorder already stopped")?;
        writeln!(stdin, "play {}", clip.display())?;
        stdin.flush()?;
        match self.answers.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => match line.strip_prefix("queued ") {
                Some(id) => Ok(id.trim().parse()?),
                None => bail!("recorder refused {}: {line}", clip.display()),
            },
            Err(_) => {
                self.process.ensure_running()?;
                bail!("recorder did not answer `play` within 10 s")
            }
        }
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

    /// The directory the helper writes into.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

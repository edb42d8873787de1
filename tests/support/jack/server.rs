//! One JACK server (dummy backend, real-time paced) per test, under a name
//! no live server uses, so tests and other users of the machine never share
//! one; see [`super::registry`] for how names and slots are chosen.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::registry;
use crate::artifacts::Artifacts;
use crate::process::ChildProcess;

/// Names this harness uses; a dead server's slot under one of them is
/// reclaimed by the next start, so at most this many slots are ever ours.
const POOL: [&str; 4] = ["loa-e2e-0", "loa-e2e-1", "loa-e2e-2", "loa-e2e-3"];

/// A running `jackd`; stopped (SIGTERM, so it frees its registry slot and
/// shared memory) on drop.
pub struct JackServer {
    /// Server name; clients select it with `JACK_DEFAULT_SERVER`.
    pub name: String,
    /// The `jackd` process.
    process: ChildProcess,
}

impl JackServer {
    /// Starts `jackd -R -P 40 -n NAME -d dummy -r 48000 -p 512` and waits
    /// until clients can connect. Real-time scheduling keeps the rig's own
    /// threads (server, ALSA plugin, recorder) from being starved by a busy
    /// machine; where it is not permitted jackd runs without it, as it does
    /// when `LOA_E2E_JACK_REALTIME=0`.
    pub fn start(artifacts: &Artifacts) -> Result<Self> {
        let slots = registry::slots().unwrap_or_default();
        let live = |name: &str| slots.iter().any(|s| s.alive && s.name == name);
        // Our own names first; then, if every slot is taken, the names of
        // dead servers, whose slots jackd reclaims when started under them.
        let mut candidates: Vec<String> = POOL
            .iter()
            .filter(|n| !live(n))
            .map(|n| n.to_string())
            .collect();
        candidates.extend(
            slots
                .iter()
                .filter(|s| !s.alive && !POOL.contains(&s.name.as_str()))
                .map(|s| s.name.clone()),
        );
        let log = artifacts.path("jackd.log");
        let mut refusals = Vec::new();
        for name in candidates {
            let mut cmd = Command::new("jackd");
            if std::env::var("LOA_E2E_JACK_REALTIME").is_ok_and(|v| v == "0") {
                cmd.arg("--no-realtime");
            } else {
                cmd.args(["--realtime", "-P", "40"]);
            }
            cmd.args(["-n", &name, "-d", "dummy", "-r", "48000", "-p", "512"]);
            cmd.env("JACK_NO_AUDIO_RESERVATION", "1");
            let mut process = ChildProcess::spawn("jackd", cmd, &log)
                .context("is jackd installed? run scripts/setup.sh")?;
            if registered(&mut process, &name)? {
                wait_ready(&name, &mut process)?;
                return Ok(JackServer { name, process });
            }
            refusals.push(format!(
                "{name}: {}",
                process.log_tail(3).replace('\n', " / ")
            ));
        }
        bail!(
            "no JACK server could be started (registry: {:?}); attempts:\n{}",
            registry::slots(),
            refusals.join("\n")
        )
    }

    /// Environment a JACK client process (receiver, recorder) needs to find this server.
    pub fn env(&self) -> [(&'static str, String); 2] {
        [
            ("JACK_DEFAULT_SERVER", self.name.clone()),
            ("JACK_NO_AUDIO_RESERVATION", "1".to_string()),
        ]
    }

    /// Adds [`env`](Self::env) to a command.
    pub fn apply_env(&self, cmd: &mut Command) {
        for (key, value) in self.env() {
            cmd.env(key, value);
        }
    }

    /// `Err` with the log if jackd has died.
    pub fn ensure_running(&mut self) -> Result<()> {
        self.process.ensure_running()
    }
}

impl Drop for JackServer {
    fn drop(&mut self) {
        let _ = self.process.terminate(Duration::from_secs(3));
    }
}

/// Whether `process` registered `name` (`false` if it exited first: name
/// in use, or no free slot).
fn registered(process: &mut ChildProcess, name: &str) -> Result<bool> {
    let pid = process.id().context("jackd not running")? as i32;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if process.try_wait()?.is_some() {
            return Ok(false);
        }
        match registry::slots() {
            Some(slots) if slots.iter().any(|s| s.pid == pid && s.name == name) => return Ok(true),
            // Registry layout unknown: trust jack_wait plus "still running".
            None => return Ok(true),
            Some(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    bail!(
        "jackd did not register as {name} within 10 s; log:\n{}",
        process.log_tail(10)
    )
}

/// Waits until clients can connect to `name`.
fn wait_ready(name: &str, process: &mut ChildProcess) -> Result<()> {
    let status = Command::new("jack_wait")
        .args(["-s", name, "-w", "-t", "15"])
        .env("JACK_NO_AUDIO_RESERVATION", "1")
        .output()
        .context("cannot run jack_wait (package jackd2)")?;
    process.ensure_running()?;
    if !status.status.success() {
        bail!(
            "JACK server {name} did not come up: {}\njackd log:\n{}",
            String::from_utf8_lossy(&status.stdout),
            process.log_tail(20)
        );
    }
    Ok(())
}

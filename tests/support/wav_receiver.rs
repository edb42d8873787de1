//! A `loa-receiver run` process whose loudspeaker is a WAV file
//! (`--output wav:PATH`, paced by the wall clock like a sound card): the
//! fault suite's receiver, which a test kills and restarts on the same
//! cache, as a crash or a power cut would.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};

use crate::artifacts::Artifacts;
use crate::bins::Binaries;
use crate::process::{ChildProcess, open_log};

/// A receiver playing into `<artifacts>/<id>.wav`; killed on drop.
pub struct WavReceiver {
    /// Receiver id.
    pub id: String,
    /// `--cache` directory (survives restarts).
    pub cache: PathBuf,
    /// The WAV file it plays into.
    pub wav: PathBuf,
    /// Log file (appended across restarts).
    pub log: PathBuf,
    /// Binary and `run` arguments, kept for restarts.
    bin: PathBuf,
    args: Vec<String>,
    /// Extra environment.
    env: Vec<(String, String)>,
    /// The process; `None` after [`kill9`](Self::kill9).
    process: Option<ChildProcess>,
}

impl WavReceiver {
    /// Starts receiver `id` (token from `POST /receivers`) against the
    /// given controller and broker URLs, with extra `run` arguments.
    pub fn start(
        bins: &Binaries,
        art: &Artifacts,
        id: &str,
        token: &str,
        controller: &str,
        broker: &str,
        extra: &[&str],
    ) -> Result<Self> {
        Self::start_in(bins, art, id, token, controller, broker, None, &[], extra)
    }

    /// Like [`start`](Self::start) with the cache in `cache` (e.g. a small
    /// tmpfs) instead of the artifact directory, with extra environment
    /// (e.g. libfaketime's, to move its wall clock).
    #[allow(clippy::too_many_arguments)]
    pub fn start_in(
        bins: &Binaries,
        art: &Artifacts,
        id: &str,
        token: &str,
        controller: &str,
        broker: &str,
        cache: Option<PathBuf>,
        env: &[(String, String)],
        extra: &[&str],
    ) -> Result<Self> {
        let root = art.subdir(id)?;
        let cache = cache.unwrap_or_else(|| root.join("cache"));
        let wav = art.path(&format!("{id}.wav"));
        let mut args: Vec<String> = [
            "run",
            "--id",
            id,
            "--token",
            token,
            "--controller",
            controller,
            "--broker",
            broker,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push("--output".into());
        args.push(format!("wav:{}", wav.display()));
        args.push("--cache".into());
        args.push(cache.display().to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut receiver = WavReceiver {
            id: id.to_string(),
            cache,
            wav,
            log: art.path(&format!("{id}.log")),
            bin: bins.receiver.clone(),
            args,
            env: env.to_vec(),
            process: None,
        };
        receiver.spawn()?;
        Ok(receiver)
    }

    fn spawn(&mut self) -> Result<()> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info,loa_receiver=debug".into()),
            )
            .env("RUST_BACKTRACE", "1");
        self.process = Some(ChildProcess::spawn(
            &format!("receiver {}", self.id),
            cmd,
            &self.log,
        )?);
        Ok(())
    }

    /// SIGKILL, as a crash or a power cut would.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut process) = self.process.take() {
            process.kill9()?;
        }
        Ok(())
    }

    /// Starts it again on the same cache, WAV file and log.
    pub fn restart(&mut self) -> Result<()> {
        self.kill9()?;
        std::io::Write::write_all(&mut open_log(&self.log)?, b"\n=== restart ===\n")?;
        self.spawn()
    }

    /// `Err` with the log tail if it has died.
    pub fn ensure_running(&mut self) -> Result<()> {
        self.process
            .as_mut()
            .context("receiver is not running")?
            .ensure_running()
    }

    /// The last lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        crate::process::log_tail(&self.log, lines)
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

//! A `loa-receiver run` process: one simulated loudspeaker pole, playing
//! through cpal's default ALSA device, which its own `HOME/.asoundrc` routes
//! into one port of the test's JACK recorder.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Result;

use crate::artifacts::Artifacts;
use crate::bins::Binaries;
use crate::jack::{JackServer, asoundrc};
use crate::process::ChildProcess;

/// A receiver process; killed on drop.
pub struct Receiver {
    /// Receiver id.
    pub id: String,
    /// `--cache` directory.
    pub cache: PathBuf,
    /// The process.
    process: ChildProcess,
}

/// Where a receiver connects and what it is.
pub struct ReceiverConfig<'a> {
    /// Receiver id as registered with the controller.
    pub id: &'a str,
    /// Its token from `POST /api/v1/receivers`.
    pub token: &'a str,
    /// Controller base URL.
    pub controller: &'a str,
    /// Broker URL (`mqtt://127.0.0.1:PORT`).
    pub broker: &'a str,
    /// JACK port its ALSA default device plays into.
    pub playback_port: &'a str,
}

impl Receiver {
    /// Starts a receiver with `--output cpal` on the JACK rig.
    pub fn start(
        bins: &Binaries,
        artifacts: &Artifacts,
        jack: &JackServer,
        config: &ReceiverConfig,
    ) -> Result<Self> {
        Self::start_with_args(bins, artifacts, jack, config, &[])
    }

    /// Like [`start`](Self::start) with extra `run` arguments (e.g. `--volume 0.5`).
    pub fn start_with_args(
        bins: &Binaries,
        artifacts: &Artifacts,
        jack: &JackServer,
        config: &ReceiverConfig,
        extra_args: &[&str],
    ) -> Result<Self> {
        let root = artifacts.subdir(config.id)?;
        let home = root.join("home");
        let cache = root.join("cache");
        std::fs::create_dir_all(&home)?;
        std::fs::write(home.join(".asoundrc"), asoundrc(config.playback_port))?;
        let mut cmd = Command::new(&bins.receiver);
        cmd.args([
            "run",
            "--id",
            config.id,
            "--token",
            config.token,
            "--controller",
            config.controller,
        ])
        .args(["--broker", config.broker, "--output", "cpal", "--cache"])
        .arg(&cache)
        .args(extra_args)
        .env("HOME", &home)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info,loa_receiver=debug".into()),
        )
        .env("RUST_BACKTRACE", "1");
        jack.apply_env(&mut cmd);
        let process = ChildProcess::spawn(
            &format!("receiver {}", config.id),
            cmd,
            &artifacts.path(&format!("{}.log", config.id)),
        )?;
        Ok(Receiver {
            id: config.id.to_string(),
            cache,
            process,
        })
    }

    /// `Err` with the log tail if the receiver has died.
    pub fn ensure_running(&mut self) -> Result<()> {
        self.process.ensure_running()
    }

    /// The last lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    /// Its log file.
    pub fn log_path(&self) -> &std::path::Path {
        self.process.log_path()
    }
}

//! Debian's Mosquitto as the external MQTT broker, on a port of the test's own.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::artifacts::Artifacts;
use crate::net::{free_port, wait_for_tcp};
use crate::process::ChildProcess;

/// A running `mosquitto`; killed on drop.
pub struct Mosquitto {
    /// Listening port on 127.0.0.1.
    pub port: u16,
    /// Its configuration file, kept for restarts.
    conf: std::path::PathBuf,
    /// The process.
    process: ChildProcess,
}

impl Mosquitto {
    /// Starts Mosquitto with anonymous access on 127.0.0.1 only and waits until it accepts connections.
    pub fn start(artifacts: &Artifacts) -> Result<Self> {
        let port = free_port();
        let conf = artifacts.path("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\nlog_type all\n"
            ),
        )?;
        let mut cmd = Command::new("mosquitto");
        cmd.arg("-c").arg(&conf);
        let mut process = ChildProcess::spawn("mosquitto", cmd, &artifacts.path("mosquitto.log"))
            .context("is mosquitto installed? run scripts/setup.sh")?;
        if let Err(e) = wait_for_tcp(
            SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(10),
        ) {
            process.ensure_running()?;
            return Err(e);
        }
        Ok(Mosquitto {
            port,
            conf,
            process,
        })
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Kills the broker (SIGKILL, as a crash would: no clean disconnects)
    /// and starts it again on the same port and configuration; its state
    /// (sessions, retained messages) is lost, as with `persistence false`.
    pub fn restart(&mut self, artifacts: &Artifacts) -> Result<()> {
        self.process.kill9()?;
        let mut cmd = Command::new("mosquitto");
        cmd.arg("-c").arg(&self.conf);
        self.process = ChildProcess::spawn("mosquitto", cmd, &artifacts.path("mosquitto.log"))?;
        wait_for_tcp(
            SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_secs(10),
        )
    }

    /// `Err` with the log tail if the broker has died.
    pub fn ensure_running(&mut self) -> Result<()> {
        self.process.ensure_running()
    }
}

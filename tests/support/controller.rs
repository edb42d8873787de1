//! The `loa-controller serve` process under test, with its data directory,
//! ports and log in the test's artifact directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::api::Api;
use crate::artifacts::Artifacts;
use crate::bins::Binaries;
use crate::net::free_port;
use crate::process::ChildProcess;

/// How the controller reaches MQTT.
#[derive(Debug, Clone)]
pub enum BrokerMode {
    /// Its embedded broker, listening on 127.0.0.1:`port` (`--mqtt`).
    Embedded { port: u16 },
    /// An external broker (`--broker mqtt://HOST:PORT`).
    External { url: String },
}

/// A controller process; killed on drop.
pub struct Controller {
    /// The binary, kept for restarts.
    bin: PathBuf,
    /// `--data` directory; survives restarts.
    pub data: PathBuf,
    /// `--http` address.
    pub http: SocketAddr,
    /// MQTT set-up.
    pub broker: BrokerMode,
    /// The admin password given in `LOA_ADMIN_PASSWORD`.
    pub admin_password: String,
    /// Log file (appended across restarts).
    log: PathBuf,
    /// The process, `None` after [`kill9`](Self::kill9).
    process: Option<ChildProcess>,
    /// Extra arguments and environment (kept for restarts).
    options: ControllerOptions,
}

/// What a test adds to the controller's command line and environment.
#[derive(Debug, Clone, Default)]
pub struct ControllerOptions {
    /// Extra `serve` arguments, e.g. `--live-delay-ms 120`.
    pub args: Vec<String>,
    /// Extra environment, e.g. `HOME` (whose `.asoundrc` sets what cpal's
    /// default input captures) and the JACK server's variables.
    pub env: Vec<(String, String)>,
    /// Serve the API over HTTPS (`--https-cert`, `--https-key`).
    pub https: Option<Https>,
}

/// The controller's HTTPS certificate and key, and the CA the test's
/// clients trust.
#[derive(Debug, Clone)]
pub struct Https {
    /// PEM certificate chain (`--https-cert`).
    pub cert: PathBuf,
    /// PEM private key (`--https-key`).
    pub key: PathBuf,
    /// PEM CA certificate that signed `cert`.
    pub ca: PathBuf,
}

impl Controller {
    /// Starts a controller on fresh ports with an empty data directory and
    /// waits until `/api/v1/health` answers.
    pub async fn start(bins: &Binaries, artifacts: &Artifacts, broker: BrokerMode) -> Result<Self> {
        Self::start_with(bins, artifacts, broker, ControllerOptions::default()).await
    }

    /// Like [`start`](Self::start) with extra arguments and environment.
    pub async fn start_with(
        bins: &Binaries,
        artifacts: &Artifacts,
        broker: BrokerMode,
        options: ControllerOptions,
    ) -> Result<Self> {
        let mut controller = Controller {
            bin: bins.controller.clone(),
            data: artifacts.subdir("controller-data")?,
            http: SocketAddr::from(([127, 0, 0, 1], free_port())),
            broker,
            admin_password: format!("e2e-{}-{}", std::process::id(), free_port()),
            log: artifacts.path("controller.log"),
            process: None,
            options,
        };
        controller.spawn().await?;
        Ok(controller)
    }

    /// Like [`start`](Self::start) with the data directory under `parent`
    /// (e.g. a small disk) instead of the artifact directory.
    pub async fn start_in(
        bins: &Binaries,
        artifacts: &Artifacts,
        broker: BrokerMode,
        parent: &std::path::Path,
    ) -> Result<Self> {
        let data = parent.join("controller-data");
        std::fs::create_dir_all(&data)?;
        let mut controller = Controller {
            bin: bins.controller.clone(),
            data,
            http: SocketAddr::from(([127, 0, 0, 1], free_port())),
            broker,
            admin_password: format!("e2e-{}-{}", std::process::id(), free_port()),
            log: artifacts.path("controller.log"),
            process: None,
            options: ControllerOptions::default(),
        };
        controller.spawn().await?;
        Ok(controller)
    }

    /// The HTTP base URL receivers and the API client use (`https://` when
    /// serving HTTPS).
    pub fn url(&self) -> String {
        let scheme = if self.options.https.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.http)
    }

    /// The CA that signed the HTTPS certificate, if serving HTTPS.
    pub fn https_ca(&self) -> Option<&Path> {
        self.options.https.as_ref().map(|h| h.ca.as_path())
    }

    /// An API client, not logged in, trusting [`https_ca`](Self::https_ca).
    pub fn api(&self) -> Result<Api> {
        match self.https_ca() {
            Some(ca) => Api::trusting(&self.url(), ca),
            None => Ok(Api::new(&self.url())),
        }
    }

    /// The broker URL receivers connect to.
    pub fn broker_url(&self) -> String {
        match &self.broker {
            BrokerMode::Embedded { port } => format!("mqtt://127.0.0.1:{port}"),
            BrokerMode::External { url } => url.clone(),
        }
    }

    /// An API client logged in as `admin`.
    pub async fn admin_api(&self) -> Result<Api> {
        let mut api = self.api()?;
        api.login("admin", &self.admin_password).await?;
        Ok(api)
    }

    /// SIGKILL, as a crash or a power cut would (the embedded broker dies with it).
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut process) = self.process.take() {
            process.kill9()?;
        }
        Ok(())
    }

    /// Starts the controller again on the same data directory and ports.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill9()?;
        std::io::Write::write_all(
            &mut crate::process::open_log(&self.log)?,
            b"\n=== restart ===\n",
        )?;
        self.spawn().await
    }

    /// `Err` with the log tail if the process has died.
    pub fn ensure_running(&mut self) -> Result<()> {
        match self.process.as_mut() {
            Some(process) => process.ensure_running(),
            None => bail!("controller is not running"),
        }
    }

    /// The last lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        crate::process::log_tail(&self.log, lines)
    }

    async fn spawn(&mut self) -> Result<()> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("serve")
            .arg("--data")
            .arg(&self.data)
            .arg("--http")
            .arg(self.http.to_string());
        match &self.broker {
            BrokerMode::Embedded { port } => cmd.args(["--mqtt", &format!("127.0.0.1:{port}")]),
            BrokerMode::External { url } => cmd.args(["--broker", url]),
        };
        if let Some(https) = &self.options.https {
            cmd.arg("--https-cert")
                .arg(&https.cert)
                .arg("--https-key")
                .arg(&https.key);
        }
        cmd.args(&self.options.args);
        cmd.envs(self.options.env.iter().map(|(k, v)| (k, v)));
        cmd.env("LOA_ADMIN_PASSWORD", &self.admin_password)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info,loa_controller=debug".into()),
            )
            .env("RUST_BACKTRACE", "1");
        self.process = Some(ChildProcess::spawn("controller", cmd, &self.log)?);
        self.wait_healthy(Duration::from_secs(60)).await
    }

    async fn wait_healthy(&mut self, timeout: Duration) -> Result<()> {
        let api = self.api()?;
        let deadline = Instant::now() + timeout;
        loop {
            self.ensure_running()?;
            match api.health().await {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    bail!(
                        "controller not healthy after {timeout:?}: {e:#}; log:\n{}",
                        self.log_tail(30)
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

//! The receiver's configuration, as given on the command line.

use std::path::PathBuf;
use std::time::Duration;

use loa_hardware::OutputSpec;

use crate::link::BrokerAddr;

/// Everything [`run`](crate::run) needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// This receiver's id (as registered on the controller): MQTT client id
    /// and topic level, and the receiver id in every report.
    pub receiver_id: String,
    /// The token the controller issued for this receiver: bearer token for
    /// audio downloads and MQTT password.
    pub token: String,
    /// Controller base URL, `http://HOST:PORT` or `https://HOST:PORT`, for
    /// audio downloads and the controller key.
    pub controller: String,
    /// Trust for an `https://` controller: the system's CAs, plus
    /// `--controller-ca` if given.
    pub controller_tls: crate::controller_http::ControllerTls,
    /// The MQTT broker the controller uses.
    pub broker: BrokerAddr,
    /// Directory for everything kept across restarts: audio cache,
    /// schedule, report queue, play ledger.
    pub cache_dir: PathBuf,
    /// Where audio goes (`cpal`, `cpal:DEVICE`, `wav:PATH`).
    pub output: OutputSpec,
    /// The amplifier relay (`none`, `gpio:CHIP:LINE[:active-low]`).
    pub amplifier: String,
    /// Interval between status messages.
    pub heartbeat: Duration,
    /// How long before a play the amplifier is switched on and the output opened.
    pub prepare: Duration,
    /// How long audio no longer in the schedule stays cached.
    pub cache_grace: Duration,
    /// Output gain (linear, 1.0 = as sent) for normal and priority audio,
    /// scheduled or live (`--volume`).
    pub volume: f32,
    /// Output gain for emergency audio (`--emergency-volume`).
    pub emergency_volume: f32,
    /// The controller's public key (`--controller-key BASE64|@FILE`); when
    /// absent, the key kept from first use, or else fetched from the
    /// controller and trusted on first use (see [`crate::trust`]).
    pub controller_key: Option<String>,
}

/// Largest accepted output gain (+12 dB).
pub const MAX_VOLUME: f32 = 4.0;

/// Why a configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("receiver id {0:?} is invalid: use 1-64 characters a-z, A-Z, 0-9, '-', '_', '.'")]
    BadId(String),
    #[error("controller URL {0:?} is invalid: expected http://HOST:PORT or https://HOST:PORT")]
    BadController(String),
    #[error("{0}")]
    BadControllerKey(String),
    #[error("the token is empty")]
    EmptyToken,
    #[error("--heartbeat-secs must be at least 1")]
    BadHeartbeat,
    #[error("{flag} {value} is invalid: use a gain from 0 to {MAX_VOLUME} (1.0 = unchanged)")]
    BadVolume { flag: &'static str, value: f32 },
}

impl Config {
    /// Checks the parts that parsing alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !loa_protocol::is_valid_id(&self.receiver_id) {
            return Err(ConfigError::BadId(self.receiver_id.clone()));
        }
        if self.token.is_empty() {
            return Err(ConfigError::EmptyToken);
        }
        match reqwest::Url::parse(&self.controller) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
            _ => return Err(ConfigError::BadController(self.controller.clone())),
        }
        if let Some(key) = &self.controller_key {
            crate::trust::parse_pinned(key)
                .map_err(|e| ConfigError::BadControllerKey(e.to_string()))?;
        }
        if self.heartbeat < Duration::from_secs(1) {
            return Err(ConfigError::BadHeartbeat);
        }
        for (flag, value) in [
            ("--volume", self.volume),
            ("--emergency-volume", self.emergency_volume),
        ] {
            if !(0.0..=MAX_VOLUME).contains(&value) {
                return Err(ConfigError::BadVolume { flag, value });
            }
        }
        Ok(())
    }
}

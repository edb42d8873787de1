//! The controller's configuration: the `serve` command-line arguments (clap)
//! and the validated [`Config`] that [`crate::server::run`] takes.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::live::{DEFAULT_PLAYOUT_DELAY_MS, LiveConfig};

/// Default upload limit: 512 MiB, room for an hour of uncompressed WAV.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 512 * 1024 * 1024;

/// Default address of the embedded MQTT broker.
pub const DEFAULT_MQTT_LISTEN: &str = "127.0.0.1:1883";

/// Environment variable holding the first admin password.
pub const ADMIN_PASSWORD_ENV: &str = "LOA_ADMIN_PASSWORD";

/// Arguments of `loa-controller serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Data directory: SQLite database, audio store, temporary uploads.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Address the HTTP API listens on, e.g. 127.0.0.1:8080 (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    pub http: SocketAddr,
    /// Run the embedded MQTT broker listening on ADDR [default: 127.0.0.1:1883].
    #[arg(long, value_name = "ADDR", conflicts_with = "broker")]
    pub mqtt: Option<SocketAddr>,
    /// Use an external MQTT broker instead of the embedded one, e.g. mqtt://127.0.0.1:1883.
    #[arg(long, value_name = "URL")]
    pub broker: Option<String>,
    /// Largest accepted upload, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_UPLOAD_BYTES)]
    pub max_upload_bytes: u64,
    /// How many days of play events each receiver is sent ahead (at least 1).
    #[arg(long, value_name = "DAYS", default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=366))]
    pub horizon_days: u32,
    /// Receivers play each live frame this many milliseconds after its capture.
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_PLAYOUT_DELAY_MS, value_parser = clap::value_parser!(u16).range(20..=5000))]
    pub live_delay_ms: u16,
    /// Capture device of `microphone` broadcasts: `cpal` (the default input) or
    /// `cpal:DEVICE` (a cpal device id such as alsa:hw:CARD=USB,DEV=0, or a name).
    #[arg(long, value_name = "cpal[:DEVICE]")]
    pub live_input: Option<String>,
}

/// Where the MQTT broker comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MqttMode {
    /// Start the embedded broker listening on this address.
    Embedded(SocketAddr),
    /// Connect to an external broker at this `mqtt://HOST:PORT` URL.
    External(String),
}

/// Everything [`crate::server::run`] needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Data directory (database, audio, temporary files).
    pub data_dir: PathBuf,
    /// HTTP listen address.
    pub http: SocketAddr,
    /// Which MQTT broker to use.
    pub mqtt: MqttMode,
    /// Upload size limit in bytes.
    pub max_upload_bytes: u64,
    /// How far ahead play events are computed and published.
    pub horizon: chrono::Duration,
    /// Password for the `admin` user created on first start; `None` generates
    /// one and prints it once. Read from `LOA_ADMIN_PASSWORD`, never a flag
    /// (flags show in `ps`).
    pub admin_password: Option<String>,
    /// Live broadcast settings.
    pub live: LiveConfig,
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--broker must look like mqtt://HOST:PORT, got {0:?}")]
    BrokerUrl(String),
    #[error("--max-upload-bytes must be at least 1")]
    UploadLimit,
    #[error("--live-input must be `cpal` or `cpal:DEVICE`, got {0:?}")]
    LiveInput(String),
}

impl ServeArgs {
    /// Validates the arguments and reads `LOA_ADMIN_PASSWORD` from the environment.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let mqtt = match (self.broker, self.mqtt) {
            (Some(url), _) => {
                let rest = url
                    .strip_prefix("mqtt://")
                    .or_else(|| url.strip_prefix("tcp://"))
                    .ok_or_else(|| ConfigError::BrokerUrl(url.clone()))?;
                let (host, port) = rest
                    .rsplit_once(':')
                    .ok_or_else(|| ConfigError::BrokerUrl(url.clone()))?;
                if host.is_empty() || port.parse::<u16>().is_err() {
                    return Err(ConfigError::BrokerUrl(url));
                }
                MqttMode::External(url)
            }
            (None, Some(listen)) => MqttMode::Embedded(listen),
            (None, None) => MqttMode::Embedded(
                DEFAULT_MQTT_LISTEN
                    .parse()
                    .expect("default MQTT address parses"),
            ),
        };
        if self.max_upload_bytes == 0 {
            return Err(ConfigError::UploadLimit);
        }
        let input_device = match self.live_input.as_deref().map(str::trim) {
            None | Some("cpal") | Some("cpal:") | Some("cpal:default") => None,
            Some(spec) => match spec.strip_prefix("cpal:") {
                Some(device) if !device.trim().is_empty() => Some(device.trim().to_string()),
                _ => return Err(ConfigError::LiveInput(spec.to_string())),
            },
        };
        let admin_password = std::env::var(ADMIN_PASSWORD_ENV)
            .ok()
            .filter(|p| !p.is_empty());
        Ok(Config {
            data_dir: self.data,
            http: self.http,
            mqtt,
            max_upload_bytes: self.max_upload_bytes,
            horizon: chrono::Duration::days(i64::from(self.horizon_days)),
            admin_password,
            live: LiveConfig {
                playout_delay_ms: self.live_delay_ms,
                input_device,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(broker: Option<&str>, mqtt: Option<&str>) -> ServeArgs {
        ServeArgs {
            data: "/tmp/x".into(),
            http: "127.0.0.1:0".parse().unwrap(),
            mqtt: mqtt.map(|m| m.parse().unwrap()),
            broker: broker.map(str::to_string),
            max_upload_bytes: 10,
            horizon_days: 7,
            live_delay_ms: 120,
            live_input: None,
        }
    }

    #[test]
    fn embedded_broker_is_the_default() {
        let c = args(None, None).into_config().unwrap();
        assert_eq!(
            c.mqtt,
            MqttMode::Embedded("127.0.0.1:1883".parse().unwrap())
        );
        assert_eq!(c.horizon, chrono::Duration::days(7));
        assert_eq!(c.live, LiveConfig::default());
    }

    #[test]
    fn live_input_is_a_cpal_device() {
        let with = |input: &str| {
            let mut a = args(None, None);
            a.live_input = Some(input.to_string());
            a.into_config()
        };
        assert_eq!(with("cpal").unwrap().live.input_device, None);
        assert_eq!(with("cpal:default").unwrap().live.input_device, None);
        assert_eq!(
            with("cpal:alsa:hw:CARD=USB,DEV=0")
                .unwrap()
                .live
                .input_device,
            Some("alsa:hw:CARD=USB,DEV=0".to_string())
        );
        for bad in ["pulse:x", "hw:0", ""] {
            assert!(with(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn external_broker_url_is_checked() {
        let c = args(Some("mqtt://127.0.0.1:1884"), None)
            .into_config()
            .unwrap();
        assert_eq!(c.mqtt, MqttMode::External("mqtt://127.0.0.1:1884".into()));
        for bad in [
            "127.0.0.1:1883",
            "mqtt://host",
            "mqtt://:1883",
            "http://h:1",
        ] {
            assert!(
                args(Some(bad), None).into_config().is_err(),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn mqtt_and_broker_flags_conflict() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let r = Cli::try_parse_from([
            "x",
            "--data",
            "d",
            "--http",
            "127.0.0.1:0",
            "--mqtt",
            "127.0.0.1:1",
            "--broker",
            "mqtt://h:1",
        ]);
        assert!(r.is_err());
    }
}

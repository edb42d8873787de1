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

/// Environment variable holding the password on an external broker.
pub const BROKER_PASSWORD_ENV: &str = "LOA_BROKER_PASSWORD";

/// Environment variable naming the HTTPS certificate chain (`--https-cert`).
pub const HTTPS_CERT_ENV: &str = "LOA_HTTPS_CERT";

/// Environment variable naming the HTTPS private key (`--https-key`).
pub const HTTPS_KEY_ENV: &str = "LOA_HTTPS_KEY";

/// Arguments of `loa-controller serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Data directory: SQLite database, audio store, temporary uploads.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Address the HTTP API listens on, e.g. 127.0.0.1:8080 (port 0 picks a free port);
    /// HTTPS there with --https-cert and --https-key.
    #[arg(long, value_name = "ADDR")]
    pub http: SocketAddr,
    /// Serve the API and console over HTTPS on --http with this PEM
    /// certificate chain (server certificate first; needs --https-key).
    #[arg(long, value_name = "PEM", env = HTTPS_CERT_ENV, requires = "https_key")]
    pub https_cert: Option<PathBuf>,
    /// PEM private key of --https-cert.
    #[arg(long, value_name = "PEM", env = HTTPS_KEY_ENV, requires = "https_cert")]
    pub https_key: Option<PathBuf>,
    /// Run the embedded MQTT broker listening on ADDR [default: 127.0.0.1:1883].
    #[arg(long, value_name = "ADDR", conflicts_with = "broker")]
    pub mqtt: Option<SocketAddr>,
    /// Use an external MQTT broker instead of the embedded one, e.g.
    /// mqtt://127.0.0.1:1883 or mqtts://broker.local:8883 (TLS, needs --broker-ca).
    #[arg(long, value_name = "URL")]
    pub broker: Option<String>,
    /// Also serve MQTT over TLS on ADDR from the embedded broker (needs
    /// --mqtt-tls-cert and --mqtt-tls-key); plain --mqtt stays for localhost.
    #[arg(long, value_name = "ADDR", conflicts_with = "broker", requires_all = ["mqtt_tls_cert", "mqtt_tls_key"])]
    pub mqtts: Option<SocketAddr>,
    /// PEM certificate chain of the embedded broker's MQTTS listener.
    #[arg(long, value_name = "PEM", requires = "mqtts")]
    pub mqtt_tls_cert: Option<PathBuf>,
    /// PEM private key of --mqtt-tls-cert.
    #[arg(long, value_name = "PEM", requires = "mqtts")]
    pub mqtt_tls_key: Option<PathBuf>,
    /// PEM CA certificate that signed an mqtts:// --broker's certificate.
    #[arg(long, value_name = "PEM", requires = "broker")]
    pub broker_ca: Option<PathBuf>,
    /// Username on the external --broker (password from LOA_BROKER_PASSWORD).
    #[arg(long, value_name = "USER", requires = "broker")]
    pub broker_username: Option<String>,
    /// Password on the external --broker; prefer the environment variable
    /// (a flag shows in `ps`).
    #[arg(long, value_name = "PASSWORD", env = BROKER_PASSWORD_ENV, hide_env_values = true, requires = "broker_username")]
    pub broker_password: Option<String>,
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
    /// Connect to an external broker at this `mqtt://HOST:PORT` (or
    /// `mqtts://`) URL.
    External(String),
}

/// The embedded broker's MQTTS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttTlsListen {
    pub listen: SocketAddr,
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// The HTTP API's certificate and key (`--https-cert`, `--https-key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsFiles {
    /// PEM certificate chain, server certificate first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// TLS and logins of the MQTT links (see the README's security section).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MqttSecurity {
    /// Embedded broker: also serve MQTTS here.
    pub tls: Option<MqttTlsListen>,
    /// External `mqtts://` broker: the CA that signed its certificate.
    pub broker_ca: Option<PathBuf>,
    /// External broker: the controller's account.
    pub broker_credentials: Option<crate::mqtt_auth::Credentials>,
}

/// Everything [`crate::server::run`] needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Data directory (database, audio, temporary files).
    pub data_dir: PathBuf,
    /// HTTP listen address.
    pub http: SocketAddr,
    /// Serve HTTPS on [`Config::http`] with these files; plain HTTP when `None`.
    pub https: Option<HttpsFiles>,
    /// Which MQTT broker to use.
    pub mqtt: MqttMode,
    /// MQTT TLS and logins.
    pub mqtt_security: MqttSecurity,
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
    #[error("--broker must look like mqtt://HOST:PORT or mqtts://HOST:PORT, got {0:?}")]
    BrokerUrl(String),
    #[error(
        "--broker {0} uses TLS: give the CA certificate that signed its certificate with --broker-ca PEM"
    )]
    BrokerCaMissing(String),
    #[error("--broker-ca is only for an mqtts:// broker, got {0:?}")]
    BrokerCaUnused(String),
    #[error("--https-cert and --https-key go together: give both (HTTPS) or neither (plain HTTP)")]
    HttpsPair,
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
                let tls = url.starts_with("mqtts://");
                match (tls, &self.broker_ca) {
                    (true, None) => return Err(ConfigError::BrokerCaMissing(url)),
                    (false, Some(_)) => return Err(ConfigError::BrokerCaUnused(url)),
                    _ => {}
                }
                let rest = url
                    .strip_prefix("mqtt://")
                    .or_else(|| url.strip_prefix("mqtts://"))
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
        let tls = match (self.mqtts, self.mqtt_tls_cert, self.mqtt_tls_key) {
            (Some(listen), Some(cert), Some(key)) => Some(MqttTlsListen { listen, cert, key }),
            // clap requires all three together.
            _ => None,
        };
        let https = match (self.https_cert, self.https_key) {
            (Some(cert), Some(key)) => Some(HttpsFiles { cert, key }),
            (None, None) => None,
            // clap requires both; a caller building ServeArgs may not.
            _ => return Err(ConfigError::HttpsPair),
        };
        let broker_credentials = self.broker_username.map(|user| {
            crate::mqtt_auth::Credentials::new(user, self.broker_password.unwrap_or_default())
        });
        Ok(Config {
            data_dir: self.data,
            http: self.http,
            https,
            mqtt,
            mqtt_security: MqttSecurity {
                tls,
                broker_ca: self.broker_ca,
                broker_credentials,
            },
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
            https_cert: None,
            https_key: None,
            mqtt: mqtt.map(|m| m.parse().unwrap()),
            broker: broker.map(str::to_string),
            mqtts: None,
            mqtt_tls_cert: None,
            mqtt_tls_key: None,
            broker_ca: None,
            broker_username: None,
            broker_password: None,
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
    fn a_tls_broker_needs_its_ca() {
        let err = args(Some("mqtts://127.0.0.1:8883"), None)
            .into_config()
            .unwrap_err();
        assert!(err.to_string().contains("--broker-ca"), "{err}");
        let mut a = args(Some("mqtts://127.0.0.1:8883"), None);
        a.broker_ca = Some("/etc/loa/ca.pem".into());
        a.broker_username = Some("loa-controller".into());
        a.broker_password = Some("pw".into());
        let c = a.into_config().unwrap();
        assert_eq!(c.mqtt, MqttMode::External("mqtts://127.0.0.1:8883".into()));
        assert_eq!(
            c.mqtt_security.broker_credentials,
            Some(crate::mqtt_auth::Credentials::new("loa-controller", "pw"))
        );
        let mut plain = args(Some("mqtt://127.0.0.1:1883"), None);
        plain.broker_ca = Some("/etc/loa/ca.pem".into());
        assert!(plain.into_config().is_err());
    }

    #[test]
    fn mqtts_needs_a_certificate_and_key() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let base = ["x", "--data", "d", "--http", "127.0.0.1:0"];
        let with = |extra: &[&str]| {
            Cli::try_parse_from(base.iter().chain(extra)).map(|c| c.serve.into_config())
        };
        assert!(with(&["--mqtts", "0.0.0.0:8883"]).is_err());
        assert!(with(&["--mqtt-tls-cert", "c.pem", "--mqtt-tls-key", "k.pem"]).is_err());
        let ok = with(&[
            "--mqtts",
            "0.0.0.0:8883",
            "--mqtt-tls-cert",
            "c.pem",
            "--mqtt-tls-key",
            "k.pem",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            ok.mqtt_security.tls,
            Some(MqttTlsListen {
                listen: "0.0.0.0:8883".parse().unwrap(),
                cert: "c.pem".into(),
                key: "k.pem".into(),
            })
        );
    }

    #[test]
    fn https_needs_a_certificate_and_key() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let base = ["x", "--data", "d", "--http", "127.0.0.1:0"];
        let with = |extra: &[&str]| {
            Cli::try_parse_from(base.iter().chain(extra)).map(|c| c.serve.into_config())
        };
        let err = with(&["--https-cert", "c.pem"]).err().unwrap().to_string();
        assert!(err.contains("--https-key"), "{err}");
        let err = with(&["--https-key", "k.pem"]).err().unwrap().to_string();
        assert!(err.contains("--https-cert"), "{err}");
        let ok = with(&["--https-cert", "c.pem", "--https-key", "k.pem"])
            .unwrap()
            .unwrap();
        assert_eq!(
            ok.https,
            Some(HttpsFiles {
                cert: "c.pem".into(),
                key: "k.pem".into(),
            })
        );
        assert_eq!(with(&[]).unwrap().unwrap().https, None);
        let mut half = args(None, None);
        half.https_cert = Some("c.pem".into());
        assert!(matches!(half.into_config(), Err(ConfigError::HttpsPair)));
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

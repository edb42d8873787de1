//! `loa-receiver run [--id ID --token TOKEN | --enroll] --controller
//! http[s]://ADDR [--controller-ca PEM] --broker mqtt://ADDR --cache DIR
//! [--output cpal|cpal:DEVICE|wav:PATH]`: parses the command line, sets up logging,
//! enrolls if there is no token (see [`loa_receiver::enroll`]) and runs the
//! receiver until Ctrl-C or SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use loa_hardware::OutputSpec;
use loa_receiver::link::BrokerAddr;

#[derive(Parser)]
#[command(name = "loa-receiver", version, about = "Loa loudspeaker receiver")]
struct Cli {
    /// What to do (only `run` for now).
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the receiver.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// This receiver's id, as registered on the controller (with --token);
    /// when enrolling, only suggested to the technician.
    #[arg(long)]
    id: Option<String>,
    /// The receiver's token issued by the controller (manual provisioning).
    /// Without it the receiver uses the credentials kept from its
    /// enrollment, or enrolls (see --enroll).
    #[arg(
        long,
        env = "LOA_RECEIVER_TOKEN",
        hide_env_values = true,
        requires = "id"
    )]
    token: Option<String>,
    /// Enroll: create this device's key pair, show its enrollment code and
    /// wait for a technician to accept it (the default without --token).
    #[arg(long, conflicts_with = "token")]
    enroll: bool,
    /// Controller base URL, e.g. http://10.0.0.1:8080, or https://HOST:PORT
    /// (HTTPS; a private CA needs --controller-ca).
    #[arg(long)]
    controller: String,
    /// PEM CA certificate that signed an https:// controller's certificate
    /// (trusted besides the system's CAs).
    #[arg(long, value_name = "PEM", env = "LOA_CONTROLLER_CA")]
    controller_ca: Option<PathBuf>,
    /// MQTT broker, e.g. mqtt://10.0.0.1:1883, or mqtts://HOST:8883 (TLS, needs --broker-ca).
    #[arg(long)]
    broker: BrokerAddr,
    /// PEM CA certificate that signed an mqtts:// broker's certificate.
    #[arg(long, value_name = "PEM")]
    broker_ca: Option<PathBuf>,
    /// Directory for the audio cache, schedule and report queue.
    #[arg(long)]
    cache: PathBuf,
    /// Audio output: cpal (default device), cpal:DEVICE or wav:PATH.
    #[arg(long, default_value = "cpal")]
    output: String,
    /// Amplifier relay: none or gpio:CHIP:LINE[:active-low].
    #[arg(long, default_value = "none")]
    amplifier: String,
    /// Seconds between status messages.
    #[arg(long, default_value_t = 10)]
    heartbeat_secs: u64,
    /// Milliseconds before a play to switch the amplifier on and open the output.
    #[arg(long, default_value_t = 1500)]
    prepare_ms: u64,
    /// Seconds audio no longer scheduled stays cached.
    #[arg(long, default_value_t = 3600)]
    cache_grace_secs: u64,
    /// Output gain for normal and priority audio, scheduled or live (0–4, 1 = unchanged).
    #[arg(long, default_value_t = 1.0)]
    volume: f32,
    /// Output gain for emergency audio, scheduled or live (0–4, 1 = unchanged).
    #[arg(long, default_value_t = 1.0)]
    emergency_volume: f32,
    /// The controller's Ed25519 public key (base64, or @FILE holding it), as
    /// shown by GET /api/v1/controller-key. Without it the receiver trusts
    /// the key the controller serves on first use and keeps it.
    #[arg(long, value_name = "BASE64|@FILE")]
    controller_key: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let Command::Run(args) = Cli::parse().command;
    let output: OutputSpec = args.output.parse()?;
    let broker = args
        .broker
        .with_ca_file(args.broker_ca.as_deref())
        .map_err(anyhow::Error::msg)?;
    let controller_tls = loa_receiver::controller_http::ControllerTls::for_controller(
        &args.controller,
        args.controller_ca.as_deref(),
    )?;
    let (receiver_id, token) = match (args.token, args.id) {
        (Some(token), Some(id)) => (id, token),
        (Some(_), None) => anyhow::bail!("--token needs --id (or enroll without --token)"),
        (None, requested_id) => {
            let options = loa_receiver::enroll::EnrollOptions {
                controller: args.controller.clone(),
                hostname: loa_receiver::enroll::hostname(),
                requested_id,
                poll: Duration::from_secs(3),
                tls: controller_tls.clone(),
            };
            let stop = tokio_util::sync::CancellationToken::new();
            let enrolled = tokio::select! {
                enrolled = loa_receiver::enroll::enroll(&args.cache, &options, &stop) => enrolled?,
                () = shutdown_signal() => None,
            };
            let Some(credentials) = enrolled else {
                return Ok(());
            };
            if args.enroll {
                tracing::info!("--enroll: credentials kept; running normally");
            }
            (credentials.receiver_id, credentials.token)
        }
    };
    let config = loa_receiver::Config {
        receiver_id,
        token,
        controller: args.controller,
        controller_tls,
        broker,
        cache_dir: args.cache,
        output,
        amplifier: args.amplifier,
        heartbeat: Duration::from_secs(args.heartbeat_secs),
        prepare: Duration::from_millis(args.prepare_ms),
        cache_grace: Duration::from_secs(args.cache_grace_secs),
        volume: args.volume,
        emergency_volume: args.emergency_volume,
        controller_key: args.controller_key,
    };
    loa_receiver::run(config, shutdown_signal()).await
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

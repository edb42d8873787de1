//! `loa-controller`: parses the command line, sets up logging and runs the
//! controller until Ctrl-C or SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use loa_controller::config::{BROKER_PASSWORD_ENV, ServeArgs};
use tracing_subscriber::EnvFilter;

/// Loa broadcast controller.
#[derive(Parser)]
#[command(name = "loa-controller", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API, MQTT distribution and proof-of-play ingest.
    Serve(Box<ServeArgs>),
    /// Write Mosquitto's acl_file (each receiver reads only its own and its
    /// zone's topics, writes only its own) and update its password_file.
    MosquittoAcl(MosquittoAclArgs),
}

/// Arguments of `loa-controller mosquitto-acl`.
#[derive(clap::Args)]
struct MosquittoAclArgs {
    /// The controller's data directory (its database lists the receivers).
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Where to write the ACL file (Mosquitto's `acl_file`).
    #[arg(long, value_name = "FILE")]
    acl_file: PathBuf,
    /// Mosquitto `password_file` to update: the controller user (password
    /// from LOA_BROKER_PASSWORD) and receivers from --tokens; entries of
    /// receivers no longer registered are removed.
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// The controller's Mosquitto username (its --broker-username).
    #[arg(long, value_name = "USER", default_value = loa_controller::mosquitto::DEFAULT_CONTROLLER_USER)]
    controller_user: String,
    /// File of `RECEIVER_ID TOKEN` lines (`-` for stdin) whose password
    /// entries to set, e.g. after creating a receiver or rotating its token.
    #[arg(long, value_name = "FILE", requires = "password_file")]
    tokens: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let command = Cli::parse().command;
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            EnvFilter::new(format!("info,{}", loa_controller::broker::LOG_DIRECTIVE))
        }))
        .with_writer(std::io::stderr)
        .init();
    match command {
        Command::Serve(args) => {
            let config = args.into_config()?;
            loa_controller::server::run(config, shutdown_signal()).await
        }
        Command::MosquittoAcl(args) => mosquitto_acl(args).await,
    }
}

/// `loa-controller mosquitto-acl`.
async fn mosquitto_acl(args: MosquittoAclArgs) -> anyhow::Result<()> {
    let db = loa_controller::db::open(&args.data)
        .await
        .with_context(|| format!("opening the database in {}", args.data.display()))?;
    let options = loa_controller::mosquitto::AclOptions {
        acl_file: args.acl_file.clone(),
        password_file: args.password_file.clone(),
        controller_user: args.controller_user,
        controller_password: std::env::var(BROKER_PASSWORD_ENV)
            .ok()
            .filter(|p| !p.is_empty()),
        tokens_file: args.tokens,
    };
    let written = loa_controller::mosquitto::write_files(&db, &options).await?;
    db.close().await;
    println!(
        "wrote {} with {} receivers",
        args.acl_file.display(),
        written.receivers
    );
    if let Some(path) = &args.password_file {
        println!(
            "updated {}: {} password(s) set, {} removed ({})",
            path.display(),
            written.passwords_set,
            written.removed.len(),
            written.removed.join(", ")
        );
        if !written.without_password.is_empty() {
            println!(
                "receivers without a password entry (give their tokens with --tokens): {}",
                written.without_password.join(", ")
            );
        }
    }
    println!("reload Mosquitto (SIGHUP) to apply");
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

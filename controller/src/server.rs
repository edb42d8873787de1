//! Wires the controller together and runs it until shutdown:
//! database and first user → audio store → signing key → MQTT broker (embedded or
//! external) → bus and live link → distributor, ingest and live hub (with
//! its relay schedule timer) → HTTP API (HTTPS with `--https-cert`, see
//! [`crate::https`]). On shutdown the HTTP server drains
//! in-flight requests, broadcasts on air end (sending their `End` frames),
//! then the background tasks are cancelled and awaited.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::serve::ListenerExt;
use sqlx::SqlitePool;
use tokio_util::sync::CancellationToken;

use crate::api;
use crate::bus::{BrokerLogin, Bus};
use crate::config::{Config, MqttMode};
use crate::db::{self, AdminBootstrap};
use crate::distribution::Distributor;
use crate::ingest;
use crate::live::LiveHub;
#[cfg(feature = "embedded-broker")]
use crate::mqtt_auth::{Credentials, MqttAuth};
use crate::signing::Signer;
use crate::state::AppState;
use crate::store::AudioStore;

/// MQTT client id of the controller (stable, so the broker keeps its
/// session and queued QoS 1 reports across controller restarts).
pub const MQTT_CLIENT_ID: &str = "loa-controller";

/// MQTT client id of the controller's live link (clean session).
pub const MQTT_LIVE_CLIENT_ID: &str = "loa-controller-live";

/// How long background tasks get to finish after the HTTP server stopped.
const TASK_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The HTTP application for `state`; tests drive it with `oneshot`.
pub fn app(state: AppState) -> Router {
    api::router(state)
}

/// Opens the database (creating the first user if needed) and the audio
/// store (emptying `tmp/`, removing audio no programme refers to).
pub async fn open_storage(config: &Config) -> anyhow::Result<(SqlitePool, AudioStore)> {
    let db = db::open(&config.data_dir)
        .await
        .with_context(|| format!("opening the database in {}", config.data_dir.display()))?;
    match db::ensure_admin(&db, config.admin_password.as_deref()).await? {
        AdminBootstrap::Existing => {}
        AdminBootstrap::FromEnvironment => {
            tracing::info!("created user admin with the password from LOA_ADMIN_PASSWORD");
        }
        AdminBootstrap::Generated(password) => {
            // Printed once, to stdout only (not the log), and stored nowhere in clear.
            println!("Mật khẩu quản trị (admin) được tạo: {password} — chỉ hiển thị một lần");
            println!("Generated admin password: {password} — shown only once");
        }
    }
    let store = AudioStore::open(&config.data_dir).context("opening the audio store")?;
    let referenced: HashSet<String> = sqlx::query_scalar("SELECT DISTINCT sha256 FROM programmes")
        .fetch_all(&db)
        .await?
        .into_iter()
        .collect();
    store.remove_unreferenced(&referenced).await?;
    Ok((db, store))
}

/// Runs the controller until `shutdown` completes.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // A bad certificate or key stops start-up before anything listens.
    let https = match &config.https {
        Some(files) => Some(crate::https::server_config(&files.cert, &files.key)?),
        None => None,
    };
    let (db, store) = open_storage(&config).await?;

    let signer = Arc::new(Signer::open(&config.data_dir).context("opening the signing key")?);
    let (_broker, broker_url, login) = start_broker(&config, &db).await?;
    let (bus, events) = Bus::connect_with(&broker_url, MQTT_CLIENT_ID, signer.clone(), &login)
        .await
        .with_context(|| format!("connecting to the MQTT broker {broker_url}"))?;

    let live_bus = Bus::connect_live_with(&broker_url, MQTT_LIVE_CLIENT_ID, signer.clone(), &login)
        .await
        .with_context(|| format!("connecting the live link to the MQTT broker {broker_url}"))?;

    let tasks = CancellationToken::new();
    let distributor =
        Distributor::spawn(db.clone(), bus.clone(), config.horizon, tasks.child_token());
    let ingest = ingest::spawn(
        db.clone(),
        bus,
        events,
        distributor.clone(),
        tasks.child_token(),
    );

    let live = LiveHub::start(
        db.clone(),
        store.clone(),
        live_bus,
        config.live.clone(),
        tasks.child_token(),
    )
    .await
    .context("starting live broadcasts")?;
    let state = AppState::new(db.clone(), store, distributor, config.max_upload_bytes)
        .with_live(live.clone())
        .with_controller_key(signer.public_key());
    let listener = tokio::net::TcpListener::bind(config.http)
        .await
        .with_context(|| format!("binding the HTTP address {}", config.http))?;
    let addr: SocketAddr = listener.local_addr()?;
    let scheme = if https.is_some() { "https" } else { "http" };
    tracing::info!(%addr, scheme, "HTTP API listening");
    println!("loa-controller listening on {scheme}://{addr}");

    let stop = tasks.clone();
    let live_stop = live.clone();
    let graceful = async move {
        tokio::select! {
            () = shutdown => tracing::info!("shutting down"),
            () = stop.cancelled() => {}
        }
        // End broadcasts first, so browser WebSockets close and the
        // HTTP server can drain.
        live_stop.shutdown().await;
    };
    // The peer address feeds the enrollment rate limit.
    let service = app(state).into_make_service_with_connect_info::<SocketAddr>();
    let served = match https {
        None => {
            axum::serve(listener, service)
                .with_graceful_shutdown(graceful)
                .await
        }
        Some(tls) => {
            let listener = crate::https::TlsListener::new(listener, tls)?;
            // `tap_io` only for axum's `ConnectInfo<SocketAddr>`, which it
            // provides for any tapped listener whose address is one.
            axum::serve(listener.tap_io(|_| {}), service)
                .with_graceful_shutdown(graceful)
                .await
        }
    };
    live.shutdown().await;
    tasks.cancel();
    if tokio::time::timeout(TASK_SHUTDOWN_TIMEOUT, ingest)
        .await
        .is_err()
    {
        tracing::warn!("ingest task did not stop in time");
    }
    db.close().await;
    served.context("HTTP server failed")?;
    tracing::info!("stopped");
    Ok(())
}

/// How the controller logs in to an external broker (`--broker`):
/// its account and, for `mqtts://`, the CA it trusts.
fn external_login(config: &Config) -> anyhow::Result<BrokerLogin> {
    let ca_pem = match &config.mqtt_security.broker_ca {
        Some(path) => Some(crate::mqtt_tls::read_ca(path)?),
        None => None,
    };
    Ok(BrokerLogin {
        credentials: config.mqtt_security.broker_credentials.clone(),
        ca_pem,
    })
}

/// Starts the embedded broker if asked to (every client must log in, see
/// [`crate::mqtt_auth`]; MQTTS if configured); returns it (kept alive by
/// the caller), the URL to connect to and how to log in there.
#[cfg(feature = "embedded-broker")]
async fn start_broker(
    config: &Config,
    db: &SqlitePool,
) -> anyhow::Result<(Option<crate::broker::EmbeddedBroker>, String, BrokerLogin)> {
    match &config.mqtt {
        MqttMode::External(url) => {
            tracing::info!(%url, "using external MQTT broker");
            Ok((None, url.clone(), external_login(config)?))
        }
        MqttMode::Embedded(listen) => {
            // A fresh credential per process for the controller's own
            // clients; receivers log in with their id and token.
            let internal = Credentials::internal();
            let auth = Arc::new(MqttAuth::new(db.clone(), internal.clone()));
            let tls = config
                .mqtt_security
                .tls
                .as_ref()
                .map(|t| crate::broker::TlsListener {
                    listen: t.listen,
                    cert: t.cert.clone(),
                    key: t.key.clone(),
                });
            let broker = crate::broker::EmbeddedBroker::start_with(crate::broker::BrokerOptions {
                listen: *listen,
                auth: Some(auth),
                probe: Some(internal.clone()),
                tls,
            })
            .await
            .with_context(|| format!("starting the embedded MQTT broker on {listen}"))?;
            let url = broker.url();
            tracing::info!(%url, "embedded MQTT broker running");
            println!("loa-controller MQTT broker on {url}");
            // The controller's own clients skip the front end.
            let url = broker.internal_url();
            if let Some(tls_url) = broker.tls_url() {
                println!("loa-controller MQTTS broker on {tls_url}");
            }
            let login = BrokerLogin {
                credentials: Some(internal),
                ca_pem: None,
            };
            Ok((Some(broker), url, login))
        }
    }
}

/// Without the embedded broker, only `--broker` works.
#[cfg(not(feature = "embedded-broker"))]
async fn start_broker(
    config: &Config,
    _db: &SqlitePool,
) -> anyhow::Result<((), String, BrokerLogin)> {
    match &config.mqtt {
        MqttMode::External(url) => Ok(((), url.clone(), external_login(config)?)),
        MqttMode::Embedded(_) => anyhow::bail!(
            "this build has no embedded MQTT broker (feature `embedded-broker`); pass --broker mqtt://HOST:PORT"
        ),
    }
}

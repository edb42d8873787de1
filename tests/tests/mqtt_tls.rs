//! MQTT security with the real binaries: the controller serves MQTTS
//! (`--mqtts`, test certificates made by `openssl`); a receiver given
//! `--broker mqtts://… --broker-ca` with the right CA comes online, one
//! trusting another CA does not (and logs a certificate error), and one with
//! a wrong token on the plain listener is refused by the broker (logged by
//! the controller). Artifacts in `tests/artifacts/mqtt_tls/`.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use loa_e2e::certs::TestCerts;
use loa_e2e::controller::ControllerOptions;
use loa_e2e::net::free_port;
use loa_e2e::process::log_tail;
use loa_e2e::wav_receiver::WavReceiver;
use loa_e2e::{Artifacts, Binaries, BrokerMode, Controller, serial, wait};

const ZONE: &str = "thon-1";

#[test]
fn receivers_need_the_right_ca_and_their_own_token() -> Result<()> {
    let _serial = serial();
    tokio::runtime::Runtime::new()?.block_on(scenario())
}

async fn scenario() -> Result<()> {
    let mut art = Artifacts::new("mqtt_tls")?;
    let bins = Binaries::locate()?;
    let certs = TestCerts::generate(&art.subdir("certs")?)?;
    let mqtts_port = free_port();
    let path = |file: &std::path::Path| file.display().to_string();
    let controller = Controller::start_with(
        &bins,
        &art,
        BrokerMode::Embedded { port: free_port() },
        ControllerOptions {
            args: vec![
                "--mqtts".into(),
                format!("127.0.0.1:{mqtts_port}"),
                "--mqtt-tls-cert".into(),
                path(&certs.server_cert),
                "--mqtt-tls-key".into(),
                path(&certs.server_key),
            ],
            ..Default::default()
        },
    )
    .await?;
    let api = controller.admin_api().await?;
    api.create_zone(ZONE, "Thôn 1").await?;
    let tls_url = format!("mqtts://127.0.0.1:{mqtts_port}");

    let good_token = api.create_receiver("loa-tls", "Loa TLS", ZONE).await?;
    let good = WavReceiver::start(
        &bins,
        &art,
        "loa-tls",
        &good_token,
        &controller.url(),
        &tls_url,
        &["--broker-ca", &path(&certs.ca)],
    )?;
    let other_token = api
        .create_receiver("loa-other-ca", "Loa CA lạ", ZONE)
        .await?;
    let other_ca = WavReceiver::start(
        &bins,
        &art,
        "loa-other-ca",
        &other_token,
        &controller.url(),
        &tls_url,
        &["--broker-ca", &path(&certs.other_ca)],
    )?;
    api.create_receiver("loa-bad-token", "Loa sai mã", ZONE)
        .await?;
    let bad_token = WavReceiver::start(
        &bins,
        &art,
        "loa-bad-token",
        "0000-not-its-token",
        &controller.url(),
        &controller.broker_url(),
        &[],
    )?;

    let online = |list: &[serde_json::Value], id: &str| {
        list.iter()
            .any(|r| r["id"] == id && r["online"] == serde_json::json!(true))
    };
    let started = std::time::Instant::now();
    wait::until(
        "loa-tls online over MQTTS",
        Duration::from_secs(30),
        async || Ok(online(&api.receivers().await?, "loa-tls").then_some(())),
    )
    .await
    .with_context(|| log_tail(&good.log, 30))?;
    art.figure(format!(
        "receiver over MQTTS (right CA) online after {} ms",
        started.elapsed().as_millis()
    ));
    // Give the other two several reconnection attempts.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let list = api.receivers().await?;
    ensure!(
        !online(&list, "loa-other-ca"),
        "a receiver trusting another CA came online"
    );
    ensure!(
        !online(&list, "loa-bad-token"),
        "a receiver with a wrong token came online"
    );
    let other_log = std::fs::read_to_string(&other_ca.log)?;
    ensure!(
        other_log.contains("certificate") || other_log.contains("Certificate"),
        "no certificate error in the log of the receiver trusting another CA:\n{}",
        log_tail(&other_ca.log, 20)
    );
    let controller_log = std::fs::read_to_string(art.path("controller.log"))?;
    let refusals = controller_log
        .lines()
        .filter(|l| l.contains("refused MQTT connection") && l.contains("loa-bad-token"))
        .count();
    ensure!(
        refusals > 0,
        "the controller did not log refusing loa-bad-token:\n{}",
        controller.log_tail(30)
    );
    ensure!(
        !controller_log.contains("0000-not-its-token"),
        "the controller logged a password"
    );
    art.figure(format!(
        "wrong CA: refused with a certificate error; wrong token: {refusals} refusals logged by the controller in 6 s"
    ));
    drop((good, other_ca, bad_token));
    Ok(())
}

//! MQTT security with the real binaries: the controller serves MQTTS
//! (`--mqtts`, test certificates made by `openssl`); a receiver given
//! `--broker mqtts://… --broker-ca` with the right CA comes online, one
//! trusting another CA does not (and logs a certificate error), and one with
//! a wrong token on the plain listener is refused by the broker (logged by
//! the controller). Artifacts in `tests/artifacts/mqtt_tls/`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use loa_e2e::controller::ControllerOptions;
use loa_e2e::net::free_port;
use loa_e2e::process::log_tail;
use loa_e2e::wav_receiver::WavReceiver;
use loa_e2e::{Artifacts, Binaries, BrokerMode, Controller, serial, wait};

const ZONE: &str = "thon-1";

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("openssl is installed (scripts/setup.sh)")?;
    ensure!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn make_ca(dir: &Path, name: &str) -> Result<()> {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    )
}

fn make_server_cert(dir: &Path) -> Result<()> {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    )?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    )
}

#[test]
fn receivers_need_the_right_ca_and_their_own_token() -> Result<()> {
    let _serial = serial();
    tokio::runtime::Runtime::new()?.block_on(scenario())
}

async fn scenario() -> Result<()> {
    let mut art = Artifacts::new("mqtt_tls")?;
    let bins = Binaries::locate()?;
    let certs = art.subdir("certs")?;
    make_ca(&certs, "ca")?;
    make_ca(&certs, "other-ca")?;
    make_server_cert(&certs)?;
    let mqtts_port = free_port();
    let path = |name: &str| certs.join(name).display().to_string();
    let controller = Controller::start_with(
        &bins,
        &art,
        BrokerMode::Embedded { port: free_port() },
        ControllerOptions {
            args: vec![
                "--mqtts".into(),
                format!("127.0.0.1:{mqtts_port}"),
                "--mqtt-tls-cert".into(),
                path("server.pem"),
                "--mqtt-tls-key".into(),
                path("server.key"),
            ],
            env: Vec::new(),
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
        &["--broker-ca", &path("ca.pem")],
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
        &["--broker-ca", &path("other-ca.pem")],
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

//! HTTPS for the controller's API with the real binaries (`serve
//! --https-cert --https-key`, test certificates made by `openssl`):
//!
//! - a client trusting the CA gets `/api/v1/health`; plain HTTP to the port,
//!   a client without the CA and one trusting another CA all fail (the last
//!   two with an unknown-issuer error); a silent TCP client and a plain-HTTP
//!   one do not hold up the others' handshakes;
//! - programme audio still needs the receiver's token (`401` without it);
//! - a receiver given `--controller https://… --controller-ca` fetches the
//!   controller key and its scheduled programme over HTTPS; one that enrolls
//!   (no token) does too; one trusting another CA fetches nothing and logs
//!   the unknown issuer;
//! - bad certificate, key or CA files stop the binaries at start with an
//!   error naming the file.
//!
//! Artifacts in `tests/artifacts/https/`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use chrono::{TimeZone, Utc};
use chrono_tz::Asia::Ho_Chi_Minh;
use loa_e2e::api::Programme;
use loa_e2e::certs::TestCerts;
use loa_e2e::controller::{ControllerOptions, Https};
use loa_e2e::net::free_port;
use loa_e2e::process::{ChildProcess, log_tail};
use loa_e2e::wav_receiver::WavReceiver;
use loa_e2e::{Api, Artifacts, Binaries, BrokerMode, Controller, TestBulletin, serial, wait};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

const ZONE: &str = "thon-1";

#[test]
fn the_api_and_audio_downloads_over_https() -> Result<()> {
    let _serial = serial();
    tokio::runtime::Runtime::new()?.block_on(scenario())
}

async fn scenario() -> Result<()> {
    let mut art = Artifacts::new("https")?;
    let bins = Binaries::locate()?;
    let certs = TestCerts::generate(&art.subdir("certs")?)?;
    bad_files_stop_start_up(&bins, &art, &certs)?;
    art.figure("bad --https-key / --controller-ca files and a lone --https-cert: refused at start, naming the file or flag");

    let controller = Controller::start_with(
        &bins,
        &art,
        BrokerMode::Embedded { port: free_port() },
        ControllerOptions {
            https: Some(Https {
                cert: certs.server_cert.clone(),
                key: certs.server_key.clone(),
                ca: certs.ca.clone(),
            }),
            ..Default::default()
        },
    )
    .await?;
    let url = controller.url();
    ensure!(url.starts_with("https://"), "{url}");
    let log = std::fs::read_to_string(art.path("controller.log"))?;
    ensure!(
        log.contains(&format!("loa-controller listening on {url}")),
        "the start-up line does not say https://:\n{}",
        controller.log_tail(20)
    );

    clients_need_the_ca(&controller, &certs).await?;
    let waited = slow_clients_block_nobody(&controller, &certs).await?;
    art.figure(format!(
        "HTTPS health check with a silent and a plain-HTTP connection open: {} ms",
        waited.as_millis()
    ));

    let api = controller.admin_api().await?;
    api.create_zone(ZONE, "Thôn 1").await?;
    let bulletin = TestBulletin::generate(&art.subdir("bulletin")?)?;
    let programme = api
        .upload_programme(&bulletin.mp3, "Bản tin chuyển đổi số", "chuyen-doi-so")
        .await?;
    let token = api.create_receiver("loa-https", "Loa HTTPS", ZONE).await?;
    audio_needs_the_receivers_token(&url, &certs.ca, &programme, &token).await?;
    art.figure("programme audio over HTTPS: 401 without a token or with a wrong one, 200 with the receiver's");

    schedule_in_an_hour(&api, &programme).await?;
    let ca = certs.ca.display().to_string();
    let started = Instant::now();
    let receiver = WavReceiver::start(
        &bins,
        &art,
        "loa-https",
        &token,
        &url,
        &controller.broker_url(),
        &["--controller-ca", &ca],
    )?;
    let wrong_token = api
        .create_receiver("loa-wrong-ca", "Loa CA lạ", ZONE)
        .await?;
    let other_ca = certs.other_ca.display().to_string();
    let wrong = WavReceiver::start(
        &bins,
        &art,
        "loa-wrong-ca",
        &wrong_token,
        &url,
        &controller.broker_url(),
        &["--controller-ca", &other_ca],
    )?;
    wait_cached(&api, "loa-https", &programme)
        .await
        .with_context(|| receiver.log_tail(30))?;
    art.figure(format!(
        "receiver with --controller https:// --controller-ca: programme ({} bytes) cached {} ms after start (controller key and audio over HTTPS)",
        programme.bytes,
        started.elapsed().as_millis()
    ));
    let cached = receiver
        .cache
        .join("audio")
        .join(format!("{}.opus", programme.sha256));
    ensure!(
        std::fs::metadata(&cached)?.len() == programme.bytes,
        "{} is not the programme",
        cached.display()
    );

    let (enrolled, took) = enroll_over_https(
        &bins,
        &art,
        &api,
        (&url, &controller.broker_url(), &ca),
        &programme,
    )
    .await?;
    art.figure(format!(
        "receiver enrolling over HTTPS: accepted, then programme cached in {} ms",
        took.as_millis()
    ));

    wait::until(
        "the receiver trusting another CA to log the unknown issuer",
        Duration::from_secs(20),
        async || Ok(wrong.log_text().contains("UnknownIssuer").then_some(())),
    )
    .await
    .with_context(|| wrong.log_tail(20))?;
    let list = api.receivers().await?;
    ensure!(
        !is_cached(&list, "loa-wrong-ca", &programme),
        "a receiver trusting another CA cached the programme"
    );
    art.figure("receiver trusting another CA: nothing fetched, UnknownIssuer logged");
    drop((receiver, wrong, enrolled));
    Ok(())
}

/// A bad key or CA file, or a certificate without its key, stops start-up
/// with an error that names it.
fn bad_files_stop_start_up(bins: &Binaries, art: &Artifacts, certs: &TestCerts) -> Result<()> {
    let junk = art.path("junk.pem");
    std::fs::write(&junk, "not PEM at all\n")?;
    let data = art.subdir("refused-data")?;
    let mqtt = format!("127.0.0.1:{}", free_port());
    let http = format!("127.0.0.1:{}", free_port());
    let serve = |extra: &[&Path]| -> Result<String> {
        let mut cmd = Command::new(&bins.controller);
        cmd.args(["serve", "--http", &http, "--mqtt", &mqtt, "--data"])
            .arg(&data)
            .env_remove("LOA_HTTPS_CERT")
            .env_remove("LOA_HTTPS_KEY");
        for (flag, path) in ["--https-cert", "--https-key"].iter().zip(extra) {
            cmd.arg(flag).arg(path);
        }
        refused(&mut cmd)
    };
    let err = serve(&[&certs.server_cert, &junk])?;
    ensure!(
        err.contains("HTTPS key") && err.contains("junk.pem"),
        "bad key: {err}"
    );
    let err = serve(&[&junk, &certs.server_key])?;
    ensure!(
        err.contains("HTTPS certificate") && err.contains("junk.pem"),
        "bad certificate: {err}"
    );
    let err = serve(&[&certs.server_cert])?;
    ensure!(err.contains("--https-key"), "certificate alone: {err}");

    let cache = art.subdir("refused-cache")?;
    let err = refused(
        Command::new(&bins.receiver)
            .args(["run", "--id", "loa-x", "--token", "t", "--broker"])
            .arg(format!("mqtt://{mqtt}"))
            .args(["--controller", "https://127.0.0.1:9", "--controller-ca"])
            .arg(&junk)
            .arg("--cache")
            .arg(&cache),
    )?;
    ensure!(
        err.contains("--controller-ca") && err.contains("junk.pem"),
        "bad CA: {err}"
    );
    Ok(())
}

/// Runs `cmd`, which must fail within 30 s; returns its stderr.
fn refused(cmd: &mut Command) -> Result<String> {
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("{cmd:?}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            child.kill()?;
            child.wait()?;
            bail!("{cmd:?} was expected to refuse to start but kept running");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output()?;
    ensure!(!out.status.success(), "{cmd:?} succeeded");
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A client for the test's own requests, trusting `ca` if given (and the
/// system's CAs).
fn client(ca: Option<&Path>) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .no_proxy();
    if let Some(ca) = ca {
        let pem = std::fs::read(ca)?;
        builder = builder.tls_certs_merge(reqwest::Certificate::from_pem_bundle(&pem)?);
    }
    Ok(builder.build()?)
}

/// An error with all its causes (reqwest's own message hides the TLS reason).
fn chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn clients_need_the_ca(controller: &Controller, certs: &TestCerts) -> Result<()> {
    let url = controller.url();
    let health = format!("{url}/api/v1/health");
    let answer = client(Some(&certs.ca))?.get(&health).send().await?;
    ensure!(answer.status() == StatusCode::OK, "health: {answer:?}");
    let body: Value = answer.json().await?;
    ensure!(body["status"] == "ok", "health: {body}");

    let plain = format!("http://{}/api/v1/health", controller.http);
    if let Ok(answer) = client(None)?.get(&plain).send().await {
        bail!("plain HTTP to the HTTPS port answered {}", answer.status());
    }
    for (who, ca) in [
        ("a client without the CA", None),
        (
            "a client trusting another CA",
            Some(certs.other_ca.as_path()),
        ),
    ] {
        match client(ca)?.get(&health).send().await {
            Ok(answer) => bail!("{who} got {}", answer.status()),
            Err(e) => {
                let text = chain(&e);
                ensure!(
                    text.contains("UnknownIssuer"),
                    "{who} failed without an unknown-issuer error: {text}"
                );
            }
        }
    }
    Ok(())
}

/// Opens a connection that never says anything and one speaking plain
/// HTTP, then times a real HTTPS request while both are still open.
async fn slow_clients_block_nobody(controller: &Controller, certs: &TestCerts) -> Result<Duration> {
    let silent = tokio::net::TcpStream::connect(controller.http).await?;
    let mut plain = tokio::net::TcpStream::connect(controller.http).await?;
    plain
        .write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let answer = client(Some(&certs.ca))?
        .get(format!("{}/api/v1/health", controller.url()))
        .send()
        .await?;
    let took = started.elapsed();
    ensure!(answer.status() == StatusCode::OK, "health: {answer:?}");
    ensure!(
        took < Duration::from_secs(3),
        "an HTTPS request waited {took:?} behind a silent connection"
    );
    drop((silent, plain));
    Ok(took)
}

async fn audio_needs_the_receivers_token(
    url: &str,
    ca: &Path,
    programme: &Programme,
    token: &str,
) -> Result<()> {
    let http = client(Some(ca))?;
    let audio = format!("{url}/api/v1/programmes/{}/audio", programme.id);
    let status = http.get(&audio).send().await?.status();
    ensure!(status == StatusCode::UNAUTHORIZED, "no token: {status}");
    let status = http
        .get(&audio)
        .bearer_auth("0000-not-a-token")
        .send()
        .await?
        .status();
    ensure!(status == StatusCode::UNAUTHORIZED, "wrong token: {status}");
    let answer = http.get(&audio).bearer_auth(token).send().await?;
    ensure!(
        answer.status() == StatusCode::OK,
        "receiver token: {answer:?}"
    );
    let body = answer.bytes().await?;
    ensure!(
        hex(&Sha256::digest(&body)) == programme.sha256,
        "downloaded audio is not the programme"
    );
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One play an hour from now, for the zone: receivers fetch it at once.
async fn schedule_in_an_hour(api: &Api, programme: &Programme) -> Result<()> {
    let instant = Utc
        .timestamp_opt(Utc::now().timestamp() + 3600, 0)
        .single()
        .context("instant")?;
    let local = instant
        .with_timezone(&Ho_Chi_Minh)
        .naive_local()
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string();
    api.create_schedule(&json!({
        "programme_id": programme.id,
        "targets": {"zones": [ZONE], "receivers": []},
        "start": local, "timezone": "Asia/Ho_Chi_Minh", "priority": "normal"
    }))
    .await?;
    Ok(())
}

fn is_cached(list: &[Value], id: &str, programme: &Programme) -> bool {
    list.iter().any(|r| {
        r["id"] == id
            && r["cached"]
                .as_array()
                .is_some_and(|c| c.iter().any(|p| p == programme.id.as_str()))
    })
}

async fn wait_cached(api: &Api, id: &str, programme: &Programme) -> Result<()> {
    wait::until(
        &format!("{id} to report the programme cached"),
        Duration::from_secs(60),
        async || Ok(is_cached(&api.receivers().await?, id, programme).then_some(())),
    )
    .await
}

/// Starts a receiver without a token (`--enroll`) against the HTTPS
/// controller, accepts its code and waits until it has the programme;
/// returns the process and the time from acceptance to cached.
async fn enroll_over_https(
    bins: &Binaries,
    art: &Artifacts,
    api: &Api,
    (url, broker, ca): (&str, &str, &str),
    programme: &Programme,
) -> Result<(ChildProcess, Duration)> {
    const ID: &str = "loa-enrolled";
    let dir = art.subdir(ID)?;
    let log = art.path(&format!("{ID}.log"));
    let mut cmd = Command::new(&bins.receiver);
    cmd.args([
        "run",
        "--enroll",
        "--controller",
        url,
        "--controller-ca",
        ca,
    ])
    .args(["--broker", broker])
    .arg("--cache")
    .arg(dir.join("cache"))
    .arg("--output")
    .arg(format!("wav:{}", dir.join("out.wav").display()))
    .env("RUST_LOG", "info,loa_receiver=debug");
    let mut process = ChildProcess::spawn(&format!("receiver {ID}"), cmd, &log)?;
    let code = wait::until(
        "the enrollment code in the receiver's output",
        Duration::from_secs(30),
        async || {
            process.ensure_running()?;
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            Ok(text.lines().find_map(|line| {
                let code = line.split("Mã đăng ký: ").nth(1)?.get(..9)?;
                Some(code.to_string())
            }))
        },
    )
    .await?;
    // The request reaches the controller over HTTPS before it is listed,
    // with the peer address (the enrollment rate limit's key).
    let request = wait::until(
        "the enrollment request on the controller",
        Duration::from_secs(30),
        async || {
            let pending = api
                .ok(reqwest::Method::GET, "/api/v1/enrollments", None)
                .await?;
            Ok(loa_e2e::api::list(pending)?
                .into_iter()
                .find(|r| r["code"] == code.as_str()))
        },
    )
    .await
    .with_context(|| log_tail(&log, 20))?;
    ensure!(
        request["remote_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1")),
        "enrollment request without the peer address: {request}"
    );
    api.ok(
        reqwest::Method::POST,
        &format!("/api/v1/enrollments/{code}/accept"),
        Some(&json!({"id": ID, "name": "Loa đăng ký qua HTTPS", "zone": ZONE})),
    )
    .await?;
    let accepted = Instant::now();
    wait_cached(api, ID, programme)
        .await
        .with_context(|| log_tail(&log, 30))?;
    Ok((process, accepted.elapsed()))
}

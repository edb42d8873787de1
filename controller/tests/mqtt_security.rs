//! The embedded broker as `serve` runs it: every client must log in
//! (receiver id + token, or the controller's own per-process credential),
//! and MQTTS works with the right CA and fails with another.
//!
//! Test certificates are made with the `openssl` command (installed with
//! the test set-up, like Mosquitto).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use serde_json::json;

const PASSWORD: &str = "mqtt-security-test-pw";

fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA named `name` (`{name}.pem`, `{name}.key`).
fn make_ca(dir: &Path, name: &str) -> PathBuf {
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
    );
    dir.join(format!("{name}.pem"))
}

/// A server certificate for 127.0.0.1 signed by CA `ca`: (cert, key).
fn make_server_cert(dir: &Path, ca: &str) -> (PathBuf, PathBuf) {
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
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
    (dir.join("server.pem"), dir.join("server.key"))
}

/// How a connection attempt ended.
enum Outcome {
    /// CONNACK accepted; the client is kept for further use.
    Accepted(AsyncClient, Box<rumqttc::EventLoop>),
    Refused(String),
}

async fn connect(
    port: u16,
    client_id: &str,
    login: Option<(&str, &str)>,
    ca: Option<Vec<u8>>,
) -> Outcome {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(5));
    if let Some((user, password)) = login {
        options.set_credentials(user, password);
    }
    if let Some(ca) = ca {
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth: None,
        }));
    }
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let first = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    break if ack.code == rumqttc::ConnectReturnCode::Success {
                        Ok(())
                    } else {
                        Err(format!("{:?}", ack.code))
                    };
                }
                Ok(_) => {}
                Err(e) => break Err(e.to_string()),
            }
        }
    })
    .await
    .expect("the broker answers within 10 s");
    match first {
        Ok(()) => Outcome::Accepted(client, Box::new(eventloop)),
        Err(e) => Outcome::Refused(e),
    }
}

fn refused(outcome: Outcome, what: &str) -> String {
    match outcome {
        Outcome::Refused(e) => e,
        Outcome::Accepted(..) => panic!("{what} was accepted"),
    }
}

struct Server {
    base: String,
    admin: String,
    client: reqwest::Client,
    mqtt_port: u16,
    mqtts_port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(cert: PathBuf, key: PathBuf) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let (http, mqtt, mqtts) = (free_addr(), free_addr(), free_addr());
        let config = loa_controller::config::Config {
            data_dir: dir.path().to_path_buf(),
            http,
            https: None,
            mqtt: loa_controller::config::MqttMode::Embedded(mqtt),
            mqtt_security: loa_controller::config::MqttSecurity {
                tls: Some(loa_controller::config::MqttTlsListen {
                    listen: mqtts,
                    cert,
                    key,
                }),
                ..Default::default()
            },
            max_upload_bytes: 1024 * 1024,
            horizon: chrono::Duration::days(7),
            admin_password: Some(PASSWORD.into()),
            live: Default::default(),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(loa_controller::server::run(config, async {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::new();
        let base = format!("http://{http}/api/v1");
        let mut up = false;
        for _ in 0..200 {
            if client
                .get(format!("{base}/health"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                up = true;
                break;
            }
            assert!(!task.is_finished(), "server ended early");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(up, "server did not come up");
        let login: serde_json::Value = client
            .post(format!("{base}/login"))
            .json(&json!({"username": "admin", "password": PASSWORD}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let admin = login["token"].as_str().unwrap().to_string();
        let server = Server {
            base,
            admin,
            client,
            mqtt_port: mqtt.port(),
            mqtts_port: mqtts.port(),
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        };
        let r = server
            .client
            .post(format!("{}/zones", server.base))
            .bearer_auth(&server.admin)
            .json(&json!({"id": "thon-1", "name": "Thôn 1"}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "zone: {}", r.status());
        server
    }

    /// Registers a receiver; returns its token.
    async fn receiver(&self, id: &str) -> String {
        let r = self
            .client
            .post(format!("{}/receivers", self.base))
            .bearer_auth(&self.admin)
            .json(&json!({"id": id, "name": id, "zone": "thon-1"}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "receiver: {}", r.status());
        let body: serde_json::Value = r.json().await.unwrap();
        body["token"].as_str().unwrap().to_string()
    }

    async fn delete_receiver(&self, id: &str) {
        let r = self
            .client
            .delete(format!("{}/receivers/{id}", self.base))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "delete: {}", r.status());
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(15), self.task.take().unwrap())
            .await
            .expect("server stops")
            .unwrap()
            .unwrap();
    }
}

#[tokio::test]
async fn only_registered_receivers_with_their_own_token_get_in() {
    let dir = tempfile::tempdir().unwrap();
    make_ca(dir.path(), "ca");
    let (cert, key) = make_server_cert(dir.path(), "ca");
    let server = Server::start(cert, key).await;
    let t1 = server.receiver("loa-1").await;
    let t2 = server.receiver("loa-2").await;
    let port = server.mqtt_port;

    refused(connect(port, "loa-1", None, None).await, "anonymous");
    refused(
        connect(port, "loa-1", Some(("loa-1", "wrong")), None).await,
        "a wrong token",
    );
    refused(
        connect(port, "loa-1", Some(("loa-1", &t2)), None).await,
        "loa-2's token for loa-1",
    );
    refused(
        connect(port, "loa-1", Some(("loa-2", &t2)), None).await,
        "loa-2's id and token under client id loa-1",
    );
    refused(
        connect(
            port,
            "loa-controller",
            Some(("loa-controller-internal", "guess")),
            None,
        )
        .await,
        "a guessed internal credential",
    );
    refused(
        connect(port, "loa-9", Some(("loa-9", &t1)), None).await,
        "an unregistered receiver",
    );
    let Outcome::Accepted(..) = connect(port, "loa-1", Some(("loa-1", &t1)), None).await else {
        panic!("loa-1 with its own token was refused");
    };

    // A deleted receiver is refused once the look-up cache expires.
    server.delete_receiver("loa-2").await;
    tokio::time::sleep(loa_controller::mqtt_auth::CACHE_TTL + Duration::from_millis(200)).await;
    refused(
        connect(port, "loa-2", Some(("loa-2", &t2)), None).await,
        "a deleted receiver",
    );
    server.stop().await;
}

#[tokio::test]
async fn mqtts_works_with_the_right_ca_and_fails_with_another() {
    let dir = tempfile::tempdir().unwrap();
    let ca = make_ca(dir.path(), "ca");
    let other_ca = make_ca(dir.path(), "other-ca");
    let (cert, key) = make_server_cert(dir.path(), "ca");
    let server = Server::start(cert, key).await;
    let token = server.receiver("loa-1").await;
    let ca_pem = std::fs::read(&ca).unwrap();

    let error = refused(
        connect(
            server.mqtts_port,
            "loa-1",
            Some(("loa-1", &token)),
            Some(std::fs::read(&other_ca).unwrap()),
        )
        .await,
        "a server certificate from an untrusted CA",
    );
    assert!(
        error.to_lowercase().contains("certificate"),
        "unclear error: {error}"
    );
    refused(
        connect(
            server.mqtts_port,
            "loa-1",
            Some(("loa-1", "wrong")),
            Some(ca_pem.clone()),
        )
        .await,
        "a wrong token over TLS",
    );

    // End to end: the controller's retained schedule for loa-1 arrives over TLS.
    let Outcome::Accepted(client, mut eventloop) = connect(
        server.mqtts_port,
        "loa-1",
        Some(("loa-1", &token)),
        Some(ca_pem),
    )
    .await
    else {
        panic!("loa-1 over TLS with the right CA was refused");
    };
    let topic = loa_protocol::topics::ReceiverTopic::Schedule.for_receiver("loa-1");
    client.subscribe(&topic, QoS::AtLeastOnce).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == topic => break p,
                Ok(_) => {}
                Err(e) => panic!("TLS link failed: {e}"),
            }
        }
    })
    .await
    .expect("the schedule arrives over TLS");
    assert!(!got.payload.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn a_missing_certificate_stops_start_up_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (http, mqtt, mqtts) = (free_addr(), free_addr(), free_addr());
    let config = loa_controller::config::Config {
        data_dir: dir.path().to_path_buf(),
        http,
        https: None,
        mqtt: loa_controller::config::MqttMode::Embedded(mqtt),
        mqtt_security: loa_controller::config::MqttSecurity {
            tls: Some(loa_controller::config::MqttTlsListen {
                listen: mqtts,
                cert: dir.path().join("absent.pem"),
                key: dir.path().join("absent.key"),
            }),
            ..Default::default()
        },
        max_upload_bytes: 1024,
        horizon: chrono::Duration::days(1),
        admin_password: Some(PASSWORD.into()),
        live: Default::default(),
    };
    let err = tokio::time::timeout(
        Duration::from_secs(15),
        loa_controller::server::run(config, std::future::pending()),
    )
    .await
    .expect("start-up fails fast")
    .unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("absent.pem"), "{text}");
}

/// Sends `subscribe` (or a publish) on a fresh login of `id` and says what
/// the broker did: `Ok(())` if it acknowledged, `Err` if it closed the link.
async fn try_packet(port: u16, id: &str, token: &str, packet: Try<'_>) -> Result<(), String> {
    let Outcome::Accepted(client, mut eventloop) = connect(port, id, Some((id, token)), None).await
    else {
        panic!("{id} with its own token was refused");
    };
    match packet {
        Try::Subscribe(filter) => client.subscribe(filter, QoS::AtLeastOnce).await.unwrap(),
        Try::Publish(topic) => client
            .publish(topic, QoS::AtLeastOnce, false, b"{}".to_vec())
            .await
            .unwrap(),
    }
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    break if ack
                        .return_codes
                        .iter()
                        .all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_)))
                    {
                        Ok(())
                    } else {
                        Err(format!("SUBACK {:?}", ack.return_codes))
                    };
                }
                Ok(Event::Incoming(Packet::PubAck(_))) => break Ok(()),
                Ok(_) => {}
                Err(e) => break Err(e.to_string()),
            }
        }
    })
    .await
    .expect("the broker answers or closes within 5 s")
}

enum Try<'a> {
    Subscribe(&'a str),
    Publish(&'a str),
}

#[tokio::test]
async fn topic_acls_keep_a_receiver_to_its_own_topics() {
    use loa_protocol::live::{clock_request_topic, receiver_live_topic, zone_live_topic};
    use loa_protocol::topics::ReceiverTopic;
    let dir = tempfile::tempdir().unwrap();
    make_ca(dir.path(), "ca");
    let (cert, key) = make_server_cert(dir.path(), "ca");
    let server = Server::start(cert, key).await;
    let t1 = server.receiver("loa-1").await;
    server.receiver("loa-2").await;
    let port = server.mqtt_port;

    // Allowed: its own topics and its zone's live topic.
    for filter in [
        ReceiverTopic::Schedule.for_receiver("loa-1"),
        ReceiverTopic::Settings.for_receiver("loa-1"),
        receiver_live_topic("loa-1"),
        zone_live_topic("thon-1"),
    ] {
        try_packet(port, "loa-1", &t1, Try::Subscribe(&filter))
            .await
            .unwrap_or_else(|e| panic!("subscribing to {filter} failed: {e}"));
    }
    for topic in [
        ReceiverTopic::Status.for_receiver("loa-1"),
        ReceiverTopic::Plays.for_receiver("loa-1"),
        clock_request_topic("loa-1"),
    ] {
        try_packet(port, "loa-1", &t1, Try::Publish(&topic))
            .await
            .unwrap_or_else(|e| panic!("publishing on {topic} failed: {e}"));
    }

    // Denied: the connection is closed, nothing is delivered.
    for filter in [
        ReceiverTopic::Schedule.for_receiver("loa-2"),
        receiver_live_topic("loa-2"),
        zone_live_topic("thon-2"),
        "loa/v1/#".to_string(),
        ReceiverTopic::Schedule.for_all(),
        "#".to_string(),
    ] {
        let outcome = try_packet(port, "loa-1", &t1, Try::Subscribe(&filter)).await;
        assert!(outcome.is_err(), "loa-1 could subscribe to {filter}");
    }
    for topic in [
        ReceiverTopic::Status.for_receiver("loa-2"),
        ReceiverTopic::Plays.for_receiver("loa-2"),
        ReceiverTopic::Schedule.for_receiver("loa-1"),
        zone_live_topic("thon-1"),
    ] {
        let outcome = try_packet(port, "loa-1", &t1, Try::Publish(&topic)).await;
        assert!(outcome.is_err(), "loa-1 could publish on {topic}");
    }

    // A last will on another receiver's status topic is refused at login.
    let mut options = MqttOptions::new("loa-1", "127.0.0.1", port);
    options.set_credentials("loa-1", &t1);
    options.set_last_will(rumqttc::LastWill::new(
        ReceiverTopic::Status.for_receiver("loa-2"),
        b"{}".to_vec(),
        QoS::AtLeastOnce,
        true,
    ));
    let (_client, mut eventloop) = AsyncClient::new(options, 4);
    let first = tokio::time::timeout(Duration::from_secs(5), eventloop.poll())
        .await
        .expect("an answer within 5 s");
    assert!(
        !matches!(first, Ok(Event::Incoming(Packet::ConnAck(ref a))) if a.code == rumqttc::ConnectReturnCode::Success),
        "a last will on loa-2's status was accepted: {first:?}"
    );
    server.stop().await;
}

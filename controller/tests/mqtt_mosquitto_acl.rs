//! Topic ACLs on a real Mosquitto, with the files `loa-controller
//! mosquitto-acl` writes: a receiver reads only its own and its zone's
//! topics and publishes only its own; anonymous clients and wrong tokens
//! are refused; the controller's own account (through the real [`Bus`])
//! may do everything.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use loa_controller::bus::{BrokerLogin, Bus};
use loa_controller::mosquitto::{AclOptions, write_files};
use loa_controller::mqtt_auth::Credentials;
use loa_protocol::live::zone_live_topic;
use loa_protocol::topics::ReceiverTopic;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

struct Mosquitto {
    child: Child,
    port: u16,
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_mosquitto(dir: &Path) -> Mosquitto {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npersistence false\n\
             user root\npassword_file {}\nacl_file {}\n",
            dir.join("passwd").display(),
            dir.join("acl").display()
        ),
    )
    .unwrap();
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto is installed (apt-get install mosquitto)");
    let mut broker = Mosquitto { child, port };
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = std::time::Instant::now() + WAIT;
    while TcpStream::connect(addr).is_err() {
        if let Ok(Some(status)) = broker.child.try_wait() {
            panic!("mosquitto exited: {status}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "mosquitto did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    broker
}

/// A client logged in as `user`; yields SUBACK codes and publishes.
struct Client {
    client: AsyncClient,
    subacks: mpsc::UnboundedReceiver<Vec<SubscribeReasonCode>>,
    publishes: mpsc::UnboundedReceiver<rumqttc::Publish>,
}

impl Client {
    async fn connect(port: u16, user: &str, password: &str) -> Result<Client, String> {
        let mut options = MqttOptions::new(user, "127.0.0.1", port);
        options
            .set_keep_alive(Duration::from_secs(5))
            .set_credentials(user, password);
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        let first = tokio::time::timeout(WAIT, async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => break Ok(()),
                    Ok(_) => {}
                    Err(e) => break Err(e.to_string()),
                }
            }
        })
        .await
        .expect("mosquitto answers");
        first?;
        let (sub_tx, subacks) = mpsc::unbounded_channel();
        let (pub_tx, publishes) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(ack))) => drop(sub_tx.send(ack.return_codes)),
                    Ok(Event::Incoming(Packet::Publish(p))) => drop(pub_tx.send(p)),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        Ok(Client {
            client,
            subacks,
            publishes,
        })
    }

    /// Subscribes and returns whether the broker granted it.
    async fn subscribe(&mut self, filter: &str) -> bool {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        let codes = tokio::time::timeout(WAIT, self.subacks.recv())
            .await
            .expect("SUBACK")
            .unwrap();
        assert_eq!(codes.len(), 1);
        matches!(codes[0], SubscribeReasonCode::Success(_))
    }
}

#[tokio::test]
async fn receivers_read_and_write_only_their_own_topics() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let db = loa_controller::db::open(&data).await.unwrap();
    for (zone, _) in [("thon-1", ()), ("thon-2", ())] {
        sqlx::query("INSERT INTO zones (id, name, created_at) VALUES ($1, $1, 0)")
            .bind(zone)
            .execute(&db)
            .await
            .unwrap();
    }
    for (id, zone, token) in [("loa-1", "thon-1", "tok-1"), ("loa-2", "thon-2", "tok-2")] {
        sqlx::query(
            "INSERT INTO receivers (id, name, zone_id, token_hash, created_at) \
             VALUES ($1, $1, $2, $3, 0)",
        )
        .bind(id)
        .bind(zone)
        .bind(loa_controller::auth::token_hash(token))
        .execute(&db)
        .await
        .unwrap();
    }
    // A wrong token in the tokens file is refused, not written.
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "loa-1 not-the-token\n").unwrap();
    let mut options = AclOptions {
        acl_file: dir.path().join("acl"),
        password_file: Some(dir.path().join("passwd")),
        controller_user: "loa-controller".into(),
        controller_password: Some("ctl-pw".into()),
        tokens_file: Some(tokens.clone()),
    };
    let err = write_files(&db, &options).await.unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");

    std::fs::write(&tokens, "# id token\nloa-1 tok-1\nloa-2 tok-2\n").unwrap();
    let written = write_files(&db, &options).await.unwrap();
    assert_eq!(written.receivers, 2);
    assert_eq!(written.passwords_set, 3);
    assert!(written.without_password.is_empty());
    // Re-running without tokens keeps the receivers' entries.
    options.tokens_file = None;
    let again = write_files(&db, &options).await.unwrap();
    assert!(again.without_password.is_empty(), "{again:?}");

    let broker = start_mosquitto(dir.path());
    let port = broker.port;

    Client::connect(port, "loa-1", "")
        .await
        .err()
        .expect("no password is refused");
    Client::connect(port, "loa-1", "tok-2")
        .await
        .err()
        .expect("another receiver's token is refused");
    Client::connect(port, "intruder", "x")
        .await
        .err()
        .expect("an unknown user is refused");

    let mut controller = Client::connect(port, "loa-controller", "ctl-pw")
        .await
        .expect("the controller logs in");
    assert!(controller.subscribe(&ReceiverTopic::Status.for_all()).await);

    let mut loa1 = Client::connect(port, "loa-1", "tok-1").await.unwrap();
    // Its own topics and its zone: granted.
    assert!(
        loa1.subscribe(&ReceiverTopic::Schedule.for_receiver("loa-1"))
            .await
    );
    assert!(
        loa1.subscribe(&ReceiverTopic::Commands.for_receiver("loa-1"))
            .await
    );
    assert!(loa1.subscribe(&zone_live_topic("thon-1")).await);
    // Another receiver's schedule, another zone, a wildcard. Mosquitto 2.0
    // answers an MQTT 3.1.1 SUBSCRIBE it denies either with failure 0x80 or
    // (2.0.11) with a grant that delivers nothing, so the proof is below:
    // nothing denied ever arrives.
    let loa2_schedule = ReceiverTopic::Schedule.for_receiver("loa-2");
    for filter in [
        loa2_schedule.clone(),
        zone_live_topic("thon-2"),
        "loa/v1/#".to_string(),
    ] {
        let granted = loa1.subscribe(&filter).await;
        eprintln!("loa-1 SUBSCRIBE {filter}: granted in SUBACK = {granted}");
    }

    // The controller sends loa-2's schedule and thon-2's live topic, then
    // loa-1's schedule. One publisher, one subscriber connection: were the
    // first two delivered, they would arrive before the third.
    let own_schedule = ReceiverTopic::Schedule.for_receiver("loa-1");
    for (topic, body) in [
        (loa2_schedule.as_str(), &b"secret-schedule"[..]),
        (zone_live_topic("thon-2").as_str(), &b"other-zone"[..]),
        (own_schedule.as_str(), &b"mine"[..]),
    ] {
        controller
            .client
            .publish(topic, QoS::AtLeastOnce, false, body.to_vec())
            .await
            .unwrap();
    }
    let first = tokio::time::timeout(WAIT, loa1.publishes.recv())
        .await
        .expect("loa-1's own schedule arrives")
        .unwrap();
    assert_eq!(
        (first.topic.as_str(), &first.payload[..]),
        (own_schedule.as_str(), &b"mine"[..]),
        "loa-1 read a topic it must not"
    );

    // A forged status for loa-2 is dropped; its own status gets through.
    // Both go out on one connection in order, so if the forged one were
    // delivered it would arrive first.
    let forged = ReceiverTopic::Status.for_receiver("loa-2");
    let own = ReceiverTopic::Status.for_receiver("loa-1");
    loa1.client
        .publish(&forged, QoS::AtLeastOnce, false, b"forged".to_vec())
        .await
        .unwrap();
    loa1.client
        .publish(&own, QoS::AtLeastOnce, false, b"own".to_vec())
        .await
        .unwrap();
    let first = tokio::time::timeout(WAIT, controller.publishes.recv())
        .await
        .expect("the receiver's own status arrives")
        .unwrap();
    assert_eq!(first.topic, own, "a forged status got through");
    assert_eq!(&first.payload[..], b"own");

    // loa-1 cannot publish on its own schedule topic (controller → receiver)
    // either: the controller's message is the next thing it reads.
    loa1.client
        .publish(
            &own_schedule,
            QoS::AtLeastOnce,
            false,
            b"self-made".to_vec(),
        )
        .await
        .unwrap();
    controller
        .client
        .publish(
            &own_schedule,
            QoS::AtLeastOnce,
            false,
            b"from-controller".to_vec(),
        )
        .await
        .unwrap();
    let got = tokio::time::timeout(WAIT, loa1.publishes.recv())
        .await
        .expect("the controller's message arrives")
        .unwrap();
    assert_eq!(&got.payload[..], b"from-controller");

    // The real bus logs in with the controller's account.
    let signer = Arc::new(loa_controller::signing::Signer::open(&data).unwrap());
    let login = BrokerLogin {
        credentials: Some(Credentials::new("loa-controller", "ctl-pw")),
        ca_pem: None,
    };
    let url = format!("mqtt://127.0.0.1:{port}");
    let (bus, _events) = Bus::connect_with(&url, "loa-controller", signer.clone(), &login)
        .await
        .unwrap();
    assert!(bus.wait_ready(WAIT).await, "the bus logs in and subscribes");
    let (anonymous, _events) = Bus::connect(&url, "loa-controller-anon", signer)
        .await
        .unwrap();
    assert!(
        !anonymous.wait_ready(Duration::from_secs(2)).await,
        "an anonymous bus must be refused"
    );
    drop(broker);
}

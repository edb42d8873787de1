//! API integration tests on the real router and database: login and
//! throttling, authentication, zones, receivers and presence, schedules
//! (occurrences in Vietnam time, validation), proof of play as JSON and CSV,
//! error shapes, and `server::run` with the embedded broker.

mod api_common;

use api_common::{PASSWORD, TestApp};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use chrono::{DateTime, Datelike, Duration, NaiveDate, Timelike, Utc, Weekday};
use serde_json::json;

#[tokio::test]
async fn health_needs_no_auth() {
    let t = TestApp::new().await;
    let r = t.call(Method::GET, "/api/v1/health", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!({"status": "ok"}));
}

#[tokio::test]
async fn login_accepts_the_right_password_only() {
    let t = TestApp::new().await;
    let ok = t
        .call(
            Method::POST,
            "/api/v1/login",
            None,
            Some(json!({"username": "admin", "password": PASSWORD})),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    let token = ok.json()["token"].as_str().unwrap().to_string();
    assert_eq!(token.len(), 64);
    assert_ne!(token, t.token);
    assert_eq!(
        t.call(Method::GET, "/api/v1/zones", Some(&token), None)
            .await
            .status,
        StatusCode::OK
    );
    // Only the hash is stored.
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sessions WHERE token_hash = $1")
        .bind(&token)
        .fetch_one(&t.db)
        .await
        .unwrap();
    assert_eq!(stored, 0);

    for body in [
        json!({"username": "admin", "password": "sai"}),
        json!({"username": "khong-co", "password": PASSWORD}),
    ] {
        let v = t
            .call(Method::POST, "/api/v1/login", None, Some(body))
            .await
            .assert_error(StatusCode::UNAUTHORIZED);
        assert_eq!(v["code"], "bad_credentials");
    }
    // Malformed requests get the same JSON error shape.
    let raw = |ct: &'static str, body: &'static str| {
        Request::builder()
            .method(Method::POST)
            .uri("/api/v1/login")
            .header(header::CONTENT_TYPE, ct)
            .body(Body::from(body))
            .unwrap()
    };
    t.send(raw("application/json", "{not json"))
        .await
        .assert_error(StatusCode::BAD_REQUEST);
    t.send(raw("text/plain", "admin"))
        .await
        .assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    t.send(raw("application/json", r#"{"username": "admin"}"#))
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn repeated_failed_logins_are_throttled() {
    let t = TestApp::new().await;
    let attempt = |password: &str| {
        t.call(
            Method::POST,
            "/api/v1/login",
            None,
            Some(json!({"username": "admin", "password": password})),
        )
    };
    for _ in 0..5 {
        attempt("sai").await.assert_error(StatusCode::UNAUTHORIZED);
    }
    // Locked: even the right password is refused for now.
    let r = attempt(PASSWORD).await;
    r.assert_error(StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r.headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry));
}

#[tokio::test]
async fn every_resource_requires_a_valid_token() {
    let t = TestApp::new().await;
    for (method, uri) in [
        (Method::GET, "/api/v1/zones"),
        (Method::POST, "/api/v1/zones"),
        (Method::GET, "/api/v1/receivers"),
        (Method::POST, "/api/v1/receivers"),
        (Method::GET, "/api/v1/programmes"),
        (Method::POST, "/api/v1/programmes"),
        (Method::GET, "/api/v1/programmes/x"),
        (Method::GET, "/api/v1/programmes/x/audio"),
        (Method::GET, "/api/v1/schedules"),
        (Method::POST, "/api/v1/schedules"),
        (Method::GET, "/api/v1/schedules/x"),
        (Method::DELETE, "/api/v1/schedules/x"),
        (Method::GET, "/api/v1/plays"),
    ] {
        for token in [None, Some("abc"), Some(&"0".repeat(64)[..])] {
            let r = t.call(method.clone(), uri, token, None).await;
            r.assert_error(StatusCode::UNAUTHORIZED);
        }
    }
    // Unknown routes and methods answer in the same shape.
    t.get("/api/v1/nothing-here")
        .await
        .assert_error(StatusCode::NOT_FOUND);
    t.call(Method::PUT, "/api/v1/zones", Some(&t.token), None)
        .await
        .assert_error(StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn zones_and_receivers_are_created_validated_and_listed() {
    let t = TestApp::new().await;
    let r = t
        .post("/api/v1/zones", json!({"id": "thon-1", "name": "Thôn 1"}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.json()["name"], "Thôn 1");
    t.post("/api/v1/zones", json!({"id": "thon-1", "name": "Lại"}))
        .await
        .assert_error(StatusCode::CONFLICT);
    t.post("/api/v1/zones", json!({"id": "thôn/2", "name": "x"}))
        .await
        .assert_error(StatusCode::BAD_REQUEST);
    t.post("/api/v1/zones", json!({"id": "thon-2", "name": "  "}))
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY);
    t.post("/api/v1/zones", json!({"id": "thon-2"}))
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        t.post("/api/v1/zones", json!({"id": "thon-2", "name": "Thôn 2"}))
            .await
            .status,
        StatusCode::CREATED
    );
    let zones = t.get("/api/v1/zones").await.json();
    let ids: Vec<&str> = zones
        .as_array()
        .unwrap()
        .iter()
        .map(|z| z["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["thon-1", "thon-2"]);

    let r = t
        .post(
            "/api/v1/receivers",
            json!({"id": "loa-1", "name": "Loa nhà văn hoá", "zone": "thon-1"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let v = r.json();
    assert_eq!(v["id"], "loa-1");
    let token = v["token"].as_str().unwrap();
    assert!(token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()));
    t.post(
        "/api/v1/receivers",
        json!({"id": "loa-1", "name": "x", "zone": "thon-1"}),
    )
    .await
    .assert_error(StatusCode::CONFLICT);
    t.post(
        "/api/v1/receivers",
        json!({"id": "loa-2", "name": "x", "zone": "khong-co"}),
    )
    .await
    .assert_error(StatusCode::UNPROCESSABLE_ENTITY);
    t.post(
        "/api/v1/receivers",
        json!({"id": "loa 2", "name": "x", "zone": "thon-1"}),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST);

    // A new receiver is offline and has nothing cached.
    let list = t.get("/api/v1/receivers").await.json();
    let r0 = &list[0];
    assert_eq!(
        (
            r0["id"].as_str(),
            r0["zone"].as_str(),
            r0["online"].as_bool()
        ),
        (Some("loa-1"), Some("thon-1"), Some(false))
    );
    assert!(
        r0["last_seen"].is_null()
            && r0["now_playing"].is_null()
            && r0["schedule_version"].is_null()
    );
    assert_eq!(r0["cached"], json!([]));
    assert!(r0.get("token").is_none() && r0.get("token_hash").is_none());

    // Presence as ingest writes it: online with a fresh heartbeat.
    let now = Utc::now();
    let playing =
        json!({"programme_id": "p1", "event_id": "s1@1", "started_at": "2026-11-23T23:30:00Z"});
    sqlx::query("UPDATE receivers SET online = TRUE, last_seen = $1, now_playing = $2, cached = $3, schedule_version = 7 WHERE id = 'loa-1'")
        .bind(now.timestamp_millis())
        .bind(playing.to_string())
        .bind(r#"["p1","p2"]"#)
        .execute(&t.db)
        .await
        .unwrap();
    let r0 = t.get("/api/v1/receivers").await.json()[0].clone();
    assert_eq!(r0["online"], true);
    assert_eq!(r0["now_playing"], playing);
    assert_eq!(r0["cached"], json!(["p1", "p2"]));
    assert_eq!(r0["schedule_version"], 7);
    let seen: DateTime<Utc> = r0["last_seen"].as_str().unwrap().parse().unwrap();
    assert_eq!(seen.timestamp_millis(), now.timestamp_millis());
    // A stale heartbeat counts as offline even if the flag says online.
    sqlx::query("UPDATE receivers SET last_seen = $1 WHERE id = 'loa-1'")
        .bind((now - Duration::seconds(40)).timestamp_millis())
        .execute(&t.db)
        .await
        .unwrap();
    assert_eq!(t.get("/api/v1/receivers").await.json()[0]["online"], false);

    // Move to another zone, then zone deletion rules.
    let r = t
        .call(
            Method::PATCH,
            "/api/v1/receivers/loa-1",
            Some(&t.token),
            Some(json!({"zone": "thon-2"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["zone"], "thon-2");
    t.delete("/api/v1/zones/thon-2")
        .await
        .assert_error(StatusCode::CONFLICT);
    assert_eq!(
        t.delete("/api/v1/zones/thon-1").await.status,
        StatusCode::NO_CONTENT
    );
    t.delete("/api/v1/zones/thon-1")
        .await
        .assert_error(StatusCode::NOT_FOUND);
    assert_eq!(
        t.delete("/api/v1/receivers/loa-1").await.status,
        StatusCode::NO_CONTENT
    );
    t.get("/api/v1/receivers/loa-1")
        .await
        .assert_error(StatusCode::NOT_FOUND);
}

/// The first Tuesday on or after 1 November of a year well in the future,
/// so the test does not expire.
fn future_tuesday() -> NaiveDate {
    let year = Utc::now().year() + 2;
    let mut d = NaiveDate::from_ymd_opt(year, 11, 1).unwrap();
    while d.weekday() != Weekday::Tue {
        d = d.succ_opt().unwrap();
    }
    d
}

#[tokio::test]
async fn schedule_occurrences_are_in_vietnam_time() {
    let t = TestApp::new().await;
    t.zone_and_receiver("thon-1", "loa-1").await;
    t.seed_programme("ban-tin", 60_000).await;
    let start = future_tuesday();
    let body = json!({
        "programme_id": "ban-tin",
        "targets": {"zones": ["thon-1"], "receivers": ["loa-1"]},
        "start": format!("{start}T06:30:00"),
        "timezone": "Asia/Ho_Chi_Minh",
        "rrule": "FREQ=WEEKLY;BYDAY=TU,FR",
        "priority": "normal",
    });
    let r = t.post("/api/v1/schedules", body).await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let v = r.json();
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(v["programme_id"], "ban-tin");
    assert_eq!(
        v["targets"],
        json!({"zones": ["thon-1"], "receivers": ["loa-1"]})
    );
    assert_eq!(v["timezone"], "Asia/Ho_Chi_Minh");
    assert_eq!(v["priority"], "normal");
    let next: Vec<DateTime<Utc>> = v["next_occurrences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(next.len(), 10);
    // 06:30 on Tuesday in UTC+7 is 23:30 UTC on the Monday before.
    let expected_first = start
        .pred_opt()
        .unwrap()
        .and_hms_opt(23, 30, 0)
        .unwrap()
        .and_utc();
    assert_eq!(next[0], expected_first);
    assert_eq!(next[1], expected_first + Duration::days(3));
    assert_eq!(next[2], expected_first + Duration::days(7));
    for w in next.windows(2) {
        assert!(w[0] < w[1]);
    }
    for instant in &next {
        let local = instant.with_timezone(&chrono_tz::Asia::Ho_Chi_Minh);
        assert!(
            matches!(local.weekday(), Weekday::Tue | Weekday::Fri),
            "{local}"
        );
        assert_eq!((local.hour(), local.minute(), local.second()), (6, 30, 0));
    }

    // Read back, listed, deleted.
    let one = t.get(&format!("/api/v1/schedules/{id}")).await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.json()["next_occurrences"], v["next_occurrences"]);
    assert_eq!(one.json()["rrule"], "FREQ=WEEKLY;BYDAY=TU,FR");
    assert_eq!(
        t.get("/api/v1/schedules")
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        t.delete(&format!("/api/v1/schedules/{id}")).await.status,
        StatusCode::NO_CONTENT
    );
    t.get(&format!("/api/v1/schedules/{id}"))
        .await
        .assert_error(StatusCode::NOT_FOUND);
    t.delete(&format!("/api/v1/schedules/{id}"))
        .await
        .assert_error(StatusCode::NOT_FOUND);
    let targets: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM schedule_targets")
        .fetch_one(&t.db)
        .await
        .unwrap();
    assert_eq!(targets, 0);
}

#[tokio::test]
async fn invalid_schedules_are_refused_with_reasons() {
    let t = TestApp::new().await;
    t.zone_and_receiver("thon-1", "loa-1").await;
    t.seed_programme("ban-tin", 60_000).await;
    let start = format!("{}T06:30:00", future_tuesday());
    let base = json!({"programme_id": "ban-tin", "targets": {"zones": ["thon-1"]}, "start": start});
    let with = |key: &str, value: serde_json::Value| {
        let mut b = base.clone();
        b[key] = value;
        b
    };
    let cases = [
        (
            with("rrule", json!("FREQ=SOMETIMES")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_rrule",
        ),
        (
            with("timezone", json!("Mars/Olympus")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_timezone",
        ),
        (
            with("start", json!("ngày mai")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_schedule",
        ),
        (
            with("targets", json!({})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "no_targets",
        ),
        (
            with("programme_id", json!("khong-co")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_programme",
        ),
        (
            with("targets", json!({"zones": ["khong-co"]})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_zone",
        ),
        (
            with("targets", json!({"receivers": ["khong-co"]})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_receiver",
        ),
        (
            with("targets", json!({"zones": ["a/b"]})),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            with("priority", json!("urgent")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_fields",
        ),
        (
            with("start", json!("2001-01-01T06:30:00")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "no_future_occurrence",
        ),
    ];
    for (body, status, code) in cases {
        let v = t
            .post("/api/v1/schedules", body.clone())
            .await
            .assert_error(status);
        assert_eq!(v["code"], code, "{body}: {v}");
    }
    // Ids are checked, and unique.
    assert_eq!(
        t.post("/api/v1/schedules", with("id", json!("lich-1")))
            .await
            .status,
        StatusCode::CREATED
    );
    t.post("/api/v1/schedules", with("id", json!("lich-1")))
        .await
        .assert_error(StatusCode::CONFLICT);
    t.post("/api/v1/schedules", with("id", json!("../x")))
        .await
        .assert_error(StatusCode::BAD_REQUEST);
    // The default time zone is Vietnam's.
    let v = t.get("/api/v1/schedules/lich-1").await.json();
    assert_eq!(v["timezone"], "Asia/Ho_Chi_Minh");
    assert_eq!(v["next_occurrences"].as_array().unwrap().len(), 1);
}

/// Inserts a proof-of-play row as ingest would.
async fn seed_play(
    t: &TestApp,
    report: &str,
    receiver: &str,
    programme: &str,
    scheduled: &str,
    outcome: &str,
) {
    let at: DateTime<Utc> = scheduled.parse().unwrap();
    let ms = at.timestamp_millis();
    sqlx::query(
        "INSERT INTO plays (report_id, receiver_id, event_id, programme_id, schedule_id, scheduled_at, started_at, \
         ended_at, outcome, detail, received_at) VALUES ($1, $2, $3, $4, 'lich-1', $5, $6, $7, $8, $9, $10)",
    )
    .bind(report)
    .bind(receiver)
    .bind(format!("lich-1@{ms}"))
    .bind(programme)
    .bind(ms)
    .bind((outcome != "missed").then_some(ms + 12))
    .bind((outcome != "missed").then_some(ms + 60_012))
    .bind(outcome)
    .bind((outcome == "missed").then_some("không có âm thanh, \"tệp hỏng\""))
    .bind(ms + 61_000)
    .execute(&t.db)
    .await
    .unwrap();
}

#[tokio::test]
async fn plays_are_listed_filtered_and_exported_as_csv() {
    let t = TestApp::new().await;
    seed_play(
        &t,
        "r1",
        "loa-1",
        "ban-tin",
        "2026-11-23T23:30:00Z",
        "completed",
    )
    .await;
    seed_play(
        &t,
        "r2",
        "loa-2",
        "ban-tin",
        "2026-11-23T23:30:00Z",
        "missed",
    )
    .await;
    seed_play(
        &t,
        "r3",
        "loa-1",
        "nhac",
        "2026-11-26T23:30:00Z",
        "preempted",
    )
    .await;

    let all = t.get("/api/v1/plays").await.json();
    assert_eq!(all.as_array().unwrap().len(), 3);
    let first = &all[0];
    assert_eq!(first["receiver_id"], "loa-1");
    assert_eq!(first["programme_id"], "ban-tin");
    assert_eq!(first["schedule_id"], "lich-1");
    assert_eq!(first["scheduled_at"], "2026-11-23T23:30:00Z");
    assert_eq!(first["started_at"], "2026-11-23T23:30:00.012Z");
    assert_eq!(first["ended_at"], "2026-11-23T23:31:00.012Z");
    assert_eq!(first["outcome"], "completed");
    assert_eq!(first["event_id"], "lich-1@1795476600000");
    assert!(all[1]["started_at"].is_null());

    let ids = |v: serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|p| {
                p["event_id"].as_str().unwrap().to_string()
                    + "/"
                    + p["receiver_id"].as_str().unwrap()
            })
            .collect()
    };
    assert_eq!(
        t.get("/api/v1/plays?receiver=loa-1")
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        t.get("/api/v1/plays?programme=nhac")
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        t.get("/api/v1/plays?receiver=loa-1&programme=nhac")
            .await
            .json()[0]["outcome"],
        "preempted"
    );
    let window = t
        .get("/api/v1/plays?from=2026-11-24T06:30:00%2B07:00&to=2026-11-26T23:30:00Z")
        .await
        .json();
    assert_eq!(
        ids(window),
        vec!["lich-1@1795476600000/loa-1", "lich-1@1795476600000/loa-2"]
    );
    assert!(
        t.get("/api/v1/plays?from=2026-11-27T00:00:00Z&to=2026-11-28T00:00:00Z&receiver=loa-2")
            .await
            .json()
            .as_array()
            .unwrap()
            .is_empty()
    );
    t.get("/api/v1/plays?from=yesterday")
        .await
        .assert_error(StatusCode::BAD_REQUEST);
    t.get("/api/v1/plays?format=xml")
        .await
        .assert_error(StatusCode::BAD_REQUEST);

    let csv = t.get("/api/v1/plays?format=csv&receiver=loa-2").await;
    assert_eq!(csv.status, StatusCode::OK);
    assert!(
        csv.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let mut reader = csv::Reader::from_reader(csv.body.as_ref());
    let header_row: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_string)
        .collect();
    assert_eq!(
        &header_row[..7],
        [
            "receiver_id",
            "programme_id",
            "schedule_id",
            "scheduled_at",
            "started_at",
            "ended_at",
            "outcome"
        ]
    );
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(&rows[0][0], "loa-2");
    assert_eq!(&rows[0][3], "2026-11-23T23:30:00Z");
    assert_eq!(&rows[0][4], "");
    assert_eq!(&rows[0][6], "missed");
    assert_eq!(&rows[0][8], "không có âm thanh, \"tệp hỏng\"");
    // An empty export still has its header.
    let empty = t.get("/api/v1/plays?format=csv&receiver=none").await;
    assert!(
        String::from_utf8(empty.body.to_vec())
            .unwrap()
            .starts_with("receiver_id,programme_id,")
    );
}

#[tokio::test]
async fn server_runs_with_the_embedded_broker_and_shuts_down() {
    let dir = tempfile::tempdir().unwrap();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (http, mqtt) = (free(), free());
    let config = loa_controller::config::Config {
        data_dir: dir.path().to_path_buf(),
        http,
        https: None,
        mqtt: loa_controller::config::MqttMode::Embedded(mqtt),
        mqtt_security: Default::default(),
        max_upload_bytes: 1024 * 1024,
        horizon: Duration::days(7),
        admin_password: Some(PASSWORD.into()),
        live: Default::default(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(loa_controller::server::run(config, async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let base = format!("http://{http}/api/v1");
    let mut up = false;
    for _ in 0..100 {
        if client
            .get(format!("{base}/health"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
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
    let token = login["token"].as_str().unwrap();
    let r = client
        .get(format!("{base}/receivers"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(dir.path().join("loa.db").exists());

    stop.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(15), server)
        .await
        .expect("server stops")
        .unwrap()
        .unwrap();
    assert!(client.get(format!("{base}/health")).send().await.is_err());
}

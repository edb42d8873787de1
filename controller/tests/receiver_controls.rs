//! The "Cụm loa" controls and two scope rules, through the real router and
//! database: `PUT /receivers/{id}/volume` (technicians and admins, inside
//! their unit, 0–100, audited, stored with a growing settings version),
//! `POST /receivers/{id}/test-tone` (checked, and a clear 503 when no MQTT
//! link is up), receiver JSON with `volume` and `amplifier_on`; a
//! programme's audio only for users whose unit sees the programme (and for
//! receivers); `GET /broadcasts` only for broadcasts in the caller's unit.

mod api_common;
mod live_common;

use api_common::{Part, TestApp, wav};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};

/// Password of every user the tests create.
const PW: &str = "mật-khẩu-8-ký-tự";

/// Units root → p → c1, c2; zones z1 (c1), z2 (c2); receivers r1 (z1),
/// r2 (z2); a technician, an editor and a viewer in c1, an editor in c2.
/// Returns the app and r1's token.
async fn seeded() -> (TestApp, String) {
    let t = TestApp::new().await;
    t.create_units(&[
        ("p", "province", "root"),
        ("c1", "commune", "p"),
        ("c2", "commune", "p"),
    ])
    .await;
    t.create_zones(&[("z1", "c1"), ("z2", "c2")]).await;
    let mut r1_token = String::new();
    for (r, z) in [("r1", "z1"), ("r2", "z2")] {
        let reply = t
            .post(
                "/api/v1/receivers",
                json!({"id": r, "name": format!("Loa {r}"), "zone": z}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED);
        if r == "r1" {
            r1_token = reply.json()["token"].as_str().unwrap().to_string();
        }
    }
    for (name, role, unit) in [
        ("ky-thuat", "technician", "c1"),
        ("bien-tap", "editor", "c1"),
        ("xem", "viewer", "c1"),
        ("bien-tap-2", "editor", "c2"),
    ] {
        let r = t
            .post(
                "/api/v1/users",
                json!({"username": name, "password": PW, "role": role, "unit_id": unit}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json());
    }
    (t, r1_token)
}

async fn login(t: &TestApp, username: &str) -> String {
    let r = t
        .call(
            Method::POST,
            "/api/v1/login",
            None,
            Some(json!({"username": username, "password": PW})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "login {username}: {:?}", r.json());
    r.json()["token"].as_str().unwrap().to_string()
}

async fn put_volume(t: &TestApp, token: &str, receiver: &str, body: Value) -> api_common::Reply {
    t.call(
        Method::PUT,
        &format!("/api/v1/receivers/{receiver}/volume"),
        Some(token),
        Some(body),
    )
    .await
}

#[tokio::test]
async fn volume_is_set_in_scope_checked_stored_and_audited() {
    let (t, _) = seeded().await;
    let tech = login(&t, "ky-thuat").await;
    let viewer = login(&t, "xem").await;

    // Before any change: no volume known, amplifier unknown.
    let r = t.get("/api/v1/receivers/r1").await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["volume"], Value::Null);
    assert_eq!(v["volume_set"], false);
    assert_eq!(v["amplifier_on"], Value::Null);

    let r = put_volume(&t, &tech, "r1", json!({"volume": 35})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    assert_eq!(r.json()["volume"], 35);
    assert_eq!(r.json()["volume_set"], true);
    assert_eq!(r.json()["id"], "r1");
    let (volume, version): (i64, i64) =
        sqlx::query_as("SELECT volume, settings_version FROM receivers WHERE id = 'r1'")
            .fetch_one(&t.db)
            .await
            .unwrap();
    assert_eq!(volume, 35);
    assert!(version > 0);
    let r = put_volume(&t, &tech, "r1", json!({"volume": 0})).await;
    assert_eq!(r.status, StatusCode::OK);
    let newer: i64 = sqlx::query_scalar("SELECT settings_version FROM receivers WHERE id = 'r1'")
        .fetch_one(&t.db)
        .await
        .unwrap();
    assert!(newer > version, "each change gets a newer settings version");
    let listed = t.get("/api/v1/receivers").await.json();
    let r1 = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "r1")
        .unwrap();
    assert_eq!(r1["volume"], 0);

    // The emergency volume: set with the normal one, kept when absent.
    assert_eq!(r1["emergency_volume"], Value::Null);
    let r = put_volume(
        &t,
        &tech,
        "r1",
        json!({"volume": 0, "emergency_volume": 90}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    assert_eq!(r.json()["emergency_volume"], 90);
    let r = put_volume(&t, &tech, "r1", json!({"volume": 0})).await;
    assert_eq!(r.json()["emergency_volume"], 90, "kept when not given");

    // Out of range or not a whole number: 400 with the project's error shape.
    for bad in [
        json!({"volume": 101}),
        json!({"volume": -1}),
        json!({"volume": 12.5}),
        json!({"volume": 50, "emergency_volume": 101}),
        json!({"volume": 50, "emergency_volume": -3}),
    ] {
        let r = put_volume(&t, &tech, "r1", bad.clone()).await;
        let e = r.assert_error(StatusCode::BAD_REQUEST);
        assert_eq!(e["code"], "invalid_volume", "{bad}");
    }
    // A body without `volume`: the project's 422 for a missing field.
    put_volume(&t, &tech, "r1", json!({"level": 3}))
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY);
    // Outside the technician's unit: not found; a viewer may not.
    put_volume(&t, &tech, "r2", json!({"volume": 50}))
        .await
        .assert_error(StatusCode::NOT_FOUND);
    put_volume(&t, &viewer, "r1", json!({"volume": 50}))
        .await
        .assert_error(StatusCode::FORBIDDEN);
    let kept: i64 = sqlx::query_scalar("SELECT volume FROM receivers WHERE id = 'r1'")
        .fetch_one(&t.db)
        .await
        .unwrap();
    assert_eq!(kept, 0, "refused changes change nothing");

    // The audit log has who set what.
    let audit = t.get("/api/v1/audit?action=receivers.volume").await;
    assert_eq!(audit.status, StatusCode::OK, "{:?}", audit.json());
    let rows = audit.json();
    let rows = rows.as_array().expect("a list of entries");
    let set = rows
        .iter()
        .find(|e| e["detail"]["to"] == 35)
        .unwrap_or_else(|| panic!("no audit entry for the change to 35: {rows:?}"));
    assert_eq!(set["username"], "ky-thuat");
    assert_eq!(set["object_id"], "r1");
    assert_eq!(set["status"], 200);
    assert!(
        rows.iter().any(|e| e["status"] == 400),
        "refused changes are audited too"
    );

    // A status the receiver reported shows through; offline → amplifier unknown.
    sqlx::query(
        "UPDATE receivers SET online = TRUE, last_seen = $1, amplifier_on = TRUE,
             reported_volume = 80 WHERE id = 'r2'",
    )
    .bind(chrono::Utc::now().timestamp_millis())
    .execute(&t.db)
    .await
    .unwrap();
    let v = t.get("/api/v1/receivers/r2").await.json();
    assert_eq!(
        (v["amplifier_on"].clone(), v["volume"].clone()),
        (json!(true), json!(80))
    );
    assert_eq!(v["volume_set"], false);
    sqlx::query("UPDATE receivers SET last_seen = 0 WHERE id = 'r2'")
        .execute(&t.db)
        .await
        .unwrap();
    assert_eq!(
        t.get("/api/v1/receivers/r2").await.json()["amplifier_on"],
        Value::Null
    );
}

#[tokio::test]
async fn test_tone_requests_are_checked() {
    let (t, _) = seeded().await;
    let tech = login(&t, "ky-thuat").await;
    let editor = login(&t, "bien-tap").await;
    let tone = |token: String, receiver: &'static str, body: Option<Value>| {
        let t = &t;
        async move {
            t.call(
                Method::POST,
                &format!("/api/v1/receivers/{receiver}/test-tone"),
                Some(&token),
                body,
            )
            .await
        }
    };
    for bad in [
        json!({"seconds": 0}),
        json!({"seconds": 31}),
        json!({"seconds": 2.5}),
    ] {
        let e = tone(tech.clone(), "r1", Some(bad.clone()))
            .await
            .assert_error(StatusCode::BAD_REQUEST);
        assert_eq!(e["code"], "invalid_seconds", "{bad}");
    }
    tone(tech.clone(), "r2", Some(json!({"seconds": 5})))
        .await
        .assert_error(StatusCode::NOT_FOUND);
    tone(editor, "r1", None)
        .await
        .assert_error(StatusCode::FORBIDDEN);
    // This app has no MQTT link: a clear error, not a 500 (the browser
    // test sends real tones to real receivers).
    let e = tone(tech.clone(), "r1", None)
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(e["code"], "bus_unavailable");
}

async fn audio_as(t: &TestApp, token: &str, programme: &str) -> StatusCode {
    t.call(
        Method::GET,
        &format!("/api/v1/programmes/{programme}/audio"),
        Some(token),
        None,
    )
    .await
    .status
}

#[tokio::test]
async fn programme_audio_only_for_users_who_see_the_programme() {
    let (t, r1_token) = seeded().await;
    let c2_editor = login(&t, "bien-tap-2").await;
    let c1_editor = login(&t, "bien-tap").await;
    let audio = wav(1.0, 48_000);
    let (content_type, body) = api_common::multipart(&[
        Part::Text("title", "Bản tin xã 2"),
        Part::Text("category", "thời sự"),
        Part::File("file", "ban-tin.wav", "audio/wav", &audio),
    ]);
    let request = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/programmes")
        .header(header::AUTHORIZATION, format!("Bearer {c2_editor}"))
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body))
        .unwrap();
    let r = t.send(request).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json());
    let id = r.json()["id"].as_str().unwrap().to_string();

    assert_eq!(audio_as(&t, &c2_editor, &id).await, StatusCode::OK);
    assert_eq!(
        audio_as(&t, &t.token, &id).await,
        StatusCode::OK,
        "root admin"
    );
    let refused = t
        .call(
            Method::GET,
            &format!("/api/v1/programmes/{id}/audio"),
            Some(&c1_editor),
            None,
        )
        .await;
    let e = refused.assert_error(StatusCode::NOT_FOUND);
    assert_eq!(e["code"], "not_found");
    // Receivers keep access with their own token.
    assert_eq!(audio_as(&t, &r1_token, &id).await, StatusCode::OK);
    // A programme from above (the root admin's) is visible below.
    let r = t
        .upload(&[
            Part::Text("title", "Bản tin tỉnh"),
            Part::Text("category", "thời sự"),
            Part::File("file", "ban-tin.wav", "audio/wav", &audio),
        ])
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json());
    let shared = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(audio_as(&t, &c1_editor, &shared).await, StatusCode::OK);
}

#[tokio::test]
async fn broadcasts_are_listed_only_within_the_callers_unit() {
    let t = live_common::LiveTest::start().await;
    for (id, kind, parent) in [("c1", "commune", "root"), ("c2", "commune", "root")] {
        let (status, body) = t
            .post(
                "/units",
                json!({"id": id, "name": format!("Xã {id}"), "kind": kind, "parent_id": parent}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    for (z, u) in [("z1", "c1"), ("z2", "c2")] {
        let (status, body) = t
            .post(
                "/zones",
                json!({"id": z, "name": format!("Thôn {z}"), "unit_id": u}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    t.receiver("z1", "r1").await;
    t.receiver("z2", "r2").await;
    for (name, unit) in [("duyet-1", "c1"), ("duyet-2", "c2")] {
        let (status, body) = t
            .post(
                "/users",
                json!({"username": name, "password": PW, "role": "approver", "unit_id": unit}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let login = |name: &'static str| {
        let t = &t;
        async move {
            let v: Value = t
                .client
                .post(format!("{}/login", t.base))
                .json(&json!({"username": name, "password": PW}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["token"].as_str().unwrap().to_string()
        }
    };
    let (c1, c2) = (login("duyet-1").await, login("duyet-2").await);
    let get = |token: String, path: String| {
        let t = &t;
        async move {
            let response = t
                .client
                .get(format!("{}{path}", t.base))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            let status = response.status();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };

    // A broadcast to zone z2, on air for a few seconds.
    t.upload_programme("tin-z2", wav(6.0, 48_000)).await;
    let (status, b) = t
        .post(
            "/broadcasts",
            json!({"source": {"type": "programme", "id": "tin-z2"},
                   "targets": {"zones": ["z2"], "receivers": []}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{b}");
    let id = b["id"].as_str().unwrap().to_string();
    let ids = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].as_str().unwrap().to_string())
            .collect()
    };
    for path in ["/broadcasts", "/broadcasts?all=true"] {
        let (status, v) = get(c2.clone(), path.into()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ids(&v), vec![id.clone()], "c2 sees its broadcast on {path}");
        let (status, v) = get(c1.clone(), path.into()).await;
        assert_eq!(status, StatusCode::OK);
        assert!(ids(&v).is_empty(), "c1 sees nothing on {path}: {v}");
        let (_, v) = get(t.token.clone(), path.into()).await;
        assert_eq!(
            ids(&v),
            vec![id.clone()],
            "the root admin sees all on {path}"
        );
    }
    let (status, v) = get(c1.clone(), format!("/broadcasts/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    let (status, _) = get(c2.clone(), format!("/broadcasts/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = t.delete(&format!("/broadcasts/{id}")).await;
    assert_eq!(status, StatusCode::OK);
}

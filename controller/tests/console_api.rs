//! The console's API (issue 4) through the real router and database: roles,
//! units and scope, the approval workflow, only approved schedules reaching
//! receivers, the schedule preview, quiet hours, the calendar, reports, the
//! audit log, sessions (logout, locked users) and the embedded web console.

mod api_common;
mod mqtt_common;

use std::time::Duration;

use api_common::{Part, TestApp, wav};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use chrono::{Datelike, Utc};
use loa_controller::broker::EmbeddedBroker;
use loa_controller::bus::Bus;
use loa_controller::distribution::Distributor;
use loa_protocol::ReceiverSchedule;
use loa_protocol::topics::ReceiverTopic;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Password of every user the tests create.
const PW: &str = "mật-khẩu-8-ký-tự";

/// Units: province p → district d → communes c1, c2; zones z1 (c1), z2 (c2);
/// receivers r1 (z1), r2 (z2); users of every role in c1.
async fn seeded() -> TestApp {
    let t = TestApp::new().await;
    t.create_units(&[
        ("p", "province", "root"),
        ("d", "district", "p"),
        ("c1", "commune", "d"),
        ("c2", "commune", "d"),
    ])
    .await;
    t.create_zones(&[("z1", "c1"), ("z2", "c2")]).await;
    for (r, z) in [("r1", "z1"), ("r2", "z2")] {
        let reply = t
            .post(
                "/api/v1/receivers",
                json!({"id": r, "name": format!("Loa {r}"), "zone": z}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED);
    }
    for (name, role) in [
        ("bien-tap", "editor"),
        ("duyet", "approver"),
        ("ky-thuat", "technician"),
        ("xem", "viewer"),
    ] {
        let r = t
            .post(
                "/api/v1/users",
                json!({"username": name, "password": PW, "role": role, "unit_id": "c1"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json());
    }
    t
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

async fn as_user(
    t: &TestApp,
    token: &str,
    method: Method,
    uri: &str,
    body: Option<Value>,
) -> api_common::Reply {
    t.call(method, uri, Some(token), body).await
}

async fn upload_as(t: &TestApp, token: &str, title: &str, submit: bool) -> api_common::Reply {
    let audio = wav(1.5, 48_000);
    let mut parts = vec![
        Part::Text("title", title),
        Part::Text("category", "Chuyển đổi số"),
        Part::File("file", "ban-tin.wav", "audio/wav", &audio),
    ];
    if submit {
        parts.push(Part::Text("submit", "true"));
    }
    let (content_type, body) = api_common::multipart(&parts);
    let request = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/programmes")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body))
        .unwrap();
    t.send(request).await
}

/// A weekly schedule on today's and the next day's weekdays at 23:59 local,
/// so it always has future occurrences.
fn weekly(programme: &str, zone: &str) -> Value {
    let today = (Utc::now() + chrono::Duration::hours(7)).date_naive();
    let days = ["MO", "TU", "WE", "TH", "FR", "SA", "SU"];
    let d = today.weekday().num_days_from_monday() as usize;
    json!({
        "programme_id": programme,
        "targets": {"zones": [zone], "receivers": []},
        "start": format!("{today}T06:30:00"),
        "rrule": format!("FREQ=WEEKLY;BYDAY={},{}", days[(d + 2) % 7], days[(d + 5) % 7]),
        "submit": true,
    })
}

#[tokio::test]
async fn roles_and_units_limit_what_each_user_sees_and_does() {
    let t = seeded().await;
    let editor = login(&t, "bien-tap").await;
    let tech = login(&t, "ky-thuat").await;
    let viewer = login(&t, "xem").await;

    let me = as_user(&t, &editor, Method::GET, "/api/v1/me", None)
        .await
        .json();
    assert_eq!(me["role"], "editor");
    assert_eq!(me["unit"]["id"], "c1");
    assert_eq!(me["permissions"]["edit"], true);
    assert_eq!(me["permissions"]["approve"], false);

    // Scope: a commune user sees its own zone and receiver only.
    let zones = as_user(&t, &editor, Method::GET, "/api/v1/zones", None)
        .await
        .json();
    let ids: Vec<&str> = zones
        .as_array()
        .unwrap()
        .iter()
        .map(|z| z["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["z1"]);
    let receivers = as_user(&t, &editor, Method::GET, "/api/v1/receivers", None)
        .await
        .json();
    assert_eq!(receivers.as_array().unwrap().len(), 1);
    as_user(&t, &editor, Method::GET, "/api/v1/receivers/r2", None)
        .await
        .assert_error(StatusCode::NOT_FOUND);
    // The admin at the root sees everything.
    assert_eq!(
        t.get("/api/v1/zones")
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Roles: editors do not manage devices, viewers do not upload.
    let v = as_user(
        &t,
        &editor,
        Method::POST,
        "/api/v1/zones",
        Some(json!({"id": "z9", "name": "X"})),
    )
    .await
    .assert_error(StatusCode::FORBIDDEN);
    assert!(
        v["message_vi"].as_str().unwrap().contains("Biên tập viên"),
        "{v}"
    );
    upload_as(&t, &viewer, "Bản tin", false)
        .await
        .assert_error(StatusCode::FORBIDDEN);
    // Technicians manage zones and receivers in their unit only.
    let r = as_user(
        &t,
        &tech,
        Method::POST,
        "/api/v1/zones",
        Some(json!({"id": "z3", "name": "Thôn 3"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.json()["unit_id"], "c1");
    as_user(
        &t,
        &tech,
        Method::POST,
        "/api/v1/zones",
        Some(json!({"id": "z4", "name": "X", "unit_id": "c2"})),
    )
    .await
    .assert_error(StatusCode::UNPROCESSABLE_ENTITY);
    let v = as_user(
        &t,
        &tech,
        Method::POST,
        "/api/v1/receivers",
        Some(json!({"id": "r9", "name": "Loa", "zone": "z2"})),
    )
    .await
    .assert_error(StatusCode::FORBIDDEN);
    assert_eq!(v["code"], "out_of_scope");
    let r = as_user(
        &t,
        &tech,
        Method::PATCH,
        "/api/v1/receivers/r1",
        Some(json!({"lat": 21.63, "lon": 105.64})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["lat"], 21.63);
    as_user(
        &t,
        &tech,
        Method::PATCH,
        "/api/v1/receivers/r1",
        Some(json!({"lat": 123.0})),
    )
    .await
    .assert_error(StatusCode::UNPROCESSABLE_ENTITY);
    // Users and units are the admin's.
    as_user(&t, &tech, Method::GET, "/api/v1/users", None)
        .await
        .assert_error(StatusCode::FORBIDDEN);
    // Editors cannot target other communes' zones.
    let p = upload_as(&t, &editor, "Bản tin chuyển đổi số", true).await;
    assert_eq!(p.status, StatusCode::CREATED, "{:?}", p.json());
    let id = p.json()["id"].as_str().unwrap().to_string();
    as_user(
        &t,
        &editor,
        Method::POST,
        "/api/v1/schedules",
        Some(weekly(&id, "z2")),
    )
    .await
    .assert_error(StatusCode::FORBIDDEN);
    // Users above see what is below; communes do not see each other's content.
    let admin_view = t.get(&format!("/api/v1/programmes/{id}")).await;
    assert_eq!(admin_view.status, StatusCode::OK);
    let other = t
        .post(
            "/api/v1/users",
            json!({"username": "xa-2", "password": PW, "role": "editor", "unit_id": "c2"}),
        )
        .await;
    assert_eq!(other.status, StatusCode::CREATED);
    let other = login(&t, "xa-2").await;
    as_user(
        &t,
        &other,
        Method::GET,
        &format!("/api/v1/programmes/{id}"),
        None,
    )
    .await
    .assert_error(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn programmes_and_schedules_go_through_approval() {
    let t = seeded().await;
    let editor = login(&t, "bien-tap").await;
    let approver = login(&t, "duyet").await;

    let draft = upload_as(&t, &editor, "Bản nháp", false).await.json();
    assert_eq!(draft["status"], "draft");
    assert_eq!(draft["created_by"], "bien-tap");
    let p = upload_as(&t, &editor, "Bản tin chuyển đổi số", true)
        .await
        .json();
    assert_eq!(p["status"], "pending");
    let pid = p["id"].as_str().unwrap().to_string();

    let s = as_user(
        &t,
        &editor,
        Method::POST,
        "/api/v1/schedules",
        Some(weekly(&pid, "z1")),
    )
    .await;
    assert_eq!(s.status, StatusCode::CREATED, "{:?}", s.json());
    let s = s.json();
    assert_eq!(s["status"], "pending");
    let sid = s["id"].as_str().unwrap().to_string();

    // Editors cannot approve; a schedule needs its programme approved first.
    as_user(
        &t,
        &editor,
        Method::POST,
        &format!("/api/v1/programmes/{pid}/approve"),
        None,
    )
    .await
    .assert_error(StatusCode::FORBIDDEN);
    let v = as_user(
        &t,
        &approver,
        Method::POST,
        &format!("/api/v1/schedules/{sid}/approve"),
        None,
    )
    .await
    .assert_error(StatusCode::CONFLICT);
    assert_eq!(v["code"], "programme_not_approved");
    let r = as_user(
        &t,
        &approver,
        Method::POST,
        &format!("/api/v1/programmes/{pid}/approve"),
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["status"], "approved");
    assert_eq!(r.json()["reviewed_by"], "duyet");
    let r = as_user(
        &t,
        &approver,
        Method::POST,
        &format!("/api/v1/schedules/{sid}/approve"),
        None,
    )
    .await;
    assert_eq!(r.json()["status"], "approved");
    // Approving twice is a conflict, not a silent success.
    as_user(
        &t,
        &approver,
        Method::POST,
        &format!("/api/v1/schedules/{sid}/approve"),
        None,
    )
    .await
    .assert_error(StatusCode::CONFLICT);
    // Editors cannot delete what is approved.
    as_user(
        &t,
        &editor,
        Method::DELETE,
        &format!("/api/v1/schedules/{sid}"),
        None,
    )
    .await
    .assert_error(StatusCode::FORBIDDEN);

    // Rejection with a reason, then resubmission.
    let did = draft["id"].as_str().unwrap();
    as_user(
        &t,
        &approver,
        Method::POST,
        &format!("/api/v1/programmes/{did}/reject"),
        Some(json!({"note": "Thiếu phần kết"})),
    )
    .await;
    let r = t.get(&format!("/api/v1/programmes/{did}")).await.json();
    assert_eq!(r["status"], "rejected");
    assert_eq!(r["review_note"], "Thiếu phần kết");
    let r = as_user(
        &t,
        &editor,
        Method::POST,
        &format!("/api/v1/programmes/{did}/submit"),
        None,
    )
    .await;
    assert_eq!(r.json()["status"], "pending");
    as_user(
        &t,
        &editor,
        Method::POST,
        &format!("/api/v1/programmes/{did}/submit"),
        None,
    )
    .await
    .assert_error(StatusCode::CONFLICT);

    // What approvers and admins create is approved at once.
    let own = upload_as(&t, &approver, "Thông báo khẩn", false)
        .await
        .json();
    assert_eq!(own["status"], "approved");
    let admin_schedule = t.post("/api/v1/schedules", weekly(&pid, "z2")).await.json();
    assert_eq!(admin_schedule["status"], "approved");

    // Filtering and the audit log.
    let pending = t.get("/api/v1/programmes?status=pending").await.json();
    assert_eq!(pending.as_array().unwrap().len(), 1);
    let audit = as_user(&t, &approver, Method::GET, "/api/v1/audit?limit=100", None)
        .await
        .json();
    let actions: Vec<(String, String)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["username"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    for wanted in [
        ("programmes.approve", "duyet"),
        ("programmes.reject", "duyet"),
        ("schedules.approve", "duyet"),
        ("schedules.create", "bien-tap"),
        ("programmes.create", "bien-tap"),
        ("login", "duyet"),
    ] {
        assert!(
            actions.contains(&(wanted.0.to_string(), wanted.1.to_string())),
            "{wanted:?} not in {actions:?}"
        );
    }
    let refused = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "programmes.approve" && e["username"] == "bien-tap")
        .expect("refused attempts are logged");
    assert_eq!(refused["status"], 403);
    assert_eq!(refused["ok"], false);
    let reject = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "programmes.reject")
        .unwrap();
    assert_eq!(reject["detail"]["note"], "Thiếu phần kết");
    assert_eq!(reject["object_id"], did);
    let created = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "schedules.create" && e["username"] == "bien-tap")
        .unwrap();
    assert_eq!(
        created["object_id"], sid,
        "a created object's id is logged: {created}"
    );
    // Editors may not read the log; the admin gets it as CSV too.
    as_user(&t, &editor, Method::GET, "/api/v1/audit", None)
        .await
        .assert_error(StatusCode::FORBIDDEN);
    let csv = t.get("/api/v1/audit?format=csv").await;
    assert!(String::from_utf8_lossy(&csv.body).starts_with("at,username,unit_id,action"));
}

#[tokio::test]
async fn preview_shows_conflicts_and_quiet_hours_before_saving() {
    let t = seeded().await;
    t.seed_programme("p1", 60_000).await;
    t.seed_programme("p2", 60_000).await;
    let r = t
        .call(
            Method::PATCH,
            "/api/v1/zones/z1",
            Some(&t.token),
            Some(json!({"quiet_hours": "22:00-05:00"})),
        )
        .await;
    assert_eq!(r.json()["quiet_hours"], "22:00-05:00");
    let tomorrow =
        (Utc::now() + chrono::Duration::hours(7) + chrono::Duration::days(1)).date_naive();
    let at = |p: &str, time: &str| json!({"programme_id": p, "targets": {"zones": ["z1"]}, "start": format!("{tomorrow}T{time}")});
    let r = t.post("/api/v1/schedules", at("p1", "06:30:00")).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let sid = r.json()["id"].as_str().unwrap().to_string();

    // Half a minute later on the same receivers: a conflict, it would wait.
    let p = t
        .post("/api/v1/schedules/preview", at("p2", "06:30:30"))
        .await;
    assert_eq!(p.status, StatusCode::OK, "{:?}", p.json());
    let p = p.json();
    assert_eq!(p["ok"], false);
    assert_eq!(p["conflicts"][0]["schedule_id"], sid);
    assert_eq!(p["conflicts"][0]["effect"], "waits");
    assert_eq!(p["receivers"], json!(["r1"]));
    // An hour later: no conflict. At 23:00: quiet hours.
    let p = t
        .post("/api/v1/schedules/preview", at("p2", "07:30:00"))
        .await
        .json();
    assert_eq!(p["ok"], true, "{p}");
    assert_eq!(p["occurrences"].as_array().unwrap().len(), 1);
    let p = t
        .post("/api/v1/schedules/preview", at("p2", "23:00:00"))
        .await
        .json();
    assert_eq!(p["quiet_hours"][0]["zone_id"], "z1");
    // The preview saves nothing; saving inside quiet hours is refused
    // unless it is an emergency.
    assert_eq!(
        t.get("/api/v1/schedules")
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let v = t
        .post("/api/v1/schedules", at("p2", "23:00:00"))
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["code"], "quiet_hours");
    let mut urgent = at("p2", "23:00:00");
    urgent["priority"] = json!("emergency");
    assert_eq!(
        t.post("/api/v1/schedules", urgent).await.status,
        StatusCode::CREATED
    );
    t.post("/api/v1/schedules/preview", json!({"programme_id": "nope", "targets": {"zones": ["z1"]}, "start": "2030-01-01T06:30:00"}))
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY);

    // The calendar lists the week's occurrences.
    let from = Utc::now();
    let to = from + chrono::Duration::days(7);
    let cal = t
        .get(&format!(
            "/api/v1/calendar?from={}&to={}",
            from.format("%Y-%m-%dT%H:%M:%SZ"),
            to.format("%Y-%m-%dT%H:%M:%SZ")
        ))
        .await;
    assert_eq!(cal.status, StatusCode::OK, "{:?}", cal.json());
    let cal = cal.json();
    assert_eq!(cal.as_array().unwrap().len(), 2);
    assert_eq!(cal[0]["schedule_id"], sid);
    assert_eq!(cal[0]["title"], "Bản tin");
    t.get("/api/v1/calendar?from=2026-01-01T00:00:00Z&to=2026-06-01T00:00:00Z")
        .await
        .assert_error(StatusCode::BAD_REQUEST);
}

/// Inserts a proof-of-play row.
async fn play(
    t: &TestApp,
    receiver: &str,
    programme: &str,
    event: &str,
    at: chrono::DateTime<Utc>,
    outcome: &str,
) {
    sqlx::query(
        "INSERT INTO plays (report_id, receiver_id, event_id, programme_id, schedule_id, scheduled_at, \
             started_at, ended_at, outcome, received_at) VALUES ($1, $2, $3, $4, 's', $5, $5, $5, $6, $5)",
    )
    .bind(format!("{receiver}-{event}"))
    .bind(receiver)
    .bind(event)
    .bind(programme)
    .bind(at.timestamp_millis())
    .bind(outcome)
    .execute(&t.db)
    .await
    .unwrap();
}

#[tokio::test]
async fn reports_count_plays_and_bulletins_per_commune_and_week() {
    let t = seeded().await;
    t.seed_programme("cds", 60_000).await;
    t.seed_programme("news", 60_000).await;
    sqlx::query("UPDATE programmes SET category = 'Chuyển đổi số' WHERE id = 'cds'")
        .execute(&t.db)
        .await
        .unwrap();
    let now = Utc::now();
    // c1: two digital-transformation bulletins this week (one played by
    // two receivers counts once... r1 is c1's only receiver), c2: one.
    play(
        &t,
        "r1",
        "cds",
        "e1",
        now - chrono::Duration::minutes(5),
        "completed",
    )
    .await;
    play(
        &t,
        "r1",
        "cds",
        "e2",
        now - chrono::Duration::minutes(3),
        "completed",
    )
    .await;
    play(
        &t,
        "r1",
        "news",
        "e3",
        now - chrono::Duration::minutes(2),
        "completed",
    )
    .await;
    play(
        &t,
        "r2",
        "cds",
        "e1",
        now - chrono::Duration::minutes(5),
        "completed",
    )
    .await;
    play(
        &t,
        "r2",
        "cds",
        "e4",
        now - chrono::Duration::minutes(1),
        "missed",
    )
    .await;

    let r = t.get("/api/v1/reports/bulletins?weeks=4").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    let r = r.json();
    assert_eq!(r["weeks"].as_array().unwrap().len(), 4);
    let line = |id: &str| {
        r["communes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["unit_id"] == id)
            .cloned()
            .unwrap()
    };
    assert_eq!(line("c1")["counts"][3], 2);
    assert_eq!(line("c1")["met"][3], true);
    assert_eq!(line("c2")["counts"][3], 1);
    assert_eq!(line("c2")["met"][3], false);
    let csv = t.get("/api/v1/reports/bulletins?weeks=1&format=csv").await;
    let csv = String::from_utf8_lossy(&csv.body).to_string();
    assert!(
        csv.starts_with("unit_id,unit,week,bulletins,target,met"),
        "{csv}"
    );
    assert!(
        csv.contains("c1,Đơn vị c1,") && csv.contains(",2,2,yes"),
        "{csv}"
    );

    // Proof of play for the week, for the whole tree and for one commune.
    let r = t.get("/api/v1/reports/plays").await.json();
    assert_eq!(r["totals"]["total"], 5);
    assert_eq!(r["totals"]["missed"], 1);
    let c1 = t.get("/api/v1/reports/plays?unit=c1").await.json();
    assert_eq!(c1["totals"]["total"], 3);
    assert_eq!(c1["plays"][0]["zone_name"], "Thôn z1");
    let editor = login(&t, "bien-tap").await;
    // An editor of c1 cannot read c2's report, and sees only c1's plays.
    as_user(
        &t,
        &editor,
        Method::GET,
        "/api/v1/reports/plays?unit=c2",
        None,
    )
    .await
    .assert_error(StatusCode::NOT_FOUND);
    let plays = as_user(&t, &editor, Method::GET, "/api/v1/plays", None)
        .await
        .json();
    assert_eq!(plays.as_array().unwrap().len(), 3);
    let csv = t.get("/api/v1/reports/plays?format=csv").await;
    assert_eq!(csv.headers[header::CONTENT_TYPE], "text/csv; charset=utf-8");
    assert_eq!(String::from_utf8_lossy(&csv.body).lines().count(), 6);
    t.get("/api/v1/reports/plays?week=2026-48")
        .await
        .assert_error(StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn sessions_end_on_logout_lock_and_password_change() {
    let t = seeded().await;
    let editor = login(&t, "bien-tap").await;
    let r = as_user(&t, &editor, Method::POST, "/api/v1/logout", None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    as_user(&t, &editor, Method::GET, "/api/v1/me", None)
        .await
        .assert_error(StatusCode::UNAUTHORIZED);

    let editor = login(&t, "bien-tap").await;
    let users = t.get("/api/v1/users").await.json();
    let id = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "bien-tap")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = t
        .call(
            Method::PATCH,
            &format!("/api/v1/users/{id}"),
            Some(&t.token),
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(r.json()["disabled"], true);
    as_user(&t, &editor, Method::GET, "/api/v1/me", None)
        .await
        .assert_error(StatusCode::UNAUTHORIZED);
    t.call(
        Method::POST,
        "/api/v1/login",
        None,
        Some(json!({"username": "bien-tap", "password": PW})),
    )
    .await
    .assert_error(StatusCode::UNAUTHORIZED);

    // Own password change keeps this session and needs the current password.
    let viewer = login(&t, "xem").await;
    as_user(
        &t,
        &viewer,
        Method::POST,
        "/api/v1/me/password",
        Some(json!({"current": "sai", "new": "mới-mật-khẩu"})),
    )
    .await
    .assert_error(StatusCode::FORBIDDEN);
    as_user(
        &t,
        &viewer,
        Method::POST,
        "/api/v1/me/password",
        Some(json!({"current": PW, "new": "ngắn"})),
    )
    .await
    .assert_error(StatusCode::UNPROCESSABLE_ENTITY);
    let r = as_user(
        &t,
        &viewer,
        Method::POST,
        "/api/v1/me/password",
        Some(json!({"current": PW, "new": "mới-mật-khẩu"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        as_user(&t, &viewer, Method::GET, "/api/v1/me", None)
            .await
            .status,
        StatusCode::OK
    );

    // Admins cannot lock themselves out, nor create duplicate or weak users.
    let me = t.get("/api/v1/me").await.json();
    t.call(
        Method::PATCH,
        &format!("/api/v1/users/{}", me["id"].as_str().unwrap()),
        Some(&t.token),
        Some(json!({"role": "viewer"})),
    )
    .await
    .assert_error(StatusCode::CONFLICT);
    t.post(
        "/api/v1/users",
        json!({"username": "xem", "password": PW, "role": "viewer"}),
    )
    .await
    .assert_error(StatusCode::CONFLICT);
    t.post(
        "/api/v1/users",
        json!({"username": "moi", "password": "123", "role": "viewer"}),
    )
    .await
    .assert_error(StatusCode::UNPROCESSABLE_ENTITY);
    t.post(
        "/api/v1/users",
        json!({"username": "moi", "password": PW, "role": "boss"}),
    )
    .await
    .assert_error(StatusCode::UNPROCESSABLE_ENTITY);
    // Units: a commune cannot hold a district; a unit in use cannot go.
    t.post(
        "/api/v1/units",
        json!({"id": "x", "name": "X", "kind": "district", "parent_id": "c1"}),
    )
    .await
    .assert_error(StatusCode::UNPROCESSABLE_ENTITY);
    t.delete("/api/v1/units/c1")
        .await
        .assert_error(StatusCode::CONFLICT);
}

#[tokio::test]
async fn the_console_is_served_from_the_binary() {
    let t = TestApp::new().await;
    let r = t.call(Method::GET, "/", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
    let csp = r.headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let html = String::from_utf8_lossy(&r.body);
    assert!(html.contains("lang=\"vi\"") && html.contains("/assets/js/app.js"));
    let js = t
        .call(Method::GET, "/assets/js/pages/programmes.js", None, None)
        .await;
    assert_eq!(js.status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&js.body).contains("Tải bản tin lên"));
    let etag = js.headers[header::ETAG].to_str().unwrap().to_string();
    let again = t
        .send(
            Request::builder()
                .uri("/assets/js/pages/programmes.js")
                .header(header::IF_NONE_MATCH, &etag)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    t.call(Method::GET, "/assets/nope.js", None, None)
        .await
        .assert_error(StatusCode::NOT_FOUND);
    // The API keeps its JSON 404s.
    t.call(Method::GET, "/api/v1/nope", None, None)
        .await
        .assert_error(StatusCode::NOT_FOUND);
}

async fn schedule_for(client: &mut mqtt_common::TestClient, receiver: &str) -> ReceiverSchedule {
    let topic = ReceiverTopic::Schedule.for_receiver(receiver);
    let publish = client
        .next_on(&topic, Duration::from_secs(10))
        .await
        .expect("a schedule is published");
    mqtt_common::open(&publish)
}

#[tokio::test]
async fn only_approved_schedules_of_approved_programmes_reach_receivers() {
    let broker = EmbeddedBroker::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let url = broker.url();
    let (db, _dir) = mqtt_common::database().await;
    mqtt_common::add_zone(&db, "z1").await;
    mqtt_common::add_receiver(&db, "r1", "z1").await;
    mqtt_common::add_programme(&db, "p1", 60_000).await;
    let start = (Utc::now() + chrono::Duration::hours(7) + chrono::Duration::days(1))
        .format("%Y-%m-%dT06:30:00")
        .to_string();
    mqtt_common::add_schedule(
        &db,
        "s1",
        "p1",
        (&start, "Asia/Ho_Chi_Minh", Some("FREQ=DAILY")),
        "normal",
        &[("zone", "z1")],
    )
    .await;
    let set = |table: &'static str, status: &'static str| {
        let db = db.clone();
        async move {
            let sql = match table {
                "schedules" => "UPDATE schedules SET status = $1",
                _ => "UPDATE programmes SET status = $1",
            };
            sqlx::query(sql).bind(status).execute(&db).await.unwrap();
        }
    };
    set("schedules", "pending").await;

    let mut client = mqtt_common::TestClient::connect(&url, "r1", None).await;
    client
        .subscribe(&ReceiverTopic::Schedule.for_receiver("r1"))
        .await;
    let shutdown = CancellationToken::new();
    let (bus, _events) = Bus::connect(&url, "ctl-approval", mqtt_common::signer())
        .await
        .unwrap();
    let distributor =
        Distributor::spawn(db.clone(), bus, chrono::Duration::days(7), shutdown.clone());

    let s = schedule_for(&mut client, "r1").await;
    assert!(s.events.is_empty(), "a pending schedule is not distributed");
    set("schedules", "approved").await;
    distributor.schedules_changed();
    let s = schedule_for(&mut client, "r1").await;
    assert!(
        s.events.len() >= 6,
        "approved: a week of daily plays, got {}",
        s.events.len()
    );
    assert!(s.events.iter().all(|e| e.schedule_id == "s1"));
    set("programmes", "rejected").await;
    distributor.schedules_changed();
    let s = schedule_for(&mut client, "r1").await;
    assert!(s.events.is_empty(), "a rejected programme stops airing");
    shutdown.cancel();
}

//! Enrollment through the real router and database: a device's request
//! with a code that does not match its key is refused; only technicians
//! and admins list, accept and reject (zones within their unit); accepting
//! creates the receiver bound to the key; the credential goes only to a
//! claim signed by that key with a fresh timestamp, once; a rejected device
//! stays rejected; everything is audited; requests are rate-limited.

mod api_common;

use api_common::TestApp;
use axum::http::{Method, StatusCode};
use chrono::{Duration, Utc};
use loa_protocol::enroll::{self, EnrollmentClaim};
use loa_protocol::signed::{self, SigningKey};
use serde_json::{Value, json};

const PW: &str = "mật-khẩu-8-ký-tự";

fn device(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn request_body(key: &SigningKey, hostname: &str) -> Value {
    json!({
        "public_key": signed::public_key_base64(&key.verifying_key()),
        "code": enroll::enrollment_code(&key.verifying_key()),
        "hostname": hostname,
    })
}

async fn send_request(t: &TestApp, body: Value) -> api_common::Reply {
    t.call(Method::POST, "/api/v1/enrollments", None, Some(body))
        .await
}

async fn claim(t: &TestApp, claim: &EnrollmentClaim) -> api_common::Reply {
    t.call(
        Method::POST,
        "/api/v1/enrollments/claim",
        None,
        Some(serde_json::to_value(claim).unwrap()),
    )
    .await
}

/// Units root → c1, c2; zones z1 (c1), z2 (c2); a technician and an
/// editor in c1.
async fn seeded() -> TestApp {
    let t = TestApp::new().await;
    for (id, parent) in [("c1", "root"), ("c2", "root")] {
        let r = t
            .post(
                "/api/v1/units",
                json!({"id": id, "name": format!("Xã {id}"), "kind": "commune", "parent_id": parent}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json());
    }
    t.create_zones(&[("z1", "c1"), ("z2", "c2")]).await;
    for (name, role) in [("ky-thuat", "technician"), ("bien-tap", "editor")] {
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
    assert_eq!(r.status, StatusCode::OK);
    r.json()["token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_code_that_does_not_match_the_key_is_refused() {
    let t = TestApp::new().await;
    let mut body = request_body(&device(1), "loa-cho");
    body["code"] = json!(enroll::enrollment_code(&device(2).verifying_key()));
    let v = send_request(&t, body)
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["code"], "code_mismatch");
    let mut body = request_body(&device(1), "loa-cho");
    body["public_key"] = json!("bm90IGEga2V5");
    send_request(&t, body)
        .await
        .assert_error(StatusCode::BAD_REQUEST);
    let mut body = request_body(&device(1), "loa-cho");
    body["requested_id"] = json!("../etc");
    send_request(&t, body)
        .await
        .assert_error(StatusCode::BAD_REQUEST);
    // Nothing was stored.
    assert_eq!(t.get("/api/v1/enrollments").await.json(), json!([]));
    // The right code, typed in lower case without its dash, is accepted.
    let mut body = request_body(&device(1), "loa-cho");
    body["code"] = json!(
        body["code"]
            .as_str()
            .unwrap()
            .replace('-', "")
            .to_lowercase()
    );
    assert_eq!(send_request(&t, body).await.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn only_technicians_and_admins_list_accept_and_reject() {
    let t = seeded().await;
    let key = device(3);
    let code = enroll::enrollment_code(&key.verifying_key());
    let r = send_request(&t, request_body(&key, "loa-dinh")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.json()["code"], code.as_str());
    assert_eq!(r.json()["state"], "pending");

    let accept = json!({"id": "loa-dinh", "name": "Loa đình làng", "zone": "z1"});
    let url = format!("/api/v1/enrollments/{code}/accept");
    // No credentials, or a device token: 401.
    t.call(Method::GET, "/api/v1/enrollments", None, None)
        .await
        .assert_error(StatusCode::UNAUTHORIZED);
    t.call(Method::POST, &url, None, Some(accept.clone()))
        .await
        .assert_error(StatusCode::UNAUTHORIZED);
    t.call(
        Method::POST,
        &format!("/api/v1/enrollments/{code}/reject"),
        None,
        None,
    )
    .await
    .assert_error(StatusCode::UNAUTHORIZED);
    // An editor: 403.
    let editor = login(&t, "bien-tap").await;
    t.call(Method::GET, "/api/v1/enrollments", Some(&editor), None)
        .await
        .assert_error(StatusCode::FORBIDDEN);
    t.call(Method::POST, &url, Some(&editor), Some(accept.clone()))
        .await
        .assert_error(StatusCode::FORBIDDEN);
    // A technician of c1 sees it but may not put it in c2's zone.
    let tech = login(&t, "ky-thuat").await;
    let r = t
        .call(Method::GET, "/api/v1/enrollments", Some(&tech), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let listed = r.json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["code"], code.as_str());
    assert_eq!(listed[0]["hostname"], "loa-dinh");
    assert!(listed[0]["created_at"].is_string() && listed[0]["expires_at"].is_string());
    t.call(
        Method::POST,
        &url,
        Some(&tech),
        Some(json!({"id": "loa-dinh", "name": "Loa đình làng", "zone": "z2"})),
    )
    .await
    .assert_error(StatusCode::FORBIDDEN);
    // Same validation as POST /receivers.
    t.call(
        Method::POST,
        &url,
        Some(&tech),
        Some(json!({"id": "a/b", "name": "x", "zone": "z1"})),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST);
    t.call(
        Method::POST,
        &url,
        Some(&tech),
        Some(json!({"id": "loa-dinh", "name": "x", "zone": "nowhere"})),
    )
    .await
    .assert_error(StatusCode::UNPROCESSABLE_ENTITY);
    // An unknown code: 404.
    t.call(
        Method::POST,
        "/api/v1/enrollments/0000-0000/accept",
        Some(&tech),
        Some(accept.clone()),
    )
    .await
    .assert_error(StatusCode::NOT_FOUND);

    // Accepted: the receiver exists, bound to the key, and the request is no longer listed.
    let r = t
        .call(Method::POST, &url, Some(&tech), Some(accept.clone()))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json());
    assert_eq!(r.json()["id"], "loa-dinh");
    assert!(
        r.json().get("token").is_none(),
        "no token to the technician"
    );
    let receiver = t.get("/api/v1/receivers/loa-dinh").await;
    assert_eq!(receiver.status, StatusCode::OK);
    assert_eq!(receiver.json()["zone"], "z1");
    assert_eq!(receiver.json()["name"], "Loa đình làng");
    let bound: Option<String> =
        sqlx::query_scalar("SELECT public_key FROM receivers WHERE id = 'loa-dinh'")
            .fetch_one(&t.db)
            .await
            .unwrap();
    assert_eq!(bound, Some(signed::public_key_base64(&key.verifying_key())));
    assert_eq!(t.get("/api/v1/enrollments").await.json(), json!([]));
    // Accepting again: not pending any more.
    t.call(Method::POST, &url, Some(&tech), Some(accept))
        .await
        .assert_error(StatusCode::NOT_FOUND);

    // Audited, by the technician.
    let audit = t
        .get("/api/v1/audit?action=enrollments.accept")
        .await
        .json();
    let rows = audit.as_array().unwrap();
    let ok: Vec<&Value> = rows.iter().filter(|r| r["status"] == 201).collect();
    assert_eq!(ok.len(), 1, "{audit}");
    assert_eq!(ok[0]["username"], "ky-thuat");
    assert_eq!(ok[0]["object_id"], code.as_str());
    assert_eq!(ok[0]["detail"]["receiver_id"], "loa-dinh");
}

#[tokio::test]
async fn the_credential_goes_once_to_a_fresh_claim_signed_by_the_key() {
    let t = seeded().await;
    let key = device(4);
    let code = enroll::enrollment_code(&key.verifying_key());
    assert_eq!(
        send_request(&t, request_body(&key, "loa-ben-do"))
            .await
            .status,
        StatusCode::ACCEPTED
    );
    // Pending: 202, nothing handed out, and the polling is not audited.
    let r = claim(&t, &enroll::sign_claim(&key, Utc::now())).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.json()["state"], "pending");
    let polls = t.get("/api/v1/audit?action=enrollments.claim").await.json();
    assert_eq!(polls, json!([]));

    let r = t
        .post(
            &format!("/api/v1/enrollments/{}/accept", code.to_lowercase()),
            json!({"id": "loa-ben-do", "name": "Loa bến đò", "zone": "z1"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json());

    // Signed by another key, or a stale or future timestamp: 401.
    let forged = EnrollmentClaim {
        public_key: signed::public_key_base64(&key.verifying_key()),
        ..enroll::sign_claim(&device(5), Utc::now())
    };
    claim(&t, &forged)
        .await
        .assert_error(StatusCode::UNAUTHORIZED);
    let stale = enroll::sign_claim(&key, Utc::now() - Duration::minutes(6));
    claim(&t, &stale)
        .await
        .assert_error(StatusCode::UNAUTHORIZED);
    let future = enroll::sign_claim(&key, Utc::now() + Duration::minutes(6));
    claim(&t, &future)
        .await
        .assert_error(StatusCode::UNAUTHORIZED);
    // Another device that never asked: 404.
    claim(&t, &enroll::sign_claim(&device(6), Utc::now()))
        .await
        .assert_error(StatusCode::NOT_FOUND);

    // The genuine claim: the credential and the controller's key.
    let r = claim(&t, &enroll::sign_claim(&key, Utc::now())).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    let grant: enroll::EnrollmentGrant = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(grant.receiver_id, "loa-ben-do");
    assert_eq!(grant.zone, "z1");
    let served = t.get("/api/v1/controller-key").await.json();
    assert_eq!(grant.controller_key, served["public_key"].as_str().unwrap());
    // The token works as the receiver's credential.
    let r = t
        .call(
            Method::GET,
            "/api/v1/controller-key",
            Some(&grant.token),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // Only once: a replay of the same claim, or a new one, gets 409.
    let again = claim(&t, &enroll::sign_claim(&key, Utc::now()))
        .await
        .assert_error(StatusCode::CONFLICT);
    assert_eq!(again["code"], "credential_already_issued");
    // The request sent again (e.g. after a restart) says it is accepted.
    let r = send_request(&t, request_body(&key, "loa-ben-do")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["state"], "accepted");
    // The hand-out is audited.
    let issued = t.get("/api/v1/audit?action=enrollments.claim").await.json();
    let issued: Vec<&Value> = issued
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == 200)
        .collect();
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0]["detail"]["receiver_id"], "loa-ben-do");
}

#[tokio::test]
async fn a_rejected_device_stays_rejected() {
    let t = seeded().await;
    let key = device(7);
    let code = enroll::enrollment_code(&key.verifying_key());
    assert_eq!(
        send_request(&t, request_body(&key, "la")).await.status,
        StatusCode::ACCEPTED
    );
    let tech = login(&t, "ky-thuat").await;
    let r = t
        .call(
            Method::POST,
            &format!("/api/v1/enrollments/{code}/reject"),
            Some(&tech),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    assert_eq!(r.json()["state"], "rejected");
    assert_eq!(t.get("/api/v1/enrollments").await.json(), json!([]));
    let v = claim(&t, &enroll::sign_claim(&key, Utc::now()))
        .await
        .assert_error(StatusCode::FORBIDDEN);
    assert_eq!(v["code"], "enrollment_rejected");
    send_request(&t, request_body(&key, "la"))
        .await
        .assert_error(StatusCode::FORBIDDEN);
    t.post(
        &format!("/api/v1/enrollments/{code}/accept"),
        json!({"id": "la", "name": "La", "zone": "z1"}),
    )
    .await
    .assert_error(StatusCode::NOT_FOUND);
    assert_eq!(
        t.get("/api/v1/receivers/la").await.status,
        StatusCode::NOT_FOUND
    );
    let audit = t
        .get("/api/v1/audit?action=enrollments.reject")
        .await
        .json();
    assert_eq!(audit[0]["username"], "ky-thuat");
    assert_eq!(audit[0]["status"], 200);
}

#[tokio::test]
async fn requests_are_rate_limited_per_address() {
    let t = TestApp::new().await;
    let mut statuses = Vec::new();
    for seed in 0..25u8 {
        statuses.push(
            send_request(&t, request_body(&device(100 + seed), "x"))
                .await
                .status,
        );
    }
    let accepted = statuses
        .iter()
        .filter(|s| **s == StatusCode::ACCEPTED)
        .count();
    assert_eq!(accepted, 20);
    let v = send_request(&t, request_body(&device(200), "x"))
        .await
        .assert_error(StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(v["code"], "too_many_enrollments");
    assert_eq!(
        t.get("/api/v1/enrollments")
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        20
    );
}

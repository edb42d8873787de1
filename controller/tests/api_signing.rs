//! The controller's signing key over HTTP and the rejections receivers
//! report, as the API shows them.

mod api_common;

use api_common::TestApp;
use axum::http::{Method, StatusCode};
use loa_controller::signing::Signer;
use serde_json::json;

#[tokio::test]
async fn the_public_key_is_served_to_receivers_and_users_only() {
    let t = TestApp::new().await;
    let receiver_token = t.zone_and_receiver("thon-1", "loa-1").await;
    t.call(Method::GET, "/api/v1/controller-key", None, None)
        .await
        .assert_error(StatusCode::UNAUTHORIZED);
    t.call(Method::GET, "/api/v1/controller-key", Some("wrong"), None)
        .await
        .assert_error(StatusCode::UNAUTHORIZED);

    // The key the controller keeps in its data directory.
    let expected = Signer::open(t.dir.path()).unwrap().public_key();
    for token in [receiver_token.as_str(), t.token.as_str()] {
        let r = t
            .call(Method::GET, "/api/v1/controller-key", Some(token), None)
            .await;
        assert_eq!(r.status, StatusCode::OK);
        let v = r.json();
        let key = loa_protocol::signed::parse_public_key(v["public_key"].as_str().unwrap())
            .expect("a base64 Ed25519 key");
        assert_eq!(key, expected);
        assert_eq!(
            v["fingerprint"],
            json!(loa_protocol::signed::fingerprint(&expected))
        );
    }
}

#[tokio::test]
async fn receivers_list_the_messages_they_refused() {
    let t = TestApp::new().await;
    t.zone_and_receiver("thon-1", "loa-1").await;
    let r0 = t.get("/api/v1/receivers").await.json()[0].clone();
    assert_eq!(r0["rejected_messages"], json!([]));
    let rejected = json!([{
        "topic": "loa/v1/receivers/loa-1/schedule",
        "reason": "bad_signature",
        "at": "2026-12-03T10:00:00Z"
    }]);
    sqlx::query("UPDATE receivers SET rejected_messages = $1 WHERE id = 'loa-1'")
        .bind(rejected.to_string())
        .execute(&t.db)
        .await
        .unwrap();
    let r0 = t.get("/api/v1/receivers/loa-1").await.json();
    assert_eq!(r0["rejected_messages"], rejected);
}

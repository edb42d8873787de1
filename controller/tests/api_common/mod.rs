//! Shared set-up for the API integration tests: a fresh data directory, the
//! real router over the real database and store (with a `Distributor`
//! nobody listens to, since these tests do not exercise MQTT), a logged-in
//! admin, and helpers to send requests and build multipart bodies and WAVs.

#![allow(dead_code)]

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use loa_controller::distribution::Distributor;
use loa_controller::state::AppState;
use loa_controller::store::AudioStore;
use loa_controller::{db, server};
use serde_json::Value;
use sqlx::SqlitePool;
use tower::ServiceExt;

/// The admin password the tests set (as `LOA_ADMIN_PASSWORD` would).
pub const PASSWORD: &str = "mật-khẩu-thử-nghiệm";

/// A controller API over a temporary data directory.
pub struct TestApp {
    /// The router under test.
    pub app: Router,
    /// Direct database access, to seed and inspect rows.
    pub db: SqlitePool,
    /// The data directory (deleted on drop).
    pub dir: tempfile::TempDir,
    /// An admin bearer token.
    pub token: String,
}

/// A response, fully read.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON (panics with the body text if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// Asserts the status and that the body is the API's error shape.
    #[track_caller]
    pub fn assert_error(&self, status: StatusCode) -> Value {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        let v = self.json();
        assert!(
            v["error"].as_str().is_some_and(|s| !s.is_empty()),
            "no error in {v}"
        );
        let vi = v["message_vi"]
            .as_str()
            .unwrap_or_else(|| panic!("no message_vi in {v}"));
        assert!(
            !vi.is_empty() && !vi.is_ascii(),
            "message_vi should be Vietnamese: {vi:?}"
        );
        v
    }
}

impl TestApp {
    /// A fresh app with the default upload limit.
    pub async fn new() -> TestApp {
        Self::with_upload_limit(512 * 1024 * 1024).await
    }

    /// A fresh app with this upload limit, and a logged-in admin.
    pub async fn with_upload_limit(max_upload_bytes: u64) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let db = db::open(dir.path()).await.unwrap();
        db::ensure_admin(&db, Some(PASSWORD)).await.unwrap();
        let store = AudioStore::open(dir.path()).unwrap();
        let signer = loa_controller::signing::Signer::open(dir.path()).unwrap();
        let state = AppState::new(db.clone(), store, Distributor::default(), max_upload_bytes)
            .with_controller_key(signer.public_key());
        let app = server::app(state);
        let mut t = TestApp {
            app,
            db,
            dir,
            token: String::new(),
        };
        let r = t
            .call(
                Method::POST,
                "/api/v1/login",
                None,
                Some(serde_json::json!({"username": "admin", "password": PASSWORD})),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
        t.token = r.json()["token"].as_str().unwrap().to_string();
        t
    }

    /// Sends a request through the router.
    pub async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        Reply {
            status,
            headers,
            body,
        }
    }

    /// Sends a JSON request (no body when `body` is `None`) with an optional bearer token.
    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let request = match body {
            Some(v) => b
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(serde_json::to_vec(&v).unwrap())),
            None => b.body(Body::empty()),
        }
        .unwrap();
        self.send(request).await
    }

    /// GET as the admin.
    pub async fn get(&self, uri: &str) -> Reply {
        self.call(Method::GET, uri, Some(&self.token.clone()), None)
            .await
    }

    /// POST JSON as the admin.
    pub async fn post(&self, uri: &str, body: Value) -> Reply {
        self.call(Method::POST, uri, Some(&self.token.clone()), Some(body))
            .await
    }

    /// Creates units `(id, kind, parent_id)` as the admin, named "Đơn vị {id}".
    pub async fn create_units(&self, units: &[(&str, &str, &str)]) {
        for (id, kind, parent) in units {
            let r = self
                .post(
                    "/api/v1/units",
                    serde_json::json!({"id": id, "name": format!("Đơn vị {id}"), "kind": kind, "parent_id": parent}),
                )
                .await;
            assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json());
        }
    }

    /// Creates zones `(id, unit_id)` as the admin, named "Thôn {id}".
    pub async fn create_zones(&self, zones: &[(&str, &str)]) {
        for (id, unit) in zones {
            let r = self
                .post(
                    "/api/v1/zones",
                    serde_json::json!({"id": id, "name": format!("Thôn {id}"), "unit_id": unit}),
                )
                .await;
            assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json());
        }
    }

    /// DELETE as the admin.
    pub async fn delete(&self, uri: &str) -> Reply {
        self.call(Method::DELETE, uri, Some(&self.token.clone()), None)
            .await
    }

    /// Uploads a multipart form as the admin.
    pub async fn upload(&self, parts: &[Part<'_>]) -> Reply {
        let (content_type, body) = multipart(parts);
        let request = Request::builder()
            .method(Method::POST)
            .uri("/api/v1/programmes")
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body))
            .unwrap();
        self.send(request).await
    }

    /// Files currently in `DIR/<sub>`.
    pub fn files_in(&self, sub: &str) -> Vec<String> {
        std::fs::read_dir(self.dir.path().join(sub))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// Creates a zone and a receiver in it; returns the receiver's token.
    pub async fn zone_and_receiver(&self, zone: &str, receiver: &str) -> String {
        if self.get(&format!("/api/v1/zones/{zone}")).await.status == StatusCode::NOT_FOUND {
            let r = self
                .post(
                    "/api/v1/zones",
                    serde_json::json!({"id": zone, "name": format!("Thôn {zone}")}),
                )
                .await;
            assert_eq!(r.status, StatusCode::CREATED);
        }
        let r = self
            .post(
                "/api/v1/receivers",
                serde_json::json!({"id": receiver, "name": "Loa cổng chợ", "zone": zone}),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        r.json()["token"].as_str().unwrap().to_string()
    }

    /// Inserts a programme row directly (for tests that need no audio).
    pub async fn seed_programme(&self, id: &str, duration_ms: i64) {
        sqlx::query(
            "INSERT INTO programmes (id, title, category, duration_ms, sha256, bytes, bitrate, created_at) \
             VALUES ($1, 'Bản tin', 'thời sự', $2, $3, 1000, 32000, 0)",
        )
        .bind(id)
        .bind(duration_ms)
        .bind("0".repeat(64))
        .execute(&self.db)
        .await
        .unwrap();
    }
}

/// One multipart form field.
pub enum Part<'a> {
    /// A text field.
    Text(&'a str, &'a str),
    /// A file field: name, file name, content type, bytes.
    File(&'a str, &'a str, &'a str, &'a [u8]),
}

/// Builds a `multipart/form-data` body; returns (content type, body).
pub fn multipart(parts: &[Part<'_>]) -> (String, Vec<u8>) {
    let boundary = "loa-test-boundary-7d1c";
    let mut body = Vec::new();
    for part in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match part {
            Part::Text(name, value) => {
                body.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
                );
                body.extend_from_slice(value.as_bytes());
            }
            Part::File(name, file_name, content_type, bytes) => {
                body.extend_from_slice(
                    format!(
                        "Content-Disposition: form-data; name=\"{name}\"; filename=\"{file_name}\"\r\n\
                         Content-Type: {content_type}\r\n\r\n"
                    )
                    .as_bytes(),
                );
                body.extend_from_slice(bytes);
            }
        }
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// A mono 16-bit WAV of `seconds` of a 440 Hz tone with a slow tremolo
/// (so it is audible speech-like content, not silence) at `rate` Hz.
pub fn wav(seconds: f32, rate: u32) -> Vec<u8> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut cursor = std::io::Cursor::new(Vec::new());
    {
        let mut w = hound::WavWriter::new(&mut cursor, spec).unwrap();
        let n = (seconds * rate as f32) as u32;
        for i in 0..n {
            let t = i as f32 / rate as f32;
            let envelope = 0.6 + 0.4 * (2.0 * std::f32::consts::PI * 3.0 * t).sin();
            let s = 0.3 * envelope * (2.0 * std::f32::consts::PI * 440.0 * t).sin();
            w.write_sample((s * i16::MAX as f32) as i16).unwrap();
        }
        w.finalize().unwrap();
    }
    cursor.into_inner()
}

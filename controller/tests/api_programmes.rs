//! API integration tests for programmes: upload and transcode of a real
//! (generated) WAV, refusal of non-audio and oversize uploads without
//! leftovers, and audio download with ranges, ETag and receiver tokens.

mod api_common;

use api_common::{Part, TestApp, wav};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use sha2::{Digest, Sha256};

/// Uploads a 1.5 s WAV; returns the 201 body.
async fn upload_wav(t: &TestApp) -> serde_json::Value {
    let audio = wav(1.5, 16_000);
    let r = t
        .upload(&[
            Part::Text("title", "Bản tin chuyển đổi số"),
            Part::Text("category", "chuyển đổi số"),
            Part::File("file", "ban-tin.wav", "audio/wav", &audio),
        ])
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    r.json()
}

#[tokio::test]
async fn wav_upload_is_transcoded_stored_by_hash_and_listed() {
    let t = TestApp::new().await;
    let p = upload_wav(&t).await;
    assert_eq!(p["title"], "Bản tin chuyển đổi số");
    assert_eq!(p["category"], "chuyển đổi số");
    let duration = p["duration_ms"].as_i64().unwrap();
    assert!((1400..=1600).contains(&duration), "duration {duration}");
    let bitrate = p["bitrate"].as_i64().unwrap();
    assert!((8_000..=64_000).contains(&bitrate), "bitrate {bitrate}");
    assert_eq!(p["original_name"], "ban-tin.wav");
    assert!(p["created_at"].as_str().unwrap().ends_with('Z'));

    // The stored file is named by its own SHA-256 and is Ogg.
    let sha = p["sha256"].as_str().unwrap();
    let stored = std::fs::read(t.dir.path().join("audio").join(format!("{sha}.opus"))).unwrap();
    assert_eq!(hex::encode(Sha256::digest(&stored)), sha);
    assert_eq!(p["bytes"].as_u64().unwrap(), stored.len() as u64);
    assert_eq!(&stored[..4], b"OggS");
    assert!(
        t.files_in("tmp").is_empty(),
        "tmp not cleaned: {:?}",
        t.files_in("tmp")
    );

    let id = p["id"].as_str().unwrap();
    let list = t.get("/api/v1/programmes").await.json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], id);
    let one = t.get(&format!("/api/v1/programmes/{id}")).await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.json()["sha256"], sha);
    t.get("/api/v1/programmes/nope")
        .await
        .assert_error(StatusCode::NOT_FOUND);

    // The same audio uploaded again shares the stored file.
    upload_wav(&t).await;
    assert_eq!(t.files_in("audio").len(), 1);
    assert_eq!(
        t.get("/api/v1/programmes")
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn audio_download_supports_ranges_etag_and_receiver_tokens() {
    let t = TestApp::new().await;
    let p = upload_wav(&t).await;
    let (id, sha) = (p["id"].as_str().unwrap(), p["sha256"].as_str().unwrap());
    let file = std::fs::read(t.dir.path().join("audio").join(format!("{sha}.opus"))).unwrap();
    let len = file.len();
    let receiver_token = t.zone_and_receiver("thon-1", "loa-1").await;
    let uri = format!("/api/v1/programmes/{id}/audio");
    let get = |token: Option<String>, range: Option<&str>, inm: Option<String>| {
        let mut b = Request::builder().method(Method::GET).uri(&uri);
        if let Some(tok) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {tok}"));
        }
        if let Some(r) = range {
            b = b.header(header::RANGE, r);
        }
        if let Some(e) = inm {
            b = b.header(header::IF_NONE_MATCH, e);
        }
        b.body(Body::empty()).unwrap()
    };

    // Whole file, as a receiver.
    let r = t.send(get(Some(receiver_token.clone()), None, None)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers[header::CONTENT_TYPE], "audio/ogg");
    assert_eq!(r.headers[header::ETAG], format!("\"{sha}\""));
    assert_eq!(r.headers[header::ACCEPT_RANGES], "bytes");
    assert_eq!(r.body.as_ref(), file.as_slice());

    // A range, as the admin.
    let r = t
        .send(get(Some(t.token.clone()), Some("bytes=10-109"), None))
        .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        r.headers[header::CONTENT_RANGE],
        format!("bytes 10-109/{len}")
    );
    assert_eq!(r.body.as_ref(), &file[10..110]);

    // Suffix and open-ended ranges.
    let r = t
        .send(get(Some(receiver_token.clone()), Some("bytes=-25"), None))
        .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.body.as_ref(), &file[len - 25..]);
    let r = t
        .send(get(
            Some(receiver_token.clone()),
            Some(&format!("bytes={}-", len - 7)),
            None,
        ))
        .await;
    assert_eq!(r.body.as_ref(), &file[len - 7..]);

    // Outside the file: 416 with the length.
    let r = t
        .send(get(
            Some(receiver_token.clone()),
            Some(&format!("bytes={len}-")),
            None,
        ))
        .await;
    r.assert_error(StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.headers[header::CONTENT_RANGE], format!("bytes */{len}"));

    // Conditional request.
    let r = t
        .send(get(
            Some(receiver_token.clone()),
            None,
            Some(format!("\"{sha}\"")),
        ))
        .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert!(r.body.is_empty());

    // No token, a wrong token: 401. A receiver token opens nothing else.
    t.send(get(None, None, None))
        .await
        .assert_error(StatusCode::UNAUTHORIZED);
    t.send(get(Some("f".repeat(64)), None, None))
        .await
        .assert_error(StatusCode::UNAUTHORIZED);
    t.call(
        Method::GET,
        "/api/v1/programmes",
        Some(&receiver_token),
        None,
    )
    .await
    .assert_error(StatusCode::UNAUTHORIZED);
    t.call(
        Method::GET,
        "/api/v1/programmes/none/audio",
        Some(&receiver_token),
        None,
    )
    .await
    .assert_error(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn non_audio_uploads_are_refused_and_leave_nothing_behind() {
    let t = TestApp::new().await;
    let random: Vec<u8> = (0..50_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let png_header = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x10\0\0\0\x10\x08\x06\0\0\0";
    let lying_wav = {
        let mut w = wav(2.0, 16_000);
        w.truncate(200); // header promises 2 s, data is cut
        w
    };
    for (name, bytes) in [
        ("random.mp3", random.as_slice()),
        ("anh.png", png_header.as_slice()),
        (
            "ghi-chu.txt",
            "Đây là văn bản, không phải âm thanh.".as_bytes(),
        ),
        ("rong.wav", &[][..]),
        ("hong.wav", lying_wav.as_slice()),
    ] {
        let r = t
            .upload(&[
                Part::Text("title", "Thử"),
                Part::Text("category", "thử"),
                Part::File("file", name, "application/octet-stream", bytes),
            ])
            .await;
        assert!(r.status.is_client_error(), "{name}: {}", r.status);
        let v = r.assert_error(r.status);
        assert!(
            [
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                StatusCode::UNPROCESSABLE_ENTITY
            ]
            .contains(&r.status),
            "{name}: {} {v}",
            r.status
        );
        assert!(
            t.files_in("tmp").is_empty(),
            "{name}: tmp has {:?}",
            t.files_in("tmp")
        );
        assert!(
            t.files_in("audio").is_empty(),
            "{name}: audio has {:?}",
            t.files_in("audio")
        );
    }
    assert!(
        t.get("/api/v1/programmes")
            .await
            .json()
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn oversize_uploads_get_413_and_leave_nothing_behind() {
    let t = TestApp::with_upload_limit(64 * 1024).await;
    let audio = wav(5.0, 16_000); // ~160 KB
    let r = t
        .upload(&[
            Part::Text("title", "Quá lớn"),
            Part::Text("category", "thử"),
            Part::File("file", "lon.wav", "audio/wav", &audio),
        ])
        .await;
    let v = r.assert_error(StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(v["code"], "payload_too_large");
    assert!(t.files_in("tmp").is_empty());
    assert!(t.files_in("audio").is_empty());

    // A declared oversize body is refused before it is read.
    let (ct, body) =
        api_common::multipart(&[Part::File("file", "a.wav", "audio/wav", &audio[..1000])]);
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/programmes")
        .header(header::AUTHORIZATION, format!("Bearer {}", t.token))
        .header(header::CONTENT_TYPE, ct)
        .header(header::CONTENT_LENGTH, 64 * 1024 + 2 * 1024 * 1024)
        .body(Body::from(body))
        .unwrap();
    t.send(req)
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE);
    assert!(t.files_in("tmp").is_empty());

    // Under the limit, the same server accepts.
    let small = wav(1.0, 16_000);
    let r = t
        .upload(&[
            Part::File("file", "nho.wav", "audio/wav", &small),
            Part::Text("title", "Vừa"),
            Part::Text("category", "thử"),
        ])
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
}

#[tokio::test]
async fn malformed_upload_requests_get_json_errors() {
    let t = TestApp::new().await;
    let audio = wav(1.0, 16_000);
    // No file.
    t.upload(&[Part::Text("title", "A"), Part::Text("category", "b")])
        .await
        .assert_error(StatusCode::BAD_REQUEST);
    // No title / blank category.
    t.upload(&[
        Part::Text("category", "b"),
        Part::File("file", "a.wav", "audio/wav", &audio),
    ])
    .await
    .assert_error(StatusCode::UNPROCESSABLE_ENTITY);
    t.upload(&[
        Part::Text("title", "A"),
        Part::Text("category", "  "),
        Part::File("file", "a.wav", "audio/wav", &audio),
    ])
    .await
    .assert_error(StatusCode::UNPROCESSABLE_ENTITY);
    // Invalid and duplicate ids.
    t.upload(&[
        Part::Text("id", "a/b"),
        Part::Text("title", "A"),
        Part::Text("category", "b"),
        Part::File("file", "a.wav", "audio/wav", &audio),
    ])
    .await
    .assert_error(StatusCode::BAD_REQUEST);
    let form = [
        Part::Text("id", "ban-tin-1"),
        Part::Text("title", "A"),
        Part::Text("category", "b"),
        Part::File("file", "a.wav", "audio/wav", &audio),
    ];
    assert_eq!(t.upload(&form).await.status, StatusCode::CREATED);
    t.upload(&form).await.assert_error(StatusCode::CONFLICT);
    // Not multipart at all.
    t.post("/api/v1/programmes", serde_json::json!({"title": "A"}))
        .await
        .assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // A body cut in the middle of the form.
    let (ct, mut body) = api_common::multipart(&[Part::File("file", "a.wav", "audio/wav", &audio)]);
    body.truncate(body.len() / 2);
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/programmes")
        .header(header::AUTHORIZATION, format!("Bearer {}", t.token))
        .header(header::CONTENT_TYPE, ct)
        .body(Body::from(body))
        .unwrap();
    t.send(req).await.assert_error(StatusCode::BAD_REQUEST);
    assert!(t.files_in("tmp").is_empty());
    assert_eq!(t.files_in("audio").len(), 1);
}

//! The officers' web console: plain HTML, CSS and JavaScript modules from
//! `controller/web/`, embedded in the binary at compile time (no build
//! step, no CDN: it works offline). `GET /` is the page, `GET
//! /assets/{path}` the rest. Answers carry an `ETag` (the content's SHA-256)
//! with `Cache-Control: no-cache`, so browsers revalidate cheaply and never
//! run a stale console after an upgrade, and a strict Content-Security-Policy
//! (everything from this origin, nothing inline).
//!
//! Adding a file to `web/` means adding a line to [`ASSETS`].

use std::sync::OnceLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

use crate::api::ApiError;
use crate::state::AppState;

/// One embedded file.
struct Asset {
    /// Path under `web/` (and under `/assets/` in URLs).
    path: &'static str,
    /// Its `Content-Type`.
    mime: &'static str,
    /// Its bytes.
    body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $mime:literal) => {
        Asset {
            path: $path,
            mime: $mime,
            body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/", $path)),
        }
    };
}

#[cfg(test)]
const JS: &str = "text/javascript; charset=utf-8";

/// Every file of the console.
static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("js/app.js", "text/javascript; charset=utf-8"),
    asset!("js/api.js", "text/javascript; charset=utf-8"),
    asset!("js/ui.js", "text/javascript; charset=utf-8"),
    asset!("js/i18n.js", "text/javascript; charset=utf-8"),
    asset!("js/mic.js", "text/javascript; charset=utf-8"),
    asset!("js/mic-worklet.js", "text/javascript; charset=utf-8"),
    asset!("js/pages/overview.js", "text/javascript; charset=utf-8"),
    asset!("js/pages/programmes.js", "text/javascript; charset=utf-8"),
    asset!("js/pages/schedules.js", "text/javascript; charset=utf-8"),
    asset!("js/pages/receivers.js", "text/javascript; charset=utf-8"),
    asset!("js/pages/live.js", "text/javascript; charset=utf-8"),
    asset!("js/pages/reports.js", "text/javascript; charset=utf-8"),
    asset!("js/pages/admin.js", "text/javascript; charset=utf-8"),
];

/// The console's Content-Security-Policy.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data: blob:; media-src 'self' blob:; connect-src 'self'; \
    object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Routes of the console.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/favicon.ico", get(favicon))
        .route("/assets/{*path}", get(asset))
}

/// The ETag of each asset, computed once.
fn etags() -> &'static Vec<String> {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| format!("\"{}\"", &hex::encode(Sha256::digest(a.body))[..32]))
            .collect()
    })
}

fn serve(index: usize, headers: &HeaderMap) -> Response {
    let asset = &ASSETS[index];
    let etag = &etags()[index];
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.body.into_response()
    };
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.mime));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if asset.mime.starts_with("text/html") {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    response
}

fn find(path: &str) -> Option<usize> {
    ASSETS.iter().position(|a| a.path == path)
}

async fn index(headers: HeaderMap) -> Response {
    serve(
        find("index.html").expect("index.html is embedded"),
        &headers,
    )
}

async fn favicon(headers: HeaderMap) -> Response {
    serve(
        find("favicon.svg").expect("favicon.svg is embedded"),
        &headers,
    )
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    match find(&path) {
        Some(i) => serve(i, &headers),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "no_such_asset",
            format!("no console file {path:?}"),
            "Không có tệp này trong giao diện.",
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_has_a_known_type_and_the_page_links_only_embedded_files() {
        let index = std::str::from_utf8(ASSETS[find("index.html").unwrap()].body).unwrap();
        for link in index.split("/assets/").skip(1) {
            let path: String = link.chars().take_while(|c| *c != '"').collect();
            assert!(
                find(&path).is_some(),
                "index.html links {path}, not embedded"
            );
        }
        for a in ASSETS {
            assert!(!a.body.is_empty(), "{} is empty", a.path);
            if a.path.ends_with(".js") {
                assert_eq!(a.mime, JS);
                // Every relative import must be embedded too.
                let text = std::str::from_utf8(a.body).unwrap();
                let dir = a.path.rsplit_once('/').map_or("", |(d, _)| d);
                for imp in text.split("from \"./").skip(1) {
                    let file: String = imp.chars().take_while(|c| *c != '"').collect();
                    let full = if dir.is_empty() {
                        file.clone()
                    } else {
                        format!("{dir}/{file}")
                    };
                    assert!(
                        find(&full).is_some(),
                        "{} imports {full}, not embedded",
                        a.path
                    );
                }
                for imp in text.split("from \"../").skip(1) {
                    let file: String = imp.chars().take_while(|c| *c != '"').collect();
                    let parent = dir.rsplit_once('/').map_or("", |(d, _)| d);
                    let full = if parent.is_empty() {
                        file.clone()
                    } else {
                        format!("{parent}/{file}")
                    };
                    assert!(
                        find(&full).is_some(),
                        "{} imports {full}, not embedded",
                        a.path
                    );
                }
            }
        }
    }
}

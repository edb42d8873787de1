//! A small client for the controller's HTTP API (`/api/v1`), written from
//! the contract. Lists are accepted as a bare JSON array or as an
//! object holding one array, so the checks do not depend on that detail.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A programme as `POST /api/v1/programmes` returns it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Programme {
    /// Id to schedule it by.
    pub id: String,
    /// Length of the stored Opus audio.
    pub duration_ms: u64,
    /// SHA-256 of the stored Ogg Opus file.
    pub sha256: String,
    /// Size of the stored file.
    pub bytes: u64,
    /// Opus bit rate in bits per second.
    pub bitrate: u64,
}

/// An API client, logged in or not.
#[derive(Clone)]
pub struct Api {
    /// `http://127.0.0.1:PORT`.
    base: String,
    /// Shared connection pool.
    http: reqwest::Client,
    /// Bearer token after [`login`](Self::login).
    token: Option<String>,
}

impl Api {
    /// A client for the controller at `base` (`http://HOST:PORT`).
    pub fn new(base: &str) -> Self {
        let http = Self::client_builder().build().expect("reqwest client");
        Api {
            base: base.trim_end_matches('/').to_string(),
            http,
            token: None,
        }
    }

    /// A client for the controller at `base` (`https://HOST:PORT`) that
    /// trusts the PEM CA certificate `ca`.
    pub fn trusting(base: &str, ca: &Path) -> Result<Self> {
        let pem = std::fs::read(ca).with_context(|| format!("read {}", ca.display()))?;
        let http = Self::client_builder()
            .tls_certs_merge(reqwest::Certificate::from_pem_bundle(&pem)?)
            .build()?;
        Ok(Api {
            base: base.trim_end_matches('/').to_string(),
            http,
            token: None,
        })
    }

    fn client_builder() -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .no_proxy()
    }

    /// Sends a request; returns the status and the body (JSON, or a JSON
    /// string holding the text if the body is not JSON).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value)> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = resp.status();
        let text = resp.text().await?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }

    /// Like [`request`](Self::request) but `Err` unless the status is 2xx.
    pub async fn ok(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        let (status, value) = self.request(method.clone(), path, body).await?;
        if !status.is_success() {
            bail!("{method} {path} → {status}: {value}");
        }
        Ok(value)
    }

    /// `GET /api/v1/health` succeeds.
    pub async fn health(&self) -> Result<()> {
        self.ok(Method::GET, "/api/v1/health", None).await.map(drop)
    }

    /// Logs in and keeps the token for later requests.
    pub async fn login(&mut self, username: &str, password: &str) -> Result<()> {
        let v = self
            .ok(
                Method::POST,
                "/api/v1/login",
                Some(&json!({"username": username, "password": password})),
            )
            .await?;
        let token = v["token"]
            .as_str()
            .with_context(|| format!("login response without token: {v}"))?;
        self.token = Some(token.to_string());
        Ok(())
    }

    /// `POST /api/v1/zones`.
    pub async fn create_zone(&self, id: &str, name: &str) -> Result<Value> {
        self.ok(
            Method::POST,
            "/api/v1/zones",
            Some(&json!({"id": id, "name": name})),
        )
        .await
    }

    /// `POST /api/v1/receivers`; returns the receiver's own token.
    pub async fn create_receiver(&self, id: &str, name: &str, zone: &str) -> Result<String> {
        let v = self
            .ok(
                Method::POST,
                "/api/v1/receivers",
                Some(&json!({"id": id, "name": name, "zone": zone})),
            )
            .await?;
        Ok(v["token"]
            .as_str()
            .with_context(|| format!("receiver response without token: {v}"))?
            .to_string())
    }

    /// `POST /api/v1/programmes` (multipart upload of `file`).
    pub async fn upload_programme(
        &self,
        file: &Path,
        title: &str,
        category: &str,
    ) -> Result<Programme> {
        let bytes = std::fs::read(file).with_context(|| format!("read {}", file.display()))?;
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let part = reqwest::multipart::Part::bytes(bytes)
            .file_name(name)
            .mime_str("audio/mpeg")?;
        let form = reqwest::multipart::Form::new()
            .text("title", title.to_string())
            .text("category", category.to_string())
            .part("file", part);
        let mut req = self
            .http
            .post(format!("{}/api/v1/programmes", self.base))
            .multipart(form);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.context("POST /api/v1/programmes")?;
        let status = resp.status();
        let text = resp.text().await?;
        if status != StatusCode::CREATED {
            bail!("POST /api/v1/programmes → {status}: {text}");
        }
        serde_json::from_str(&text).with_context(|| format!("programme response: {text}"))
    }

    /// `POST /api/v1/schedules`.
    pub async fn create_schedule(&self, spec: &Value) -> Result<Value> {
        self.ok(Method::POST, "/api/v1/schedules", Some(spec)).await
    }

    /// `GET /api/v1/receivers`.
    pub async fn receivers(&self) -> Result<Vec<Value>> {
        list(self.ok(Method::GET, "/api/v1/receivers", None).await?)
    }

    /// `GET /api/v1/plays?QUERY` (query already URL-encoded, may be empty).
    pub async fn plays(&self, query: &str) -> Result<Vec<Value>> {
        list(
            self.ok(Method::GET, &format!("/api/v1/plays?{query}"), None)
                .await?,
        )
    }

    /// `GET /api/v1/plays?format=csv&QUERY` as text.
    pub async fn plays_csv(&self, query: &str) -> Result<String> {
        match self
            .ok(
                Method::GET,
                &format!("/api/v1/plays?format=csv&{query}"),
                None,
            )
            .await?
        {
            Value::String(text) => Ok(text),
            other => bail!("CSV export returned JSON: {other}"),
        }
    }
}

/// The items of a list response: a bare array, or the one array inside an object.
pub fn list(value: Value) -> Result<Vec<Value>> {
    match value {
        Value::Array(items) => Ok(items),
        Value::Object(map) => {
            let arrays: Vec<_> = map
                .into_iter()
                .filter_map(|(_, v)| {
                    if let Value::Array(a) = v {
                        Some(a)
                    } else {
                        None
                    }
                })
                .collect();
            match <[Vec<Value>; 1]>::try_from(arrays) {
                Ok([items]) => Ok(items),
                Err(_) => bail!("list response is an object without exactly one array"),
            }
        }
        other => bail!("list response is not a list: {other}"),
    }
}

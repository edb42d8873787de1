//! Relay ("tiếp sóng") of an internet radio stream: an HTTP(S) stream
//! (Icecast/Shoutcast MP3, AAC, Ogg Vorbis or Ogg Opus) downloaded with
//! reqwest on the runtime, handed through a small bounded channel (the
//! read-ahead) to this broadcast's thread, decoded ([`super::decode`]) and
//! played in real time ([`super::paced`]).
//!
//! The first connection must succeed (HTTP 2xx and audio recognised within
//! [`START_TIMEOUT`]) or starting the broadcast fails with a clear error.
//! After that, a dropped connection, an HTTP error or [`IDLE_TIMEOUT`]
//! without data reconnects with exponential backoff; [`MAX_FAILURES`]
//! failures in a row (without [`STABLE_AUDIO`] of audio in between) end
//! the broadcast as `source_failed`. A stream that ends cleanly (the server
//! closed the response normally) ends it as `source_ended`.

use std::io::{self, Read};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use reqwest::Url;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::decode::{PcmSource, SourceError, open_stream};
use super::frames::RATE;
use super::paced::{Paced, PlayEnd};
use super::{Ctx, EndReason, LiveError, Outcome, Ready};

/// Longest wait for a TCP/TLS connection to the stream's server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait, at start, for the server's answer and the first audio.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// A stream that sends nothing for this long is reconnected.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15);
/// Failed connections in a row after which the relay gives up.
pub const MAX_FAILURES: u32 = 8;
/// Audio played after which a connection counts as good again.
pub const STABLE_AUDIO: Duration = Duration::from_secs(10);
/// Chunks of the HTTP body that may wait for the decoder (the read-ahead).
const READ_AHEAD_CHUNKS: usize = 8;
/// First wait before reconnecting; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between reconnections.
const MAX_BACKOFF: Duration = Duration::from_secs(15);

/// Checks a relay URL: absolute `http://` or `https://` with a host.
pub fn parse_url(url: &str) -> Result<Url, LiveError> {
    let bad = |reason: &str| LiveError::InvalidUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let parsed = Url::parse(url.trim()).map_err(|e| bad(&e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("only http:// and https:// streams can be relayed"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("the URL has no host"));
    }
    Ok(parsed)
}

/// How the download of one connection ended.
#[derive(Debug, Clone)]
enum FetchEnd {
    /// The server finished the response normally.
    Clean,
    /// The connection failed.
    Failed(String),
}

/// The HTTP body, read from the broadcast's thread.
struct ChannelReader {
    /// Chunks from the download task (a mutex only to make the reader `Sync`).
    rx: Mutex<mpsc::Receiver<Bytes>>,
    /// The chunk being read.
    current: Bytes,
    /// Set by the download task before it closes the channel.
    end: Arc<Mutex<Option<FetchEnd>>>,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            let next = self
                .rx
                .get_mut()
                .unwrap_or_else(|e| e.into_inner())
                .blocking_recv();
            match next {
                Some(chunk) => self.current = chunk,
                None => {
                    let end = self.end.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    return match end {
                        Some(FetchEnd::Failed(e)) => {
                            Err(io::Error::new(io::ErrorKind::ConnectionAborted, e))
                        }
                        _ => Ok(0),
                    };
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// One connection: the decoded source and how its download ended.
struct Connection {
    source: Box<dyn PcmSource>,
    end: Arc<Mutex<Option<FetchEnd>>>,
    /// Stops the download task.
    cancel: CancellationToken,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// An error with its chain of causes, e.g. "error sending request for url
/// (…): client error (Connect): tcp connect error: Connection refused".
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let msg = cause.to_string();
        if !text.contains(&msg) {
            text.push_str(": ");
            text.push_str(&msg);
        }
        source = cause.source();
    }
    text
}

/// Connects, starts the download task and opens the decoder.
fn connect(ctx: &Ctx, http: &reqwest::Client, url: &Url) -> Result<Connection, LiveError> {
    let cancel = ctx.control.child_token();
    let unreachable = |reason: String| LiveError::RelayUnreachable {
        url: url.to_string(),
        reason,
    };
    let request = http.get(url.clone()).header("Icy-MetaData", "0").send();
    let response = ctx.runtime.block_on(async {
        tokio::select! {
            r = tokio::time::timeout(START_TIMEOUT, request) => Some(r),
            () = cancel.cancelled() => None,
        }
    });
    let response = match response {
        None => return Err(unreachable("stopped while connecting".into())),
        Some(Err(_)) => {
            return Err(unreachable(format!(
                "no answer within {} s",
                START_TIMEOUT.as_secs()
            )));
        }
        Some(Ok(Err(e))) => return Err(unreachable(chain(&e))),
        Some(Ok(Ok(r))) => r,
    };
    if !response.status().is_success() {
        return Err(LiveError::RelayHttp {
            url: url.to_string(),
            status: response.status().as_u16(),
        });
    }
    let hint = hint_for(
        response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        url,
    );
    let (tx, rx) = mpsc::channel(READ_AHEAD_CHUNKS);
    let end = Arc::new(Mutex::new(None));
    let task_end = end.clone();
    let task_cancel = cancel.clone();
    ctx.runtime.spawn(async move {
        let mut response = response;
        let result = loop {
            let chunk = tokio::select! {
                c = tokio::time::timeout(IDLE_TIMEOUT, response.chunk()) => c,
                () = task_cancel.cancelled() => break FetchEnd::Failed("stopped".into()),
            };
            match chunk {
                Ok(Ok(Some(bytes))) => {
                    tokio::select! {
                        sent = tx.send(bytes) => if sent.is_err() {
                            break FetchEnd::Failed("decoder gone".into());
                        },
                        () = task_cancel.cancelled() => break FetchEnd::Failed("stopped".into()),
                    }
                }
                Ok(Ok(None)) => break FetchEnd::Clean,
                Ok(Err(e)) => break FetchEnd::Failed(chain(&e)),
                Err(_) => {
                    break FetchEnd::Failed(format!("no data for {} s", IDLE_TIMEOUT.as_secs()));
                }
            }
        };
        *task_end.lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
        drop(tx);
    });
    let reader = ChannelReader {
        rx: Mutex::new(rx),
        current: Bytes::new(),
        end: end.clone(),
    };
    let source = open_stream(reader, hint).map_err(|e| match e {
        SourceError::Io(e) => unreachable(e.to_string()),
        SourceError::NotAudio(reason) | SourceError::Corrupt(reason) => LiveError::RelayNotAudio {
            url: url.to_string(),
            reason,
        },
    });
    let source = match source {
        Ok(s) => s,
        Err(e) => {
            cancel.cancel();
            return Err(e);
        }
    };
    Ok(Connection {
        source,
        end,
        cancel,
    })
}

/// A format hint from the Content-Type, else the URL's extension.
fn hint_for(content_type: Option<&str>, url: &Url) -> Option<&'static str> {
    let ct = content_type.unwrap_or("").to_ascii_lowercase();
    let by_type = match ct.split(';').next().unwrap_or("").trim() {
        "audio/mpeg" | "audio/mp3" | "audio/mpeg3" => Some("mp3"),
        "audio/aac" | "audio/aacp" | "audio/x-aac" => Some("aac"),
        "audio/ogg" | "application/ogg" | "audio/vorbis" | "audio/opus" => Some("ogg"),
        "audio/flac" | "audio/x-flac" => Some("flac"),
        "audio/wav" | "audio/x-wav" | "audio/wave" => Some("wav"),
        _ => None,
    };
    by_type.or_else(|| {
        let path = url.path().to_ascii_lowercase();
        [
            ("mp3", "mp3"),
            ("aac", "aac"),
            ("ogg", "ogg"),
            ("opus", "ogg"),
            ("oga", "ogg"),
            ("flac", "flac"),
        ]
        .iter()
        .find(|(ext, _)| path.ends_with(&format!(".{ext}")))
        .map(|(_, hint)| *hint)
    })
}

/// Sleeps `d`, waking early on a stop; returns whether a stop was requested.
fn sleep_unless_stopped(ctx: &Ctx, d: Duration) -> bool {
    let step = Duration::from_millis(50);
    let mut left = d;
    while !left.is_zero() {
        if ctx.control.is_stopped() {
            return true;
        }
        let s = left.min(step);
        std::thread::sleep(s);
        left -= s;
    }
    ctx.control.is_stopped()
}

/// The thread of a relay broadcast.
pub(crate) fn run(mut ctx: Ctx, http: reqwest::Client, url: Url, ready: Ready) -> Outcome {
    let mut ready = Some(ready);
    let mut paced = Paced::new();
    let mut failures = 0u32;
    let mut backoff = MIN_BACKOFF;
    let stable_samples = STABLE_AUDIO.as_secs() * u64::from(RATE);
    let outcome = loop {
        if ctx.control.is_stopped() {
            break Outcome::new(ctx.control.reason().unwrap_or(EndReason::Stopped));
        }
        let problem = match connect(&ctx, &http, &url) {
            Err(e) => {
                if let Some(ready) = ready.take() {
                    let detail = e.to_string();
                    let _ = ready.send(Err(e));
                    return Outcome::failed(detail);
                }
                e.to_string()
            }
            Ok(mut connection) => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Ok(()));
                } else {
                    tracing::info!(%url, "relay reconnected");
                }
                let before = paced.samples;
                let played = paced.play(&mut ctx, connection.source.as_mut());
                if paced.samples - before >= stable_samples {
                    failures = 0;
                    backoff = MIN_BACKOFF;
                }
                let end = connection
                    .end
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                drop(connection);
                match (played, end) {
                    (Ok(PlayEnd::Stopped), _) => {
                        break Outcome::new(ctx.control.reason().unwrap_or(EndReason::Stopped));
                    }
                    (Ok(PlayEnd::Eof), Some(FetchEnd::Clean)) => {
                        tracing::info!(%url, "relayed stream ended");
                        break Outcome::new(EndReason::SourceEnded);
                    }
                    (Ok(PlayEnd::Eof), Some(FetchEnd::Failed(e))) => e,
                    (Ok(PlayEnd::Eof), None) => "the stream stopped".to_string(),
                    (Err(e), _) => e.to_string(),
                }
            }
        };
        failures += 1;
        if failures >= MAX_FAILURES {
            break Outcome::failed(format!(
                "{failures} connection attempts failed in a row; last: {problem}"
            ));
        }
        tracing::warn!(%url, attempt = failures, retry_in_ms = backoff.as_millis() as u64,
            problem = %problem, "relay interrupted; reconnecting");
        if sleep_unless_stopped(&ctx, backoff) {
            break Outcome::new(ctx.control.reason().unwrap_or(EndReason::Stopped));
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    };
    paced.finish(&mut ctx);
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_urls_are_checked() {
        assert!(parse_url("http://127.0.0.1:8000/vov1.mp3").is_ok());
        assert!(parse_url(" https://radio.example/stream ").is_ok());
        for bad in [
            "",
            "ftp://x/y",
            "file:///etc/passwd",
            "127.0.0.1:8000/x",
            "http://",
        ] {
            assert!(parse_url(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn hints_come_from_the_content_type_then_the_path() {
        let u = Url::parse("http://h/live").unwrap();
        assert_eq!(hint_for(Some("audio/mpeg"), &u), Some("mp3"));
        assert_eq!(hint_for(Some("audio/aacp; charset=x"), &u), Some("aac"));
        assert_eq!(hint_for(Some("application/ogg"), &u), Some("ogg"));
        assert_eq!(hint_for(None, &u), None);
        let u = Url::parse("http://h/vov.mp3").unwrap();
        assert_eq!(hint_for(Some("application/octet-stream"), &u), Some("mp3"));
    }
}

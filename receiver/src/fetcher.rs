//! Downloads the programmes the schedule needs from the controller
//! (`GET {controller}/api/v1/programmes/{id}/audio` with the receiver's
//! bearer token) into the [`Cache`], soonest-needed first, streaming each
//! response into a temporary file whose size and SHA-256 are checked against
//! the schedule's [`ProgrammeRef`] before it is renamed into place. When the
//! controller is unreachable it retries with exponential backoff. Cached
//! files the schedule no longer mentions are deleted after a grace period.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use loa_protocol::{ProgrammeRef, ReceiverSchedule};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::cache::{Cache, CacheError};
use crate::controller_http::{ControllerTls, error_chain};

/// First wait after a failed round; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Even with nothing to do, the fetcher looks again this often (for the
/// clean-up, and for files deleted behind its back).
const RECHECK: Duration = Duration::from_secs(300);

/// Why one programme could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("controller unreachable or transfer broken: {0}")]
    Http(#[from] reqwest::Error),
    #[error("controller answered {status}: {body}")]
    Status {
        status: reqwest::StatusCode,
        body: String,
    },
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// The downloader and its state.
pub struct Fetcher {
    /// HTTP client with connect and read timeouts.
    http: reqwest::Client,
    /// Controller base URL without trailing slash, e.g. `http://10.0.0.1:8080`.
    base: String,
    /// This receiver's bearer token.
    token: String,
    /// Where files go.
    cache: Cache,
    /// How long a file no longer in the schedule is kept before deletion.
    grace: Duration,
    /// When each unreferenced cached file was first seen unreferenced.
    unreferenced_since: HashMap<String, Instant>,
    /// The receiver's time, if given (else the wall clock).
    clock: Option<crate::clock::Clock>,
}

impl Fetcher {
    /// A fetcher for the controller at `base` (`http://HOST:PORT`, or
    /// `https://` trusting the system's CAs).
    pub fn new(
        base: &str,
        token: &str,
        cache: Cache,
        grace: Duration,
    ) -> Result<Fetcher, FetchError> {
        Self::with_tls(base, token, cache, grace, &ControllerTls::default())
    }

    /// Like [`new`](Self::new), trusting `tls` for an `https://` controller
    /// (`--controller-ca`).
    pub fn with_tls(
        base: &str,
        token: &str,
        cache: Cache,
        grace: Duration,
        tls: &ControllerTls,
    ) -> Result<Fetcher, FetchError> {
        let http = tls.client(|b| {
            b.connect_timeout(Duration::from_secs(10))
                .read_timeout(Duration::from_secs(60))
        })?;
        Ok(Fetcher {
            http,
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            cache,
            grace,
            unreferenced_since: HashMap::new(),
            clock: None,
        })
    }

    /// Judges which events are still to come by the receiver's time
    /// ([`Clock::now_utc`](crate::clock::Clock::now_utc)) instead of the wall clock.
    pub fn with_clock(mut self, clock: crate::clock::Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Keeps the cache in step with the schedule until `shutdown`. Sends on
    /// `cached` after every file added or removed (for the status message).
    pub async fn run(
        mut self,
        mut schedule: watch::Receiver<Option<Arc<ReceiverSchedule>>>,
        cached: mpsc::UnboundedSender<()>,
        shutdown: CancellationToken,
    ) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let current = schedule.borrow_and_update().clone();
            let wait = match current {
                None => RECHECK,
                Some(s) => {
                    let failed = self.sync(&s, &cached, &shutdown).await;
                    self.clean_up(&s, &cached);
                    if failed == 0 {
                        backoff = FIRST_BACKOFF;
                        RECHECK
                    } else {
                        let wait = backoff;
                        tracing::warn!(failed, retry_in = ?wait, "some programmes could not be fetched; will retry");
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        wait
                    }
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = schedule.changed() => {
                    if changed.is_err() { return; }
                    backoff = FIRST_BACKOFF;
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Fetches every missing programme the schedule still needs, soonest
    /// first. Returns how many could not be fetched.
    pub async fn sync(
        &mut self,
        schedule: &ReceiverSchedule,
        cached: &mpsc::UnboundedSender<()>,
        shutdown: &CancellationToken,
    ) -> usize {
        let mut failed = 0;
        let now = self
            .clock
            .as_ref()
            .map_or_else(Utc::now, crate::clock::Clock::now_utc);
        for (id, programme) in needed_at(schedule, now) {
            if shutdown.is_cancelled() {
                break;
            }
            if self.cache.contains(&programme.sha256) {
                continue;
            }
            let started = Instant::now();
            match self.fetch(&id, &programme).await {
                Ok(()) => {
                    tracing::info!(programme = %id, bytes = programme.bytes, took = ?started.elapsed(), "programme cached");
                    let _ = cached.send(());
                }
                Err(FetchError::Cache(e @ CacheError::DiskFull { .. })) => {
                    tracing::error!(programme = %id, error = %e, "DISK FULL: programme not cached; will retry");
                    failed += 1;
                }
                Err(e) => {
                    tracing::warn!(programme = %id, error = %error_chain(&e), "could not fetch programme");
                    failed += 1;
                }
            }
        }
        failed
    }

    /// Downloads one programme into the cache.
    pub async fn fetch(&self, id: &str, programme: &ProgrammeRef) -> Result<(), FetchError> {
        let url = format!("{}/api/v1/programmes/{id}/audio", self.base);
        let response = self.http.get(&url).bearer_auth(&self.token).send().await?;
        let status = response.status();
        if !status.is_success() {
            let body: String = response
                .text()
                .await
                .unwrap_or_default()
                .chars()
                .take(300)
                .collect();
            return Err(FetchError::Status { status, body });
        }
        if let Some(len) = response.content_length()
            && len != programme.bytes
        {
            return Err(CacheError::WrongSize {
                expected: programme.bytes,
                actual: len,
            }
            .into());
        }
        let mut download = self.cache.begin(programme)?;
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            download.write(&chunk?)?;
        }
        tokio::task::spawn_blocking(move || download.commit())
            .await
            .map_err(|e| CacheError::Io {
                path: self.cache.dir().to_path_buf(),
                source: std::io::Error::other(e),
            })??;
        Ok(())
    }

    /// Deletes cached files the schedule has not mentioned for the grace period.
    fn clean_up(&mut self, schedule: &ReceiverSchedule, cached: &mpsc::UnboundedSender<()>) {
        let referenced: HashSet<String> = schedule
            .programmes
            .values()
            .map(|p| p.sha256.to_ascii_lowercase())
            .collect();
        let Ok(files) = self.cache.list() else { return };
        let now = Instant::now();
        self.unreferenced_since
            .retain(|sha, _| files.contains(sha) && !referenced.contains(sha));
        for sha in files.into_iter().filter(|s| !referenced.contains(s)) {
            let since = *self.unreferenced_since.entry(sha.clone()).or_insert(now);
            if now.duration_since(since) >= self.grace {
                match self.cache.remove(&sha) {
                    Ok(()) => {
                        tracing::info!(sha256 = %sha, "removed audio no longer scheduled");
                        self.unreferenced_since.remove(&sha);
                        let _ = cached.send(());
                    }
                    Err(e) => {
                        tracing::warn!(sha256 = %sha, error = %e, "could not remove unscheduled audio")
                    }
                }
            }
        }
    }
}

/// The programmes with events still to come (or under way), each once,
/// ordered by the start of their first such event.
pub fn needed(schedule: &ReceiverSchedule) -> Vec<(String, ProgrammeRef)> {
    needed_at(schedule, Utc::now())
}

/// [`needed`] as of `now`.
pub fn needed_at(schedule: &ReceiverSchedule, now: DateTime<Utc>) -> Vec<(String, ProgrammeRef)> {
    let mut first: BTreeMap<&str, chrono::DateTime<Utc>> = BTreeMap::new();
    for event in schedule.events.iter().filter(|e| e.natural_end() > now) {
        let at = first
            .entry(event.programme_id.as_str())
            .or_insert(event.starts_at);
        *at = (*at).min(event.starts_at);
    }
    let mut out: Vec<_> = first
        .into_iter()
        .filter_map(|(id, at)| {
            schedule
                .programmes
                .get(id)
                .map(|p| (at, id.to_string(), p.clone()))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    out.into_iter().map(|(_, id, p)| (id, p)).collect()
}

//! Live broadcasts: a source (the controller's microphone, a browser's
//! microphone over a WebSocket, an internet radio relay, a stored programme)
//! encoded into 20 ms Opus frames and published once per target group over
//! the live MQTT link, for receivers to play in sync (see
//! `loa_protocol::live`).
//!
//! ```text
//!  source thread ─▶ mono f32 ─▶ Resampler48 ─▶ Framer ─▶ Timeline/Pacer ─▶ LiveEncoder ─▶ Publisher
//!  (cpal callback,   (own rate)   (48 kHz)      (960)     (capture_us)       (Opus, FEC)    (1 publish per
//!   WebSocket, HTTP                                                                          zone/receiver
//!   stream, file)                                                                             topic, QoS 0)
//! ```
//!
//! [`LiveHub`] owns the broadcasts on air. Each runs on a thread of its own
//! (cpal streams are not `Send`, decoding and pacing block), with a
//! supervisor task that records its end in the `broadcasts` table
//! ([`records`]). Starting one validates the targets, prepares the source
//! and waits until it delivers (the microphone opened, the relay answered
//! and its audio was recognised, the programme opened) so that mistakes are
//! reported to the caller, not discovered later.
//!
//! Capture instants (`capture_us`, controller clock = system time):
//! - captured sources (microphone, browser) stamp each chunk with the
//!   instant of its first sample (cpal's capture timestamp mapped to the
//!   wall clock; for the browser, arrival time minus the chunk's length),
//!   and [`frames::Timeline`] turns these into instants exactly 20 ms apart,
//!   jumping forward after a stall and dropping a frame when the source
//!   runs ahead;
//! - stored and relayed sources are paced by [`frames::Pacer`]: frame `n`
//!   is stamped and published at `start + n × 20 ms`, never faster than
//!   real time; a stalled stream restarts the timeline at the current time.
//!
//! When a broadcast ends (stopped, source ended or failed, duration over,
//! client gone) its thread publishes an `End` frame three times.

pub mod clock;
pub mod decode;
pub mod frames;
mod input;
mod microphone;
pub mod ogg_opus;
mod paced;
pub mod records;
mod relay;
pub mod resample;
pub mod schedules;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use loa_protocol::Priority;
use loa_protocol::live::{receiver_live_topic, zone_live_topic};
use loa_schedules::Targets;
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;
use tokio::sync::{Notify, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::bus::Bus;
use crate::store::AudioStore;
use frames::{Publisher, Stats};
pub use input::{InputHandle, PcmChunk};

/// Default playout delay (`--live-delay-ms`).
pub const DEFAULT_PLAYOUT_DELAY_MS: u16 = 120;
/// Most broadcasts on air at once.
pub const MAX_ON_AIR: usize = 16;
/// Longest duration a broadcast may be given.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
/// Shortest duration a broadcast may be given.
pub const MIN_DURATION: Duration = Duration::from_secs(1);
/// How long `stop` waits for a broadcast's thread to send its `End` frames.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Live settings from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveConfig {
    /// Receivers play a frame this long after its capture (`--live-delay-ms`).
    pub playout_delay_ms: u16,
    /// The capture device for `microphone` broadcasts: `None` for cpal's
    /// default input, else a cpal device id or name (`--live-input cpal:NAME`).
    pub input_device: Option<String>,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            playout_delay_ms: DEFAULT_PLAYOUT_DELAY_MS,
            input_device: None,
        }
    }
}

/// Where a broadcast's audio comes from (JSON `{"type": ..., ...}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceSpec {
    /// The controller's capture device (`--live-input`).
    Microphone,
    /// An internet radio stream (HTTP/HTTPS: MP3, AAC, Ogg Vorbis/Opus, …).
    Relay {
        /// `http://` or `https://` URL of the stream.
        url: String,
    },
    /// A stored programme, played now.
    Programme {
        /// The programme's id.
        id: String,
    },
    /// A browser's microphone over `GET /api/v1/live/ws` (not accepted by
    /// `POST /broadcasts`).
    Browser,
}

impl SourceSpec {
    /// The `type` name.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceSpec::Microphone => "microphone",
            SourceSpec::Relay { .. } => "relay",
            SourceSpec::Programme { .. } => "programme",
            SourceSpec::Browser => "browser",
        }
    }
}

/// Why a broadcast ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// `DELETE /broadcasts/{id}`.
    Stopped,
    /// The programme or the relayed stream came to its end.
    SourceEnded,
    /// The source failed for good (relay unreachable after retries, device lost).
    SourceFailed,
    /// The browser closed its WebSocket.
    ClientClosed,
    /// The planned duration is over.
    DurationElapsed,
    /// The relay schedule that started it was deleted.
    ScheduleDeleted,
    /// The controller shut down.
    ControllerShutdown,
    /// Found on air when the controller started (it had stopped without ending it).
    ControllerRestart,
}

impl EndReason {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Stopped => "stopped",
            EndReason::SourceEnded => "source_ended",
            EndReason::SourceFailed => "source_failed",
            EndReason::ClientClosed => "client_closed",
            EndReason::DurationElapsed => "duration_elapsed",
            EndReason::ScheduleDeleted => "schedule_deleted",
            EndReason::ControllerShutdown => "controller_shutdown",
            EndReason::ControllerRestart => "controller_restart",
        }
    }
}

/// Frame counters of a broadcast on air.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StatsView {
    /// Audio frames published.
    pub frames_sent: u64,
    /// Frame publishes the live link could not queue (link down or full).
    pub frames_unsent: u64,
    /// Gaps in the timeline (source stalls, relay reconnections).
    pub gaps: u64,
    /// Frames dropped to keep a source that runs fast in time.
    pub frames_dropped: u64,
}

impl StatsView {
    fn of(stats: &Stats) -> Self {
        StatsView {
            frames_sent: stats.frames.load(Ordering::Relaxed),
            frames_unsent: stats.unsent.load(Ordering::Relaxed),
            gaps: stats.gaps.load(Ordering::Relaxed),
            frames_dropped: stats.dropped.load(Ordering::Relaxed),
        }
    }
}

/// A broadcast as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Broadcast {
    /// UUID, hyphenated (also in every frame).
    pub id: String,
    /// Where the audio comes from.
    pub source: SourceSpec,
    /// Zones and receivers it plays on.
    pub targets: Targets,
    /// `normal`, `priority` or `emergency`.
    pub priority: Priority,
    /// Whether it is on air now.
    pub on_air: bool,
    /// Receivers play each frame this long after its capture.
    pub playout_delay_ms: u16,
    /// Planned length, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// When it went on air.
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub ended_at: Option<DateTime<Utc>>,
    /// Why it ended ([`EndReason`] names).
    pub end_reason: Option<String>,
    /// What went wrong, for `source_failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_detail: Option<String>,
    /// Who started it: a username, or `schedule`.
    pub created_by: String,
    /// The relay schedule that started it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule_id: Option<String>,
    /// The schedule occurrence (`{schedule_id}@{unix ms}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub occurrence_id: Option<String>,
    /// Frame counters, while on air.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<StatsView>,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct StartRequest {
    /// The source.
    pub source: SourceSpec,
    /// Where to play it.
    pub targets: Targets,
    /// Its priority.
    pub priority: Priority,
    /// Ends by itself after this long.
    pub duration: Option<Duration>,
    /// Username, or `schedule`.
    pub created_by: String,
    /// The relay schedule occurrence that starts it: (schedule id, occurrence id).
    pub occurrence: Option<(String, String)>,
}

/// Why a broadcast could not be started, stopped or found.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("live broadcasting is not available (no MQTT link)")]
    Disabled,
    #[error("the controller is shutting down")]
    ShuttingDown,
    #[error("a broadcast needs at least one target zone or receiver")]
    NoTargets,
    #[error("{field} {id:?} is not a valid id")]
    InvalidId { field: &'static str, id: String },
    #[error("zone {0:?} does not exist")]
    UnknownZone(String),
    #[error("receiver {0:?} does not exist")]
    UnknownReceiver(String),
    #[error("programme {0:?} does not exist")]
    UnknownProgramme(String),
    #[error("the microphone is already on air in broadcast {0}")]
    MicrophoneBusy(String),
    #[error("{MAX_ON_AIR} broadcasts are already on air")]
    TooMany,
    #[error("duration must be between 1 s and 24 h")]
    InvalidDuration,
    #[error("invalid relay URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("relay stream {url} is unreachable: {reason}")]
    RelayUnreachable { url: String, reason: String },
    #[error("relay stream {url} answered HTTP {status}")]
    RelayHttp { url: String, status: u16 },
    #[error("relay stream {url} is not audio we can decode: {reason}")]
    RelayNotAudio { url: String, reason: String },
    #[error("the microphone cannot be opened: {0}")]
    MicrophoneUnavailable(String),
    #[error("browser broadcasts are started through the WebSocket /api/v1/live/ws")]
    BrowserNeedsWebSocket,
    #[error("invalid audio format: {0}")]
    InvalidAudioFormat(String),
    #[error("broadcast {0:?} not found")]
    NotFound(String),
    #[error("broadcast {0} has already ended")]
    AlreadyEnded(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{0}")]
    Internal(String),
}

/// Checks a relay URL (absolute `http://` or `https://` with a host)
/// without connecting to it.
pub fn relay_url_check(url: &str) -> Result<(), LiveError> {
    relay::parse_url(url).map(drop)
}

/// Stop request shared between the hub and a broadcast's thread.
#[derive(Debug, Default)]
pub struct Control {
    /// Set once a stop is requested.
    stopped: AtomicBool,
    /// Why (the first request wins).
    reason: Mutex<Option<EndReason>>,
    /// Cancels the broadcast's async parts (relay download, WebSocket).
    cancel: CancellationToken,
}

impl Control {
    /// Asks the broadcast to end for `reason` (the first reason given wins).
    pub fn stop(&self, reason: EndReason) {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        r.get_or_insert(reason);
        drop(r);
        self.stopped.store(true, Ordering::SeqCst);
        self.cancel.cancel();
    }

    /// Whether a stop was requested.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// The requested stop reason, if any.
    pub fn reason(&self) -> Option<EndReason> {
        *self.reason.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Cancelled when a stop is requested.
    pub fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }

    /// A token cancelled when a stop is requested (or when cancelled itself).
    pub fn child_token(&self) -> CancellationToken {
        self.cancel.child_token()
    }
}

/// How a broadcast's thread ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Why.
    pub reason: EndReason,
    /// What went wrong, if anything.
    pub detail: Option<String>,
}

impl Outcome {
    fn new(reason: EndReason) -> Self {
        Outcome {
            reason,
            detail: None,
        }
    }

    fn failed(detail: impl Into<String>) -> Self {
        Outcome {
            reason: EndReason::SourceFailed,
            detail: Some(detail.into()),
        }
    }
}

/// What a broadcast's thread gets.
pub(crate) struct Ctx {
    /// Encodes and publishes frames.
    pub publisher: Publisher,
    /// Stop requests.
    pub control: Arc<Control>,
    /// For the async parts of a source (HTTP).
    pub runtime: tokio::runtime::Handle,
}

/// Tells the starter whether the source delivers.
pub(crate) type Ready = oneshot::Sender<Result<(), LiveError>>;

/// A broadcast on air.
struct Running {
    /// What the API shows (without stats).
    info: Broadcast,
    /// Stop requests.
    control: Arc<Control>,
    /// Frame counters.
    stats: Arc<Stats>,
    /// Becomes `true` once the end is recorded.
    ended: watch::Receiver<bool>,
}

/// The hub's state.
struct Inner {
    /// Where broadcasts are recorded.
    db: SqlitePool,
    /// Programme audio.
    store: AudioStore,
    /// The live MQTT link.
    bus: Bus,
    /// Settings.
    config: LiveConfig,
    /// Broadcasts on air, by id.
    on_air: Mutex<HashMap<String, Running>>,
    /// Broadcasts being started (counted against [`MAX_ON_AIR`]).
    starting: Mutex<usize>,
    /// The microphone is taken (on air or being opened).
    microphone: AtomicBool,
    /// [`LiveHub::shutdown`] was called: nothing new starts.
    closing: AtomicBool,
    /// Wakes the relay schedule timer.
    schedules_changed: Notify,
    /// HTTP client for relays.
    http: reqwest::Client,
}

/// Handle to the live broadcasts; cheap to clone. A disabled hub (without
/// an MQTT link, as in API tests) refuses to start anything.
#[derive(Clone, Default)]
pub struct LiveHub {
    inner: Option<Arc<Inner>>,
}

impl LiveHub {
    /// A hub that refuses to broadcast.
    pub fn disabled() -> Self {
        LiveHub { inner: None }
    }

    /// A hub publishing on `bus` (a [`Bus::connect_live`] link). Marks the
    /// broadcasts a previous run left on air as ended, and starts the relay
    /// schedule timer, which stops when `shutdown` is cancelled.
    pub async fn start(
        db: SqlitePool,
        store: AudioStore,
        bus: Bus,
        config: LiveConfig,
        shutdown: CancellationToken,
    ) -> Result<LiveHub, LiveError> {
        let orphans = records::end_orphans(&db, Utc::now()).await?;
        if orphans > 0 {
            tracing::warn!(
                orphans,
                "broadcasts left on air by the previous run marked as ended"
            );
        }
        let http = reqwest::Client::builder()
            .connect_timeout(relay::CONNECT_TIMEOUT)
            .user_agent(concat!("loa-controller/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| LiveError::Internal(format!("HTTP client: {e}")))?;
        let hub = LiveHub {
            inner: Some(Arc::new(Inner {
                db,
                store,
                bus,
                config,
                on_air: Mutex::new(HashMap::new()),
                starting: Mutex::new(0),
                microphone: AtomicBool::new(false),
                closing: AtomicBool::new(false),
                schedules_changed: Notify::new(),
                http,
            })),
        };
        tokio::spawn(schedules::run(hub.clone(), shutdown));
        Ok(hub)
    }

    fn inner(&self) -> Result<&Arc<Inner>, LiveError> {
        self.inner.as_ref().ok_or(LiveError::Disabled)
    }

    /// The hub, if it may start broadcasts.
    fn inner_for_start(&self) -> Result<Arc<Inner>, LiveError> {
        let inner = self.inner()?;
        if inner.closing.load(Ordering::SeqCst) {
            return Err(LiveError::ShuttingDown);
        }
        Ok(inner.clone())
    }

    /// The database (for the relay schedule timer).
    pub(crate) fn db(&self) -> Option<&SqlitePool> {
        self.inner.as_ref().map(|i| &i.db)
    }

    /// The playout delay frames carry.
    pub fn playout_delay_ms(&self) -> u16 {
        self.inner
            .as_ref()
            .map_or(DEFAULT_PLAYOUT_DELAY_MS, |i| i.config.playout_delay_ms)
    }

    /// Starts a microphone, relay or programme broadcast and returns it once
    /// its source delivers.
    pub async fn start_broadcast(&self, request: StartRequest) -> Result<Broadcast, LiveError> {
        let inner = self.inner_for_start()?;
        if matches!(request.source, SourceSpec::Browser) {
            return Err(LiveError::BrowserNeedsWebSocket);
        }
        let prepared = inner.prepare(&request).await?;
        let slot = StartSlot::take(&inner)?;
        let mic = match request.source {
            SourceSpec::Microphone => Some(MicReservation::take(&inner)?),
            _ => None,
        };
        let (ready_tx, ready_rx) = oneshot::channel();
        let launched = inner.launch(&request, prepared, ready_tx)?;
        let wait = match request.source {
            SourceSpec::Relay { .. } => relay::START_TIMEOUT,
            _ => Duration::from_secs(10),
        };
        let ready = match tokio::time::timeout(wait, ready_rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(LiveError::Internal(
                "the broadcast thread ended at start".into(),
            )),
            Err(_) => Err(match &request.source {
                SourceSpec::Relay { url } => LiveError::RelayUnreachable {
                    url: url.clone(),
                    reason: format!("no audio within {} s", wait.as_secs()),
                },
                _ => LiveError::Internal("the source did not start in time".into()),
            }),
        };
        if let Err(e) = ready {
            launched.control.stop(EndReason::SourceFailed);
            return Err(e);
        }
        let holds_microphone = mic.is_some_and(MicReservation::keep);
        let on_air = inner.go_on_air(&request, launched, holds_microphone).await;
        drop(slot);
        on_air
    }

    /// Starts a browser broadcast fed by the returned handle.
    pub async fn start_input(
        &self,
        targets: Targets,
        priority: Priority,
        sample_rate: u32,
        created_by: String,
    ) -> Result<(Broadcast, InputHandle), LiveError> {
        let inner = self.inner_for_start()?;
        let request = StartRequest {
            source: SourceSpec::Browser,
            targets,
            priority,
            duration: None,
            created_by,
            occurrence: None,
        };
        let prepared = inner.prepare(&request).await?;
        let slot = StartSlot::take(&inner)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(input::QUEUE_CHUNKS);
        let (ready_tx, ready_rx) = oneshot::channel();
        let launched = inner.launch_with(
            &request,
            prepared,
            ready_tx,
            Launch::Browser { rx, sample_rate },
        )?;
        match ready_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(LiveError::Internal(
                    "the broadcast thread ended at start".into(),
                ));
            }
        }
        let control = launched.control.clone();
        let broadcast = inner.go_on_air(&request, launched, false).await?;
        drop(slot);
        let ended = inner
            .ended_watch(&broadcast.id)
            .unwrap_or_else(|| watch::channel(true).1);
        let handle = InputHandle::new(broadcast.id.clone(), tx, control, ended);
        Ok((broadcast, handle))
    }

    /// Checks that the targets are valid and exist.
    pub async fn check_targets(&self, targets: &Targets) -> Result<(), LiveError> {
        self.inner()?.resolve_targets(targets).await.map(drop)
    }

    /// Ends a broadcast on air and waits (a few seconds at most) until its
    /// `End` frames are out and its end is recorded.
    pub async fn stop(&self, id: &str, reason: EndReason) -> Result<Broadcast, LiveError> {
        let inner = self.inner()?;
        let found = {
            let on_air = inner.on_air.lock().unwrap_or_else(|e| e.into_inner());
            on_air.get(id).map(|r| (r.control.clone(), r.ended.clone()))
        };
        let Some((control, mut ended)) = found else {
            return match records::get(&inner.db, id).await? {
                Some(b) if !b.on_air => Err(LiveError::AlreadyEnded(id.to_string())),
                Some(_) => Err(LiveError::Internal(format!(
                    "broadcast {id} is recorded on air but not running"
                ))),
                None => Err(LiveError::NotFound(id.to_string())),
            };
        };
        control.stop(reason);
        if tokio::time::timeout(STOP_TIMEOUT, ended.wait_for(|e| *e))
            .await
            .is_err()
        {
            tracing::warn!(broadcast = id, "broadcast did not end in time");
        }
        self.get(id)
            .await?
            .ok_or_else(|| LiveError::NotFound(id.to_string()))
    }

    /// The broadcasts on air, oldest first.
    pub fn list_on_air(&self) -> Vec<Broadcast> {
        let Some(inner) = &self.inner else {
            return Vec::new();
        };
        let on_air = inner.on_air.lock().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<Broadcast> = on_air.values().map(Running::view).collect();
        list.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.id.cmp(&b.id)));
        list
    }

    /// The most recent broadcasts (on air or ended), newest first.
    pub async fn recent(&self, limit: i64) -> Result<Vec<Broadcast>, LiveError> {
        let Some(inner) = &self.inner else {
            return Ok(Vec::new());
        };
        let mut list = records::recent(&inner.db, limit).await?;
        for b in &mut list {
            if let Some(live) = inner.view_of(&b.id) {
                *b = live;
            }
        }
        Ok(list)
    }

    /// One broadcast, on air or ended.
    pub async fn get(&self, id: &str) -> Result<Option<Broadcast>, LiveError> {
        let inner = self.inner()?;
        if let Some(b) = inner.view_of(id) {
            return Ok(Some(b));
        }
        Ok(records::get(&inner.db, id).await?)
    }

    /// Ends every broadcast on air (controller shutdown) and waits for
    /// them; nothing new starts afterwards.
    pub async fn shutdown(&self) {
        let Some(inner) = &self.inner else { return };
        inner.closing.store(true, Ordering::SeqCst);
        let running: Vec<(Arc<Control>, watch::Receiver<bool>)> = {
            let on_air = inner.on_air.lock().unwrap_or_else(|e| e.into_inner());
            on_air
                .values()
                .map(|r| (r.control.clone(), r.ended.clone()))
                .collect()
        };
        for (control, _) in &running {
            control.stop(EndReason::ControllerShutdown);
        }
        for (_, mut ended) in running {
            let _ = tokio::time::timeout(STOP_TIMEOUT, ended.wait_for(|e| *e)).await;
        }
    }

    /// Relay schedules changed: the timer looks at them again.
    pub fn schedules_changed(&self) {
        if let Some(inner) = &self.inner {
            inner.schedules_changed.notify_one();
        }
    }

    /// A relay schedule was deleted: its broadcasts on air end.
    pub async fn schedule_deleted(&self, schedule_id: &str) {
        let Some(inner) = &self.inner else { return };
        let ids: Vec<String> = {
            let on_air = inner.on_air.lock().unwrap_or_else(|e| e.into_inner());
            on_air
                .values()
                .filter(|r| r.info.schedule_id.as_deref() == Some(schedule_id))
                .map(|r| r.info.id.clone())
                .collect()
        };
        for id in ids {
            if let Err(e) = self.stop(&id, EndReason::ScheduleDeleted).await {
                tracing::warn!(broadcast = %id, error = %e, "cannot stop the broadcast of a deleted schedule");
            }
        }
        self.schedules_changed();
    }

    /// Whether a broadcast of this schedule occurrence is on air.
    pub(crate) fn occurrence_on_air(&self, occurrence_id: &str) -> bool {
        let Some(inner) = &self.inner else {
            return false;
        };
        let on_air = inner.on_air.lock().unwrap_or_else(|e| e.into_inner());
        on_air
            .values()
            .any(|r| r.info.occurrence_id.as_deref() == Some(occurrence_id))
    }

    /// Waits for a relay schedule change notification.
    pub(crate) async fn schedules_notified(&self) {
        match &self.inner {
            Some(inner) => inner.schedules_changed.notified().await,
            None => std::future::pending().await,
        }
    }
}

impl Running {
    fn view(&self) -> Broadcast {
        let mut b = self.info.clone();
        b.stats = Some(StatsView::of(&self.stats));
        b
    }
}

/// A source ready to be launched (checked, resolved).
enum Prepared {
    /// Open the capture device on the thread.
    Microphone { device: Option<String> },
    /// Fetch this URL.
    Relay { url: reqwest::Url },
    /// Play this file.
    Programme { path: std::path::PathBuf },
    /// Fed by a WebSocket.
    Browser,
}

/// What the thread of a browser broadcast reads.
enum Launch {
    /// Sources the thread prepares itself.
    Own,
    /// PCM chunks from a WebSocket.
    Browser {
        rx: std::sync::mpsc::Receiver<PcmChunk>,
        sample_rate: u32,
    },
}

/// A broadcast whose thread runs.
struct Launched {
    /// The id.
    id: String,
    /// Stop requests.
    control: Arc<Control>,
    /// Frame counters.
    stats: Arc<Stats>,
    /// The thread's outcome.
    done: oneshot::Receiver<Outcome>,
    /// When it went on air.
    started_at: DateTime<Utc>,
    /// The targets, cleaned.
    targets: Targets,
}

/// Counts a broadcast being started against [`MAX_ON_AIR`] until dropped.
struct StartSlot(Arc<Inner>);

impl StartSlot {
    fn take(inner: &Arc<Inner>) -> Result<Self, LiveError> {
        let on_air = inner.on_air.lock().unwrap_or_else(|e| e.into_inner()).len();
        let mut starting = inner.starting.lock().unwrap_or_else(|e| e.into_inner());
        if on_air + *starting >= MAX_ON_AIR {
            return Err(LiveError::TooMany);
        }
        *starting += 1;
        Ok(StartSlot(inner.clone()))
    }
}

impl Drop for StartSlot {
    fn drop(&mut self) {
        let mut starting = self.0.starting.lock().unwrap_or_else(|e| e.into_inner());
        *starting = starting.saturating_sub(1);
    }
}

/// Holds the microphone while a broadcast starts; released on drop unless kept.
struct MicReservation(Option<Arc<Inner>>);

impl MicReservation {
    fn take(inner: &Arc<Inner>) -> Result<Self, LiveError> {
        if inner
            .microphone
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            let on_air = inner.on_air.lock().unwrap_or_else(|e| e.into_inner());
            let holder = on_air
                .values()
                .find(|r| r.info.source == SourceSpec::Microphone)
                .map_or_else(|| "(starting)".to_string(), |r| r.info.id.clone());
            return Err(LiveError::MicrophoneBusy(holder));
        }
        Ok(MicReservation(Some(inner.clone())))
    }

    /// Keeps the microphone taken; the supervisor releases it at the end.
    fn keep(mut self) -> bool {
        self.0 = None;
        true
    }
}

impl Drop for MicReservation {
    fn drop(&mut self) {
        if let Some(inner) = &self.0 {
            inner.microphone.store(false, Ordering::SeqCst);
        }
    }
}

impl Inner {
    /// Checks the request and resolves its source and topics.
    async fn prepare(
        &self,
        request: &StartRequest,
    ) -> Result<(Prepared, Targets, Vec<String>), LiveError> {
        if let Some(d) = request.duration
            && !(MIN_DURATION..=MAX_DURATION).contains(&d)
        {
            return Err(LiveError::InvalidDuration);
        }
        let (targets, topics) = self.resolve_targets(&request.targets).await?;
        let prepared = match &request.source {
            SourceSpec::Microphone => Prepared::Microphone {
                device: self.config.input_device.clone(),
            },
            SourceSpec::Relay { url } => Prepared::Relay {
                url: relay::parse_url(url)?,
            },
            SourceSpec::Programme { id } => {
                if !loa_protocol::is_valid_id(id) {
                    return Err(LiveError::InvalidId {
                        field: "source.id",
                        id: id.clone(),
                    });
                }
                let sha: Option<String> =
                    sqlx::query_scalar("SELECT sha256 FROM programmes WHERE id = $1")
                        .bind(id)
                        .fetch_optional(&self.db)
                        .await?;
                let sha = sha.ok_or_else(|| LiveError::UnknownProgramme(id.clone()))?;
                let path = self
                    .store
                    .path_for(&sha)
                    .map_err(|e| LiveError::Internal(e.to_string()))?;
                Prepared::Programme { path }
            }
            SourceSpec::Browser => Prepared::Browser,
        };
        Ok((prepared, targets, topics))
    }

    /// Trims and deduplicates the targets, checks they exist, and returns
    /// them with the topics to publish on: one per zone, plus one per
    /// receiver not already reached through a targeted zone.
    async fn resolve_targets(
        &self,
        targets: &Targets,
    ) -> Result<(Targets, Vec<String>), LiveError> {
        let clean = |ids: &[String], field: &'static str| -> Result<Vec<String>, LiveError> {
            let mut out: Vec<String> = Vec::new();
            for id in ids {
                let id = id.trim();
                if !loa_protocol::is_valid_id(id) {
                    return Err(LiveError::InvalidId {
                        field,
                        id: id.to_string(),
                    });
                }
                if !out.iter().any(|seen| seen == id) {
                    out.push(id.to_string());
                }
            }
            Ok(out)
        };
        let zones = clean(&targets.zones, "targets.zones")?;
        let receivers = clean(&targets.receivers, "targets.receivers")?;
        if zones.is_empty() && receivers.is_empty() {
            return Err(LiveError::NoTargets);
        }
        let mut topics = Vec::new();
        for zone in &zones {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM zones WHERE id = $1")
                .bind(zone)
                .fetch_one(&self.db)
                .await?;
            if n == 0 {
                return Err(LiveError::UnknownZone(zone.clone()));
            }
            topics.push(zone_live_topic(zone));
        }
        for receiver in &receivers {
            let zone: Option<String> =
                sqlx::query_scalar("SELECT zone_id FROM receivers WHERE id = $1")
                    .bind(receiver)
                    .fetch_optional(&self.db)
                    .await?;
            let zone = zone.ok_or_else(|| LiveError::UnknownReceiver(receiver.clone()))?;
            if !zones.contains(&zone) {
                topics.push(receiver_live_topic(receiver));
            }
        }
        Ok((Targets { zones, receivers }, topics))
    }

    fn launch(
        self: &Arc<Self>,
        request: &StartRequest,
        prepared: (Prepared, Targets, Vec<String>),
        ready: Ready,
    ) -> Result<Launched, LiveError> {
        self.launch_with(request, prepared, ready, Launch::Own)
    }

    /// Spawns the broadcast's thread.
    fn launch_with(
        self: &Arc<Self>,
        request: &StartRequest,
        (prepared, targets, topics): (Prepared, Targets, Vec<String>),
        ready: Ready,
        launch: Launch,
    ) -> Result<Launched, LiveError> {
        let uuid = uuid::Uuid::new_v4();
        let id = uuid.hyphenated().to_string();
        let control = Arc::new(Control::default());
        let stats = Arc::new(Stats::default());
        let publisher = Publisher::new(
            self.bus.clone(),
            topics,
            *uuid.as_bytes(),
            request.priority,
            self.config.playout_delay_ms,
            stats.clone(),
        )
        .map_err(LiveError::Internal)?;
        let ctx = Ctx {
            publisher,
            control: control.clone(),
            runtime: tokio::runtime::Handle::current(),
        };
        let (done_tx, done) = oneshot::channel();
        let http = self.http.clone();
        let name = format!("loa-live-{}", &id[..8]);
        let started_at = Utc::now();
        std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let outcome = match (prepared, launch) {
                    (_, Launch::Browser { rx, sample_rate }) => {
                        input::run_browser(ctx, rx, sample_rate, ready)
                    }
                    (Prepared::Microphone { device }, Launch::Own) => {
                        microphone::run(ctx, device, ready)
                    }
                    (Prepared::Relay { url }, Launch::Own) => relay::run(ctx, http, url, ready),
                    (Prepared::Programme { path }, Launch::Own) => {
                        paced::run_file(ctx, &path, ready)
                    }
                    (Prepared::Browser, Launch::Own) => {
                        let _ = ready.send(Err(LiveError::BrowserNeedsWebSocket));
                        Outcome::failed("browser source without a WebSocket")
                    }
                };
                let _ = done_tx.send(outcome);
            })
            .map_err(|e| LiveError::Internal(format!("cannot start a broadcast thread: {e}")))?;
        Ok(Launched {
            id,
            control,
            stats,
            done,
            started_at,
            targets,
        })
    }

    /// Records the broadcast, registers it and spawns its supervisor.
    async fn go_on_air(
        self: &Arc<Self>,
        request: &StartRequest,
        launched: Launched,
        holds_microphone: bool,
    ) -> Result<Broadcast, LiveError> {
        let info = Broadcast {
            id: launched.id.clone(),
            source: request.source.clone(),
            targets: launched.targets.clone(),
            priority: request.priority,
            on_air: true,
            playout_delay_ms: self.config.playout_delay_ms,
            duration_ms: request.duration.map(|d| d.as_millis() as u64),
            started_at: launched.started_at,
            ended_at: None,
            end_reason: None,
            end_detail: None,
            created_by: request.created_by.clone(),
            schedule_id: request.occurrence.as_ref().map(|(s, _)| s.clone()),
            occurrence_id: request.occurrence.as_ref().map(|(_, o)| o.clone()),
            stats: None,
        };
        if let Err(e) = records::insert(&self.db, &info).await {
            launched.control.stop(EndReason::SourceFailed);
            if holds_microphone {
                self.microphone.store(false, Ordering::SeqCst);
            }
            return Err(e.into());
        }
        let (ended_tx, ended) = watch::channel(false);
        {
            let mut on_air = self.on_air.lock().unwrap_or_else(|e| e.into_inner());
            on_air.insert(
                info.id.clone(),
                Running {
                    info: info.clone(),
                    control: launched.control.clone(),
                    stats: launched.stats.clone(),
                    ended,
                },
            );
        }
        tracing::info!(broadcast = %info.id, source = info.source.kind(), priority = info.priority.as_str(),
            zones = ?info.targets.zones, receivers = ?info.targets.receivers, by = %info.created_by,
            "broadcast on air");
        let inner = self.clone();
        let duration = request.duration;
        let control = launched.control.clone();
        let id = info.id.clone();
        let done = launched.done;
        tokio::spawn(async move {
            let outcome = supervise(done, &control, duration).await;
            let reason = control.reason().unwrap_or(outcome.reason);
            let detail = if reason == outcome.reason {
                outcome.detail
            } else {
                None
            };
            if let Err(e) =
                records::end(&inner.db, &id, Utc::now(), reason, detail.as_deref()).await
            {
                tracing::error!(broadcast = %id, error = %e, "cannot record the end of a broadcast");
            }
            inner
                .on_air
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            if holds_microphone {
                inner.microphone.store(false, Ordering::SeqCst);
            }
            match &detail {
                Some(detail) => {
                    tracing::warn!(broadcast = %id, reason = reason.as_str(), %detail, "broadcast ended")
                }
                None => {
                    tracing::info!(broadcast = %id, reason = reason.as_str(), "broadcast ended")
                }
            }
            let _ = ended_tx.send(true);
        });
        Ok(self.view_of(&info.id).unwrap_or(info))
    }

    fn view_of(&self, id: &str) -> Option<Broadcast> {
        let on_air = self.on_air.lock().unwrap_or_else(|e| e.into_inner());
        on_air.get(id).map(Running::view)
    }

    fn ended_watch(&self, id: &str) -> Option<watch::Receiver<bool>> {
        let on_air = self.on_air.lock().unwrap_or_else(|e| e.into_inner());
        on_air.get(id).map(|r| r.ended.clone())
    }
}

/// Waits for the thread to end, stopping it when its duration is over.
async fn supervise(
    mut done: oneshot::Receiver<Outcome>,
    control: &Control,
    duration: Option<Duration>,
) -> Outcome {
    let finished = |r: Result<Outcome, oneshot::error::RecvError>| {
        r.unwrap_or_else(|_| Outcome::failed("the broadcast thread stopped unexpectedly"))
    };
    if let Some(duration) = duration {
        tokio::select! {
            r = &mut done => return finished(r),
            () = tokio::time::sleep(duration) => control.stop(EndReason::DurationElapsed),
        }
    }
    finished(done.await)
}

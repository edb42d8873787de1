//! Live broadcasts on the receiver: frames from the link, one broadcast at a
//! time, played in the player thread so that every receiver hears each
//! sample at the same instant.
//!
//! - [`LiveFeed`] (held by the link) hands decoded [`LiveFrame`]s to the
//!   player thread over its command channel. It never blocks: at most
//!   [`QUEUE_LIMIT`] frames wait there, beyond that new frames are dropped.
//! - [`LiveState`] (in the player thread) tracks the broadcast being
//!   followed: its jitter buffer ([`jitter`]), Opus decoder ([`decoder`])
//!   and playout-time correction ([`drift`]). A frame of another broadcast
//!   replaces it only with a higher priority (equal priority: the one on air
//!   continues). An end frame, or no frame for [`TIMEOUT_US`], ends it.
//! - [`session`] plays it: see that module for playout, pre-emption of
//!   scheduled plays and resumption.

pub mod decoder;
pub mod drift;
pub mod jitter;
pub(crate) mod session;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::time::Instant;

use chrono::{DateTime, Utc};
use loa_protocol::Priority;
use loa_protocol::live::{FrameKind, LiveFrame};

use crate::player::Command;

use self::decoder::LiveDecoder;
use self::drift::Corrector;
use self::jitter::{Buffered, Counters, Insert, Playout};

/// Frames waiting in the player's command channel at most (2 s).
pub const QUEUE_LIMIT: usize = 100;
/// A broadcast with no frame for this long (µs) is over.
pub const TIMEOUT_US: i64 = 1_000_000;
/// Broadcasts ended by their end frame that are remembered, so late frames
/// of theirs do not start them again.
const ENDED_KEPT: usize = 16;

/// A frame as received, with its arrival time on the local clock.
#[derive(Debug)]
pub struct LiveInput {
    pub frame: LiveFrame,
    pub arrived_us: i64,
}

/// Hands live frames to the player thread; cheap to clone, never blocks.
#[derive(Clone)]
pub struct LiveFeed {
    commands: Sender<Command>,
    queued: Arc<AtomicUsize>,
}

impl LiveFeed {
    pub(crate) fn new(commands: Sender<Command>, queued: Arc<AtomicUsize>) -> LiveFeed {
        LiveFeed { commands, queued }
    }

    /// Queues a frame received at local time `arrived_us` (see
    /// [`local_now_us`](crate::clock::local_now_us)). False if it was
    /// dropped: the queue is full or the player is gone.
    pub fn offer(&self, frame: LiveFrame, arrived_us: i64) -> bool {
        if self.queued.fetch_add(1, Ordering::SeqCst) >= QUEUE_LIMIT {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        let input = Box::new(LiveInput { frame, arrived_us });
        if self.commands.send(Command::Live(input)).is_err() {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        true
    }
}

/// Why a broadcast stopped being followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveEnd {
    /// Its end frame was reached.
    EndFrame,
    /// No frame for [`TIMEOUT_US`].
    Timeout,
    /// A higher-priority broadcast took over.
    Superseded,
    /// The audio output failed.
    OutputFailed,
    /// The receiver is shutting down.
    Shutdown,
}

/// What happened during one broadcast, for the log and tests.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveSummary {
    /// The broadcast's UUID, hyphenated.
    pub broadcast_id: String,
    pub priority: Priority,
    pub end: LiveEnd,
    /// Frame counters of the jitter buffer.
    pub frames: Counters,
    /// Frames (played or concealed) dropped because they were already past
    /// their playout instant when their turn came.
    pub late_at_write: u64,
    /// Packets libopus could not decode (concealed).
    pub corrupt: u64,
    /// Single samples dropped / inserted to stay on time, and re-anchorings.
    pub samples_dropped: u64,
    pub samples_inserted: u64,
    pub reanchors: u64,
    /// Largest playout error measured (µs, absolute) once playout was under
    /// way, before correction, excluding re-anchorings.
    pub max_error_us: i64,
    /// When its first and last samples were heard (none if never on air).
    pub heard_from: Option<DateTime<Utc>>,
    pub heard_to: Option<DateTime<Utc>>,
}

/// The broadcast being followed.
pub(crate) struct Session {
    pub(crate) id: [u8; 16],
    pub(crate) uuid: String,
    pub(crate) priority: Priority,
    pub(crate) playout: Playout,
    pub(crate) decoder: LiveDecoder,
    pub(crate) corrector: Corrector,
    /// Local time of the last frame received.
    pub(crate) last_arrival_us: i64,
    /// Arrival (local) and capture (controller) time of the first frame, to
    /// notice an unusable clock offset.
    pub(crate) first_arrival_us: i64,
    pub(crate) first_capture_us: i64,
    /// The first frame's playout delay, µs.
    pub(crate) delay_us: i64,
    /// The offset implied by the first frame's arrival, used instead of the
    /// clock's while that one is unusable (see `session`).
    pub(crate) fallback_offset_us: Option<i64>,
    /// Whether the clock was checked against the first frame.
    pub(crate) clock_checked: bool,
    pub(crate) late_at_write: u64,
    pub(crate) max_error_us: i64,
    pub(crate) heard_from_us: Option<i64>,
    pub(crate) heard_to_us: Option<i64>,
}

impl Session {
    fn new(frame: &LiveFrame, arrived_us: i64) -> Result<Session, opus::Error> {
        Ok(Session {
            id: frame.broadcast_id,
            uuid: uuid_string(&frame.broadcast_id),
            priority: frame.priority,
            playout: Playout::new(),
            decoder: LiveDecoder::new()?,
            corrector: Corrector::new(),
            last_arrival_us: arrived_us,
            first_arrival_us: arrived_us,
            first_capture_us: frame.capture_us,
            delay_us: i64::from(frame.playout_delay_ms) * 1000,
            fallback_offset_us: None,
            clock_checked: false,
            late_at_write: 0,
            max_error_us: 0,
            heard_from_us: None,
            heard_to_us: None,
        })
    }

    /// The summary of this session, ended for `end`.
    pub(crate) fn summary(&self, end: LiveEnd) -> LiveSummary {
        LiveSummary {
            broadcast_id: self.uuid.clone(),
            priority: self.priority,
            end,
            frames: self.playout.counters,
            late_at_write: self.late_at_write,
            corrupt: self.decoder.corrupt,
            samples_dropped: self.corrector.dropped,
            samples_inserted: self.corrector.inserted,
            reanchors: self.corrector.reanchors,
            max_error_us: self.max_error_us,
            heard_from: self.heard_from_us.map(crate::clock::utc_of_local),
            heard_to: self.heard_to_us.map(crate::clock::utc_of_local),
        }
    }
}

/// The live side of the player thread's state.
pub(crate) struct LiveState {
    pub(crate) session: Option<Session>,
    /// Broadcasts ended by their end frame, newest last.
    ended: VecDeque<[u8; 16]>,
    /// Frames waiting in the command channel (shared with [`LiveFeed`]).
    pub(crate) queued: Arc<AtomicUsize>,
    /// Frames of other broadcasts refused since the last log line.
    refused: u64,
    refused_logged: Option<Instant>,
}

impl LiveState {
    pub(crate) fn new(queued: Arc<AtomicUsize>) -> LiveState {
        LiveState {
            session: None,
            ended: VecDeque::new(),
            queued,
            refused: 0,
            refused_logged: None,
        }
    }

    /// Takes a received frame. Returns the summary of a broadcast it ended
    /// (superseded by a higher-priority one).
    pub(crate) fn accept(&mut self, frame: LiveFrame, arrived_us: i64) -> Option<LiveSummary> {
        let mut finished = None;
        if self.ended.contains(&frame.broadcast_id) {
            return None;
        }
        if let Some(s) = &self.session
            && s.id != frame.broadcast_id
        {
            if frame.priority > s.priority && frame.kind == FrameKind::Audio {
                tracing::info!(
                    old = %s.uuid,
                    new = %uuid_string(&frame.broadcast_id),
                    priority = ?frame.priority,
                    "a higher-priority live broadcast takes over"
                );
                finished = self.finish(LiveEnd::Superseded);
            } else {
                self.refused += 1;
                if self
                    .refused_logged
                    .is_none_or(|t| t.elapsed().as_secs() >= 10)
                {
                    tracing::info!(
                        on_air = %s.uuid,
                        refused = %uuid_string(&frame.broadcast_id),
                        frames = self.refused,
                        "frames of a broadcast of equal or lower priority ignored while another is followed"
                    );
                    self.refused = 0;
                    self.refused_logged = Some(Instant::now());
                }
                return None;
            }
        }
        if self.session.is_none() {
            if frame.kind == FrameKind::End {
                self.remember_ended(frame.broadcast_id);
                return finished;
            }
            match Session::new(&frame, arrived_us) {
                Ok(s) => {
                    tracing::info!(broadcast = %s.uuid, priority = ?s.priority, seq = frame.seq, "live broadcast received");
                    self.session = Some(s);
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot create an Opus decoder; live frame dropped");
                    return finished;
                }
            }
        }
        let s = self.session.as_mut().expect("just ensured");
        s.last_arrival_us = s.last_arrival_us.max(arrived_us);
        match frame.kind {
            FrameKind::End => s.playout.set_end(frame.seq),
            FrameKind::Audio => {
                s.priority = frame.priority;
                let buffered = Buffered {
                    seq: frame.seq,
                    playout_us: frame.playout_us(),
                    opus: frame.opus,
                };
                if s.playout.insert(buffered) == Insert::Late {
                    tracing::debug!(
                        seq = frame.seq,
                        "live frame arrived after its turn; dropped"
                    );
                }
            }
        }
        finished
    }

    /// Ends the session (if any) and returns its summary.
    pub(crate) fn finish(&mut self, end: LiveEnd) -> Option<LiveSummary> {
        let s = self.session.take()?;
        if s.playout.end_received() {
            self.remember_ended(s.id);
        }
        let summary = s.summary(end);
        tracing::info!(
            broadcast = %summary.broadcast_id,
            end = ?summary.end,
            played = summary.frames.played,
            fec = summary.frames.fec,
            plc = summary.frames.plc,
            skipped = summary.frames.skipped,
            late = summary.frames.late + summary.late_at_write,
            discarded = summary.frames.discarded,
            samples_dropped = summary.samples_dropped,
            samples_inserted = summary.samples_inserted,
            reanchors = summary.reanchors,
            max_error_us = summary.max_error_us,
            "live broadcast ended"
        );
        Some(summary)
    }

    fn remember_ended(&mut self, id: [u8; 16]) {
        if !self.ended.contains(&id) {
            self.ended.push_back(id);
            while self.ended.len() > ENDED_KEPT {
                self.ended.pop_front();
            }
        }
    }

    /// Housekeeping while the broadcast is not on air (waiting, or held off
    /// by a higher-priority play): drops frames already past due (on the
    /// controller clock `now_ctrl_us`) and ends the session after its end
    /// frame or a silence of [`TIMEOUT_US`]. Returns its summary if it ended.
    pub(crate) fn tidy(
        &mut self,
        now_local_us: i64,
        now_ctrl_us: i64,
        write_ahead_us: i64,
    ) -> Option<LiveSummary> {
        let s = self.session.as_mut()?;
        if now_local_us - s.last_arrival_us > TIMEOUT_US {
            return self.finish(LiveEnd::Timeout);
        }
        // Keep only what can still be played; playout picks up from there.
        s.playout.restart(now_ctrl_us, write_ahead_us);
        if s.playout.end_received() && s.playout.is_empty() {
            return self.finish(LiveEnd::EndFrame);
        }
        None
    }

    /// The priority of the broadcast followed, if it has audio to play.
    pub(crate) fn wants_air(&self) -> Option<Priority> {
        let s = self.session.as_ref()?;
        (!s.playout.is_empty()).then_some(s.priority)
    }
}

/// A UUID's bytes, hyphenated (8-4-4-4-12 lower-case hex).
pub fn uuid_string(bytes: &[u8; 16]) -> String {
    let hex = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(id: u8, seq: u32, priority: Priority, kind: FrameKind) -> LiveFrame {
        LiveFrame {
            kind,
            priority,
            broadcast_id: [id; 16],
            seq,
            capture_us: 1_000_000 + i64::from(seq) * 20_000,
            playout_delay_ms: 120,
            opus: if kind == FrameKind::Audio {
                vec![0xf8, 0xff, 0xfe]
            } else {
                Vec::new()
            },
        }
    }

    fn state() -> LiveState {
        LiveState::new(Arc::new(AtomicUsize::new(0)))
    }

    #[test]
    fn uuids_are_hyphenated() {
        let mut b = [0u8; 16];
        b[0] = 0x12;
        b[15] = 0xab;
        assert_eq!(uuid_string(&b), "12000000-0000-0000-0000-0000000000ab");
    }

    #[test]
    fn higher_priority_takes_over_equal_priority_waits() {
        let mut live = state();
        assert!(
            live.accept(frame(1, 0, Priority::Normal, FrameKind::Audio), 0)
                .is_none()
        );
        assert_eq!(live.wants_air(), Some(Priority::Normal));
        // Equal priority: the one followed continues.
        assert!(
            live.accept(frame(2, 0, Priority::Normal, FrameKind::Audio), 0)
                .is_none()
        );
        assert_eq!(live.session.as_ref().unwrap().id, [1; 16]);
        // Higher priority takes over.
        let ended = live
            .accept(frame(3, 5, Priority::Emergency, FrameKind::Audio), 0)
            .expect("the first broadcast ends");
        assert_eq!(ended.end, LiveEnd::Superseded);
        assert_eq!(ended.broadcast_id, uuid_string(&[1; 16]));
        assert_eq!(live.wants_air(), Some(Priority::Emergency));
        // A lower one cannot.
        assert!(
            live.accept(frame(1, 1, Priority::Normal, FrameKind::Audio), 0)
                .is_none()
        );
        assert_eq!(live.session.as_ref().unwrap().id, [3; 16]);
    }

    #[test]
    fn end_frames_and_silence_end_a_broadcast() {
        let mut live = state();
        live.accept(frame(1, 0, Priority::Priority, FrameKind::Audio), 0);
        live.accept(frame(1, 1, Priority::Priority, FrameKind::End), 10);
        // Its audio is still due: not over yet.
        assert!(live.tidy(20, 0, 40_000).is_none());
        // Once past due, it is.
        let s = live.tidy(30, 10_000_000, 40_000).expect("ended");
        assert_eq!(s.end, LiveEnd::EndFrame);
        // Stray frames of an ended broadcast do not start it again.
        live.accept(frame(1, 0, Priority::Priority, FrameKind::Audio), 40);
        assert!(live.session.is_none());

        live.accept(frame(2, 0, Priority::Normal, FrameKind::Audio), 100);
        assert!(live.tidy(100 + TIMEOUT_US, 0, 40_000).is_none());
        let s = live.tidy(101 + TIMEOUT_US, 0, 40_000).expect("timed out");
        assert_eq!(s.end, LiveEnd::Timeout);
        // A broadcast that only timed out may come back.
        live.accept(
            frame(2, 60, Priority::Normal, FrameKind::Audio),
            2 * TIMEOUT_US,
        );
        assert!(live.session.is_some());
    }
}

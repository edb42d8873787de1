//! The play ledger, `DIR/played.json`: which events this receiver has
//! already played (or reported as missed), so a re-sent schedule or a
//! restart never plays the same occurrence twice, plus the play in progress,
//! so a play cut short by a power cut or a kill is still reported (as
//! `failed`) after the restart instead of vanishing.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, Utc};
use loa_protocol::{PlayOutcome, PlayReport};
use serde::{Deserialize, Serialize};

use crate::fsutil;

/// File name of the ledger inside the cache directory.
const FILE_NAME: &str = "played.json";

/// How long an entry outlives its event once the event left the schedule.
const KEEP_AFTER_END: Duration = Duration::days(2);

/// Why the ledger could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("play ledger {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the file holds.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct LedgerState {
    /// Events already dealt with (played, cut, missed or failed), each with
    /// the instant it would have ended, which drives pruning.
    done: BTreeMap<String, DateTime<Utc>>,
    /// The report, without its end, of the play under way; `None` when idle.
    in_progress: Option<PlayReport>,
}

/// The ledger and its file.
#[derive(Debug)]
pub struct Ledger {
    /// `DIR/played.json`.
    path: PathBuf,
    /// The current contents, always equal to what is on disk.
    state: LedgerState,
}

impl Ledger {
    /// Opens the ledger in `dir`. An unreadable file is moved aside (and
    /// logged); the receiver then relies on the event ids in its report
    /// queue and the controller's idempotent storage.
    pub fn open(dir: &Path) -> Result<Ledger, LedgerError> {
        let path = dir.join(FILE_NAME);
        let state = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(state) => state,
                Err(e) => {
                    let aside = dir.join(format!("{FILE_NAME}.rejected"));
                    tracing::error!(file = %path.display(), error = %e, "play ledger unreadable; moved aside");
                    std::fs::rename(&path, &aside).map_err(|source| LedgerError::Io {
                        path: path.clone(),
                        source,
                    })?;
                    LedgerState::default()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => LedgerState::default(),
            Err(source) => return Err(LedgerError::Io { path, source }),
        };
        Ok(Ledger { path, state })
    }

    /// Ids of every event already dealt with (including the one in progress).
    pub fn done_ids(&self) -> HashSet<String> {
        self.state.done.keys().cloned().collect()
    }

    /// Whether this event was already dealt with.
    pub fn contains(&self, event_id: &str) -> bool {
        self.state.done.contains_key(event_id)
    }

    /// Records that a play has started; `report` is its report so far.
    pub fn mark_started(
        &mut self,
        report: &PlayReport,
        natural_end: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        self.state.done.insert(report.event_id.clone(), natural_end);
        self.state.in_progress = Some(report.clone());
        self.save()
    }

    /// Records that an event is dealt with and no play is under way.
    pub fn mark_finished(
        &mut self,
        event_id: &str,
        natural_end: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        self.state.done.insert(event_id.to_string(), natural_end);
        if self
            .state
            .in_progress
            .as_ref()
            .is_some_and(|r| r.event_id == event_id)
        {
            self.state.in_progress = None;
        }
        self.save()
    }

    /// Takes back a play that was under way when the receiver stopped and
    /// whose natural end is still more than `margin` after `now`: it is
    /// forgotten (neither in progress nor done), so the player joins it
    /// again where its timeline is, as for any late start, and reports it
    /// once (report ids derive from the event). Returns the event id.
    pub fn resume_interrupted_play(
        &mut self,
        now: DateTime<Utc>,
        margin: chrono::Duration,
    ) -> Result<Option<String>, LedgerError> {
        let Some(report) = self.state.in_progress.as_ref() else {
            return Ok(None);
        };
        let event_id = report.event_id.clone();
        let resumable = self
            .state
            .done
            .get(&event_id)
            .is_some_and(|end| *end > now + margin);
        if !resumable {
            return Ok(None);
        }
        self.state.done.remove(&event_id);
        self.state.in_progress = None;
        self.save()?;
        Ok(Some(event_id))
    }

    /// The report of a play that was under way when the receiver stopped,
    /// turned into a `failed` report. Call [`mark_finished`](Self::mark_finished)
    /// once it is queued.
    pub fn interrupted_play(&self) -> Option<PlayReport> {
        self.state.in_progress.clone().map(|mut r| {
            r.outcome = PlayOutcome::Failed;
            r.ended_at = None;
            r.detail =
                Some("the receiver stopped during the play (power cut, crash or restart)".into());
            r
        })
    }

    /// Forgets events that ended long ago and are no longer in the schedule.
    pub fn prune(
        &mut self,
        scheduled: &HashSet<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        let before = self.state.done.len();
        self.state
            .done
            .retain(|id, end| scheduled.contains(id.as_str()) || *end + KEEP_AFTER_END > now);
        if self.state.done.len() != before {
            self.save()
        } else {
            Ok(())
        }
    }

    fn save(&self) -> Result<(), LedgerError> {
        let bytes = serde_json::to_vec(&self.state).expect("ledger serialises");
        fsutil::write_atomic(&self.path, &bytes).map_err(|source| LedgerError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

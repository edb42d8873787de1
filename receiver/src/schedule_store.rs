//! The receiver's copy of its schedule, kept on disk as `DIR/schedule.json`
//! so plays happen on time even when the controller or the network is down
//! at startup. Only a schedule for this receiver with a higher version than
//! the one kept replaces it; anything else is refused with a reason, and the
//! kept schedule stays in force.

use std::path::{Path, PathBuf};

use loa_protocol::{ReceiverSchedule, is_valid_id};

use crate::cache::is_sha256_hex;
use crate::fsutil;

/// File name of the kept schedule inside the cache directory.
const FILE_NAME: &str = "schedule.json";

/// Why the store could not read or write its file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("schedule file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Why an offered schedule was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("schedule is for receiver {0:?}, not this one")]
    WrongReceiver(String),
    #[error("schedule version {offered} is not newer than the kept version {kept}")]
    NotNewer { offered: u64, kept: u64 },
    #[error("invalid schedule: {0}")]
    Invalid(String),
}

/// The latest accepted schedule and the file that keeps it.
#[derive(Debug)]
pub struct ScheduleStore {
    /// `DIR/schedule.json`.
    path: PathBuf,
    /// This receiver's id; schedules for any other id are refused.
    receiver_id: String,
    /// The schedule in force, if one was ever accepted.
    current: Option<ReceiverSchedule>,
}

impl ScheduleStore {
    /// Opens the store in `dir`, loading the kept schedule if there is a
    /// valid one. An unreadable or foreign file is moved aside (to
    /// `schedule.json.rejected`) and logged, not fatal: the controller's
    /// retained message brings the schedule back.
    pub fn open(dir: &Path, receiver_id: &str) -> Result<ScheduleStore, StoreError> {
        let path = dir.join(FILE_NAME);
        let mut store = ScheduleStore {
            path: path.clone(),
            receiver_id: receiver_id.to_string(),
            current: None,
        };
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(store),
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        let loaded = serde_json::from_slice::<ReceiverSchedule>(&bytes)
            .map_err(|e| e.to_string())
            .and_then(|s| store.check(&s).map(|()| s).map_err(|r| r.to_string()));
        match loaded {
            Ok(schedule) => {
                tracing::info!(
                    version = schedule.version,
                    events = schedule.events.len(),
                    "loaded kept schedule"
                );
                store.current = Some(schedule);
            }
            Err(why) => {
                let aside = dir.join(format!("{FILE_NAME}.rejected"));
                tracing::error!(file = %path.display(), %why, aside = %aside.display(), "kept schedule unusable; moved aside");
                std::fs::rename(&path, &aside).map_err(|source| StoreError::Io {
                    path: path.clone(),
                    source,
                })?;
            }
        }
        Ok(store)
    }

    /// The schedule in force.
    pub fn current(&self) -> Option<&ReceiverSchedule> {
        self.current.as_ref()
    }

    /// Version of the schedule in force.
    pub fn version(&self) -> Option<u64> {
        self.current.as_ref().map(|s| s.version)
    }

    /// Takes `schedule` if it is for this receiver, valid and newer than the
    /// kept one, writing it to disk before it comes into force. Returns
    /// `Ok(Err(refusal))` when it was refused.
    pub fn offer(&mut self, schedule: ReceiverSchedule) -> Result<Result<(), Refusal>, StoreError> {
        if let Err(refusal) = self.check(&schedule) {
            return Ok(Err(refusal));
        }
        if let Some(kept) = self.version()
            && schedule.version <= kept
        {
            return Ok(Err(Refusal::NotNewer {
                offered: schedule.version,
                kept,
            }));
        }
        let bytes = serde_json::to_vec_pretty(&schedule).expect("schedules serialise");
        fsutil::write_atomic(&self.path, &bytes).map_err(|source| StoreError::Io {
            path: self.path.clone(),
            source,
        })?;
        self.current = Some(schedule);
        Ok(Ok(()))
    }

    /// Checks everything about a schedule except its version.
    fn check(&self, schedule: &ReceiverSchedule) -> Result<(), Refusal> {
        if schedule.receiver_id != self.receiver_id {
            return Err(Refusal::WrongReceiver(schedule.receiver_id.clone()));
        }
        validate(schedule).map_err(Refusal::Invalid)
    }
}

/// Checks that a schedule only names safe ids, well-formed hashes and
/// programmes it describes, so nothing in it can escape the cache directory
/// or refer to audio the receiver cannot verify.
pub fn validate(schedule: &ReceiverSchedule) -> Result<(), String> {
    for (id, programme) in &schedule.programmes {
        if !is_valid_id(id) {
            return Err(format!("programme id {id:?} is not a valid id"));
        }
        if !is_sha256_hex(&programme.sha256) {
            return Err(format!(
                "programme {id} has a malformed sha256 {:?}",
                programme.sha256
            ));
        }
    }
    for event in &schedule.events {
        if event.id.is_empty() || event.id.len() > 200 {
            return Err(format!("event id {:?} is empty or too long", event.id));
        }
        if !schedule.programmes.contains_key(&event.programme_id) {
            return Err(format!(
                "event {} refers to programme {:?} missing from the schedule",
                event.id, event.programme_id
            ));
        }
    }
    Ok(())
}

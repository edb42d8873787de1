//! The proof-of-play queue. Each [`PlayReport`] is written to
//! `DIR/reports/<report_id>.json` (atomically, durably) *before* any attempt
//! to send it, and deleted only when the controller's [`ReportAck`] names it.
//! Reports made while the link is down, or whose acknowledgement was lost,
//! are therefore re-sent until acknowledged, across restarts and power cuts.
//! The controller stores each `report_id` once, so re-sending is harmless.
//!
//! [`ReportAck`]: loa_protocol::ReportAck

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use loa_protocol::PlayReport;
use sha2::{Digest, Sha256};

use crate::fsutil;

/// Why the queue could not read or write its directory.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("report queue {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("report id {0:?} cannot name a file")]
    BadId(String),
}

/// The on-disk queue of unacknowledged reports. Shared behind an `Arc`; the
/// mutex keeps the in-memory index and the files in step.
#[derive(Debug)]
pub struct ReportQueue {
    /// `DIR/reports`, one JSON file per unacknowledged report.
    dir: PathBuf,
    /// The reports on disk, by id.
    pending: Mutex<BTreeMap<String, PlayReport>>,
}

/// The id of the report for one event on one receiver. Deterministic, so a
/// report made twice for the same event (say, after a crash between writing
/// it and recording that it was written) is still stored once.
pub fn report_id_for(receiver_id: &str, event_id: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"loa-play-report\0");
    h.update(receiver_id.as_bytes());
    h.update(b"\0");
    h.update(event_id.as_bytes());
    hex::encode(&h.finalize()[..16])
}

impl ReportQueue {
    /// Opens the queue in `cache_root/reports`, loading every report left
    /// there. Half-written temporary files are deleted; an unreadable report
    /// file is renamed to `*.json.rejected` and logged.
    pub fn open(cache_root: &Path) -> Result<ReportQueue, ReportError> {
        let dir = cache_root.join("reports");
        let io_err = |source| ReportError::Io {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io_err)?;
        fsutil::remove_temp_files(&dir).map_err(io_err)?;
        let mut pending = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).map_err(io_err)? {
            let path = entry.map_err(io_err)?.path();
            let Some(stem) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            let parsed = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<PlayReport>(&b).map_err(|e| e.to_string()));
            match parsed {
                Ok(report) if report.report_id == stem => {
                    pending.insert(report.report_id.clone(), report);
                }
                other => {
                    let why = other
                        .err()
                        .unwrap_or_else(|| "report id does not match the file name".into());
                    tracing::error!(file = %path.display(), %why, "unreadable queued report; moved aside");
                    let aside = path.with_extension("json.rejected");
                    std::fs::rename(&path, &aside).map_err(|source| ReportError::Io {
                        path: path.clone(),
                        source,
                    })?;
                }
            }
        }
        if !pending.is_empty() {
            tracing::info!(
                count = pending.len(),
                "unacknowledged play reports waiting to be sent"
            );
        }
        Ok(ReportQueue {
            dir,
            pending: Mutex::new(pending),
        })
    }

    /// Durably stores a report. Storing a report whose id is already queued
    /// replaces it.
    pub fn enqueue(&self, report: &PlayReport) -> Result<(), ReportError> {
        let path = self.path_for(&report.report_id)?;
        let bytes = serde_json::to_vec_pretty(report).expect("reports serialise");
        let mut pending = self.pending.lock().expect("report queue lock");
        fsutil::write_atomic(&path, &bytes).map_err(|source| ReportError::Io { path, source })?;
        pending.insert(report.report_id.clone(), report.clone());
        Ok(())
    }

    /// Deletes the acknowledged reports; ids the queue does not hold are
    /// ignored. Returns how many were deleted.
    pub fn ack(&self, report_ids: &[String]) -> Result<usize, ReportError> {
        let mut pending = self.pending.lock().expect("report queue lock");
        let mut removed = 0;
        for id in report_ids {
            if !pending.contains_key(id) {
                continue;
            }
            let path = self.path_for(id)?;
            fsutil::remove_durably(&path).map_err(|source| ReportError::Io { path, source })?;
            pending.remove(id);
            removed += 1;
        }
        Ok(removed)
    }

    /// Every unacknowledged report, oldest scheduled first.
    pub fn pending(&self) -> Vec<PlayReport> {
        let mut out: Vec<_> = self
            .pending
            .lock()
            .expect("report queue lock")
            .values()
            .cloned()
            .collect();
        out.sort_by(|a, b| {
            a.scheduled_at
                .cmp(&b.scheduled_at)
                .then_with(|| a.report_id.cmp(&b.report_id))
        });
        out
    }

    /// Whether a report with this id is waiting for its acknowledgement.
    pub fn contains(&self, report_id: &str) -> bool {
        self.pending
            .lock()
            .expect("report queue lock")
            .contains_key(report_id)
    }

    /// Number of unacknowledged reports.
    pub fn len(&self) -> usize {
        self.pending.lock().expect("report queue lock").len()
    }

    /// Whether every report has been acknowledged.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn path_for(&self, report_id: &str) -> Result<PathBuf, ReportError> {
        if !loa_protocol::is_valid_id(report_id) {
            return Err(ReportError::BadId(report_id.to_string()));
        }
        Ok(self.dir.join(format!("{report_id}.json")))
    }
}

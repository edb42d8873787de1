//! The receiver's copy of the output settings set from the console, kept on
//! disk as `DIR/settings.json` (written atomically, like the schedule), so
//! the volume chosen by the technician survives restarts and holds with no
//! network. Only settings for this receiver, within range and with a higher
//! version than the kept ones replace them. Until settings first arrive the
//! `--volume` and `--emergency-volume` flags are in force.

use std::path::{Path, PathBuf};

use loa_protocol::ReceiverSettings;

use crate::fsutil;

/// File name of the kept settings inside the cache directory.
const FILE_NAME: &str = "settings.json";

/// Why the store could not write its file.
#[derive(Debug, thiserror::Error)]
#[error("settings file {path}: {source}")]
pub struct SettingsStoreError {
    path: PathBuf,
    source: std::io::Error,
}

/// Why offered settings were not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsRefusal {
    #[error("settings are for receiver {0:?}, not this one")]
    WrongReceiver(String),
    #[error("settings version {offered} is not newer than the kept version {kept}")]
    NotNewer { offered: u64, kept: u64 },
    #[error("settings volume out of range (0-100 %)")]
    OutOfRange,
}

/// The latest accepted settings and the file that keeps them.
#[derive(Debug)]
pub struct SettingsStore {
    path: PathBuf,
    receiver_id: String,
    current: Option<ReceiverSettings>,
}

impl SettingsStore {
    /// Opens the store in `dir`, loading the kept settings if they are
    /// valid; an unreadable or foreign file is logged and ignored (the
    /// retained message brings the settings back).
    pub fn open(dir: &Path, receiver_id: &str) -> SettingsStore {
        let path = dir.join(FILE_NAME);
        let current = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<ReceiverSettings>(&bytes) {
                Ok(s) if s.receiver_id == receiver_id && s.is_valid() => {
                    tracing::info!(
                        version = s.version,
                        volume = s.volume,
                        "loaded kept settings"
                    );
                    Some(s)
                }
                Ok(_) => {
                    tracing::error!(file = %path.display(), "kept settings are foreign or out of range; ignored");
                    None
                }
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "kept settings unreadable; ignored");
                    None
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "cannot read kept settings");
                None
            }
        };
        SettingsStore {
            path,
            receiver_id: receiver_id.to_string(),
            current,
        }
    }

    /// The settings in force, if any arrived.
    pub fn current(&self) -> Option<&ReceiverSettings> {
        self.current.as_ref()
    }

    /// Takes `settings` if they are for this receiver, in range and newer,
    /// writing them to disk before they come into force.
    pub fn offer(
        &mut self,
        settings: ReceiverSettings,
    ) -> Result<Result<(), SettingsRefusal>, SettingsStoreError> {
        if settings.receiver_id != self.receiver_id {
            return Ok(Err(SettingsRefusal::WrongReceiver(settings.receiver_id)));
        }
        if !settings.is_valid() {
            return Ok(Err(SettingsRefusal::OutOfRange));
        }
        if let Some(kept) = &self.current
            && settings.version <= kept.version
        {
            return Ok(Err(SettingsRefusal::NotNewer {
                offered: settings.version,
                kept: kept.version,
            }));
        }
        let bytes = serde_json::to_vec_pretty(&settings).expect("settings serialise");
        fsutil::write_atomic(&self.path, &bytes).map_err(|source| SettingsStoreError {
            path: self.path.clone(),
            source,
        })?;
        self.current = Some(settings);
        Ok(Ok(()))
    }
}

/// The linear gain of a volume in percent.
pub fn gain_of_percent(percent: u8) -> f32 {
    f32::from(percent) / 100.0
}

/// A linear gain in percent, for the status (capped at 255).
pub fn percent_of_gain(gain: f32) -> u8 {
    (gain * 100.0).round().clamp(0.0, 255.0) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(id: &str, version: u64, volume: u8) -> ReceiverSettings {
        ReceiverSettings {
            receiver_id: id.into(),
            version,
            volume,
            emergency_volume: None,
        }
    }

    #[test]
    fn only_newer_valid_settings_for_this_receiver_are_kept_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SettingsStore::open(dir.path(), "loa-1");
        assert!(store.current().is_none());
        assert_eq!(store.offer(settings("loa-1", 5, 40)).unwrap(), Ok(()));
        assert_eq!(
            store.offer(settings("loa-1", 5, 90)).unwrap(),
            Err(SettingsRefusal::NotNewer {
                offered: 5,
                kept: 5
            })
        );
        assert_eq!(
            store.offer(settings("loa-2", 9, 90)).unwrap(),
            Err(SettingsRefusal::WrongReceiver("loa-2".into()))
        );
        assert_eq!(
            store.offer(settings("loa-1", 9, 101)).unwrap(),
            Err(SettingsRefusal::OutOfRange)
        );
        let reopened = SettingsStore::open(dir.path(), "loa-1");
        assert_eq!(reopened.current(), Some(&settings("loa-1", 5, 40)));
        assert!(SettingsStore::open(dir.path(), "loa-9").current().is_none());
    }

    #[test]
    fn percent_and_gain_convert() {
        assert_eq!(gain_of_percent(50), 0.5);
        assert_eq!(percent_of_gain(0.5), 50);
        assert_eq!(percent_of_gain(4.0), 255);
    }
}

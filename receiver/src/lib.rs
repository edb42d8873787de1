//! The Loa receiver: runs on a loudspeaker pole, keeps its schedule and the
//! programmes' audio on disk, plays every event at its instant through the
//! audio output even when the controller or the network is down, and reports
//! each play back (proof of play). See `ARCHITECTURE.md` for the data flow.
//!
//! The binary is a thin shell around [`run`].

pub mod cache;
pub mod clock;
pub mod config;
pub mod controller_http;
mod daemon;
pub mod enroll;
pub mod fetcher;
pub mod fsutil;
pub mod ledger;
pub mod link;
pub mod live;
pub mod opus_source;
mod playback;
pub mod player;
pub mod reports;
pub mod schedule_store;
pub mod settings_store;
mod tone;
pub mod trust;

pub use config::{Config, ConfigError};
pub use daemon::run;
pub use tone::{TONE_DBFS, TONE_HZ, tone_amplitude};

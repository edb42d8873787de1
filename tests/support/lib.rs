//! Support for Loa's end-to-end tests: everything a test needs to start the
//! real `loa-controller` and `loa-receiver` binaries, feed them a generated
//! Vietnamese bulletin, and check by ear — that is, by recording — what the
//! receivers played and when.
//!
//! The audio rig follows `../shared/TESTING.md` set-up 3: one JACK server with
//! the dummy backend per test ([`jack::JackServer`]), every receiver's ALSA
//! `default` PCM routed into one port of a recorder client
//! ([`jack::Recorder`]), so all receivers are recorded on one sample clock
//! whose frames map to UTC instants. The analysis ([`audio`]) compares
//! envelopes with the source and finds where the programme starts.
//!
//! This is a test harness, so it reports failures with `anyhow` errors
//! carrying the context (command, log excerpt) a reader needs.

pub mod api;
pub mod artifacts;
pub mod audio;
pub mod bins;
pub mod bulletin;
pub mod certs;
pub mod controller;
pub mod cut;
pub mod fleet;
pub mod icecast;
pub mod jack;
pub mod live;
pub mod lossy;
pub mod mosquitto;
pub mod net;
pub mod playout;
pub mod process;
pub mod receiver;
pub mod recording;
pub mod wait;
pub mod wav_receiver;

pub use api::Api;
pub use artifacts::Artifacts;
pub use bins::Binaries;
pub use bulletin::TestBulletin;
pub use controller::{BrokerMode, Controller};
pub use jack::{JackServer, Recorder};
pub use mosquitto::Mosquitto;
pub use receiver::Receiver;
pub use recording::Recording;

/// Serialises the end-to-end tests of one test binary: they measure
/// real-time playout on a 2-core machine, so two at once would disturb each
/// other's timing. Hold the returned guard for the whole test.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

//! The Loa receiver's hardware abstraction.
//!
//! Each device concept is one small trait with real backends chosen by name
//! from configuration (as librespot chooses its audio backend):
//! - [`AudioSink`] — where decoded audio goes: [`cpal`](sink::cpal) (any sound
//!   card ALSA knows) or [`wav`](sink::wav) (a WAV file, paced in real time).
//! - [`AmplifierPower`] — the relay in front of the amplifier: a Linux GPIO
//!   character-device line, or none.
//!
//! Blocking calls live here; the receiver drives a sink from its own thread,
//! never from the async runtime.

pub mod amplifier;
pub mod sink;

pub use amplifier::{AmplifierPower, open_amplifier};
pub use sink::{AudioSink, OutputSpec, SAMPLE_RATE, SinkError, open_sink};

/// A hardware device could not be opened or driven.
#[derive(Debug, thiserror::Error)]
pub enum HardwareError {
    #[error("invalid device specification {spec:?}: {reason}")]
    InvalidSpec { spec: String, reason: String },
    #[error("GPIO: {0}")]
    Gpio(String),
}

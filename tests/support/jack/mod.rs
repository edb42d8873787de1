//! The JACK side of the audio rig (`../shared/TESTING.md` set-up 3): a JACK
//! server with the dummy backend per test, and a recorder client with one
//! input port per receiver. Each receiver's ALSA `default` PCM is routed to
//! its recorder port by [`asoundrc`], so cpal in the receiver runs its real
//! ALSA code path and every sample it plays lands on one shared sample clock.

pub mod capture;
mod recorder;
pub mod registry;
mod server;

pub use recorder::Recorder;
pub use server::JackServer;

/// The `.asoundrc` that routes a process's ALSA `default` PCM (what cpal's
/// default output device opens) into JACK port `playback_port`. The `plug`
/// converts whatever format and channel count the client asks for into the
/// JACK plugin's mono float.
pub fn asoundrc(playback_port: &str) -> String {
    format!(
        "pcm.!default {{ type plug  slave {{ pcm \"j\"  format FLOAT_LE  rate 48000  channels 1 }} }}\n\
         pcm.j {{ type jack  playback_ports {{ 0 {playback_port} }}  capture_ports {{ 0 system:capture_1 }} }}\n"
    )
}

/// The `.asoundrc` of a process whose ALSA `default` PCM *captures* from
/// JACK port `capture_port` (the recorder's source: what the controller's
/// cpal "microphone" hears); its playback goes to the dummy backend's
/// `system:playback_1`, where nothing listens.
pub fn capture_asoundrc(capture_port: &str) -> String {
    format!(
        "pcm.!default {{ type plug  slave {{ pcm \"j\"  format FLOAT_LE  rate 48000  channels 1 }} }}\n\
         pcm.j {{ type jack  playback_ports {{ 0 system:playback_1 }}  capture_ports {{ 0 {capture_port} }} }}\n"
    )
}

/// Sample rate of the rig (the JACK server's and every Loa sink's).
pub const RATE: u32 = 48_000;

//! Finding the output device and choosing how to drive it: 48 kHz, the
//! sample format and channel count, and the callback sizes to try.

use cpal::traits::{DeviceTrait, HostTrait};
use cpal::{
    BufferSize, DeviceId, ErrorKind, SampleFormat, StreamConfig, SupportedBufferSize,
    SupportedStreamConfigRange,
};

use crate::sink::{SAMPLE_RATE, SinkError};

/// Callback sizes we ask for, in order: about 20 ms, then nearby sizes
/// that drivers round to. cpal gives the device two periods, so its own
/// latency is about 40 ms. ALSA's default can be far larger (340 ms
/// through the JACK plugin), which would slow pre-emption; it is the last
/// resort.
const PERIOD_CANDIDATES: [u32; 5] = [960, 1024, 480, 512, 2048];
/// Finds an output device by id (`alsa:NAME` or `NAME`) or by name.
pub(super) fn find_device(host: &cpal::Host, name: &str) -> Result<cpal::Device, SinkError> {
    if let Ok(id) = name.parse::<DeviceId>()
        && let Some(device) = host.device_by_id(&id)
    {
        return Ok(device);
    }
    if let Some(device) = host.device_by_id(&DeviceId::new(host.id(), name)) {
        return Ok(device);
    }
    let devices = host
        .output_devices()
        .map_err(|e| SinkError::Backend(format!("cannot list audio devices: {e}")))?;
    for device in devices {
        if device.description().is_ok_and(|d| d.name() == name) {
            return Ok(device);
        }
    }
    Err(SinkError::NoDevice(name.to_string()))
}

/// Sample formats the callback can produce.
fn is_playable(format: SampleFormat) -> bool {
    matches!(
        format,
        SampleFormat::F32
            | SampleFormat::F64
            | SampleFormat::I8
            | SampleFormat::I16
            | SampleFormat::I24
            | SampleFormat::I32
            | SampleFormat::I64
            | SampleFormat::U8
            | SampleFormat::U16
            | SampleFormat::U32
            | SampleFormat::U64
    )
}

/// Picks a 48 kHz configuration: `f32` first, then mono (our signal; no
/// channel mixing in ALSA's plug layer, which rounds to 16 bits), then
/// cpal's ranking (stereo, more channels, wider formats).
pub(super) fn choose_config(
    device: &cpal::Device,
    device_name: &str,
) -> Result<(StreamConfig, SampleFormat, Vec<BufferSize>), SinkError> {
    let ranges: Vec<SupportedStreamConfigRange> = device
        .supported_output_configs()
        .map_err(|e| match e.kind() {
            ErrorKind::DeviceNotAvailable => SinkError::NoDevice(device_name.to_string()),
            _ => SinkError::Backend(format!("cannot query {device_name}: {e}")),
        })?
        .collect();
    choose_from(&ranges, device_name)
}

/// The choice [`choose_config`] makes among the device's `ranges`: the
/// stream configuration, its sample format, and the buffer sizes to try.
fn choose_from(
    ranges: &[SupportedStreamConfigRange],
    device_name: &str,
) -> Result<(StreamConfig, SampleFormat, Vec<BufferSize>), SinkError> {
    let best = ranges
        .iter()
        .filter(|r| r.contains_rate(SAMPLE_RATE) && is_playable(r.sample_format()))
        .max_by(|a, b| {
            (a.sample_format() == SampleFormat::F32)
                .cmp(&(b.sample_format() == SampleFormat::F32))
                .then_with(|| (a.channels() == 1).cmp(&(b.channels() == 1)))
                .then_with(|| a.cmp_default_heuristics(b))
        });
    let Some(range) = best else {
        let offered: Vec<String> = ranges
            .iter()
            .map(|r| {
                format!(
                    "{} ch {} {}-{} Hz",
                    r.channels(),
                    r.sample_format(),
                    r.min_sample_rate(),
                    r.max_sample_rate()
                )
            })
            .collect();
        return Err(SinkError::Unsupported(format!(
            "{device_name} offers {}; use a plug device (e.g. plughw:...) to convert",
            if offered.is_empty() {
                "no output configurations".to_string()
            } else {
                offered.join(", ")
            }
        )));
    };
    let supported = range.with_sample_rate(SAMPLE_RATE);
    let mut buffer_sizes: Vec<BufferSize> = match *supported.buffer_size() {
        SupportedBufferSize::Range { min, max } => PERIOD_CANDIDATES
            .iter()
            .filter(|&&p| (min..=max).contains(&p))
            .map(|&p| BufferSize::Fixed(p))
            .collect(),
        SupportedBufferSize::Unknown => Vec::new(),
    };
    buffer_sizes.push(BufferSize::Default);
    Ok((supported.config(), supported.sample_format(), buffer_sizes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(
        channels: u16,
        min: u32,
        max: u32,
        format: SampleFormat,
        buffer: SupportedBufferSize,
    ) -> SupportedStreamConfigRange {
        SupportedStreamConfigRange::new(channels, min, max, buffer, format)
    }

    const ANY_BUFFER: SupportedBufferSize = SupportedBufferSize::Range {
        min: 16,
        max: 65536,
    };

    #[test]
    fn prefers_f32_then_mono_at_48k() {
        let ranges = [
            range(2, 8000, 192_000, SampleFormat::I16, ANY_BUFFER),
            range(1, 8000, 192_000, SampleFormat::I32, ANY_BUFFER),
            range(2, 8000, 192_000, SampleFormat::F32, ANY_BUFFER),
            range(1, 8000, 192_000, SampleFormat::F32, ANY_BUFFER),
            range(1, 44_100, 44_100, SampleFormat::F32, ANY_BUFFER),
        ];
        let (config, format, sizes) = choose_from(&ranges, "test").unwrap();
        assert_eq!(format, SampleFormat::F32);
        assert_eq!(config.channels, 1);
        assert_eq!(config.sample_rate, SAMPLE_RATE);
        assert_eq!(sizes.first(), Some(&BufferSize::Fixed(960)));
        assert_eq!(sizes.last(), Some(&BufferSize::Default));

        // A stereo-only 16-bit codec: stereo I16 it is.
        let ranges = [
            range(
                2,
                48_000,
                48_000,
                SampleFormat::I16,
                SupportedBufferSize::Unknown,
            ),
            range(
                2,
                44_100,
                44_100,
                SampleFormat::F32,
                SupportedBufferSize::Unknown,
            ),
        ];
        let (config, format, sizes) = choose_from(&ranges, "test").unwrap();
        assert_eq!((config.channels, format), (2, SampleFormat::I16));
        assert_eq!(sizes, vec![BufferSize::Default]);
    }

    #[test]
    fn buffer_sizes_stay_in_the_device_range() {
        let ranges = [range(
            2,
            48_000,
            48_000,
            SampleFormat::F32,
            SupportedBufferSize::Range {
                min: 1000,
                max: 1500,
            },
        )];
        let (_, _, sizes) = choose_from(&ranges, "test").unwrap();
        assert_eq!(sizes, vec![BufferSize::Fixed(1024), BufferSize::Default]);
    }

    #[test]
    fn a_device_without_48k_is_unsupported() {
        let ranges = [range(2, 44_100, 44_100, SampleFormat::I16, ANY_BUFFER)];
        match choose_from(&ranges, "alsa:hw:CARD=X,DEV=0") {
            Err(SinkError::Unsupported(msg)) => {
                assert!(msg.contains("alsa:hw:CARD=X,DEV=0"), "{msg}");
                assert!(msg.contains("44100-44100 Hz"), "{msg}");
            }
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }
}

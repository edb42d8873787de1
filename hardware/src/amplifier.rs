//! Amplifier power: the relay that switches the loudspeaker amplifier on
//! before a play and off after it, so the amplifier neither hums nor wears
//! out between bulletins.
//!
//! Backends, chosen by [`open_amplifier`] from a specification string:
//! - `none` — no relay ([`NoRelay`]): the amplifier is always powered.
//! - `gpio:CHIP:LINE[:active-low]` — a Linux GPIO character-device line
//!   ([`GpioRelay`]), e.g. `gpio:/dev/gpiochip0:17`. `CHIP` is a path, or a
//!   bare chip name such as `gpiochip0` that is looked up under `/dev`.
//!   `active-low` is for relay boards that close the relay when the pin is
//!   driven low (most opto-isolated modules); `active-high` may be written
//!   out for clarity and is the default.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use gpiocdev::line::Value;

use crate::HardwareError;

/// The consumer label the kernel shows for our line (`gpioinfo`), so an
/// operator can see who holds it.
pub const GPIO_CONSUMER: &str = "loa-amplifier";

/// Switches the amplifier's power. Implementations are `Send` so the player
/// thread can own one.
pub trait AmplifierPower: Send {
    /// Switches the amplifier on (`true`) or off (`false`). Idempotent.
    fn set_power(&mut self, on: bool) -> Result<(), HardwareError>;
    /// Whether the amplifier was last switched on.
    fn is_on(&self) -> bool;
}

/// Which amplifier relay to use, parsed from `--amplifier`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AmplifierSpec {
    /// No relay: the amplifier is powered all the time.
    None,
    /// A GPIO line driving the relay.
    Gpio {
        /// The GPIO character device, e.g. `/dev/gpiochip0`.
        chip: PathBuf,
        /// The line offset on that chip.
        line: u32,
        /// True when the relay closes with the pin driven low.
        active_low: bool,
    },
}

impl FromStr for AmplifierSpec {
    type Err = HardwareError;

    fn from_str(spec: &str) -> Result<Self, HardwareError> {
        let invalid = |reason: &str| HardwareError::InvalidSpec {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        if spec == "none" {
            return Ok(AmplifierSpec::None);
        }
        let Some(rest) = spec.strip_prefix("gpio:") else {
            return Err(invalid(
                "expected \"none\" or \"gpio:CHIP:LINE[:active-low]\", e.g. gpio:/dev/gpiochip0:17",
            ));
        };
        let (rest, active_low) = if let Some(r) = rest.strip_suffix(":active-low") {
            (r, true)
        } else if let Some(r) = rest.strip_suffix(":active-high") {
            (r, false)
        } else {
            (rest, false)
        };
        let Some((chip, line)) = rest.rsplit_once(':') else {
            return Err(invalid(
                "missing line number: expected gpio:CHIP:LINE, e.g. gpio:/dev/gpiochip0:17",
            ));
        };
        if chip.is_empty() {
            return Err(invalid("missing GPIO chip, e.g. /dev/gpiochip0"));
        }
        if line.is_empty() {
            return Err(invalid("missing line number after the chip"));
        }
        let line: u32 = line.parse().map_err(|_| {
            invalid(&format!(
                "line {line:?} is not a line number (a non-negative integer); \
                 the only option after it is \"active-low\""
            ))
        })?;
        let chip = if chip.contains('/') {
            PathBuf::from(chip)
        } else {
            PathBuf::from("/dev").join(chip)
        };
        Ok(AmplifierSpec::Gpio {
            chip,
            line,
            active_low,
        })
    }
}

impl fmt::Display for AmplifierSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AmplifierSpec::None => f.write_str("none"),
            AmplifierSpec::Gpio {
                chip,
                line,
                active_low,
            } => {
                write!(f, "gpio:{}:{line}", chip.display())?;
                if *active_low {
                    f.write_str(":active-low")?;
                }
                Ok(())
            }
        }
    }
}

/// Opens the amplifier relay named by `spec` (see the module docs). The
/// amplifier starts switched off.
pub fn open_amplifier(spec: &str) -> Result<Box<dyn AmplifierPower>, HardwareError> {
    match spec.parse::<AmplifierSpec>()? {
        AmplifierSpec::None => Ok(Box::new(NoRelay::default())),
        AmplifierSpec::Gpio {
            chip,
            line,
            active_low,
        } => Ok(Box::new(GpioRelay::open(chip, line, active_low)?)),
    }
}

/// No relay: switching only records the requested state, so the player's
/// logic (and its logs) stay the same on boards without a relay.
#[derive(Debug, Default)]
pub struct NoRelay {
    /// The last requested state, reported by [`is_on`](AmplifierPower::is_on).
    on: bool,
}

impl AmplifierPower for NoRelay {
    fn set_power(&mut self, on: bool) -> Result<(), HardwareError> {
        self.on = on;
        Ok(())
    }

    fn is_on(&self) -> bool {
        self.on
    }
}

/// A relay on a GPIO line, driven through the Linux GPIO character device
/// (`/dev/gpiochipN`, uAPI v2 with v1 fallback). The line is held for the
/// life of this value, requested as an output that starts inactive
/// (amplifier off), and driven inactive again when dropped.
pub struct GpioRelay {
    /// The kernel line request; holding it keeps the line ours and set.
    request: gpiocdev::Request,
    /// The specification, for error messages and logs.
    spec: AmplifierSpec,
    /// The state last driven onto the line.
    on: bool,
}

impl GpioRelay {
    /// Requests `line` on `chip` as an output, initially inactive (off).
    pub fn open(chip: PathBuf, line: u32, active_low: bool) -> Result<Self, HardwareError> {
        let spec = AmplifierSpec::Gpio {
            chip: chip.clone(),
            line,
            active_low,
        };
        let mut builder = gpiocdev::Request::builder();
        builder
            .on_chip(chip)
            .with_consumer(GPIO_CONSUMER)
            .with_line(line)
            .as_output(Value::Inactive);
        if active_low {
            builder.as_active_low();
        }
        let request = builder
            .request()
            .map_err(|e| HardwareError::Gpio(format!("cannot request {spec}: {e}")))?;
        tracing::info!(%spec, "amplifier relay ready (off)");
        Ok(GpioRelay {
            request,
            spec,
            on: false,
        })
    }
}

impl AmplifierPower for GpioRelay {
    fn set_power(&mut self, on: bool) -> Result<(), HardwareError> {
        let value = if on { Value::Active } else { Value::Inactive };
        self.request.set_lone_value(value).map_err(|e| {
            HardwareError::Gpio(format!(
                "cannot switch amplifier {} via {}: {e}",
                if on { "on" } else { "off" },
                self.spec
            ))
        })?;
        if self.on != on {
            tracing::debug!(spec = %self.spec, on, "amplifier switched");
        }
        self.on = on;
        Ok(())
    }

    fn is_on(&self) -> bool {
        self.on
    }
}

impl Drop for GpioRelay {
    fn drop(&mut self) {
        // The kernel leaves a released line as it was; never leave the
        // amplifier running after the receiver exits.
        if let Err(e) = self.request.set_lone_value(Value::Inactive) {
            tracing::warn!(spec = %self.spec, error = %e, "could not switch amplifier off on exit");
        }
    }
}

/// `GpioRelay` against a live line is not tested here: it needs a kernel
/// with `gpio-sim` or `gpio-mockup`, which the build VM lacks (no module,
/// no configfs). On a board: `gpioinfo` shows the line as used by
/// `loa-amplifier`, and `gpioget` after exit reads it inactive.
#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<AmplifierSpec, HardwareError> {
        s.parse()
    }

    fn reason(s: &str) -> String {
        match parse(s) {
            Err(HardwareError::InvalidSpec { spec, reason }) => {
                assert_eq!(spec, s);
                reason
            }
            other => panic!("{s:?} should be invalid, got {other:?}"),
        }
    }

    #[test]
    fn parses_none_and_gpio_specs() {
        assert_eq!(parse("none").unwrap(), AmplifierSpec::None);
        assert_eq!(
            parse("gpio:/dev/gpiochip0:17").unwrap(),
            AmplifierSpec::Gpio {
                chip: "/dev/gpiochip0".into(),
                line: 17,
                active_low: false
            }
        );
        assert_eq!(
            parse("gpio:/dev/gpiochip2:0:active-low").unwrap(),
            AmplifierSpec::Gpio {
                chip: "/dev/gpiochip2".into(),
                line: 0,
                active_low: true
            }
        );
        assert_eq!(
            parse("gpio:gpiochip1:5:active-high").unwrap(),
            AmplifierSpec::Gpio {
                chip: "/dev/gpiochip1".into(),
                line: 5,
                active_low: false
            }
        );
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "none",
            "gpio:/dev/gpiochip0:17",
            "gpio:/dev/gpiochip0:17:active-low",
        ] {
            assert_eq!(parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn rejects_malformed_specs_with_a_reason() {
        assert!(reason("").contains("expected \"none\""));
        assert!(reason("relay").contains("expected \"none\""));
        assert!(reason("None").contains("expected \"none\""));
        assert!(reason("gpio:/dev/gpiochip0").contains("missing line number"));
        assert!(reason("gpio:").contains("missing line number"));
        assert!(reason("gpio::17").contains("missing GPIO chip"));
        assert!(reason("gpio:/dev/gpiochip0:").contains("missing line number"));
        assert!(reason("gpio:/dev/gpiochip0:-1").contains("not a line number"));
        assert!(reason("gpio:/dev/gpiochip0:seventeen").contains("not a line number"));
        assert!(reason("gpio:/dev/gpiochip0:17:active-lo").contains("not a line number"));
        assert!(reason("gpio:/dev/gpiochip0:99999999999").contains("not a line number"));
    }

    #[test]
    fn no_relay_tracks_state() {
        let mut amp = open_amplifier("none").unwrap();
        assert!(!amp.is_on());
        amp.set_power(true).unwrap();
        assert!(amp.is_on());
        amp.set_power(true).unwrap();
        assert!(amp.is_on());
        amp.set_power(false).unwrap();
        assert!(!amp.is_on());
    }

    #[test]
    fn missing_gpio_chip_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("loa-no-gpiochip-{}", std::process::id()));
        let spec = format!("gpio:{}:17", dir.join("gpiochip9").display());
        match open_amplifier(&spec) {
            Err(HardwareError::Gpio(msg)) => {
                assert!(msg.contains("gpiochip9"), "{msg}");
                assert!(msg.contains(":17"), "{msg}");
            }
            Err(other) => panic!("expected a GPIO error, got {other}"),
            Ok(_) => panic!("opened a GPIO chip that does not exist"),
        }
    }
}

//! Time zones: parsing IANA names and turning local wall time into instants.
//!
//! Schedules are written in local wall time (a commune broadcasts "at 06:30",
//! not "at 23:30Z"). Vietnam (`Asia/Ho_Chi_Minh`, UTC+7) has no daylight
//! saving, but other zones do, so the two awkward cases are decided here:
//! a local time that does not exist (skipped by a spring-forward gap) is an
//! error for a schedule's start, and a local time that exists twice (the
//! autumn fall-back) means the earlier of the two instants.

use chrono::{DateTime, NaiveDateTime, TimeZone};
use chrono_tz::Tz;

use crate::ScheduleError;

/// The zone a schedule is in when none is given: Vietnam.
pub const DEFAULT_TIMEZONE: &str = "Asia/Ho_Chi_Minh";

/// Parses an IANA time zone name (`Asia/Ho_Chi_Minh`, `Europe/Berlin`,
/// `UTC`). Surrounding spaces are ignored; if the exact spelling is unknown
/// a case-insensitive match is tried (`asia/ho_chi_minh`).
pub fn parse_timezone(name: &str) -> Result<Tz, ScheduleError> {
    let trimmed = name.trim();
    trimmed
        .parse::<Tz>()
        .ok()
        .or_else(|| {
            chrono_tz::TZ_VARIANTS
                .iter()
                .copied()
                .find(|tz| tz.name().eq_ignore_ascii_case(trimmed))
        })
        .ok_or_else(|| ScheduleError::UnknownTimezone(name.to_string()))
}

/// The instant local wall time `local` denotes in `tz`: the earlier one if the
/// time is ambiguous, `None` if it does not exist (daylight-saving gap).
pub(crate) fn resolve_local(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Tz>> {
    tz.from_local_datetime(&local).earliest()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveDate, Utc};

    fn local(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(y, mo, d)
            .unwrap()
            .and_hms_opt(h, mi, 0)
            .unwrap()
    }

    #[test]
    fn parses_default_and_other_zones() {
        assert_eq!(
            parse_timezone(DEFAULT_TIMEZONE).unwrap(),
            chrono_tz::Asia::Ho_Chi_Minh
        );
        assert_eq!(
            parse_timezone(" Europe/Berlin ").unwrap(),
            chrono_tz::Europe::Berlin
        );
        assert_eq!(
            parse_timezone("asia/ho_chi_minh").unwrap(),
            chrono_tz::Asia::Ho_Chi_Minh
        );
        assert_eq!(parse_timezone("UTC").unwrap(), chrono_tz::UTC);
    }

    #[test]
    fn rejects_unknown_zones() {
        for bad in ["", "   ", "Asia/Hanoi_City", "GMT+7:00", "Mars/Olympus"] {
            let err = parse_timezone(bad).unwrap_err();
            assert_eq!(err, ScheduleError::UnknownTimezone(bad.to_string()));
            assert!(err.message_vi().starts_with("Múi giờ không tồn tại"));
        }
    }

    #[test]
    fn vietnam_is_utc_plus_seven_all_year() {
        let tz = parse_timezone(DEFAULT_TIMEZONE).unwrap();
        for month in 1..=12 {
            let at = resolve_local(tz, local(2026, month, 15, 6, 30)).unwrap();
            assert_eq!(
                at.with_timezone(&Utc),
                Utc.with_ymd_and_hms(2026, month, 14, 23, 30, 0).unwrap(),
                "06:30 ICT is 23:30Z the previous day (month {month})"
            );
        }
    }

    #[test]
    fn gap_is_none_and_ambiguity_takes_the_earlier_instant() {
        let berlin = chrono_tz::Europe::Berlin;
        // 2026-03-29: 02:00 CET jumps to 03:00 CEST.
        assert!(resolve_local(berlin, local(2026, 3, 29, 2, 30)).is_none());
        // 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice.
        let at = resolve_local(berlin, local(2026, 10, 25, 2, 30)).unwrap();
        assert_eq!(
            at.with_timezone(&Utc),
            Utc.with_ymd_and_hms(2026, 10, 25, 0, 30, 0).unwrap()
        );
    }
}

//! Tests for [`ScheduleSpec`] parsing, the example files, and the
//! Vietnamese error messages.

use std::path::PathBuf;

use chrono::{DateTime, NaiveDate, TimeDelta, Timelike, Utc};
use chrono_tz::Tz;

use crate::{Priority, Schedule, ScheduleError, ScheduleSpec, Targets, parse_local_start};

fn spec(json: serde_json::Value) -> ScheduleSpec {
    serde_json::from_value(json).unwrap()
}

fn into(json: serde_json::Value) -> Result<(Schedule, Targets), ScheduleError> {
    spec(json).into_schedule("sch-1".to_string())
}

#[test]
fn issue_example_body_becomes_a_schedule() {
    let (schedule, targets) = into(serde_json::json!({
        "programme_id": "ban-tin-chuyen-doi-so",
        "targets": {"zones": ["thon-1", "thon-2"], "receivers": []},
        "start": "2026-11-24T06:30:00",
        "timezone": "Asia/Ho_Chi_Minh",
        "rrule": "FREQ=WEEKLY;BYDAY=TU,FR",
        "priority": "normal"
    }))
    .unwrap();
    assert_eq!(schedule.id, "sch-1");
    assert_eq!(schedule.programme_id, "ban-tin-chuyen-doi-so");
    assert_eq!(
        schedule.start,
        NaiveDate::from_ymd_opt(2026, 11, 24)
            .unwrap()
            .and_hms_opt(6, 30, 0)
            .unwrap()
    );
    assert_eq!(schedule.timezone, chrono_tz::Asia::Ho_Chi_Minh);
    assert_eq!(schedule.rrule.as_deref(), Some("FREQ=WEEKLY;BYDAY=TU,FR"));
    assert_eq!(schedule.priority, Priority::Normal);
    assert_eq!(targets.zones, ["thon-1", "thon-2"]);
    assert!(targets.receivers.is_empty());
}

#[test]
fn optional_fields_default() {
    let (schedule, targets) = into(serde_json::json!({
        "programme_id": "p",
        "targets": {"receivers": ["loa-01"]},
        "start": "2026-11-24T06:30"
    }))
    .unwrap();
    assert_eq!(schedule.timezone, chrono_tz::Asia::Ho_Chi_Minh);
    assert_eq!(schedule.rrule, None);
    assert_eq!(schedule.priority, Priority::Normal);
    assert_eq!((schedule.start.hour(), schedule.start.minute()), (6, 30));
    assert_eq!(targets.receivers, ["loa-01"]);
    assert!(targets.zones.is_empty());

    // Blank strings, as a web form sends them, mean "not given".
    let (schedule, _) = into(serde_json::json!({
        "programme_id": "p",
        "targets": {"zones": ["thon-1"]},
        "start": "2026-11-24T06:30:00",
        "timezone": " ",
        "rrule": "",
        "priority": null
    }))
    .unwrap();
    assert_eq!(schedule.timezone, chrono_tz::Asia::Ho_Chi_Minh);
    assert_eq!(schedule.rrule, None);
}

#[test]
fn rrule_is_stored_without_prefix() {
    let (schedule, _) = into(serde_json::json!({
        "programme_id": "p",
        "targets": {"zones": ["thon-1"]},
        "start": "2026-11-24T06:30:00",
        "rrule": " RRULE:FREQ=DAILY;COUNT=3 ",
        "priority": "emergency"
    }))
    .unwrap();
    assert_eq!(schedule.rrule.as_deref(), Some("FREQ=DAILY;COUNT=3"));
    assert_eq!(schedule.priority, Priority::Emergency);
}

#[test]
fn start_formats() {
    let want = NaiveDate::from_ymd_opt(2026, 11, 24)
        .unwrap()
        .and_hms_opt(6, 30, 0)
        .unwrap();
    for ok in [
        "2026-11-24T06:30:00",
        "2026-11-24T06:30",
        " 2026-11-24T06:30:00 ",
        "2026-11-24 06:30:00",
        "2026-11-24T06:30:00.000",
    ] {
        assert_eq!(parse_local_start(ok).unwrap(), want, "{ok:?}");
    }
    for offset in [
        "2026-11-24T06:30:00Z",
        "2026-11-24T06:30:00z",
        "2026-11-24T06:30:00+07:00",
        "2026-11-24T06:30+07:00",
        "2026-11-24T06:30:00-05:00",
        "2026-11-23T23:30:00.000Z",
    ] {
        let err = parse_local_start(offset).unwrap_err();
        assert_eq!(
            err,
            ScheduleError::StartHasOffset {
                input: offset.to_string()
            }
        );
        assert!(err.message_vi().contains("giờ địa phương"));
    }
    for bad in [
        "",
        "2026-11-24",
        "06:30",
        "24/11/2026 06:30",
        "2026-02-30T06:30:00",
        "2026-11-24T25:00:00",
        "tomorrow at dawn",
    ] {
        assert_eq!(
            parse_local_start(bad).unwrap_err(),
            ScheduleError::InvalidStart {
                input: bad.to_string()
            },
            "{bad:?}"
        );
    }
}

#[test]
fn spec_errors() {
    let base = || {
        serde_json::json!({
            "programme_id": "p",
            "targets": {"zones": ["thon-1"]},
            "start": "2026-11-24T06:30:00",
        })
    };
    let with = |key: &str, value: serde_json::Value| {
        let mut json = base();
        json[key] = value;
        into(json).unwrap_err()
    };
    assert_eq!(
        with("timezone", "Asia/Hanoi".into()),
        ScheduleError::UnknownTimezone("Asia/Hanoi".into())
    );
    assert_eq!(
        with("programme_id", " ".into()),
        ScheduleError::MissingField {
            field: "programme_id"
        }
    );
    assert_eq!(
        with("targets", serde_json::json!({})),
        ScheduleError::NoTargets
    );
    assert_eq!(
        with("targets", serde_json::json!({"zones": ["thon-1", " "]})),
        ScheduleError::MissingField {
            field: "targets.zones"
        }
    );
    assert!(matches!(
        with("start", "2026-11-24T06:30:00+07:00".into()),
        ScheduleError::StartHasOffset { .. }
    ));
    assert!(matches!(
        with("rrule", "FREQ=SECONDLY".into()),
        ScheduleError::RruleTooFrequent { .. }
    ));
    assert!(matches!(
        with("rrule", "FREQ=WEEKLY;BYDAY=TUE".into()),
        ScheduleError::InvalidRrule { .. }
    ));
    let mut berlin_gap = base();
    berlin_gap["timezone"] = "Europe/Berlin".into();
    berlin_gap["start"] = "2026-03-29T02:15:00".into();
    assert!(matches!(
        into(berlin_gap),
        Err(ScheduleError::NonexistentLocalTime { .. })
    ));
    // An unknown priority is a JSON error, before into_schedule.
    let mut bad_priority = base();
    bad_priority["priority"] = "urgent".into();
    assert!(serde_json::from_value::<ScheduleSpec>(bad_priority).is_err());
}

#[test]
fn targets_are_trimmed_and_deduplicated() {
    let (_, targets) = into(serde_json::json!({
        "programme_id": "p",
        "targets": {"zones": ["thon-1", " thon-2", "thon-1"], "receivers": ["loa-1", "loa-1 "]},
        "start": "2026-11-24T06:30:00",
    }))
    .unwrap();
    assert_eq!(targets.zones, ["thon-1", "thon-2"]);
    assert_eq!(targets.receivers, ["loa-1"]);
}

#[test]
fn every_error_has_a_vietnamese_message() {
    let at = DateTime::<Utc>::from_timestamp(1_795_476_600, 0).unwrap();
    let local = at.naive_utc();
    let errors = [
        ScheduleError::UnknownTimezone("Asia/Hanoi".into()),
        ScheduleError::InvalidStart { input: "x".into() },
        ScheduleError::StartHasOffset { input: "x".into() },
        ScheduleError::StartOutOfRange {
            start: local,
            min_year: 1970,
            max_year: 9999,
        },
        ScheduleError::NonexistentLocalTime {
            start: local,
            timezone: "Europe/Berlin".into(),
        },
        ScheduleError::MissingField {
            field: "programme_id",
        },
        ScheduleError::NoTargets,
        ScheduleError::InvalidRrule {
            rule: "x".into(),
            reason: "y".into(),
        },
        ScheduleError::RruleHasDtstart { rule: "x".into() },
        ScheduleError::RruleMultiline {
            rule: "a\nb".into(),
        },
        ScheduleError::RruleTooFrequent { rule: "x".into() },
        ScheduleError::InvalidWindow { from: at, to: at },
        ScheduleError::HorizonTooLong {
            requested_days: 400,
            max_days: 366,
        },
        ScheduleError::TooManyOccurrences { limit: 10_000 },
        ScheduleError::TooMuchToCompute { limit: 1_000_000 },
    ];
    for err in errors {
        let vi = err.message_vi();
        let en = err.to_string();
        assert!(!en.is_empty());
        assert_ne!(vi, en);
        // Vietnamese text carries diacritics; a message without any is wrong.
        assert!(!vi.is_ascii(), "{vi}");
        assert!(!vi.contains('\n'), "{vi}");
    }
    assert_eq!(
        ScheduleError::UnknownTimezone("Asia/Hanoi".into()).message_vi(),
        "Múi giờ không tồn tại: «Asia/Hanoi». Hãy dùng tên múi giờ IANA, ví dụ Asia/Ho_Chi_Minh."
    );
    assert!(
        ScheduleError::InvalidStart { input: "x".into() }
            .message_vi()
            .starts_with("Thời điểm bắt đầu không hợp lệ")
    );
}

// ------------------------------------------------------------- examples

fn example_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    files
}

fn load_example(path: &PathBuf) -> Schedule {
    let text = std::fs::read_to_string(path).unwrap();
    let spec: ScheduleSpec =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let id = path.file_stem().unwrap().to_string_lossy().into_owned();
    let (schedule, targets) = spec
        .into_schedule(id)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(!targets.zones.is_empty() || !targets.receivers.is_empty());
    schedule
}

/// The instant a schedule's local start denotes.
fn start_instant(schedule: &Schedule) -> DateTime<Utc> {
    schedule
        .start
        .and_local_timezone(schedule.timezone)
        .earliest()
        .unwrap()
        .with_timezone(&Utc)
}

#[test]
fn every_example_file_parses_and_expands_over_seven_days() {
    let files = example_files();
    assert!(files.len() >= 4, "{files:?}");
    for path in &files {
        let schedule = load_example(path);
        let from = start_instant(&schedule);
        let to = from + TimeDelta::days(7);
        let events = schedule.expand(120_000, from, to).unwrap();
        assert!(!events.is_empty(), "{} plays nothing", path.display());
        for event in &events {
            assert!(from <= event.starts_at && event.starts_at < to);
            assert_eq!(event.schedule_id, schedule.id);
            assert_eq!(event.programme_id, schedule.programme_id);
        }
        // Events of one schedule never need the conflict rule among themselves
        // unless they overlap; the plan keeps all of them here.
        assert_eq!(crate::plan(&events).len(), events.len());
    }
}

#[test]
fn digital_transformation_bulletin_twice_a_week() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join("chuyen-doi-so-2-lan-tuan.json");
    let schedule = load_example(&path);
    assert_eq!(schedule.programme_id, "ban-tin-chuyen-doi-so");
    assert_eq!(schedule.timezone, chrono_tz::Asia::Ho_Chi_Minh);
    let from = start_instant(&schedule);
    let plays = schedule
        .occurrences(from, from + TimeDelta::days(28))
        .unwrap();
    assert_eq!(plays.len(), 8);
    let tz: Tz = schedule.timezone;
    for at in plays {
        let wall = at.with_timezone(&tz);
        assert_eq!(wall.format("%H:%M").to_string(), "06:30");
        assert!(
            ["Tue", "Fri"].contains(&wall.format("%a").to_string().as_str()),
            "{wall}"
        );
    }
}

//! Recurrence, time zone and horizon tests for [`Schedule`].

use chrono::{DateTime, Datelike, NaiveDateTime, TimeDelta, Timelike, Utc, Weekday};

use crate::{
    MAX_CANDIDATES_PER_PERIOD, MAX_HORIZON_DAYS, MAX_OCCURRENCES, MAX_SCANNED_OCCURRENCES,
    PlayEvent, Priority, Schedule, ScheduleError, parse_timezone,
};

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .with_timezone(&Utc)
}

fn local(text: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S").unwrap()
}

fn schedule(start: &str, tz: &str, rrule: Option<&str>) -> Schedule {
    Schedule {
        id: "s1".to_string(),
        programme_id: "ban-tin-chuyen-doi-so".to_string(),
        start: local(start),
        timezone: parse_timezone(tz).unwrap(),
        rrule: rrule.map(str::to_string),
        priority: Priority::Normal,
    }
}

fn vn(start: &str, rrule: &str) -> Schedule {
    schedule(start, "Asia/Ho_Chi_Minh", Some(rrule))
}

fn instants(texts: &[&str]) -> Vec<DateTime<Utc>> {
    texts.iter().map(|t| utc(t)).collect()
}

// ---------------------------------------------------------------- RRULE

#[test]
fn weekly_tuesday_friday_at_0630_vietnam_time() {
    // 2026-11-24 is a Tuesday.
    let s = vn("2026-11-24T06:30:00", "FREQ=WEEKLY;BYDAY=TU,FR");
    s.validate().unwrap();
    let got = s
        .occurrences(utc("2026-11-23T00:00:00Z"), utc("2026-12-07T00:00:00Z"))
        .unwrap();
    // 06:30 ICT (UTC+7) is 23:30Z on the previous day.
    assert_eq!(
        got,
        instants(&[
            "2026-11-23T23:30:00Z",
            "2026-11-26T23:30:00Z",
            "2026-11-30T23:30:00Z",
            "2026-12-03T23:30:00Z",
        ])
    );
    let tz = s.timezone;
    for at in got {
        let wall = at.with_timezone(&tz);
        assert!(matches!(wall.weekday(), Weekday::Tue | Weekday::Fri));
        assert_eq!((wall.hour(), wall.minute(), wall.second()), (6, 30, 0));
    }
}

#[test]
fn start_not_matching_the_rule_is_not_an_occurrence() {
    // 2026-11-23 is a Monday: the first play is on Tuesday.
    let s = vn("2026-11-23T06:30:00", "FREQ=WEEKLY;BYDAY=TU,FR");
    let got = s
        .occurrences(utc("2026-11-20T00:00:00Z"), utc("2026-11-28T00:00:00Z"))
        .unwrap();
    assert_eq!(
        got,
        instants(&["2026-11-23T23:30:00Z", "2026-11-26T23:30:00Z"])
    );
}

#[test]
fn nothing_before_the_start() {
    let s = vn("2026-11-24T06:30:00", "FREQ=DAILY");
    let got = s
        .occurrences(utc("2026-11-01T00:00:00Z"), utc("2026-11-25T00:00:00Z"))
        .unwrap();
    assert_eq!(
        got,
        instants(&["2026-11-23T23:30:00Z", "2026-11-24T23:30:00Z"])
    );
}

#[test]
fn daily_morning_programme_every_day() {
    let s = vn("2026-11-22T05:30:00", "FREQ=DAILY");
    let got = s
        .occurrences(utc("2026-11-22T00:00:00Z"), utc("2026-11-29T00:00:00Z"))
        .unwrap();
    // 05:30 ICT = 22:30Z the previous day; the 22nd's is before the window.
    assert_eq!(got.len(), 7);
    for (i, at) in got.iter().enumerate() {
        assert_eq!(
            *at,
            utc("2026-11-22T22:30:00Z") + TimeDelta::days(i as i64),
            "day {i}"
        );
    }
}

#[test]
fn count_limits_the_number_of_plays() {
    let s = vn("2026-11-24T06:30:00", "FREQ=DAILY;COUNT=3");
    let got = s
        .occurrences(utc("2026-11-01T00:00:00Z"), utc("2027-11-01T00:00:00Z"))
        .unwrap();
    assert_eq!(
        got,
        instants(&[
            "2026-11-23T23:30:00Z",
            "2026-11-24T23:30:00Z",
            "2026-11-25T23:30:00Z",
        ])
    );
    // COUNT counts from the start, not from the window.
    let later = s
        .occurrences(utc("2026-11-25T00:00:00Z"), utc("2027-11-01T00:00:00Z"))
        .unwrap();
    assert_eq!(later, got[2..]);
    let next = s.next_occurrences(utc("2026-11-01T00:00:00Z"), 10).unwrap();
    assert_eq!(next, got);
}

#[test]
fn until_in_utc_is_inclusive() {
    let s = vn("2026-11-24T06:30:00", "FREQ=DAILY;UNTIL=20261126T233000Z");
    let got = s
        .occurrences(utc("2026-11-01T00:00:00Z"), utc("2026-12-31T00:00:00Z"))
        .unwrap();
    assert_eq!(
        got,
        instants(&[
            "2026-11-23T23:30:00Z",
            "2026-11-24T23:30:00Z",
            "2026-11-25T23:30:00Z",
            "2026-11-26T23:30:00Z",
        ])
    );
}

#[test]
fn until_as_local_time_or_date_is_read_in_the_schedule_zone() {
    let window = (utc("2026-11-01T00:00:00Z"), utc("2026-12-31T00:00:00Z"));
    let count = |rule: &str| {
        vn("2026-11-24T06:30:00", rule)
            .occurrences(window.0, window.1)
            .unwrap()
            .len()
    };
    // Local 2026-11-26 06:30 is the third play: included.
    assert_eq!(count("FREQ=DAILY;UNTIL=20261126T063000"), 3);
    assert_eq!(count("FREQ=DAILY;UNTIL=20261126T062959"), 2);
    // A date means up to the end of that local day.
    assert_eq!(count("FREQ=DAILY;UNTIL=20261126"), 3);
    // The same local UNTIL in UTC would be 7 hours later: one more play.
    assert_eq!(count("FREQ=DAILY;UNTIL=20261126T063000Z"), 3);
    assert_eq!(count("FREQ=DAILY;UNTIL=20261126T233000Z"), 4);
}

#[test]
fn until_before_start_is_an_error() {
    let err = vn("2026-11-24T06:30:00", "FREQ=DAILY;UNTIL=20261120T000000Z")
        .validate()
        .unwrap_err();
    assert!(matches!(err, ScheduleError::InvalidRrule { .. }), "{err:?}");
}

#[test]
fn interval_skips_periods() {
    let every_other_tuesday = vn("2026-11-24T06:30:00", "FREQ=WEEKLY;INTERVAL=2;BYDAY=TU");
    let got = every_other_tuesday
        .occurrences(utc("2026-11-20T00:00:00Z"), utc("2027-01-01T00:00:00Z"))
        .unwrap();
    assert_eq!(
        got,
        instants(&[
            "2026-11-23T23:30:00Z",
            "2026-12-07T23:30:00Z",
            "2026-12-21T23:30:00Z",
        ])
    );
    let every_third_day = vn("2026-11-24T06:30:00", "FREQ=DAILY;INTERVAL=3");
    let got = every_third_day
        .occurrences(utc("2026-11-20T00:00:00Z"), utc("2026-12-02T00:00:00Z"))
        .unwrap();
    assert_eq!(
        got,
        instants(&[
            "2026-11-23T23:30:00Z",
            "2026-11-26T23:30:00Z",
            "2026-11-29T23:30:00Z",
        ])
    );
}

#[test]
fn monthly_first_monday() {
    let s = vn("2026-11-02T07:00:00", "FREQ=MONTHLY;BYDAY=1MO");
    let got = s
        .occurrences(utc("2026-11-01T00:00:00Z"), utc("2027-02-01T00:00:00Z"))
        .unwrap();
    assert_eq!(
        got,
        instants(&[
            "2026-11-02T00:00:00Z",
            "2026-12-07T00:00:00Z",
            "2027-01-04T00:00:00Z",
        ])
    );
}

#[test]
fn byhour_takes_minutes_from_start() {
    let s = vn("2026-11-24T06:30:00", "FREQ=WEEKLY;BYDAY=TU,FR;BYHOUR=6,17");
    let got = s
        .occurrences(utc("2026-11-23T00:00:00Z"), utc("2026-11-28T00:00:00Z"))
        .unwrap();
    // 06:30 and 17:30 local on Tue 24 and Fri 27.
    assert_eq!(
        got,
        instants(&[
            "2026-11-23T23:30:00Z",
            "2026-11-24T10:30:00Z",
            "2026-11-26T23:30:00Z",
            "2026-11-27T10:30:00Z",
        ])
    );
}

#[test]
fn byhour_byminute_is_a_cross_product() {
    let s = vn(
        "2026-11-24T06:00:00",
        "FREQ=WEEKLY;BYDAY=TU,FR;BYHOUR=6,17;BYMINUTE=30,0",
    );
    let got = s
        .occurrences(utc("2026-11-23T00:00:00Z"), utc("2026-11-25T00:00:00Z"))
        .unwrap();
    let tz = s.timezone;
    let walls: Vec<String> = got
        .iter()
        .map(|at| at.with_timezone(&tz).format("%H:%M").to_string())
        .collect();
    assert_eq!(walls, ["06:00", "06:30", "17:00", "17:30"]);
}

#[test]
fn bysetpos_picks_0630_and_1700_on_tuesdays_and_fridays() {
    let s = vn(
        "2026-11-24T06:30:00",
        "FREQ=DAILY;BYDAY=TU,FR;BYHOUR=6,17;BYMINUTE=0,30;BYSETPOS=2,3",
    );
    let got = s
        .occurrences(utc("2026-11-23T00:00:00Z"), utc("2026-12-02T00:00:00Z"))
        .unwrap();
    let tz = s.timezone;
    let walls: Vec<String> = got
        .iter()
        .map(|at| at.with_timezone(&tz).format("%a %d %H:%M").to_string())
        .collect();
    assert_eq!(
        walls,
        [
            "Tue 24 06:30",
            "Tue 24 17:00",
            "Fri 27 06:30",
            "Fri 27 17:00",
            "Tue 01 06:30",
            "Tue 01 17:00",
        ]
    );
}

#[test]
fn rrule_prefix_is_optional() {
    let window = (utc("2026-11-23T00:00:00Z"), utc("2026-12-07T00:00:00Z"));
    let bare = vn("2026-11-24T06:30:00", "FREQ=WEEKLY;BYDAY=TU,FR")
        .occurrences(window.0, window.1)
        .unwrap();
    for rule in [
        "RRULE:FREQ=WEEKLY;BYDAY=TU,FR",
        "rrule:FREQ=WEEKLY;BYDAY=TU,FR",
        "  RRULE: FREQ=WEEKLY;BYDAY=TU,FR  ",
    ] {
        let got = vn("2026-11-24T06:30:00", rule)
            .occurrences(window.0, window.1)
            .unwrap();
        assert_eq!(got, bare, "{rule:?}");
    }
}

#[test]
fn rejects_rules_that_bring_their_own_dtstart_or_lines() {
    let s = |rule: &str| vn("2026-11-24T06:30:00", rule).validate().unwrap_err();
    assert!(matches!(
        s("DTSTART:20261124T063000\nRRULE:FREQ=DAILY"),
        ScheduleError::RruleMultiline { .. }
    ));
    assert!(matches!(
        s("FREQ=DAILY\r\n"),
        ScheduleError::RruleMultiline { .. }
    ));
    assert!(matches!(
        s("DTSTART;TZID=Asia/Ho_Chi_Minh:20261124T063000 FREQ=DAILY"),
        ScheduleError::RruleHasDtstart { .. }
    ));
    assert!(matches!(
        s("FREQ=DAILY;dtstart=20261124T063000"),
        ScheduleError::RruleHasDtstart { .. }
    ));
    assert!(matches!(
        s("EXDATE:20261127T063000"),
        ScheduleError::InvalidRrule { .. }
    ));
}

#[test]
fn rejects_secondly_and_malformed_rules() {
    let err = |rule: &str| vn("2026-11-24T06:30:00", rule).validate().unwrap_err();
    for rule in [
        "FREQ=SECONDLY",
        "freq=secondly;COUNT=5",
        "COUNT=5; FREQ = SECONDLY",
    ] {
        assert!(
            matches!(err(rule), ScheduleError::RruleTooFrequent { .. }),
            "{rule}"
        );
    }
    for rule in [
        "",
        "   ",
        "RRULE:",
        "FREQ=FORTNIGHTLY",
        "FREQ=WEEKLY;BYDAY=XX",
        "BYDAY=TU",
        "FREQ=DAILY;BYHOUR=25",
        "FREQ=DAILY;COUNT=many",
        "FREQ=DAILY;UNTIL=tomorrow",
        "FREQ=DAILY;UNTIL=20260230",
        "hello world",
    ] {
        let e = err(rule);
        assert!(
            matches!(e, ScheduleError::InvalidRrule { .. }),
            "{rule:?}: {e:?}"
        );
        assert!(
            e.message_vi()
                .starts_with("Quy tắc lặp (RRULE) không hợp lệ"),
            "{}",
            e.message_vi()
        );
    }
}

// ----------------------------------------------------------- time zones

#[test]
fn vietnam_has_no_daylight_saving() {
    // Weekly over a whole year: always 23:30Z the day before, never shifted.
    let s = vn("2026-01-06T06:30:00", "FREQ=WEEKLY;BYDAY=TU");
    let got = s
        .occurrences(utc("2026-01-01T00:00:00Z"), utc("2027-01-01T00:00:00Z"))
        .unwrap();
    assert_eq!(got.len(), 52);
    for at in &got {
        assert_eq!((at.hour(), at.minute()), (23, 30), "{at}");
        assert_eq!(at.weekday(), Weekday::Mon, "{at}");
    }
}

#[test]
fn same_wall_time_in_another_zone_is_another_instant() {
    let in_utc = schedule("2026-11-24T06:30:00", "UTC", None);
    let in_vn = schedule("2026-11-24T06:30:00", "Asia/Ho_Chi_Minh", None);
    let window = (utc("2026-11-23T00:00:00Z"), utc("2026-11-25T00:00:00Z"));
    assert_eq!(
        in_utc.occurrences(window.0, window.1).unwrap(),
        instants(&["2026-11-24T06:30:00Z"])
    );
    assert_eq!(
        in_vn.occurrences(window.0, window.1).unwrap(),
        instants(&["2026-11-23T23:30:00Z"])
    );
}

#[test]
fn berlin_keeps_wall_clock_time_across_daylight_saving() {
    let s = schedule(
        "2026-03-01T06:30:00",
        "Europe/Berlin",
        Some("FREQ=WEEKLY;BYDAY=SU"),
    );
    let got = s
        .occurrences(utc("2026-03-20T00:00:00Z"), utc("2026-04-06T00:00:00Z"))
        .unwrap();
    // CET (UTC+1) until 2026-03-29 02:00, then CEST (UTC+2).
    assert_eq!(
        got,
        instants(&[
            "2026-03-22T05:30:00Z",
            "2026-03-29T04:30:00Z",
            "2026-04-05T04:30:00Z",
        ])
    );
    let got = s
        .occurrences(utc("2026-10-15T00:00:00Z"), utc("2026-11-02T00:00:00Z"))
        .unwrap();
    // Back to CET on 2026-10-25.
    assert_eq!(
        got,
        instants(&[
            "2026-10-18T04:30:00Z",
            "2026-10-25T05:30:00Z",
            "2026-11-01T05:30:00Z",
        ])
    );
}

#[test]
fn start_in_a_daylight_saving_gap_is_an_error() {
    let s = schedule("2026-03-29T02:30:00", "Europe/Berlin", None);
    let err = s.validate().unwrap_err();
    assert_eq!(
        err,
        ScheduleError::NonexistentLocalTime {
            start: local("2026-03-29T02:30:00"),
            timezone: "Europe/Berlin".to_string(),
        }
    );
    assert!(
        err.message_vi()
            .starts_with("Thời điểm bắt đầu không hợp lệ")
    );
    assert!(
        s.occurrences(utc("2026-03-01T00:00:00Z"), utc("2026-04-01T00:00:00Z"))
            .is_err()
    );
    let recurring = schedule("2026-03-29T02:30:00", "Europe/Berlin", Some("FREQ=DAILY"));
    assert!(matches!(
        recurring.validate(),
        Err(ScheduleError::NonexistentLocalTime { .. })
    ));
}

#[test]
fn ambiguous_start_takes_the_earlier_instant() {
    // 02:30 happens twice on 2026-10-25 in Berlin: 00:30Z (CEST) and 01:30Z (CET).
    let s = schedule("2026-10-25T02:30:00", "Europe/Berlin", None);
    assert_eq!(
        s.occurrences(utc("2026-10-24T00:00:00Z"), utc("2026-10-26T00:00:00Z"))
            .unwrap(),
        instants(&["2026-10-25T00:30:00Z"])
    );
}

#[test]
fn repetitions_through_gap_and_overlap_follow_rfc5545() {
    let s = schedule("2026-03-27T02:30:00", "Europe/Berlin", Some("FREQ=DAILY"));
    let got = s
        .occurrences(utc("2026-03-27T00:00:00Z"), utc("2026-03-31T00:00:00Z"))
        .unwrap();
    // 02:30 does not exist on the 29th: read with the offset before the gap
    // (CET), i.e. 03:30 CEST = 01:30Z.
    assert_eq!(
        got,
        instants(&[
            "2026-03-27T01:30:00Z",
            "2026-03-28T01:30:00Z",
            "2026-03-29T01:30:00Z",
            "2026-03-30T00:30:00Z",
        ])
    );
    let s = schedule("2026-10-24T02:30:00", "Europe/Berlin", Some("FREQ=DAILY"));
    let got = s
        .occurrences(utc("2026-10-24T00:00:00Z"), utc("2026-10-27T00:00:00Z"))
        .unwrap();
    // On the 25th 02:30 happens twice: only the first (CEST) plays.
    assert_eq!(
        got,
        instants(&[
            "2026-10-24T00:30:00Z",
            "2026-10-25T00:30:00Z",
            "2026-10-26T01:30:00Z",
        ])
    );
}

#[test]
fn times_shifted_out_of_a_gap_are_sorted_and_unique() {
    // BYMINUTE=0,45 at 02h: 02:00 and 02:45 fall in the gap on 2026-03-29 and
    // are shifted to 03:00 and 03:45 CEST, which 03:00 (BYHOUR=3) also gives.
    let s = schedule(
        "2026-03-28T02:00:00",
        "Europe/Berlin",
        Some("FREQ=DAILY;BYHOUR=2,3;BYMINUTE=0,45"),
    );
    let got = s
        .occurrences(utc("2026-03-29T00:00:00Z"), utc("2026-03-29T12:00:00Z"))
        .unwrap();
    assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
    assert_eq!(
        got,
        instants(&["2026-03-29T01:00:00Z", "2026-03-29T01:45:00Z"])
    );
    let next = s.next_occurrences(utc("2026-03-29T00:00:00Z"), 2).unwrap();
    assert_eq!(next, got);
}

// -------------------------------------------------------------- horizons

#[test]
fn window_is_half_open() {
    let s = vn("2026-11-24T06:30:00", "FREQ=DAILY");
    let at = utc("2026-11-24T23:30:00Z");
    assert_eq!(
        s.occurrences(at, at + TimeDelta::days(1)).unwrap(),
        vec![at],
        "an occurrence at `from` is included, one at `to` is not"
    );
    assert_eq!(
        s.occurrences(at - TimeDelta::days(1), at).unwrap(),
        vec![at - TimeDelta::days(1)]
    );
    assert!(
        s.occurrences(at + TimeDelta::milliseconds(1), at + TimeDelta::days(1))
            .unwrap()
            .is_empty()
    );
    assert!(s.occurrences(at, at).unwrap().is_empty());
}

#[test]
fn one_off_plays_once_inside_the_window_only() {
    let s = schedule("2026-11-24T06:30:00", "Asia/Ho_Chi_Minh", None);
    s.validate().unwrap();
    let at = utc("2026-11-23T23:30:00Z");
    assert_eq!(
        s.occurrences(at - TimeDelta::days(7), at + TimeDelta::days(7))
            .unwrap(),
        vec![at]
    );
    assert!(
        s.occurrences(at + TimeDelta::seconds(1), at + TimeDelta::days(7))
            .unwrap()
            .is_empty()
    );
    assert!(
        s.occurrences(at - TimeDelta::days(7), at)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn reversed_or_too_long_windows_are_errors() {
    let s = vn("2026-11-24T06:30:00", "FREQ=DAILY");
    let from = utc("2026-11-24T00:00:00Z");
    assert_eq!(
        s.occurrences(from, from - TimeDelta::seconds(1)),
        Err(ScheduleError::InvalidWindow {
            from,
            to: from - TimeDelta::seconds(1)
        })
    );
    let longest = s
        .occurrences(from, from + TimeDelta::days(MAX_HORIZON_DAYS))
        .unwrap();
    assert_eq!(longest.len(), MAX_HORIZON_DAYS as usize);
    assert_eq!(
        s.occurrences(
            from,
            from + TimeDelta::days(MAX_HORIZON_DAYS) + TimeDelta::seconds(1)
        ),
        Err(ScheduleError::HorizonTooLong {
            requested_days: MAX_HORIZON_DAYS + 1,
            max_days: MAX_HORIZON_DAYS
        })
    );
}

#[test]
fn too_many_occurrences_is_an_error_not_a_cut() {
    let s = vn("2026-11-24T00:00:00", "FREQ=MINUTELY");
    let from = utc("2026-11-24T00:00:00Z");
    // 6 days of minutes = 8640, under the cap.
    assert_eq!(
        s.occurrences(from, from + TimeDelta::days(6))
            .unwrap()
            .len(),
        8640
    );
    assert_eq!(
        s.occurrences(from, from + TimeDelta::days(7)),
        Err(ScheduleError::TooManyOccurrences {
            limit: MAX_OCCURRENCES
        })
    );
    assert!(matches!(
        s.next_occurrences(from, MAX_OCCURRENCES + 1),
        Err(ScheduleError::TooManyOccurrences { .. })
    ));
    assert_eq!(
        s.next_occurrences(from, MAX_OCCURRENCES).unwrap().len(),
        MAX_OCCURRENCES
    );
}

#[test]
fn dense_rule_started_long_ago_is_refused() {
    // Every minute since 2023: millions of repetitions before 2026.
    let s = vn("2023-01-01T00:00:00", "FREQ=MINUTELY");
    let from = utc("2026-11-24T00:00:00Z");
    assert_eq!(
        s.occurrences(from, from + TimeDelta::hours(1)),
        Err(ScheduleError::TooMuchToCompute {
            limit: MAX_SCANNED_OCCURRENCES
        })
    );
    assert!(matches!(
        s.next_occurrences(from, 1),
        Err(ScheduleError::TooMuchToCompute { .. })
    ));
}

/// Found by fuzzing (`fuzz/`, target `schedule`): the recurrence engine
/// builds a whole period before yielding anything, so a yearly rule with
/// every month, day, hour, minute and second allocated 31.6 million instants
/// (about 1.5 GB and seconds of CPU) for a single `POST /schedules`.
#[test]
fn rules_with_too_many_times_in_one_period_are_refused() {
    let list =
        |range: std::ops::Range<u32>| range.map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    let every_second_of_the_year = format!(
        "FREQ=YEARLY;BYMONTH={};BYMONTHDAY={};BYHOUR={};BYMINUTE={};BYSECOND={}",
        list(1..13),
        list(1..32),
        list(0..24),
        list(0..60),
        list(0..60)
    );
    let every_second_of_the_month = format!(
        "FREQ=MONTHLY;BYHOUR={};BYMINUTE={};BYSECOND={}",
        list(0..24),
        list(0..60),
        list(0..60)
    );
    for rule in [
        every_second_of_the_year.as_str(),
        every_second_of_the_month.as_str(),
        // 7 days × 24 × 60 = 10 080 times a week.
        &format!(
            "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR,SA,SU;BYHOUR={};BYMINUTE={}",
            list(0..24),
            list(0..60)
        ),
        // 60 × 60 = 3600 times on each 1st of the month, 12 a year.
        &format!(
            "FREQ=YEARLY;BYMONTHDAY=1;BYMINUTE={};BYSECOND={}",
            list(0..60),
            list(0..60)
        ),
    ] {
        let e = vn("2026-01-01T00:00:00", rule).validate().unwrap_err();
        assert!(
            matches!(&e, ScheduleError::InvalidRrule { reason, .. } if reason.contains(&MAX_CANDIDATES_PER_PERIOD.to_string())),
            "{rule}: {e:?}"
        );
        assert!(
            e.message_vi()
                .starts_with("Quy tắc lặp (RRULE) không hợp lệ")
        );
    }
    // Dense but legitimate rules stay accepted: every minute of a day
    // (1440), every second of an hour (3600), twice a day all year (732),
    // and a yearly rule on its start date with many times (1 day × 1440).
    for rule in [
        &format!("FREQ=DAILY;BYHOUR={};BYMINUTE={}", list(0..24), list(0..60)),
        &format!(
            "FREQ=HOURLY;BYMINUTE={};BYSECOND={}",
            list(0..60),
            list(0..60)
        ),
        "FREQ=YEARLY;BYDAY=MO,TU,WE,TH,FR,SA,SU;BYHOUR=6,17",
        &format!(
            "FREQ=YEARLY;BYHOUR={};BYMINUTE={}",
            list(0..24),
            list(0..60)
        ),
    ] {
        let s = vn("2026-01-01T00:00:00", rule);
        assert_eq!(s.validate(), Ok(()), "{rule}");
    }
}

/// Found by fuzzing (`fuzz/`, target `schedule`): the `rrule` crate
/// panicked on a BYDAY value ending inside a multi-byte character, which a
/// Vietnamese keyboard types easily (`thứ` = weekday); the API handler
/// panicked instead of answering.
#[test]
fn non_ascii_rules_are_refused_not_a_panic() {
    for rule in [
        "FREQ=WEEKLY;BYDAY=thứ",
        "FREQ=DAILY;BYDAY=TU\u{539}R",
        "FREQ=WEEKLY;BYDAY=TU,Fℝ",
        "FREQ=MONTHLY;BYMONTHDAY=１",
    ] {
        let e = vn("2026-11-24T06:30:00", rule).validate().unwrap_err();
        assert!(
            matches!(&e, ScheduleError::InvalidRrule { reason, .. } if reason.contains("ASCII")),
            "{rule}: {e:?}"
        );
        assert!(
            e.message_vi()
                .starts_with("Quy tắc lặp (RRULE) không hợp lệ")
        );
    }
}

#[test]
fn daily_schedule_started_decades_ago_still_expands() {
    let s = vn("2001-01-01T05:30:00", "FREQ=DAILY");
    let from = utc("2026-11-22T00:00:00Z");
    let got = s.occurrences(from, from + TimeDelta::days(7)).unwrap();
    assert_eq!(got.len(), 7);
    assert_eq!(got[0], utc("2026-11-22T22:30:00Z"));
}

// ------------------------------------------------------- next_occurrences

#[test]
fn next_occurrences_are_strictly_after() {
    let s = vn("2026-11-24T06:30:00", "FREQ=WEEKLY;BYDAY=TU,FR");
    let first = utc("2026-11-23T23:30:00Z");
    assert_eq!(
        s.next_occurrences(first - TimeDelta::seconds(1), 3)
            .unwrap(),
        instants(&[
            "2026-11-23T23:30:00Z",
            "2026-11-26T23:30:00Z",
            "2026-11-30T23:30:00Z",
        ])
    );
    assert_eq!(
        s.next_occurrences(first, 2).unwrap(),
        instants(&["2026-11-26T23:30:00Z", "2026-11-30T23:30:00Z"])
    );
    // Far in the future: found without a window.
    assert_eq!(
        s.next_occurrences(utc("2030-01-01T00:00:00Z"), 1).unwrap(),
        instants(&["2030-01-03T23:30:00Z"]) // Friday 2030-01-04 06:30 ICT
    );
    assert!(s.next_occurrences(first, 0).unwrap().is_empty());
}

#[test]
fn next_occurrences_of_finite_and_one_off_schedules() {
    let once = schedule("2026-11-24T06:30:00", "Asia/Ho_Chi_Minh", None);
    let at = utc("2026-11-23T23:30:00Z");
    assert_eq!(
        once.next_occurrences(at - TimeDelta::days(1), 5).unwrap(),
        vec![at]
    );
    assert!(once.next_occurrences(at, 5).unwrap().is_empty());

    let twice = vn("2026-11-24T06:30:00", "FREQ=YEARLY;COUNT=2");
    assert_eq!(
        twice.next_occurrences(at - TimeDelta::days(1), 5).unwrap(),
        instants(&["2026-11-23T23:30:00Z", "2027-11-23T23:30:00Z"])
    );
}

// ----------------------------------------------------------------- expand

#[test]
fn expand_makes_identified_events() {
    let mut s = vn("2026-11-24T06:30:00", "FREQ=WEEKLY;BYDAY=TU,FR");
    s.priority = Priority::Priority;
    let from = utc("2026-11-23T00:00:00Z");
    let events = s.expand(95_000, from, from + TimeDelta::days(7)).unwrap();
    assert_eq!(events.len(), 2);
    for event in &events {
        assert_eq!(event.schedule_id, "s1");
        assert_eq!(event.programme_id, "ban-tin-chuyen-doi-so");
        assert_eq!(event.duration_ms, 95_000);
        assert_eq!(event.priority, Priority::Priority);
        assert_eq!(
            event.id,
            format!("s1@{}", event.starts_at.timestamp_millis())
        );
        assert_eq!(
            event.natural_end(),
            event.starts_at + TimeDelta::seconds(95)
        );
    }
    assert_eq!(events[0].starts_at, utc("2026-11-23T23:30:00Z"));
    assert_eq!(events[0].id, "s1@1795476600000");
    // Expanding an overlapping window gives the same ids for the same plays.
    let again = s
        .expand(
            95_000,
            from + TimeDelta::days(3),
            from + TimeDelta::days(10),
        )
        .unwrap();
    assert_eq!(again[0], events[1]);
}

#[test]
fn expand_excludes_plays_started_before_the_window() {
    let s = schedule("2026-11-24T06:30:00", "Asia/Ho_Chi_Minh", None);
    let at = utc("2026-11-23T23:30:00Z");
    // Still playing at `from`, but it started before: not included.
    let events = s
        .expand(600_000, at + TimeDelta::minutes(5), at + TimeDelta::days(1))
        .unwrap();
    assert!(events.is_empty());
}

#[test]
fn natural_end_saturates_on_absurd_duration() {
    let event = PlayEvent {
        id: "x@0".into(),
        schedule_id: "x".into(),
        programme_id: "p".into(),
        starts_at: utc("2026-11-24T00:00:00Z"),
        duration_ms: u64::MAX,
        priority: Priority::Normal,
    };
    assert_eq!(event.natural_end(), DateTime::<Utc>::MAX_UTC);
}

// --------------------------------------------------------------- validate

#[test]
fn validate_rejects_empty_ids_and_out_of_range_starts() {
    let mut s = vn("2026-11-24T06:30:00", "FREQ=DAILY");
    s.id = " ".into();
    assert_eq!(
        s.validate(),
        Err(ScheduleError::MissingField { field: "id" })
    );
    let mut s = vn("2026-11-24T06:30:00", "FREQ=DAILY");
    s.programme_id.clear();
    assert_eq!(
        s.validate(),
        Err(ScheduleError::MissingField {
            field: "programme_id"
        })
    );
    let s = schedule(
        "1900-01-01T06:30:00",
        "Asia/Ho_Chi_Minh",
        Some("FREQ=DAILY"),
    );
    assert!(matches!(
        s.validate(),
        Err(ScheduleError::StartOutOfRange { .. })
    ));
}

#[test]
fn schedule_round_trips_through_json() {
    let s = vn("2026-11-24T06:30:00", "FREQ=WEEKLY;BYDAY=TU,FR");
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["timezone"], "Asia/Ho_Chi_Minh");
    assert_eq!(json["start"], "2026-11-24T06:30:00");
    let back: Schedule = serde_json::from_value(json).unwrap();
    assert_eq!(back, s);
}

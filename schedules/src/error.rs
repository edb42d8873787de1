//! Everything that can be wrong with a schedule a user sends, as one typed
//! error. `Display` is English (for logs and developers); [`ScheduleError::message_vi`]
//! is the Vietnamese explanation a commune officer sees in the web UI / API.

use chrono::{DateTime, NaiveDateTime, Utc};

/// Why a schedule cannot be accepted or expanded. Every variant is caused by
/// user input (or by asking for an unreasonable amount of work), so an API
/// maps all of them to a 4xx answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The time zone name is not in the IANA database shipped with chrono-tz.
    #[error("unknown time zone {0:?}: expected an IANA name such as Asia/Ho_Chi_Minh")]
    UnknownTimezone(String),

    /// The `start` text is not a local date-time like `2026-11-24T06:30:00`.
    #[error("invalid start {input:?}: expected local wall time like 2026-11-24T06:30:00")]
    InvalidStart {
        /// What the user sent, to quote it back.
        input: String,
    },

    /// The `start` text carries a UTC offset or `Z`; `start` is local wall
    /// time and the zone comes from `timezone`.
    #[error(
        "start {input:?} has a UTC offset or 'Z', but start is local wall time: drop the offset and set `timezone` instead"
    )]
    StartHasOffset {
        /// What the user sent, to quote it back.
        input: String,
    },

    /// The start year is outside the range Loa accepts.
    #[error("start {start} is out of range: the year must be between {min_year} and {max_year}")]
    StartOutOfRange {
        /// The local start the user asked for.
        start: NaiveDateTime,
        /// Earliest accepted year.
        min_year: i32,
        /// Latest accepted year.
        max_year: i32,
    },

    /// The local start falls into a daylight-saving gap (the clock skips it).
    #[error(
        "start {start} does not exist in time zone {timezone} (skipped by a daylight-saving change)"
    )]
    NonexistentLocalTime {
        /// The local wall time the user asked for.
        start: NaiveDateTime,
        /// The zone in which it does not exist.
        timezone: String,
    },

    /// A required text field is empty.
    #[error("{field} must not be empty")]
    MissingField {
        /// Name of the field as it appears in the API (`programme_id`, ...).
        field: &'static str,
    },

    /// The schedule is aimed at no zone and no receiver.
    #[error("a schedule needs at least one target zone or receiver")]
    NoTargets,

    /// The RRULE text was rejected by the RFC 5545 parser or validator.
    #[error("invalid recurrence rule (RRULE) {rule:?}: {reason}")]
    InvalidRrule {
        /// The rule as the user sent it.
        rule: String,
        /// The parser's explanation (English, technical).
        reason: String,
    },

    /// The RRULE text contains DTSTART; Loa builds DTSTART from `start` and
    /// `timezone`, so a second one would be ambiguous.
    #[error(
        "recurrence rule {rule:?} must not contain DTSTART: the start comes from `start` and `timezone`"
    )]
    RruleHasDtstart {
        /// The rule as the user sent it.
        rule: String,
    },

    /// The RRULE text spans several lines (RDATE, EXDATE, a second RRULE...).
    #[error("recurrence rule {rule:?} must be a single RRULE value without line breaks")]
    RruleMultiline {
        /// The rule as the user sent it.
        rule: String,
    },

    /// `FREQ=SECONDLY` would make a loudspeaker start every second.
    #[error("recurrence rule {rule:?} repeats every second (FREQ=SECONDLY), which is not allowed")]
    RruleTooFrequent {
        /// The rule as the user sent it.
        rule: String,
    },

    /// The time window asked for ends before it starts.
    #[error("invalid time window: {to} is before {from}")]
    InvalidWindow {
        /// Requested window start.
        from: DateTime<Utc>,
        /// Requested window end (before `from`).
        to: DateTime<Utc>,
    },

    /// The time window asked for is longer than the expansion horizon cap.
    #[error("time window of {requested_days} days is longer than the maximum of {max_days} days")]
    HorizonTooLong {
        /// Length of the requested window in whole days (rounded up).
        requested_days: i64,
        /// The cap ([`crate::MAX_HORIZON_DAYS`]).
        max_days: i64,
    },

    /// Expanding the schedule would produce more occurrences than allowed.
    #[error("the schedule produces more than {limit} occurrences in the requested window")]
    TooManyOccurrences {
        /// The cap ([`crate::MAX_OCCURRENCES`]).
        limit: usize,
    },

    /// The recurrence would have to be stepped through too many times from
    /// its start before reaching the window (a very dense rule started long ago).
    #[error(
        "the schedule repeats too often since its start: more than {limit} occurrences would have to be computed; move the start closer or repeat less often"
    )]
    TooMuchToCompute {
        /// The cap ([`crate::MAX_SCANNED_OCCURRENCES`]).
        limit: usize,
    },
}

impl ScheduleError {
    /// The explanation shown to a commune officer, in Vietnamese.
    pub fn message_vi(&self) -> String {
        match self {
            ScheduleError::UnknownTimezone(name) => format!(
                "Múi giờ không tồn tại: «{name}». Hãy dùng tên múi giờ IANA, ví dụ Asia/Ho_Chi_Minh."
            ),
            ScheduleError::InvalidStart { input } => format!(
                "Thời điểm bắt đầu không hợp lệ: «{input}». Hãy nhập giờ địa phương theo dạng 2026-11-24T06:30:00."
            ),
            ScheduleError::StartHasOffset { input } => format!(
                "Thời điểm bắt đầu không hợp lệ: «{input}» có kèm múi giờ (Z hoặc +07:00). \
                 Thời điểm bắt đầu là giờ địa phương; hãy bỏ phần múi giờ và chọn múi giờ ở trường timezone."
            ),
            ScheduleError::StartOutOfRange {
                start,
                min_year,
                max_year,
            } => format!(
                "Thời điểm bắt đầu không hợp lệ: {} nằm ngoài khoảng cho phép (năm từ {min_year} đến {max_year}).",
                start.format("%Y-%m-%dT%H:%M:%S")
            ),
            ScheduleError::NonexistentLocalTime { start, timezone } => format!(
                "Thời điểm bắt đầu không hợp lệ: {} không tồn tại ở múi giờ {timezone} \
                 (đồng hồ nhảy qua giờ này khi chuyển sang giờ mùa hè). Hãy chọn giờ khác.",
                start.format("%Y-%m-%dT%H:%M:%S")
            ),
            ScheduleError::MissingField { field } => {
                format!("Thiếu thông tin bắt buộc: trường «{field}» không được để trống.")
            }
            ScheduleError::NoTargets => {
                "Lịch phát phải chọn ít nhất một khu vực (thôn, xóm) hoặc một loa nhận.".to_string()
            }
            ScheduleError::InvalidRrule { rule, reason } => {
                format!("Quy tắc lặp (RRULE) không hợp lệ: «{rule}». Chi tiết kỹ thuật: {reason}")
            }
            ScheduleError::RruleHasDtstart { rule } => format!(
                "Quy tắc lặp (RRULE) không hợp lệ: «{rule}» không được chứa DTSTART; \
                 thời điểm bắt đầu lấy từ trường start và timezone."
            ),
            ScheduleError::RruleMultiline { rule } => format!(
                "Quy tắc lặp (RRULE) không hợp lệ: «{}» phải là một dòng duy nhất \
                 (không xuống dòng, không kèm RDATE/EXDATE).",
                rule.escape_debug()
            ),
            ScheduleError::RruleTooFrequent { rule } => format!(
                "Quy tắc lặp (RRULE) không hợp lệ: «{rule}» lặp lại mỗi giây (FREQ=SECONDLY), không được phép."
            ),
            ScheduleError::InvalidWindow { from, to } => format!(
                "Khoảng thời gian không hợp lệ: thời điểm kết thúc {} đứng trước thời điểm bắt đầu {}.",
                to.to_rfc3339(),
                from.to_rfc3339()
            ),
            ScheduleError::HorizonTooLong {
                requested_days,
                max_days,
            } => format!(
                "Khoảng thời gian quá dài: {requested_days} ngày, tối đa cho phép là {max_days} ngày."
            ),
            ScheduleError::TooManyOccurrences { limit } => format!(
                "Lịch phát tạo ra quá nhiều lần phát (hơn {limit} lần) trong khoảng thời gian yêu cầu. \
                 Hãy giảm tần suất lặp."
            ),
            ScheduleError::TooMuchToCompute { limit } => format!(
                "Lịch phát lặp lại quá dày kể từ thời điểm bắt đầu (phải tính hơn {limit} lần phát). \
                 Hãy chọn thời điểm bắt đầu gần hơn hoặc giảm tần suất lặp."
            ),
        }
    }
}

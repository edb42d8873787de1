//! Reports for officers, by unit and by week (Monday to Sunday, Vietnam
//! time), as JSON or CSV (`format=csv`):
//!
//! - `GET /api/v1/reports/plays?week=2026-W48&unit=ID` — proof of play:
//!   every play under the unit in that week with receiver, zone, commune
//!   and programme names, totals by outcome, by zone and by day;
//! - `GET /api/v1/reports/bulletins?weeks=8&unit=ID&category=chuyen-doi-so&target=2`
//!   — the digital-transformation bulletin report: for each commune (each
//!   unit owning zones) and each of the last `weeks` weeks, how many
//!   bulletins of the category played to completion on at least one of its
//!   receivers (distinct occurrences), and whether the local plan's target
//!   (at least `target` a week, default 2) was met.
//!
//! `unit` defaults to the caller's unit and must be in their scope. A
//! category matches without regard to case, diacritics or separators
//! ("Chuyển đổi số" = `chuyen-doi-so`).

use std::collections::{BTreeMap, HashMap, HashSet};

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc, Weekday};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::access::{self, Scope};
use super::{ApiError, ApiQuery};
use crate::auth::AuthUser;
use crate::db::from_ms;
use crate::state::AppState;

/// The category of the digital-transformation bulletin.
pub const DIGITAL_TRANSFORMATION: &str = "chuyen-doi-so";
/// Bulletins a week the local plans ask of each commune.
pub const DEFAULT_TARGET: i64 = 2;
/// Most weeks one bulletin report covers.
const MAX_WEEKS: i64 = 53;

/// Routes of this resource.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/reports/plays", get(plays))
        .route("/reports/bulletins", get(bulletins))
}

fn tz() -> Tz {
    loa_schedules::parse_timezone(loa_schedules::DEFAULT_TIMEZONE).unwrap_or(chrono_tz::UTC)
}

/// Lower-case ASCII with Vietnamese diacritics removed and every run of
/// other characters turned into one `-`: "Chuyển đổi số" → "chuyen-doi-so".
pub fn fold(text: &str) -> String {
    const GROUPS: [(&str, char); 7] = [
        ("àáảãạăằắẳẵặâầấẩẫậ", 'a'),
        ("èéẻẽẹêềếểễệ", 'e'),
        ("ìíỉĩị", 'i'),
        ("òóỏõọôồốổỗộơờớởỡợ", 'o'),
        ("ùúủũụưừứửữự", 'u'),
        ("ỳýỷỹỵ", 'y'),
        ("đ", 'd'),
    ];
    let mut out = String::new();
    let mut dash = false;
    for c in text.chars().flat_map(char::to_lowercase) {
        let c = GROUPS
            .iter()
            .find(|(g, _)| g.contains(c))
            .map_or(c, |(_, base)| *base);
        if c.is_ascii_alphanumeric() {
            if dash && !out.is_empty() {
                out.push('-');
            }
            dash = false;
            out.push(c);
        } else {
            dash = true;
        }
    }
    out
}

/// The Monday (local date) of the ISO week `text` (`2026-W48`).
fn parse_week(text: &str) -> Result<NaiveDate, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "invalid_week",
            format!("week {text:?} must look like 2026-W48"),
            format!("Tuần \"{text}\" không hợp lệ; hãy dùng dạng 2026-W48."),
        )
    };
    let (y, w) = text.trim().split_once("-W").ok_or_else(bad)?;
    let (y, w) = (
        y.parse::<i32>().map_err(|_| bad())?,
        w.parse::<u32>().map_err(|_| bad())?,
    );
    NaiveDate::from_isoywd_opt(y, w, Weekday::Mon).ok_or_else(bad)
}

/// `2026-W48` for the week holding `date`.
fn week_label(date: NaiveDate) -> String {
    let w = date.iso_week();
    format!("{}-W{:02}", w.year(), w.week())
}

/// The UTC instant of local midnight starting `date`.
fn local_midnight(date: NaiveDate) -> DateTime<Utc> {
    let naive = date.and_hms_opt(0, 0, 0).unwrap_or_default();
    tz().from_local_datetime(&naive)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| Utc.from_utc_datetime(&naive))
}

/// The Monday of the current local week.
fn this_monday() -> NaiveDate {
    let today = Utc::now().with_timezone(&tz()).date_naive();
    today - Duration::days(i64::from(today.weekday().num_days_from_monday()))
}

fn check_format(format: Option<&str>) -> Result<bool, ApiError> {
    match format.map(str::trim) {
        None | Some("") | Some("json") => Ok(false),
        Some("csv") => Ok(true),
        Some(other) => Err(ApiError::bad_request(
            "invalid_format",
            format!("format={other:?}: expected json or csv"),
            "Định dạng xuất không hợp lệ: chỉ hỗ trợ json hoặc csv.",
        )),
    }
}

/// The unit a report is about: `unit` if given (and in scope), else the
/// user's own.
async fn report_unit(
    state: &AppState,
    user: &AuthUser,
    unit: Option<&str>,
) -> Result<(access::Unit, Scope, HashMap<String, access::Unit>), ApiError> {
    let units = access::all_units(&state.db).await?;
    let mine = Scope::within(&units, &user.unit_id);
    let id = unit
        .filter(|u| !u.trim().is_empty())
        .unwrap_or(&user.unit_id);
    let Some(u) = units.get(id).filter(|_| mine.covers(Some(id))) else {
        return Err(ApiError::not_found("unit", "đơn vị", id));
    };
    let scope = Scope::within(&units, id);
    Ok((u.clone(), scope, units))
}

fn csv_response(body: Vec<u8>, name: &'static str) -> Response {
    let mut r = body.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CONTENT_DISPOSITION, HeaderValue::from_static(name));
    r
}

/// Query of `GET /reports/plays`.
#[derive(Deserialize)]
struct PlaysQuery {
    #[serde(default)]
    week: Option<String>,
    #[serde(default)]
    unit: Option<String>,
    #[serde(default)]
    format: Option<String>,
}

/// One play, with names.
#[derive(Serialize)]
struct PlayLine {
    receiver_id: String,
    receiver_name: Option<String>,
    zone_id: Option<String>,
    zone_name: Option<String>,
    unit_id: Option<String>,
    unit_name: Option<String>,
    programme_id: String,
    title: Option<String>,
    category: Option<String>,
    schedule_id: String,
    scheduled_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    ended_at: Option<DateTime<Utc>>,
    outcome: String,
}

/// Plays counted by outcome.
#[derive(Serialize, Default, Clone)]
struct Counts {
    completed: i64,
    preempted: i64,
    missed: i64,
    failed: i64,
    total: i64,
}

impl Counts {
    fn add(&mut self, outcome: &str) {
        self.total += 1;
        match outcome {
            "completed" => self.completed += 1,
            "preempted" => self.preempted += 1,
            "missed" => self.missed += 1,
            _ => self.failed += 1,
        }
    }
}

/// One zone's line of the proof-of-play report.
#[derive(Serialize)]
struct ZoneLine {
    zone_id: String,
    zone_name: Option<String>,
    unit_name: Option<String>,
    #[serde(flatten)]
    counts: Counts,
}

/// Answer of `GET /reports/plays`.
#[derive(Serialize)]
struct PlaysReport {
    week: String,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    unit: access::Unit,
    totals: Counts,
    by_zone: Vec<ZoneLine>,
    /// Monday first.
    by_day: Vec<Counts>,
    plays: Vec<PlayLine>,
}

type PlayRow = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
    String,
    i64,
    Option<i64>,
    Option<i64>,
    String,
);

async fn plays(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(q): ApiQuery<PlaysQuery>,
) -> Result<Response, ApiError> {
    let csv = check_format(q.format.as_deref())?;
    let monday = match q.week.as_deref().filter(|w| !w.trim().is_empty()) {
        Some(w) => parse_week(w)?,
        None => this_monday(),
    };
    let (unit, scope, units) = report_unit(&state, &user, q.unit.as_deref()).await?;
    let from = local_midnight(monday);
    let to = local_midnight(monday + Duration::days(7));
    let rows: Vec<PlayRow> = sqlx::query_as(
        "SELECT p.receiver_id, r.name, r.zone_id, z.name, COALESCE(z.unit_id, 'root'), \
                p.programme_id, g.title, g.category, p.schedule_id, p.scheduled_at, \
                p.started_at, p.ended_at, p.outcome \
         FROM plays p \
         LEFT JOIN receivers r ON r.id = p.receiver_id \
         LEFT JOIN zones z ON z.id = r.zone_id \
         LEFT JOIN programmes g ON g.id = p.programme_id \
         WHERE p.scheduled_at >= $1 AND p.scheduled_at < $2 \
         ORDER BY p.scheduled_at, p.receiver_id",
    )
    .bind(from.timestamp_millis())
    .bind(to.timestamp_millis())
    .fetch_all(&state.db)
    .await?;
    let mut totals = Counts::default();
    let mut by_day = vec![Counts::default(); 7];
    let mut by_zone: BTreeMap<String, ZoneLine> = BTreeMap::new();
    let mut lines = Vec::new();
    for r in rows {
        // A receiver deleted since is only in the root's report.
        let in_scope = match &r.2 {
            Some(_) => scope.covers(r.4.as_deref()),
            None => scope.is_root(),
        };
        if !in_scope {
            continue;
        }
        let unit_name =
            r.4.as_ref()
                .and_then(|u| units.get(u))
                .map(|u| u.name.clone());
        totals.add(&r.12);
        let day = from_ms(r.9)
            .with_timezone(&tz())
            .weekday()
            .num_days_from_monday() as usize;
        by_day[day].add(&r.12);
        let zone_key = r.2.clone().unwrap_or_else(|| "-".into());
        by_zone
            .entry(zone_key.clone())
            .or_insert_with(|| ZoneLine {
                zone_id: zone_key,
                zone_name: r.3.clone(),
                unit_name: unit_name.clone(),
                counts: Counts::default(),
            })
            .counts
            .add(&r.12);
        lines.push(PlayLine {
            receiver_id: r.0,
            receiver_name: r.1,
            zone_id: r.2,
            zone_name: r.3,
            unit_id: r.4,
            unit_name,
            programme_id: r.5,
            title: r.6,
            category: r.7,
            schedule_id: r.8,
            scheduled_at: from_ms(r.9),
            started_at: r.10.map(from_ms),
            ended_at: r.11.map(from_ms),
            outcome: r.12,
        });
    }
    let week = week_label(monday);
    if csv {
        let local = |t: DateTime<Utc>| {
            t.with_timezone(&tz())
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        };
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record([
            "week",
            "unit",
            "zone",
            "receiver",
            "programme",
            "title",
            "category",
            "scheduled_local",
            "started_local",
            "ended_local",
            "outcome",
        ])
        .map_err(ApiError::internal)?;
        for l in &lines {
            w.write_record([
                week.clone(),
                l.unit_name.clone().unwrap_or_default(),
                l.zone_name
                    .clone()
                    .or(l.zone_id.clone())
                    .unwrap_or_default(),
                l.receiver_name.clone().unwrap_or(l.receiver_id.clone()),
                l.programme_id.clone(),
                l.title.clone().unwrap_or_default(),
                l.category.clone().unwrap_or_default(),
                local(l.scheduled_at),
                l.started_at.map(local).unwrap_or_default(),
                l.ended_at.map(local).unwrap_or_default(),
                l.outcome.clone(),
            ])
            .map_err(ApiError::internal)?;
        }
        let body = w.into_inner().map_err(ApiError::internal)?;
        return Ok(csv_response(
            body,
            "attachment; filename=\"loa-bao-cao-phat.csv\"",
        ));
    }
    Ok(Json(PlaysReport {
        week,
        from,
        to,
        unit,
        totals,
        by_zone: by_zone.into_values().collect(),
        by_day,
        plays: lines,
    })
    .into_response())
}

/// Query of `GET /reports/bulletins`.
#[derive(Deserialize)]
struct BulletinsQuery {
    #[serde(default)]
    weeks: Option<i64>,
    #[serde(default)]
    unit: Option<String>,
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    target: Option<i64>,
    #[serde(default)]
    format: Option<String>,
}

/// One week of the report.
#[derive(Serialize)]
struct Week {
    week: String,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
}

/// One commune's line: counts and whether the target was met, by week.
#[derive(Serialize)]
struct CommuneLine {
    unit_id: String,
    name: String,
    kind: String,
    counts: Vec<i64>,
    met: Vec<bool>,
}

/// Answer of `GET /reports/bulletins`.
#[derive(Serialize)]
struct BulletinsReport {
    category: String,
    target: i64,
    unit: access::Unit,
    /// Oldest first; the last is the current week.
    weeks: Vec<Week>,
    communes: Vec<CommuneLine>,
}

async fn bulletins(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(q): ApiQuery<BulletinsQuery>,
) -> Result<Response, ApiError> {
    let csv = check_format(q.format.as_deref())?;
    let n = q.weeks.unwrap_or(8);
    let target = q.target.unwrap_or(DEFAULT_TARGET);
    if !(1..=MAX_WEEKS).contains(&n) || !(1..=100).contains(&target) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("weeks must be 1-{MAX_WEEKS} and target 1-100"),
            format!("Số tuần phải từ 1 đến {MAX_WEEKS}, chỉ tiêu từ 1 đến 100."),
        ));
    }
    let category = fold(q.category.as_deref().unwrap_or(DIGITAL_TRANSFORMATION));
    let (unit, scope, units) = report_unit(&state, &user, q.unit.as_deref()).await?;
    let last = this_monday();
    let mondays: Vec<NaiveDate> = (0..n).rev().map(|i| last - Duration::days(7 * i)).collect();
    let weeks: Vec<Week> = mondays
        .iter()
        .map(|m| Week {
            week: week_label(*m),
            from: local_midnight(*m),
            to: local_midnight(*m + Duration::days(7)),
        })
        .collect();
    let from = weeks[0].from;
    let to = weeks[weeks.len() - 1].to;

    // Communes: units of kind commune in scope, and any unit owning zones.
    let zone_units: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT COALESCE(unit_id, 'root') FROM zones")
            .fetch_all(&state.db)
            .await?;
    let mut communes: Vec<&access::Unit> = units
        .values()
        .filter(|u| scope.covers(Some(&u.id)))
        .filter(|u| u.kind == "commune" || zone_units.contains(&u.id))
        .collect();
    communes.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));

    let rows: Vec<(String, i64, String, Option<String>)> = sqlx::query_as(
        "SELECT DISTINCT p.event_id, p.scheduled_at, COALESCE(z.unit_id, 'root'), g.category \
         FROM plays p \
         JOIN receivers r ON r.id = p.receiver_id \
         JOIN zones z ON z.id = r.zone_id \
         LEFT JOIN programmes g ON g.id = p.programme_id \
         WHERE p.outcome = 'completed' AND p.scheduled_at >= $1 AND p.scheduled_at < $2",
    )
    .bind(from.timestamp_millis())
    .bind(to.timestamp_millis())
    .fetch_all(&state.db)
    .await?;
    let mut counted: HashSet<(String, String)> = HashSet::new();
    let mut counts: HashMap<(String, usize), i64> = HashMap::new();
    for (event, at, unit_id, cat) in rows {
        if cat.as_deref().map(fold).as_deref() != Some(category.as_str()) {
            continue;
        }
        if !counted.insert((event, unit_id.clone())) {
            continue;
        }
        let at = from_ms(at);
        if let Some(i) = weeks.iter().position(|w| w.from <= at && at < w.to) {
            *counts.entry((unit_id, i)).or_default() += 1;
        }
    }
    let lines: Vec<CommuneLine> = communes
        .into_iter()
        .map(|u| {
            let c: Vec<i64> = (0..weeks.len())
                .map(|i| counts.get(&(u.id.clone(), i)).copied().unwrap_or(0))
                .collect();
            CommuneLine {
                unit_id: u.id.clone(),
                name: u.name.clone(),
                kind: u.kind.clone(),
                met: c.iter().map(|n| *n >= target).collect(),
                counts: c,
            }
        })
        .collect();
    if csv {
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(["unit_id", "unit", "week", "bulletins", "target", "met"])
            .map_err(ApiError::internal)?;
        for l in &lines {
            for (i, wk) in weeks.iter().enumerate() {
                w.write_record([
                    l.unit_id.clone(),
                    l.name.clone(),
                    wk.week.clone(),
                    l.counts[i].to_string(),
                    target.to_string(),
                    if l.met[i] { "yes" } else { "no" }.to_string(),
                ])
                .map_err(ApiError::internal)?;
            }
        }
        let body = w.into_inner().map_err(ApiError::internal)?;
        return Ok(csv_response(
            body,
            "attachment; filename=\"loa-ban-tin-chuyen-doi-so.csv\"",
        ));
    }
    Ok(Json(BulletinsReport {
        category,
        target,
        unit,
        weeks,
        communes: lines,
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_fold_diacritics_and_separators() {
        assert_eq!(fold("Chuyển đổi số"), "chuyen-doi-so");
        assert_eq!(fold("chuyen-doi-so"), "chuyen-doi-so");
        assert_eq!(fold("  CHUYỂN_ĐỔI  SỐ "), "chuyen-doi-so");
        assert_eq!(fold("Thời sự"), "thoi-su");
    }

    #[test]
    fn weeks_are_iso_weeks_in_vietnam_time() {
        let monday = parse_week("2026-W48").unwrap();
        assert_eq!(monday, NaiveDate::from_ymd_opt(2026, 11, 23).unwrap());
        assert_eq!(week_label(monday + Duration::days(6)), "2026-W48");
        // Monday 00:00 in Hanoi is Sunday 17:00 UTC.
        assert_eq!(
            local_midnight(monday).to_rfc3339(),
            "2026-11-22T17:00:00+00:00"
        );
        assert!(parse_week("2026-48").is_err());
        assert!(parse_week("2026-W60").is_err());
    }
}

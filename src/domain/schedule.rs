//! When a scheduled export runs.
//!
//! A schedule is stored as JSON and evaluated statelessly: the next run is a
//! pure function of the schedule and "now", so any replica can compute it after
//! a restart without remembering when the export last ran. That is why
//! intervals ("every 2 days") count from the recurrence's stored anchor (the
//! time it was set) rather than from the previous run: the first run is the
//! first matching time after the anchor, and then every `interval`-th hour,
//! day, week (Monday to Sunday) or month from that run's.
//!
//! Two daylight-saving policies exist, because users mean two different things:
//!
//! * wall clock ("every day at 02:30"): the user cares about the reading on the
//!   clock. A reading skipped by spring-forward runs at the first instant after
//!   the gap; a reading repeated by fall-back runs once, at the earlier instant.
//! * elapsed ("every hour"): the user cares about the passage of time. Readings
//!   that do not exist are skipped and repeated readings run at both instants,
//!   so the job really runs once per elapsed hour.
//!
//! Recurrences use wall clock except HOURLY, which uses elapsed. Cron
//! expressions follow the classic Vixie cron rule: a pattern whose minute or
//! hour field starts with `*` (e.g. `*/15 * * * *`, `0 * * * *`) is elapsed,
//! anything else (e.g. `30 2 * * *`, `0 6,18 * * 1-5`) is wall clock.

use std::fmt;

use chrono::{
    DateTime, Datelike, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeDelta, TimeZone, Timelike, Utc,
    Weekday,
};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use serde::{Deserialize, Serialize};

/// Upper bound on `Recurrence::interval`; far beyond any sensible schedule, it
/// keeps the interval arithmetic comfortably inside `i64`/date ranges.
pub const MAX_INTERVAL: i32 = 1000;

/// Safety net for the candidate loops. A valid schedule yields its answer
/// within the first few candidates (the search starts at most a day before
/// `after`); the cap only guarantees termination on pathological zone data.
const MAX_CANDIDATES: usize = 10_000;

/// Cron patterns can be unsatisfiable (`0 0 30 2 *`) or very sparse. Ten years
/// is long enough to include at least one 29 February (at most eight years
/// apart around 2100) yet keeps the search bounded.
const CRON_HORIZON_DAYS: i64 = 3660;

/// Every real UTC offset is well inside ±26h; used to bracket DST transitions.
const OFFSET_BRACKET_SECS: i64 = 26 * 3600;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Frequency {
    Hourly,
    Daily,
    Weekly,
    Monthly,
}

/// A calendar recurrence in a time zone.
///
/// Zero/empty values mean "default" (interval 1, 00:00, UTC) so that a
/// partially filled JSON document or protobuf message is still meaningful.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", default)]
pub struct Recurrence {
    /// `None` means the caller did not say; it is reported, never guessed.
    pub frequency: Option<Frequency>,
    pub interval: i32,
    /// "HH:MM", 24-hour, local to `time_zone`. HOURLY uses only the minutes.
    pub time_of_day: String,
    pub days_of_week: Vec<Weekday>,
    pub day_of_month: i32,
    pub time_zone: String,
    /// When the recurrence was set (see [`Schedule::anchored`]); intervals count from the
    /// first matching time after it. `None` only for a recurrence that was never stored; its
    /// intervals then count from the Unix epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anchor: Option<DateTime<Utc>>,
}

impl Recurrence {
    /// Whether two recurrences give the same times once anchored alike: everything but the
    /// anchor is equal.
    fn same_rule(&self, other: &Recurrence) -> bool {
        Recurrence {
            anchor: None,
            ..self.clone()
        } == Recurrence {
            anchor: None,
            ..other.clone()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", default)]
pub struct CronSchedule {
    /// Five fields: minute hour day-of-month month day-of-week.
    pub expression: String,
    pub time_zone: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Trigger {
    /// Runs when the platform refreshes the underlying data, so there is no
    /// clock-based next time.
    SystemRefresh,
    Recurrence(Recurrence),
    Cron(CronSchedule),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub struct Schedule {
    pub enabled: bool,
    pub trigger: Trigger,
}

/// One problem with one field; `field` is relative to the schedule, e.g.
/// "recurrence.time_of_day", "cron.expression", "cron.time_zone".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    fn new(field: &str, description: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            description: description.into(),
        }
    }
}

impl fmt::Display for FieldViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.description)
    }
}

impl Schedule {
    /// All problems found (empty = valid). Never panics on any input.
    ///
    /// A disabled schedule is still validated: it is stored and may be
    /// re-enabled later without being resubmitted.
    pub fn validate(&self) -> Vec<FieldViolation> {
        self.trigger.validate()
    }

    /// The first occurrence strictly after `after`, as UTC. None when disabled,
    /// when the trigger is SystemRefresh, or when invalid.
    pub fn next_run_time(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if !self.enabled {
            return None;
        }
        self.trigger.next_after(after)
    }

    /// The schedule as it is stored when it is set at `now`, replacing `previous`: a
    /// recurrence is anchored at `now`, unless `previous` was the same recurrence, whose
    /// anchor it keeps (re-saving a schedule, or switching it on or off, does not move its
    /// runs). Other triggers carry no anchor.
    pub fn anchored(mut self, previous: Option<&Schedule>, now: DateTime<Utc>) -> Schedule {
        if let Trigger::Recurrence(recurrence) = &mut self.trigger {
            recurrence.anchor = match previous.map(|p| &p.trigger) {
                Some(Trigger::Recurrence(old)) if old.same_rule(recurrence) && old.anchor.is_some() => old.anchor,
                _ => Some(now),
            };
        }
        self
    }
}

/// Schedules in words, for people reading a list (the CLI's `environment list`).
impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.enabled {
            return f.write_str("off");
        }
        match &self.trigger {
            Trigger::SystemRefresh => f.write_str("with every system refresh"),
            Trigger::Recurrence(r) => write!(f, "{r}"),
            Trigger::Cron(c) => write!(f, "cron '{}' ({})", c.expression, zone_name(&c.time_zone)),
        }
    }
}

/// "every 2 weeks on Monday and Thursday at 06:30 (Europe/Paris)".
impl fmt::Display for Recurrence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.frequency {
            Some(Frequency::Hourly) => "hour",
            Some(Frequency::Daily) => "day",
            Some(Frequency::Weekly) => "week",
            Some(Frequency::Monthly) => "month",
            None => "(no frequency)",
        };
        match self.interval {
            0 | 1 => write!(f, "every {unit}")?,
            n => write!(f, "every {n} {unit}s")?,
        }
        let time = if self.time_of_day.is_empty() {
            "00:00"
        } else {
            self.time_of_day.as_str()
        };
        match self.frequency {
            Some(Frequency::Hourly) => write!(f, " at :{}", time.get(3..).unwrap_or("00"))?,
            Some(Frequency::Weekly) => {
                let days: Vec<&str> = self.days_of_week.iter().map(|d| weekday_name(*d)).collect();
                let days = match days.split_last() {
                    Some((last, [])) => last.to_string(),
                    Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
                    None => "no day".to_string(),
                };
                write!(f, " on {days} at {time}")?
            }
            Some(Frequency::Monthly) => write!(f, " on day {} at {time}", self.day_of_month)?,
            _ => write!(f, " at {time}")?,
        }
        write!(f, " ({})", zone_name(&self.time_zone))
    }
}

fn zone_name(time_zone: &str) -> &str {
    if time_zone.is_empty() { "UTC" } else { time_zone }
}

fn weekday_name(day: Weekday) -> &'static str {
    match day {
        Weekday::Mon => "Monday",
        Weekday::Tue => "Tuesday",
        Weekday::Wed => "Wednesday",
        Weekday::Thu => "Thursday",
        Weekday::Fri => "Friday",
        Weekday::Sat => "Saturday",
        Weekday::Sun => "Sunday",
    }
}

impl Trigger {
    /// All problems found (empty = valid). Never panics on any input.
    pub fn validate(&self) -> Vec<FieldViolation> {
        match (self, self.compile()) {
            // A well-formed pattern may still name no real date (`0 0 31 2 *`): shown as
            // enabled, it would never run.
            (Trigger::Cron(cron), Ok(Some(Plan::Cron(plan)))) if !plan.ever_matches() => vec![FieldViolation::new(
                "cron.expression",
                format!(
                    "cron expression {:?} never matches a date (such as 31 February), so it would never run",
                    cron.expression
                ),
            )],
            (_, Ok(_)) => Vec::new(),
            (_, Err(violations)) => violations,
        }
    }

    /// The first occurrence strictly after `after`, as UTC; None for
    /// SystemRefresh, for an invalid trigger, or when nothing matches within
    /// the search bounds.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self.compile().ok()?? {
            Plan::Recurrence(plan) => plan.next_after(after),
            Plan::Cron(plan) => plan.next_after(after),
        }
    }

    /// Validation and evaluation share this single parse so they can never
    /// disagree about what is valid.
    fn compile(&self) -> Result<Option<Plan>, Vec<FieldViolation>> {
        match self {
            Trigger::SystemRefresh => Ok(None),
            Trigger::Recurrence(r) => r.compile().map(|p| Some(Plan::Recurrence(p))),
            Trigger::Cron(c) => c.compile().map(|p| Some(Plan::Cron(p))),
        }
    }
}

enum Plan {
    Recurrence(RecurrencePlan),
    Cron(CronPlan),
}

/// How a local reading that is skipped or repeated by a DST change maps to
/// instants; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DstPolicy {
    WallClock,
    Elapsed,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Hourly,
    Daily,
    /// Bit `n` set = weekday with `num_days_from_monday() == n` is included.
    Weekly(u8),
    Monthly(u32),
}

#[derive(Debug, Clone)]
struct RecurrencePlan {
    kind: Kind,
    interval: i64,
    hour: u32,
    minute: u32,
    tz: Tz,
    anchor: Option<DateTime<Utc>>,
}

/// Where the count of an interval starts: the hour (an instant), local day, week and month of
/// the first occurrence after the anchor. Every `interval`-th period from these runs.
#[derive(Debug, Clone, Copy)]
struct Origin {
    /// Seconds since the epoch of the first occurrence (HOURLY counts elapsed hours from it).
    instant: i64,
    /// `day_number`, `week_number` and `month_number` of its local date.
    day: i64,
    week: i64,
    month: i64,
}

impl Origin {
    /// Without an anchor: the Unix epoch's periods (day 0, the week of Monday 1970-01-05,
    /// January 1970, hour 0).
    const EPOCH: Origin = Origin {
        instant: 0,
        day: 0,
        week: 0,
        month: 0,
    };

    fn of(tz: Tz, first: DateTime<Utc>) -> Option<Origin> {
        let date = local_at(tz, first)?.date();
        Some(Origin {
            instant: first.timestamp(),
            day: day_number(date),
            week: week_number(date),
            month: month_number(date),
        })
    }
}

struct CronPlan {
    /// The five validated fields, single-space separated.
    fields: String,
    tz: Tz,
    policy: DstPolicy,
}

impl Recurrence {
    fn compile(&self) -> Result<RecurrencePlan, Vec<FieldViolation>> {
        let mut violations = Vec::new();

        if self.frequency.is_none() {
            violations.push(FieldViolation::new("recurrence.frequency", "frequency is required"));
        }

        let interval = match self.interval {
            i if i < 0 => {
                violations.push(FieldViolation::new(
                    "recurrence.interval",
                    format!("interval must not be negative, got {i}"),
                ));
                1
            }
            0 => 1,
            i if i > MAX_INTERVAL => {
                violations.push(FieldViolation::new(
                    "recurrence.interval",
                    format!("interval must be at most {MAX_INTERVAL}, got {i}"),
                ));
                1
            }
            i => i64::from(i),
        };

        let (hour, minute) = match parse_time_of_day(&self.time_of_day) {
            Ok(hm) => hm,
            Err(description) => {
                violations.push(FieldViolation::new("recurrence.time_of_day", description));
                (0, 0)
            }
        };
        if self.frequency == Some(Frequency::Hourly) && hour != 0 {
            violations.push(FieldViolation::new(
                "recurrence.time_of_day",
                format!(
                    "HOURLY uses only the minutes of time_of_day, so the hour must be 00 \
                     (e.g. \"00:15\" runs at quarter past every hour), got {:?}",
                    self.time_of_day
                ),
            ));
        }

        let mut weekday_mask = 0u8;
        for day in &self.days_of_week {
            weekday_mask |= 1 << day.num_days_from_monday();
        }
        match self.frequency {
            Some(Frequency::Weekly) if self.days_of_week.is_empty() => {
                violations.push(FieldViolation::new(
                    "recurrence.days_of_week",
                    "days_of_week is required for WEEKLY (at least one day)",
                ));
            }
            Some(f) if f != Frequency::Weekly && !self.days_of_week.is_empty() => {
                violations.push(FieldViolation::new(
                    "recurrence.days_of_week",
                    "days_of_week is only allowed for WEEKLY",
                ));
            }
            _ => {}
        }

        match self.frequency {
            Some(Frequency::Monthly) if !(1..=31).contains(&self.day_of_month) => {
                violations.push(FieldViolation::new(
                    "recurrence.day_of_month",
                    format!(
                        "day_of_month is required for MONTHLY and must be between 1 and 31, got {}",
                        self.day_of_month
                    ),
                ));
            }
            Some(f) if f != Frequency::Monthly && self.day_of_month != 0 => {
                violations.push(FieldViolation::new(
                    "recurrence.day_of_month",
                    "day_of_month is only allowed for MONTHLY",
                ));
            }
            _ => {}
        }

        let tz = parse_time_zone(&self.time_zone);
        if tz.is_none() {
            violations.push(unknown_zone("recurrence.time_zone", &self.time_zone));
        }

        match (self.frequency, tz) {
            (Some(frequency), Some(tz)) if violations.is_empty() => {
                let kind = match frequency {
                    Frequency::Hourly => Kind::Hourly,
                    Frequency::Daily => Kind::Daily,
                    Frequency::Weekly => Kind::Weekly(weekday_mask),
                    // Range checked above.
                    Frequency::Monthly => Kind::Monthly(self.day_of_month.unsigned_abs()),
                };
                Ok(RecurrencePlan {
                    kind,
                    interval,
                    hour,
                    minute,
                    tz,
                    anchor: self.anchor,
                })
            }
            _ => Err(violations),
        }
    }
}

impl CronSchedule {
    fn compile(&self) -> Result<CronPlan, Vec<FieldViolation>> {
        let mut violations = Vec::new();
        let parsed = match parse_cron(&self.expression) {
            Ok(parsed) => Some(parsed),
            Err(description) => {
                violations.push(FieldViolation::new("cron.expression", description));
                None
            }
        };
        let tz = parse_time_zone(&self.time_zone);
        if tz.is_none() {
            violations.push(unknown_zone("cron.time_zone", &self.time_zone));
        }
        match (parsed, tz) {
            (Some((fields, policy)), Some(tz)) => Ok(CronPlan { fields, tz, policy }),
            _ => Err(violations),
        }
    }
}

/// Empty means "00:00" so that DAILY-at-midnight needs no explicit time.
fn parse_time_of_day(text: &str) -> Result<(u32, u32), String> {
    if text.is_empty() {
        return Ok((0, 0));
    }
    // Byte-wise so that non-ASCII input can never hit a char-boundary panic.
    let b = text.as_bytes();
    let well_formed = b.len() == 5 && b[2] == b':' && [b[0], b[1], b[3], b[4]].iter().all(u8::is_ascii_digit);
    if !well_formed {
        return Err(format!(
            "time_of_day must be \"HH:MM\" (24-hour, two digits each), got {text:?}"
        ));
    }
    let hour = u32::from(b[0] - b'0') * 10 + u32::from(b[1] - b'0');
    let minute = u32::from(b[3] - b'0') * 10 + u32::from(b[4] - b'0');
    if hour > 23 {
        return Err(format!("time_of_day hour must be 00-23, got {text:?}"));
    }
    if minute > 59 {
        return Err(format!("time_of_day minute must be 00-59, got {text:?}"));
    }
    Ok((hour, minute))
}

/// Empty means UTC; anything else must be an exact IANA name, because a
/// silently misread zone would shift every run.
fn parse_time_zone(name: &str) -> Option<Tz> {
    if name.is_empty() {
        Some(Tz::UTC)
    } else {
        name.parse::<Tz>().ok()
    }
}

fn unknown_zone(field: &str, name: &str) -> FieldViolation {
    FieldViolation::new(
        field,
        format!("unknown time zone {name:?}; expected an IANA name such as \"Europe/Paris\""),
    )
}

/// Returns the normalized fields rather than the parsed pattern because
/// evaluation re-parses them with a year bound (see `CronPlan::bounded`).
fn parse_cron(expression: &str) -> Result<(String, DstPolicy), String> {
    let parser = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build();
    parser
        .parse(expression)
        .map_err(|e| format!("invalid cron expression {expression:?}: {e}"))?;
    // croner expands nicknames such as "@daily"; the contract is five plain
    // fields, so the policy below can always be read from the text.
    let fields: Vec<&str> = expression.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "invalid cron expression {expression:?}: expected exactly 5 fields \
             (minute hour day-of-month month day-of-week), got {}",
            fields.len()
        ));
    }
    // croner silently ignores empty list items, so ",," or "5," would leave a
    // field without values and the schedule would quietly never run.
    const NAMES: [&str; 5] = ["minute", "hour", "day-of-month", "month", "day-of-week"];
    for (field, name) in fields.iter().zip(NAMES) {
        if field.split(',').any(str::is_empty) {
            return Err(format!(
                "invalid cron expression {expression:?}: the {name} field {field:?} has an empty list item"
            ));
        }
    }
    let policy = if fields[0].starts_with('*') || fields[1].starts_with('*') {
        DstPolicy::Elapsed
    } else {
        DstPolicy::WallClock
    };
    Ok((fields.join(" "), policy))
}

impl RecurrencePlan {
    /// The first run strictly after `after` (and after the anchor): the first matching time
    /// after the anchor, then every `interval`-th period from that one's.
    fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let origin = match self.anchor {
            _ if self.interval == 1 => Origin::EPOCH,
            None => Origin::EPOCH,
            Some(anchor) => Origin::of(self.tz, self.occurrence_after(anchor, 1, Origin::EPOCH)?)?,
        };
        let after = self.anchor.map_or(after, |anchor| after.max(anchor));
        self.occurrence_after(after, self.interval, origin)
    }

    /// The first matching time strictly after `after` in every `n`-th period counted from
    /// `origin`.
    fn occurrence_after(&self, after: DateTime<Utc>, n: i64, origin: Origin) -> Option<DateTime<Utc>> {
        let start = search_start(self.tz, after)?;
        // One day of slack costs a handful of candidates and protects against
        // odd zone histories around the start.
        let first_day = start.date().pred_opt().unwrap_or(start.date());
        let time = NaiveTime::from_hms_opt(self.hour, self.minute, 0)?;
        match self.kind {
            Kind::Hourly => {
                let minute = self.minute;
                // Every local reading at minute MM; elapsed hours from the origin decide
                // which of them run (so "every 5 hours" runs every 5 hours across midnight).
                let candidates = days_from(first_day, 1)
                    .flat_map(move |day| (0..24u32).filter_map(move |h| day.and_hms_opt(h, minute, 0)));
                let counted =
                    move |t: DateTime<Utc>| (t.timestamp() - origin.instant).div_euclid(3600).rem_euclid(n) == 0;
                earliest_counted_after(self.tz, after, DstPolicy::Elapsed, candidates, counted)
            }
            Kind::Daily => {
                let offset = ceil_offset(day_number(first_day) - origin.day, n);
                let first = first_day.checked_add_days_i64(offset)?;
                let candidates = days_from(first, n).map(move |d| d.and_time(time));
                earliest_after(self.tz, after, DstPolicy::WallClock, candidates)
            }
            Kind::Weekly(mask) => {
                let week = week_number(first_day);
                let first_week = week + ceil_offset(week - origin.week, n);
                let first_monday = week_monday(first_week)?;
                let candidates = days_from(first_monday, 7 * n).flat_map(move |monday| {
                    (0..7u64)
                        .filter(move |i| mask & (1 << i) != 0)
                        .filter_map(move |i| monday.checked_add_days(chrono::Days::new(i)))
                        .map(move |d| d.and_time(time))
                });
                earliest_after(self.tz, after, DstPolicy::WallClock, candidates)
            }
            Kind::Monthly(day_of_month) => {
                let month = month_number(first_day);
                let first_month = month + ceil_offset(month - origin.month, n);
                let candidates = std::iter::successors(Some(first_month), move |m| m.checked_add(n))
                    .map_while(move |m| month_day(m, day_of_month))
                    .map(move |d| d.and_time(time));
                earliest_after(self.tz, after, DstPolicy::WallClock, candidates)
            }
        }
    }
}

impl CronPlan {
    /// The pattern restricted to the years `first..=last`.
    ///
    /// croner searches up to year 5000 before giving up, which takes tens of
    /// milliseconds for an unsatisfiable pattern such as `0 0 30 2 *`; with
    /// the year field bounded to our horizon it gives up almost at once.
    fn bounded(&self, first: i32, last: i32) -> Option<Cron> {
        CronParser::builder()
            .seconds(Seconds::Required)
            .year(Year::Required)
            .build()
            .parse(&format!("0 {} {first}-{last}", self.fields))
            .ok()
    }

    /// Whether the pattern matches any date at all. The Gregorian calendar repeats every 400
    /// years, so a pattern that matches nothing in 400 years never does.
    fn ever_matches(&self) -> bool {
        let Some(cron) = self.bounded(2000, 2399) else {
            return false;
        };
        let start = NaiveDate::from_ymd_opt(2000, 1, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|t| t.and_utc());
        start.is_some_and(|start| cron.find_next_occurrence(&start, true).is_ok())
    }

    fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let start = search_start(self.tz, after)?;
        let horizon = start.checked_add_signed(TimeDelta::days(CRON_HORIZON_DAYS))?;
        // croner only handles years 1..=5000.
        let floor = NaiveDate::from_ymd_opt(1, 1, 1)?.and_hms_opt(0, 0, 0)?;
        // croner keeps the fraction of a second of its starting point in what it finds; cron
        // times are whole minutes, so start from a whole second (an occurrence at or before
        // `after` is dropped by `earliest_after`).
        let mut cursor = start.max(floor).with_nanosecond(0)?;
        let last_year = horizon.year().min(croner::YEAR_UPPER_LIMIT);
        if cursor.year() > last_year {
            return None;
        }
        let cron = self.bounded(cursor.year(), last_year)?;
        let mut inclusive = true;
        // croner walks a DST-free (UTC) timeline here, so it yields every
        // matching local reading in order; DST is applied by `earliest_after`.
        let candidates = std::iter::from_fn(move || {
            let found = cron
                .find_next_occurrence(&cursor.and_utc(), inclusive)
                .ok()?
                .naive_utc();
            cursor = found;
            inclusive = false;
            Some(found)
        })
        .take_while(move |n| *n <= horizon);
        earliest_after(self.tz, after, self.policy, candidates)
    }
}

/// The local reading from which candidates must be considered.
///
/// Usually the local time of `after`, but if a fall-back follows soon, readings
/// earlier than that (the repeated hour) still map to instants after `after`,
/// so the start moves back by the size of the coming offset drop.
fn search_start(tz: Tz, after: DateTime<Utc>) -> Option<NaiveDateTime> {
    let now = offset_secs(tz, after);
    let later = after
        .checked_add_signed(TimeDelta::seconds(OFFSET_BRACKET_SECS))
        .map_or(now, |t| offset_secs(tz, t));
    let rewind = (now - later).max(0);
    after.naive_utc().checked_add_signed(TimeDelta::seconds(now - rewind))
}

/// The earliest instant strictly after `after` among the instants of the
/// candidate local readings.
///
/// Candidates must come in non-decreasing local order, but around a fall-back
/// local order is not instant order (02:55 of the first pass precedes 02:00 of
/// the second), so the search keeps the best instant so far and stops only
/// once no later reading can map to an earlier instant.
fn earliest_after(
    tz: Tz,
    after: DateTime<Utc>,
    policy: DstPolicy,
    candidates: impl Iterator<Item = NaiveDateTime>,
) -> Option<DateTime<Utc>> {
    earliest_counted_after(tz, after, policy, candidates, |_| true)
}

/// Like [`earliest_after`], among the instants that `counted` accepts.
fn earliest_counted_after(
    tz: Tz,
    after: DateTime<Utc>,
    policy: DstPolicy,
    candidates: impl Iterator<Item = NaiveDateTime>,
    counted: impl Fn(DateTime<Utc>) -> bool,
) -> Option<DateTime<Utc>> {
    let mut best: Option<DateTime<Utc>> = None;
    for local in candidates.take(MAX_CANDIDATES) {
        if !in_safe_range(local) {
            break;
        }
        if let Some(b) = best {
            let max_offset = offset_secs(tz, after).max(offset_secs(tz, b));
            let lower_bound = local.and_utc().checked_sub_signed(TimeDelta::seconds(max_offset));
            if lower_bound.is_some_and(|lb| lb >= b) {
                break;
            }
        }
        for instant in resolve(tz, local, policy).into_iter().flatten() {
            if instant > after && best.is_none_or(|b| instant < b) && counted(instant) {
                best = Some(instant);
            }
        }
    }
    best
}

/// The instants at which a local reading runs under `policy`.
fn resolve(tz: Tz, local: NaiveDateTime, policy: DstPolicy) -> [Option<DateTime<Utc>>; 2] {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => [Some(t.with_timezone(&Utc)), None],
        LocalResult::Ambiguous(earlier, later) => match policy {
            DstPolicy::WallClock => [Some(earlier.with_timezone(&Utc)), None],
            DstPolicy::Elapsed => [Some(earlier.with_timezone(&Utc)), Some(later.with_timezone(&Utc))],
        },
        LocalResult::None => match policy {
            DstPolicy::WallClock => [first_instant_after_gap(tz, local), None],
            DstPolicy::Elapsed => [None, None],
        },
    }
}

/// The transition instant that ends the gap containing the non-existent local
/// reading `local`, i.e. the smallest instant whose local reading is later.
///
/// Found by bisection over whole seconds (tz transitions are on whole seconds)
/// instead of assuming a one-hour gap, so 30-minute and 2-hour shifts work too.
fn first_instant_after_gap(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    let pivot = local.and_utc().timestamp();
    // local_at(lo) < local < local_at(hi), because |offset| < 26h.
    let mut lo = pivot - OFFSET_BRACKET_SECS;
    let mut hi = pivot + OFFSET_BRACKET_SECS;
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        let t = DateTime::from_timestamp(mid, 0)?;
        if local_at(tz, t)? > local {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    DateTime::from_timestamp(hi, 0)
}

fn offset_secs(tz: Tz, t: DateTime<Utc>) -> i64 {
    i64::from(tz.offset_from_utc_datetime(&t.naive_utc()).fix().local_minus_utc())
}

/// Like `naive_local`, but without its panic at the ends of chrono's range.
fn local_at(tz: Tz, t: DateTime<Utc>) -> Option<NaiveDateTime> {
    t.naive_utc().checked_add_signed(TimeDelta::seconds(offset_secs(tz, t)))
}

/// Zone conversions subtract offsets from local readings; keeping a margin from
/// chrono's limits means they cannot overflow.
fn in_safe_range(local: NaiveDateTime) -> bool {
    local.year() > NaiveDate::MIN.year() + 1 && local.year() < NaiveDate::MAX.year() - 1
}

/// Days since 1970-01-01 (negative before), the DAILY anchor.
fn day_number(date: NaiveDate) -> i64 {
    i64::from(date.num_days_from_ce() - epoch_day().num_days_from_ce())
}

/// Weeks since Monday 1970-01-05, the WEEKLY anchor.
fn week_number(date: NaiveDate) -> i64 {
    (day_number(date) - 4).div_euclid(7)
}

fn week_monday(week: i64) -> Option<NaiveDate> {
    epoch_day().checked_add_days_i64(week.checked_mul(7)?.checked_add(4)?)
}

/// Months since 1970-01, the MONTHLY anchor.
fn month_number(date: NaiveDate) -> i64 {
    i64::from(date.year()) * 12 + i64::from(date.month0()) - 1970 * 12
}

/// The run date in month `month` (see `month_number`): `day`, or the month's
/// last day when the month is shorter.
fn month_day(month: i64, day: u32) -> Option<NaiveDate> {
    let total = month.checked_add(1970 * 12)?;
    let year = i32::try_from(total.div_euclid(12)).ok()?;
    let month1 = u32::try_from(total.rem_euclid(12)).ok()? + 1;
    let first_of_next = if month1 == 12 {
        NaiveDate::from_ymd_opt(year.checked_add(1)?, 1, 1)?
    } else {
        NaiveDate::from_ymd_opt(year, month1 + 1, 1)?
    };
    let last = first_of_next.pred_opt()?.day();
    NaiveDate::from_ymd_opt(year, month1, day.min(last))
}

fn epoch_day() -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default()
}

/// How far `index` is from the next multiple of `interval` (0 if it is one).
fn ceil_offset(index: i64, interval: i64) -> i64 {
    (interval - index.rem_euclid(interval)) % interval
}

/// `first`, `first + step`, ... days, until chrono's range ends.
fn days_from(first: NaiveDate, step_days: i64) -> impl Iterator<Item = NaiveDate> {
    std::iter::successors(Some(first), move |d| d.checked_add_days_i64(step_days))
}

trait AddDaysI64: Sized {
    fn checked_add_days_i64(self, days: i64) -> Option<Self>;
}

impl AddDaysI64 for NaiveDate {
    fn checked_add_days_i64(self, days: i64) -> Option<Self> {
        self.checked_add_signed(TimeDelta::try_days(days)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("test timestamp")
            .with_timezone(&Utc)
    }

    fn recurrence(frequency: Frequency, time_of_day: &str, time_zone: &str) -> Recurrence {
        Recurrence {
            frequency: Some(frequency),
            interval: 1,
            time_of_day: time_of_day.to_owned(),
            time_zone: time_zone.to_owned(),
            ..Recurrence::default()
        }
    }

    fn schedule(trigger: Trigger) -> Schedule {
        Schedule { enabled: true, trigger }
    }

    fn rec(r: Recurrence) -> Schedule {
        schedule(Trigger::Recurrence(r))
    }

    fn cron(expression: &str, time_zone: &str) -> Schedule {
        schedule(Trigger::Cron(CronSchedule {
            expression: expression.to_owned(),
            time_zone: time_zone.to_owned(),
        }))
    }

    /// The first `n` runs strictly after `after`, each fed back as the next
    /// `after`, which is how the scheduler walks a schedule.
    fn runs(s: &Schedule, after: &str, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut t = utc(after);
        for _ in 0..n {
            t = s.next_run_time(t).expect("next run");
            out.push(t);
        }
        out
    }

    /// Runs in the half-open window `[from, to)`.
    fn count_runs(s: &Schedule, from: &str, to: &str) -> usize {
        let (from, to) = (utc(from), utc(to));
        let mut t = from - TimeDelta::seconds(1);
        let mut count = 0;
        while let Some(next) = s.next_run_time(t) {
            if next >= to {
                break;
            }
            assert!(next > t, "runs must strictly increase");
            count += 1;
            t = next;
        }
        count
    }

    fn utcs(texts: &[&str]) -> Vec<DateTime<Utc>> {
        texts.iter().map(|t| utc(t)).collect()
    }

    fn fields(s: &Schedule) -> Vec<String> {
        s.validate().into_iter().map(|v| v.field).collect()
    }

    // ---- DAILY ----

    #[test]
    fn daily_utc() {
        let s = rec(recurrence(Frequency::Daily, "09:15", ""));
        assert!(s.validate().is_empty());
        assert_eq!(
            runs(&s, "2026-01-10T12:00:00Z", 3),
            utcs(&["2026-01-11T09:15:00Z", "2026-01-12T09:15:00Z", "2026-01-13T09:15:00Z"])
        );
        // Same day when the time has not passed yet.
        assert_eq!(
            s.next_run_time(utc("2026-01-10T09:14:59Z")),
            Some(utc("2026-01-10T09:15:00Z"))
        );
    }

    #[test]
    fn strictly_after_an_occurrence_returns_the_next_one() {
        let s = rec(recurrence(Frequency::Daily, "09:15", "UTC"));
        assert_eq!(
            s.next_run_time(utc("2026-01-11T09:15:00Z")),
            Some(utc("2026-01-12T09:15:00Z"))
        );
        let c = cron("0 6,18 * * 1-5", "Asia/Jakarta");
        // 2026-03-06 18:00 WIB (Friday) = 11:00Z; next is Monday 06:00 WIB.
        assert_eq!(
            c.next_run_time(utc("2026-03-06T11:00:00Z")),
            Some(utc("2026-03-08T23:00:00Z"))
        );
    }

    #[test]
    fn next_runs_are_whole_minutes_whatever_the_fraction_of_now() {
        let c = cron("0 6 * * *", "Europe/Paris");
        assert_eq!(
            c.next_run_time(utc("2026-03-06T11:00:00.991583Z")),
            Some(utc("2026-03-07T05:00:00Z"))
        );
        // An occurrence in the same second, but before `after`, is not returned.
        let every_minute = cron("* * * * *", "");
        assert_eq!(
            every_minute.next_run_time(utc("2026-03-06T11:00:00.5Z")),
            Some(utc("2026-03-06T11:01:00Z"))
        );
        let r = rec(recurrence(Frequency::Daily, "06:00", "Europe/Paris"));
        assert_eq!(
            r.next_run_time(utc("2026-03-06T11:00:00.991583Z")),
            Some(utc("2026-03-07T05:00:00Z"))
        );
    }

    #[test]
    fn empty_time_of_day_is_midnight() {
        let s = rec(recurrence(Frequency::Daily, "", "UTC"));
        assert_eq!(
            s.next_run_time(utc("2026-01-10T12:00:00Z")),
            Some(utc("2026-01-11T00:00:00Z"))
        );
    }

    #[test]
    fn a_recurrence_never_stored_counts_intervals_from_the_unix_epoch() {
        // 2026-01-01 is day 20454 since 1970-01-01, a multiple of 3.
        let s = rec(Recurrence {
            interval: 3,
            ..recurrence(Frequency::Daily, "08:00", "UTC")
        });
        assert_eq!(
            runs(&s, "2025-12-31T00:00:00Z", 3),
            utcs(&["2026-01-01T08:00:00Z", "2026-01-04T08:00:00Z", "2026-01-07T08:00:00Z"])
        );
        // Anchoring is by local date: in Tokyo (UTC+9) the 2026-01-04 run at
        // 08:00 local is 2026-01-03T23:00Z.
        let tokyo = rec(Recurrence {
            interval: 3,
            ..recurrence(Frequency::Daily, "08:00", "Asia/Tokyo")
        });
        assert_eq!(
            tokyo.next_run_time(utc("2026-01-01T00:00:00Z")),
            Some(utc("2026-01-03T23:00:00Z"))
        );
    }

    #[test]
    fn daily_paris_spring_forward_runs_after_the_gap_once() {
        // 2026-03-29: clocks jump 02:00 CET -> 03:00 CEST (01:00Z).
        let s = rec(recurrence(Frequency::Daily, "02:30", "Europe/Paris"));
        assert_eq!(
            runs(&s, "2026-03-27T12:00:00Z", 3),
            utcs(&[
                "2026-03-28T01:30:00Z", // 02:30 CET
                "2026-03-29T01:00:00Z", // 02:30 does not exist -> 03:00 CEST
                "2026-03-30T00:30:00Z", // 02:30 CEST
            ])
        );
    }

    #[test]
    fn daily_paris_fall_back_runs_once_at_the_earlier_instant() {
        // 2026-10-25: clocks go back 03:00 CEST -> 02:00 CET (01:00Z), so
        // 02:30 happens at 00:30Z and again at 01:30Z.
        let s = rec(recurrence(Frequency::Daily, "02:30", "Europe/Paris"));
        assert_eq!(
            runs(&s, "2026-10-24T12:00:00Z", 2),
            utcs(&["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"])
        );
        // Even when asked from inside the repeated hour, the second 02:30 is
        // not a run.
        assert_eq!(
            s.next_run_time(utc("2026-10-25T01:00:00Z")),
            Some(utc("2026-10-26T01:30:00Z"))
        );
    }

    #[test]
    fn daily_new_york_both_dst_changes() {
        // 2026-03-08: 02:00 EST -> 03:00 EDT (07:00Z).
        let spring = rec(recurrence(Frequency::Daily, "02:30", "America/New_York"));
        assert_eq!(
            runs(&spring, "2026-03-07T12:00:00Z", 2),
            utcs(&["2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z"])
        );
        // 2026-11-01: 02:00 EDT -> 01:00 EST (06:00Z); 01:30 happens twice.
        let fall = rec(recurrence(Frequency::Daily, "01:30", "America/New_York"));
        assert_eq!(
            runs(&fall, "2026-10-31T12:00:00Z", 2),
            utcs(&["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"])
        );
    }

    // ---- HOURLY ----

    #[test]
    fn hourly_counts_elapsed_hours_across_dst() {
        let s = rec(recurrence(Frequency::Hourly, "00:00", "Europe/Paris"));
        // Local 2026-10-25 lasts 25 hours: 00:00 CEST (22:00Z) to 00:00 CET (23:00Z).
        assert_eq!(count_runs(&s, "2026-10-24T22:00:00Z", "2026-10-25T23:00:00Z"), 25);
        // Local 2026-03-29 lasts 23 hours: 00:00 CET (23:00Z) to 00:00 CEST (22:00Z).
        assert_eq!(count_runs(&s, "2026-03-28T23:00:00Z", "2026-03-29T22:00:00Z"), 23);
        // The repeated 02:00 runs twice; the missing 02:00 is skipped.
        assert_eq!(
            runs(&s, "2026-10-24T23:30:00Z", 3),
            utcs(&[
                "2026-10-25T00:00:00Z", // 02:00 CEST
                "2026-10-25T01:00:00Z", // 02:00 CET
                "2026-10-25T02:00:00Z", // 03:00 CET
            ])
        );
        assert_eq!(
            runs(&s, "2026-03-28T23:30:00Z", 2),
            utcs(&[
                "2026-03-29T00:00:00Z", // 01:00 CET
                "2026-03-29T01:00:00Z", // 03:00 CEST
            ])
        );
    }

    #[test]
    fn hourly_uses_minutes_of_time_of_day() {
        let s = rec(recurrence(Frequency::Hourly, "00:15", "America/New_York"));
        assert_eq!(
            runs(&s, "2026-11-01T04:20:00Z", 4),
            utcs(&[
                "2026-11-01T05:15:00Z", // 01:15 EDT
                "2026-11-01T06:15:00Z", // 01:15 EST
                "2026-11-01T07:15:00Z", // 02:15 EST
                "2026-11-01T08:15:00Z", // 03:15 EST
            ])
        );
    }

    #[test]
    fn hourly_interval_counts_elapsed_hours_from_the_anchor() {
        // Set at 19:40: the first run is 20:15, then every third hour, across midnight.
        let s = rec(Recurrence {
            interval: 3,
            anchor: Some(utc("2026-01-01T19:40:00Z")),
            ..recurrence(Frequency::Hourly, "00:15", "UTC")
        });
        assert_eq!(
            runs(&s, "2026-01-01T00:00:00Z", 4),
            utcs(&[
                "2026-01-01T20:15:00Z",
                "2026-01-01T23:15:00Z",
                "2026-01-02T02:15:00Z",
                "2026-01-02T05:15:00Z",
            ])
        );
        // In Paris on spring-forward day the hour that does not exist is not counted as
        // a run, but elapsed time still is: every third real hour.
        let paris = rec(Recurrence {
            interval: 3,
            anchor: Some(utc("2026-03-28T23:00:00Z")),
            ..recurrence(Frequency::Hourly, "00:15", "Europe/Paris")
        });
        assert_eq!(
            runs(&paris, "2026-03-28T23:00:00Z", 3),
            utcs(&[
                "2026-03-28T23:15:00Z", // 00:15 CET
                "2026-03-29T02:15:00Z", // 04:15 CEST
                "2026-03-29T05:15:00Z", // 07:15 CEST
            ])
        );
    }

    // ---- anchors ----

    #[test]
    fn weekly_interval_two_starts_in_the_week_it_was_set() {
        // Set on Tuesday 2026-01-13 (the week from Monday 2026-01-12, odd counted from the
        // epoch): the first run is that Thursday, then the Monday and Thursday two weeks on.
        let s = rec(Recurrence {
            interval: 2,
            days_of_week: vec![Weekday::Mon, Weekday::Thu],
            anchor: Some(utc("2026-01-13T09:00:00Z")),
            ..recurrence(Frequency::Weekly, "10:00", "UTC")
        });
        assert_eq!(
            runs(&s, "2026-01-13T09:00:00Z", 4),
            utcs(&[
                "2026-01-15T10:00:00Z",
                "2026-01-26T10:00:00Z",
                "2026-01-29T10:00:00Z",
                "2026-02-09T10:00:00Z",
            ])
        );
        // Asked before the anchor, the first run is still the first one after it.
        assert_eq!(
            s.next_run_time(utc("2025-06-01T00:00:00Z")),
            Some(utc("2026-01-15T10:00:00Z"))
        );
        // Set on the Sunday before, the first run is Monday 2026-01-12: its week counts.
        let sunday = rec(Recurrence {
            anchor: Some(utc("2026-01-11T12:00:00Z")),
            ..match &s.trigger {
                Trigger::Recurrence(r) => r.clone(),
                _ => unreachable!(),
            }
        });
        assert_eq!(
            runs(&sunday, "2026-01-11T12:00:00Z", 3),
            utcs(&["2026-01-12T10:00:00Z", "2026-01-15T10:00:00Z", "2026-01-26T10:00:00Z"])
        );
    }

    #[test]
    fn daily_and_monthly_intervals_count_from_the_anchor() {
        let daily = rec(Recurrence {
            interval: 3,
            anchor: Some(utc("2026-01-02T09:00:00Z")),
            ..recurrence(Frequency::Daily, "08:00", "UTC")
        });
        assert_eq!(
            runs(&daily, "2026-01-01T00:00:00Z", 3),
            utcs(&["2026-01-03T08:00:00Z", "2026-01-06T08:00:00Z", "2026-01-09T08:00:00Z"])
        );
        // Local dates count: 08:00 in Tokyo on 2026-01-03 is 2026-01-02T23:00Z.
        let tokyo = rec(Recurrence {
            interval: 3,
            anchor: Some(utc("2026-01-02T09:00:00Z")),
            ..recurrence(Frequency::Daily, "08:00", "Asia/Tokyo")
        });
        assert_eq!(
            runs(&tokyo, "2026-01-01T00:00:00Z", 2),
            utcs(&["2026-01-02T23:00:00Z", "2026-01-05T23:00:00Z"])
        );
        let monthly = rec(Recurrence {
            interval: 3,
            day_of_month: 15,
            anchor: Some(utc("2026-02-20T00:00:00Z")),
            ..recurrence(Frequency::Monthly, "06:00", "UTC")
        });
        assert_eq!(
            runs(&monthly, "2026-02-20T00:00:00Z", 3),
            utcs(&["2026-03-15T06:00:00Z", "2026-06-15T06:00:00Z", "2026-09-15T06:00:00Z"])
        );
    }

    #[test]
    fn setting_a_recurrence_anchors_it_and_an_unchanged_one_keeps_its_anchor() {
        let first = utc("2026-01-13T09:00:00Z");
        let later = utc("2026-02-01T00:00:00Z");
        let weekly = rec(Recurrence {
            interval: 2,
            days_of_week: vec![Weekday::Mon],
            ..recurrence(Frequency::Weekly, "10:00", "UTC")
        });
        let anchor = |s: &Schedule| match &s.trigger {
            Trigger::Recurrence(r) => r.anchor,
            _ => None,
        };
        let set = weekly.clone().anchored(None, first);
        assert_eq!(anchor(&set), Some(first));
        // Saved again (as a client that read it back would), or switched off: same anchor.
        assert_eq!(anchor(&weekly.clone().anchored(Some(&set), later)), Some(first));
        let off = Schedule {
            enabled: false,
            ..weekly.clone()
        };
        assert_eq!(anchor(&off.anchored(Some(&set), later)), Some(first));
        // A changed rule is set anew.
        let changed = rec(Recurrence {
            interval: 3,
            days_of_week: vec![Weekday::Mon],
            ..recurrence(Frequency::Weekly, "10:00", "UTC")
        });
        assert_eq!(anchor(&changed.anchored(Some(&set), later)), Some(later));
        let cron = cron("0 6 * * *", "");
        assert_eq!(cron.clone().anchored(Some(&set), later), cron);
    }

    #[test]
    fn anchors_are_stored_as_rfc_3339_and_absent_when_unset() {
        let s = rec(recurrence(Frequency::Daily, "08:00", "UTC")).anchored(None, utc("2026-01-13T09:00:00.5Z"));
        let value = serde_json::to_value(&s).unwrap();
        assert_eq!(value["trigger"]["anchor"], "2026-01-13T09:00:00.500Z");
        let back: Schedule = serde_json::from_value(value).unwrap();
        assert_eq!(back, s);
        let unset = serde_json::to_value(rec(recurrence(Frequency::Daily, "08:00", "UTC"))).unwrap();
        assert!(unset["trigger"].get("anchor").is_none(), "{unset}");
    }

    #[test]
    fn schedules_read_as_words() {
        let weekly = rec(Recurrence {
            interval: 2,
            days_of_week: vec![Weekday::Mon, Weekday::Wed, Weekday::Thu],
            ..recurrence(Frequency::Weekly, "06:30", "Europe/Paris")
        });
        assert_eq!(
            weekly.to_string(),
            "every 2 weeks on Monday, Wednesday and Thursday at 06:30 (Europe/Paris)"
        );
        assert_eq!(
            rec(recurrence(Frequency::Hourly, "00:15", "")).to_string(),
            "every hour at :15 (UTC)"
        );
        assert_eq!(
            rec(Recurrence {
                day_of_month: 31,
                ..recurrence(Frequency::Monthly, "", "UTC")
            })
            .to_string(),
            "every month on day 31 at 00:00 (UTC)"
        );
        assert_eq!(cron("0 3 * * *", "").to_string(), "cron '0 3 * * *' (UTC)");
        let off = Schedule {
            enabled: false,
            ..cron("0 3 * * *", "")
        };
        assert_eq!(off.to_string(), "off");
    }

    // ---- WEEKLY ----

    #[test]
    fn weekly_several_days_interval_two() {
        // Weeks count from Monday 1970-01-05; the week of Monday 2026-01-05 is
        // week 2922 (even), 2026-01-12 is 2923 (odd), 2026-01-19 is 2924.
        let s = rec(Recurrence {
            interval: 2,
            days_of_week: vec![Weekday::Fri, Weekday::Mon, Weekday::Wed],
            ..recurrence(Frequency::Weekly, "10:00", "UTC")
        });
        assert!(s.validate().is_empty());
        assert_eq!(
            runs(&s, "2025-12-31T00:00:00Z", 5),
            utcs(&[
                "2026-01-05T10:00:00Z",
                "2026-01-07T10:00:00Z",
                "2026-01-09T10:00:00Z",
                "2026-01-19T10:00:00Z",
                "2026-01-21T10:00:00Z",
            ])
        );
    }

    #[test]
    fn weekly_in_a_zone_uses_local_weekdays() {
        // Sunday 23:30 in Los Angeles (PST, UTC-8) is Monday 07:30Z; at
        // 2026-01-05T00:00Z it is still Sunday 16:00 there.
        let s = rec(Recurrence {
            days_of_week: vec![Weekday::Sun],
            ..recurrence(Frequency::Weekly, "23:30", "America/Los_Angeles")
        });
        assert_eq!(
            runs(&s, "2026-01-05T00:00:00Z", 2),
            utcs(&["2026-01-05T07:30:00Z", "2026-01-12T07:30:00Z"])
        );
    }

    // ---- MONTHLY ----

    #[test]
    fn monthly_day_31_runs_on_the_last_day_of_short_months() {
        let s = rec(Recurrence {
            day_of_month: 31,
            ..recurrence(Frequency::Monthly, "12:00", "UTC")
        });
        assert_eq!(
            runs(&s, "2028-01-15T00:00:00Z", 4),
            utcs(&[
                "2028-01-31T12:00:00Z",
                "2028-02-29T12:00:00Z",
                "2028-03-31T12:00:00Z",
                "2028-04-30T12:00:00Z",
            ])
        );
        assert_eq!(
            s.next_run_time(utc("2027-02-01T00:00:00Z")),
            Some(utc("2027-02-28T12:00:00Z"))
        );
    }

    #[test]
    fn monthly_interval_three_is_anchored_to_january_1970() {
        // 2026-01 is month 672 since 1970-01, a multiple of 3.
        let s = rec(Recurrence {
            interval: 3,
            day_of_month: 15,
            ..recurrence(Frequency::Monthly, "06:00", "Europe/Paris")
        });
        assert_eq!(
            runs(&s, "2026-01-20T00:00:00Z", 3),
            utcs(&[
                "2026-04-15T04:00:00Z", // 06:00 CEST
                "2026-07-15T04:00:00Z",
                "2026-10-15T04:00:00Z",
            ])
        );
        assert_eq!(
            s.next_run_time(utc("2026-10-15T04:00:00Z")),
            Some(utc("2027-01-15T05:00:00Z")) // 06:00 CET
        );
    }

    #[test]
    fn large_intervals_still_find_the_next_run() {
        // 1000 months from 1970-01 is 2053-05.
        let s = rec(Recurrence {
            interval: 1000,
            day_of_month: 1,
            ..recurrence(Frequency::Monthly, "00:00", "UTC")
        });
        assert_eq!(
            s.next_run_time(utc("2026-01-01T00:00:00Z")),
            Some(utc("2053-05-01T00:00:00Z"))
        );
    }

    // ---- CRON ----

    #[test]
    fn cron_weekdays_in_jakarta() {
        // Asia/Jakarta is UTC+7 without DST. 2026-03-06 is a Friday.
        let s = cron("0 6,18 * * 1-5", "Asia/Jakarta");
        assert!(s.validate().is_empty());
        assert_eq!(
            runs(&s, "2026-03-05T12:00:00Z", 4),
            utcs(&[
                "2026-03-05T23:00:00Z", // Fri 06:00 WIB
                "2026-03-06T11:00:00Z", // Fri 18:00 WIB
                "2026-03-08T23:00:00Z", // Mon 06:00 WIB
                "2026-03-09T11:00:00Z", // Mon 18:00 WIB
            ])
        );
    }

    #[test]
    fn cron_fixed_time_in_a_dst_zone_follows_the_wall_clock() {
        let s = cron("30 2 * * *", "America/New_York");
        assert_eq!(
            runs(&s, "2026-03-07T12:00:00Z", 2),
            utcs(&["2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z"])
        );
        let fall = cron("30 1 * * *", "America/New_York");
        assert_eq!(
            runs(&fall, "2026-10-31T12:00:00Z", 2),
            utcs(&["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"])
        );
    }

    #[test]
    fn cron_wildcard_hour_counts_elapsed_time() {
        let s = cron("0 * * * *", "America/New_York");
        // Local 2026-11-01 lasts 25 hours: 04:00Z to 05:00Z next day.
        assert_eq!(count_runs(&s, "2026-11-01T04:00:00Z", "2026-11-02T05:00:00Z"), 25);
        // Local 2026-03-08 lasts 23 hours: 05:00Z to 04:00Z next day.
        assert_eq!(count_runs(&s, "2026-03-08T05:00:00Z", "2026-03-09T04:00:00Z"), 23);
    }

    #[test]
    fn cron_returns_the_earliest_instant_inside_a_repeated_hour() {
        // From 02:10 CEST (00:10Z) on fall-back day the next half hour is
        // 02:30 CEST (00:30Z), even though the local reading 02:00 (second
        // pass, 01:00Z) sorts first.
        let s = cron("*/30 * * * *", "Europe/Paris");
        assert_eq!(
            runs(&s, "2026-10-25T00:10:00Z", 4),
            utcs(&[
                "2026-10-25T00:30:00Z", // 02:30 CEST
                "2026-10-25T01:00:00Z", // 02:00 CET
                "2026-10-25T01:30:00Z", // 02:30 CET
                "2026-10-25T02:00:00Z", // 03:00 CET
            ])
        );
    }

    #[test]
    fn cron_extended_syntax_is_evaluated() {
        for (expression, after, expected) in [
            // Last day of February 2027.
            ("0 12 L * *", "2027-02-01T00:00:00Z", "2027-02-28T12:00:00Z"),
            // Second Friday of March 2026 (Fridays: 6th, 13th).
            ("0 9 * * 5#2", "2026-03-01T00:00:00Z", "2026-03-13T09:00:00Z"),
            // 7 and SUN both mean Sunday; 2026-03-06 is a Friday.
            ("0 0 * * 7", "2026-03-06T00:00:00Z", "2026-03-08T00:00:00Z"),
            ("0 0 ? * sun", "2026-03-06T00:00:00Z", "2026-03-08T00:00:00Z"),
            // Month names; 2026-03-02 is a Monday.
            ("30 8 * mar mon", "2026-02-27T00:00:00Z", "2026-03-02T08:30:00Z"),
        ] {
            let s = cron(expression, "UTC");
            assert!(s.validate().is_empty(), "{expression}");
            assert_eq!(s.next_run_time(utc(after)), Some(utc(expected)), "{expression}");
        }
    }

    #[test]
    fn cron_that_never_matches_is_invalid_and_has_no_next_run() {
        for expression in ["0 0 30 2 *", "0 0 31 2 *", "0 0 31 4,6,9,11 *"] {
            let s = cron(expression, "UTC");
            assert_eq!(fields(&s), ["cron.expression"], "{expression}");
            assert!(s.validate()[0].description.contains("never matches"), "{expression}");
            assert_eq!(s.next_run_time(utc("2026-01-01T00:00:00Z")), None);
        }
        // Rare but real dates are fine.
        assert!(cron("0 0 29 2 *", "UTC").validate().is_empty());
        assert!(
            cron("0 0 31 2 1", "UTC").validate().is_empty(),
            "day of month OR day of week"
        );
    }

    #[test]
    fn cron_leap_day_is_found_across_a_non_leap_century() {
        // 2100 is not a leap year, so after 2096 the next 29 February is 2104.
        let s = cron("0 0 29 2 *", "UTC");
        assert_eq!(
            s.next_run_time(utc("2096-03-01T00:00:00Z")),
            Some(utc("2104-02-29T00:00:00Z"))
        );
    }

    // ---- no next run ----

    #[test]
    fn disabled_and_system_refresh_have_no_next_run() {
        let mut s = rec(recurrence(Frequency::Daily, "09:00", "UTC"));
        s.enabled = false;
        assert_eq!(s.next_run_time(utc("2026-01-01T00:00:00Z")), None);
        let refresh = schedule(Trigger::SystemRefresh);
        assert!(refresh.validate().is_empty());
        assert_eq!(refresh.next_run_time(utc("2026-01-01T00:00:00Z")), None);
        assert_eq!(Trigger::SystemRefresh.next_after(utc("2026-01-01T00:00:00Z")), None);
    }

    #[test]
    fn invalid_schedule_has_no_next_run() {
        let s = rec(recurrence(Frequency::Daily, "25:00", "UTC"));
        assert_eq!(s.next_run_time(utc("2026-01-01T00:00:00Z")), None);
        let c = cron("61 * * * *", "UTC");
        assert_eq!(c.next_run_time(utc("2026-01-01T00:00:00Z")), None);
    }

    #[test]
    fn extreme_instants_do_not_panic() {
        let schedules = [
            rec(recurrence(Frequency::Hourly, "00:15", "Pacific/Kiritimati")),
            rec(recurrence(Frequency::Daily, "23:59", "Etc/GMT+12")),
            rec(Recurrence {
                days_of_week: vec![Weekday::Sun],
                ..recurrence(Frequency::Weekly, "12:00", "Europe/Paris")
            }),
            rec(Recurrence {
                interval: 1000,
                day_of_month: 31,
                ..recurrence(Frequency::Monthly, "12:00", "America/New_York")
            }),
            cron("*/5 * * * *", "Pacific/Kiritimati"),
            cron("0 0 29 2 *", "Etc/GMT+12"),
        ];
        for s in &schedules {
            for t in [DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC] {
                let _ = s.next_run_time(t);
            }
        }
        // A far past instant still yields a sensible answer.
        let daily = rec(recurrence(Frequency::Daily, "09:00", "UTC"));
        assert_eq!(
            daily.next_run_time(utc("0500-06-01T00:00:00Z")),
            Some(utc("0500-06-01T09:00:00Z"))
        );
    }

    // ---- validation ----

    #[test]
    fn valid_recurrences_have_no_violations() {
        for s in [
            rec(recurrence(Frequency::Hourly, "00:59", "Europe/Paris")),
            rec(recurrence(Frequency::Daily, "23:59", "")),
            rec(Recurrence {
                interval: 0,
                days_of_week: vec![Weekday::Sat],
                ..recurrence(Frequency::Weekly, "", "UTC")
            }),
            rec(Recurrence {
                interval: MAX_INTERVAL,
                day_of_month: 1,
                ..recurrence(Frequency::Monthly, "00:00", "Asia/Kolkata")
            }),
            cron("*/15 9-17 * JAN-MAR mon-fri", "America/Sao_Paulo"),
        ] {
            assert_eq!(s.validate(), vec![], "{s:?}");
        }
    }

    #[test]
    fn frequency_is_required() {
        let s = rec(Recurrence::default());
        assert_eq!(
            s.validate(),
            vec![FieldViolation::new("recurrence.frequency", "frequency is required")]
        );
    }

    #[test]
    fn interval_violations() {
        let negative = rec(Recurrence {
            interval: -1,
            ..recurrence(Frequency::Daily, "", "")
        });
        assert_eq!(fields(&negative), vec!["recurrence.interval"]);
        let too_large = rec(Recurrence {
            interval: MAX_INTERVAL + 1,
            ..recurrence(Frequency::Daily, "", "")
        });
        assert_eq!(fields(&too_large), vec!["recurrence.interval"]);
    }

    #[test]
    fn time_of_day_violations() {
        for bad in [
            "9:15", "09:5", "0915", "09-15", "24:00", "23:60", "ab:cd", " 09:15", "09:15:00", "０9:15", "é9:15",
        ] {
            let s = rec(recurrence(Frequency::Daily, bad, ""));
            assert_eq!(fields(&s), vec!["recurrence.time_of_day"], "{bad:?}");
        }
        let hourly = rec(recurrence(Frequency::Hourly, "01:15", ""));
        let violations = hourly.validate();
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].field, "recurrence.time_of_day");
        assert!(violations[0].description.contains("must be 00"));
    }

    #[test]
    fn days_of_week_violations() {
        let missing = rec(recurrence(Frequency::Weekly, "10:00", ""));
        assert_eq!(fields(&missing), vec!["recurrence.days_of_week"]);
        let not_weekly = rec(Recurrence {
            days_of_week: vec![Weekday::Mon],
            ..recurrence(Frequency::Daily, "10:00", "")
        });
        assert_eq!(fields(&not_weekly), vec!["recurrence.days_of_week"]);
    }

    #[test]
    fn day_of_month_violations() {
        for day in [0, -1, 32] {
            let s = rec(Recurrence {
                day_of_month: day,
                ..recurrence(Frequency::Monthly, "10:00", "")
            });
            assert_eq!(fields(&s), vec!["recurrence.day_of_month"], "{day}");
        }
        let not_monthly = rec(Recurrence {
            day_of_month: 5,
            ..recurrence(Frequency::Hourly, "00:10", "")
        });
        assert_eq!(fields(&not_monthly), vec!["recurrence.day_of_month"]);
    }

    #[test]
    fn time_zone_violations() {
        let s = rec(recurrence(Frequency::Daily, "10:00", "Mars/Olympus_Mons"));
        assert_eq!(fields(&s), vec!["recurrence.time_zone"]);
        let c = cron("0 6 * * *", "europe/paris ");
        assert_eq!(fields(&c), vec!["cron.time_zone"]);
    }

    #[test]
    fn cron_expression_violations_include_the_parser_reason() {
        for (bad, reason) in [
            ("", "empty"),
            ("0 6 * * * *", "5 fields"),
            ("0 6 * *", "5 fields"),
            ("61 * * * *", "out of bounds"),
            ("0 6 * * mon#x", "illegal"),
            ("@daily", "exactly 5 fields"),
            ("0 ,, * * *", "empty list item"),
            ("0,5, 6 * * *", "empty list item"),
        ] {
            let violations = cron(bad, "").validate();
            assert_eq!(violations.len(), 1, "{bad:?}");
            assert_eq!(violations[0].field, "cron.expression");
            assert!(
                violations[0].description.to_lowercase().contains(reason),
                "{bad:?}: {}",
                violations[0].description
            );
        }
    }

    #[test]
    fn all_violations_are_reported_together() {
        let s = rec(Recurrence {
            frequency: Some(Frequency::Hourly),
            interval: -3,
            time_of_day: "7:00".to_owned(),
            days_of_week: vec![Weekday::Tue],
            day_of_month: 3,
            time_zone: "Nowhere".to_owned(),
            anchor: None,
        });
        assert_eq!(
            fields(&s),
            vec![
                "recurrence.interval",
                "recurrence.time_of_day",
                "recurrence.days_of_week",
                "recurrence.day_of_month",
                "recurrence.time_zone",
            ]
        );
        let c = cron("bad", "Nowhere");
        assert_eq!(fields(&c), vec!["cron.expression", "cron.time_zone"]);
        // A disabled schedule is validated all the same.
        let disabled = Schedule { enabled: false, ..c };
        assert_eq!(disabled.validate().len(), 2);
    }

    // ---- serde ----

    #[test]
    fn serde_json_round_trip() {
        let schedules = [
            rec(Recurrence {
                interval: 2,
                days_of_week: vec![Weekday::Mon, Weekday::Fri],
                ..recurrence(Frequency::Weekly, "10:00", "Europe/Paris")
            }),
            cron("0 6,18 * * 1-5", "Asia/Jakarta"),
            Schedule {
                enabled: false,
                trigger: Trigger::SystemRefresh,
            },
        ];
        for s in schedules {
            let json = serde_json::to_string(&s).expect("serialize");
            let back: Schedule = serde_json::from_str(&json).expect("deserialize");
            assert_eq!(back, s, "{json}");
        }
    }

    #[test]
    fn serde_json_shape() {
        let s = rec(Recurrence {
            days_of_week: vec![Weekday::Mon],
            ..recurrence(Frequency::Weekly, "10:00", "UTC")
        });
        let value = serde_json::to_value(&s).expect("serialize");
        assert_eq!(
            value,
            serde_json::json!({
                "enabled": true,
                "trigger": {
                    "type": "recurrence",
                    "frequency": "weekly",
                    "interval": 1,
                    "time_of_day": "10:00",
                    "days_of_week": ["Mon"],
                    "day_of_month": 0,
                    "time_zone": "UTC"
                }
            })
        );
        // Omitted fields take their defaults.
        let sparse: Schedule = serde_json::from_value(serde_json::json!({
            "enabled": true,
            "trigger": {"type": "cron", "expression": "0 6 * * *"}
        }))
        .expect("deserialize");
        assert_eq!(sparse, cron("0 6 * * *", ""));
        let refresh: Schedule = serde_json::from_value(serde_json::json!({
            "enabled": true,
            "trigger": {"type": "system_refresh"}
        }))
        .expect("deserialize");
        assert_eq!(refresh.trigger, Trigger::SystemRefresh);
    }
}

//! Deploy windows: when automatic triggers may deploy. `windows = [{ allow = "Mon-Fri 09:00-17:00" },
//! { deny = "2026-12-24 00:00 - 2026-12-27 00:00" }]` with `timezone = "Europe/Berlin"` (an IANA name, read
//! from the system's zoneinfo; DST is the zone's). A time is open when it is inside an `allow` (or there is
//! none) and inside no `deny`. An app's own `windows` replace the top level's.
//!
//! A weekly window is `DAYS HH:MM-HH:MM` (DAYS: `Mon-Fri`, `Sat,Sun`, `Mon-Wed,Fri`, or `*`; no DAYS: every
//! day). Its end may be past midnight (`Fri 22:00-02:00` runs into Saturday) or `24:00`. A dated window is
//! `YYYY-MM-DD HH:MM - YYYY-MM-DD HH:MM`, or `YYYY-MM-DD - YYYY-MM-DD` (midnight to midnight).

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::Timestamp;

use super::raw::RawWindow;

/// An app's deploy windows, in its time zone.
#[derive(Debug, Clone)]
pub struct Windows {
    pub timezone: String,
    tz: TimeZone,
    rules: Vec<Rule>,
}

impl PartialEq for Windows {
    fn eq(&self, other: &Windows) -> bool {
        self.timezone == other.timezone && self.rules == other.rules
    }
}
impl Eq for Windows {}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    allow: bool,
    span: Span,
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Span {
    /// Days Monday = 0 .. Sunday = 6; minutes of the day, `end` <= `start` running into the next day.
    Weekly {
        days: [bool; 7],
        start: u32,
        end: u32,
    },
    Dated {
        from: Timestamp,
        to: Timestamp,
    },
}

/// Whether automatic triggers may deploy now, and if not, when they next may.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WindowState {
    Open,
    /// Closed until `until` (none: no window opens within a year).
    Closed {
        until: Option<Timestamp>,
        why: String,
    },
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

pub(crate) fn parse(raw: &[RawWindow], timezone: Option<&str>) -> Result<Option<Windows>, String> {
    if raw.is_empty() {
        return Ok(None);
    }
    let name = timezone.unwrap_or("UTC");
    let tz = TimeZone::get(name).map_err(|e| {
        format!("timezone {name:?} is not a time zone this system knows (an IANA name like \"Europe/Berlin\", from /usr/share/zoneinfo): {e}")
    })?;
    let mut rules = Vec::new();
    for (i, w) in raw.iter().enumerate() {
        let (allow, text) = match (&w.allow, &w.deny) {
            (Some(a), None) => (true, a),
            (None, Some(d)) => (false, d),
            _ => {
                return Err(format!(
                    "windows[{i}] is either {{ allow = \"...\" }} or {{ deny = \"...\" }}"
                ))
            }
        };
        let span = parse_span(text, &tz).map_err(|e| format!("windows[{i}] {text:?}: {e}"))?;
        rules.push(Rule {
            allow,
            span,
            text: text.clone(),
        });
    }
    Ok(Some(Windows {
        timezone: name.to_string(),
        tz,
        rules,
    }))
}

fn parse_span(text: &str, tz: &TimeZone) -> Result<Span, String> {
    let t = text.trim();
    if t.as_bytes().first().is_some_and(u8::is_ascii_digit)
        && t.len() >= 10
        && t.as_bytes().get(4) == Some(&b'-')
    {
        return parse_dated(t, tz);
    }
    let (days, times) = match t.rsplit_once(' ') {
        Some((d, times)) => (parse_days(d.trim())?, times),
        None => ([true; 7], t),
    };
    let (a, b) = times
        .split_once('-')
        .ok_or("a weekly window is DAYS HH:MM-HH:MM, e.g. \"Mon-Fri 09:00-17:00\"")?;
    let (start, end) = (minutes(a.trim())?, minutes(b.trim())?);
    if start >= 1440 {
        return Err("a window starts at 23:59 at the latest".into());
    }
    if start == end {
        return Err("a window's start and end are the same time: for a whole day write 00:00-24:00".into());
    }
    Ok(Span::Weekly {
        days,
        start,
        end: if end == 1440 { 0 } else { end },
    })
}

fn parse_days(s: &str) -> Result<[bool; 7], String> {
    if s == "*" {
        return Ok([true; 7]);
    }
    let day = |d: &str| {
        let d = d.trim().to_ascii_lowercase();
        DAYS.iter()
            .position(|x| d.starts_with(x) && d.len() >= 3)
            .ok_or_else(|| format!("{d:?} is not a day (Mon, Tue, Wed, Thu, Fri, Sat, Sun)"))
    };
    let mut days = [false; 7];
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (day(a)?, day(b)?);
                let mut i = a;
                loop {
                    days[i] = true;
                    if i == b {
                        break;
                    }
                    i = (i + 1) % 7;
                }
            }
            None => days[day(part)?] = true,
        }
    }
    Ok(days)
}

/// `HH:MM` as minutes of the day; `24:00` is 1440.
fn minutes(s: &str) -> Result<u32, String> {
    let bad = || format!("{s:?} is not a time of day (HH:MM, 00:00 to 24:00)");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m > 59 || h > 24 || (h == 24 && m > 0) || s.len() != 5 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

fn parse_dated(t: &str, tz: &TimeZone) -> Result<Span, String> {
    let (a, b) = t
        .split_once(" - ")
        .ok_or("a dated window is \"YYYY-MM-DD HH:MM - YYYY-MM-DD HH:MM\" (spaces around the dash)")?;
    let at = |s: &str| -> Result<Timestamp, String> {
        let s = s.trim();
        let civil: DateTime = if s.len() == 10 {
            s.parse::<Date>()
                .map_err(|e| format!("{s:?} is not a date (YYYY-MM-DD): {e}"))?
                .at(0, 0, 0, 0)
        } else {
            s.replacen(' ', "T", 1)
                .parse::<DateTime>()
                .map_err(|e| format!("{s:?} is not a date and time (YYYY-MM-DD HH:MM): {e}"))?
        };
        tz.to_ambiguous_zoned(civil)
            .compatible()
            .map(|z| z.timestamp())
            .map_err(|e| format!("{s:?} does not exist in this time zone: {e}"))
    };
    let (from, to) = (at(a)?, at(b)?);
    if to <= from {
        return Err("a dated window ends after it starts".into());
    }
    Ok(Span::Dated { from, to })
}

impl Rule {
    fn contains(&self, t: Timestamp, tz: &TimeZone) -> bool {
        match &self.span {
            Span::Dated { from, to } => *from <= t && t < *to,
            Span::Weekly { days, start, end } => {
                let z = t.to_zoned(tz.clone());
                let wd = z.weekday().to_monday_zero_offset() as usize;
                let m = z.hour() as u32 * 60 + z.minute() as u32;
                if start < end {
                    days[wd] && *start <= m && m < *end
                } else {
                    (days[wd] && m >= *start) || (days[(wd + 6) % 7] && m < *end)
                }
            }
        }
    }
}

impl Windows {
    fn open_at(&self, t: Timestamp) -> bool {
        let allows = self.rules.iter().filter(|r| r.allow);
        let mut any_allow = false;
        let mut allowed = false;
        for r in allows {
            any_allow = true;
            allowed |= r.contains(t, &self.tz);
        }
        (!any_allow || allowed) && !self.rules.iter().any(|r| !r.allow && r.contains(t, &self.tz))
    }

    /// Open at `now`, or closed with when it next opens (within a year) and which rule closes it.
    pub fn state(&self, now_ms: i64) -> WindowState {
        let Ok(now) = Timestamp::from_millisecond(now_ms) else {
            return WindowState::Open;
        };
        if self.open_at(now) {
            return WindowState::Open;
        }
        let why = match self.rules.iter().find(|r| !r.allow && r.contains(now, &self.tz)) {
            Some(r) => format!("inside the deploy window deny = {:?}", r.text),
            None => {
                let allows: Vec<String> = self
                    .rules
                    .iter()
                    .filter(|r| r.allow)
                    .map(|r| format!("{:?}", r.text))
                    .collect();
                format!("outside the deploy windows (allow {})", allows.join(", "))
            }
        };
        WindowState::Closed {
            until: self.next_open(now),
            why,
        }
    }

    /// The first instant after `now` that is open: openness changes only where an allow starts or a deny
    /// ends, so those (for the next year) are the only candidates.
    fn next_open(&self, now: Timestamp) -> Option<Timestamp> {
        let today = now.to_zoned(self.tz.clone()).date();
        let mut candidates: Vec<Timestamp> = Vec::new();
        let civil = |d: Date, m: u32| -> Option<Timestamp> {
            let dt = d.at((m / 60) as i8, (m % 60) as i8, 0, 0);
            self.tz
                .to_ambiguous_zoned(dt)
                .compatible()
                .ok()
                .map(|z| z.timestamp())
        };
        for r in &self.rules {
            match (&r.span, r.allow) {
                (Span::Dated { from, .. }, true) => candidates.push(*from),
                (Span::Dated { to, .. }, false) => candidates.push(*to),
                (Span::Weekly { days, start, end }, allow) => {
                    for offset in -1..=370i32 {
                        let Ok(d) = today.checked_add(jiff::Span::new().days(offset)) else {
                            continue;
                        };
                        let wd = d.weekday().to_monday_zero_offset() as usize;
                        if !days[wd] {
                            continue;
                        }
                        if allow {
                            candidates.extend(civil(d, *start));
                        } else if start < end {
                            candidates.extend(civil(d, *end));
                        } else if let Ok(next) = d.tomorrow() {
                            candidates.extend(civil(next, *end));
                        }
                    }
                }
            }
        }
        candidates.retain(|c| *c > now);
        candidates.sort();
        candidates.dedup();
        candidates.into_iter().find(|c| self.open_at(*c))
    }
}

/// An instant as a person reads it, in the windows' zone: `2026-12-07 09:00 CET (Europe/Berlin)`.
pub fn shown(t: Timestamp, w: &Windows) -> String {
    let z = t.to_zoned(w.tz.clone());
    format!("{} ({})", z.strftime("%Y-%m-%d %H:%M %Z"), w.timezone)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows(rules: &[(&str, &str)], tz: &str) -> Windows {
        let raw: Vec<RawWindow> = rules
            .iter()
            .map(|(k, v)| RawWindow {
                allow: (*k == "allow").then(|| v.to_string()),
                deny: (*k == "deny").then(|| v.to_string()),
            })
            .collect();
        parse(&raw, Some(tz)).expect("valid").expect("some")
    }

    fn ms(s: &str, tz: &str) -> i64 {
        let dt: DateTime = s.parse().expect("datetime");
        dt.to_zoned(TimeZone::get(tz).expect("tz"))
            .expect("zoned")
            .timestamp()
            .as_millisecond()
    }

    fn until(w: &Windows, at: &str) -> Option<String> {
        match w.state(ms(at, &w.timezone)) {
            WindowState::Open => None,
            WindowState::Closed { until, .. } => Some(until.map_or("never".into(), |t| {
                t.to_zoned(w.tz.clone()).strftime("%Y-%m-%dT%H:%M%:z").to_string()
            })),
        }
    }

    #[test]
    fn office_hours_open_on_weekdays_and_reopen_on_monday_morning() {
        let w = windows(&[("allow", "Mon-Fri 09:00-17:00")], "Europe/Berlin");
        assert_eq!(until(&w, "2026-12-02T10:00"), None, "a Wednesday morning");
        assert_eq!(
            until(&w, "2026-12-02T17:00").as_deref(),
            Some("2026-12-03T09:00+01:00")
        );
        assert_eq!(
            until(&w, "2026-12-04T18:30").as_deref(),
            Some("2026-12-07T09:00+01:00"),
            "Friday evening"
        );
        assert_eq!(
            until(&w, "2026-12-05T12:00").as_deref(),
            Some("2026-12-07T09:00+01:00")
        );
    }

    #[test]
    fn a_dated_deny_wins_over_an_allow_and_the_window_reopens_after_it() {
        let w = windows(
            &[
                ("allow", "Mon-Fri 09:00-17:00"),
                ("deny", "2026-12-24 00:00 - 2026-12-28 12:00"),
            ],
            "Europe/Berlin",
        );
        assert_eq!(
            until(&w, "2026-12-24T10:00").as_deref(),
            Some("2026-12-28T12:00+01:00")
        );
        assert_eq!(until(&w, "2026-12-23T10:00"), None);
        let only_deny = windows(&[("deny", "2026-12-24 - 2026-12-27")], "UTC");
        assert_eq!(
            until(&only_deny, "2026-12-25T03:00").as_deref(),
            Some("2026-12-27T00:00+00:00")
        );
        assert_eq!(until(&only_deny, "2026-12-27T00:00"), None);
    }

    #[test]
    fn dst_is_the_zone_s_and_windows_past_midnight_run_into_the_next_day() {
        // Berlin leaves summer time on 2026-10-25: 09:00 local is 07:00 UTC before, 08:00 UTC after.
        let w = windows(&[("allow", "Mon-Fri 09:00-17:00")], "Europe/Berlin");
        let open = |at: &str| until(&w, at);
        assert_eq!(
            open("2026-10-23T18:00").as_deref(),
            Some("2026-10-26T09:00+01:00")
        );
        assert_eq!(
            open("2026-10-22T18:00").as_deref(),
            Some("2026-10-23T09:00+02:00")
        );
        let night = windows(&[("allow", "Fri 22:00-02:00")], "UTC");
        assert_eq!(
            until(&night, "2026-12-05T01:30"),
            None,
            "Saturday 01:30 is still Friday's window"
        );
        assert_eq!(
            until(&night, "2026-12-05T02:00").as_deref(),
            Some("2026-12-11T22:00+00:00")
        );
        let always = windows(&[("allow", "* 00:00-24:00")], "UTC");
        assert_eq!(until(&always, "2026-12-05T02:00"), None);
    }

    #[test]
    fn bad_windows_name_what_is_wrong() {
        let bad = |rules: &[(&str, &str)], tz: &str, says: &str| {
            let raw: Vec<RawWindow> = rules
                .iter()
                .map(|(k, v)| RawWindow {
                    allow: (*k != "deny").then(|| v.to_string()),
                    deny: (*k != "allow").then(|| v.to_string()),
                })
                .collect();
            let err = parse(&raw, Some(tz)).expect_err(says);
            assert!(err.contains(says), "{err:?} should say {says:?}");
        };
        bad(
            &[("allow", "Mon-Fri 09:00-17:00")],
            "Mars/Olympus",
            "not a time zone",
        );
        bad(&[("allow", "Mon-Fri 9-17")], "UTC", "not a time of day");
        bad(&[("allow", "Mon-Fry 09:00-17:00")], "UTC", "not a day");
        bad(&[("allow", "Mon 09:00-09:00")], "UTC", "the same time");
        bad(&[("allow", "Mon 25:00-26:00")], "UTC", "not a time of day");
        bad(
            &[("deny", "2026-12-27 - 2026-12-24")],
            "UTC",
            "ends after it starts",
        );
        bad(
            &[("deny", "2026-12-24-2026-12-27")],
            "UTC",
            "spaces around the dash",
        );
        bad(&[("both", "Mon 09:00-10:00")], "UTC", "either");
    }
}

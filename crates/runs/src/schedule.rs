//! The materialisation timer's calendar, so that health follows the schedule: with a Monday to
//! Friday timer, data last refreshed on Friday evening is fresh on Sunday, not an outage. A
//! schedule is written like the timer's `OnCalendar=` in the subset QuantLens timers use:
//! optional weekdays (`Mon..Fri`, `Sat,Sun`, `Mon,Wed..Fri`), an optional `*-*-*`, a time of
//! day `HH:MM[:SS]`, and optionally `UTC`, the only zone understood.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, NaiveTime, Utc};

/// Runs at one time of day on some days of the week, in UTC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    text: String,
    /// Monday first.
    days: [bool; 7],
    time: NaiveTime,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "`{text}` is not a schedule QuantLens understands ({reason}); write it like the timer's \
     OnCalendar=, e.g. `Mon..Fri *-*-* 22:30:00 UTC`: weekdays, then HH:MM[:SS], in UTC"
)]
pub struct ScheduleError {
    text: String,
    reason: String,
}

/// Monday first, as systemd writes them (abbreviated or in full).
const DAYS: [(&str, &str); 7] = [
    ("mon", "monday"),
    ("tue", "tuesday"),
    ("wed", "wednesday"),
    ("thu", "thursday"),
    ("fri", "friday"),
    ("sat", "saturday"),
    ("sun", "sunday"),
];

impl FromStr for Schedule {
    type Err = ScheduleError;

    fn from_str(text: &str) -> Result<Schedule, ScheduleError> {
        let error = |reason: &str| ScheduleError {
            text: text.to_string(),
            reason: reason.to_string(),
        };
        let mut tokens: Vec<&str> = text.split_whitespace().collect();
        if tokens.last().is_some_and(|t| t.eq_ignore_ascii_case("utc")) {
            tokens.pop();
        }
        let mut days = [true; 7];
        if let Some(first) = tokens.first() {
            if first.starts_with(|c: char| c.is_ascii_alphabetic()) {
                days = weekdays(first).map_err(|reason| error(&reason))?;
                tokens.remove(0);
            }
        }
        if tokens.first() == Some(&"*-*-*") {
            tokens.remove(0);
        }
        let [time] = tokens[..] else {
            return Err(error(
                "expected one time of day, and no date but *-*-* or zone but UTC",
            ));
        };
        let time = NaiveTime::parse_from_str(time, "%H:%M:%S")
            .or_else(|_| NaiveTime::parse_from_str(time, "%H:%M"))
            .map_err(|_| error(&format!("`{time}` is not a time HH:MM[:SS]")))?;
        Ok(Schedule {
            text: text.trim().to_string(),
            days,
            time,
        })
    }
}

/// `Mon..Fri`, `Sat,Sun`, `Mon,Wed..Fri` (full names too) as a Monday-first set.
fn weekdays(list: &str) -> Result<[bool; 7], String> {
    let day = |name: &str| {
        let lower = name.to_ascii_lowercase();
        DAYS.iter()
            .position(|(short, long)| lower == *short || lower == *long)
            .ok_or_else(|| format!("`{name}` is not a weekday"))
    };
    let mut days = [false; 7];
    for part in list.split(',') {
        let (first, last) = match part.split_once("..") {
            Some((a, b)) => (day(a)?, day(b)?),
            None => (day(part)?, day(part)?),
        };
        if first > last {
            return Err(format!("`{part}` runs backwards"));
        }
        days[first..=last].iter_mut().for_each(|d| *d = true);
    }
    Ok(days)
}

impl Schedule {
    /// The latest scheduled instant at or before `at`.
    pub fn latest_at_or_before(&self, at: DateTime<Utc>) -> DateTime<Utc> {
        (0..=7)
            .filter_map(|back| at.date_naive().checked_sub_days(chrono::Days::new(back)))
            .filter(|day| self.days[day.weekday().num_days_from_monday() as usize])
            .map(|day| day.and_time(self.time).and_utc())
            .find(|instant| *instant <= at)
            .expect("a schedule runs on at least one day a week")
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn the_timers_calendar_parses() {
        let weekdays: Schedule = "Mon..Fri *-*-* 22:30:00 UTC".parse().unwrap();
        assert_eq!(weekdays.days, [true, true, true, true, true, false, false]);
        assert_eq!(weekdays.time, NaiveTime::from_hms_opt(22, 30, 0).unwrap());
        assert_eq!(weekdays.to_string(), "Mon..Fri *-*-* 22:30:00 UTC");
        let some: Schedule = "Monday,Wed..Fri 06:00".parse().unwrap();
        assert_eq!(some.days, [true, false, true, true, true, false, false]);
        let daily: Schedule = "*-*-* 01:15".parse().unwrap();
        assert_eq!(daily.days, [true; 7]);
        for bad in [
            "",
            "Mon..Fri",
            "Fri..Mon 10:00",
            "Mon..Fri 25:00",
            "Xyz 10:00",
            "Mon 10:00 Europe/Paris",
            "2026-*-* 10:00",
            "Mon..Fri 10:00 11:00",
        ] {
            let err = bad.parse::<Schedule>().unwrap_err().to_string();
            assert!(
                err.contains("e.g. `Mon..Fri *-*-* 22:30:00 UTC`"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn the_latest_run_skips_the_days_off() {
        let weekdays: Schedule = "Mon..Fri 22:30".parse().unwrap();
        // 2026-12-05 is a Saturday, 2026-12-07 a Monday.
        let friday = at("2026-12-04T22:30:00Z");
        assert_eq!(
            weekdays.latest_at_or_before(at("2026-12-05T12:00:00Z")),
            friday
        );
        assert_eq!(
            weekdays.latest_at_or_before(at("2026-12-07T22:29:59Z")),
            friday
        );
        assert_eq!(
            weekdays.latest_at_or_before(at("2026-12-07T22:30:00Z")),
            at("2026-12-07T22:30:00Z")
        );
        let sunday: Schedule = "Sun 03:00".parse().unwrap();
        assert_eq!(
            sunday.latest_at_or_before(at("2026-12-06T02:00:00Z")),
            at("2026-11-29T03:00:00Z")
        );
    }
}

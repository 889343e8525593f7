//! Calendar helpers over Arrow's Date32 values (days since 1970-01-01): the month partitions of
//! silver and gold are named after the month a date falls in ("YYYY-MM").

use chrono::{Datelike, NaiveDate};
use quantlens_lake::arrow::datatypes::Date32Type;

/// The date of a Date32 value.
pub fn date_of(day: i32) -> NaiveDate {
    Date32Type::to_naive_date_opt(day).expect("Date32 values of the lake are within chrono's range")
}

/// The Date32 value of a date.
pub fn day_of(date: NaiveDate) -> i32 {
    Date32Type::from_naive_date(date)
}

/// The first day of the month a Date32 value falls in.
pub fn month_start(day: i32) -> i32 {
    day_of(date_of(day).with_day(1).expect("day 1 exists"))
}

/// The partition ("YYYY-MM") a Date32 value falls in.
pub fn month_of(day: i32) -> String {
    with_month_of(day, str::to_string)
}

/// Calls `use_name` with [`month_of`]`(day)` without allocating it: for checks made per row.
pub fn with_month_of<T>(day: i32, use_name: impl FnOnce(&str) -> T) -> T {
    use std::io::Write;
    let date = date_of(day);
    // Room for chrono's widest year, "-262143-12".
    const ROOM: usize = 16;
    let mut name = [0u8; ROOM];
    let unused = {
        let mut rest = &mut name[..];
        write!(rest, "{:04}-{:02}", date.year(), date.month()).expect("room for any month");
        rest.len()
    };
    use_name(std::str::from_utf8(&name[..ROOM - unused]).expect("ASCII"))
}

/// The calendar months from `first` to `last` ("YYYY-MM"), inclusive.
pub fn months_between(first: NaiveDate, last: NaiveDate) -> std::collections::BTreeSet<String> {
    let mut months = std::collections::BTreeSet::new();
    let mut day = first.with_day(1).expect("day 1 exists");
    while day <= last {
        months.insert(month_of(day_of(day)));
        day = day
            .checked_add_months(chrono::Months::new(1))
            .expect("dates stay in chrono's range");
    }
    months
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_and_days_round_trip() {
        let date = NaiveDate::from_ymd_opt(2024, 3, 5).unwrap();
        assert_eq!(day_of(NaiveDate::from_ymd_opt(1970, 1, 2).unwrap()), 1);
        assert_eq!(month_of(day_of(date)), "2024-03");
        assert_eq!(date_of(day_of(date)), date);
        assert_eq!(month_of(0), "1970-01");
        for day in (-800_000..3_000_000)
            .step_by(997)
            .chain([-719_162, 2_932_896])
        {
            let date = date_of(day);
            let formatted = format!("{:04}-{:02}", date.year(), date.month());
            assert_eq!(with_month_of(day, str::to_string), formatted, "day {day}");
        }
        assert_eq!(date_of(month_start(day_of(date))).to_string(), "2024-03-01");
        let between = months_between(
            NaiveDate::from_ymd_opt(2023, 11, 15).unwrap(),
            NaiveDate::from_ymd_opt(2024, 2, 1).unwrap(),
        );
        assert_eq!(
            between.into_iter().collect::<Vec<_>>(),
            ["2023-11", "2023-12", "2024-01", "2024-02"]
        );
    }
}

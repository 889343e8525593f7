//! The rules a bronze row must pass to become a silver price, in the order they are applied. Each
//! rule has a name (the `rule` column of `silver/prices_rejects`) and a human explanation of what
//! the row got wrong. Pure functions, one unit test per rule.

use chrono::NaiveDate;

use crate::landing::HEADER;

/// The first validation rule a row breaks, with a human explanation.
#[derive(Debug, PartialEq)]
pub struct Broken {
    pub rule: &'static str,
    pub detail: String,
}

/// Parsed values of a valid row.
#[derive(Debug, PartialEq)]
pub struct ValidRow<'a> {
    pub symbol: &'a str,
    pub date: NaiveDate,
    pub prices: [f64; 4],
    pub volume: i64,
}

/// Applies the silver rules in order to one row's raw fields and returns the first one broken.
pub fn validate<'a>(
    fields: &[Option<&'a str>; 7],
    field_count: i32,
) -> Result<ValidRow<'a>, Broken> {
    let broken = |rule, detail: String| Err(Broken { rule, detail });
    if field_count != 7 {
        return broken(
            "field_count",
            format!("expected 7 fields, found {field_count}"),
        );
    }
    let mut values = [""; 7];
    for (index, field) in fields.iter().enumerate() {
        let value = field.unwrap_or("").trim();
        if value.is_empty() {
            return broken("empty_field", format!("`{}` is empty", HEADER[index]));
        }
        values[index] = value;
    }
    let [symbol, date, ..] = values;
    if !is_valid_symbol(symbol) {
        return broken(
            "bad_symbol",
            format!("`{symbol}` does not match ^[A-Z0-9][A-Z0-9.-]{{0,15}}$"),
        );
    }
    let Some(date) = parse_date(date) else {
        return broken("bad_date", format!("`{date}` is not a YYYY-MM-DD date"));
    };
    let mut prices = [0.0; 4];
    for (slot, index) in prices.iter_mut().zip(2..6) {
        *slot = match values[index].parse::<f64>() {
            Ok(price) => price,
            Err(_) => {
                return broken(
                    "bad_number",
                    format!("`{}` is not a number: `{}`", HEADER[index], values[index]),
                )
            }
        };
    }
    let Ok(volume) = values[6].parse::<i64>() else {
        return broken(
            "bad_volume",
            format!("`volume` is not an integer: `{}`", values[6]),
        );
    };
    for (price, index) in prices.iter().zip(2..6) {
        if !price.is_finite() {
            return broken(
                "price_not_finite",
                format!("`{}` is {price}", HEADER[index]),
            );
        }
        if *price <= 0.0 {
            return broken(
                "price_not_positive",
                format!("`{}` is {price}", HEADER[index]),
            );
        }
    }
    if volume < 0 {
        return broken("negative_volume", format!("`volume` is {volume}"));
    }
    let [open, high, low, close] = prices;
    if low > open.min(close) {
        return broken(
            "low_above_open_close",
            format!("low {low} > min(open {open}, close {close})"),
        );
    }
    if high < open.max(close) {
        return broken(
            "high_below_open_close",
            format!("high {high} < max(open {open}, close {close})"),
        );
    }
    Ok(ValidRow {
        symbol,
        date,
        prices,
        volume,
    })
}

fn is_valid_symbol(symbol: &str) -> bool {
    let bytes = symbol.as_bytes();
    let first_ok = bytes
        .first()
        .is_some_and(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    first_ok
        && bytes.len() <= 16
        && bytes[1..]
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'.' || *b == b'-')
}

/// `YYYY-MM-DD` and a real day. By hand: chrono's `parse_from_str` reads its format string anew
/// for every call, 2% of a full build.
fn parse_date(text: &str) -> Option<NaiveDate> {
    let bytes = text.as_bytes();
    let number = |range: std::ops::Range<usize>| {
        bytes[range].iter().try_fold(0u32, |value, byte| {
            byte.is_ascii_digit()
                .then(|| value * 10 + u32::from(byte - b'0'))
        })
    };
    if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return None;
    }
    let year = i32::try_from(number(0..4)?).ok()?;
    NaiveDate::from_ymd_opt(year, number(5..7)?, number(8..10)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(fields: [&str; 7]) -> Result<(), &'static str> {
        let fields = fields.map(Some);
        validate(&fields, 7).map(|_| ()).map_err(|b| b.rule)
    }

    #[test]
    fn each_rule_is_reported_first_when_broken() {
        assert_eq!(
            check(["AAA", "2024-01-02", "10", "11", "9", "10.5", "100"]),
            Ok(())
        );
        assert_eq!(
            check(["BRK.B", "2024-01-02", "10", "11", "9", "10.5", "0"]),
            Ok(())
        );
        assert_eq!(
            check(["AAA", "2024-01-02", "10", "11", "9", "", "100"]),
            Err("empty_field")
        );
        assert_eq!(
            check(["aaa", "2024-01-02", "10", "11", "9", "10", "100"]),
            Err("bad_symbol")
        );
        assert_eq!(
            check(["-AA", "2024-01-02", "10", "11", "9", "10", "100"]),
            Err("bad_symbol")
        );
        assert_eq!(
            check([
                "ABCDEFGHIJKLMNOPQ",
                "2024-01-02",
                "10",
                "11",
                "9",
                "10",
                "1"
            ]),
            Err("bad_symbol")
        );
        assert_eq!(
            check(["AAA", "02/01/2024", "10", "11", "9", "10", "100"]),
            Err("bad_date")
        );
        assert_eq!(
            check(["AAA", "2024-02-30", "10", "11", "9", "10", "100"]),
            Err("bad_date")
        );
        for bad in [
            "2024-1-020",
            "+024-01-02",
            "2024-01-0x",
            "2024/01/02",
            "2024-00-10",
        ] {
            assert_eq!(
                check(["AAA", bad, "1", "1", "1", "1", "1"]),
                Err("bad_date"),
                "{bad}"
            );
        }
        assert_eq!(
            parse_date("2024-02-29"),
            NaiveDate::from_ymd_opt(2024, 2, 29)
        );
        assert_eq!(parse_date("0001-01-01"), NaiveDate::from_ymd_opt(1, 1, 1));
        assert_eq!(
            check(["AAA", "2024-01-02", "ten", "11", "9", "10", "100"]),
            Err("bad_number")
        );
        assert_eq!(
            check(["AAA", "2024-01-02", "10", "11", "9", "10", "1.5"]),
            Err("bad_volume")
        );
        assert_eq!(
            check(["AAA", "2024-01-02", "10", "inf", "9", "10", "100"]),
            Err("price_not_finite")
        );
        assert_eq!(
            check(["AAA", "2024-01-02", "10", "NaN", "9", "10", "100"]),
            Err("price_not_finite")
        );
        assert_eq!(
            check(["AAA", "2024-01-02", "10", "11", "0", "10", "100"]),
            Err("price_not_positive")
        );
        assert_eq!(
            check(["AAA", "2024-01-02", "10", "11", "9", "10", "-1"]),
            Err("negative_volume")
        );
        // Swapped high and low.
        assert_eq!(
            check(["AAA", "2024-01-02", "10", "9", "11", "10", "100"]),
            Err("low_above_open_close")
        );
        assert_eq!(
            check(["AAA", "2024-01-02", "10", "10.2", "9", "10.5", "100"]),
            Err("high_below_open_close")
        );
        assert_eq!(
            validate(&[Some("AAA"); 7], 6).unwrap_err().rule,
            "field_count"
        );
        assert_eq!(validate(&[None; 7], 7).unwrap_err().rule, "empty_field");
    }
}

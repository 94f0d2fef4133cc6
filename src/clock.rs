//! Wall-clock time, the calendar, and durations as people write them.
//!
//! One small module, so that the ledger, dead letters, the Heap mapping and the engine need
//! not import each other for a timestamp. The calendar is the `time` crate's (proleptic
//! Gregorian, years -9999 to 9999); all times are UTC.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::{Date, Month, OffsetDateTime};

/// Milliseconds since the Unix epoch, from the system clock (0 if the clock is before 1970).
pub fn unix_millis_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Seconds since the Unix epoch, from the system clock.
pub fn unix_secs_now() -> i64 {
    unix_millis_now().div_euclid(1000)
}

/// Formats Unix milliseconds as ISO 8601 in UTC, as Heap's examples write it
/// (`2017-03-10T22:21:56+00:00`), with milliseconds only when they are non-zero.
///
/// `None` outside the years -9999 to 9999, which the four-digit form cannot write.
pub fn iso8601_utc(unix_millis: i64) -> Option<String> {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_millis) * 1_000_000).ok()?;
    let (year, month, day) = (t.year(), u8::from(t.month()), t.day());
    let (h, m, s, millis) = (t.hour(), t.minute(), t.second(), t.millisecond());
    // Digits pushed one by one rather than with `format!`: this runs for every event mapped,
    // where `format!` was 5 % of `inspect --heap`.
    let mut out = String::with_capacity(30);
    if year < 0 {
        out.push('-');
    }
    push_digits(&mut out, year.unsigned_abs(), 4);
    for (separator, value) in [('-', month), ('-', day), ('T', h), (':', m), (':', s)] {
        out.push(separator);
        push_digits(&mut out, u32::from(value), 2);
    }
    if millis != 0 {
        out.push('.');
        push_digits(&mut out, u32::from(millis), 3);
    }
    out.push_str("+00:00");
    Some(out)
}

/// `value` as exactly `width` decimal digits, zero-padded (it has no more).
fn push_digits(out: &mut String, value: u32, width: u32) {
    for place in (0..width).rev() {
        let digit = (value / 10u32.pow(place)) % 10;
        out.push(char::from(b'0' + digit as u8));
    }
}

/// Now, as [`iso8601_utc`] writes it (for records: ledger entries, dead letters).
pub fn now_iso8601() -> String {
    iso8601_utc(unix_millis_now()).unwrap_or_else(|| format!("@{}ms", unix_millis_now()))
}

/// Days since 1970-01-01 of a calendar date; `None` for a date that does not exist.
pub fn days_from_civil(year: i32, month: u8, day: u8) -> Option<i64> {
    let month = Month::try_from(month).ok()?;
    let date = Date::from_calendar_date(year, month, day).ok()?;
    Some(i64::from(date.to_julian_day() - UNIX_EPOCH_JULIAN_DAY))
}

/// The calendar date `days` after 1970-01-01, saturating at the years -9999 and 9999.
pub fn civil_from_days(days: i64) -> (i32, u8, u8) {
    let julian = i32::try_from(days.saturating_add(i64::from(UNIX_EPOCH_JULIAN_DAY)))
        .unwrap_or(if days < 0 { i32::MIN } else { i32::MAX });
    let date =
        Date::from_julian_day(julian).unwrap_or(if days < 0 { Date::MIN } else { Date::MAX });
    (date.year(), u8::from(date.month()), date.day())
}

/// The Julian day number of 1970-01-01.
const UNIX_EPOCH_JULIAN_DAY: i32 = 2_440_588;

/// The longest duration any option takes: 400 days. Longer values are typing mistakes, and
/// refusing them keeps every later `Instant + Duration` far from overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(400 * 86_400);

/// Parses a duration as people write it, with humantime's units: `500ms`, `30s`, `15m`, `2h`,
/// `1h 30m`, `7d`; a plain number is seconds.
///
/// Errors name the text. Values over [`MAX_DURATION`] and arithmetic overflow are errors,
/// never a wrapped-around number.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let too_long = || {
        format!(
            "`{text}` is longer than the longest allowed duration, {} days",
            MAX_DURATION.as_secs() / 86_400
        )
    };
    let duration = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // Every digit string that does not fit a u64 is far over the bound.
        text.parse()
            .map(Duration::from_secs)
            .map_err(|_| too_long())?
    } else {
        humantime::parse_duration(text).map_err(|e| match e {
            humantime::DurationError::NumberOverflow => too_long(),
            e => format!("`{text}` is not a duration like 500ms, 30s, 15m or 2h: {e}"),
        })?
    };
    if duration > MAX_DURATION {
        return Err(too_long());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_heap_timestamps() {
        let f = |ms| iso8601_utc(ms).unwrap();
        assert_eq!(f(0), "1970-01-01T00:00:00+00:00");
        assert_eq!(f(1_489_184_516_000), "2017-03-10T22:21:56+00:00");
        assert_eq!(f(1_709_210_096_789), "2024-02-29T12:34:56.789+00:00");
        assert_eq!(f(-1), "1969-12-31T23:59:59.999+00:00");
        assert_eq!(f(253_402_300_799_000), "9999-12-31T23:59:59+00:00");
        assert_eq!(f(-62_167_219_200_000), "0000-01-01T00:00:00+00:00");
        assert_eq!(f(-62_198_755_199_999), "-0001-01-01T00:00:00.001+00:00");
        assert_eq!(iso8601_utc(253_402_300_800_000), None, "year 10000");
        assert_eq!(iso8601_utc(i64::MAX), None);
        assert_eq!(iso8601_utc(i64::MIN), None);
    }

    #[test]
    fn calendar_round_trips() {
        for days in [-719_468, -1, 0, 1, 11_016, 19_782, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), Some(days));
        }
        assert_eq!(days_from_civil(2024, 2, 30), None);
        assert_eq!(days_from_civil(2023, 2, 29), None);
        assert_eq!(civil_from_days(i64::MAX), (9999, 12, 31));
    }

    #[test]
    fn parses_durations_with_checked_arithmetic() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("9600h"), Ok(MAX_DURATION));
        assert_eq!(parse_duration(" 400days "), Ok(MAX_DURATION));
        assert!(parse_duration("soon").unwrap_err().contains("`soon`"));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("9601h").unwrap_err().contains("longest"));
        assert!(parse_duration("401d").unwrap_err().contains("longest"));
        // 2^64 / 3.6e6 + 1 hours overflows u64 milliseconds: an error, not a wrap.
        assert!(parse_duration("5124095576031h").is_err());
        assert!(parse_duration("99999999999999999999999s").is_err());
    }
}

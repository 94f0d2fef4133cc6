//! Wall-clock time, the calendar, and durations as people write them.
//!
//! One small module, so that the ledger, dead letters, the Heap mapping and the engine need
//! not import each other for a timestamp. Calendar math is the proleptic Gregorian calendar
//! (H. Hinnant's `days_from_civil` algorithms); all times are UTC.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
pub fn iso8601_utc(unix_millis: i64) -> String {
    let secs = unix_millis.div_euclid(1000);
    let millis = unix_millis.rem_euclid(1000);
    let (days, secs_of_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    let (h, m, s) = (
        secs_of_day / 3600,
        secs_of_day % 3600 / 60,
        secs_of_day % 60,
    );
    if millis == 0 {
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}+00:00")
    } else {
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{millis:03}+00:00")
    }
}

/// Days since 1970-01-01 for a proleptic Gregorian date.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`]: (year, month, day).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

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
        assert_eq!(iso8601_utc(0), "1970-01-01T00:00:00+00:00");
        assert_eq!(iso8601_utc(1_489_184_516_000), "2017-03-10T22:21:56+00:00");
        assert_eq!(
            iso8601_utc(1_709_210_096_789),
            "2024-02-29T12:34:56.789+00:00"
        );
        assert_eq!(iso8601_utc(-1), "1969-12-31T23:59:59.999+00:00");
        assert_eq!(
            iso8601_utc(253_402_300_799_000),
            "9999-12-31T23:59:59+00:00"
        );
    }

    #[test]
    fn calendar_round_trips() {
        for days in [-719_468, -1, 0, 1, 11_016, 19_782, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
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

//! Wall-clock helpers: Unix milliseconds, RFC 3339 (UTC) both ways, and the
//! times operators type (`"2h"` ago, an RFC 3339 instant, Unix seconds).

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Unix seconds → `YYYY-MM-DDTHH:MM:SSZ` (UTC), as Parallel writes timestamps.
pub fn rfc3339(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let secs = unix_secs % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` into Unix milliseconds.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let (text, offset_secs) = split_offset(text)?;
    let (date, time) = text.split_once('T')?;
    let mut date_parts = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (date_parts.next()??, date_parts.next()??, date_parts.next()??);
    let (hms, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut time_parts = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hour, minute, second) = (time_parts.next()??, time_parts.next()??, time_parts.next()??);
    // RFC 3339 years have four digits; bounding them also keeps the day
    // arithmetic below far from overflow (a fuzzer found year 202666666666666).
    if !(0..=9999).contains(&year)
        || !(1..=12).contains(&month)
        || !(1..=days_in_month(year, month)).contains(&day)
        || !(0..=23).contains(&hour)
        || !(0..=59).contains(&minute)
        || !(0..=60).contains(&second)
    {
        return None;
    }
    let millis = match fraction.len() {
        0 => 0,
        _ if fraction.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{fraction:0<3}")[..3].parse::<i64>().ok()?
        }
        _ => return None,
    };
    // Howard Hinnant's days-from-civil algorithm.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_secs;
    u64::try_from(secs * 1_000 + millis).ok()
}

/// The time without its zone, and the zone's offset east of UTC in seconds:
/// `Z`, or `+HH:MM` / `-HH:MM` (what `date -Iseconds` writes).
fn split_offset(text: &str) -> Option<(&str, i64)> {
    if let Some(text) = text.strip_suffix('Z') {
        return Some((text, 0));
    }
    let at = text.len().checked_sub(6)?;
    let (text, zone) = (text.get(..at)?, text.get(at..)?.as_bytes());
    let sign = match zone[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits = |pair: &[u8]| -> Option<i64> {
        pair.iter()
            .all(u8::is_ascii_digit)
            .then(|| i64::from(pair[0] - b'0') * 10 + i64::from(pair[1] - b'0'))
    };
    let (hours, minutes) = (digits(&zone[1..3])?, digits(&zone[4..6])?);
    if zone[3] != b':' || hours > 23 || minutes > 59 {
        return None;
    }
    Some((text, sign * (hours * 3_600 + minutes * 60)))
}

pub(crate) fn days_in_month(year: i64, month: i64) -> i64 {
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// An instant as operators write it: a duration ago (`"2h"`, `"30m"`), an
/// RFC 3339 time, or Unix seconds. Returns Unix milliseconds.
pub fn parse_instant(text: &str, now_ms: u64) -> Result<u64, String> {
    if let Ok(ago) = crate::config::parse_duration(text) {
        return Ok(now_ms.saturating_sub(ago.as_millis() as u64));
    }
    if let Some(ms) = parse_rfc3339(text) {
        return Ok(ms);
    }
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<u64>()
            .map(|secs| secs.saturating_mul(1000))
            .map_err(|_| format!("{text:?} is too large"));
    }
    Err(format!(
        "{text:?} is not a time: use a duration ago (\"2h\"), RFC 3339 (\"2026-11-28T09:00:00Z\") or Unix seconds"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_751_498_975), "2025-07-02T23:29:35Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_859_999), "2026-11-28T09:59:59Z");
    }

    #[test]
    fn rfc3339_parses_back() {
        for secs in [0u64, 951_782_400, 1_751_498_975, 1_795_859_999] {
            assert_eq!(parse_rfc3339(&rfc3339(secs)), Some(secs * 1000));
        }
        assert_eq!(parse_rfc3339("2025-07-02T23:29:35.114Z"), Some(1_751_498_975_114));
        assert_eq!(parse_rfc3339("2025-07-02T23:29:35.1+00:00"), Some(1_751_498_975_100));
        // Other zones, as `date -Iseconds` writes them.
        assert_eq!(parse_rfc3339("2025-07-03T01:29:35+02:00"), Some(1_751_498_975_000));
        assert_eq!(parse_rfc3339("2025-07-02T18:59:35-04:30"), Some(1_751_498_975_000));
        assert_eq!(parse_rfc3339("2024-02-29T00:00:00Z"), Some(1_709_164_800_000));
        for bad in [
            "",
            "2025-07-02",
            "2025-13-02T00:00:00Z",
            "2025-07-02T24:00:00Z",
            "2025-07-02T23:29:35",
            "x",
            // Found by the admin_input fuzzer: the year overflowed the day arithmetic.
            "202666666666666-11-28T09:0:000Z",
            "10000-01-01T00:00:00Z",
            "2025-07-02T-1:00:00Z",
            // Days the month does not have are typos, not the next month.
            "2026-02-31T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            // Malformed zones.
            "2025-07-02T23:29:35+1:00",
            "2025-07-02T23:29:35+24:00",
            "2025-07-02T23:29:35+01:60",
            "2025-07-02T23:29:35+01-00",
            "2025-07-02T23:29:35 01:00",
            "1970-01-01T00:00:00+01:00",
            "+00:00",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn instants() {
        let now = 10_000_000;
        assert_eq!(parse_instant("2h", now), Ok(now - 7_200_000));
        assert_eq!(parse_instant("1751498975", now), Ok(1_751_498_975_000));
        assert_eq!(parse_instant("2025-07-02T23:29:35Z", now), Ok(1_751_498_975_000));
        assert!(parse_instant("yesterday", now).unwrap_err().contains("is not a time"));
    }
}

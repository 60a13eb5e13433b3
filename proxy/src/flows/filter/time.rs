//! `--since`/`--until` values: RFC 3339 times with any offset, or durations before now, written
//! back in UTC so agents read the same instant.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{FilterError, invalid, non_empty};

const TIME_EXPECTED: &str =
    "expected an RFC 3339 time (2024-11-25T06:01:02Z) or a duration ago (30s, 5m, 1h30m)";

/// An RFC 3339 time (any offset) or a duration before `now`.
pub(super) fn parse_time(
    key: &'static str,
    value: &str,
    now: SystemTime,
) -> Result<SystemTime, FilterError> {
    let value = non_empty(key, value)?.trim();
    let t = match humantime::parse_duration(value) {
        Ok(ago) => now.checked_sub(ago),
        Err(_) => parse_rfc3339(value),
    };
    // RFC 3339 as written back to agents covers years 1970 to 9999.
    let last = UNIX_EPOCH + Duration::from_secs(253_402_300_799);
    t.filter(|t| *t >= UNIX_EPOCH && *t <= last)
        .ok_or_else(|| invalid(key, value, TIME_EXPECTED))
}

/// RFC 3339 with `Z` or a numeric offset (humantime alone takes only UTC).
fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let s = s.to_ascii_uppercase();
    let b = s.as_bytes();
    let n = b.len();
    if n <= 6 || !matches!(b[n - 6], b'+' | b'-') || b[n - 3] != b':' {
        return humantime::parse_rfc3339(&s).ok();
    }
    let two = |i: usize| {
        let (x, y) = (b[i], b[i + 1]);
        (x.is_ascii_digit() && y.is_ascii_digit())
            .then(|| u64::from(x - b'0') * 10 + u64::from(y - b'0'))
    };
    let (hh, mm) = (two(n - 5)?, two(n - 2)?);
    if hh > 23 || mm > 59 {
        return None;
    }
    // `n - 6` holds an ASCII sign, so it is a character boundary.
    let utc = humantime::parse_rfc3339(&format!("{}Z", &s[..n - 6])).ok()?;
    let offset = Duration::from_secs(hh * 3600 + mm * 60);
    // Local time is UTC plus the offset.
    if b[n - 6] == b'+' {
        utc.checked_sub(offset)
    } else {
        utc.checked_add(offset)
    }
}

/// RFC 3339 in UTC with as many fractional digits as needed (none, 3, 6 or 9).
pub(super) fn format_time(t: SystemTime) -> String {
    let nanos = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let formatted = if nanos == 0 {
        humantime::format_rfc3339_seconds(t)
    } else if nanos.is_multiple_of(1_000_000) {
        humantime::format_rfc3339_millis(t)
    } else if nanos.is_multiple_of(1_000) {
        humantime::format_rfc3339_micros(t)
    } else {
        humantime::format_rfc3339_nanos(t)
    };
    formatted.to_string()
}

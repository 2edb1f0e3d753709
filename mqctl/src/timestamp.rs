//! Points in time as the admin API has them (milliseconds since the Unix epoch) and as people
//! write and read them (RFC 3339).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why a `--timestamp` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is neither milliseconds since the Unix epoch nor an RFC 3339 time ({reason})")]
pub struct TimestampError {
    /// What was given.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Reads milliseconds since the Unix epoch (`1733300000000`) or an RFC 3339 time
/// (`2026-12-04T18:00:00Z`, `2026-12-04T19:00:00.250+01:00`).
pub fn parse(value: &str) -> Result<u64, TimestampError> {
    let value = value.trim();
    let fail = |reason: &str| TimestampError {
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse().map_err(|_| fail("too large"));
    }
    // humantime reads UTC times only; an offset is taken off and applied here.
    let (local, offset_secs) = split_offset(value)
        .ok_or_else(|| fail("no time zone: end it in Z or an offset like +01:00"))?;
    let at = humantime::parse_rfc3339_weak(local).map_err(|e| fail(&e.to_string()))?;
    let utc_secs = at
        .duration_since(UNIX_EPOCH)
        .map_err(|_| fail("before 1970"))?
        .as_millis() as i128
        - i128::from(offset_secs) * 1000;
    u64::try_from(utc_secs).map_err(|_| fail("before 1970"))
}

/// The time without its zone, and the zone's offset east of UTC in seconds.
fn split_offset(value: &str) -> Option<(&str, i64)> {
    if let Some(local) = value.strip_suffix(['Z', 'z']) {
        return Some((local, 0));
    }
    let (local, zone) = value.split_at_checked(value.len().checked_sub(6)?)?;
    let sign = match zone.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (hours, minutes) = zone[1..].split_once(':')?;
    let hours: i64 = hours.parse().ok().filter(|h| *h < 24)?;
    let minutes: i64 = minutes.parse().ok().filter(|m| *m < 60)?;
    Some((local, sign * (hours * 3600 + minutes * 60)))
}

/// RFC 3339 in UTC with milliseconds, or `-` for zero (the API's "never").
pub fn format(ms: u64) -> String {
    if ms == 0 {
        return "-".to_owned();
    }
    let at: SystemTime = UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_millis(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_milliseconds() {
        assert_eq!(parse("1733300000000"), Ok(1_733_300_000_000));
        assert_eq!(parse("0"), Ok(0));
    }

    #[test]
    fn reads_rfc3339_in_utc_and_with_offsets() {
        assert_eq!(parse("1970-01-01T00:00:01Z"), Ok(1000));
        assert_eq!(parse("1970-01-01T00:00:01.250Z"), Ok(1250));
        assert_eq!(parse("1970-01-01T01:00:01+01:00"), Ok(1000));
        assert_eq!(parse("1970-01-01T00:30:00+00:30"), Ok(0));
        assert_eq!(parse("1970-01-01T00:00:00-00:30"), Ok(1_800_000));
        assert_eq!(
            parse("2026-12-04T19:00:00+01:00"),
            parse("2026-12-04T18:00:00Z")
        );
    }

    #[test]
    fn refuses_what_is_not_a_time() {
        for bad in [
            "",
            "yesterday",
            "2026-12-04T18:00:00",
            "2026-13-04T18:00:00Z",
            "-5",
            "1969-12-31T23:00:00Z",
        ] {
            let err = parse(bad).expect_err(bad);
            assert_eq!(err.value, bad);
        }
    }

    #[test]
    fn formats_as_utc_with_milliseconds() {
        assert_eq!(format(1250), "1970-01-01T00:00:01.250Z");
        assert_eq!(format(0), "-");
    }
}

//! Wall-clock time as the system stores and shows it.
//!
//! Times are kept as integer milliseconds since the Unix epoch: one representation that both
//! SQLite and PostgreSQL store as a plain integer and that sorts correctly. They are shown to
//! people as RFC 3339.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// RFC 3339 with millisecond precision, in UTC.
pub fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// The longest duration setting accepted (a retention, say): ten years. Longer is a typo, and
/// "now minus it" would no longer fit a timestamp.
pub const MAX_DURATION_SETTING: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A duration setting: plain milliseconds (`7200000`) or with units (`2h`, `90m`, `10s`). Zero
/// and more than [`MAX_DURATION_SETTING`] are refused, so a wrong value stops the start instead
/// of wrapping around.
pub fn parse_duration_setting(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let d = if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        Duration::from_millis(
            s.parse()
                .map_err(|_| format!("{s} milliseconds is more than ten years"))?,
        )
    } else {
        humantime::parse_duration(s).map_err(|e| {
            format!("{s:?} is not a duration ({e}); give milliseconds or units, e.g. 2h, 90m, 10s")
        })?
    };
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    if d > MAX_DURATION_SETTING {
        return Err(format!("{s} is more than ten years"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_settings_take_units_and_refuse_absurd_values() {
        assert_eq!(
            parse_duration_setting("7200000"),
            Ok(Duration::from_secs(7200))
        );
        assert_eq!(parse_duration_setting("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(
            parse_duration_setting(" 90m "),
            Ok(Duration::from_secs(5400))
        );
        for bad in [
            "0",
            "0s",
            "",
            "9223372036854775808",
            "18446744073709551616",
            "11years",
            "2 fortnights",
            "-5",
        ] {
            assert!(parse_duration_setting(bad).is_err(), "{bad:?} accepted");
        }
    }
}

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

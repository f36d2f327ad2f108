//! Logging set-up shared by every binary.

use tracing_subscriber::EnvFilter;

/// Logs to stdout, filtered by `RUST_LOG` (default `info`, with librdkafka's chatter kept down).
pub fn init() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,sqlx=warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
}

//! Keeping de-duplication tables bounded: rows older than a retention time are deleted a bounded
//! batch at a time, at an interval, until shutdown. The orchestrator prunes its inbox and sent
//! outbox rows, each command service its `processed_commands`.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::retry::{self, Retried};

/// How long processed rows are kept, unless `RETENTION_MS` says otherwise: two hours, longer
/// than a saga can wait for a reply with the default deadlines (saga timeout 5 min +
/// compensation limit 1 h), short enough to keep the tables small. One home for the orchestrator
/// and the services, which must agree.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(2 * 3600);
/// [`DEFAULT_RETENTION`] as the command line writes it.
pub const DEFAULT_RETENTION_TEXT: &str = "2h";

/// `RETENTION_MS` and `MAX_DELIVERY_ATTEMPTS`, which the orchestrator and the services must
/// agree on: declared once.
#[derive(Debug, Clone, clap::Args)]
pub struct RetentionArgs {
    /// How long processed replies (inbox) and published commands (outbox) are kept before they
    /// are pruned, and the services' processed commands as long. Milliseconds, or with units
    /// (`2h`, `90m`). Keep it longer than SAGA_TIMEOUT_MS + COMPENSATION_LIMIT_MS (how long a
    /// command may be re-sent).
    #[arg(long = "retention-ms", env = "RETENTION_MS", value_name = "RETENTION_MS",
          default_value = DEFAULT_RETENTION_TEXT,
          value_parser = crate::time::parse_duration_setting)]
    pub retention: Duration,
    /// Times a message may fail with a non-transient error before it is dead-lettered.
    #[arg(long, env = "MAX_DELIVERY_ATTEMPTS", default_value_t = DEFAULT_MAX_DELIVERY_ATTEMPTS)]
    pub max_delivery_attempts: u32,
}

/// How many times a message that fails for good is tried before it is dead-lettered.
pub const DEFAULT_MAX_DELIVERY_ATTEMPTS: u32 = 3;

/// Rows deleted per statement: short transactions that do not hold up the consumers.
pub const BATCH: i64 = 5_000;

/// How often pruning runs for a retention: a quarter of it, between 100 ms and one minute.
pub fn interval(retention: Duration) -> Duration {
    (retention / 4).clamp(Duration::from_millis(100), Duration::from_secs(60))
}

/// Every [`interval`], calls `prune(before, BATCH)` with `before` = now − `retention` until it
/// reports no full batch (`Ok(false)`); transient errors are retried, others logged. Ends when
/// `cancel` fires.
pub async fn run<E, F, Fut>(
    what: &'static str,
    retention: Duration,
    cancel: CancellationToken,
    transient: fn(&E) -> bool,
    mut prune: F,
) where
    E: std::fmt::Display,
    F: FnMut(i64, i64) -> Fut,
    Fut: Future<Output = Result<bool, E>>,
{
    let mut tick = tokio::time::interval(interval(retention));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Saturating: a retention longer than the epoch prunes nothing rather than everything.
        let kept = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let before = crate::time::now_ms().saturating_sub(kept);
        loop {
            match retry::until_cancelled(&cancel, what, transient, || prune(before, BATCH)).await {
                Retried::Ok(true) if !cancel.is_cancelled() => continue,
                Retried::Ok(_) => break,
                Retried::Permanent(e) => {
                    tracing::error!(error = %e, "{what} failed");
                    break;
                }
                Retried::Cancelled => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_follows_the_retention_within_bounds() {
        assert_eq!(interval(Duration::from_secs(2)), Duration::from_millis(500));
        assert_eq!(
            interval(Duration::from_millis(10)),
            Duration::from_millis(100)
        );
        assert_eq!(interval(Duration::from_secs(3600)), Duration::from_secs(60));
    }
}

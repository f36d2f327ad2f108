//! Retrying transient failures (a database restarting, a broker away) until they pass or the
//! process stops. Delays grow exponentially with jitter, so many workers that failed together do
//! not retry together.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

/// How a retried operation ended.
#[derive(Debug)]
pub enum Retried<T, E> {
    Ok(T),
    /// Failed in a way retrying cannot fix.
    Permanent(E),
    /// The process is stopping; the operation did not complete.
    Cancelled,
}

/// The delays between attempts: 20 ms doubling to 5 s, with jitter, without end.
pub fn policy() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(20))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
}

/// The delays of [`policy`], one per failed attempt.
pub fn policy_iter() -> impl Iterator<Item = Duration> {
    policy().build()
}

/// Runs `op` until it succeeds, fails permanently (`transient` says no), or `cancel` fires.
pub async fn until_cancelled<T, E, F, Fut>(
    cancel: &CancellationToken,
    what: &str,
    mut transient: impl FnMut(&E) -> bool,
    mut op: F,
) -> Retried<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delays = policy().build();
    loop {
        match op().await {
            Ok(v) => return Retried::Ok(v),
            Err(e) if !transient(&e) => return Retried::Permanent(e),
            Err(e) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "{what} failed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return Retried::Cancelled,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn transient_errors_are_retried_until_success() {
        let cancel = CancellationToken::new();
        let mut calls = 0;
        let r = until_cancelled(
            &cancel,
            "test",
            |_: &String| true,
            || {
                calls += 1;
                let n = calls;
                async move {
                    if n < 3 {
                        Err(format!("fail {n}"))
                    } else {
                        Ok(n)
                    }
                }
            },
        )
        .await;
        assert!(matches!(r, Retried::Ok(3)));
    }

    #[tokio::test]
    async fn permanent_errors_stop_at_once() {
        let cancel = CancellationToken::new();
        let r: Retried<(), String> = until_cancelled(
            &cancel,
            "test",
            |e: &String| e != "fatal",
            || async { Err("fatal".to_string()) },
        )
        .await;
        assert!(matches!(r, Retried::Permanent(e) if e == "fatal"));
    }

    #[tokio::test]
    async fn cancellation_ends_the_retries() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        let r: Retried<(), String> = until_cancelled(
            &cancel,
            "test",
            |_| true,
            || async { Err("down".to_string()) },
        )
        .await;
        assert!(matches!(r, Retried::Cancelled));
    }
}

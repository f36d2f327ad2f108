//! Where storage is kept bounded: sent outbox rows and processed inbox rows older than the
//! retention time are deleted, a bounded batch at a time, so the tables stop growing under
//! sustained load. Sagas are kept: terminal ones stay queryable.
//!
//! The inbox only has to remember a reply for as long as it can be redelivered while its saga
//! waits for it; a late duplicate for a terminal saga is ignored by the engine anyway. Every
//! instance prunes; deleting the same rows twice is harmless.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use platform::retry::{self, Retried};

use crate::store::SagaStore;

/// Rows deleted per statement: short transactions that do not hold up the reply consumer.
const BATCH: i64 = 5_000;

pub struct Pruner {
    pub store: SagaStore,
    /// How long sent outbox rows and processed inbox rows are kept.
    pub retention: Duration,
}

impl Pruner {
    /// How often pruning runs: a quarter of the retention, between 100 ms and one minute.
    pub fn interval(&self) -> Duration {
        (self.retention / 4).clamp(Duration::from_millis(100), Duration::from_secs(60))
    }

    pub async fn run(self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            if !self.prune_all(&cancel).await {
                break;
            }
        }
    }

    /// Deletes everything older than the retention, batch by batch; `false` if cancelled.
    pub async fn prune_all(&self, cancel: &CancellationToken) -> bool {
        let before = platform::time::now_ms() - self.retention.as_millis() as i64;
        loop {
            let pruned = match retry::until_cancelled(
                cancel,
                "pruning inbox and outbox",
                |e: &crate::Error| e.is_transient(),
                || self.store.prune(before, BATCH),
            )
            .await
            {
                Retried::Ok(p) => p,
                Retried::Permanent(e) => {
                    tracing::error!(error = %e, "cannot prune inbox and outbox");
                    return true;
                }
                Retried::Cancelled => return false,
            };
            if pruned.outbox > 0 || pruned.inbox > 0 {
                tracing::debug!(outbox = pruned.outbox, inbox = pruned.inbox, "pruned");
            }
            if (pruned.outbox as i64) < BATCH && (pruned.inbox as i64) < BATCH {
                return true;
            }
            if cancel.is_cancelled() {
                return false;
            }
        }
    }
}

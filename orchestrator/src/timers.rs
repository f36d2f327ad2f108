//! Where time is handled: overdue replies are re-sent or given up on, sagas past their deadline
//! are compensated.
//!
//! Deadlines live in the database (`sagas.wake_at`), so they survive restarts: a saga whose
//! command was lost while the orchestrator was down is re-sent when its deadline passes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use platform::retry::{self, Retried};

use crate::saga::{engine, Sagas};
use crate::store::{Changed, SagaStore};
use crate::transition::{transition, Persist};

/// How often the timer looks for due sagas. Deadlines are seconds; this is their resolution.
pub const TICK: Duration = Duration::from_millis(100);
/// Sagas handled per look.
const BATCH: i64 = 500;
/// How long a look holds the sagas it took: another instance (or this one) takes a saga again
/// after this if its transition did not store a new deadline (it failed, or the instance died).
const LEASE_MS: i64 = 10_000;
/// Permanent failures of one saga's timer, one lease apart, before the saga is parked.
const FAILURES_BEFORE_PARKING: u32 = 3;

/// What firing one saga's timer did.
enum Fired {
    Changed,
    Unchanged,
    Stopping,
}

pub struct Timers {
    pub store: SagaStore,
    /// Each saga's definition, and the timing policy.
    pub sagas: Sagas,
    /// Permanent failures per saga since its timer last worked (this instance's count).
    pub failures: Mutex<HashMap<Uuid, u32>>,
}

impl Timers {
    pub async fn run(self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            if self.run_due(&cancel).await.is_none() {
                break;
            }
        }
    }

    /// Handles every saga due now; returns how many changed, `None` if cancelled.
    pub async fn run_due(&self, cancel: &CancellationToken) -> Option<usize> {
        let now = platform::time::now_ms();
        let due = match retry::until_cancelled(
            cancel,
            "reading due sagas",
            |e: &crate::Error| e.is_transient(),
            || self.store.due(now, BATCH, LEASE_MS),
        )
        .await
        {
            Retried::Ok(ids) => ids,
            Retried::Permanent(e) => {
                tracing::error!(error = %e, "cannot read due sagas");
                return Some(0);
            }
            Retried::Cancelled => return None,
        };
        let mut changed = 0;
        for (handled, &saga_id) in due.iter().enumerate() {
            // Each saga at the time it is handled: a batch of 500 can take a while, and the
            // deadlines it sets count from now, not from when the batch was read.
            let now = platform::time::now_ms();
            match self.fire(saga_id, now, cancel).await {
                Fired::Changed => changed += 1,
                Fired::Unchanged => {}
                Fired::Stopping => {
                    // Stopping: hand back what this look claimed and did not get to, so a
                    // restart (or another instance) does not wait for the lease to end.
                    let _ = self
                        .store
                        .release(&due[handled..], platform::time::now_ms(), LEASE_MS)
                        .await;
                    return None;
                }
            }
        }
        Some(changed)
    }

    /// Hands one due saga to the engine: its span continues the saga's own trace (time passing
    /// is part of it).
    #[tracing::instrument(
        name = "timer",
        skip(self, now, cancel),
        fields(saga_type = tracing::field::Empty, step = tracing::field::Empty, trace_id = tracing::field::Empty)
    )]
    async fn fire(&self, saga_id: Uuid, now: i64, cancel: &CancellationToken) -> Fired {
        let outcome = transition(
            &self.store,
            saga_id,
            now,
            &tracing::Span::current(),
            Persist::UntilCancelled(cancel),
            |state| self.sagas.on_timer(state, now),
        )
        .await;
        if !matches!(outcome, Retried::Permanent(_)) {
            self.forget_failures(saga_id);
        }
        match outcome {
            Retried::Ok(Some(Changed::Yes { status, .. })) => {
                tracing::info!(status = status.as_str(), "saga timer fired");
                Fired::Changed
            }
            Retried::Ok(Some(Changed::Parked { reason, .. })) => {
                tracing::error!(%reason, "saga parked for an operator");
                Fired::Unchanged
            }
            Retried::Ok(_) => Fired::Unchanged,
            Retried::Permanent(e) => {
                let failures = self.count_failure(saga_id);
                tracing::error!(error = %e, failures, "saga timer failed");
                if failures >= FAILURES_BEFORE_PARKING {
                    self.park(saga_id, now, failures, &e).await;
                }
                Fired::Unchanged
            }
            Retried::Cancelled => Fired::Stopping,
        }
    }

    fn count_failure(&self, saga_id: Uuid) -> u32 {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if failures.len() >= 10_000 {
            // Sagas that failed once and were then handled elsewhere: start counting afresh.
            failures.clear();
        }
        let n = failures.entry(saga_id).or_insert(0);
        *n += 1;
        *n
    }

    fn forget_failures(&self, saga_id: Uuid) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if !failures.is_empty() {
            failures.remove(&saga_id);
        }
    }

    /// Parks a saga whose timer keeps failing, so the API and the logs show it and no deadline
    /// brings it back; if even that fails (an unreadable stored state), the saga's lease keeps it
    /// out of the way and the error is logged at every attempt.
    async fn park(&self, saga_id: Uuid, now: i64, failures: u32, error: &crate::Error) {
        let why = format!("its timer failed {failures} times: {error}");
        let parked = transition(
            &self.store,
            saga_id,
            now,
            &tracing::Span::current(),
            Persist::Request,
            |state| engine::park_after_failures(state, now, why.clone()),
        )
        .await;
        match parked {
            Retried::Ok(Some(Changed::Parked { reason, .. })) => {
                self.forget_failures(saga_id);
                tracing::error!(%reason, "saga parked for an operator (POST /sagas/{{id}}/retry resumes it)");
            }
            Retried::Ok(_) => self.forget_failures(saga_id),
            Retried::Permanent(e) => tracing::error!(error = %e, "cannot park the saga either"),
            Retried::Cancelled => {}
        }
    }
}

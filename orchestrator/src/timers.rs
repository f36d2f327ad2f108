//! Where time is handled: overdue replies are re-sent or given up on, sagas past their deadline
//! are compensated.
//!
//! Deadlines live in the database (`sagas.wake_at`), so they survive restarts: a saga whose
//! command was lost while the orchestrator was down is re-sent when its deadline passes.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use platform::retry::{self, Retried};

use crate::relay::Relay;
use crate::saga::engine::{self, Policy};
use crate::saga::SagaDefinition;
use crate::store::{Changed, SagaStore};

/// How often the timer looks for due sagas. Deadlines are seconds; this is their resolution.
pub const TICK: Duration = Duration::from_millis(100);
/// Sagas handled per look.
const BATCH: i64 = 500;

pub struct Timers {
    pub store: SagaStore,
    pub definition: Arc<SagaDefinition>,
    pub policy: Policy,
    pub relay: Relay,
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
            || self.store.due(now, BATCH),
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
        for saga_id in due {
            let span = tracing::info_span!(
                "timer",
                saga_id = %saga_id,
                saga_type = %self.definition.saga_type,
                step = tracing::field::Empty,
                trace_id = tracing::field::Empty,
            );
            let outcome = retry::until_cancelled(
                cancel,
                "handling a saga timer",
                |e: &crate::Error| e.is_transient(),
                || {
                    self.store.transition(saga_id, now, |state| {
                        // Time passing is part of the saga's own trace.
                        let trace = platform::trace::continue_trace(&span, &state.trace);
                        span.record("step", state.current_step());
                        engine::on_timer(&self.definition, &self.policy, state, now).traced(&trace)
                    })
                },
            )
            .instrument(span.clone())
            .await;
            match outcome {
                Retried::Ok(Some(Changed::Yes { status, .. })) => {
                    changed += 1;
                    span.in_scope(|| tracing::info!(status = status.as_str(), "saga timer fired"));
                }
                Retried::Ok(Some(Changed::Parked { reason, .. })) => {
                    span.in_scope(|| tracing::error!(%reason, "saga parked for an operator"))
                }
                Retried::Ok(_) => {}
                Retried::Permanent(e) => {
                    span.in_scope(|| tracing::error!(error = %e, "saga timer failed"))
                }
                Retried::Cancelled => return None,
            }
        }
        if changed > 0 {
            self.relay.notify();
        }
        Some(changed)
    }
}

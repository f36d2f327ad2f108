//! Where sagas are measured: the metrics of a saga are read off what a committed transition
//! changed (the state before and after), not counted inside the engine, so the engine stays pure
//! and a transition that rolls back (a version conflict, retried on fresh state) counts nothing.

use platform::metrics::{
    CompensationFailureLabels, EndLabels, Metrics, SagaLabels, StepLabels, StepOutcomeLabels,
};

use crate::saga::{SagaState, SagaStatus, StepKind, StepStatus};

/// What [`observe`] needs of the state before a transition: small, so a batch keeps one per saga
/// without cloning whole states.
#[derive(Debug, Clone)]
pub struct Before {
    status: SagaStatus,
    parked: bool,
    /// Per step record: whether it had finished, and how many of its attempts had an outcome and
    /// how many were logged at all.
    steps: Vec<StepMark>,
}

#[derive(Debug, Clone, Copy)]
struct StepMark {
    finished: bool,
    logged: usize,
    closed: usize,
}

impl Before {
    pub fn of(state: &SagaState) -> Self {
        Before {
            status: state.status,
            parked: state.parked.is_some(),
            steps: state
                .steps
                .iter()
                .map(|r| StepMark {
                    finished: r.finished_at.is_some(),
                    logged: r.attempt_log.len(),
                    closed: r.attempt_log.iter().filter(|a| a.outcome.is_some()).count(),
                })
                .collect(),
        }
    }
}

impl Before {
    /// Whether the saga was parked already (so a transition that leaves it parked did not park it).
    pub fn was_parked(&self) -> bool {
        self.parked
    }
}

/// A saga was stored for the first time.
pub fn started(metrics: &Metrics, state: &SagaState) {
    metrics
        .sagas_started
        .get_or_create(&SagaLabels {
            saga_type: state.saga_type.clone(),
        })
        .inc();
}

/// Counts what the committed transition from `before` to `after` did.
pub fn observe(metrics: &Metrics, before: &Before, after: &SagaState) {
    let saga_type = &after.saga_type;
    if after.status.is_terminal() && after.status != before.status {
        let labels = EndLabels {
            saga_type: saga_type.clone(),
            status: after.status.as_str().to_string(),
        };
        metrics.sagas_ended.get_or_create(&labels).inc();
        if let Some(end) = after.completed_at {
            metrics
                .saga_duration
                .get_or_create(&labels)
                .observe(seconds(end - after.created_at));
        }
    }
    for (i, record) in after.steps.iter().enumerate() {
        let mark = before.steps.get(i).copied().unwrap_or(StepMark {
            finished: false,
            logged: 0,
            closed: 0,
        });
        let step_labels = || StepLabels {
            saga_type: saga_type.clone(),
            step: record.name.clone(),
        };
        // Sendings after the first are re-sends (the first is in the record's first attempt).
        let resent = record
            .attempt_log
            .iter()
            .skip(mark.logged)
            .filter(|a| a.number > 1)
            .count();
        if resent > 0 {
            metrics
                .command_resends
                .get_or_create(&step_labels())
                .inc_by(resent as u64);
        }
        if record.kind == StepKind::Compensation {
            // Attempts that ended without a confirmation: refused, or unanswered.
            let newly_closed = record
                .attempt_log
                .iter()
                .filter(|a| a.outcome.is_some())
                .count();
            if newly_closed > mark.closed {
                for a in record
                    .attempt_log
                    .iter()
                    .filter(|a| a.outcome.is_some())
                    .skip(mark.closed)
                {
                    let outcome = a.outcome.as_deref().unwrap_or_default();
                    let reason = if outcome.starts_with("failed") {
                        "refused"
                    } else if outcome == "timed out" {
                        "timed_out"
                    } else {
                        continue;
                    };
                    metrics
                        .compensation_failures
                        .get_or_create(&CompensationFailureLabels {
                            saga_type: saga_type.clone(),
                            step: record.name.clone(),
                            reason: reason.to_string(),
                        })
                        .inc();
                }
            }
        }
        let (Some(finished_at), false) = (record.finished_at, mark.finished) else {
            continue;
        };
        let outcome = match record.status {
            StepStatus::Completed => "completed",
            StepStatus::Failed => "failed",
            StepStatus::Running => continue,
        };
        let kind = match record.kind {
            StepKind::Forward => "forward",
            StepKind::Compensation => "compensation",
        };
        let labels = StepOutcomeLabels {
            saga_type: saga_type.clone(),
            step: record.name.clone(),
            kind: kind.to_string(),
            outcome: outcome.to_string(),
        };
        metrics
            .step_duration
            .get_or_create(&labels)
            .observe(seconds(finished_at - record.started_at));
        match record.kind {
            StepKind::Compensation => metrics.compensations.get_or_create(&labels).inc(),
            StepKind::Forward if record.outcome_unknown => {
                metrics.step_give_ups.get_or_create(&step_labels()).inc()
            }
            StepKind::Forward => 0,
        };
    }
}

fn seconds(ms: i64) -> f64 {
    ms.max(0) as f64 / 1000.0
}

/// Every series an alert watches, created at zero for the loaded saga types: a counter that
/// was never incremented is not exported, and `increase()` cannot see the first FAILED saga.
pub fn declare(metrics: &Metrics, saga_types: impl Iterator<Item = String>) {
    for saga_type in saga_types {
        let _ = metrics.sagas_started.get_or_create(&SagaLabels {
            saga_type: saga_type.clone(),
        });
        for status in SagaStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
            let _ = metrics.sagas_ended.get_or_create(&EndLabels {
                saga_type: saga_type.clone(),
                status: status.as_str().to_string(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use uuid::Uuid;

    use super::*;
    use crate::saga::engine::{self, Decision, Policy, Reply};

    fn apply(metrics: &Metrics, state: &SagaState, d: Decision) -> SagaState {
        match d {
            Decision::Applied { state: next, .. } => {
                observe(metrics, &Before::of(state), &next);
                next
            }
            Decision::Ignored(why) => panic!("ignored: {why:?}"),
        }
    }

    fn reply(state: &SagaState, t: &str) -> Decision {
        let def = crate::saga::create_order();
        let payload = json!({});
        engine::on_reply(
            &def,
            &Policy::default(),
            state,
            Reply {
                message_type: t,
                causation_id: state.pending.first().map(|p| p.command_id),
                payload: &payload,
            },
            Uuid::new_v4(),
            state.updated_at + 250,
        )
    }

    fn value(text: &str, series: &str) -> Option<String> {
        text.lines()
            .find(|l| l.starts_with(series))
            .map(|l| l.rsplit(' ').next().unwrap_or_default().to_string())
    }

    #[test]
    fn a_declined_payment_counts_one_end_its_steps_and_one_compensation() {
        let m = Metrics::new();
        let def = crate::saga::create_order();
        let (mut s, _) = engine::start(
            &def,
            &Policy::default(),
            Uuid::new_v4(),
            Default::default(),
            1_000,
        );
        started(&m, &s);
        for t in [
            "order.created",
            "user.payment_info_retrieved",
            "payment.failed",
            "order.cancelled",
        ] {
            let d = reply(&s, t);
            s = apply(&m, &s, d);
        }
        assert_eq!(s.status, SagaStatus::Compensated);
        let text = m.render();
        let co = "saga_type=\"create_order\"";
        assert_eq!(
            value(&text, &format!("saga_started_total{{{co}}}")).as_deref(),
            Some("1")
        );
        assert_eq!(
            value(
                &text,
                &format!("saga_ended_total{{{co},status=\"COMPENSATED\"}}")
            )
            .as_deref(),
            Some("1")
        );
        // 4 transitions of 250 ms: 1 s from start to end.
        assert_eq!(
            value(
                &text,
                &format!("saga_duration_seconds_sum{{{co},status=\"COMPENSATED\"}}")
            )
            .as_deref(),
            Some("1.0")
        );
        assert_eq!(
            value(&text, &format!("saga_step_duration_seconds_count{{{co},step=\"authorize_payment\",kind=\"forward\",outcome=\"failed\"}}")).as_deref(),
            Some("1")
        );
        assert_eq!(
            value(&text, &format!("saga_compensations_total{{{co},step=\"cancel_order\",kind=\"compensation\",outcome=\"completed\"}}")).as_deref(),
            Some("1")
        );
        assert!(!text.contains("saga_command_resends_total{"), "{text}");
    }

    #[test]
    fn re_sends_and_a_give_up_are_counted_once_each() {
        let m = Metrics::new();
        let def = crate::saga::create_order();
        let policy = Policy {
            max_attempts: 3,
            ..Policy::default()
        };
        let (mut s, _) = engine::start(&def, &policy, Uuid::new_v4(), Default::default(), 0);
        // No reply to create_order: two re-sends, then the step is given up.
        while s.status == SagaStatus::Started {
            let now = s.pending[0].deadline_at;
            let d = engine::on_timer(&def, &policy, &s, now);
            s = apply(&m, &s, d);
        }
        let text = m.render();
        let labels = "saga_type=\"create_order\",step=\"create_order\"";
        assert_eq!(
            value(&text, &format!("saga_command_resends_total{{{labels}}}")).as_deref(),
            Some("2")
        );
        assert_eq!(
            value(&text, &format!("saga_step_give_ups_total{{{labels}}}")).as_deref(),
            Some("1")
        );
        // Observing the same state again counts nothing more.
        observe(&m, &Before::of(&s), &s);
        assert_eq!(
            value(
                &m.render(),
                &format!("saga_command_resends_total{{{labels}}}")
            )
            .as_deref(),
            Some("2")
        );
    }
}

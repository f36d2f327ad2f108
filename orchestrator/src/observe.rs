//! Where sagas are measured: the metrics of a saga are read off what a committed transition
//! changed (the state before and after), not counted inside the engine, so the engine stays pure
//! and a transition that rolls back (a version conflict, retried on fresh state) counts nothing.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use platform::metrics::{HistogramFamily, Metrics};

use crate::saga::changes::{Before, StepMark};
use crate::saga::{SagaState, SagaStatus, StepKind, StepStatus};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SagaLabels {
    pub saga_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndLabels {
    pub saga_type: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    pub saga_type: String,
    pub step: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepOutcomeLabels {
    pub saga_type: String,
    pub step: String,
    /// `forward` or `compensation`.
    pub kind: String,
    /// `completed` or `failed`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CompensationFailureLabels {
    pub saga_type: String,
    pub step: String,
    /// `refused` (the participant said no) or `timed_out` (no answer in time).
    pub reason: String,
}

fn saga_buckets() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
        3600.0,
    ])
}

fn step_buckets() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        300.0,
    ])
}

/// The orchestrator's own families: sagas, steps, the outbox and the inbox. Registered in the
/// process's registry once (see [`Metrics::component`]).
pub struct SagaMetrics {
    pub sagas_started: Family<SagaLabels, Counter>,
    pub sagas_ended: Family<EndLabels, Counter>,
    pub saga_duration: HistogramFamily<EndLabels>,
    pub step_duration: HistogramFamily<StepOutcomeLabels>,
    pub command_resends: Family<StepLabels, Counter>,
    pub step_give_ups: Family<StepLabels, Counter>,
    pub compensations: Family<StepOutcomeLabels, Counter>,
    pub compensation_failures: Family<CompensationFailureLabels, Counter>,
    pub outbox_unsent: Gauge,
    /// Sagas not yet ended (STARTED, COMPENSATING, CANCELLING), read at scrape time.
    pub sagas_in_flight: Gauge,
    /// Sagas set aside for an operator (parked), read at scrape time.
    pub sagas_parked: Gauge,
    /// Age of the oldest saga not yet ended (0 when none), read at scrape time.
    pub oldest_running_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Dead letters kept in the orchestrator's database, waiting for the topic.
    pub dead_letters_stored: Gauge,
    pub outbox_oldest_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub inbox_duplicates: Counter,
    /// Event streams (`/events`, `/sagas/{id}/events`) open on this instance.
    pub event_streams_open: Gauge,
    /// Event streams closed because their client fell a broadcast buffer behind.
    pub event_streams_dropped: Counter,
}

impl std::fmt::Debug for SagaMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SagaMetrics")
    }
}

impl SagaMetrics {
    /// The orchestrator's families in `metrics`, registered there the first time.
    pub fn of(metrics: &Metrics) -> Arc<SagaMetrics> {
        metrics.component(Self::register)
    }

    fn register(r: &mut Registry) -> SagaMetrics {
        let m = SagaMetrics {
            sagas_started: Family::default(),
            sagas_ended: Family::default(),
            saga_duration: Family::new_with_constructor(saga_buckets),
            step_duration: Family::new_with_constructor(step_buckets),
            command_resends: Family::default(),
            step_give_ups: Family::default(),
            compensations: Family::default(),
            compensation_failures: Family::default(),
            outbox_unsent: Gauge::default(),
            sagas_in_flight: Gauge::default(),
            sagas_parked: Gauge::default(),
            oldest_running_age: Gauge::default(),
            dead_letters_stored: Gauge::default(),
            outbox_oldest_age: Gauge::default(),
            inbox_duplicates: Counter::default(),
            event_streams_open: Gauge::default(),
            event_streams_dropped: Counter::default(),
        };
        r.register(
            "saga_started",
            "Sagas started (stored with their first command), by saga type",
            m.sagas_started.clone(),
        );
        r.register(
            "saga_ended",
            "Sagas that reached a final status (COMPLETED, COMPENSATED, CANCELLED, FAILED); a FAILED saga retried ends again",
            m.sagas_ended.clone(),
        );
        r.register_with_unit(
            "saga_duration",
            "Time from a saga's start to its final status",
            Unit::Seconds,
            m.saga_duration.clone(),
        );
        r.register_with_unit(
            "saga_step_duration",
            "Time from a step's (or compensation's) first command to the reply that settled it, or to giving up",
            Unit::Seconds,
            m.step_duration.clone(),
        );
        r.register(
            "saga_command_resends",
            "Commands sent again because their reply was overdue (or a compensation was refused)",
            m.command_resends.clone(),
        );
        r.register(
            "saga_step_give_ups",
            "Forward steps given up for lack of a reply (they are compensated as if they ran)",
            m.step_give_ups.clone(),
        );
        r.register(
            "saga_compensations",
            "Compensations settled: completed, or failed (the saga is FAILED)",
            m.compensations.clone(),
        );
        r.register(
            "saga_compensation_attempt_failures",
            "Compensation attempts that were refused or got no answer in time (each is retried)",
            m.compensation_failures.clone(),
        );
        r.register(
            "saga_in_flight",
            "Sagas that have not ended yet (STARTED, COMPENSATING, CANCELLING)",
            m.sagas_in_flight.clone(),
        );
        r.register(
            "saga_parked",
            "Sagas parked for an operator (a definition version not loaded, a timer failing for good): POST /sagas/{id}/retry",
            m.sagas_parked.clone(),
        );
        r.register_with_unit(
            "saga_oldest_running_age",
            "Age of the oldest saga that has not ended (0 when none)",
            Unit::Seconds,
            m.oldest_running_age.clone(),
        );
        r.register(
            "dead_letters_stored",
            "Dead letters kept in the orchestrator's database because the dead-letter topic would not take them",
            m.dead_letters_stored.clone(),
        );
        r.register(
            "saga_outbox_unsent_messages",
            "Messages written to the outbox and not yet published to Kafka",
            m.outbox_unsent.clone(),
        );
        r.register_with_unit(
            "saga_outbox_oldest_unsent_age",
            "Age of the oldest unpublished outbox message (0 when none)",
            Unit::Seconds,
            m.outbox_oldest_age.clone(),
        );
        r.register(
            "saga_inbox_duplicates",
            "Replies received again and ignored because the inbox had their message id",
            m.inbox_duplicates.clone(),
        );
        r.register(
            "saga_event_streams_open",
            "Event streams (/events, /sagas/{id}/events) open on this instance",
            m.event_streams_open.clone(),
        );
        r.register(
            "saga_event_streams_dropped",
            "Event streams closed because their client fell too far behind (it reconnects and resumes)",
            m.event_streams_dropped.clone(),
        );
        m
    }
}

/// A saga was stored for the first time.
pub fn started(metrics: &SagaMetrics, state: &SagaState) {
    metrics
        .sagas_started
        .get_or_create(&SagaLabels {
            saga_type: state.saga_type.clone(),
        })
        .inc();
}

/// Counts what the committed transition from `before` to `after` did.
pub fn observe(metrics: &SagaMetrics, before: &Before, after: &SagaState) {
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
pub fn declare(metrics: &SagaMetrics, saga_types: impl Iterator<Item = String>) {
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

    fn apply(metrics: &SagaMetrics, state: &SagaState, d: Decision) -> SagaState {
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
        let metrics = Metrics::new();
        let m = SagaMetrics::of(&metrics);
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
        let text = metrics.render();
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
        let metrics = Metrics::new();
        let m = SagaMetrics::of(&metrics);
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
        let text = metrics.render();
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
                &metrics.render(),
                &format!("saga_command_resends_total{{{labels}}}")
            )
            .as_deref(),
            Some("2")
        );
    }
}

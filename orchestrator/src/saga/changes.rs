//! What a transition did, in words a person follows: a command sent or re-sent, a reply and its
//! outcome, a status reached. Computed from a small mark of the state before and the state after,
//! so the store can record it beside the saga in the same transaction (the live streams read
//! those records) and the metrics can count it.

use serde::Serialize;

use super::{SagaState, SagaStatus, StepKind};

/// What the state before a transition looked like, as much as [`changes`] and the metrics need:
/// small, so a batch keeps one per saga without cloning whole states.
#[derive(Debug, Clone)]
pub struct Before {
    pub(crate) status: SagaStatus,
    pub(crate) parked: bool,
    /// Per step record: whether it had finished, how many of its attempts were logged and how
    /// many of them had an outcome.
    pub(crate) steps: Vec<StepMark>,
}

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StepMark {
    pub(crate) finished: bool,
    pub(crate) logged: usize,
    pub(crate) closed: usize,
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

    /// Whether the saga was parked already (so a transition that leaves it parked did not park it).
    pub fn was_parked(&self) -> bool {
        self.parked
    }
}

/// One thing a transition did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// The saga was stored.
    Started,
    /// A command went out for the first time (`compensation`: the command undoes `step`).
    Sent {
        step: String,
        compensation: bool,
        attempt: u32,
        at: i64,
    },
    /// A command went out again: no reply came in time, or a compensation is retried.
    Resent {
        step: String,
        compensation: bool,
        attempt: u32,
        at: i64,
    },
    /// A reply came: `succeeded`, or `failed: <reason>`.
    Replied {
        step: String,
        compensation: bool,
        attempt: u32,
        outcome: String,
    },
    /// An attempt got no reply before its deadline.
    TimedOut {
        step: String,
        compensation: bool,
        attempt: u32,
    },
    /// The saga's status moved (compensating, cancelling, an end, a reopening).
    Status { from: SagaStatus, to: SagaStatus },
    /// Set aside for an operator: its state cannot go on under its definition.
    Parked { reason: String },
    /// Running again after being parked.
    Resumed,
}

/// What moved from `before` (`None`: the saga is new) to `after`, in the order a person reads it:
/// the saga's status last, after the replies and sendings that caused it.
pub fn changes(before: Option<&Before>, after: &SagaState) -> Vec<Change> {
    let mut out = Vec::new();
    if before.is_none() {
        out.push(Change::Started);
    }
    for (i, record) in after.steps.iter().enumerate() {
        let mark = before
            .and_then(|b| b.steps.get(i).copied())
            .unwrap_or_default();
        let compensation = record.kind == StepKind::Compensation;
        // Outcomes first: an attempt that timed out is closed by the sending that follows it.
        for a in record
            .attempt_log
            .iter()
            .filter(|a| a.outcome.is_some())
            .skip(mark.closed)
        {
            let outcome = a.outcome.clone().unwrap_or_default();
            out.push(if outcome == "timed out" {
                Change::TimedOut {
                    step: record.name.clone(),
                    compensation,
                    attempt: a.number,
                }
            } else {
                Change::Replied {
                    step: record.name.clone(),
                    compensation,
                    attempt: a.number,
                    outcome,
                }
            });
        }
        for a in record.attempt_log.iter().skip(mark.logged) {
            let (step, attempt, at) = (record.name.clone(), a.number, a.sent_at);
            out.push(if a.number > 1 {
                Change::Resent {
                    step,
                    compensation,
                    attempt,
                    at,
                }
            } else {
                Change::Sent {
                    step,
                    compensation,
                    attempt,
                    at,
                }
            });
        }
    }
    if let Some(before) = before {
        match (&after.parked, before.parked) {
            (Some(reason), false) => out.push(Change::Parked {
                reason: reason.clone(),
            }),
            (None, true) => out.push(Change::Resumed),
            _ => {}
        }
        if before.status != after.status {
            out.push(Change::Status {
                from: before.status,
                to: after.status,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use uuid::Uuid;

    use super::*;
    use crate::saga::engine::{self, Decision, Policy, Reply};

    fn next(_before: &SagaState, d: Decision) -> SagaState {
        match d {
            Decision::Applied { state, .. } => state,
            Decision::Ignored(why) => panic!("ignored: {why:?}"),
        }
    }

    fn reply(state: &SagaState, t: &str, payload: serde_json::Value) -> SagaState {
        let def = crate::saga::create_order();
        let d = engine::on_reply(
            &def,
            &Policy::default(),
            state,
            Reply {
                message_type: t,
                causation_id: state.pending.first().map(|p| p.command_id),
                payload: &payload,
            },
            Uuid::new_v4(),
            state.updated_at + 10,
        );
        next(state, d)
    }

    #[test]
    fn a_new_saga_is_started_and_its_first_command_sent() {
        let def = crate::saga::create_order();
        let (s, _) = engine::start(
            &def,
            &Policy::default(),
            Uuid::new_v4(),
            Default::default(),
            1_000,
        );
        assert_eq!(
            changes(None, &s),
            vec![
                Change::Started,
                Change::Sent {
                    step: "create_order".into(),
                    compensation: false,
                    attempt: 1,
                    at: 1_000
                }
            ]
        );
    }

    #[test]
    fn a_reply_closes_its_attempt_and_sends_the_next_step() {
        let def = crate::saga::create_order();
        let (s, _) = engine::start(
            &def,
            &Policy::default(),
            Uuid::new_v4(),
            Default::default(),
            0,
        );
        let after = reply(&s, "order.created", json!({"order_id": "o-1"}));
        let got = changes(Some(&Before::of(&s)), &after);
        assert_eq!(
            got,
            vec![
                Change::Replied {
                    step: "create_order".into(),
                    compensation: false,
                    attempt: 1,
                    outcome: "succeeded".into()
                },
                Change::Sent {
                    step: after.steps[1].name.clone(),
                    compensation: false,
                    attempt: 1,
                    at: after.steps[1].started_at
                }
            ]
        );
    }

    #[test]
    fn a_failure_shows_the_refusal_the_compensation_and_the_status() {
        let def = crate::saga::create_order();
        let (s, _) = engine::start(
            &def,
            &Policy::default(),
            Uuid::new_v4(),
            Default::default(),
            0,
        );
        let after = reply(&s, "order.created", json!({"order_id": "o-1"}));
        let failed = reply(
            &after,
            "user.payment_info_failed",
            json!({"reason": "no card"}),
        );
        let got = changes(Some(&Before::of(&after)), &failed);
        assert!(
            matches!(&got[0], Change::Replied { outcome, .. } if outcome.starts_with("failed")),
            "{got:?}"
        );
        assert!(
            got.iter()
                .any(|c| matches!(c, Change::Sent { compensation: true, step, .. } if step == "cancel_order")),
            "{got:?}"
        );
        assert_eq!(
            got.last(),
            Some(&Change::Status {
                from: SagaStatus::Started,
                to: SagaStatus::Compensating
            })
        );
    }

    #[test]
    fn a_resend_after_a_deadline_is_a_time_out_then_a_resend() {
        let def = crate::saga::create_order();
        let policy = Policy::default();
        let (s, _) = engine::start(&def, &policy, Uuid::new_v4(), Default::default(), 0);
        let due = s.pending[0].deadline_at;
        let later = next(&s, engine::on_timer(&def, &policy, &s, due + 1));
        let got = changes(Some(&Before::of(&s)), &later);
        assert_eq!(
            got,
            vec![
                Change::TimedOut {
                    step: "create_order".into(),
                    compensation: false,
                    attempt: 1
                },
                Change::Resent {
                    step: "create_order".into(),
                    compensation: false,
                    attempt: 2,
                    at: due + 1
                }
            ]
        );
    }
}

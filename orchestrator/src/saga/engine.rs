//! The saga engine: a pure function from (state, reply) to (new state, messages to send).
//!
//! No I/O and no clock or randomness of its own: time comes in as `now`, and message ids are
//! derived from the saga id and the step (UUID v5), so the same input always gives the same
//! output. That makes every path unit-testable, and a re-sent command carries the same id, so a
//! participant can recognise it.

use serde_json::{json, Map, Value};
use uuid::Uuid;

use platform::Envelope;

use super::definition::{CommandSpec, SagaDefinition};
use super::state::{Pending, SagaState, SagaStatus, StepKind, StepRecord, StepStatus};

/// A reply from a participant, as the engine needs it.
#[derive(Debug, Clone, Copy)]
pub struct Reply<'a> {
    pub message_type: &'a str,
    /// The command this reply answers.
    pub causation_id: Option<Uuid>,
    pub payload: &'a Value,
}

impl<'a> From<&'a Envelope> for Reply<'a> {
    fn from(e: &'a Envelope) -> Self {
        Reply {
            message_type: &e.message_type,
            causation_id: e.causation_id,
            payload: &e.payload,
        }
    }
}

/// A message to publish: a command to a participant, or a lifecycle event.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub topic: String,
    pub envelope: Envelope,
}

/// Why a reply changed nothing. None of these is an error: at-least-once delivery makes
/// duplicates and late replies normal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ignored {
    /// The saga has already ended.
    Terminal,
    /// The reply answers a command the saga is not waiting for (a duplicate, or a late reply).
    NotAwaited,
    /// The reply answers the awaited command but its type is neither success nor failure.
    UnexpectedType(String),
}

/// What the engine decided about a reply.
// Made once per reply and moved, never copied: boxing the state would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Applied {
        state: SagaState,
        messages: Vec<Outgoing>,
    },
    Ignored(Ignored),
}

/// Starts a saga: the first step's command, and a `saga.started` event.
pub fn start(
    def: &SagaDefinition,
    saga_id: Uuid,
    input: Map<String, Value>,
    now: i64,
) -> (SagaState, Vec<Outgoing>) {
    let mut state = SagaState {
        saga_id,
        saga_type: def.saga_type.clone(),
        status: SagaStatus::Started,
        context: input,
        steps: Vec::new(),
        pending: None,
        error: None,
        created_at: now,
        updated_at: now,
        completed_at: None,
    };
    let mut messages = Vec::new();
    lifecycle(def, &state, "saga.started", now, &mut messages);
    match def.steps.first() {
        Some(_) => send(
            def,
            &mut state,
            0,
            StepKind::Forward,
            None,
            now,
            &mut messages,
        ),
        None => finish(def, &mut state, SagaStatus::Completed, now, &mut messages),
    }
    (state, messages)
}

/// Applies a reply to a saga.
pub fn on_reply(
    def: &SagaDefinition,
    current: &SagaState,
    reply: Reply<'_>,
    reply_id: Uuid,
    now: i64,
) -> Decision {
    let Some(pending) = current.pending else {
        return Decision::Ignored(Ignored::Terminal);
    };
    if reply.causation_id != Some(pending.command_id) {
        return Decision::Ignored(Ignored::NotAwaited);
    }
    let Some(step) = def.step(pending.step_index) else {
        // The stored saga points past its definition: only possible if the definition shrank
        // under a running saga. Nothing sensible can be sent; leave the saga for an operator.
        return Decision::Ignored(Ignored::UnexpectedType(format!(
            "saga waits on step {} which its definition does not have",
            pending.step_index
        )));
    };
    let (success, failure) = match pending.kind {
        StepKind::Forward => (step.on_success.as_str(), Some(step.on_failure.as_str())),
        StepKind::Compensation => match &step.compensation {
            Some(c) => (c.on_success.as_str(), c.on_failure.as_deref()),
            None => {
                return Decision::Ignored(Ignored::UnexpectedType(reply.message_type.to_string()))
            }
        },
    };
    let succeeded = if reply.message_type == success {
        true
    } else if Some(reply.message_type) == failure {
        false
    } else {
        return Decision::Ignored(Ignored::UnexpectedType(reply.message_type.to_string()));
    };

    let mut state = current.clone();
    state.updated_at = now;
    let mut messages = Vec::new();
    let error = (!succeeded).then(|| reason(reply));
    if let Some(record) = state
        .steps
        .iter_mut()
        .rev()
        .find(|s| s.command_id == pending.command_id)
    {
        record.status = if succeeded {
            StepStatus::Completed
        } else {
            StepStatus::Failed
        };
        record.finished_at = Some(now);
        record.error = error.clone();
    }
    let causation = Some(reply_id);
    match (pending.kind, succeeded) {
        (StepKind::Forward, true) => {
            if let Value::Object(fields) = reply.payload {
                for (k, v) in fields {
                    state.context.insert(k.clone(), v.clone());
                }
            }
            let next = pending.step_index + 1;
            if next < def.steps.len() {
                send(
                    def,
                    &mut state,
                    next,
                    StepKind::Forward,
                    causation,
                    now,
                    &mut messages,
                );
            } else {
                finish(def, &mut state, SagaStatus::Completed, now, &mut messages);
            }
        }
        (StepKind::Forward, false) => {
            state.error = Some(format!(
                "{} failed: {}",
                step.name,
                error.unwrap_or_default()
            ));
            state.status = SagaStatus::Compensating;
            lifecycle(def, &state, "saga.compensating", now, &mut messages);
            compensate_below(
                def,
                &mut state,
                pending.step_index,
                causation,
                now,
                &mut messages,
            );
        }
        (StepKind::Compensation, true) => {
            compensate_below(
                def,
                &mut state,
                pending.step_index,
                causation,
                now,
                &mut messages,
            );
        }
        (StepKind::Compensation, false) => {
            let name = step
                .compensation
                .as_ref()
                .map(|c| c.name.as_str())
                .unwrap_or_default();
            let cause = state
                .error
                .take()
                .map(|e| format!(" (compensating because {e})"))
                .unwrap_or_default();
            state.error = Some(format!(
                "{name} failed: {}{cause}",
                error.unwrap_or_default()
            ));
            finish(def, &mut state, SagaStatus::Failed, now, &mut messages);
        }
    }
    Decision::Applied { state, messages }
}

/// The id of the command for a step: stable, so a re-send is recognisable as the same command.
pub fn command_id(saga_id: Uuid, step_name: &str, kind: StepKind) -> Uuid {
    let kind = match kind {
        StepKind::Forward => "forward",
        StepKind::Compensation => "compensation",
    };
    Uuid::new_v5(&saga_id, format!("command:{kind}:{step_name}").as_bytes())
}

/// Sends the compensation of the newest completed step below `below`, or ends the saga
/// `COMPENSATED` when none is left.
fn compensate_below(
    def: &SagaDefinition,
    state: &mut SagaState,
    below: usize,
    causation: Option<Uuid>,
    now: i64,
    messages: &mut Vec<Outgoing>,
) {
    let next = (0..below).rev().find(|&j| {
        def.steps[j].compensation.is_some()
            && state.steps.iter().any(|r| {
                r.kind == StepKind::Forward
                    && r.step_index == j
                    && r.status == StepStatus::Completed
            })
    });
    match next {
        Some(j) => send(
            def,
            state,
            j,
            StepKind::Compensation,
            causation,
            now,
            messages,
        ),
        None => finish(def, state, SagaStatus::Compensated, now, messages),
    }
}

fn send(
    def: &SagaDefinition,
    state: &mut SagaState,
    index: usize,
    kind: StepKind,
    causation: Option<Uuid>,
    now: i64,
    messages: &mut Vec<Outgoing>,
) {
    let step = &def.steps[index];
    let (name, spec): (&str, &CommandSpec) = match (kind, &step.compensation) {
        (StepKind::Compensation, Some(c)) => (&c.name, &c.command),
        _ => (&step.name, &step.command),
    };
    let id = command_id(state.saga_id, name, kind);
    let mut payload = state.context.clone();
    for (k, v) in &spec.args {
        payload.insert(k.clone(), v.clone());
    }
    state.steps.push(StepRecord {
        name: name.to_string(),
        kind,
        step_index: index,
        status: StepStatus::Running,
        command_id: id,
        attempts: 1,
        started_at: now,
        finished_at: None,
        error: None,
    });
    state.pending = Some(Pending {
        command_id: id,
        step_index: index,
        kind,
    });
    messages.push(Outgoing {
        topic: spec.topic.clone(),
        envelope: Envelope {
            message_id: id,
            message_type: spec.command_type.clone(),
            correlation_id: state.saga_id,
            causation_id: causation,
            timestamp: platform::time::rfc3339(now),
            payload: Value::Object(payload),
        },
    });
}

fn finish(
    def: &SagaDefinition,
    state: &mut SagaState,
    status: SagaStatus,
    now: i64,
    messages: &mut Vec<Outgoing>,
) {
    state.status = status;
    state.pending = None;
    state.completed_at = Some(now);
    state.updated_at = now;
    let event = match status {
        SagaStatus::Completed => "saga.completed",
        SagaStatus::Compensated => "saga.compensated",
        _ => "saga.failed",
    };
    lifecycle(def, state, event, now, messages);
}

/// A lifecycle event for people and other systems following sagas (the notification service).
fn lifecycle(
    def: &SagaDefinition,
    state: &SagaState,
    event: &str,
    now: i64,
    messages: &mut Vec<Outgoing>,
) {
    let Some(topic) = &def.lifecycle_topic else {
        return;
    };
    messages.push(Outgoing {
        topic: topic.clone(),
        envelope: Envelope {
            message_id: Uuid::new_v5(&state.saga_id, format!("event:{event}").as_bytes()),
            message_type: event.to_string(),
            correlation_id: state.saga_id,
            causation_id: None,
            timestamp: platform::time::rfc3339(now),
            payload: json!({
                "saga_type": state.saga_type,
                "status": state.status.as_str(),
                "error": state.error,
            }),
        },
    });
}

/// The failure reason a participant gave, or the reply type when it gave none.
fn reason(reply: Reply<'_>) -> String {
    reply
        .payload
        .get("reason")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| reply.message_type.to_string())
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;

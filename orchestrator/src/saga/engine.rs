//! The saga engine: a pure function from (state, reply) to (new state, messages to send).
//!
//! No I/O and no clock or randomness of its own: time comes in as `now`, and message ids are
//! derived from the saga id and the step (UUID v5), so the same input always gives the same
//! output. That makes every path unit-testable, and a re-sent command carries the same id, so a
//! participant can recognise it.

use serde_json::{json, Map, Value};
use uuid::Uuid;

use platform::{Envelope, TraceContext};

use super::definition::{CommandSpec, SagaDefinition};
use super::state::{
    Abort, Attempt, Pending, SagaState, SagaStatus, StepKind, StepRecord, StepStatus,
};

/// Every lifecycle event a saga can publish (on its definition's `events` topic).
pub const LIFECYCLE_EVENTS: [&str; 8] = [
    "saga.started",
    "saga.compensating",
    "saga.cancelling",
    "saga.retrying",
    "saga.completed",
    "saga.compensated",
    "saga.cancelled",
    "saga.failed",
];

/// Timing rules of every saga: deadlines, retries, limits. Part of the engine's input, so the
/// engine stays pure and tests can shrink the times.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// How long to wait for a reply to a command's first sending.
    pub step_timeout_ms: i64,
    /// Each re-send waits twice as long as the one before, up to this.
    pub max_step_timeout_ms: i64,
    /// Sendings of a forward command before the step counts as failed.
    pub max_attempts: u32,
    /// First delay before re-sending a compensation that failed; doubles up to
    /// `max_step_timeout_ms`.
    pub retry_delay_ms: i64,
    /// How long a step that must happen is retried before the saga is `FAILED` for an
    /// operator: a compensation, or a step at or past the saga's pivot.
    pub compensation_limit_ms: i64,
    /// A saga not `COMPLETED` after this long is compensated.
    pub saga_timeout_ms: i64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            step_timeout_ms: 10_000,
            max_step_timeout_ms: 60_000,
            max_attempts: 5,
            retry_delay_ms: 1_000,
            compensation_limit_ms: 3_600_000,
            saga_timeout_ms: 300_000,
        }
    }
}

impl Policy {
    /// How long attempt `n` of `command` waits: doubling from `base`, capped, with ±10 %
    /// jitter derived from the command id (deterministic, yet different per saga, so sagas that
    /// failed together do not retry together).
    fn wait(&self, base: i64, command: Uuid, n: u32) -> i64 {
        let doubled = base.saturating_mul(1i64 << (n.saturating_sub(1)).min(20));
        let capped = doubled.min(self.max_step_timeout_ms.max(base));
        let bits = Uuid::new_v5(&command, &n.to_be_bytes()).as_u128() as u64;
        let jitter = 0.9 + (bits % 2001) as f64 / 10_000.0;
        ((capped as f64) * jitter) as i64
    }
}

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
    /// The trace context the message is sent with. The engine leaves it empty (it knows nothing
    /// of spans); the shell fills it in with the context of the span that handled the input.
    pub trace: TraceContext,
}

/// Why an input changed nothing. None of these is an error: at-least-once delivery makes
/// duplicates and late replies normal, and timers may fire early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ignored {
    /// The saga has already ended.
    Terminal,
    /// The reply answers a command the saga is not waiting for (a duplicate, or a late reply).
    NotAwaited,
    /// The reply answers the awaited command but its type is neither success nor failure.
    UnexpectedType(String),
    /// Nothing is due yet.
    NotDue,
    /// The saga is already being cancelled, or is cancelled.
    AlreadyCancelled,
    /// Cancel refused: the saga is compensating, compensated or failed.
    NotCancellable(SagaStatus),
    /// Retry refused: only a `FAILED` saga can be retried.
    NotRetryable(SagaStatus),
    /// The saga is parked (it cannot go on under its definition): left for an operator.
    Parked,
    /// Cancel refused: the saga has sent its pivot (named), the step that cannot be undone.
    PastPointOfNoReturn(String),
    /// The reply's `causation_id` names no command the saga ever sent: a participant's bug (or a
    /// forgery), for its owner to see, not a late reply to drop.
    UnknownCommand(Option<Uuid>),
}

/// What the engine decided.
// Made once per input and moved, never copied: boxing the state would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Applied {
        state: SagaState,
        messages: Vec<Outgoing>,
    },
    Ignored(Ignored),
}

impl Decision {
    /// Stamps every message of the decision with `trace` (the span that made it).
    pub fn traced(mut self, trace: &TraceContext) -> Self {
        if let Decision::Applied { messages, .. } = &mut self {
            for m in messages {
                m.trace = trace.clone();
            }
        }
        self
    }
}

/// Starts a saga: the first step's command, and a `saga.started` event.
/// Starts a saga: the first step's command (every member's, for a parallel group), and a
/// `saga.started` event.
pub fn start(
    def: &SagaDefinition,
    policy: &Policy,
    saga_id: Uuid,
    input: Map<String, Value>,
    now: i64,
) -> (SagaState, Vec<Outgoing>) {
    let deadline = def.deadline_ms.unwrap_or(policy.saga_timeout_ms);
    let input_json = Some(Value::Object(input.clone()).to_string());
    let mut state = SagaState {
        saga_id,
        saga_type: def.saga_type.clone(),
        definition_version: def.version,
        status: SagaStatus::Started,
        context: input,
        steps: Vec::new(),
        pending: Vec::new(),
        error: None,
        compensation_error: None,
        abort: None,
        deadline_at: Some(now.saturating_add(deadline)),
        created_at: now,
        updated_at: now,
        completed_at: None,
        trace: TraceContext::default(),
        input_json,
        events_sent: 0,
        parked: None,
    };
    let mut m = Machine {
        def,
        policy,
        now,
        state: &mut state,
        messages: Vec::new(),
    };
    m.lifecycle("saga.started");
    if def.steps.is_empty() {
        m.finish(SagaStatus::Completed);
    } else {
        m.send_stage(0, None);
    }
    let messages = m.messages;
    (state, messages)
}

/// Applies a reply to a saga.
pub fn on_reply(
    def: &SagaDefinition,
    policy: &Policy,
    current: &SagaState,
    reply: Reply<'_>,
    reply_id: Uuid,
    now: i64,
) -> Decision {
    let sent = |id: Uuid| current.steps.iter().any(|r| r.command_id == id);
    if !reply.causation_id.is_some_and(sent) {
        return Decision::Ignored(Ignored::UnknownCommand(reply.causation_id));
    }
    if current.pending.is_empty() {
        return Decision::Ignored(Ignored::Terminal);
    }
    // A parked saga waits for an operator, replies included: moving on without deadlines, it
    // could end COMPLETED still marked parked. The reply leaves the inbox (it changed nothing),
    // so the participant's answer to the re-send after `retry` counts.
    if current.parked.is_some() {
        return Decision::Ignored(Ignored::Parked);
    }
    let Some(pending) = reply.causation_id.and_then(|id| current.awaits(id)) else {
        return Decision::Ignored(Ignored::NotAwaited);
    };
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

    transition(def, policy, current, now, |m| {
        let causation = Some(reply_id);
        let index = pending.step_index;
        match (pending.kind, succeeded) {
            (StepKind::Forward, true) => {
                m.close_attempt(
                    pending.command_id,
                    StepStatus::Completed,
                    "succeeded".into(),
                    None,
                );
                if let Value::Object(fields) = reply.payload {
                    for key in &step.receive {
                        if let Some(v) = fields.get(key) {
                            m.state.context.insert(key.clone(), v.clone());
                        }
                    }
                }
                m.settle(pending.command_id, index, causation);
            }
            (StepKind::Forward, false) if !matches!(def.pivot, Some(p) if index > p) => {
                let why = reason(reply);
                m.close_attempt(
                    pending.command_id,
                    StepStatus::Failed,
                    format!("failed: {why}"),
                    Some(why.clone()),
                );
                m.fail_saga(&step.name, &why);
                m.settle(pending.command_id, index, causation);
            }
            (StepKind::Compensation, true) => {
                m.close_attempt(
                    pending.command_id,
                    StepStatus::Completed,
                    "succeeded".into(),
                    None,
                );
                m.state.pending.clear();
                m.compensate_below(index, causation);
            }
            // Steps that must happen: a compensation, or a step past the point of no return
            // (undoing is no longer an option). A refusal is asked again after a delay, until
            // the limit.
            (_, false) => {
                let why = reason(reply);
                m.note_attempt(
                    pending.command_id,
                    format!("failed: {why}"),
                    Some(why.clone()),
                );
                m.retry_later(&pending, &why);
            }
        }
    })
}

/// Acts on time passing: re-sends a command whose reply is overdue, gives up on it, or starts
/// compensating a saga past its deadline.
pub fn on_timer(def: &SagaDefinition, policy: &Policy, current: &SagaState, now: i64) -> Decision {
    if current.status.is_terminal() {
        return Decision::Ignored(Ignored::Terminal);
    }
    if current.parked.is_some() {
        return Decision::Ignored(Ignored::Parked);
    }
    if let Some(why) = current
        .pending
        .iter()
        .find_map(|p| unknown_step(def, p.step_index, p.kind))
    {
        return park(current, now, why);
    }
    // Past the pivot the deadline no longer applies: what is left must happen, not be undone.
    let saga_overdue = current.status == SagaStatus::Started
        && current.abort.is_none()
        && current.deadline_at.is_some_and(|d| d <= now)
        && passed_pivot(def, current).is_none();
    let overdue: Vec<Pending> = current
        .pending
        .iter()
        .filter(|p| p.deadline_at <= now)
        .copied()
        .collect();
    if !saga_overdue && overdue.is_empty() {
        return Decision::Ignored(Ignored::NotDue);
    }
    transition(def, policy, current, now, |m| {
        if saga_overdue {
            let limit = def.deadline_ms.unwrap_or(policy.saga_timeout_ms);
            m.state.abort = Some(Abort::Timeout);
            m.state.status = SagaStatus::Compensating;
            m.state.error = Some(format!(
                "the saga did not complete within {} s",
                limit / 1000
            ));
            m.lifecycle("saga.compensating");
        }
        for pending in overdue {
            let timing = m.policy_for(pending.step_index, pending.kind);
            match pending.kind {
                StepKind::Forward
                    if m.state.abort.is_some() || m.state.status != SagaStatus::Started =>
                {
                    // Cancelled, out of time, or a sibling in its group failed: stop waiting (no
                    // re-send of a step about to be undone), and undo it in case it ran.
                    m.close_attempt(
                        pending.command_id,
                        StepStatus::Failed,
                        "timed out".into(),
                        Some("no reply before the deadline".into()),
                    );
                    m.mark_outcome_unknown(pending.command_id);
                    m.settle(pending.command_id, pending.step_index, None);
                }
                StepKind::Forward if def.must_happen(pending.step_index) => {
                    // The pivot, or a step after it: a missing reply is asked for again (the
                    // participant answers a re-sent command as it did the first time), never
                    // taken for a failure that would undo what cannot be undone.
                    if m.out_of_time(&pending) {
                        let last = m
                            .last_error(pending.command_id)
                            .unwrap_or_else(|| "no reply".into());
                        m.note_attempt(pending.command_id, "timed out".into(), None);
                        m.give_up(&pending, &last);
                    } else {
                        m.note_attempt(pending.command_id, "timed out".into(), None);
                        m.resend(pending);
                    }
                }
                StepKind::Forward if pending.attempt < timing.max_attempts => {
                    m.note_attempt(pending.command_id, "timed out".into(), None);
                    m.resend(pending);
                }
                StepKind::Forward => {
                    let why = format!("no reply after {} attempts", pending.attempt);
                    m.close_attempt(
                        pending.command_id,
                        StepStatus::Failed,
                        "timed out".into(),
                        Some(why.clone()),
                    );
                    m.mark_outcome_unknown(pending.command_id);
                    let name = def.steps[pending.step_index].name.clone();
                    m.fail_saga(&name, &why);
                    m.settle(pending.command_id, pending.step_index, None);
                }
                StepKind::Compensation if m.out_of_time(&pending) => {
                    m.note_attempt(pending.command_id, "timed out".into(), None);
                    let last = m
                        .last_error(pending.command_id)
                        .unwrap_or_else(|| "no confirmation".into());
                    m.give_up(&pending, &last);
                }
                StepKind::Compensation => {
                    let waited = m
                        .record(pending.command_id)
                        .and_then(|r| r.attempt_log.last())
                        .is_some_and(|a| a.outcome.is_none());
                    if waited {
                        m.note_attempt(pending.command_id, "timed out".into(), None);
                    }
                    m.resend(pending);
                }
            }
        }
    })
}

/// Why a stored saga cannot go on with step `index` of `def` (a definition that shrank under a
/// running saga, a hand-edited row), or `None` when it can. Stored data must never make the
/// engine index past a definition: that panicked the timer, and with it every deadline.
fn unknown_step(def: &SagaDefinition, index: usize, kind: StepKind) -> Option<String> {
    match (def.step(index), kind) {
        (None, _) => Some(format!(
            "the saga waits on step {index}, which its definition ({} steps) does not have",
            def.steps.len()
        )),
        (Some(step), StepKind::Compensation) if step.compensation.is_none() => Some(format!(
            "the saga waits on a compensation of step {index} ({}), which has none",
            step.name
        )),
        _ => None,
    }
}

/// The pivot's name once `state` has sent it: from then on the saga is never compensated.
fn passed_pivot<'a>(def: &'a SagaDefinition, state: &SagaState) -> Option<&'a str> {
    let p = def.pivot?;
    state
        .steps
        .iter()
        .any(|r| r.kind == StepKind::Forward && r.step_index >= p)
        .then(|| def.steps[p].name.as_str())
}

/// Sets a saga aside because it cannot be handled (its timer failed for good again and again —
/// an outbox insert the database keeps refusing, say —, or its definition is not loaded): left
/// as it is, it would be due again at every look and crowd out every other saga's deadline. An
/// operator resumes it with `retry` once the cause is fixed.
pub fn park_after_failures(current: &SagaState, now: i64, why: String) -> Decision {
    if current.status.is_terminal() {
        return Decision::Ignored(Ignored::Terminal);
    }
    if current.parked.is_some() {
        return Decision::Ignored(Ignored::Parked);
    }
    park(current, now, why)
}

/// Leaves a saga alone for an operator: nothing is sent, no deadline brings it back (see
/// [`SagaState::next_wake`]), and the API and the logs say why.
fn park(current: &SagaState, now: i64, why: String) -> Decision {
    let mut state = current.clone();
    state.parked = Some(why);
    state.updated_at = now;
    Decision::Applied {
        state,
        messages: Vec::new(),
    }
}

/// `POST /sagas/{id}/cancel`: a running saga stops after the step in flight and is undone; a
/// completed saga is undone. Ends `CANCELLED`.
pub fn cancel(def: &SagaDefinition, policy: &Policy, current: &SagaState, now: i64) -> Decision {
    match current.status {
        SagaStatus::Started | SagaStatus::Completed => {}
        SagaStatus::Cancelling | SagaStatus::Cancelled => {
            return Decision::Ignored(Ignored::AlreadyCancelled)
        }
        other => return Decision::Ignored(Ignored::NotCancellable(other)),
    }
    if let Some(pivot) = passed_pivot(def, current) {
        return Decision::Ignored(Ignored::PastPointOfNoReturn(pivot.to_string()));
    }
    transition(def, policy, current, now, |m| {
        m.state.abort = Some(Abort::Cancel);
        m.state.status = SagaStatus::Cancelling;
        m.lifecycle("saga.cancelling");
        if current.status == SagaStatus::Completed {
            m.state.completed_at = None;
            m.compensate_below(def.steps.len(), None);
        }
        // A running saga keeps waiting for its steps in flight (their replies or deadlines).
    })
}

/// `POST /sagas/{id}/retry`: a `FAILED` saga tries its failed compensation again, with a fresh
/// time limit, and carries on with the rest.
pub fn retry(def: &SagaDefinition, policy: &Policy, current: &SagaState, now: i64) -> Decision {
    if current.parked.is_some() {
        // Resumed where it stood, if its steps are ones the definition knows (a saga pointing
        // past its definition stays parked). Each command it waits for is sent again at once,
        // one sending more than its attempts allow if need be: the reply to the last sending may
        // have been the one that found the definition missing, and the participant answers the
        // re-send with that same reply, which now counts. A compensation gets a fresh time limit,
        // as a retry of a `FAILED` saga does: the time parked was nobody's to spend.
        if current.pending.is_empty()
            || current
                .pending
                .iter()
                .any(|p| unknown_step(def, p.step_index, p.kind).is_some())
        {
            return Decision::Ignored(Ignored::Parked);
        }
        return transition(def, policy, current, now, |m| {
            m.state.parked = None;
            let running = m.state.abort.is_none() && m.state.status == SagaStatus::Started;
            for mut p in current.pending.clone() {
                match p.kind {
                    // A step about to be undone is not sent again: its deadline, due now, lets
                    // the timer settle it.
                    StepKind::Forward if !running => {
                        if let Some(q) = m.pending_mut(p.command_id) {
                            q.deadline_at = now;
                        }
                    }
                    StepKind::Forward => m.resend(p),
                    StepKind::Compensation => {
                        p.first_sent_at = now;
                        m.resend(p);
                    }
                }
            }
        });
    }
    if current.status != SagaStatus::Failed {
        return Decision::Ignored(Ignored::NotRetryable(current.status));
    }
    // A step that must happen and gave up (the pivot's reply never came, a step after it kept
    // failing): tried again with a fresh time limit, and the saga goes on forward.
    if let Some(failed) = current
        .steps
        .iter()
        .rev()
        .find(|r| r.status == StepStatus::Failed)
        .filter(|r| r.kind == StepKind::Forward && def.must_happen(r.step_index))
        .filter(|r| current.compensation_error.is_none() && r.step_index < def.steps.len())
        .cloned()
    {
        return transition(def, policy, current, now, |m| {
            m.state.completed_at = None;
            m.state.error = None;
            m.state.status = SagaStatus::Started;
            m.lifecycle("saga.retrying");
            if let Some(r) = m.record_mut(failed.command_id) {
                r.status = StepStatus::Running;
                r.finished_at = None;
                r.error = None;
            }
            m.resend(Pending {
                command_id: failed.command_id,
                step_index: failed.step_index,
                kind: StepKind::Forward,
                causation_id: None,
                attempt: failed.attempts,
                first_sent_at: now,
                deadline_at: now,
            });
        });
    }
    let Some(failed) = current
        .steps
        .iter()
        .rev()
        .find(|r| r.kind == StepKind::Compensation && r.status == StepStatus::Failed)
        .cloned()
    else {
        return Decision::Ignored(Ignored::NotRetryable(current.status));
    };
    // A compensation the definition does not have cannot be retried; the saga stays FAILED
    // (parking it would leave it beyond any later retry, which only resumes pending commands).
    if unknown_step(def, failed.step_index, StepKind::Compensation).is_some() {
        return Decision::Ignored(Ignored::NotRetryable(current.status));
    }
    transition(def, policy, current, now, |m| {
        m.state.completed_at = None;
        m.state.compensation_error = None;
        m.state.status = if m.state.abort == Some(Abort::Cancel) {
            SagaStatus::Cancelling
        } else {
            SagaStatus::Compensating
        };
        m.lifecycle("saga.retrying");
        if let Some(r) = m.record_mut(failed.command_id) {
            r.status = StepStatus::Running;
            r.finished_at = None;
            r.error = None;
        }
        let pending = Pending {
            command_id: failed.command_id,
            step_index: failed.step_index,
            kind: StepKind::Compensation,
            causation_id: None,
            attempt: failed.attempts,
            first_sent_at: now,
            deadline_at: now,
        };
        m.resend(pending);
    })
}

/// The id of the command for a step: stable, so a re-send is recognisable as the same command.
pub fn command_id(saga_id: Uuid, step_name: &str, kind: StepKind) -> Uuid {
    let kind = match kind {
        StepKind::Forward => "forward",
        StepKind::Compensation => "compensation",
    };
    Uuid::new_v5(&saga_id, format!("command:{kind}:{step_name}").as_bytes())
}

/// Runs `change` on a copy of `current` (stamped `now`) and returns the result.
fn transition(
    def: &SagaDefinition,
    policy: &Policy,
    current: &SagaState,
    now: i64,
    change: impl FnOnce(&mut Machine<'_>),
) -> Decision {
    let mut state = current.clone();
    state.updated_at = now;
    let mut m = Machine {
        def,
        policy,
        now,
        state: &mut state,
        messages: Vec::new(),
    };
    change(&mut m);
    let messages = m.messages;
    Decision::Applied { state, messages }
}

/// One transition in progress: the state being changed and the messages it produces.
struct Machine<'a> {
    def: &'a SagaDefinition,
    policy: &'a Policy,
    now: i64,
    state: &'a mut SagaState,
    messages: Vec<Outgoing>,
}

impl Machine<'_> {
    /// The global policy with the step's own timing laid over it.
    fn policy_for(&self, index: usize, kind: StepKind) -> Policy {
        let step = &self.def.steps[index];
        let t = match (kind, &step.compensation) {
            (StepKind::Compensation, Some(c)) => c.timing,
            _ => step.timing,
        };
        let p = self.policy;
        Policy {
            step_timeout_ms: t.timeout_ms.unwrap_or(p.step_timeout_ms),
            max_step_timeout_ms: t.max_timeout_ms.unwrap_or(p.max_step_timeout_ms),
            max_attempts: t.attempts.unwrap_or(p.max_attempts),
            retry_delay_ms: t.retry_delay_ms.unwrap_or(p.retry_delay_ms),
            ..*p
        }
    }

    /// A forward step failed (its reply, or no reply in time): the saga compensates, unless it
    /// already does (a cancel, the deadline, a sibling in its group that failed first).
    fn fail_saga(&mut self, step: &str, why: &str) {
        if self.state.abort.is_none() && self.state.status == SagaStatus::Started {
            self.state.error = Some(format!("{step} failed: {why}"));
            self.state.status = SagaStatus::Compensating;
            self.lifecycle("saga.compensating");
        }
    }

    /// A forward command stopped being awaited (answered, failed, given up). Once none of its
    /// stage is left, the saga goes on: the next stage, the end, or — when a step failed or the
    /// saga was cancelled or ran out of time — compensation of every step that ran, newest first.
    fn settle(&mut self, command: Uuid, index: usize, causation: Option<Uuid>) {
        self.state.pending.retain(|p| p.command_id != command);
        if !self.state.pending.is_empty() {
            return; // other members of the group are still running
        }
        let stage = self.def.stage(index);
        if self.state.abort.is_some() || self.state.status != SagaStatus::Started {
            self.compensate_below(stage.end, causation);
        } else if stage.end < self.def.steps.len() {
            self.send_stage(stage.end, causation);
        } else {
            self.finish(SagaStatus::Completed);
        }
    }

    /// Sends step `index`, and with it every other member of its parallel group.
    fn send_stage(&mut self, index: usize, causation: Option<Uuid>) {
        for j in self.def.stage(index) {
            self.send(j, StepKind::Forward, causation);
        }
    }

    /// Sends the compensation of the newest step below `below` that ran (or may have run), or
    /// ends the saga when none is left.
    fn compensate_below(&mut self, below: usize, causation: Option<Uuid>) {
        let state = &*self.state;
        let next = (0..below.min(self.def.steps.len())).rev().find(|&j| {
            self.def.steps[j].compensation.is_some()
                && state.steps.iter().any(|r| {
                    r.kind == StepKind::Forward
                        && r.step_index == j
                        && (r.status == StepStatus::Completed || r.outcome_unknown)
                })
                && !state.steps.iter().any(|r| {
                    r.kind == StepKind::Compensation
                        && r.step_index == j
                        && r.status == StepStatus::Completed
                })
        });
        match next {
            Some(j) => self.send(j, StepKind::Compensation, causation),
            None => {
                let end = if self.state.abort == Some(Abort::Cancel) {
                    SagaStatus::Cancelled
                } else {
                    SagaStatus::Compensated
                };
                self.finish(end);
            }
        }
    }

    fn spec(&self, index: usize, kind: StepKind) -> (&str, &CommandSpec) {
        let step = &self.def.steps[index];
        match (kind, &step.compensation) {
            (StepKind::Compensation, Some(c)) => (&c.name, &c.command),
            _ => (&step.name, &step.command),
        }
    }

    fn send(&mut self, index: usize, kind: StepKind, causation: Option<Uuid>) {
        let (name, _) = self.spec(index, kind);
        let name = name.to_string();
        let id = command_id(self.state.saga_id, &name, kind);
        let now = self.now;
        let group = match kind {
            StepKind::Forward => self.def.steps[index].group.clone(),
            StepKind::Compensation => None,
        };
        self.state.steps.push(StepRecord {
            name,
            kind,
            step_index: index,
            status: StepStatus::Running,
            command_id: id,
            attempts: 0,
            attempt_log: Vec::new(),
            started_at: now,
            finished_at: None,
            error: None,
            outcome_unknown: false,
            group,
        });
        let pending = Pending {
            command_id: id,
            step_index: index,
            kind,
            causation_id: causation,
            attempt: 0,
            first_sent_at: now,
            deadline_at: now,
        };
        self.resend(pending);
    }

    /// Sends (again) the command `pending` names: same id, next attempt, a new deadline.
    fn resend(&mut self, mut pending: Pending) {
        let now = self.now;
        let timing = self.policy_for(pending.step_index, pending.kind);
        pending.attempt += 1;
        pending.deadline_at = now.saturating_add(timing.wait(
            timing.step_timeout_ms,
            pending.command_id,
            pending.attempt,
        ));
        if let Some(r) = self.record_mut(pending.command_id) {
            r.attempts = pending.attempt;
            r.attempt_log.push(Attempt {
                number: pending.attempt,
                sent_at: now,
                outcome: None,
            });
        }
        match self.pending_mut(pending.command_id) {
            Some(p) => *p = pending,
            None => self.state.pending.push(pending),
        }
        let (_, spec) = self.spec(pending.step_index, pending.kind);
        let mut payload = Map::new();
        for key in &spec.send {
            if let Some(v) = self.state.context.get(key) {
                payload.insert(key.clone(), v.clone());
            }
        }
        for (k, v) in &spec.args {
            payload.insert(k.clone(), v.clone());
        }
        let (topic, command_type) = (spec.topic.clone(), spec.command_type.clone());
        self.messages.push(Outgoing {
            topic,
            envelope: Envelope {
                message_id: pending.command_id,
                message_type: command_type,
                correlation_id: self.state.saga_id,
                causation_id: pending.causation_id,
                timestamp: platform::time::rfc3339(now),
                payload: Value::Object(payload),
            },
            trace: TraceContext::default(),
        });
    }

    fn pending_mut(&mut self, command: Uuid) -> Option<&mut Pending> {
        self.state
            .pending
            .iter_mut()
            .find(|p| p.command_id == command)
    }

    fn record(&self, command: Uuid) -> Option<&StepRecord> {
        self.state
            .steps
            .iter()
            .rev()
            .find(|r| r.command_id == command)
    }

    fn record_mut(&mut self, command: Uuid) -> Option<&mut StepRecord> {
        self.state
            .steps
            .iter_mut()
            .rev()
            .find(|r| r.command_id == command)
    }

    /// Ends the last attempt of a command and its step record.
    fn close_attempt(
        &mut self,
        command: Uuid,
        status: StepStatus,
        outcome: String,
        error: Option<String>,
    ) {
        let now = self.now;
        if let Some(r) = self.record_mut(command) {
            r.status = status;
            r.finished_at = Some(now);
            r.error = error;
            if let Some(a) = r.attempt_log.last_mut() {
                a.outcome.get_or_insert(outcome);
            }
        }
    }

    /// Records how the last attempt ended, leaving the step running.
    fn note_attempt(&mut self, command: Uuid, outcome: String, error: Option<String>) {
        if let Some(r) = self.record_mut(command) {
            if let Some(a) = r.attempt_log.last_mut() {
                a.outcome.get_or_insert(outcome);
            }
            if error.is_some() {
                r.error = error;
            }
        }
    }

    fn mark_outcome_unknown(&mut self, command: Uuid) {
        if let Some(r) = self.record_mut(command) {
            r.outcome_unknown = true;
        }
    }

    fn last_error(&self, command: Uuid) -> Option<String> {
        self.record(command).and_then(|r| r.error.clone())
    }

    /// Whether a step that must happen (a compensation, a step at or past the pivot) has been
    /// tried for longer than the must-happen limit.
    fn out_of_time(&self, pending: &Pending) -> bool {
        self.now.saturating_sub(pending.first_sent_at) >= self.policy.compensation_limit_ms
    }

    /// A step that must happen was refused: asked again after a growing delay, or given up on
    /// once its limit has passed.
    fn retry_later(&mut self, pending: &Pending, why: &str) {
        if self.out_of_time(pending) {
            self.give_up(pending, why);
            return;
        }
        let timing = self.policy_for(pending.step_index, pending.kind);
        let now = self.now;
        if let Some(p) = self.pending_mut(pending.command_id) {
            p.deadline_at =
                now.saturating_add(timing.wait(timing.retry_delay_ms, p.command_id, p.attempt));
        }
    }

    /// A step that must happen could not be done within its limit: the saga is `FAILED` for an
    /// operator (a `saga.failed` event and the failed-sagas metric alert), and says which step.
    /// Past the pivot nothing is undone: `retry` tries the step again.
    fn give_up(&mut self, pending: &Pending, why: &str) {
        let name = self.spec(pending.step_index, pending.kind).0.to_string();
        let seconds = self.policy.compensation_limit_ms / 1000;
        let mut message = format!(
            "{name} failed after {} attempts over {seconds} s: {why}",
            pending.attempt
        );
        self.close_attempt(
            pending.command_id,
            StepStatus::Failed,
            "gave up".into(),
            Some(message.clone()),
        );
        match pending.kind {
            StepKind::Compensation => self.state.compensation_error = Some(message),
            StepKind::Forward => {
                if let Some(p) = self.def.pivot {
                    message.push_str(&format!(
                        "; past the point of no return ({}), nothing was undone",
                        self.def.steps[p].name
                    ));
                }
                self.state.error = Some(message);
            }
        }
        self.finish(SagaStatus::Failed);
    }

    fn finish(&mut self, status: SagaStatus) {
        self.state.status = status;
        self.state.pending.clear();
        self.state.completed_at = Some(self.now);
        self.state.updated_at = self.now;
        let event = match status {
            SagaStatus::Completed => "saga.completed",
            SagaStatus::Compensated => "saga.compensated",
            SagaStatus::Cancelled => "saga.cancelled",
            _ => "saga.failed",
        };
        self.lifecycle(event);
    }

    /// A lifecycle event for people and other systems following sagas (the notification
    /// service). Its id is derived from the saga and the event's number among the saga's events,
    /// so a re-published event is recognisable and a later one of the same kind (a second
    /// `saga.failed` after a retry, which runs no new step) is not mistaken for it.
    fn lifecycle(&mut self, event: &str) {
        let Some(topic) = &self.def.lifecycle_topic else {
            return;
        };
        self.state.events_sent += 1;
        let state = &*self.state;
        let seed = format!("event:{event}:{}", state.events_sent);
        self.messages.push(Outgoing {
            topic: topic.clone(),
            envelope: Envelope {
                message_id: Uuid::new_v5(&state.saga_id, seed.as_bytes()),
                message_type: event.to_string(),
                correlation_id: state.saga_id,
                causation_id: None,
                timestamp: platform::time::rfc3339(self.now),
                payload: {
                    let mut payload = json!({
                        "saga_type": state.saga_type,
                        "status": state.status.as_str(),
                        "error": state.compensation_error.as_ref().or(state.error.as_ref()),
                    });
                    // The end of a saga carries its data (the input and what the steps
                    // replied): what a notification of the outcome tells the people behind it.
                    if state.status.is_terminal() {
                        payload["context"] = Value::Object(state.context.clone());
                    }
                    payload
                },
            },
            trace: TraceContext::default(),
        });
    }
}

/// The failure reason a participant gave, or the reply type when it gave none. A NUL in it
/// becomes U+FFFD: the reason is stored and shown, and PostgreSQL's JSON types refuse NUL.
fn reason(reply: Reply<'_>) -> String {
    reply
        .payload
        .get("reason")
        .and_then(Value::as_str)
        .map(|r| r.replace('\0', "\u{FFFD}"))
        .unwrap_or_else(|| reply.message_type.to_string())
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;

//! A saga instance: where it is, what it knows, what happened so far.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use platform::TraceContext;

/// The saga's status, as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SagaStatus {
    /// Running its forward steps.
    Started,
    /// Every step succeeded.
    Completed,
    /// A step failed; compensations of the completed steps are running, newest first.
    Compensating,
    /// A step failed (or the saga ran out of time) and every completed step has been undone.
    Compensated,
    /// A cancel was accepted; compensations run once the step in flight has answered.
    Cancelling,
    /// Cancelled, and every completed step has been undone.
    Cancelled,
    /// A compensation could not be done; the saga needs attention.
    Failed,
}

impl SagaStatus {
    pub const ALL: [SagaStatus; 7] = [
        SagaStatus::Started,
        SagaStatus::Completed,
        SagaStatus::Compensating,
        SagaStatus::Compensated,
        SagaStatus::Cancelling,
        SagaStatus::Cancelled,
        SagaStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SagaStatus::Started => "STARTED",
            SagaStatus::Completed => "COMPLETED",
            SagaStatus::Compensating => "COMPENSATING",
            SagaStatus::Compensated => "COMPENSATED",
            SagaStatus::Cancelling => "CANCELLING",
            SagaStatus::Cancelled => "CANCELLED",
            SagaStatus::Failed => "FAILED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether the saga has ended: no reply or deadline changes it any more (only an operator:
    /// a cancel of a completed saga, a retry of a failed one). The one definition of "ended".
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            SagaStatus::Completed
                | SagaStatus::Compensated
                | SagaStatus::Cancelled
                | SagaStatus::Failed
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    Forward,
    Compensation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StepStatus {
    Running,
    Completed,
    Failed,
}

/// One entry of the step history: a forward step or a compensation, in the order they ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub name: String,
    pub kind: StepKind,
    /// Index of the forward step in the definition (a compensation carries its step's index).
    pub step_index: usize,
    pub status: StepStatus,
    pub command_id: Uuid,
    pub attempts: u32,
    /// Every time the command was sent, and how that attempt ended.
    #[serde(default)]
    pub attempt_log: Vec<Attempt>,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub error: Option<String>,
    /// The step got no reply at all: it may or may not have run, so it is compensated as if it
    /// had (compensations are idempotent and undo nothing that is not there).
    #[serde(default)]
    pub outcome_unknown: bool,
    /// The parallel group the step ran in, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// One sending of a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub number: u32,
    pub sent_at: i64,
    /// `None` while waiting; then `succeeded`, `failed: <reason>` or `timed out`.
    pub outcome: Option<String>,
}

/// Why a saga stops going forward before its steps are done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Abort {
    /// `POST /sagas/{id}/cancel`: ends `CANCELLED`.
    Cancel,
    /// The saga deadline passed: ends `COMPENSATED`.
    Timeout,
}

/// The command the saga waits for a reply to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub command_id: Uuid,
    pub step_index: usize,
    pub kind: StepKind,
    /// The message that caused the command; a re-send carries it again.
    pub causation_id: Option<Uuid>,
    /// 1 for the first sending.
    pub attempt: u32,
    pub first_sent_at: i64,
    /// When to stop waiting: re-send, or give up. Also when to re-send after a compensation
    /// failed.
    pub deadline_at: i64,
}

/// Everything the engine knows about one saga. Stored as JSON beside a few indexed columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaState {
    pub saga_id: Uuid,
    pub saga_type: String,
    /// The version of the definition the saga started under, and runs under to its end.
    #[serde(default = "first_version")]
    pub definition_version: u32,
    pub status: SagaStatus,
    /// The saga's data: its input, plus the payload of every success reply so far.
    pub context: Map<String, Value>,
    pub steps: Vec<StepRecord>,
    /// The commands the saga waits on: one, or every running member of a parallel group; none
    /// once the saga is terminal. (Stored by earlier versions as one object or `null`.)
    #[serde(default, deserialize_with = "one_or_many")]
    pub pending: Vec<Pending>,
    /// Why compensation started: the failed step, the saga deadline.
    pub error: Option<String>,
    /// Why the saga is `FAILED`: the compensation that could not be done.
    #[serde(default)]
    pub compensation_error: Option<String>,
    /// Set when the saga is cancelled or runs out of time while a step is in flight.
    #[serde(default)]
    pub abort: Option<Abort>,
    /// When a saga still running is compensated.
    #[serde(default)]
    pub deadline_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub completed_at: Option<i64>,
    /// The trace the saga belongs to: the context of the request that started it. Work not
    /// caused by a message (deadlines, cancel, retry) continues this trace. Stored in columns of
    /// its own (set once), not in the JSON that every transition rewrites.
    #[serde(skip)]
    pub trace: TraceContext,
    /// The input that started the saga, as JSON text. Stored in a column of its own (written
    /// once), not in the JSON every transition rewrites; parsed only to be shown.
    #[serde(skip)]
    pub input_json: Option<String>,
    /// Lifecycle events published so far: numbers each event, whose id derives from it.
    #[serde(default)]
    pub events_sent: u32,
    /// Why the saga was set aside: its stored state cannot go on under its definition. A parked
    /// saga has no deadline and sends nothing; an operator looks at it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parked: Option<String>,
}

fn first_version() -> u32 {
    1
}

/// `pending` as stored: a list, or (before parallel groups) one object or `null`.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Pending>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        Many(Vec<Pending>),
        One(Pending),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => Vec::new(),
        Some(OneOrMany::One(p)) => vec![p],
        Some(OneOrMany::Many(v)) => v,
    })
}

impl SagaState {
    /// The name of the step or compensation the saga waits on; the group's name while several
    /// members of a parallel group are running.
    pub fn current_step(&self) -> Option<&str> {
        let first = self.pending.first()?;
        let record = self
            .steps
            .iter()
            .rev()
            .find(|s| s.command_id == first.command_id)?;
        match (&record.group, self.pending.len()) {
            (Some(group), 2..) => Some(group),
            _ => Some(&record.name),
        }
    }

    /// The pending command with this id.
    pub fn awaits(&self, command_id: Uuid) -> Option<Pending> {
        self.pending
            .iter()
            .find(|p| p.command_id == command_id)
            .copied()
    }

    /// When the saga next needs attention without a reply (a step deadline, the saga
    /// deadline); `None` once it is terminal. Stored in an indexed column for the timer.
    pub fn next_wake(&self) -> Option<i64> {
        if self.parked.is_some() {
            return None;
        }
        let pending = self.pending.iter().map(|p| p.deadline_at).min();
        let saga = match (self.status, self.abort) {
            (SagaStatus::Started, None) => self.deadline_at,
            _ => None,
        };
        match (pending, saga) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A string field of the context (`customer_id`, `order_id`, ...).
    pub fn context_str(&self, key: &str) -> Option<&str> {
        self.context.get(key).and_then(Value::as_str)
    }

    pub fn context_i64(&self, key: &str) -> Option<i64> {
        self.context.get(key).and_then(Value::as_i64)
    }
}

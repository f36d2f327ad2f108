//! A saga instance: where it is, what it knows, what happened so far.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// The saga's status, as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SagaStatus {
    /// Running its forward steps.
    Started,
    /// Every step succeeded.
    Completed,
    /// A step failed; compensations of the completed steps are running, newest first.
    Compensating,
    /// A step failed and every completed step has been undone.
    Compensated,
    /// A compensation could not be done; the saga needs attention.
    Failed,
}

impl SagaStatus {
    pub const ALL: [SagaStatus; 5] = [
        SagaStatus::Started,
        SagaStatus::Completed,
        SagaStatus::Compensating,
        SagaStatus::Compensated,
        SagaStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SagaStatus::Started => "STARTED",
            SagaStatus::Completed => "COMPLETED",
            SagaStatus::Compensating => "COMPENSATING",
            SagaStatus::Compensated => "COMPENSATED",
            SagaStatus::Failed => "FAILED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// No further message changes a saga in a terminal status.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            SagaStatus::Completed | SagaStatus::Compensated | SagaStatus::Failed
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    Forward,
    Compensation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub error: Option<String>,
}

/// The command the saga waits for a reply to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub command_id: Uuid,
    pub step_index: usize,
    pub kind: StepKind,
}

/// Everything the engine knows about one saga. Stored as JSON beside a few indexed columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaState {
    pub saga_id: Uuid,
    pub saga_type: String,
    pub status: SagaStatus,
    /// The saga's data: its input, plus the payload of every success reply so far.
    pub context: Map<String, Value>,
    pub steps: Vec<StepRecord>,
    /// `None` once the saga is terminal.
    pub pending: Option<Pending>,
    pub error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub completed_at: Option<i64>,
}

impl SagaState {
    /// The name of the step or compensation the saga waits on.
    pub fn current_step(&self) -> Option<&str> {
        let pending = self.pending?;
        self.steps
            .iter()
            .rev()
            .find(|s| s.command_id == pending.command_id)
            .map(|s| s.name.as_str())
    }

    /// A string field of the context (`customer_id`, `order_id`, ...).
    pub fn context_str(&self, key: &str) -> Option<&str> {
        self.context.get(key).and_then(Value::as_str)
    }

    pub fn context_i64(&self, key: &str) -> Option<i64> {
        self.context.get(key).and_then(Value::as_i64)
    }
}

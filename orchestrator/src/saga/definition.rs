//! Saga types declared as data.
//!
//! A saga type is an ordered list of [`Step`]s; consecutive steps of one parallel group are sent
//! together. Each step names the command to send, the topic it goes to, the replies that mean
//! success and failure, which saga fields the command carries and which reply fields the saga
//! keeps, and the compensation that undoes it. The [engine](super::engine) interprets any such
//! list, so a new saga type is a new definition (a file in `sagas/`, see [`super::file`]), not
//! new engine code.

use std::ops::Range;

use serde_json::{Map, Value};

/// A command the saga sends.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandSpec {
    /// The envelope `type`, e.g. `create_order`.
    pub command_type: String,
    /// The topic the command is published to.
    pub topic: String,
    /// The saga fields the command carries (absent ones are left out).
    pub send: Vec<String>,
    /// Fixed fields added to the command payload (e.g. `{"status": "CREATED"}`).
    pub args: Map<String, Value>,
}

impl CommandSpec {
    pub fn new(command_type: &str, topic: &str) -> Self {
        CommandSpec {
            command_type: command_type.to_string(),
            topic: topic.to_string(),
            send: Vec::new(),
            args: Map::new(),
        }
    }

    pub fn sending(mut self, fields: &[&str]) -> Self {
        self.send = fields.iter().map(|f| f.to_string()).collect();
        self
    }

    pub fn with_arg(mut self, key: &str, value: Value) -> Self {
        self.args.insert(key.to_string(), value);
        self
    }
}

/// A step's own timing, overriding the global [`Policy`](super::engine::Policy) where set.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timing {
    /// How long the first sending waits for a reply (doubles per re-send).
    pub timeout_ms: Option<i64>,
    /// The longest wait between two sendings.
    pub max_timeout_ms: Option<i64>,
    /// Sendings of a forward command before the step counts as failed.
    pub attempts: Option<u32>,
    /// First delay before re-sending a compensation that was refused.
    pub retry_delay_ms: Option<i64>,
}

/// How a completed step is undone.
#[derive(Debug, Clone, PartialEq)]
pub struct Compensation {
    /// The name shown in the step history, e.g. `cancel_order`.
    pub name: String,
    pub command: CommandSpec,
    /// The reply that confirms the compensation.
    pub on_success: String,
    /// The reply that says the compensation cannot be done now; it is retried until the
    /// compensation limit, then the saga is `FAILED`.
    pub on_failure: Option<String>,
    pub timing: Timing,
}

/// One forward step.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The name shown in the step history and as `current_step`, e.g. `create_order`.
    pub name: String,
    pub command: CommandSpec,
    /// The reply type that completes the step.
    pub on_success: String,
    /// The reply type that fails the step and starts compensation.
    pub on_failure: String,
    /// The fields of the success reply kept in the saga's context, so later steps can send them
    /// (`order_id`, `payment_id`, ...).
    pub receive: Vec<String>,
    /// `None` for steps with nothing to undo (a read, such as looking up a payment method).
    pub compensation: Option<Compensation>,
    pub timing: Timing,
    /// The parallel group the step belongs to: consecutive steps with the same group are sent
    /// together, and the saga goes on once every one of them has succeeded.
    pub group: Option<String>,
    /// Why a step before the point of no return needs no compensation (a lookup, or one another
    /// step's compensation undoes): said in the file, so that a missing compensation is a
    /// decision someone wrote down, not an oversight.
    pub nothing_to_undo: Option<String>,
}

impl Step {
    pub fn new(name: &str, command: CommandSpec, on_success: &str, on_failure: &str) -> Self {
        Step {
            name: name.to_string(),
            command,
            on_success: on_success.to_string(),
            on_failure: on_failure.to_string(),
            receive: Vec::new(),
            compensation: None,
            timing: Timing::default(),
            group: None,
            nothing_to_undo: None,
        }
    }
}

/// A saga type, at one version.
#[derive(Debug, Clone, PartialEq)]
pub struct SagaDefinition {
    /// Stored with each saga, so a process can tell which definition drives it.
    pub saga_type: String,
    /// Stored with each saga too: a saga runs to its end under the version it started with.
    pub version: u32,
    pub description: String,
    /// JSON Schema of the input that starts a saga.
    pub input_schema: Value,
    /// Input fields the saga computes from the rest of its input (field → function of
    /// [`computed`](super::computed)); a start input that sets one is refused.
    pub computed: std::collections::BTreeMap<String, String>,
    pub steps: Vec<Step>,
    /// Where saga lifecycle events (`saga.started`, ...) are published; `None` publishes none.
    pub lifecycle_topic: Option<String>,
    /// The saga's own deadline, overriding the global one.
    pub deadline_ms: Option<i64>,
    /// The topics the participants reply on: what the orchestrator consumes for this saga.
    pub reply_topics: Vec<String>,
    /// The step that is the saga's point of no return (Garcia-Molina and Salem's pivot): the
    /// steps before it are compensatable, the steps after it retriable. Once it has been sent,
    /// the saga is never compensated: a step after it that fails, or the pivot's own missing
    /// reply, is retried forward (until the must-happen limit, then `FAILED` for an operator),
    /// and the saga's deadline no longer applies. Only the pivot's own failure reply, which says
    /// it did not happen, still compensates. `None`: every step can be undone.
    pub pivot: Option<usize>,
}

/// What a step is to the saga's structure, as `--check-sagas` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Before the pivot, undone by its compensation.
    Compensatable,
    /// Before the pivot, with nothing to undo (`nothing_to_undo` says why).
    NothingToUndo,
    /// The point of no return.
    Pivot,
    /// After the pivot: retried until it succeeds, never undone.
    Retriable,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Compensatable => "compensatable",
            Role::NothingToUndo => "nothing to undo",
            Role::Pivot => "pivot",
            Role::Retriable => "retriable",
        }
    }
}

impl SagaDefinition {
    /// A definition of `steps` with no schema, events or timing of its own (tests, examples).
    pub fn new(saga_type: &str, steps: Vec<Step>) -> Self {
        SagaDefinition {
            saga_type: saga_type.to_string(),
            version: 1,
            description: String::new(),
            input_schema: serde_json::json!({"type": "object"}),
            computed: Default::default(),
            steps,
            lifecycle_topic: None,
            deadline_ms: None,
            reply_topics: Vec::new(),
            pivot: None,
        }
    }

    /// Step `index`'s place in the saga's structure.
    pub fn role(&self, index: usize) -> Role {
        match self.pivot {
            Some(p) if index == p => Role::Pivot,
            Some(p) if index > p => Role::Retriable,
            _ if self.steps[index].compensation.is_some() => Role::Compensatable,
            _ => Role::NothingToUndo,
        }
    }

    /// Whether step `index` must happen once sent: the pivot (its missing reply is asked again,
    /// never taken for a failure) and every step after it.
    pub fn must_happen(&self, index: usize) -> bool {
        self.pivot.is_some_and(|p| index >= p)
    }

    pub fn step(&self, index: usize) -> Option<&Step> {
        self.steps.get(index)
    }

    /// The saga in one line, for people checking what a file declares:
    /// `refund_order v1: begin_refund -> verify(check_refund_eligibility + hold_refund) -> …;
    /// undone by abort_refund, release_refund_hold`.
    pub fn outline(&self) -> String {
        let mut stages = Vec::new();
        let mut index = 0;
        while index < self.steps.len() {
            let stage = self.stage(index);
            let names: Vec<&str> = self.steps[stage.clone()]
                .iter()
                .map(|s| s.name.as_str())
                .collect();
            stages.push(match &self.steps[index].group {
                Some(group) => format!("{group}({})", names.join(" + ")),
                None => names.join(""),
            });
            index = stage.end;
        }
        let undo: Vec<&str> = self
            .steps
            .iter()
            .filter_map(|s| s.compensation.as_ref().map(|c| c.name.as_str()))
            .collect();
        let undo = if undo.is_empty() {
            "nothing to undo".to_string()
        } else {
            format!("undone by {}", undo.join(", "))
        };
        let roles: Vec<String> = (0..self.steps.len())
            .map(|i| format!("{} {}", self.steps[i].name, self.role(i).as_str()))
            .collect();
        let pivot = match self.pivot {
            Some(p) => format!("pivot {}", self.steps[p].name),
            None => "no pivot: every step can be undone".to_string(),
        };
        format!(
            "{} v{}: {}; {undo}; {pivot} ({})",
            self.saga_type,
            self.version,
            stages.join(" -> "),
            roles.join(", ")
        )
    }

    /// The steps sent together with step `index`: its parallel group, or the step alone.
    pub fn stage(&self, index: usize) -> Range<usize> {
        let Some(group) = self.steps.get(index).and_then(|s| s.group.as_ref()) else {
            return index..index + 1;
        };
        let same = |j: &usize| self.steps[*j].group.as_ref() == Some(group);
        let start = (0..index).rev().take_while(same).last().unwrap_or(index);
        let end = (index..self.steps.len())
            .take_while(same)
            .last()
            .unwrap_or(index)
            + 1;
        start..end
    }
}

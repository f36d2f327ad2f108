//! Saga types declared as data.
//!
//! A saga type is an ordered list of [`Step`]s. Each step names the command to send, the topic it
//! goes to, the replies that mean success and failure, and the compensation that undoes it. The
//! [engine](super::engine) interprets any such list, so a new saga type is a new definition, not
//! new engine code.

use serde_json::{Map, Value};

/// A command the saga sends.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandSpec {
    /// The envelope `type`, e.g. `create_order`.
    pub command_type: String,
    /// The topic the command is published to.
    pub topic: String,
    /// Fixed fields added to the command payload (e.g. `{"status": "CREATED"}`); the rest of the
    /// payload is the saga's context.
    pub args: Map<String, Value>,
}

impl CommandSpec {
    pub fn new(command_type: &str, topic: &str) -> Self {
        CommandSpec {
            command_type: command_type.to_string(),
            topic: topic.to_string(),
            args: Map::new(),
        }
    }

    pub fn with_arg(mut self, key: &str, value: Value) -> Self {
        self.args.insert(key.to_string(), value);
        self
    }
}

/// How a completed step is undone.
#[derive(Debug, Clone, PartialEq)]
pub struct Compensation {
    /// The name shown in the step history, e.g. `cancel_order`.
    pub name: String,
    pub command: CommandSpec,
    /// The reply that confirms the compensation.
    pub on_success: String,
    /// The reply that says the compensation cannot be done; the saga is then `FAILED`.
    pub on_failure: Option<String>,
}

/// One forward step.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The name shown in the step history and as `current_step`, e.g. `create_order`.
    pub name: String,
    pub command: CommandSpec,
    /// The reply type that completes the step. Its payload is merged into the saga context, so
    /// later steps see what earlier ones produced (`order_id`, `payment_id`, ...).
    pub on_success: String,
    /// The reply type that fails the step and starts compensation.
    pub on_failure: String,
    /// `None` for steps with nothing to undo (a read, such as looking up a payment method).
    pub compensation: Option<Compensation>,
}

/// A saga type.
#[derive(Debug, Clone, PartialEq)]
pub struct SagaDefinition {
    /// Stored with each saga, so a process can tell which definition drives it.
    pub saga_type: String,
    pub steps: Vec<Step>,
    /// Where saga lifecycle events (`saga.completed`, ...) are published; `None` publishes none.
    pub lifecycle_topic: Option<String>,
}

impl SagaDefinition {
    pub fn step(&self, index: usize) -> Option<&Step> {
        self.steps.get(index)
    }
}

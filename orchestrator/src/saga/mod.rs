//! The saga itself, free of I/O.
//!
//! - [`definition`]: what a saga type is — an ordered list of steps declared as data.
//! - [`create_order`]: the create-order saga, declared with it.
//! - [`engine`]: the pure state machine that interprets any definition:
//!   `(state, reply) -> (new state, messages to send)`.
//! - [`state`]: the saga instance the engine moves forward, as stored in the database.

pub mod create_order;
pub mod definition;
pub mod engine;
pub mod state;

pub use definition::{CommandSpec, Compensation, SagaDefinition, Step};
pub use engine::{Decision, Ignored, Reply};
pub use state::{Abort, Attempt, Pending, SagaState, SagaStatus, StepKind, StepRecord, StepStatus};

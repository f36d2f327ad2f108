//! The saga itself, free of I/O.
//!
//! - [`definition`]: what a saga type is — an ordered list of steps declared as data.
//! - [`changes`]: what a transition did, in words (the live streams show it).
//! - [`computed`]: input fields a saga derives instead of taking them from a client.
//! - [`file`]: definitions read from `sagas/*.toml` and checked before anything runs.
//! - [`registry`]: every loaded type and version; routes each saga to the one it started under.
//! - [`engine`]: the pure state machine that interprets any definition:
//!   `(state, reply) -> (new state, messages to send)`.
//! - [`state`]: the saga instance the engine moves forward, as stored in the database.

pub mod changes;
pub mod computed;
pub mod definition;
pub mod engine;
pub mod file;
pub mod registry;
pub mod state;

pub use definition::{CommandSpec, Compensation, SagaDefinition, Step, Timing};
pub use engine::{Decision, Ignored, Reply};
pub use file::SagasSource;
pub use registry::{Deployed, Registry, Sagas};
pub use state::{Abort, Attempt, Pending, SagaState, SagaStatus, StepKind, StepRecord, StepStatus};

/// The create-order saga as the repository defines it (`sagas/create_order.toml`), for tests.
#[cfg(test)]
pub fn create_order() -> SagaDefinition {
    let topics = platform::Topics::load(None).unwrap();
    let registry = SagasSource::BuiltIn
        .load(&topics, platform::Contract::built_in())
        .unwrap();
    SagaDefinition::clone(registry.latest("create_order").unwrap())
}

//! # The saga orchestrator
//!
//! ## Layout
//! - [`saga`]: the pure part. Saga types declared as data, and the engine that moves a saga
//!   from one state to the next. No I/O; unit-tested on every path.
//! - [`store`]: where state is stored — sagas, inbox and outbox — one transaction per change.
//! - [`replies`]: where replies are handled — the consumer of the `*_events` topics.
//! - [`intake`]: where new sagas come in — starts batched into group commits.
//! - [`relay`]: where commands are sent — the outbox relay that publishes to the `*_commands`
//!   topics.
//! - [`timers`]: where time is handled — re-sends, give-ups, saga deadlines.
//! - [`pruner`]: where storage is kept bounded — old inbox and sent outbox rows are deleted.
//! - [`live`]: where changes are followed — one tail of the change log per instance, fanned out
//!   to the event streams.
//! - [`observe`]: where sagas are measured — metrics read off each committed transition.
//! - [`http`]: the API — `POST /sagas/{type}`, `POST /orders`, `GET /sagas/{id}`, `GET /sagas`,
//!   the event streams, the probes.
//! - [`transition`]: how one saga is moved (timers, cancel, retry).
//! - [`app`]: assembly — builds all of the above from a [`Config`] and runs it until stopped.

pub mod app;
pub mod asyncapi;
mod error;
pub mod http;
pub mod intake;
pub mod live;
pub mod observe;
pub mod pruner;
pub mod relay;
pub mod replies;
pub mod saga;
pub mod store;
pub mod timers;
pub mod transition;

pub use app::{Config, Orchestrator, Tuning};
pub use error::{Error, Result};
pub use saga::engine::Policy;

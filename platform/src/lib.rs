//! # Platform: what every process of the saga system shares
//!
//! The orchestrator and each stub service are separate programs that only talk over Kafka.
//! What they must agree on lives here, so that a change to the wire contract is one change:
//!
//! - [`envelope`]: the one JSON envelope every command and event travels in.
//! - [`topics`]: `topics.json`, the single source of topic names and settings.
//! - [`contract`]: `messages.toml`, every command and reply: topic, reply names, payload.
//! - [`kafka`]: how clients are configured (at-least-once consumers, idempotent producers),
//!   topic creation on a real cluster, and dead-lettering of messages that cannot be handled.
//! - [`embedded`]: librdkafka's in-memory mock cluster, the development and test broker.
//! - [`db`]: one connection type for SQLite (the default) and PostgreSQL (production).
//! - [`prune`]: keeping inbox-like tables bounded by a retention time.
//! - [`trace`]: W3C trace context carried in Kafka headers, so one saga is one trace.
//! - [`metrics`], [`health`] and [`ops`]: Prometheus metrics, readiness checks, and the
//!   `/livez`, `/readyz` and `/metrics` routes operators and probes read.
//! - [`telemetry`] and [`shutdown`]: logging and trace export set-up, and the Ctrl-C / SIGTERM
//!   signal.

pub mod contract;
pub mod db;
pub mod dead_letters;
pub mod embedded;
pub mod envelope;
mod error;
pub mod health;
pub mod kafka;
pub mod metrics;
pub mod ops;
pub mod prune;
pub mod retry;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod time;
pub mod topics;
pub mod trace;

/// The allocator every binary of the system chooses, with [`use_mimalloc!`]: under load glibc's
/// malloc and free were ~14 % of the CPU (perf); mimalloc took throughput from 588 to 651
/// sagas/s.
pub mod alloc {
    pub use mimalloc::MiMalloc;

    /// Runs before `main` (and before the first allocation; see [`use_mimalloc!`]): mimalloc
    /// commits the arenas it reserves eagerly by default, which made the orchestrator's resident
    /// memory ~35 MB larger than what it uses (peak RSS in the benchmark 87-90 MB with the
    /// default, 52 MB without; throughput unchanged). It must run before the first arena is
    /// reserved, by the first allocation, before `main` could say anything.
    pub extern "C" fn tune() {
        /// `mi_option_arena_eager_commit` in mimalloc v3's `mimalloc.h` (libmimalloc-sys is
        /// pinned to the version this index was read from).
        const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
        // SAFETY: sets a plain option value; no allocation, no other state.
        unsafe { libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0) };
    }
}

/// Makes mimalloc, tuned by [`alloc::tune`], the allocator of the binary whose main file says
/// `platform::use_mimalloc!();` at the top level. The binaries choose it; a program that links
/// these crates as libraries keeps its own allocator.
#[macro_export]
macro_rules! use_mimalloc {
    () => {
        #[global_allocator]
        static GLOBAL: $crate::alloc::MiMalloc = $crate::alloc::MiMalloc;

        #[cfg(target_os = "linux")]
        #[used]
        #[link_section = ".init_array"]
        static TUNE_ALLOCATOR: extern "C" fn() = $crate::alloc::tune;
    };
}

pub use contract::Contract;
pub use envelope::Envelope;
pub use error::{Error, Result};
pub use ops::Ops;
pub use topics::{TopicSpec, Topics};
pub use trace::TraceContext;

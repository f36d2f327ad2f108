//! # sagactl
//!
//! The saga orchestrator from a terminal: start a saga, list and search them, show one's
//! timeline (and follow it live over the API's event stream until it ends), cancel, retry, the
//! saga types, the dead letters, and the notification log. `--output json` gives the API's own
//! JSON for scripts; every refusal of the API is one line and a non-zero exit code.
//!
//! ## Layout
//! - [`cli`]: the commands (clap) and what each does.
//! - [`client`]: the HTTP API — JSON, the bearer token, refusals, event streams.
//! - [`render`]: how things look on a terminal.
//! - [`tail`]: following the notification log across rotations.

pub mod cli;
pub mod client;
pub mod render;
pub mod tail;

/// Everything that stops a command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API refused: its status code and its own words (and the saga's status, when it
    /// gave one).
    #[error("{status}: {message}")]
    Api {
        status: u16,
        message: String,
        saga_status: Option<String>,
    },
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    Stream(String),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Io(String),
    /// The reader of the output went away (`| head`): stop without a word.
    #[error("output closed")]
    Quiet,
}

//! What the API lets clients hold: connections (see [`platform::server`]) and long polls.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use platform::server::{LimitArgs, Limits};

use super::ApiError;

/// How the HTTP API is bounded and guarded.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub limits: Limits,
    /// `GET /sagas/{id}?wait_ms=` requests waiting at once; more are answered 503 at once.
    pub max_long_polls: usize,
    /// Who may call what (see [`super::auth`]).
    pub auth: super::auth::Auth,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            limits: Limits::default(),
            max_long_polls: DEFAULT_MAX_LONG_POLLS,
            auth: super::auth::Auth::Off,
        }
    }
}

const DEFAULT_MAX_LONG_POLLS: usize = 512;

/// The API's settings as flags and environment variables.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Long polls (`GET /sagas/{id}?wait_ms=`) waiting at once; more are answered 503.
    #[arg(long, env = "MAX_LONG_POLLS", default_value_t = DEFAULT_MAX_LONG_POLLS)]
    pub max_long_polls: usize,
    #[command(flatten)]
    pub auth: super::auth::AuthArgs,
}

impl ApiArgs {
    /// The config for an API listening on `listen` (authentication's default depends on it).
    pub fn config(&self, listen: std::net::SocketAddr) -> Result<ApiConfig, String> {
        Ok(ApiConfig {
            limits: self.limits.limits(),
            max_long_polls: self.max_long_polls,
            auth: self.auth.auth(listen)?,
        })
    }
}

/// The long polls in progress.
#[derive(Debug, Clone)]
pub struct LongPolls(Arc<Semaphore>);

impl LongPolls {
    pub fn new(max: usize) -> Self {
        LongPolls(Arc::new(Semaphore::new(max)))
    }

    /// A place for one more long poll, or 503 at once: waiting for a place would itself be the
    /// unbounded queue the cap is there to prevent.
    pub fn enter(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.0.clone().try_acquire_owned().map_err(|_| {
            ApiError::Busy("too many long polls in progress; retry, or poll without wait_ms".into())
        })
    }
}

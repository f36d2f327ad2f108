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
    /// How many event streams, how far behind, how often a heartbeat.
    pub streams: crate::live::StreamLimits,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            limits: Limits::default(),
            max_long_polls: DEFAULT_MAX_LONG_POLLS,
            auth: super::auth::Auth::Off,
            streams: Default::default(),
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
    /// Event streams (`/events`, `/sagas/{id}/events`) open at once on this instance; more are
    /// answered 503.
    #[arg(long, env = "MAX_EVENT_STREAMS", default_value_t = crate::live::StreamLimits::default().max_streams)]
    pub max_event_streams: usize,
    /// How often a quiet event stream gets a heartbeat comment (`15s`).
    #[arg(long, env = "EVENT_STREAM_HEARTBEAT", default_value = "15s",
          value_parser = platform::time::parse_duration_setting)]
    pub event_stream_heartbeat: std::time::Duration,
    /// Batches of changes an event stream may fall behind before it is dropped (its client
    /// reconnects and resumes).
    #[arg(long, env = "EVENT_STREAM_BUFFER", default_value_t = crate::live::StreamLimits::default().buffer as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub event_stream_buffer: u32,
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
            streams: crate::live::StreamLimits {
                max_streams: self.max_event_streams,
                buffer: self.event_stream_buffer as usize,
                heartbeat: self.event_stream_heartbeat,
            },
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

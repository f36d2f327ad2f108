/// Everything that can go wrong in a stub service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Platform(#[from] platform::Error),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("cannot write {path}: {source}")]
    Log {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// `notifications.toml`, a template, or a transport setting that cannot work.
    #[error("{file}: {reason}")]
    Notifications { file: String, reason: String },
}

impl Error {
    /// Whether trying again later can succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Database(e) => platform::db::is_transient(e),
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the orchestrator, with the context to act on it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Platform(#[from] platform::Error),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("saga {saga_id} has an unreadable stored state: {source}")]
    CorruptState {
        saga_id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the change log holds an unreadable value: {0:?}")]
    CorruptChange(String),
    #[error("saga {0} was changed by someone else; retry")]
    Conflict(uuid::Uuid),
    #[error("cannot listen on {addr} (LISTEN_ADDR): {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the orchestrator is stopping")]
    Stopping,
    /// A transient failure shared by several requests (a batch), by its message.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A saga definition that cannot be used: the file (or folder), and what is wrong.
    #[error("saga definition {file}: {problem}")]
    Definition { file: String, problem: String },
    #[error("http server: {0}")]
    Serve(std::io::Error),
    #[error("writing to stdout: {0}")]
    Output(std::io::Error),
}

impl Error {
    /// Whether trying again later can succeed (the database is back, the conflict is gone).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Database(e) => platform::db::is_transient(e),
            Error::Conflict(_) | Error::Stopping | Error::Unavailable(_) => true,
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

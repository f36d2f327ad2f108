use rdkafka::error::KafkaError;

/// Errors of the shared plumbing; each variant says which part failed and on what.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read topics file {path}: {source}")]
    TopicsFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid topics file {path}: {source}")]
    TopicsJson {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid topics file: {0}")]
    TopicsInvalid(String),
    #[error("cannot read messages file {path}: {source}")]
    ContractFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid messages file {path}: {problem}")]
    ContractInvalid { path: String, problem: String },
    #[error("kafka {context}: {source}")]
    Kafka {
        context: String,
        #[source]
        source: KafkaError,
    },
    #[error("embedded kafka: {0}")]
    Embedded(String),
    #[error("invalid KAFKA_CONFIG entry {0:?}: expected key=value")]
    KafkaConfig(String),
    #[error("database {context}: {source}")]
    Database {
        context: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("database migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// A setting that cannot work; the message names it.
    #[error("{0}")]
    Config(String),
    #[error("io {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn kafka(context: impl Into<String>) -> impl FnOnce(KafkaError) -> Self {
        let context = context.into();
        move |source| Error::Kafka { context, source }
    }

    pub fn db(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Self {
        let context = context.into();
        move |source| Error::Database { context, source }
    }
}
